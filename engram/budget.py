"""Parameter and FLOP accounting, and the budget solver that places a model at (P_tot, P_act, rho).

Conventions (the paper's, PAPER.md section 1), stated once here:

* **Components** are counted exactly as :class:`engram.model.EngramLM` builds them (a test compares every one with
  ``sum(p.numel())``): embedding, head, attention, norms, dense_mlp, shared_experts, routed_experts, router,
  hyper_connections, engram_tables, engram_dense (W_V, the W_K and gate norms, the conv and its norm, scalars).
* **P_tot** is every trainable parameter *except* the vocabulary embedding and the output head (both reported
  apart, so analysis can choose its own convention; a tied head counts 0).
* **Active** per token: attention, norms, dense MLPs, shared experts, routers, hyper-connections, Engram's dense
  parts, the top-k of the routed experts, and the Engram rows the token retrieves (one row per sub-table per layer).
* **Sparse**: P_sparse = P_tot - P_act = inactive routed experts (P_moe_sparse) + unretrieved table rows
  (P_engram); **rho** = P_moe_sparse / P_sparse.
* **FLOPs per token** (forward): 2 per multiply-add of every active matrix (attention projections, MLPs, active
  experts, router, Engram projections and conv, hyper-connection mixing, the output head), plus attention scores
  4 * n_layers * (n_heads * head_dim) * T over a context of T = ``seq_len`` tokens (not halved for causality, as in
  nanochat and Chinchilla). Table reads and the embedding are gathers: 0 FLOPs. Training costs 3x the forward.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from engram.config import ConfigError, EngramConfig, ModelConfig
from engram.hashing import table_sizes


@dataclass(frozen=True)
class Counts:
    components: dict  # component -> parameters, as built
    P_tot: int
    P_act: int
    P_sparse: int
    P_moe_sparse: int
    P_engram: int  # unretrieved Engram table rows (the memory's sparse share)
    rho: float | None  # None when there is no sparse budget at all (a dense model)
    experts: int
    top_k: int
    engram_layers: list
    engram_slots: int  # table rows over all layers, orders and heads
    embedding: int
    head: int
    flops_per_token: float  # forward, with attention and head
    flops_per_token_no_attention: float
    seq_len: int

    @property
    def train_flops_per_token(self) -> float:
        return 3.0 * self.flops_per_token

    def as_record(self) -> dict:
        """Flat dict for run records (components flattened as ``params_<name>``)."""
        d = asdict(self)
        comps = d.pop("components")
        d.update({f"params_{k}": v for k, v in comps.items()})
        d["train_flops_per_token"] = self.train_flops_per_token
        return d


def _engram_params(cfg: ModelConfig, sizes: dict[int, list[int]]) -> tuple[int, int, int]:
    """(tables, dense parts, rows retrieved per token x row width) over all Engram layers."""
    e: EngramConfig = cfg.engram
    D, M = cfg.d_model, cfg.hc_mult
    tables = sum(sum(s) for s in sizes.values()) * e.head_dim
    retrieved = len(e.layers) * e.n_subtables * e.head_dim
    if e.variant == "overencoding":
        return tables, 0, retrieved
    value = e.mem_dim * D + (D if e.proj_bias else 0)
    if e.variant == "bigram_hash":
        return tables, len(e.layers) * (value + 1), retrieved
    branches = M if (e.multi_branch and M > 1) else 1
    per_layer = value
    if e.gate != "none":
        per_layer += branches * D * e.mem_dim + (branches * D if e.proj_bias else 0) + 2 * branches * D
    if e.conv:
        per_layer += branches * D + branches * D * e.conv_kernel
    if M > 1 and branches == 1:
        per_layer += 2 * M
    return tables, len(e.layers) * per_layer, retrieved


def count(cfg: ModelConfig, seq_len: int | None = None) -> Counts:
    """Exact per-component parameter counts, the paper's P_tot / P_act / P_sparse / rho, and forward FLOPs."""
    T = seq_len or cfg.max_seq_len
    D, V, L, M = cfg.d_model, cfg.vocab_size, cfg.n_layers, cfg.hc_mult
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    n_moe = cfg.n_moe_layers
    moe = cfg.moe
    expert = 3 * D * moe.expert_hidden if moe else 0
    hc_per_block = 2 * (2 * M + M * M) if M > 1 else 0
    c = {
        "embedding": V * D,
        "head": 0 if cfg.tie_embeddings else V * D,
        "attention": L * (2 * D * q_dim + 2 * D * kv_dim),
        "norms": (2 * L + 1) * D,
        "dense_mlp": (L - n_moe) * 3 * D * cfg.ffn_hidden,
        "shared_experts": n_moe * moe.n_shared * expert if moe else 0,
        "routed_experts": n_moe * moe.n_routed * expert if moe else 0,
        "router": n_moe * D * moe.n_routed if moe else 0,
        "hyper_connections": L * hc_per_block,
        "engram_tables": 0,
        "engram_dense": 0,
    }
    retrieved = slots = 0
    if cfg.engram is not None:
        sizes = table_sizes(cfg.engram)
        c["engram_tables"], c["engram_dense"], retrieved = _engram_params(cfg, sizes)
        slots = sum(sum(s) for s in sizes.values())
    P_tot = sum(v for k, v in c.items() if k not in ("embedding", "head"))
    P_moe_sparse = n_moe * (moe.n_routed - moe.top_k) * expert if moe else 0
    P_engram = c["engram_tables"] - retrieved
    P_act = P_tot - P_moe_sparse - P_engram
    P_sparse = P_tot - P_act

    active_experts = n_moe * moe.top_k * expert if moe else 0
    matmul = (c["attention"] + c["dense_mlp"] + c["shared_experts"] + active_experts + c["router"]
              + V * D)  # the output head multiplies whether tied or not
    if cfg.engram is not None and cfg.engram.variant != "overencoding":
        e = cfg.engram
        branches = M if (e.multi_branch and M > 1) else 1
        per_layer = e.mem_dim * D
        if e.variant == "engram" and e.gate != "none":
            per_layer += branches * D * e.mem_dim
        if e.variant == "engram" and e.conv:
            per_layer += branches * D * e.conv_kernel
        matmul += len(e.layers) * per_layer
    hc_flops = L * 2 * (2 * M * D + M * M * D) if M > 1 else 0  # two hyper-connections per block, read + write
    no_attn = 2.0 * matmul + 2.0 * hc_flops
    attn = 4.0 * L * q_dim * T
    return Counts(
        components=c, P_tot=P_tot, P_act=P_act, P_sparse=P_sparse, P_moe_sparse=P_moe_sparse, P_engram=P_engram,
        rho=(P_moe_sparse / P_sparse) if P_sparse > 0 else None,
        experts=moe.n_routed if moe else 0, top_k=moe.top_k if moe else 0,
        engram_layers=list(cfg.engram.layers) if cfg.engram else [], engram_slots=slots,
        embedding=c["embedding"], head=c["head"],
        flops_per_token=no_attn + attn, flops_per_token_no_attention=no_attn, seq_len=T,
    )


