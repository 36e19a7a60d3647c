"""Row-sparse reductions and Adam updates for hashed tables: work in proportion to the rows read, not the table.

A step reads P rows (with duplicates: frequent N-grams hit the same row many times). Two ways to sum duplicates
and apply Adam to each distinct row once, both with static shapes (no host sync, CUDA-graph safe):

* **sorted (deterministic)**: sort the P row ids (stable), then a two-level segment reduction in a fixed order —
  kernel 1 sums each *piece* (a run of equal ids inside one chunk of ``CHUNK`` sorted positions, at most ``CHUNK``
  adds per lane), kernel 2 lets each run's first position add the piece sums of the following chunks (a run of
  length L costs L / CHUNK more adds, so a Zipf-heavy row does not stall its block) and then applies the update —
  Adam on (param, exp_avg, exp_avg_sq) rows, or an add into a dense gradient.
* **atomic**: scatter-add every row into a persistent float32 accumulator the size of the table (zeroed once, at
  creation), then one pass over the P entries where the first entry of each row to swap its step tag into a
  per-row int32 flag owns the row: it reads the sum, resets the accumulator row to zero and applies Adam. The
  accumulator and flags are table-sized memory but touched only at the P rows; the summation order is not fixed.

PyTorch references (``*_reference``) do the same maths for CPU tensors and for the tests.

Legend: P rows read (entries), J row width, R table rows, U distinct rows of a step.
"""

from __future__ import annotations

import torch

from engram.kernels import HAS_TRITON, backend

CHUNK = 32  # sorted positions summed by one lane at most, in kernel 1

