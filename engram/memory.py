"""The Engram module and its baselines: hashed N-gram tables fused into the residual stream.

Engram (paper, Eqs. 3-6), per layer, for memory vector e_t (the concatenated rows of all heads and orders):

    k_t = W_K e_t,  v_t = W_V e_t
    a_t = sigmoid( RMSNorm(h_t) . RMSNorm(k_t) / sqrt(D) )       (one gate per hyper-connection branch)
    V~  = a_t * v_t
    Y   = SiLU(Conv1D(RMSNorm(V~))) + V~                        (depthwise, causal, kernel 4, dilation max N)
    H  <- H + Y                                                 (before attention and the FFN)

With M hyper-connection branches the table and W_V are shared and each branch has its own W_K and gate; the conv
runs over all M*D channels. Baselines: :class:`OverEncoding` (N-gram embeddings averaged with the token embedding
at the input) and the ``bigram_hash`` variant of :class:`Engram` (scaled W_V e_t added with no gate and no conv).

Shapes: B batch, T time, M branches, D model width, S sub-tables (orders x heads), R table rows (all sub-tables),
J head row width, E = S*J memory width.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from engram.config import ModelConfig
from engram.kernels import backend
from engram.kernels.lookup import engram_lookup, rows_reference, rows_triton
from engram.layers import HyperConnection, RMSNorm


def _offsets(sizes: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(sizes)][:-1], dtype=torch.long)


class HashedTables(nn.Module):
    """All sub-tables of one layer in one [R, J] parameter with per-sub-table row offsets (one gather per step).

    Two entries: ``forward(slots_BTS)`` gathers precomputed slots (the reference interface), and
    ``lookup(ids_BT, ...)`` hashes and gathers in one fused kernel (:mod:`engram.kernels.lookup`; the PyTorch
    reference where Triton cannot run). Settings read at each call:

    * ``row_sparse`` — the table's gradient is a sparse COO tensor (rows read, no table-sized buffer), to be
      stepped by :class:`engram.optim_tables.RowSparseAdam`; otherwise dense (what ``torch.optim`` expects),
      accumulated with atomics, or in a fixed order when ``torch.use_deterministic_algorithms(True)`` is on.
    * ``kernels`` — ``auto | torch | triton`` (``None``: the ``ENGRAM_KERNELS`` environment variable, else auto).
    * ``shard`` — ``(rank, world)`` once :func:`engram.sharded.shard_tables_` has left only this rank's rows in
      ``weight`` (rows ``rank, rank + world, ...``); such a table is read through ``EngramLM.memory`` (the
      all-to-all), and its own gathers refuse to run.
    """

    def __init__(self, sizes: list[int], row_dim: int, frozen: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(sum(sizes), row_dim), requires_grad=not frozen)
        self.register_buffer("offsets_S", _offsets(sizes), persistent=False)
        self.sizes = list(sizes)
        self.row_sparse = False
        self.kernels: str | None = None
        self.shard: tuple[int, int] | None = None

    @property
    def total_rows(self) -> int:
        """Rows of the whole table (all sub-tables), however many of them this process holds."""
        return sum(self.sizes)

    def _whole(self) -> None:
        if self.shard is not None:
            raise RuntimeError(f"this table holds rank {self.shard[0]}'s shard of {self.shard[1]}: read it through "
                               "EngramLM.memory, which fetches rows from their owners")

    def forward(self, slots_BTS: torch.Tensor) -> torch.Tensor:
        """Rows of every head, concatenated: [B, T, S*J]."""
        self._whole()
        rows = F.embedding(slots_BTS + self.offsets_S, self.weight, sparse=self.row_sparse)
        return rows.flatten(-2)

    def grad_mode(self) -> str:
        if self.row_sparse:
            return "sparse"
        return "sorted" if torch.are_deterministic_algorithms_enabled() else "atomic"

    def lookup(self, ids_BT: torch.Tensor, multipliers_K: torch.Tensor, primes_S: torch.Tensor, orders: list[int],
               heads: int, pad: int) -> torch.Tensor:
        """Rows [B, T, S*J] for compressed ids: slots as ``hashing.hash_mixed`` computes them, gathered.

        Under autocast a float32 table is read out in the autocast dtype (what every consumer casts it to)."""
        self._whole()
        return engram_lookup(ids_BT, self.weight, multipliers_K, primes_S, self.offsets_S, orders, heads, pad,
                             grad_mode=self.grad_mode(), out_dtype=self.read_dtype(), kernels=self.kernels)

    def read_dtype(self) -> torch.dtype:
        """The dtype rows are read out in: the table's, or the autocast dtype for a float32 table under autocast."""
        dtype = self.weight.dtype
        device = self.weight.device.type
        if dtype == torch.float32 and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        return dtype

    def rows(self, ids_BT: torch.Tensor, multipliers_K: torch.Tensor, primes_S: torch.Tensor, orders: list[int],
             heads: int, pad: int) -> torch.Tensor:
        """Whole-table row ids [B, T, S] (slot + sub-table offset) that :meth:`lookup` would gather, ungathered."""
        find = rows_triton if backend(ids_BT.device, self.kernels) == "triton" else rows_reference
        return find(ids_BT, multipliers_K, primes_S, self.offsets_S, orders, heads, pad)