def tokens_for_compute(counts: Counts, compute: float) -> int:
    """Training tokens that spend ``compute`` FLOPs (3x forward per token)."""
    return int(compute // counts.train_flops_per_token)


def _with(base: ModelConfig, experts: int, rows: int | None) -> ModelConfig:
    moe = replace(base.moe, n_routed=experts)
    engram = replace(base.engram, rows=rows) if rows is not None else None
    return replace(base, moe=moe, engram=engram)


def solve(base: ModelConfig, total_params: float, rho: float, active_params: float | None = None,
          tolerance: float = 0.01) -> tuple[ModelConfig, Counts]:
    """The config at ``rho`` whose P_tot hits ``total_params``: routed experts get rho of the sparse budget,
    Engram table rows the rest. Everything else comes from ``base`` (its ``moe.n_routed`` and ``engram.rows`` are
    replaced; ``engram`` supplies layers, orders, heads and width and is dropped at rho = 1).

    Experts are whole, so the achieved rho differs slightly from the request; the table rows absorb the difference,
    so P_tot lands within a few rows of the target. Raises :class:`ConfigError` naming the quantity that cannot be met.
    """
    if not 0.0 <= rho <= 1.0:
        raise ConfigError("rho", f"must lie in [0, 1], got {rho}")
    if base.moe is None:
        raise ConfigError("model.moe", "the solver moves parameters between routed experts and Engram: the base "
                                       "config needs an MoE")
    if rho < 1.0 and (base.engram is None or base.engram.variant != "engram"):
        raise ConfigError("model.engram", f"rho={rho} < 1 gives parameters to Engram: the base config needs an "
                                          "Engram module (variant engram) to say where and how wide")
    k = base.moe.top_k
    per_expert = 3 * base.d_model * base.moe.expert_hidden * base.n_moe_layers
    if per_expert == 0:
        raise ConfigError("model.moe.first_dense", "leaves no MoE layer")
    with_memory = rho < 1.0

    def probe(experts: int) -> Counts:
        return count(_with(base, experts, 1 if with_memory else None))

    experts = max(k, base.moe.n_routed)
    for _ in range(4):  # the router grows with E and is active: a few fixed-point steps settle E
        c = probe(experts)
        budget_sparse = total_params - c.P_act
        if budget_sparse < 0:
            raise ConfigError("total_params", f"{total_params:.4g} is below the activated parameters "
                                              f"{c.P_act:.4g} of this shape")
        experts = k + int(round(rho * budget_sparse / per_expert))
    if not with_memory:
        cfg = _with(base, experts, None)
        return cfg, _checked(cfg, total_params, active_params, tolerance)

    c = probe(experts)
    e = base.engram
    row_params = e.head_dim
    n_tables = len(e.layers) * e.n_subtables
    table_target = total_params - c.P_act - c.P_moe_sparse + len(e.layers) * e.n_subtables * e.head_dim
    rows = int(table_target // (row_params * n_tables))
    if rows < 1:
        raise ConfigError("rho", f"rho={rho} leaves {table_target:.4g} parameters for Engram tables: "
                                 f"less than one row for each of its {n_tables} sub-tables")
    for _ in range(3):  # primes overshoot the request by a few rows per sub-table; take it back
        cfg = _with(base, experts, rows)
        overshoot = count(cfg).engram_slots * row_params - table_target
        step = math.ceil(overshoot / (row_params * n_tables))
        if step <= 0:
            break
        rows = max(1, rows - step)
    cfg = _with(base, experts, rows)
    return cfg, _checked(cfg, total_params, active_params, tolerance)


def _checked(cfg: ModelConfig, total: float, active: float | None, tolerance: float) -> Counts:
    c = count(cfg)
    if abs(c.P_tot - total) > tolerance * total:
        raise ConfigError("total_params", f"achieved P_tot={c.P_tot:,} is more than {tolerance:.0%} from "
                                          f"the target {total:,.0f}")
    if active is not None and abs(c.P_act - active) > tolerance * active:
        raise ConfigError("active_params", f"this shape activates P_act={c.P_act:,} per token, more than "
                                           f"{tolerance:.0%} from the target {active:,.0f}: change the backbone")
    return c


def rho_grid(base: ModelConfig, total_params: float, rhos: list[float], active_params: float | None = None,
             tolerance: float = 0.01) -> list[tuple[float, ModelConfig, Counts]]:
    """Solve every rho of a grid (all must succeed, or the first failure is raised with its rho)."""
    out = []
    for r in rhos:
        try:
            cfg, c = solve(base, total_params, r, active_params, tolerance)
        except ConfigError as err:
            raise ConfigError(err.field, f"at rho={r}: {err.reason}") from None
        out.append((r, cfg, c))
    return out
