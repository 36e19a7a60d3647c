"""Plumbing shared by the task generators: where generated task folders live, how they are written, seeds.

A generated folder holds task YAMLs (each ``include``-ing a definition: one of ours, ``eval/tasks/*_template.yaml``,
or one of lm-eval's own) and the JSONL data they point at through ``dataset_path: json`` +
``dataset_kwargs: {data_files: ...}``, which lm-eval loads with no network. A folder is named by a hash of
everything it is made from, built once into a temporary folder and renamed into place, so concurrent runs never see
half a folder and a change of input never reuses a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import lm_eval
import lm_eval.tasks
import yaml

from experiments.tokenizer import cache_dir

TEMPLATES = Path(__file__).resolve().parent  # our task definitions (*_template.yaml), included by generated tasks
LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).resolve().parent  # lm-eval's own task definitions
# What every generated folder depends on besides its own inputs: a folder made for another lm-eval is made anew.
BASE_KEY = {"lm_eval": lm_eval.__version__, "lm_eval_tasks": str(LM_EVAL_TASKS), "templates": str(TEMPLATES)}


class TaskError(ValueError):
    """A task that cannot be made as asked (unknown name, a length too short for its prompt, ...)."""


def generated_root() -> Path:
    """``$ENGRAM_LAB_CACHE/eval-tasks``: every generated task folder."""
    return cache_dir() / "eval-tasks"


def digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_once(kind: str, key: dict, write: Callable[[Path, Path], None]) -> Path:
    """The folder ``<generated_root>/<kind>-<hash of key>``, made by ``write(out, final)`` when absent.

    ``write`` fills ``out`` (a temporary folder) but must name files by their place under ``final``, where they end
    up once ``out`` is renamed (task YAMLs hold absolute data paths).
    """
    root = generated_root()
    final = root / f"{kind}-{digest({**BASE_KEY, **key})}"
    if final.exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(dir=root, prefix=f".{kind}-"))
    try:
        write(out, final)
        os.rename(out, final)
    except OSError:
        if not final.exists():  # not a lost race with a concurrent run that built the same folder
            raise
    finally:
        if out.exists():
            shutil.rmtree(out)
    return final


def write_yaml(path: Path, config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000))


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def seeded(*parts) -> random.Random:
    """A generator seeded from its parts, the same in every process (BLAKE2b, never the salted ``hash()``)."""
    digest_bytes = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest_bytes, "little"))


def json_task(include: Path, task: str, data_files: dict[str, str], field: str | None = None, **overrides) -> dict:
    """A task YAML that runs the definition in ``include`` on local JSON/JSONL files (no hub, no network).

    ``field``: the key holding the records when a file is one JSON object (BBH's ``{"examples": [...]}``).
    """
    kwargs = {"data_files": data_files, **({"field": field} if field else {})}
    return {"include": str(include), "task": task, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": kwargs, **overrides}
