"""Fused Engram lookup: compressed token ids -> every sub-table's hashed row, concatenated, in one kernel.

One Triton kernel does what the reference path does in ~10 PyTorch ops (``engram.hashing.hash_mixed`` then
``F.embedding(slots + offsets, weight)``): for each token it reads the N-gram window of compressed ids (positions
before the sequence start read the compressed pad id), mixes them by multiplicative-XOR with the layer's int64
multipliers, reduces the mix modulo each sub-table's prime, adds the sub-table's row offset and copies that row
into the output. Slots are bit-identical to ``hash_mixed`` (integer arithmetic only; x' * m < 2^63 by
construction, so every mix is non-negative and C's remainder equals ``torch.remainder``).

The same kernel, in other modes, writes the rows alone (for the backward and the host-memory path) or scatter-adds
gradient rows into a float32 table gradient with atomics.

Backward (``grad_mode``), for the table [R, J]:

* ``"sparse"`` — a sparse COO gradient whose indices are the P = N*S rows read and whose values are the output
  gradient itself, reshaped (no copy when contiguous). Duplicated rows are left as duplicates (an *uncoalesced*
  COO, as ``nn.Embedding(sparse=True)`` returns): its size is static, nothing table-sized is touched and nothing
  waits on the host. :class:`engram.optim_tables.RowSparseAdam` sums duplicates (sort + segment reduce, or atomics)
  and updates only those rows.
* ``"atomic"`` — a dense float32 gradient, rows scatter-added with atomics (fast, summation order not fixed).
* ``"sorted"`` — a dense gradient, rows sorted and each row's duplicates summed in a fixed order (deterministic).

Legend: B batch, T time, N = B*T tokens, S sub-tables of one layer (orders x heads), J row width, R table rows,
P = N*S rows read, K = max N-gram order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engram.hashing import hash_mixed
from engram.kernels import HAS_TRITON, backend

GRAD_MODES = ("sparse", "atomic", "sorted")
MODE_GATHER, MODE_ROWS, MODE_SCATTER = 0, 1, 2

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _cast_rne(x, dtype: tl.constexpr):
        """Cast as ``Tensor.to`` does. float32 -> bfloat16 rounds to nearest even by integer arithmetic: bit-exact
        on the GPU and in Triton's CPU interpreter (whose own conversion truncates)."""
        if (x.dtype == tl.float32) and (dtype == tl.bfloat16):
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            y = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
            return tl.where(x != x, x.to(tl.bfloat16), y)  # NaN stays NaN (rounding could carry into the sign)
        return x.to(dtype)

    @triton.jit
    def _lookup_kernel(ids_ptr, mult_ptr, prime_ptr, offset_ptr, order_ptr, table_ptr, out_ptr, rows_ptr, grad_ptr,
                       N, T, pad, stride_table, stride_out, stride_grad,
                       J: tl.constexpr, S: tl.constexpr, MAX_ORDER: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_J: tl.constexpr, MODE: tl.constexpr):
        """Grid (token-block programs, S). A program loops over token blocks with its stride so that a capped grid
        (host-memory reads that must leave SMs to the compute stream) covers every token."""
        s = tl.program_id(1)
        prime = tl.load(prime_ptr + s)
        offset = tl.load(offset_ptr + s)
        order = tl.load(order_ptr + s)
        j = tl.arange(0, BLOCK_J)
        n_blocks = (N + BLOCK_N - 1) // BLOCK_N  # not tl.cdiv: core builtins only (see sparse_adam.py)
        for blk in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
            n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
            valid = n < N
            t = n % T
            mix = tl.load(ids_ptr + n, mask=valid, other=pad) * tl.load(mult_ptr)
            for k in tl.static_range(1, MAX_ORDER):
                x_k = tl.load(ids_ptr + n - k, mask=valid & (t >= k), other=pad)
                mix = tl.where(k < order, mix ^ (x_k * tl.load(mult_ptr + k)), mix)
            row = mix % prime + offset  # mix >= 0, so C remainder == floor remainder
            n64 = n.to(tl.int64)
            if MODE == 1:
                tl.store(rows_ptr + n64 * S + s, row, mask=valid)
            else:
                m = valid[:, None] & (j[None, :] < J)
                src = table_ptr + row[:, None] * stride_table + j[None, :]
                if MODE == 0:
                    vals = tl.load(src, mask=m)
                    tl.store(out_ptr + n64[:, None] * stride_out + s * J + j[None, :],
                             _cast_rne(vals, out_ptr.dtype.element_ty), mask=m)
                else:
                    g = tl.load(grad_ptr + n64[:, None] * stride_grad + s * J + j[None, :], mask=m, other=0.0)
                    tl.atomic_add(src, g.to(tl.float32), mask=m)


