"""Trial configuration: defaults -> YAML -> ``key=value`` overrides, resolved once and saved with the run.

A *trial* is one training run. Its resolved form (vocabulary size taken from the data, model placed by the budget
solver when a budget is given) is what the run id hashes and what the run record stores, so a run is reproducible
from its record alone.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from engram.budget import solve
from engram.config import ConfigError, ModelConfig, build
from experiments.data import DataConfig
from experiments.optim import OptimConfig
from engram_lab.records import run_id


@dataclass
class BudgetConfig:
    """Place the model with :func:`engram.budget.solve` instead of taking its expert and row counts as given.

    Attributes:
        total_params: P_tot target (parameters excluding the vocabulary embedding and the head).
        rho: share of the sparse budget given to routed experts (1 = pure MoE, no Engram).
        active_params: P_act target; the solver refuses a shape that misses it by more than ``tolerance``.
        tolerance: relative tolerance on both targets.
    """

    total_params: float = 0.0
    rho: float = 1.0
    active_params: float | None = None
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.total_params <= 0:
            raise ConfigError("total_params", f"must be > 0, got {self.total_params}")
        if not 0.0 <= self.rho <= 1.0:
            raise ConfigError("rho", f"must lie in [0, 1], got {self.rho}")
        if not 0.0 < self.tolerance < 1.0:
            raise ConfigError("tolerance", f"must lie in (0, 1), got {self.tolerance}")


@dataclass
class TrainConfig:
    """How long and how to train.

    Attributes:
        batch_size: sequences per optimizer step, over all devices: each of the ``devices * num_nodes`` ranks takes
            an equal slice of the step's batch, so the run trains on the same batches whatever its layout.
        tokens: training token budget (summed over devices); exactly one of ``tokens`` and ``compute``.
        compute: training FLOPs budget (3x forward FLOPs per token from the accounting); converted to tokens.
        eval_every_tokens: validation loss on the fixed validation set every this many training tokens (and at the
            end); 0 evaluates only at the end.
        val_tokens: size of the fixed validation set.
        checkpoint_every_steps: resumable checkpoint interval (the last one is kept).
        precision: ``auto`` (bf16-mixed on GPU, 32-true on CPU) or any Lightning precision string.
        compile: ``torch.compile`` the model's loss (Engram's lookup stays eager); ``cudagraphs`` compiles it into
            CUDA graphs too (``mode="reduce-overhead"``): a small model's step is otherwise bound by kernel launches.
            On a GPU at the ladder's sizes (torch 2.11) compiled ladder trials stalled until Inductor's
            coalescing tiling analysis was turned off (``engram.compiled``); with it off a compiled and a graphed
            trial end within 0.1% of the eager one's loss (results/README.md, 2026-12-07). ``bash
            benchmarks/on_gpu.sh check`` compares compiled and eager steps and trials on a new machine or torch.
        accelerator: ``auto``, ``cpu`` or ``gpu``.
        devices: devices per node, one process each (data parallel when ``devices * num_nodes > 1``).
        num_nodes: nodes (data parallel across nodes: SLURM tasks, or torchrun).
        strategy: ``auto`` (DDP when there is more than one device) or ``ddp``. FSDP is not offered: Lightning's
            FSDP checkpoints cannot hold the composite optimizer or the row-sharded tables (a sharded table already
            spreads the parameters that outgrow one device).
        shard_tables: with more than one device, each holds 1/W of every Engram table's rows and a step fetches
            the rows it reads by all-to-all (:mod:`engram.sharded`); off, every device holds whole tables and DDP
            all-reduces their gradients.
        log_every_steps: training-loss logging interval.
        loggers: any of ``csv`` (always useful), ``tensorboard``, ``wandb``.
        deterministic: ask torch for deterministic algorithms: a config trains to the same loss every time, ~12%
            slower on an H100. Off, six repeats of one allocation trial there scattered by sd 0.02 nats, as much as
            the paper's effects; sweeps turn it on unless their spec says otherwise (:func:`sweeps.spec.load_spec`).
        progress_bar: show Lightning's progress bar (tokens/s and loss).
    """

    batch_size: int = 16
    tokens: int | None = None
    compute: float | None = None
    eval_every_tokens: int = 0
    val_tokens: int = 32768
    checkpoint_every_steps: int = 200
    precision: str = "auto"
    compile: bool | Literal["cudagraphs"] = False
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp"] = "auto"
    shard_tables: bool = True
    log_every_steps: int = 10
    loggers: list[str] = field(default_factory=lambda: ["csv"])
    deterministic: bool = False
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.compile not in (True, False, "cudagraphs"):
            raise ConfigError("compile", f"true, false or cudagraphs, got {self.compile!r}")
        if (self.tokens is None) == (self.compute is None):
            raise ConfigError("tokens", "give exactly one of train.tokens and train.compute")
        if self.tokens is not None and self.tokens <= 0:
            raise ConfigError("tokens", f"must be > 0, got {self.tokens}")
        if self.compute is not None and self.compute <= 0:
            raise ConfigError("compute", f"must be > 0, got {self.compute}")
        for name in ("batch_size", "val_tokens", "checkpoint_every_steps", "devices", "num_nodes",
                     "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.eval_every_tokens < 0:
            raise ConfigError("eval_every_tokens", f"must be >= 0, got {self.eval_every_tokens}")
        unknown = set(self.loggers) - {"csv", "tensorboard", "wandb"}
        if unknown:
            raise ConfigError("loggers", f"unknown logger(s) {sorted(unknown)}")
        if self.strategy not in ("auto", "ddp"):
            raise ConfigError("strategy", f"must be auto or ddp, got {self.strategy!r}")
        if self.batch_size % self.world:
            raise ConfigError("batch_size", f"{self.batch_size} sequences cannot be split evenly over "
                                            f"{self.world} devices")

    @property
    def world(self) -> int:
        """Data-parallel ranks: one process per device."""
        return self.devices * self.num_nodes


@dataclass
class TrialConfig:
    """One training run.

    Attributes:
        experiment: what the trial belongs to (allocation, memory_scaling, placement, ablation, smoke, ...).
        sweep: the sweep that planned it ("" for a lone run); names the results folder.
        seed: data order and initialisation (hashing has its own ``model.engram.seed``).
        axes: the sweep axis values of this trial (set by the planner; read by analysis).
        model: the architecture; ``vocab_size`` is taken from ``data.vocab_size`` at resolution.
        budget: when set, the model is placed by the budget solver.
        data: corpus, tokenizer and sequence length.
        optim: optimizers and schedule.
        train: budget, precision, devices, checkpoints.
    """

    experiment: str = "custom"
    sweep: str = ""
    seed: int = 0
    axes: dict = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    budget: BudgetConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(tokens=1_000_000))

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {self.seed}")
        if self.sweep:
            check_sweep_name(self.sweep, "sweep")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# A sweep name is one folder under results/ and runs/: nothing that could climb out of them (``../x``, ``/tmp/x``)
# or hide in them (a leading dot).
SWEEP_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_sweep_name(name: str, field_name: str) -> None:
    if not SWEEP_NAME.fullmatch(name) or name.startswith(".") or ".." in name:
        raise ConfigError(field_name, f"{name!r} is not a sweep name: use letters, digits, '_', '-' and '.' (no "
                                      "'..' and no leading '.'); it names a folder under results/ and runs/")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``model.engram.layers=[1,5]`` -> (["model", "engram", "layers"], [1, 5]); values parse as YAML."""
    if "=" not in item:
        raise ConfigError(item, "an override is key=value, e.g. model.d_model=512")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(".".join(path), f"{part} is not a section")
        node = node[part]
    node[path[-1]] = value


