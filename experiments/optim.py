"""Optimizers and learning-rate schedules, with the parameter groups the paper uses.

* Engram tables: Adam at ``table_lr_mult`` x the base learning rate with no weight decay (PAPER.md 3.1: x5, 0),
  dense or row-sparse (``table_optimizer``).
* Backbone: AdamW, or ``torch.optim.Muon`` for every 2-D hidden matrix (attention, dense and shared-expert MLPs,
  Engram's value projection) with AdamW for the rest: embedding, head, norms, router, hyper-connections and the
  3-D stacks (routed experts, per-branch keys), which ``torch.optim.Muon`` does not take.
* Weight decay applies to matrices only (not to norms, hyper-connection gains, biases, the embedding or the tables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from engram.config import ConfigError
from engram.layers import HyperConnection, RMSNorm
from engram.model import EngramLM, component_of
from engram.optim_tables import RowSparseAdam


@dataclass
class OptimConfig:
    """Attributes:
        optimizer: ``adamw`` for the whole backbone, or ``muon`` for its 2-D hidden matrices (AdamW for the rest).
        lr: AdamW base learning rate (peak, after warm-up).
        weight_decay: decoupled weight decay of matrices.
        betas: Adam betas.
        eps: Adam epsilon.
        muon_lr: Muon's learning rate (its updates are orthogonalised, so it lives on another scale).
        muon_momentum: Muon's momentum.
        table_lr_mult: Engram/OverEncoding table learning rate as a multiple of ``lr``.
        table_weight_decay: weight decay of the tables.
        table_optimizer: ``adam`` (dense: every row's moments move every step, as the paper's Adam does) or
            ``row_sparse_adam`` (:class:`engram.optim_tables.RowSparseAdam`: the step costs in proportion to the rows
            the batch read, with lazy moments; its effect on loss is an ablation).
        schedule: ``cosine`` (to ``min_lr_ratio``), ``wsd`` (warm-up, stable, linear decay over the last
            ``decay_fraction``) or ``constant``.
        warmup_steps: linear warm-up from 0.
        min_lr_ratio: final learning rate as a fraction of the peak.
        decay_fraction: share of the steps spent decaying under ``wsd``.
        grad_clip: clip the global gradient norm to this (0 = off).
    """

    optimizer: Literal["adamw", "muon"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    table_lr_mult: float = 5.0
    table_weight_decay: float = 0.0
    table_optimizer: Literal["adam", "row_sparse_adam"] = "adam"
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lr", "muon_lr", "table_lr_mult"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "table_weight_decay", "grad_clip", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("betas", f"two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("min_lr_ratio", f"must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError("decay_fraction", f"must lie in (0, 1], got {self.decay_fraction}")
        if self.optimizer not in ("adamw", "muon"):
            raise ConfigError("optimizer", f"unknown {self.optimizer!r}")
        if self.table_optimizer not in ("adam", "row_sparse_adam"):
            raise ConfigError("table_optimizer", f"unknown {self.table_optimizer!r}")
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ConfigError("schedule", f"unknown {self.schedule!r}")


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        decay_start = total * (1 - cfg.decay_fraction)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1.0, total - decay_start))
        return 1.0 - (1.0 - cfg.min_lr_ratio) * progress
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


MUON_COMPONENTS = ("attention", "dense_mlp", "shared_experts", "engram_dense")


def parameter_groups(model: EngramLM, cfg: OptimConfig) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Parameters by optimizer group: ``tables``, ``muon`` (when used), ``decay`` and ``no_decay``."""
    groups: dict[str, list] = {"tables": [], "muon": [], "decay": [], "no_decay": []}
    gains = {id(p) for m in model.modules() if isinstance(m, (RMSNorm, HyperConnection)) for p in m.parameters()}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = component_of(name)
        if kind == "engram_tables":
            groups["tables"].append((name, p))
        elif id(p) in gains:
            groups["no_decay"].append((name, p))
        elif cfg.optimizer == "muon" and p.ndim == 2 and kind in MUON_COMPONENTS:
            groups["muon"].append((name, p))
        elif p.ndim >= 2 and kind != "embedding":
            groups["decay"].append((name, p))
        else:
            groups["no_decay"].append((name, p))
    return groups


class OptimizerSet(torch.optim.Optimizer):
    """Several optimizers stepped as one, so a trainer counts one optimizer step per batch.

    ``param_groups`` are read from the members every time (loading a state dict replaces a member's group dicts,
    so a cached list would go stale); state lives in the members, and the state dict is the list of theirs.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = []  # empty while the base class registers the parameters, so it sees no duplicates
        super().__init__([p for o in optimizers for g in o.param_groups for p in g["params"]], {})
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    @param_groups.setter
    def param_groups(self, _groups) -> None:
        pass  # the members own their groups; the base class's own bookkeeping list is not needed

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        if len(state_dict["optimizers"]) != len(self.optimizers):
            raise ValueError(f"checkpoint holds {len(state_dict['optimizers'])} optimizers, this run builds "
                             f"{len(self.optimizers)}: the optimizer config changed")
        for opt, sd in zip(self.optimizers, state_dict["optimizers"]):
            opt.load_state_dict(sd)


def build_optimizers(model: EngramLM, cfg: OptimConfig) -> OptimizerSet:
    """One optimizer per update rule; every group records its peak ``initial_lr`` for the schedule."""
    groups = parameter_groups(model, cfg)
    betas = tuple(cfg.betas)
    adamw_groups = [
        {"params": [p for _, p in groups["decay"]], "weight_decay": cfg.weight_decay, "initial_lr": cfg.lr},
        {"params": [p for _, p in groups["no_decay"]], "weight_decay": 0.0, "initial_lr": cfg.lr},
    ]
    optimizers = [torch.optim.AdamW([g for g in adamw_groups if g["params"]], lr=cfg.lr, betas=betas, eps=cfg.eps,
                                    fused=_fusable(model.parameters()))]
    if groups["muon"]:
        optimizers.append(torch.optim.Muon([p for _, p in groups["muon"]], lr=cfg.muon_lr,
                                           weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum))
        optimizers[-1].param_groups[0]["initial_lr"] = cfg.muon_lr
    if groups["tables"]:
        table_lr = cfg.lr * cfg.table_lr_mult
        tables = [p for _, p in groups["tables"]]
        if cfg.table_optimizer == "row_sparse_adam":
            model.set_row_sparse_tables(True)
            optimizers.append(RowSparseAdam(tables, lr=table_lr, betas=betas, eps=cfg.eps,
                                            weight_decay=cfg.table_weight_decay))
        else:
            optimizers.append(torch.optim.Adam(tables, lr=table_lr, betas=betas, eps=cfg.eps,
                                               weight_decay=cfg.table_weight_decay, fused=_fusable(tables)))
        optimizers[-1].param_groups[0]["initial_lr"] = table_lr
    return OptimizerSet(optimizers)


def _fusable(params) -> bool | None:
    """True where every parameter is on a GPU: one fused kernel per step in place of a few per parameter list, which
    is most of a small model's optimizer time (the update is the same elementwise arithmetic either way)."""
    return True if all(p.is_cuda for p in params) else None


def set_learning_rates(optimizer: torch.optim.Optimizer, step: int, total: int, cfg: OptimConfig) -> float:
    factor = lr_factor(step, total, cfg)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return factor
