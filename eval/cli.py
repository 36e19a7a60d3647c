"""``engram-lab eval``: a thin shell over :func:`eval.run.evaluate` (lm-eval's ``simple_evaluate`` with our model and
task folders; the ``lm_eval`` command line cannot find a model registered by another package).

    engram-lab eval runs/<sweep>/<run_id>/model --tasks engram_ruler_1024,engram_world_knowledge --limit 100
    engram-lab eval CKPT --tasks engram_world_knowledge --num-fewshot 5 --memory off
    engram-lab eval CKPT --tasks mmlu --num-fewshot 5 --mmlu-path ~/data/mmlu     # lm-eval's mmlu, local data
    engram-lab eval CKPT --tasks bbh_fewshot                                        # the hub's BBH, where reachable
    engram-lab export-tokenizer CKPT hf-tokenizer/          # the tokenizer in Hugging Face format (lm-eval's RULER)

Python route, documented in :mod:`eval.lm`: ``lm_eval.simple_evaluate(model=EngramEvalLM(CKPT), tasks=[...],
task_manager=eval.tasks.task_manager([...], lm))``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _limit(text: str) -> float:
    """``5`` -> 5 documents per task; ``0.1`` -> a tenth of each task (lm-eval's convention)."""
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def _lengths(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on lm-eval tasks and write eval records",
                              description="Evaluate a checkpoint with lm-eval (offline packs engram_*, lm-eval's own "
                                          "tasks where the hub is reachable) and write one eval record per task.")
    p.add_argument("ckpt", help="model folder runs/<sweep>/<run_id>/model (or its run folder)")
    p.add_argument("--tasks", required=True,
                   help="comma-separated task names: engram_ruler_<L>, engram_niah_{single,multikey,multivalue,"
                        "multiquery}_<L>, engram_vt_<L>, engram_needle_<L>, engram_world_knowledge[_cloze][_top<N>], "
                        "engram_bbh_{fewshot,zeroshot}[_<task>], or lm-eval names (mmlu, bbh_fewshot, niah_single_1, "
                        "ruler_vt, ...)")
    p.add_argument("--limit", type=_limit, default=None, help="documents per task (N), or a fraction (0.1)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    p.add_argument("--max-gen-toks", type=int, default=None,
                   help="tokens generated per request, in place of each task's own budget (a quick CPU run)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: 8)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)")
    p.add_argument("--memory", choices=("on", "off"), default="on",
                   help="off: suppress every Engram output at inference (records get a __memory_off suffix)")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace eval records already written (without it, an existing record stops the command)")
    p.add_argument("--bbh-path", default=None,
                   help="folder of BBH's <task>.json files: engram_bbh_* read it (default ../shared/data/bbh), and "
                        "lm-eval's bbh* names run on it instead of the hub")
    p.add_argument("--mmlu-path", default=None,
                   help="folder of MMLU's published CSV files ({dev,val,test}/<subject>_<split>.csv): lm-eval's "
                        "mmlu* names run on it instead of the hub")
    p.add_argument("--samples", type=int, default=None,
                   help="documents per generated task (default: 500, as RULER)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated tasks (default: 0)")
    p.add_argument("--ruler-lengths", type=_lengths, default=None,
                   help="lengths for lm-eval's own RULER tasks, e.g. 4096,8192 (default: the model's context)")
    p.set_defaults(func=eval_command)

    t = subparsers.add_parser("export-tokenizer", help="export a checkpoint's tokenizer in Hugging Face format",
                              description="Write a checkpoint's tokenizer as a Hugging Face tokenizer folder, the "
                                          "`tokenizer` metadata lm-eval's RULER tasks load with transformers "
                                          "(engram-lab eval makes and passes one itself).")
    t.add_argument("ckpt", help="model folder runs/<sweep>/<run_id>/model (or its run folder)")
    t.add_argument("out", help="folder to write")
    t.set_defaults(func=export_tokenizer_command)


def eval_command(args: argparse.Namespace) -> int:
    from eval.hub import HubUnavailable
    from eval.lm import NoMemory
    from eval.run import evaluate, table
    from eval.tasks import TaskError, TaskOptions
    from engram_lab.records import eval_path

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    options = TaskOptions(bbh_path=Path(args.bbh_path) if args.bbh_path else None,
                          mmlu_path=Path(args.mmlu_path) if args.mmlu_path else None, samples=args.samples,
                          seed=args.seed, ruler_lengths=args.ruler_lengths)
    try:
        records, _ = evaluate(args.ckpt, tasks, limit=args.limit, num_fewshot=args.num_fewshot,
                              batch_size=args.batch_size, device=args.device, memory=args.memory,
                              results=args.results, options=options,
                              gen_kwargs={"max_gen_toks": args.max_gen_toks} if args.max_gen_toks else None,
                              overwrite=args.overwrite)
    except (HubUnavailable, TaskError, NoMemory, FileNotFoundError, FileExistsError) as err:
        print(f"engram-lab eval: {err}", file=sys.stderr)
        return 2
    print(table(records))
    if records:
        rec = records[0]
        print(f"eval records: {eval_path(args.results, rec['sweep'], rec['run_id'], rec['task'], args.memory).parent}")
    return 0


def export_tokenizer_command(args: argparse.Namespace) -> int:
    from eval.hub import HubUnavailable, export_tokenizer

    try:
        out = export_tokenizer(args.ckpt, args.out)
    except (HubUnavailable, FileNotFoundError) as err:
        print(f"engram-lab export-tokenizer: {err}", file=sys.stderr)
        return 2
    print(f"Hugging Face tokenizer: {out} (checked with transformers)")
    return 0