def load_yaml(path: str | Path) -> dict:
    """The mapping a config file holds. An empty file (nothing, only comments, or ``{}``) is refused, even where
    ``key=value`` overrides follow: it is far more often a wrong path or a file cut short than a wish for the
    defaults, and overrides such as ``train.tokens=...`` over it would still train the default model, at full cost.
    The defaults are one line away: ``experiment: custom``."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise ConfigError(str(path), f"cannot read the config file ({err.strerror})") from None
    if data is None or data == {}:
        raise ConfigError(str(path), "the config file is empty (nothing but comments or {}); to run the defaults, "
                                     "say so in it, e.g. experiment: custom")
    if not isinstance(data, dict):
        raise ConfigError(str(path), "a trial config is a YAML mapping")
    return data


def trial_from_dict(data: dict, overrides: list[str] = ()) -> TrialConfig:
    data = _deep_copy(data)
    for item in overrides:
        path, value = parse_override(item)
        set_path(data, path, value)
    return build(TrialConfig, data)


def load_trial(path: str | Path, overrides: list[str] = ()) -> TrialConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides; every level validated."""
    return trial_from_dict(load_yaml(path), overrides)


def _deep_copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deep_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep_copy(v) for v in x]
    return x


def resolve(trial: TrialConfig) -> TrialConfig:
    """The trial as it will run: vocabulary from the data, sequence cache covering ``data.seq_len``, and the model
    placed by the budget solver when a budget is given. Pure config work: no data is touched."""
    model = dataclasses.replace(trial.model, vocab_size=trial.data.vocab_size,
                                max_seq_len=max(trial.model.max_seq_len, trial.data.seq_len))
    if trial.budget is not None:
        try:
            model, _ = solve(model, trial.budget.total_params, trial.budget.rho, trial.budget.active_params,
                             trial.budget.tolerance)
        except ConfigError as err:
            field_path = err.field if err.field.startswith("model.") else f"budget.{err.field}"
            raise ConfigError(field_path, err.reason) from None
    return dataclasses.replace(trial, model=model)


def trial_id(resolved: TrialConfig) -> str:
    """The run id: a hash of what the trial does (:func:`engram_lab.records.run_id`)."""
    return run_id(resolved.to_dict())
