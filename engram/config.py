"""Model configuration: typed, documented, validated on construction.

Every dataclass checks its own fields in ``__post_init__`` and raises :class:`ConfigError`, whose message starts with
the dotted path of the offending field (``engram.layers: ...``), so a sweep can refuse a point before anything runs.

Layer indices are 0-based block indices everywhere. The official demo's ``layer_ids=[1, 15]`` are the same numbers
here; the paper's "layers [2, 15]" of the 27B model (and "layer 2" of the placement sweep) are most likely 1-based,
i.e. our ``[1, 14]`` — the paper never says, so the suite takes the numbers literally and leaves the choice to specs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration value that cannot be built; the message names the field and the reason."""

    def __init__(self, field_path: str, reason: str):
        self.field = field_path
        self.reason = reason
        super().__init__(f"{field_path}: {reason}")


def _check(ok: bool, field_path: str, reason: str) -> None:
    if not ok:
        raise ConfigError(field_path, reason)


def _prefixed(prefix: str, err: ConfigError) -> ConfigError:
    return ConfigError(f"{prefix}.{err.field}", err.reason)


@dataclass
class MoEConfig:
    """DeepSeekMoE-style feed-forward: fine-grained routed experts plus always-on shared experts.

    Attributes:
        n_routed: routed experts per MoE layer (E).
        top_k: routed experts each token uses (k <= E).
        n_shared: shared experts per MoE layer, each as large as a routed expert; every token uses all of them.
        expert_hidden: hidden width of one SwiGLU expert.
        first_dense: the first ``first_dense`` blocks use a dense MLP instead of MoE (DeepSeek's leading dense layers).
        score_func: router affinity, ``sigmoid`` (DeepSeek-V3) or ``softmax``.
        route_scale: multiplier on the (normalised) routing weights.
        bias_update_rate: step of auxiliary-loss-free balancing; the per-expert bias moves by this amount toward the
            mean load after each optimizer step. The bias changes selection only, never the gate weights. 0 disables.
        aux_loss_coef: weight of the optional sequence-wise balance loss (0 = off, as in loss-free balancing).
    """

    n_routed: int = 8
    top_k: int = 2
    n_shared: int = 1
    expert_hidden: int = 256
    first_dense: int = 1
    score_func: Literal["sigmoid", "softmax"] = "sigmoid"
    route_scale: float = 1.0
    bias_update_rate: float = 1e-3
    aux_loss_coef: float = 0.0

    def __post_init__(self) -> None:
        _check(self.n_routed >= 1, "n_routed", f"must be >= 1, got {self.n_routed}")
        _check(self.top_k >= 1, "top_k", f"must be >= 1, got {self.top_k}")
        _check(self.top_k <= self.n_routed, "top_k", f"{self.top_k} is larger than n_routed={self.n_routed}")
        _check(self.n_shared >= 0, "n_shared", f"must be >= 0, got {self.n_shared}")
        _check(self.expert_hidden >= 1, "expert_hidden", f"must be >= 1, got {self.expert_hidden}")
        _check(self.first_dense >= 0, "first_dense", f"must be >= 0, got {self.first_dense}")
        _check(self.score_func in ("sigmoid", "softmax"), "score_func", f"unknown {self.score_func!r}")
        _check(self.route_scale > 0, "route_scale", f"must be > 0, got {self.route_scale}")
        _check(self.bias_update_rate >= 0, "bias_update_rate", f"must be >= 0, got {self.bias_update_rate}")
        _check(self.aux_loss_coef >= 0, "aux_loss_coef", f"must be >= 0, got {self.aux_loss_coef}")


