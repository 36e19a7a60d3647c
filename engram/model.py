"""The language model: a decoder-only Transformer with MoE or dense FFNs and Engram at any set of layers.

Each block runs ``[Engram] -> attention -> FFN`` on the residual stream. With ``hc_mult = M > 1`` the stream is M
wide (hyper-connections); otherwise M = 1 and every hyper-connection is a plain residual add.
All Engram rows of a batch are read up front from the token ids alone (:meth:`EngramLM.memory`: hash and gather
fused in one kernel per layer) — the property the paper uses to prefetch rows — and passed to the layers that use
them. A caller may pass them in (``forward(ids, memory=...)``): a compiled backbone then starts after the lookup,
and :mod:`engram.offload` passes rows it is still copying from host memory (each layer waits for its own). With
tables sharded over data-parallel ranks (:mod:`engram.sharded`), the same call fetches rows from their owners.

Shapes: B batch, T time, M streams, D model width, V vocabulary, L Engram layers, S sub-tables per layer.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engram.compress import Compression
from engram.config import ModelConfig
from engram.hashing import NgramHasher, table_sizes
from engram.layers import Attention, HyperConnection, RMSNorm, SwiGLU, rope_tables
from engram.memory import Engram, OverEncoding
from engram.moe import MoE

# Parameter kinds, in the order reports list them; see engram.budget for what is active and what is sparse.
COMPONENTS = ("embedding", "head", "attention", "norms", "dense_mlp", "shared_experts", "routed_experts", "router",
              "hyper_connections", "engram_tables", "engram_dense")


def component_of(name: str) -> str:
    """The kind of a parameter, from the module names on its path in :class:`EngramLM`."""
    parts = name.split(".")
    if parts[0] in ("embed", "head"):
        return "embedding" if parts[0] == "embed" else "head"
    if "tables" in parts:
        return "engram_tables"
    if "engram" in parts:
        return "engram_dense"
    if "moe" in parts:
        return {"router": "router", "shared": "shared_experts"}.get(parts[parts.index("moe") + 1], "routed_experts")
    for part in parts:
        if part == "attn":
            return "attention"
        if part == "mlp":
            return "dense_mlp"
        if part.endswith("_hc"):
            return "hyper_connections"
        if part.endswith("norm"):
            return "norms"
    raise KeyError(f"parameter {name!r} has no component")


def _ready(rows):
    """Rows of one memory layer: a tensor, or an in-flight read (``wait()`` makes this stream wait for it)."""
    return rows if isinstance(rows, torch.Tensor) else rows.wait()


@dataclass
class LMOutput:
    loss: torch.Tensor  # the training objective: lm_loss + aux_loss
    lm_loss: torch.Tensor  # mean next-token cross-entropy (nats)
    aux_loss: torch.Tensor  # MoE balance loss (0 when off)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, engram: Engram | None):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.is_moe_layer(layer):
            self.moe = MoE(cfg.d_model, cfg.moe)
        else:
            self.mlp = SwiGLU(cfg.d_model, cfg.ffn_hidden)
        self.attn_hc = HyperConnection(cfg.hc_mult) if cfg.hc_mult > 1 else None
        self.ffn_hc = HyperConnection(cfg.hc_mult) if cfg.hc_mult > 1 else None
        self.engram = engram

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x) if hasattr(self, "moe") else self.mlp(x)

    @staticmethod
    def _residual(x_BTMD: torch.Tensor, hc: HyperConnection | None, f) -> torch.Tensor:
        if hc is None:
            return x_BTMD + f(x_BTMD[:, :, 0])[:, :, None]
        return hc.write(x_BTMD, f(hc.read(x_BTMD)))

    def forward(self, x_BTMD, memory_BTE, cos, sin, memory: bool = True):
        if self.engram is not None and memory:
            x_BTMD = self.engram(x_BTMD, memory_BTE)
        x_BTMD = self._residual(x_BTMD, self.attn_hc, lambda h: self.attn(self.attn_norm(h), cos, sin))
        return self._residual(x_BTMD, self.ffn_hc, lambda h: self.ffn(self.ffn_norm(h)))


class EngramLM(nn.Module):
    """``EngramLM(config, compression)``: ``forward(input_ids) -> logits``; ``loss(input_ids, targets)``.

    ``compression`` is the vocabulary map built from the tokenizer (:class:`engram.compress.Compression`); it is kept
    as a buffer, so a checkpoint carries it. Without one, or with ``engram.compress = False``, ids hash unmapped.
    """

    def __init__(self, config: ModelConfig, compression: Compression | None = None):
        super().__init__()
        self.config = cfg = config
        e = cfg.engram
        self.memory_enabled = True
        self.table_shards = None  # engram.sharded.TableShards once the tables are split over ranks
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.hasher = self.overencoding = None
        sizes = {}
        if e is not None:
            if compression is None or not e.compress:
                compression = Compression.identity(cfg.vocab_size)
            if compression.vocab_size != cfg.vocab_size:
                raise ValueError(f"compression covers {compression.vocab_size} ids but vocab_size={cfg.vocab_size}")
            self.compression = compression
            self.hasher = NgramHasher(e, compression)
            sizes = table_sizes(e)
            if e.variant == "overencoding":
                self.overencoding = OverEncoding(cfg, sizes[0])
        self.engram_layers = list(e.layers) if (e is not None and e.variant != "overencoding") else []
        self.blocks = nn.ModuleList(
            Block(cfg, i, Engram(cfg, sizes[i]) if i in self.engram_layers else None) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    # -- initialisation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) matrices, output projections scaled by 1/sqrt(2 L); tables and the conv per config."""
        cfg, std = self.config, self.config.init_std
        out_std = std / math.sqrt(2 * cfg.n_layers)
        keep = set()  # modules that own their init: norms start at 1, hyper-connections as a plain residual
        for module in self.modules():
            if isinstance(module, (RMSNorm, HyperConnection)):
                module.reset_parameters()
                keep.update(id(p) for p in module.parameters())
        for name, p in self.named_parameters():
            if id(p) in keep:
                continue
            kind = component_of(name)
            if kind == "embedding":
                nn.init.normal_(p, std=std if cfg.tie_embeddings else 1.0)
            elif kind == "engram_tables":
                if cfg.engram.variant == "bigram_hash":
                    nn.init.zeros_(p)  # the speedrun's zero-initialised table, read through a scaled projection
                else:  # Engram reads through normalised projections (the demo's N(0, 1)); OverEncoding is summed
                    nn.init.normal_(p, std=1.0 if cfg.engram.variant == "engram" else self.embed.weight.std().item())
            elif name.endswith("conv_weight"):
                if cfg.engram.conv_init == "zero":
                    nn.init.zeros_(p)
                else:  # PyTorch's Conv1d default: U(-b, b), b = 1/sqrt(fan_in), fan_in = kernel for depthwise
                    bound = 1 / math.sqrt(p.shape[-1])
                    nn.init.uniform_(p, -bound, bound)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith("scale"):
                p.fill_(0.1)
            elif name.endswith(("wo.weight", "w2.weight", "w2_EDF")):
                nn.init.normal_(p, std=out_std)
            else:
                nn.init.normal_(p, std=std)

    # -- forward --------------------------------------------------------------------------------------------------
    def slots(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Every Engram layer's slots for a batch, [L, B, T, S], from token ids alone."""
        return self.hasher(input_ids) if self.hasher is not None else None

    def memory_tables(self) -> list:
        """The :class:`~engram.memory.HashedTables` of each memory layer, in the order of ``config.engram.layers``."""
        if self.overencoding is not None:
            return [self.overencoding.tables]
        return [m.tables for m in self.engram_modules()]

    def memory(self, input_ids: torch.Tensor) -> list[torch.Tensor] | None:
        """Every memory layer's rows [B, T, E] for a batch, from token ids alone (one fused lookup per layer)."""
        if self.hasher is None:
            return None
        h = self.hasher
        ids_BT = h.compress(input_ids)
        if self.table_shards is not None:  # the rows live on several ranks: hash here, fetch them by all-to-all
            rows = [tables.rows(ids_BT, h.multipliers_LN[i], h.primes_LS[i], h.orders, h.heads, h.pad)
                    for i, tables in enumerate(self.memory_tables())]
            return self.table_shards.read(rows, self.memory_tables())
        return [tables.lookup(ids_BT, h.multipliers_LN[i], h.primes_LS[i], h.orders, h.heads, h.pad)
                for i, tables in enumerate(self.memory_tables())]

    def set_row_sparse_tables(self, enabled: bool = True) -> None:
        """Give every table a row-sparse (COO) gradient, for :class:`engram.optim_tables.RowSparseAdam`."""
        for tables in self.memory_tables():
            tables.row_sparse = enabled

    def set_kernels(self, kernels: str | None) -> None:
        """Force the lookup's implementation: ``torch``, ``triton``, ``auto``; ``None`` defers to ENGRAM_KERNELS."""
        for tables in self.memory_tables():
            tables.kernels = kernels

    def forward(self, input_ids: torch.Tensor, output_hidden: bool = False, memory: list | None = None):
        """Logits [B, T, V]; with ``output_hidden``, also the residual stream after the embedding and each block.

        ``memory``: the rows of :meth:`memory` for these ids, computed here when not given; an entry may also be an
        object with ``wait() -> rows`` (rows still arriving), awaited just before its layer runs."""
        B, T = input_ids.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len={self.config.max_seq_len}")
        if memory is None and self.memory_enabled:
            memory = self.memory(input_ids)
        x_BTD = self.embed(input_ids)
        if self.overencoding is not None and self.memory_enabled:
            x_BTD = self.overencoding(x_BTD, _ready(memory[0]))
        x_BTMD = x_BTD[:, :, None, :].expand(B, T, self.config.hc_mult, -1)
        hidden = [x_BTD] if output_hidden else None
        for i, block in enumerate(self.blocks):
            rows = None
            if block.engram is not None and self.memory_enabled:
                rows = _ready(memory[self.engram_layers.index(i)])
            x_BTMD = block(x_BTMD, rows, self.rope_cos, self.rope_sin, memory=self.memory_enabled)
            if output_hidden:
                hidden.append(x_BTMD.sum(2))
        logits = self.logits(x_BTMD.sum(2))
        return (logits, hidden) if output_hidden else logits

    def logits(self, h_BTD: torch.Tensor) -> torch.Tensor:
        """The output distribution's logits from a residual stream state (the final norm and the head)."""
        weight = self.embed.weight if self.head is None else self.head.weight
        return F.linear(self.norm(h_BTD), weight)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
             memory: list | None = None) -> LMOutput:
        logits = self(input_ids, memory=memory)
        lm = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
        aux = sum((m.aux_loss for m in self.moe_layers() if m.aux_loss is not None), torch.zeros((), device=lm.device))
        return LMOutput(loss=lm + aux, lm_loss=lm, aux_loss=aux)

    # -- training hooks, ablations, accounting --------------------------------------------------------------------
    def moe_layers(self) -> list[MoE]:
        return [b.moe for b in self.blocks if hasattr(b, "moe")]

    def engram_modules(self) -> list[Engram]:
        return [b.engram for b in self.blocks if b.engram is not None]

    def update_router_biases(self) -> None:
        """Auxiliary-loss-free balancing: call once per optimizer step, before it."""
        for m in self.moe_layers():
            m.update_bias()

    @contextmanager
    def memory_off(self):
        """Run with every Engram (or OverEncoding) output suppressed, the backbone unchanged (the paper's Fig. 6)."""
        previous, self.memory_enabled = self.memory_enabled, False
        try:
            yield self
        finally:
            self.memory_enabled = previous

    def table_parameters(self) -> list[nn.Parameter]:
        """The hashed tables (optimised apart: Adam, larger LR, no weight decay)."""
        return [p for n, p in self.named_parameters() if component_of(n) == "engram_tables"]

    def parameter_counts(self) -> dict[str, int]:
        """Built parameters per component (frozen ones included); must equal :func:`engram.budget.count`."""
        counts = dict.fromkeys(COMPONENTS, 0)
        for name, p in self.named_parameters():
            counts[component_of(name)] += p.numel()
        return counts

    def flops_per_token(self, seq_len: int | None = None, attention: bool = True) -> float:
        from engram.budget import count

        c = count(self.config, seq_len=seq_len)
        return c.flops_per_token if attention else c.flops_per_token_no_attention
