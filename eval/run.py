"""One evaluation, end to end: checkpoint + task names -> ``lm_eval.simple_evaluate`` -> one eval record per task.

Records go to ``<results>/<sweep>/evals/<run_id>/<task>.json`` (``<task>__memory_off.json`` with the memory
suppressed), in the format of :mod:`engram_lab.records`: run_id, sweep, task, task_version, num_fewshot, limit,
lm_eval_version, memory, metrics ``{metric: {"value", "stderr"}}``, checkpoint, created, plus ``n_samples`` (the
documents scored, which ``limit`` may cut). The run id and sweep are those of the run that produced the checkpoint, so
the records join its run record. A group (``engram_ruler_1024``, ``mmlu``) gets a record of its aggregate beside
those of its tasks.

Metric names: lm-eval's ``"<metric>,<filter>"`` keys become ``<metric>`` for the default filter (``none``) and
``<metric>_<filter>`` otherwise (lm-eval's zero-shot BBH reports ``exact_match_flexible-extract``, say).
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

from experiments.config import trial_id
from engram_lab.records import eval_path, portable_path
from engram_lab.files import write_atomic

RUN_ID = re.compile(r"[0-9a-f]{12}")  # engram_lab.records.run_id: 12 hex digits


class RecordExists(FileExistsError):
    """An eval record is already on disk; records are never replaced unless asked (``overwrite=True``)."""


def evaluate(ckpt: str | Path, tasks: list[str], *, limit: float | None = None, num_fewshot: int | None = None,
             batch_size: int = 8, device: str | None = None, memory: str = "on", results: str | Path | None = "results",
             options=None, gen_kwargs: dict | None = None, overwrite: bool = False) -> tuple[list[dict], dict]:
    """Evaluate the checkpoint ``ckpt`` on ``tasks``; returns (eval records, lm-eval's output).

    ``options``: an :class:`eval.tasks.TaskOptions` (local data folders, samples and seed of generated tasks).
    ``gen_kwargs``: generation settings laid over every generating task's own (``{"max_gen_toks": 32}``).
    With ``results=None`` nothing is written. An eval record already on disk raises :class:`RecordExists` — before
    the evaluation for the tasks asked, before anything is written for the tasks of a group — unless ``overwrite``.
    Raises :class:`eval.hub.HubUnavailable` where a hub task cannot run.
    """
    import lm_eval

    from eval.hub import explain, hub_access
    from eval.lm import EngramEvalLM
    from eval.tasks import prepare

    lm = EngramEvalLM(ckpt, batch_size=batch_size, device=device, memory=memory)
    rid, sweep = checkpoint_run_id(lm), lm.trial.sweep

    def path(task: str) -> Path:
        return eval_path(results, sweep, rid, task, memory)

    if results is not None and not overwrite:
        refuse_existing([path(task) for task in tasks])
    prepared = prepare(list(tasks), lm, options)
    manager = prepared.task_manager()
    with hub_access(prepared.hub):
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                          num_fewshot=num_fewshot, gen_kwargs=gen_kwargs, log_samples=False)
        except Exception as err:
            unavailable = explain(err, prepared.hub, load=lambda task: manager.load([task]))
            if unavailable is None:
                raise
            raise unavailable from err
    records = eval_records(out, lm, limit)
    if results is not None:
        if not overwrite:
            refuse_existing([path(rec["task"]) for rec in records])
        for rec in records:  # without overwrite, a record another process wrote meanwhile still raises
            write_atomic(path(rec["task"]), rec, overwrite=overwrite)
    return records, out


def refuse_existing(paths: list[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise RecordExists(f"eval record(s) already written: {', '.join(existing)}; records are never replaced "
                           "silently: pass --overwrite (overwrite=True) to replace them")


def eval_records(out: dict, lm, limit: float | None) -> list[dict]:
    """One record per task and group of lm-eval's output ``out`` for the model ``lm``."""
    import lm_eval

    rid, sweep = checkpoint_run_id(lm), lm.trial.sweep
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records = []
    for task, values in out["results"].items():
        records.append({
            "run_id": rid, "sweep": sweep, "task": task,
            "task_version": out.get("versions", {}).get(task), "num_fewshot": out.get("n-shot", {}).get(task),
            "limit": limit, "lm_eval_version": lm_eval.__version__, "memory": lm.memory,
            "metrics": metrics(values), "n_samples": _n_samples(out, task), "checkpoint": portable_path(lm.ckpt),
            "created": created,
        })
    return records


def checkpoint_run_id(lm) -> str:
    """The run id of ``lm``'s checkpoint: the name of its run folder (``runs/<sweep>/<run_id>/model``), which is the
    id training gave it; for a model folder kept elsewhere, the id recomputed from its trial config (which a config
    field added since the run would change)."""
    folder = lm.ckpt.resolve().parent.name
    return folder if RUN_ID.fullmatch(folder) else trial_id(lm.trial)


def metrics(values: dict) -> dict[str, dict]:
    """lm-eval's ``{"acc,none": v, "acc_stderr,none": s, "alias": ...}`` -> ``{"acc": {"value": v, "stderr": s}}``.

    Left out: entries that are no metric (alias, sample counts) and lm-eval's RULER placeholders (a value of -1
    under a length no document had).
    """
    out: dict[str, dict] = {}
    for key, value in values.items():
        if "," not in key or "_stderr," in key:
            continue
        name, filt = key.split(",", 1)
        if not isinstance(value, (int, float)) or (name.isdigit() and value == -1):
            continue
        stderr = values.get(f"{name}_stderr,{filt}")
        label = name if filt == "none" else f"{name}_{filt}"
        out[label] = {"value": float(value), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
    return out


def _n_samples(out: dict, task: str) -> int | None:
    counts = out.get("n-samples", {}).get(task)
    return counts.get("effective") if isinstance(counts, dict) else None


def table(records: list[dict]) -> str:
    """The records as a fixed-width table: task, version, shots, metric, value, stderr, documents."""
    rows = [("task", "version", "shots", "metric", "value", "stderr", "n")]
    for rec in records:
        for name, m in sorted(rec["metrics"].items()):
            rows.append((rec["task"] + ("" if rec["memory"] == "on" else " (memory off)"), str(rec["task_version"]),
                         str(rec["num_fewshot"]), name, f"{m['value']:.4f}",
                         "" if m["stderr"] is None else f"{m['stderr']:.4f}", str(rec.get("n_samples") or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