@dataclass
class EngramConfig:
    """Conditional memory: hashed N-gram tables read in O(1) and fused through a context-aware gate.

    Attributes:
        variant: ``engram`` (the paper's module, inserted before attention at each of ``layers``),
            ``overencoding`` (hashed N-gram embeddings averaged with the token embedding at the input — the paper's
            baseline; requires ``layers == [0]`` and ``mem_dim == len(orders) * d_model``), or ``bigram_hash``
            (an additive hashed embedding, projected and scaled by a learnable scalar, no gate, no conv — the
            speedrun baseline).
        layers: block indices (0-based) that hold a module; each gets its own tables, multipliers and primes.
        orders: the N-gram orders used (each >= 2); dropping one is the per-order ablation. The hash multipliers are
            drawn for ``max(orders)`` positions, as in the demo's ``max_ngram_size``.
        heads: hash heads K per order; all heads of an order share one XOR mix and differ in their prime modulus.
        mem_dim: width of the concatenated memory vector e_t (the paper's d_mem); each head row has
            ``mem_dim / (len(orders) * heads)`` dimensions.
        rows: requested rows per head sub-table, one per order (an int applies to every order). Each sub-table gets
            the smallest prime >= the request not used by any earlier sub-table (layer -> order -> head order), so the
            built table is a few rows larger than requested; accounting counts the built rows.
        gate: ``sigmoid`` (the paper), ``signed_sqrt`` (the demo: sign(s)*sqrt(|s|) before the sigmoid), or ``none``
            (no key projection, gate fixed at 1).
        conv: the short depthwise causal convolution with SiLU and a residual around it.
        conv_kernel: its kernel width (paper: 4).
        conv_dilation: its dilation; ``None`` means ``max(orders)`` as in the paper.
        conv_init: ``zero`` (paper: the module starts as Y = V) or ``default`` (the demo's PyTorch init).
        compress: map token ids through the vocabulary compression before hashing.
        multi_branch: with hyper-connections (``hc_mult > 1``), one gate and key projection per branch sharing one
            table and value projection (the paper); ``False`` fuses once on the pre-mapped hidden state.
        control: ``none``; ``single_row`` (every head table has exactly one row: a learned bias, the capacity-1
            control); ``frozen_random`` (tables keep their random init and never train).
        pad_id: raw token id whose compressed id fills the positions before the sequence start (the demo uses 2, the
            DeepSeek-V3 tokenizer's).
        seed: hashing seed; layer l draws its multipliers from ``numpy.random.default_rng(seed + 10007 * l)``.
        proj_bias: biases on the key and value projections (the demo has them; the paper is silent).
    """

    variant: Literal["engram", "overencoding", "bigram_hash"] = "engram"
    layers: list[int] = field(default_factory=lambda: [1])
    orders: list[int] = field(default_factory=lambda: [2, 3])
    heads: int = 8
    mem_dim: int = 256
    rows: Any = 4099
    gate: Literal["sigmoid", "signed_sqrt", "none"] = "sigmoid"
    conv: bool = True
    conv_kernel: int = 4
    conv_dilation: int | None = None
    conv_init: Literal["zero", "default"] = "zero"
    compress: bool = True
    multi_branch: bool = True
    control: Literal["none", "single_row", "frozen_random"] = "none"
    pad_id: int = 0
    seed: int = 0
    proj_bias: bool = False

    def __post_init__(self) -> None:
        _check(self.variant in ("engram", "overencoding", "bigram_hash"), "variant", f"unknown {self.variant!r}")
        self.layers = list(self.layers)
        self.orders = list(self.orders)
        _check(len(self.layers) > 0, "layers", "needs at least one layer index")
        _check(len(set(self.layers)) == len(self.layers), "layers", f"repeated index in {self.layers}")
        _check(all(isinstance(x, int) and x >= 0 for x in self.layers), "layers", f"indices must be ints >= 0: {self.layers}")
        self.layers = sorted(self.layers)
        _check(len(self.orders) > 0, "orders", "needs at least one N-gram order")
        _check(all(isinstance(n, int) and n >= 2 for n in self.orders), "orders", f"orders must be ints >= 2: {self.orders}")
        _check(len(set(self.orders)) == len(self.orders), "orders", f"repeated order in {self.orders}")
        self.orders = sorted(self.orders)
        _check(self.heads >= 1, "heads", f"must be >= 1, got {self.heads}")
        _check(self.mem_dim >= 1, "mem_dim", f"must be >= 1, got {self.mem_dim}")
        per = len(self.orders) * self.heads
        _check(self.mem_dim % per == 0, "mem_dim",
               f"{self.mem_dim} is not divisible by len(orders) * heads = {per}")
        if isinstance(self.rows, int):
            self.rows = [self.rows] * len(self.orders)
        self.rows = [int(r) for r in self.rows]
        _check(len(self.rows) == len(self.orders), "rows",
               f"gives {len(self.rows)} sizes for {len(self.orders)} orders {self.orders}")
        _check(all(r >= 1 for r in self.rows), "rows", f"every table needs >= 1 row: {self.rows}")
        _check(self.gate in ("sigmoid", "signed_sqrt", "none"), "gate", f"unknown {self.gate!r}")
        _check(self.conv_kernel >= 1, "conv_kernel", f"must be >= 1, got {self.conv_kernel}")
        _check(self.conv_dilation is None or self.conv_dilation >= 1, "conv_dilation",
               f"must be >= 1, got {self.conv_dilation}")
        _check(self.conv_init in ("zero", "default"), "conv_init", f"unknown {self.conv_init!r}")
        _check(self.control in ("none", "single_row", "frozen_random"), "control", f"unknown {self.control!r}")
        _check(self.pad_id >= 0, "pad_id", f"must be >= 0, got {self.pad_id}")
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        if self.variant == "overencoding":
            _check(self.layers == [0], "layers", "overencoding sits at the input embedding: use layers [0]")

    @property
    def head_dim(self) -> int:
        return self.mem_dim // (len(self.orders) * self.heads)

    @property
    def max_order(self) -> int:
        return max(self.orders)

    @property
    def dilation(self) -> int:
        return self.conv_dilation if self.conv_dilation is not None else self.max_order

    @property
    def n_subtables(self) -> int:
        """Sub-tables per layer: one per (order, head)."""
        return len(self.orders) * self.heads


