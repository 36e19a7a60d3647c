"""Records -> one tidy pandas table, one row per run (DESIGN.md, "The flow of data": analyse).

Columns:
    run_id, sweep, experiment, seed, status, reason, diverged_step, checkpoint, wall_time_s, device, git_commit,
    created                 the run record's top-level fields, as written
    axes.<k>                the sweep axis values (lists become tuples so that rows can be grouped on them)
    accounting.<k>          engram.budget.Counts.as_record() plus tokens and total_flops
    metrics.<k>             metrics; nested dicts flattened with dots (``metrics.val_loss_by_category.<cat>``)
    config.<a>.<b>...       the resolved config, flattened (``config.model.engram.variant``)
    versions.<k>            library versions
    eval/<task>/<metric>    an eval record's value, with ``eval/<task>/<metric>_stderr`` beside it
    eval/<task>__memory_off/<metric>   the same task evaluated with Engram suppressed at inference (the suffix is
                            the one ``engram_lab.records.eval_path`` gives the file)
    model                   a label to group evals by: ``axes.model``, else the Engram variant, else moe / dense
    record_path             the file the row was read from (None for records built in memory)

Nothing is dropped: failed and diverged runs stay with their status and reason. Fits choose completed runs
(:func:`completed_runs`) and say how many they left out (:func:`exclusion_summary`). An eval record whose run
record is absent is reported by a warning and listed in ``df.attrs["orphan_evals"]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import pandas as pd

from engram_lab.records import RecordError, read_eval_record, read_run_record, run_path

TOP_LEVEL = ("run_id", "sweep", "experiment", "seed", "status", "reason", "diverged_step", "checkpoint",
             "wall_time_s", "device", "git_commit", "created")
NESTED = ("axes", "accounting", "metrics", "config", "versions")
MEMORY_OFF_SUFFIX = "__memory_off"


def find_sweeps(results: str | Path) -> list[str]:
    """Names of the sweep folders under ``results`` (those holding run records in ``runs/``), sorted."""
    results = Path(results)
    if not results.is_dir():
        return []
    return sorted(p.name for p in results.iterdir() if any((p / "runs").glob("*.json")))


def read_sweep(results: str | Path, sweep: str) -> tuple[list[tuple[Path, dict]], list[tuple[Path, dict]]]:
    """(run records, eval records) of one sweep folder as (path, record) pairs; RecordError names a bad file."""
    folder = Path(results) / sweep
    if not (folder / "runs").is_dir():
        raise FileNotFoundError(f"{folder / 'runs'}: no such sweep folder (sweeps found: {find_sweeps(results)})")
    runs = []
    for path in sorted((folder / "runs").glob("*.json")):
        rec = read_run_record(path)
        if rec["run_id"] != path.stem:
            raise RecordError(f"{path}: run_id {rec['run_id']!r} does not match the file name")
        if run_path(results, rec["sweep"], rec["run_id"]) != path:
            raise RecordError(f"{path}: the record belongs to sweep {rec['sweep']!r}, not to {sweep!r}")
        runs.append((path, rec))
    evals = []
    for path in sorted((folder / "evals").glob("*/*.json")):
        rec = read_eval_record(path)
        if rec["run_id"] != path.parent.name:
            raise RecordError(f"{path}: run_id {rec['run_id']!r} does not match its folder {path.parent.name!r}")
        evals.append((path, rec))
    return runs, evals


def load(results: str | Path = "results", sweeps: str | Iterable[str] | None = None) -> pd.DataFrame:
    """Every run and eval record of ``sweeps`` (all sweep folders when None) as one table, one row per run."""
    names = find_sweeps(results) if sweeps is None else ([sweeps] if isinstance(sweeps, str) else list(sweeps))
    runs, evals = [], []
    for name in names:
        r, e = read_sweep(results, name)
        runs += r
        evals += e
    return frame_from_records([rec for _, rec in runs], [rec for _, rec in evals],
                              run_paths=[p for p, _ in runs], eval_paths=[p for p, _ in evals])


def frame_from_records(runs: list[dict], evals: Iterable[dict] = (), run_paths: list | None = None,
                       eval_paths: list | None = None) -> pd.DataFrame:
    """The tidy table from record dicts (already validated, or built in memory by :mod:`analysis.simulate`)."""
    evals = list(evals)
    run_paths = run_paths or [None] * len(runs)
    eval_paths = eval_paths or [None] * len(evals)
    rows, index = [], {}
    for path, rec in zip(run_paths, runs):
        key = (rec["sweep"], rec["run_id"])
        if key in index:
            raise RecordError(f"{path or rec['run_id']}: run {rec['run_id']} appears twice in sweep {rec['sweep']!r}")
        index[key] = len(rows)
        rows.append(_run_row(rec, path))
    orphans = []
    for path, rec in zip(eval_paths, evals):
        at = index.get((rec["sweep"], rec["run_id"]))
        if at is None:
            orphans.append(str(path or f"{rec['sweep']}/{rec['run_id']}/{rec['task']}"))
            continue
        for col, value in _eval_cells(rec, path).items():
            if col in rows[at]:
                raise RecordError(f"{path or rec['run_id']}: a second eval record for {col} of run {rec['run_id']}")
            rows[at][col] = value
    if orphans:
        warnings.warn(f"{len(orphans)} eval record(s) have no run record and are not in the table: {orphans}",
                      stacklevel=2)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=[*TOP_LEVEL, "model", "record_path"])
    df.attrs["orphan_evals"] = orphans
    return df


def _run_row(rec: dict, path) -> dict:
    row = {k: rec.get(k) for k in TOP_LEVEL}
    for part in NESTED:
        row.update(flatten(rec.get(part) or {}, part))
    row["model"] = model_label(row)
    row["record_path"] = None if path is None else str(path)
    return row


def _eval_cells(rec: dict, path) -> dict:
    if rec.get("memory", "on") not in ("on", "off"):
        raise RecordError(f"{path or rec['run_id']}: memory {rec['memory']!r} is neither 'on' nor 'off'")
    task = rec["task"] + (MEMORY_OFF_SUFFIX if rec.get("memory") == "off" else "")
    metrics = rec["metrics"]
    if not isinstance(metrics, dict):
        raise RecordError(f"{path or rec['run_id']}: eval metrics must be an object, got {type(metrics).__name__}")
    cells = {}
    for name, m in metrics.items():
        if not isinstance(m, dict) or "value" not in m:
            raise RecordError(f"{path or rec['run_id']}: eval metric {name!r} must be {{'value': v, 'stderr': s}}")
        cells[f"eval/{task}/{name}"] = m["value"]
        cells[f"eval/{task}/{name}_stderr"] = m.get("stderr")
    return cells


def flatten(d: dict, prefix: str) -> dict:
    """Nested dicts to ``prefix.a.b`` keys; lists become tuples (hashable, so a column can be grouped on)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = _freeze(v)
    return out


