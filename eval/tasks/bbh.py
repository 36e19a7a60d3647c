"""BIG-Bench Hard from a local folder of its original task files, with lm-eval's prompts and one normalisation.

Task names: the groups ``engram_bbh_fewshot`` (3-shot, answer only) and ``engram_bbh_zeroshot``, and their tasks
``engram_bbh_fewshot_<task>`` / ``engram_bbh_zeroshot_<task>`` (``<task>`` as in lm-eval: ``boolean_expressions``,
``date_understanding``, ...).

The folder holds ``<task>.json`` files as BBH's authors published them (``{"canary": ..., "examples": [{"input",
"target"}, ...]}``): ``../shared/data/bbh`` beside the repository here (``$ENGRAM_SHARED/data/bbh``), any folder given
with ``--bbh-path``. Each task includes lm-eval's own ``bbh/fewshot/<task>.yaml`` or ``bbh/zeroshot/<task>.yaml``, so
the description, the ``Q: ...\\nA:`` prompt, the three worked examples and the stop sequences are lm-eval's; the
data is read from the file and the scoring is replaced by one rule:

    exact match after stripping leading and trailing whitespace from both the generation and the target
    (``regexes_to_ignore: ["^\\s+|\\s+$"]``), nothing else (no case folding, no punctuation removal, no answer
    extraction filter)

lm-eval's own ``exact_match`` compares raw strings, so the few-shot variant scores " False" (the model's natural
continuation of "A:") as wrong against "False"; its zero-shot variant folds case and drops some punctuation instead.
One stated rule keeps the two variants comparable.
"""

from __future__ import annotations

import os
from pathlib import Path

from eval.tasks.common import LM_EVAL_TASKS, build_once, json_task, write_yaml

GROUPS = {"engram_bbh_fewshot": "fewshot", "engram_bbh_zeroshot": "zeroshot"}  # our group -> lm-eval's variant
VERSION = 1
STRIP = r"^\s+|\s+$"  # exact_match's regexes_to_ignore applies this to generation and target alike: str.strip()
METRIC = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "regexes_to_ignore": [STRIP]}]
TAKE_FIRST = [{"name": "none", "filter": [{"function": "take_first"}]}]
REPO = Path(__file__).resolve().parents[2]


def default_folder() -> Path:
    """``$ENGRAM_SHARED/data/bbh``, by default ``../shared/data/bbh`` beside the repository."""
    return Path(os.environ.get("ENGRAM_SHARED", REPO.parent / "shared")) / "data" / "bbh"


def task_files(folder: Path) -> dict[str, Path]:
    """BBH task name -> its file in ``folder``, for the tasks lm-eval defines; a clear error where there are none."""
    folder = Path(folder)
    candidates = sorted(folder.glob("*.json")) if folder.is_dir() else []
    files = {p.stem: p.resolve() for p in candidates if (LM_EVAL_TASKS / "bbh" / "fewshot" / f"{p.stem}.yaml").exists()}
    if not files:
        raise FileNotFoundError(f"no BBH task files (<task>.json) in {folder}: pass --bbh-path DIR, a folder of the "
                                "task files as published (github.com/suzgunmirac/BIG-Bench-Hard, bbh/*.json)")
    return files


def build(folder: Path | None = None) -> Path:
    """The folder of both groups and every task whose file ``folder`` holds (default: :func:`default_folder`)."""
    files = task_files(folder or default_folder())

    def write(out: Path, final: Path) -> None:
        for group, variant in GROUPS.items():
            names = [f"{group}_{task}" for task in files]
            for name, (task, path) in zip(names, files.items()):
                write_yaml(out / variant / f"{task}.yaml", json_task(
                    LM_EVAL_TASKS / "bbh" / variant / f"{task}.yaml", name, {"test": str(path)}, field="examples",
                    metric_list=METRIC, filter_list=TAKE_FIRST, metadata={"version": VERSION}))
            write_yaml(out / variant / f"_{group}.yaml", {
                "group": group, "task": names,
                "aggregate_metric_list": [{"metric": "exact_match", "aggregation": "mean", "weight_by_size": True}],
                "metadata": {"version": VERSION}})

    key = {"version": VERSION, "files": {task: str(path) for task, path in files.items()}}
    return build_once("engram_bbh", key, write)
