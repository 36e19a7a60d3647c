"""Evaluation: checkpoints through lm-eval (see README.md beside this file).

    lm.py       EngramEvalLM, the lm-eval model ``engram`` over a checkpoint folder
    tasks/      offline task packs and local copies of hub tasks, generated into lm-eval task folders
    hub.py      what lm-eval's built-in tasks need (the tokenizer in Hugging Face format), and the message where the
                hub is out of reach
    run.py      evaluate(): simple_evaluate + eval records
    cli.py      ``engram-lab eval``, ``engram-lab export-tokenizer``
    probes.py   the mechanistic probes (LogitLens, CKA, gates, memory-off) on checkpoints -> probe records
    probe_cli.py  ``engram-lab probe``
"""