class Engram(nn.Module):
    def __init__(self, cfg: ModelConfig, sizes: list[int]):
        super().__init__()
        e = cfg.engram
        assert e is not None and e.variant in ("engram", "bigram_hash")
        D, M = cfg.d_model, cfg.hc_mult
        self.variant, self.gate_kind, self.d_model = e.variant, e.gate, D
        self.tables = HashedTables(sizes, e.head_dim, frozen=e.control == "frozen_random")
        self.value = nn.Linear(e.mem_dim, D, bias=e.proj_bias)
        self.key = self.key_bias = self.norm_key = self.norm_query = None
        self.conv_norm = self.conv_weight = self.fusion = self.scale = None
        self.record_gates = False
        self.last_gates: torch.Tensor | None = None
        if e.variant == "bigram_hash":
            self.scale = nn.Parameter(torch.tensor(0.1))
            return
        branches = M if (e.multi_branch and M > 1) else 1
        self.branches = branches
        if M > 1 and branches == 1:
            self.fusion = HyperConnection(M, mix=False)
        if e.gate != "none":
            self.key = nn.Parameter(torch.empty(branches, D, e.mem_dim))
            self.key_bias = nn.Parameter(torch.zeros(branches, D)) if e.proj_bias else None
            self.norm_key = RMSNorm((branches, D), eps=cfg.norm_eps)
            self.norm_query = RMSNorm((branches, D), eps=cfg.norm_eps)
        if e.conv:
            self.conv_kernel, self.conv_dilation = e.conv_kernel, e.dilation
            self.conv_norm = RMSNorm((branches, D), eps=cfg.norm_eps)
            self.conv_weight = nn.Parameter(torch.empty(branches * D, 1, e.conv_kernel))

    def gates(self, h_BTMD: torch.Tensor, e_BTE: torch.Tensor) -> torch.Tensor:
        """Gate per branch [B, T, M] in (0, 1)."""
        k_BTMD = torch.einsum("bte,mde->btmd", e_BTE, self.key.to(e_BTE.dtype))
        if self.key_bias is not None:
            k_BTMD = k_BTMD + self.key_bias
        s_BTM = (self.norm_query(h_BTMD) * self.norm_key(k_BTMD)).sum(-1) / math.sqrt(self.d_model)
        if self.gate_kind == "signed_sqrt":
            s_BTM = s_BTM.sign() * s_BTM.abs().clamp_min(1e-6).sqrt()
        return torch.sigmoid(s_BTM)

    def short_conv(self, v_BTMD: torch.Tensor) -> torch.Tensor:
        """Depthwise causal conv over M*D channels: SiLU(Conv1D(RMSNorm(V)))."""
        B, T, M, D = v_BTMD.shape
        x = self.conv_norm(v_BTMD).reshape(B, T, M * D).transpose(1, 2)
        x = F.pad(x, ((self.conv_kernel - 1) * self.conv_dilation, 0))
        y = F.conv1d(x, self.conv_weight.to(x.dtype), groups=M * D, dilation=self.conv_dilation)
        return F.silu(y).transpose(1, 2).reshape(B, T, M, D)

    def forward(self, x_BTMD: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``memory``: this layer's rows e [B, T, E] (from ``EngramLM.memory``), or its slots [B, T, S] (ints)."""
        e_BTE = memory if memory.is_floating_point() else self.tables(memory)
        e_BTE = e_BTE.to(x_BTMD.dtype) if not torch.is_autocast_enabled(x_BTMD.device.type) else e_BTE
        v_BTD = self.value(e_BTE)
        if self.variant == "bigram_hash":
            return x_BTMD + (self.scale * v_BTD)[:, :, None, :]
        h_BTMD = self.fusion.read(x_BTMD)[:, :, None, :] if self.fusion is not None else x_BTMD
        if self.key is not None:
            a_BTM = self.gates(h_BTMD, e_BTE)
            if self.record_gates:
                self.last_gates = a_BTM.detach()
            v_BTMD = a_BTM.unsqueeze(-1) * v_BTD[:, :, None, :]
        else:
            v_BTMD = v_BTD[:, :, None, :].expand(-1, -1, self.branches, -1)
        y_BTMD = v_BTMD + self.short_conv(v_BTMD) if self.conv_weight is not None else v_BTMD
        if self.fusion is not None:
            return self.fusion.write(x_BTMD, y_BTMD[:, :, 0])
        return x_BTMD + y_BTMD


class OverEncoding(nn.Module):
    """Hashed N-gram embeddings (each order a full-width row: K heads of D/K) averaged with the token embedding."""

    def __init__(self, cfg: ModelConfig, sizes: list[int]):
        super().__init__()
        e = cfg.engram
        self.orders = len(e.orders)
        self.tables = HashedTables(sizes, e.head_dim, frozen=e.control == "frozen_random")

    def forward(self, x_BTD: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``memory``: the rows [B, T, E] (from ``EngramLM.memory``), or the slots [B, T, S] (ints)."""
        B, T, D = x_BTD.shape
        e_BTE = memory if memory.is_floating_point() else self.tables(memory)
        grams_BTD = e_BTE.to(x_BTD.dtype).view(B, T, self.orders, D).sum(2)
        return (x_BTD + grams_BTD) / (1 + self.orders)
