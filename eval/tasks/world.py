"""Knowledge questions about the synthetic corpus's world, in MMLU's format, run by lm-eval's own MMLU definitions.

Task names:

    engram_world_knowledge                MMLU's format: four lettered choices, scored by the log-likelihood of
                                          " A" / " B" / " C" / " D" after "Answer:" (lm-eval's ``mmlu``)
    engram_world_knowledge_cloze          the same questions in lm-eval's ``mmlu_continuation`` format:
                                          "Question: ...\nAnswer:" and each choice's text scored as the continuation
    ..._top<N>                            either, on facts of the N most mentioned entities only (the head of the
                                          Zipf distribution, seen most often in training)

Questions come from :meth:`experiments.synthetic.SyntheticCorpus.questions` built from the checkpoint's own
``data.synthetic`` config, so they ask about the world that model was trained on. Chance is 25 % in both formats.
Why two formats: the letter format also needs the skill of mapping an answer to its letter, which the synthetic
corpus never teaches and which language models acquire only at scale (small models sit at chance on MMLU however
much they know); the cloze format asks for the knowledge alone, in the "Question: ...\nAnswer: ..." form the corpus
itself uses. Report the letter format as the paper's MMLU protocol, the cloze format for knowledge at small scale.
A ``dev`` split of 5 other questions serves few-shot runs (``--num-fewshot 5`` is MMLU's protocol). A model trained
on other data (``data.source`` not ``synthetic``) never saw this world: for it the task is a chance-level control,
and a warning says so.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

from eval.tasks.common import LM_EVAL_TASKS, TaskError, build_once, json_task, write_jsonl, write_yaml
from experiments.synthetic import SyntheticCorpus

NAME = re.compile(r"^engram_world_knowledge(_cloze)?(?:_top(\d+))?$")
VERSION = 1
DEFAULT_SAMPLES = 500
DEV_QUESTIONS = 5  # MMLU's dev split holds five questions per subject
# format -> (lm-eval's definition, its description worded as lm-eval words it for an MMLU subject)
FORMATS = {
    "letter": (LM_EVAL_TASKS / "mmlu" / "default" / "_default_template_yaml",
               "The following are multiple choice questions (with answers) about the world of the synthetic "
               "corpus.\n\n"),
    "cloze": (LM_EVAL_TASKS / "mmlu" / "continuation" / "_continuation_template_yaml",
              "The following are questions (with answers) about the world of the synthetic corpus.\n\n"),
}


def build(name: str, data, samples: int | None = None, seed: int = 0) -> Path:
    """The folder of ``name`` for a model trained with data config ``data`` (its ``synthetic`` world)."""
    match = NAME.match(name)
    if match is None:
        raise TaskError(f"{name} is not engram_world_knowledge[_cloze][_top<N>]")
    template, description = FORMATS["cloze" if match.group(1) else "letter"]
    top = int(match.group(2)) if match.group(2) else None
    if data.source != "synthetic":
        warnings.warn(f"{name}: this model was trained on data.source={data.source}, not on the synthetic corpus; "
                      "its world is unknown to the model, so the task is a chance-level (25 %) control", stacklevel=2)
    corpus = SyntheticCorpus(data.synthetic)
    pool = corpus.entities if top is None else corpus.entities[:top]
    available = sum(len(e.facts) for e in pool) - DEV_QUESTIONS
    if available < 1:
        raise TaskError(f"{name}: the {len(pool)} entities hold too few facts for a test split")
    n_test = min(samples or DEFAULT_SAMPLES, available)

    def write(out: Path, final: Path) -> None:
        questions = corpus.questions(DEV_QUESTIONS + n_test, seed=seed, top=top)  # one draw: dev and test disjoint
        write_jsonl(out / "dev.jsonl", questions[:DEV_QUESTIONS])
        write_jsonl(out / "test.jsonl", questions[DEV_QUESTIONS:])
        write_yaml(out / f"{name}.yaml", json_task(
            template, name, {"test": str(final / "test.jsonl"), "dev": str(final / "dev.jsonl")},
            description=description, metadata={"version": VERSION, "samples": n_test, "seed": seed, "top": top}))

    key = {"version": VERSION, "synthetic": dataclasses.asdict(data.synthetic), "top": top, "samples": n_test,
           "seed": seed}
    return build_once(name, key, write)