def launch_config(J: int) -> tuple[int, int, int]:
    """(BLOCK_N tokens per program, BLOCK_J, num_warps): ~4k elements a program, 16-byte accesses along J."""
    block_j = triton.next_power_of_2(J)
    block_n = max(16, min(128, 4096 // block_j))
    return block_n, block_j, 4


def launch(mode: int, ids_BT: torch.Tensor, mult_K: torch.Tensor, primes_S: torch.Tensor, offsets_S: torch.Tensor,
           orders_S: torch.Tensor, max_order: int, pad: int, table_RJ: torch.Tensor | None = None,
           out_BTE: torch.Tensor | None = None, rows_NS: torch.Tensor | None = None,
           grad_BTE: torch.Tensor | None = None, max_programs: int | None = None,
           block_n: int | None = None, num_warps: int | None = None) -> None:
    """Run the kernel in one mode (gather into ``out_BTE``, rows into ``rows_NS``, scatter-add ``grad_BTE`` into
    ``table_RJ``). ``max_programs`` caps the token-block programs per sub-table (a persistent, capped grid)."""
    N = ids_BT.numel()
    if N == 0:
        return
    T = ids_BT.shape[-1]
    S = primes_S.numel()
    J = table_RJ.shape[1] if table_RJ is not None else 1
    bn, bj, nw = launch_config(J)
    bn, nw = block_n or bn, num_warps or nw
    programs = triton.cdiv(N, bn)
    if max_programs is not None:
        programs = max(1, min(programs, max_programs))
    dummy = ids_BT
    table = table_RJ if table_RJ is not None else dummy
    if table_RJ is not None and table_RJ.stride(1) != 1:
        raise ValueError("table rows must be contiguous (stride 1 along J)")
    _lookup_kernel[(programs, S)](
        ids_BT, mult_K, primes_S, offsets_S, orders_S, table,
        out_BTE if out_BTE is not None else dummy, rows_NS if rows_NS is not None else dummy,
        grad_BTE if grad_BTE is not None else dummy,
        N, T, pad, table.stride(0), S * J, S * J,
        J=J, S=S, MAX_ORDER=max_order, BLOCK_N=bn, BLOCK_J=bj, MODE=mode, num_warps=nw)


_ORDERS_CACHE: dict = {}


def orders_tensor(orders: list[int], heads: int, device: torch.device) -> torch.Tensor:
    """int32 [S]: the N-gram order of each sub-table (cached per device: no host-to-device copy per step)."""
    key = (tuple(orders), heads, str(device))
    if key not in _ORDERS_CACHE:
        _ORDERS_CACHE[key] = torch.tensor([n for n in orders for _ in range(heads)], dtype=torch.int32, device=device)
    return _ORDERS_CACHE[key]


def rows_triton(ids_BT, mult_K, primes_S, offsets_S, orders: list[int], heads: int, pad: int) -> torch.Tensor:
    """Table rows [B, T, S] (slot + sub-table offset) by the kernel, without gathering."""
    rows = torch.empty(*ids_BT.shape, primes_S.numel(), dtype=torch.long, device=ids_BT.device)
    launch(MODE_ROWS, ids_BT, mult_K, primes_S, offsets_S, orders_tensor(orders, heads, ids_BT.device),
           max(orders), pad, rows_NS=rows)
    return rows


def rows_reference(ids_BT, mult_K, primes_S, offsets_S, orders: list[int], heads: int, pad: int) -> torch.Tensor:
    """Table rows [B, T, S] by the PyTorch reference hashing."""
    return hash_mixed(ids_BT, mult_K, primes_S, orders, heads, pad) + offsets_S


def table_grad(rows_P: torch.Tensor, grad_PJ: torch.Tensor, table_shape, table_dtype, grad_mode: str) -> torch.Tensor:
    """The table gradient from the rows read and their output gradients: ``sparse`` (uncoalesced COO, no copy) or
    ``sorted`` (dense, duplicates summed in a fixed order by :func:`engram.kernels.sparse_adam.segment_sum_into`)."""
    if grad_mode == "sparse":
        return torch.sparse_coo_tensor(rows_P.view(1, -1), grad_PJ.to(table_dtype), size=table_shape,
                                       check_invariants=False)
    from engram.kernels.sparse_adam import segment_sum_into

    dst = torch.zeros(table_shape, dtype=torch.float32, device=grad_PJ.device)
    segment_sum_into(dst, rows_P, grad_PJ)
    return dst.to(table_dtype)


class FusedLookup(torch.autograd.Function):
    """Forward: the fused gather. Backward: the table gradient in ``grad_mode``'s layout (rows re-hashed from the
    ids, so nothing but the ids is saved)."""

    @staticmethod
    def forward(ctx, table_RJ, ids_BT, mult_K, primes_S, offsets_S, orders, heads, pad, out_dtype, grad_mode):
        S, J = primes_S.numel(), table_RJ.shape[1]
        out = torch.empty(*ids_BT.shape, S * J, dtype=out_dtype, device=table_RJ.device)
        launch(MODE_GATHER, ids_BT, mult_K, primes_S, offsets_S, orders_tensor(orders, heads, ids_BT.device),
               max(orders), pad, table_RJ=table_RJ, out_BTE=out)
        ctx.save_for_backward(ids_BT, mult_K, primes_S, offsets_S)
        ctx.meta = (orders, heads, pad, grad_mode, table_RJ.shape, table_RJ.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_BTE):
        nones = (None,) * 9
        if not ctx.needs_input_grad[0]:
            return (None,) + nones
        ids_BT, mult_K, primes_S, offsets_S = ctx.saved_tensors
        orders, heads, pad, grad_mode, shape, dtype = ctx.meta
        grad_BTE = grad_BTE.contiguous()
        if grad_mode == "atomic":  # fused: re-hash and scatter-add in one pass, no rows tensor
            dst = torch.zeros(shape, dtype=torch.float32, device=grad_BTE.device)
            launch(MODE_SCATTER, ids_BT, mult_K, primes_S, offsets_S, orders_tensor(orders, heads, ids_BT.device),
                   max(orders), pad, table_RJ=dst, grad_BTE=grad_BTE)
            return (dst.to(dtype),) + nones
        rows = rows_triton(ids_BT, mult_K, primes_S, offsets_S, orders, heads, pad)
        return (table_grad(rows.view(-1), grad_BTE.view(-1, shape[1]), shape, dtype, grad_mode),) + nones


# torch._disable_dynamo is torch.compiler.disable imported lazily (importing Dynamo costs ~2 s at import time).
_no_dynamo = getattr(torch, "_disable_dynamo", None) or torch.compiler.disable


@_no_dynamo
def _fused(table_RJ, ids_BT, mult_K, primes_S, offsets_S, orders, heads, pad, out_dtype, grad_mode):
    # A graph break on purpose: Dynamo cannot trace a sparse gradient; EngramLM.memory() runs before the compiled
    # backbone, so the break sits at the top of the step, outside the blocks.
    return FusedLookup.apply(table_RJ, ids_BT, mult_K, primes_S, offsets_S, orders, heads, pad, out_dtype, grad_mode)


def engram_lookup(ids_BT: torch.Tensor, table_RJ: torch.Tensor, mult_K: torch.Tensor, primes_S: torch.Tensor,
                  offsets_S: torch.Tensor, orders: list[int], heads: int, pad: int, *, grad_mode: str = "atomic",
                  out_dtype: torch.dtype | None = None, kernels: str | None = None) -> torch.Tensor:
    """Concatenated rows [B, T, S*J] of every sub-table for compressed ids ``ids_BT``.

    ``mult_K``: the layer's int64 multipliers; ``primes_S``/``offsets_S``: each sub-table's size and first row;
    ``orders``/``heads``: sub-table s has order ``orders[s // heads]``; ``pad``: the compressed pad id.
    ``grad_mode``: the table gradient's layout (module docstring). ``out_dtype``: the output's dtype (default the
    table's; rows are cast on the way out, e.g. float32 table -> bfloat16 under autocast).
    ``kernels``: ``auto | torch | triton`` (default: the ``ENGRAM_KERNELS`` environment variable, else auto).
    """
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    out_dtype = out_dtype or table_RJ.dtype
    if backend(table_RJ.device, kernels) == "triton":
        return _fused(table_RJ, ids_BT.contiguous(), mult_K, primes_S, offsets_S, list(orders), heads, int(pad),
                      out_dtype, grad_mode)
    rows_BTS = rows_reference(ids_BT, mult_K, primes_S, offsets_S, orders, heads, pad)
    if grad_mode == "sorted" and table_RJ.requires_grad and torch.is_grad_enabled():
        return _ReferenceSorted.apply(table_RJ, rows_BTS).to(out_dtype).flatten(-2)
    rows = F.embedding(rows_BTS, table_RJ, sparse=grad_mode == "sparse")
    return rows.to(out_dtype).flatten(-2)


class _ReferenceSorted(torch.autograd.Function):
    """The reference gather with the deterministic sort/segment backward (the same reduction the Triton path uses)."""

    @staticmethod
    def forward(ctx, table_RJ, rows_BTS):
        ctx.save_for_backward(rows_BTS)
        ctx.meta = (table_RJ.shape, table_RJ.dtype)
        return F.embedding(rows_BTS, table_RJ)

    @staticmethod
    def backward(ctx, grad_BTSJ):
        (rows_BTS,) = ctx.saved_tensors
        shape, dtype = ctx.meta
        grad = table_grad(rows_BTS.reshape(-1), grad_BTSJ.reshape(-1, shape[1]), shape, dtype, "sorted")
        return grad, None
