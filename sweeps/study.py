"""The Optuna side of a sweep: storage from a URL, the study, and trials that mirror the run records.

Grid sweeps and studies share one storage: each grid point becomes an Optuna trial whose params are the point's axis
values (on a ``GridSampler`` study over the axes), so ``optuna-dashboard`` and Optuna's own analysis see both kinds.
Run records stay the source of truth: the driver reconciles the study with them at every start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from sweeps.spec import SweepSpec, grid_points

optuna.logging.set_verbosity(optuna.logging.WARNING)


def default_storage_url(workdir: str | Path, sweep: str) -> str:
    return f"sqlite:///{(Path(workdir) / sweep / 'optuna.db').resolve()}"


def storage_from_url(url: str):
    """SQLite (one writer host, local disk), PostgreSQL (clusters) or ``journal:///path`` (a shared file system)."""
    if url.startswith("journal://"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=300)


def param_value(v: Any) -> Any:
    """Optuna params are scalars: lists (layer placements) are stored as JSON text."""
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def grid_choices(spec: SweepSpec) -> dict[str, list]:
    """Each axis's values, its grid keys and then those only the extra ``points`` use (a second seed)."""
    choices: dict[str, list] = {a.name: [] for a in spec.axes}
    for point in grid_points(spec):
        for name, key in point.items():
            if param_value(key) not in choices[name]:
                choices[name].append(param_value(key))
    return choices


def grid_distributions(spec: SweepSpec) -> dict[str, CategoricalDistribution]:
    return {name: CategoricalDistribution(choices) for name, choices in grid_choices(spec).items()}


def _sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    if not spec.is_study:
        return optuna.samplers.GridSampler(grid_choices(spec), seed=0)
    cfg = dict(spec.optuna.sampler)
    kind = cfg.pop("type", "tpe")
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "qmc": optuna.samplers.QMCSampler}
    if kind not in samplers:
        raise ValueError(f"optuna.sampler.type {kind!r} is not one of {sorted(samplers)}")
    return samplers[kind](**cfg)


def pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    cfg = dict(spec.optuna.pruner) if spec.is_study else {"type": "none"}
    kind = cfg.pop("type", "none")
    pruners = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
               "hyperband": optuna.pruners.HyperbandPruner}
    if kind not in pruners:
        raise ValueError(f"optuna.pruner.type {kind!r} is not one of {sorted(pruners)}")
    return pruners[kind](**cfg)


def open_study(spec: SweepSpec, url: str) -> optuna.Study:
    """Create the study if absent (the driver does this once, before any worker starts), or load it.

    The sampler's state is not stored, so the same seeded sampler is rebuilt on every load."""
    return optuna.create_study(study_name=spec.name, storage=storage_from_url(url), direction="minimize",
                               sampler=_sampler(spec), pruner=pruner(spec), load_if_exists=True)


def load(sweep: str, url: str) -> optuna.Study:
    """A study the driver created (workers never create one: concurrent creation of a SQLite file crashes)."""
    return optuna.load_study(study_name=sweep, storage=storage_from_url(url))


def trials_by_run(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        rid = t.user_attrs.get("run_id")
        if rid:
            out.setdefault(rid, []).append(t)
    return out


def _add_finished(study: optuna.Study, record: dict, params: dict, distributions: dict) -> None:
    """A finished study trial from a run record: COMPLETE with its validation loss, or FAIL with its reason."""
    state = TrialState.COMPLETE if record["status"] == "completed" else TrialState.FAIL
    value = record["metrics"].get("val_loss") if state == TrialState.COMPLETE else None
    attrs = {"run_id": record["run_id"], "status": record["status"], "reason": record.get("reason"),
             "created": record["created"]}
    study.add_trial(optuna.trial.create_trial(state=state, value=value, params=params, distributions=distributions,
                                              user_attrs=attrs))


def _mirrored(trials: list[optuna.trial.FrozenTrial], record: dict) -> bool:
    """Whether that very record (by its creation time) is among a run's finished study trials."""
    return any(t.state.is_finished() and t.user_attrs.get("created") == record["created"] for t in trials)


def mirror_record(study: optuna.Study, record: dict, params: dict, distributions: dict) -> None:
    """Add a finished study trial for a run record, unless that very record is already there."""
    if not _mirrored(trials_by_run(study).get(record["run_id"], []), record):
        _add_finished(study, record, params, distributions)


def reconcile(study: optuna.Study, spec: SweepSpec, planned: list, states: dict[str, dict]) -> None:
    """Make the study agree with the records: every final record mirrored once."""
    distributions = grid_distributions(spec)
    by_run = trials_by_run(study)  # one read of the study for the whole sweep
    for p in planned:
        s = states[p.run_id]
        record = s.get("record")
        if (record is not None and s["state"] in ("completed", "failed", "diverged")
                and not _mirrored(by_run.get(p.run_id, []), record)):
            _add_finished(study, record, {k: param_value(v) for k, v in p.axes.items()}, distributions)
