"""Hub tasks under their lm-eval names, run on a local copy of their data (``--mmlu-path`` / ``--bbh-path``).

For every YAML of the lm-eval folders below, a generated YAML of the same task name includes lm-eval's own file and
changes only where the data comes from (``dataset_path: json`` + ``dataset_kwargs: {data_files: ...}``), so prompts,
few-shot examples, metrics and versions are lm-eval's and results compare with a run on the hub. Group YAMLs are
carried over when every member is there. A subject or task missing from the local copy is left out.

Data formats, as published:

* MMLU (Hendrycks et al., ``data.tar``): ``DIR/{dev,val,test}/<subject>_{dev,val,test}.csv`` (or the same under
  ``DIR/data/``), rows ``question,A,B,C,D,answer-letter`` with no header; converted to JSONL with lm-eval's fields
  (``question``, ``subject``, ``choices``, ``answer`` 0-3). Serves lm-eval's ``mmlu`` (``mmlu/default``).
* BBH (Suzgun et al.): ``DIR/<task>.json`` = ``{"canary": ..., "examples": [{"input", "target"}]}``, read in place.
  Serves ``bbh_fewshot*``, ``bbh_zeroshot*``, ``bbh_cot_fewshot*`` and ``bbh`` (chain-of-thought, the paper's
  3-shot protocol), ``bbh_cot_zeroshot*``.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path

import yaml

from eval.tasks.bbh import task_files
from eval.tasks.common import LM_EVAL_TASKS, build_once, json_task, write_jsonl, write_yaml

MMLU_FOLDERS = ("mmlu/default",)
BBH_FOLDERS = ("bbh/fewshot", "bbh/zeroshot", "bbh/cot_fewshot", "bbh/cot_zeroshot")
MMLU_SPLITS = {"dev": "dev", "val": "validation", "test": "test"}  # folder of the published copy -> lm-eval split
LETTERS = "ABCD"


class _RawLoader(yaml.SafeLoader):
    """Reads lm-eval YAMLs for their names only: ``!function`` tags stay strings."""


_RawLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def read_definition(path: Path) -> dict:
    with open(path) as f:
        return yaml.load(f, Loader=_RawLoader) or {}


def _tags(cfg: dict) -> list[str]:
    tags = cfg.get("tag") or []
    return [tags] if isinstance(tags, str) else list(tags)


def _members(group: dict) -> list[str]:
    members = group.get("task") or []
    return [m if isinstance(m, str) else m.get("task", "") for m in members]


def _definitions(folders: tuple[str, ...]) -> list[tuple[str, Path, dict]]:
    return [(folder, path, read_definition(path)) for folder in folders
            for path in sorted((LM_EVAL_TASKS / folder).glob("*.yaml"))]


def defined_names(folders: tuple[str, ...]) -> set[str]:
    """Every task, group and tag name the lm-eval ``folders`` define."""
    return {name for _, _, cfg in _definitions(folders) for name in [cfg.get("task"), cfg.get("group"), *_tags(cfg)]
            if isinstance(name, str)}


def copy_definitions(kind: str, folders: tuple[str, ...], data_files: Callable[[str], dict | None], key: dict,
                     field: str | None = None) -> Path:
    """A generated folder that runs lm-eval's task ``folders`` on local data.

    ``data_files(dataset_name)`` gives a task's split -> file map, or None where the local copy lacks that task. A
    tag counts as there when all its tasks are, a group when all its members are: a group never runs on part of
    its data.
    """
    def write(out: Path, final: Path) -> None:
        definitions = _definitions(folders)
        written: set[str] = set()
        tagged: dict[str, set[str]] = {}
        for folder, path, cfg in definitions:
            if "group" in cfg or "task" not in cfg:
                continue
            for tag in _tags(cfg):
                tagged.setdefault(tag, set()).add(cfg["task"])
            files = data_files(cfg["dataset_name"]) if "dataset_name" in cfg else None
            if files is not None:
                write_yaml(out / folder / path.name, json_task(path, cfg["task"], files, field=field))
                written.add(cfg["task"])
        known = written | {tag for tag, tasks in tagged.items() if tasks <= written}
        pending = [(folder, path, cfg) for folder, path, cfg in definitions if "group" in cfg]
        while pending:  # groups of groups settle in a few passes
            ready = [g for g in pending if all(m in known for m in _members(g[2]))]
            for folder, path, cfg in ready:
                write_yaml(out / folder / path.name, {"include": str(path)})
                known.add(cfg["group"])
            pending = [g for g in pending if g not in ready] if ready else []

    return build_once(kind, key, write)


def _file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def mmlu_csv_files(root: Path) -> dict[str, dict[str, Path]]:
    """subject -> lm-eval split -> CSV file of a published MMLU copy; a clear error where none is found."""
    root = Path(root)
    base = root / "data" if (root / "data" / "test").is_dir() else root
    subjects: dict[str, dict[str, Path]] = {}
    for folder, split in MMLU_SPLITS.items():
        for path in sorted((base / folder).glob(f"*_{folder}.csv")):
            subjects.setdefault(path.name[:-len(f"_{folder}.csv")], {})[split] = path
    subjects = {s: files for s, files in subjects.items() if "test" in files}
    if not subjects:
        raise FileNotFoundError(f"no MMLU test files in {root}: expected test/<subject>_test.csv (and dev/, val/) as "
                                "in the published data.tar (people.eecs.berkeley.edu/~hendrycks/data.tar)")
    return subjects


def mmlu_rows(path: Path, subject: str) -> list[dict]:
    with open(path, newline="") as f:
        return [{"question": q, "subject": subject, "choices": [a, b, c, d], "answer": LETTERS.index(ans.strip())}
                for q, a, b, c, d, ans in csv.reader(f)]


def mmlu(root: Path) -> Path:
    """lm-eval's ``mmlu`` (groups and ``mmlu_<subject>`` tasks) on a local copy of MMLU's published CSV files."""
    subjects = mmlu_csv_files(root)
    csvs = [p for files in subjects.values() for p in files.values()]

    def write(out: Path, final: Path) -> None:
        for subject, files in subjects.items():
            for split, path in files.items():
                write_jsonl(out / subject / f"{split}.jsonl", mmlu_rows(path, subject))

    data = build_once("mmlu-data", {"csv": _file_digest(csvs)}, write)
    converted = {subject: {split: str(data / subject / f"{split}.jsonl") for split in files}
                 for subject, files in subjects.items()}
    return copy_definitions("mmlu", MMLU_FOLDERS, converted.get, {"data": str(data)})


def bbh(root: Path) -> Path:
    """lm-eval's ``bbh*`` groups and tasks on a local folder of BBH's published task files."""
    files = task_files(root)
    return copy_definitions("bbh", BBH_FOLDERS, lambda name: {"test": str(files[name])} if name in files else None,
                            {"files": {t: str(p) for t, p in files.items()}}, field="examples")
