"""Sweep specs: a base trial config plus axes expanded as a grid, or an Optuna study over a search space.

A spec is YAML::

    name: allocation-synthetic          # results/<name>/ holds its records: letters, digits, _ - . (no ..)
    experiment: allocation              # recorded with every trial; picks the fit the sweep ends with
    base: ../../experiments/configs/allocation.yaml   # a trial YAML, relative to the spec (or `trial:` inline)
    set: {train.tokens: 2.0e+7}         # overrides of the base, dotted keys
    grid:                               # axes, crossed
      budget:                           # named levels: each a set of overrides
        levels: {small: {budget.total_params: 3.0e+7}, large: {budget.total_params: 9.0e+7}}
      rho: {path: budget.rho, values: [0.2, 0.4, 0.6, 0.8, 1.0]}    # values put at one path
    seeds: 2                            # every grid point at seeds 0 and 1 (or a list: seeds: [0, 3])
    points:                             # extra points, each naming every axis; one without a seed runs at each
      - {budget: small, rho: 0.9}       # seed of the seed axis, one with a list of seeds at each of those
      - {budget: large, rho: 0.9, seed: [2, 3]}
    optuna:                             # instead of a grid: a study (see OptunaSpec)
      ...
    launch: {executor: local, max_parallel: 1, slurm: {partition: gpu, gpus_per_node: 1, time_min: 120}}

Every point is resolved through the budget solver before anything is submitted; one bad point refuses the whole
spec with the point and the reason. A sweep trains deterministically (``train.deterministic``) unless the spec, its
base or an axis sets it: the effects a sweep measures are as small as the run-to-run scatter without it.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from engram.config import ConfigError, build
from experiments.config import (TrialConfig, check_sweep_name, load_yaml, parse_override, resolve, set_path,
                                trial_from_dict, trial_id)


@dataclass
class SlurmSpec:
    """SLURM resources of one trial (submitit's parameters). ``additional`` holds extra ``#SBATCH`` options
    (``{"gres": "gpu:1", "exclusive": true}``); ``setup`` holds shell lines run before the trial.

    A trial runs as ``nodes x tasks_per_node`` processes, one per device (on GPU nodes, one per GPU:
    ``tasks_per_node == gpus_per_node``); submitted to SLURM it trains data parallel with ``train.num_nodes = nodes``
    and ``train.devices = tasks_per_node`` (:func:`on_slurm`), whatever its own config says."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 2
    mem_gb: float | None = None
    time_min: int = 120
    array_parallelism: int = 16
    max_array_size: int = 1000
    additional: dict = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.time_min <= 10:
            raise ConfigError("time_min", "must exceed 10 minutes: submitit treats every signal to a shorter job "
                                          "as a timeout and spends its requeue budget")
        for name in ("nodes", "tasks_per_node", "cpus_per_task", "array_parallelism", "max_array_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ConfigError("tasks_per_node", f"one task per GPU: must equal gpus_per_node={self.gpus_per_node}, "
                                                f"got {self.tasks_per_node}")


@dataclass
class LaunchSpec:
    """Where trials run.

    Attributes:
        executor: ``slurm`` (a job array, one task per trial), ``local`` (subprocesses on this machine) or
            ``debug`` (in the driver's process, one after another).
        max_parallel: jobs running at once with the local executor.
        seeds_per_job: seeds of one grid point that one job trains one after another (1: a job per trial). On one
            GPU, more than one saves each later seed the compile and the data loading that the first one did.
        storage: Optuna storage URL: ``sqlite:///path.db`` (default: under the sweep's work folder),
            ``postgresql://...``, or ``journal:///path.log`` (Optuna's journal file, safe on shared file systems).
        slurm: resources for the slurm executor.
        gpu_name, assumed_mfu: device and utilisation behind the GPU-hours estimate of the plan table.
    """

    executor: Literal["slurm", "local", "debug"] = "local"
    max_parallel: int = 1
    seeds_per_job: int = 1
    storage: str | None = None
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    gpu_name: str = "H100"
    assumed_mfu: float = 0.3

    def __post_init__(self) -> None:
        if self.executor not in ("slurm", "local", "debug"):
            raise ConfigError("executor", f"unknown {self.executor!r} (slurm, local or debug)")
        if self.max_parallel < 1:
            raise ConfigError("max_parallel", f"must be >= 1, got {self.max_parallel}")
        if self.seeds_per_job < 1:
            raise ConfigError("seeds_per_job", f"must be >= 1, got {self.seeds_per_job}")
        if not 0 < self.assumed_mfu <= 1:
            raise ConfigError("assumed_mfu", f"must lie in (0, 1], got {self.assumed_mfu}")


@dataclass
class OptunaSpec:
    """An Optuna study: the objective is the trial's final validation loss (minimised).

    Attributes:
        n_trials: trials the study runs in total (over all workers and restarts).
        workers: concurrent worker jobs, each asking the study for trials until it has ``n_trials``.
        space: ``{dotted.path: {type: float|int|categorical, low, high, log, step, choices}}``.
        sampler: ``{type: tpe|random|cmaes|qmc, seed: 0}``.
        pruner: ``{type: none|median|hyperband, ...}`` (extra keys go to the pruner); pruning reads the
            validation curve, so set ``train.eval_every_tokens``.
    """

    n_trials: int = 20
    workers: int = 1
    space: dict = field(default_factory=dict)
    sampler: dict = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    pruner: dict = field(default_factory=lambda: {"type": "none"})

    def __post_init__(self) -> None:
        if self.n_trials < 1 or self.workers < 1:
            raise ConfigError("n_trials", "n_trials and workers must be >= 1")
        if not self.space:
            raise ConfigError("space", "an Optuna study needs a search space")
        for path, dist in self.space.items():
            kind = dist.get("type") if isinstance(dist, dict) else None
            if kind not in ("float", "int", "categorical"):
                raise ConfigError(f"space.{path}", "needs type float, int or categorical")
            if kind == "categorical" and not dist.get("choices"):
                raise ConfigError(f"space.{path}", "a categorical parameter needs choices")
            if kind in ("float", "int") and not ("low" in dist and "high" in dist):
                raise ConfigError(f"space.{path}", "needs low and high")


@dataclass
class Axis:
    """One grid axis: ``values`` put at ``path``, or named ``levels`` that each apply a set of overrides."""

    name: str
    path: str | None = None
    values: list = field(default_factory=list)
    levels: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.path is None) == (not self.levels):
            raise ConfigError("path", "an axis gives either path + values or levels")
        if self.path is not None and not self.values:
            raise ConfigError("values", "an axis needs at least one value")

    def keys(self) -> list:
        return list(self.levels) if self.levels else list(self.values)

    def overrides(self, key) -> dict:
        if self.levels:
            if key not in self.levels:
                raise ConfigError(f"grid.{self.name}", f"no level {key!r} (levels: {', '.join(map(str, self.levels))})")
            return dict(self.levels[key] or {})
        return {self.path: key}