if HAS_TRITON:
    import triton
    import triton.language as tl

    # Only core builtins below (no triton.language.standard helpers such as tl.max, tl.zeros, tl.cdiv): those are
    # decorated when Triton is imported, so they would not follow a later switch to the CPU interpreter in the tests.
    @triton.jit
    def _or(a, b):
        return a | b

    @triton.jit
    def _any(mask):
        """Whether any lane of a 1-D mask is set (a scalar: the loop condition of the segment walks)."""
        return tl.reduce(mask.to(tl.int32), 0, _or) > 0

    @triton.jit
    def _piece_sum_kernel(keys_ptr, perm_ptr, vals_ptr, partial_ptr, P, stride_v,
                          J: tl.constexpr, CHUNK: tl.constexpr, BLOCK_J: tl.constexpr):
        """partial[p] = sum of vals over the run of equal keys starting at p, cut at the chunk's end; written at
        piece heads only (the chunk's first position and every position whose key differs from the previous)."""
        i = tl.arange(0, CHUNK)
        p = tl.program_id(0) * CHUNK + i
        inb = p < P
        key = tl.load(keys_ptr + p, mask=inb, other=-1)
        prev = tl.load(keys_ptr + p - 1, mask=inb & (i > 0), other=-2)
        head = inb & ((i == 0) | (key != prev))
        j = tl.arange(0, BLOCK_J)
        jm = j[None, :] < J
        acc = tl.full([CHUNK, BLOCK_J], 0.0, tl.float32)
        chunk_end = tl.program_id(0) * CHUNK + CHUNK
        act = head
        q = p
        while _any(act):
            act = act & (q < chunk_end) & (q < P)
            act = act & (tl.load(keys_ptr + q, mask=act, other=-3) == key)
            src = tl.load(perm_ptr + q, mask=act, other=0).to(tl.int64)
            acc += tl.load(vals_ptr + src[:, None] * stride_v + j[None, :], mask=act[:, None] & jm,
                           other=0.0).to(tl.float32)
            q += 1
        p64 = p.to(tl.int64)
        tl.store(partial_ptr + p64[:, None] * J + j[None, :], acc, mask=head[:, None] & jm)

    @triton.jit
    def _segment_apply_kernel(keys_ptr, partial_ptr, P, dst_ptr, exp_avg_ptr, exp_avg_sq_ptr, stride_dst,
                              lr, beta1, beta2, eps, weight_decay, step_size, bias2_sqrt,
                              J: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, BLOCK_J: tl.constexpr,
                              ADAM: tl.constexpr, DECOUPLED: tl.constexpr):
        """At each run head: total = own piece + the pieces that start the following chunks of the run; then
        ``dst[key] += total`` (ADAM=False) or Adam on row ``key`` of (dst=param, exp_avg, exp_avg_sq)."""
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inb = p < P
        key = tl.load(keys_ptr + p, mask=inb, other=-1)
        prev = tl.load(keys_ptr + p - 1, mask=inb & (p > 0), other=-2)
        head = inb & ((p == 0) | (key != prev))
        j = tl.arange(0, BLOCK_J)
        jm = j[None, :] < J
        hm = head[:, None] & jm
        total = tl.load(partial_ptr + p.to(tl.int64)[:, None] * J + j[None, :], mask=hm, other=0.0)
        c = (p // CHUNK + 1) * CHUNK
        act = head
        while _any(act):
            act = act & (c < P)
            act = act & (tl.load(keys_ptr + c, mask=act, other=-3) == key)
            total += tl.load(partial_ptr + c.to(tl.int64)[:, None] * J + j[None, :], mask=act[:, None] & jm,
                             other=0.0)
            c += CHUNK
        dst = dst_ptr + key[:, None] * stride_dst + j[None, :]
        w = tl.load(dst, mask=hm, other=0.0).to(tl.float32)
        if ADAM:
            _adam_rows(w, total, dst, exp_avg_ptr + key[:, None] * J + j[None, :],
                       exp_avg_sq_ptr + key[:, None] * J + j[None, :], hm,
                       lr, beta1, beta2, eps, weight_decay, step_size, bias2_sqrt, DECOUPLED)
        else:
            tl.store(dst, (w + total).to(dst_ptr.dtype.element_ty), mask=hm)

    @triton.jit
    def _adam_rows(w, g, w_ptrs, m_ptrs, v_ptrs, mask, lr, beta1, beta2, eps, weight_decay, step_size,
                   bias2_sqrt, DECOUPLED: tl.constexpr):
        """torch.optim.Adam / AdamW's single-tensor update, on rows (float32 maths, param stored in its dtype)."""
        if DECOUPLED:
            w = w * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * w
        m = tl.load(m_ptrs, mask=mask, other=0.0)
        v = tl.load(v_ptrs, mask=mask, other=0.0)
        m = m + (1.0 - beta1) * (g - m)
        v = v * beta2 + (1.0 - beta2) * g * g
        denom = tl.sqrt(v) / bias2_sqrt + eps
        w = w - step_size * (m / denom)
        tl.store(m_ptrs, m, mask=mask)
        tl.store(v_ptrs, v, mask=mask)
        tl.store(w_ptrs, w.to(w_ptrs.dtype.element_ty), mask=mask)

    @triton.jit
    def _scatter_rows_kernel(rows_ptr, vals_ptr, acc_ptr, P, stride_v,
                             J: tl.constexpr, BLOCK: tl.constexpr, BLOCK_J: tl.constexpr):
        """acc[rows[p]] += vals[p] with float32 atomics."""
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inb = p < P
        row = tl.load(rows_ptr + p, mask=inb, other=0)
        j = tl.arange(0, BLOCK_J)
        m = inb[:, None] & (j[None, :] < J)
        g = tl.load(vals_ptr + p.to(tl.int64)[:, None] * stride_v + j[None, :], mask=m, other=0.0)
        tl.atomic_add(acc_ptr + row[:, None] * J + j[None, :], g.to(tl.float32), mask=m)

    @triton.jit(do_not_specialize=["tag"])  # a new tag every step: no recompilation when it hits 1 or 16k
    def _claim_adam_kernel(rows_ptr, flag_ptr, tag, acc_ptr, w_ptr, exp_avg_ptr, exp_avg_sq_ptr, P, stride_w,
                           lr, beta1, beta2, eps, weight_decay, step_size, bias2_sqrt,
                           J: tl.constexpr, BLOCK: tl.constexpr, BLOCK_J: tl.constexpr, DECOUPLED: tl.constexpr):
        """The entry that swaps ``tag`` into its row's flag first owns the row: Adam on it, accumulator reset."""
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inb = p < P
        row = tl.load(rows_ptr + p, mask=inb, other=0)
        old = tl.atomic_xchg(flag_ptr + row, tag, mask=inb)
        own = inb & (old != tag)
        j = tl.arange(0, BLOCK_J)
        m = own[:, None] & (j[None, :] < J)
        acc = acc_ptr + row[:, None] * J + j[None, :]
        g = tl.load(acc, mask=m, other=0.0)
        tl.store(acc, tl.full([BLOCK, BLOCK_J], 0.0, tl.float32), mask=m)
        w_ptrs = w_ptr + row[:, None] * stride_w + j[None, :]
        w = tl.load(w_ptrs, mask=m, other=0.0).to(tl.float32)
        _adam_rows(w, g, w_ptrs, exp_avg_ptr + row[:, None] * J + j[None, :],
                   exp_avg_sq_ptr + row[:, None] * J + j[None, :], m,
                   lr, beta1, beta2, eps, weight_decay, step_size, bias2_sqrt, DECOUPLED)


def _block(J: int) -> tuple[int, int]:
    block_j = triton.next_power_of_2(J)
    return max(16, min(128, 4096 // block_j)), block_j


def sort_rows(rows_P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted row ids, permutation): a stable sort, so equal rows keep their order and sums are reproducible."""
    return torch.sort(rows_P, stable=True)


def _piece_sums(keys_P: torch.Tensor, perm_P: torch.Tensor, vals_PJ: torch.Tensor) -> torch.Tensor:
    P, J = vals_PJ.shape
    partial = torch.empty(P, J, dtype=torch.float32, device=vals_PJ.device)
    _piece_sum_kernel[(triton.cdiv(P, CHUNK),)](keys_P, perm_P, vals_PJ, partial, P, vals_PJ.stride(0),
                                                J=J, CHUNK=CHUNK, BLOCK_J=triton.next_power_of_2(J), num_warps=4)
    return partial


def segment_sum_into(dst_RJ: torch.Tensor, rows_P: torch.Tensor, vals_PJ: torch.Tensor,
                     kernels: str | None = None) -> None:
    """``dst[r] += sum of vals[p] over p with rows[p] == r``, in a fixed summation order (deterministic)."""
    if rows_P.numel() == 0:
        return
    if backend(dst_RJ.device, kernels) == "torch":
        dst_RJ.index_put_((rows_P,), vals_PJ.to(dst_RJ.dtype), accumulate=True)
        return
    keys, perm = sort_rows(rows_P)
    partial = _piece_sums(keys, perm, vals_PJ)
    P, J = vals_PJ.shape
    block, block_j = _block(J)
    _segment_apply_kernel[(triton.cdiv(P, block),)](
        keys, partial, P, dst_RJ, dst_RJ, dst_RJ, dst_RJ.stride(0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0,
        J=J, CHUNK=CHUNK, BLOCK=block, BLOCK_J=block_j, ADAM=False, DECOUPLED=False, num_warps=4)


def adam_constants(step: int, lr: float, beta1: float, beta2: float) -> tuple[float, float]:
    """(step size lr / (1 - beta1^t), sqrt(1 - beta2^t)): Adam's bias corrections at step t (1-based)."""
    return lr / (1 - beta1 ** step), (1 - beta2 ** step) ** 0.5


def sparse_adam_(param_RJ: torch.Tensor, exp_avg_RJ: torch.Tensor, exp_avg_sq_RJ: torch.Tensor,
                 rows_P: torch.Tensor, vals_PJ: torch.Tensor, *, step: int, lr: float, beta1: float, beta2: float,
                 eps: float, weight_decay: float, decoupled: bool, mode: str = "sorted",
                 scratch: dict | None = None, kernels: str | None = None) -> None:
    """Adam on the distinct rows of ``rows_P`` with gradient = the sum of their ``vals_PJ`` entries, in place.

    ``mode``: ``sorted`` (deterministic) or ``atomic`` (needs ``scratch``, a dict this call fills once with the
    table-sized accumulator and flags and reuses on later steps). Rows not in ``rows_P`` are not touched (lazy
    moments, as ``torch.optim.SparseAdam``; weight decay reaches a row only on the steps that read it).
    """
    if rows_P.numel() == 0:
        return
    if backend(param_RJ.device, kernels) == "torch":
        sparse_adam_reference_(param_RJ, exp_avg_RJ, exp_avg_sq_RJ, rows_P, vals_PJ, step=step, lr=lr, beta1=beta1,
                               beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled)
        return
    if param_RJ.stride(1) != 1 or not (exp_avg_RJ.is_contiguous() and exp_avg_sq_RJ.is_contiguous()):
        raise ValueError("row-sparse Adam needs contiguous rows in the parameter and its moments")
    step_size, bias2_sqrt = adam_constants(step, lr, beta1, beta2)
    P, J = vals_PJ.shape
    block, block_j = _block(J)
    hyper = (lr, beta1, beta2, eps, weight_decay, step_size, bias2_sqrt)
    if mode == "sorted":
        keys, perm = sort_rows(rows_P)
        partial = _piece_sums(keys, perm, vals_PJ)
        _segment_apply_kernel[(triton.cdiv(P, block),)](
            keys, partial, P, param_RJ, exp_avg_RJ, exp_avg_sq_RJ, param_RJ.stride(0), *hyper,
            J=J, CHUNK=CHUNK, BLOCK=block, BLOCK_J=block_j, ADAM=True, DECOUPLED=decoupled, num_warps=4)
        return
    if mode != "atomic":
        raise ValueError(f"mode must be 'sorted' or 'atomic', got {mode!r}")
    if scratch is None:
        raise ValueError("atomic mode needs a scratch dict (it keeps the table-sized accumulator between steps)")
    if "acc" not in scratch:
        scratch["acc"] = torch.zeros(param_RJ.shape[0], J, dtype=torch.float32, device=param_RJ.device)
        scratch["flag"] = torch.zeros(param_RJ.shape[0], dtype=torch.int32, device=param_RJ.device)
    tag = (step % (2 ** 31 - 1)) + 1  # never 0 (the flags' initial value), differs from the previous step's
    grid = (triton.cdiv(P, block),)
    _scatter_rows_kernel[grid](rows_P, vals_PJ, scratch["acc"], P, vals_PJ.stride(0),
                               J=J, BLOCK=block, BLOCK_J=block_j, num_warps=4)
    _claim_adam_kernel[grid](rows_P, scratch["flag"], tag, scratch["acc"], param_RJ, exp_avg_RJ, exp_avg_sq_RJ, P,
                             param_RJ.stride(0), *hyper, J=J, BLOCK=block, BLOCK_J=block_j, DECOUPLED=decoupled,
                             num_warps=4)


@torch.no_grad()
def sparse_adam_reference_(param_RJ, exp_avg_RJ, exp_avg_sq_RJ, rows_P, vals_PJ, *, step, lr, beta1, beta2, eps,
                           weight_decay, decoupled) -> None:
    """The same update with PyTorch ops: duplicates summed with ``unique`` + ``index_add_``, then Adam on U rows."""
    uniq_U, inverse_P = torch.unique(rows_P, return_inverse=True)
    g = torch.zeros(uniq_U.numel(), vals_PJ.shape[1], dtype=torch.float32, device=vals_PJ.device)
    g.index_add_(0, inverse_P, vals_PJ.float())
    w = param_RJ[uniq_U].float()
    if decoupled:
        w = w * (1.0 - lr * weight_decay)
    else:
        g = g + weight_decay * w
    m = exp_avg_RJ[uniq_U].lerp(g, 1.0 - beta1)
    v = exp_avg_sq_RJ[uniq_U] * beta2 + (1.0 - beta2) * g * g
    step_size, bias2_sqrt = adam_constants(step, lr, beta1, beta2)
    w = w - step_size * (m / (v.sqrt() / bias2_sqrt + eps))
    exp_avg_RJ[uniq_U] = m
    exp_avg_sq_RJ[uniq_U] = v
    param_RJ[uniq_U] = w.to(param_RJ.dtype)