def _freeze(v):
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def model_label(row: dict) -> str:
    """``axes.model`` when the sweep names its models, else the Engram variant, else moe or dense."""
    if row.get("axes.model") is not None:
        return str(row["axes.model"])
    variant = row.get("config.model.engram.variant")
    if isinstance(variant, str):
        return variant
    if any(k.startswith("config.model.moe.") for k in row) or row.get("accounting.experts"):
        return "moe"
    return "dense"


def completed_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs a fit may use: status completed (their val_loss is guaranteed by ``read_run_record``)."""
    return df[df["status"] == "completed"]


def exclusion_summary(df: pd.DataFrame) -> dict:
    """How many runs a fit over ``df`` leaves out, by status, with each one's id and reason."""
    bad = df[df["status"] != "completed"]
    return {
        "total": int(len(df)),
        "completed": int(len(df) - len(bad)),
        "excluded": int(len(bad)),
        "by_status": {str(k): int(v) for k, v in df["status"].value_counts().items()},
        "excluded_runs": [{"run_id": r.run_id, "experiment": r.experiment, "status": r.status,
                           "reason": r.reason, "diverged_step": _int_or_none(r.diverged_step)}
                          for r in bad.itertuples()],
    }


def _int_or_none(x):
    return None if x is None or pd.isna(x) else int(x)


def eval_columns(df: pd.DataFrame) -> list[str]:
    """The eval value columns (not their stderr)."""
    return [c for c in df.columns if c.startswith("eval/") and not c.endswith("_stderr")]


def task_is(task: str, prefixes) -> bool:
    """Whether ``task`` starts with one of ``prefixes``, an offline pack's ``engram_`` name read as the task it
    mirrors (``engram_niah_multiquery_512`` is a ``niah_multiquery``; see eval.tasks.PACK_PREFIX)."""
    return task.lower().removeprefix("engram_").startswith(tuple(p.lower() for p in prefixes))


def split_eval_column(col: str) -> tuple[str, str, bool]:
    """``eval/<task>[__memory_off]/<metric>`` -> (task, metric, memory_off)."""
    _, task, metric = col.split("/", 2)
    off = task.endswith(MEMORY_OFF_SUFFIX)
    return (task[: -len(MEMORY_OFF_SUFFIX)] if off else task), metric, off


def memory_and_twin(results: str | Path, sweep: str) -> tuple[dict, dict]:
    """The run records of an allocation sweep's best memory model and of its iso-parameter MoE twin.

    Best: the lowest validation loss among completed runs with rho < 1 at the largest total-parameter budget that
    has a twin. Twin: the completed rho = 1 run (all sparse parameters in experts) of the same budget and seed, so
    the two differ only in where the sparse parameters went."""
    runs = [rec for _, rec in read_sweep(results, sweep)[0] if rec["status"] == "completed"]
    for total in sorted({r["config"]["budget"]["total_params"] for r in runs}, reverse=True):
        at_budget = [r for r in runs if r["config"]["budget"]["total_params"] == total]
        twins = {r["seed"]: r for r in at_budget if r["config"]["budget"]["rho"] == 1}
        memory = [r for r in at_budget if r["config"]["budget"]["rho"] < 1 and r["seed"] in twins]
        if memory:
            best = min(memory, key=lambda r: r["metrics"]["val_loss"])
            return best, twins[best["seed"]]
    raise LookupError(f"{sweep}: no budget has both a completed rho < 1 run and its rho = 1 twin")