@dataclass
class ModelConfig:
    """A decoder-only language model: the backbone shape, and optional MoE and Engram modules.

    Attributes:
        vocab_size: token vocabulary size (embedding and output head rows).
        d_model: residual stream width D.
        n_layers: Transformer blocks.
        n_heads: attention heads; ``d_model`` must divide by it.
        n_kv_heads: key/value heads for grouped-query attention; ``None`` means ``n_heads``.
        max_seq_len: longest sequence the rotary cache covers; also the context length used for attention FLOPs.
        rope_theta: RoPE base.
        ffn_hidden: hidden width of the dense SwiGLU MLP (used by every block without MoE).
        norm_eps: RMSNorm epsilon.
        tie_embeddings: share the input embedding and output head weights.
        hc_mult: residual streams M of the hyper-connections (1 = a plain residual stream). The paper's models use
            manifold-constrained hyper-connections with M = 4; here they are static (learned, input-independent)
            with the residual mixing matrix projected onto doubly stochastic matrices by Sinkhorn iterations.
        init_std: standard deviation of the normal init of matrices (output projections are scaled by
            1/sqrt(2 * n_layers)).
        moe: MoE feed-forward settings; ``None`` makes every block dense.
        engram: conditional-memory settings; ``None`` means no memory.
    """

    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    ffn_hidden: int = 768
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    hc_mult: int = 1
    init_std: float = 0.02
    moe: MoEConfig | None = None
    engram: EngramConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.moe, dict):
            self.moe = build(MoEConfig, self.moe, "moe")
        if isinstance(self.engram, dict):
            self.engram = build(EngramConfig, self.engram, "engram")
        _check(self.vocab_size >= 2, "vocab_size", f"must be >= 2, got {self.vocab_size}")
        _check(self.d_model >= 1, "d_model", f"must be >= 1, got {self.d_model}")
        _check(self.n_layers >= 1, "n_layers", f"must be >= 1, got {self.n_layers}")
        _check(self.n_heads >= 1, "n_heads", f"must be >= 1, got {self.n_heads}")
        _check(self.d_model % self.n_heads == 0, "n_heads", f"d_model={self.d_model} is not divisible by {self.n_heads}")
        _check((self.d_model // self.n_heads) % 2 == 0, "n_heads", "head dimension must be even for RoPE")
        kv = self.kv_heads
        _check(kv >= 1 and self.n_heads % kv == 0, "n_kv_heads", f"{kv} must divide n_heads={self.n_heads}")
        _check(self.max_seq_len >= 1, "max_seq_len", f"must be >= 1, got {self.max_seq_len}")
        _check(self.rope_theta > 0, "rope_theta", f"must be > 0, got {self.rope_theta}")
        _check(self.ffn_hidden >= 1, "ffn_hidden", f"must be >= 1, got {self.ffn_hidden}")
        _check(self.norm_eps > 0, "norm_eps", f"must be > 0, got {self.norm_eps}")
        _check(self.hc_mult >= 1, "hc_mult", f"must be >= 1, got {self.hc_mult}")
        _check(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")
        if self.moe is not None:
            _check(self.moe.first_dense <= self.n_layers, "moe.first_dense",
                   f"{self.moe.first_dense} exceeds n_layers={self.n_layers}")
        if self.engram is not None:
            bad = [x for x in self.engram.layers if x >= self.n_layers]
            _check(not bad, "engram.layers",
                   f"{bad} outside the model (n_layers={self.n_layers}, valid 0..{self.n_layers - 1})")
            _check(self.engram.pad_id < self.vocab_size, "engram.pad_id",
                   f"{self.engram.pad_id} is not a token id (vocab_size={self.vocab_size})")
            if self.engram.variant == "overencoding":
                want = len(self.engram.orders) * self.d_model
                _check(self.engram.mem_dim == want, "engram.mem_dim",
                       f"overencoding gives each order a full d_model embedding: mem_dim must be {want}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.moe.first_dense

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layers))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Building dataclasses from plain data (YAML, JSON, CLI overrides): unknown keys and wrong types name their field.


def build(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, validating every level; errors carry the full dotted path."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    where = f"{prefix}." if prefix else ""
    if not isinstance(data, dict):
        raise ConfigError(prefix or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}", f"unknown field of {cls.__name__} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}{key}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise (_prefixed(prefix, err) if prefix else err) from None


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, path)
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    if hint is Any or origin is Literal:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true/false, got {value!r}")
    if hint in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "2e6" as a string; accept numbers written that way
            value = float(value)
        except ValueError:
            raise ConfigError(path, f"expected a number, got {value!r}") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    return value