@dataclass
class SweepSpec:
    name: str
    experiment: str
    base: dict
    axes: list[Axis]
    points: list[dict]
    optuna: OptunaSpec | None
    launch: LaunchSpec
    source: str  # the spec file, for the record of what was run

    @property
    def is_study(self) -> bool:
        return self.optuna is not None

    @property
    def seed_axis(self) -> Axis | None:
        """The axis that sets the trial seed (``seeds:``, or a grid axis with ``path: seed``)."""
        return next((a for a in self.axes if a.path == "seed"), None)


@dataclass
class PlannedTrial:
    axes: dict
    trial: TrialConfig  # resolved
    run_id: str
    merged: list[dict] = field(default_factory=list)  # other points that build this very trial

    def label(self) -> str:
        text = ", ".join(f"{k}={_short(v)}" for k, v in self.axes.items()) or self.run_id
        return text + (f" (+{len(self.merged)} same)" if self.merged else "")


def _short(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _overrides(mapping: dict | list | None, where: str) -> list[tuple[list[str], Any]]:
    """``{dotted.key: value}`` (or a list of ``key=value`` strings) as (path, value) pairs."""
    if not mapping:
        return []
    if isinstance(mapping, list):
        return [parse_override(str(x)) for x in mapping]
    if not isinstance(mapping, dict):
        raise ConfigError(where, "overrides are a mapping of dotted keys to values")
    return [(str(k).split("."), v) for k, v in mapping.items()]


def seed_axis(seeds: Any) -> Axis:
    """The axis of ``seeds: 4`` (seeds 0 to 3) or ``seeds: [0, 1, 2, 3]``."""
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list)):
        raise ConfigError("seeds", f"a number of seeds (seeds: 4) or a list of them (seeds: [0, 1]), got {seeds!r}")
    values = list(range(seeds)) if isinstance(seeds, int) else seeds
    if not values:
        raise ConfigError("seeds", "a sweep needs at least one seed")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in values):
        raise ConfigError("seeds", f"seeds are integers >= 0, got {values}")
    if len(set(values)) < len(values):
        raise ConfigError("seeds", f"a seed appears twice in {values}")
    return Axis(name="seed", path="seed", values=values)


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    raw = load_yaml(path)
    known = {"name", "experiment", "base", "trial", "set", "grid", "seeds", "points", "optuna", "launch"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown field of a sweep spec (known: {', '.join(sorted(known))})")
    if "name" not in raw:
        raise ConfigError("name", "a sweep needs a name (it names results/<name>/)")
    check_sweep_name(str(raw["name"]), "name")
    if ("base" in raw) == ("trial" in raw):
        raise ConfigError("base", "give either base (a trial YAML path) or trial (an inline trial config)")
    base = load_yaml((path.parent / raw["base"]).resolve()) if "base" in raw else dict(raw["trial"])
    for keys, value in _overrides(raw.get("set"), "set"):
        set_path(base, keys, value)
    # a sweep compares losses hundredths of a nat apart: nondeterministic kernels alone scatter a trial that much
    if base.get("train") is None:
        base["train"] = {}
    if isinstance(base["train"], dict):
        base["train"].setdefault("deterministic", True)
    axes = [build(Axis, {"name": name, **(spec or {})}, f"grid.{name}") for name, spec in (raw.get("grid") or {}).items()]
    optuna = build(OptunaSpec, raw["optuna"], "optuna") if raw.get("optuna") else None
    if optuna is not None and axes:
        raise ConfigError("grid", "a spec is either a grid or an Optuna study, not both")
    if "seeds" in raw:
        if optuna is not None:
            raise ConfigError("seeds", "an Optuna study samples its trials: put seed in its search space instead")
        clash = next((a.name for a in axes if a.path == "seed" or a.name == "seed"), None)
        if clash is not None:
            raise ConfigError("seeds", f"the grid already sets the seed (grid.{clash}): give one or the other")
        axes.append(seed_axis(raw["seeds"]))
    return SweepSpec(name=str(raw["name"]), experiment=str(raw.get("experiment", raw["name"])), base=base, axes=axes,
                     points=list(raw.get("points") or []), optuna=optuna,
                     launch=build(LaunchSpec, raw.get("launch") or {}, "launch"), source=str(path))


def make_trial(spec: SweepSpec, axes: dict, overrides: list[tuple[list[str], Any]]) -> PlannedTrial:
    """The resolved trial of one point; a failure names the point."""
    label = ", ".join(f"{k}={_short(v)}" for k, v in axes.items())
    data = copy.deepcopy({**spec.base, "sweep": spec.name, "experiment": spec.experiment, "axes": axes})
    try:
        for keys, value in overrides:
            set_path(data, keys, copy.deepcopy(value))
        trial = resolve(trial_from_dict(data))
    except ConfigError as err:
        raise ConfigError(f"point {label}: {err.field}", err.reason) from None
    return PlannedTrial(axes=axes, trial=trial, run_id=trial_id(trial))


def on_slurm(p: PlannedTrial, slurm: SlurmSpec) -> PlannedTrial:
    """``p`` as a SLURM job of ``slurm`` runs it: one process per task (the run id stays: a layout is not part of it).
    A batch that does not split over the tasks is refused with the point named."""
    try:
        train = dataclasses.replace(p.trial.train, num_nodes=slurm.nodes, devices=slurm.tasks_per_node)
    except ConfigError as err:
        raise ConfigError(f"point {p.label()}: train.{err.field}", err.reason) from None
    return dataclasses.replace(p, trial=dataclasses.replace(p.trial, train=train))


def compiled_as(p: PlannedTrial, compile_: bool | str) -> PlannedTrial:
    """``p`` with its steps run as ``train.compile`` says (the run id stays: how a step runs is not part of it)."""
    try:
        train = dataclasses.replace(p.trial.train, compile=compile_)
    except ConfigError as err:
        raise ConfigError(f"--compile: train.{err.field}", err.reason) from None
    return dataclasses.replace(p, trial=dataclasses.replace(p.trial, train=train))


def grid_points(spec: SweepSpec) -> list[dict]:
    """Axis keys of every grid point, then the extra points: one that names no seed at every seed of the seed axis,
    one that names a list of seeds at each of them (duplicates dropped, order kept)."""
    names = [a.name for a in spec.axes]
    points = [dict(zip(names, combo)) for combo in itertools.product(*(a.keys() for a in spec.axes))]
    seeds = spec.seed_axis
    for i, extra in enumerate(spec.points):
        if seeds is not None and set(extra) == set(names) - {seeds.name}:
            extra = {**extra, seeds.name: seeds.values}
        if set(extra) != set(names):
            raise ConfigError(f"points[{i}]", f"must name every axis {names}, got {sorted(extra)}")
        if seeds is not None and isinstance(extra[seeds.name], list):
            try:
                listed = seed_axis(extra[seeds.name]).values
            except ConfigError as err:
                raise ConfigError(f"points[{i}].{seeds.name}", err.reason) from None
            points += [{n: seed if n == seeds.name else extra[n] for n in names} for seed in listed]
        else:
            points.append({n: extra[n] for n in names})
    unique = []
    for p in points:
        if p not in unique:
            unique.append(p)
    return unique


def expand(spec: SweepSpec) -> list[PlannedTrial]:
    """Every grid trial, resolved; the whole spec is refused at the first point that cannot be built.

    Axes apply in the order the spec lists them, so a later axis can undo an earlier one (a ``none`` level that
    removes the memory makes the rows axis moot); points that build the same trial are one trial, listed first."""
    if spec.is_study:
        raise ValueError("an Optuna study is sampled while it runs, not expanded")
    by_name = {a.name: a for a in spec.axes}
    seen: dict[str, PlannedTrial] = {}
    for point in grid_points(spec):
        p = make_trial(spec, point, [o for n, k in point.items() for o in _overrides(by_name[n].overrides(k), n)])
        if p.run_id in seen:
            seen[p.run_id].merged.append(point)
        else:
            seen[p.run_id] = p
    return list(seen.values())


def study_trial(spec: SweepSpec, params: dict) -> PlannedTrial:
    """The resolved trial for one set of sampled Optuna parameters (``{dotted.path: value}``)."""
    return make_trial(spec, dict(params), _overrides(params, "optuna"))


def spec_text(spec: SweepSpec) -> str:
    return Path(spec.source).read_text() if Path(spec.source).exists() else yaml.safe_dump(dataclasses.asdict(spec))
