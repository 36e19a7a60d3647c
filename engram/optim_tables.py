"""Row-sparse Adam for hashed tables: an optimizer step costs in proportion to the rows a batch read.

Dense AdamW over an 8M x 64 table touches ~28 bytes per element per step (~5 ms on an H100) although one step reads
at most tokens x heads rows. :class:`RowSparseAdam` takes the table's sparse gradient (the lookup's ``"sparse"``
grad mode: an uncoalesced COO tensor, the same as ``nn.Embedding(sparse=True)`` gives), sums duplicated rows and
runs Adam / AdamW on the distinct rows only, in two Triton kernels after a sort (deterministic) or with atomics
into a persistent accumulator (``mode="atomic"``); PyTorch references on the CPU.

The maths on a row equals ``torch.optim.Adam`` (``decoupled_weight_decay=False``, L2 decay added to the gradient)
or ``torch.optim.AdamW`` (``True``) with the moments kept lazily, as ``torch.optim.SparseAdam`` does: a row's
moments and weight decay advance only on steps that read it, and bias corrections use the optimizer's step count.
A row read at every step follows dense Adam exactly; a row not read is left unchanged (dense Adam would keep moving
it on its decaying momentum).

How a trainer uses it::

    model.set_row_sparse_tables(True)                   # table gradients become sparse COO
    tables = RowSparseAdam(model.table_parameters(), lr=5 * lr, betas=betas, weight_decay=0.0)
    dense = torch.optim.AdamW([p for n, p in model.named_parameters() if component_of(n) != "engram_tables"], ...)
    ...
    loss.backward(); clip_grad_norm_(model.parameters(), 1.0); dense.step(); tables.step()

Legend: R table rows, J row width, P rows read in a step (with duplicates).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from engram.kernels.sparse_adam import sparse_adam_


def rows_and_values(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [P], values [P, J]) of a table gradient: a sparse COO tensor as it is (duplicates allowed), or a dense
    gradient as every row."""
    if grad.is_sparse:
        values = grad._values()
        return grad._indices()[0], values.reshape(values.shape[0], -1)
    rows = torch.arange(grad.shape[0], device=grad.device)
    return rows, grad.reshape(grad.shape[0], -1)


class RowSparseAdam(torch.optim.Optimizer):
    """Adam (or AdamW) on the rows a step's gradient names; everything else in the table is left untouched.

    Args:
        params: table parameters (any shape; dim 0 is the row), or parameter groups.
        lr, betas, eps: as ``torch.optim.Adam``.
        weight_decay: L2 decay (Adam) or decoupled decay (AdamW), applied to the rows read in a step only.
        decoupled_weight_decay: ``True`` for AdamW's decoupled decay.
        mode: ``sorted`` (deterministic: sort + segment reduction) or ``atomic`` (float32 atomics into a persistent
            table-sized accumulator that is never re-zeroed as a whole; slightly faster, order not fixed).
        kernels: ``auto | torch | triton`` (``None``: the ``ENGRAM_KERNELS`` environment variable, else auto).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, mode: str = "sorted",
                 kernels: str | None = None):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid hyper-parameters lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
        if mode not in ("sorted", "atomic"):
            raise ValueError(f"mode must be 'sorted' or 'atomic', got {mode!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)
        self.mode = mode
        self.kernels = kernels
        self._scratch: dict[int, dict] = {}  # atomic mode's accumulators: derived, never saved in state_dict

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                    state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                state["step"] += 1
                rows_P, values_PJ = rows_and_values(p.grad)
                param_RJ = p.view(p.shape[0], -1)
                sparse_adam_(param_RJ, state["exp_avg"].view_as(param_RJ), state["exp_avg_sq"].view_as(param_RJ),
                             rows_P, values_PJ, step=state["step"], lr=group["lr"], beta1=beta1, beta2=beta2,
                             eps=group["eps"], weight_decay=group["weight_decay"],
                             decoupled=group["decoupled_weight_decay"], mode=self.mode,
                             scratch=self._scratch.setdefault(id(p), {}), kernels=self.kernels)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``Optimizer.load_state_dict``, then moments back to contiguous float32 (the base class casts saved
        tensors to each parameter's dtype, which would round a bf16 table's moments)."""
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(dtype=torch.float32, device=p.device).contiguous()
            if "step" in state:
                state["step"] = int(state["step"])
        self._scratch.clear()


def _by_device_and_dtype(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``tensors`` grouped as the foreach kernels take them."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def _squares(parameters: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Squared gradient norms in float32: one per sparse gradient, and for the dense ones one per GPU and dtype (a
    foreach norm kernel over the group: clipping runs eagerly after a compiled step, where two kernels per
    parameter, ~170 launches for the ladder's 84, cost host time on every step) or one per tensor on the CPU, whose
    float32 norm kernel is off by up to 2e-4 where a plain sum of squares is not."""
    squares, on_gpus = [], []
    for p in parameters:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # keep the coalesced form: the optimizer reads fewer rows
            squares.append(p.grad._values().float().pow(2).sum())
        elif p.grad.is_cuda:
            on_gpus.append(p.grad)
        else:
            squares.append(p.grad.float().pow(2).sum())
    for same_kind in _by_device_and_dtype(on_gpus):
        squares.append(torch.stack(torch._foreach_norm(same_kind, 2, dtype=torch.float32)).pow(2).sum())
    return squares


def grad_norm(parameters: Iterable[torch.Tensor], sharded: Iterable[torch.Tensor] = (), group=None) -> torch.Tensor:
    """Global L2 norm of the gradients, sparse ones included (coalesced first, so duplicated rows are summed
    before squaring: a data-dependent size, hence one host sync per sparse gradient).

    ``sharded``: parameters each rank holds a different part of (:mod:`engram.sharded` tables); their squares are
    summed over the ranks of ``group`` (one all-reduce), the others' are taken as they are (replicated, or already
    all-reduced by DDP). Every rank then sees the norm a single process would compute."""
    squares = _squares(parameters)
    sharded = list(sharded)
    if sharded:
        device = next((p.device for p in sharded), None)
        part = torch.stack(_squares(sharded) or [torch.zeros((), device=device)]).sum()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(part, group=group)  # every rank calls it, with or without gradients
        squares.append(part)
    if not squares:
        return torch.zeros(())
    return torch.stack(squares).sum().sqrt()


def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float, sharded: Iterable[torch.Tensor] = (),
                    group=None) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse (row-sparse table) gradients and parameters sharded
    over ranks (see :func:`grad_norm`); returns the norm."""
    params = [p for p in parameters if p.grad is not None]
    sharded = list(sharded)
    total = grad_norm(params, sharded, group)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    grads = [p.grad for p in params + sharded if p.grad is not None]
    for g in grads:
        if g.is_sparse:
            g._values().mul_(scale.to(g.dtype))
    for same_kind in _by_device_and_dtype(g for g in grads if not g.is_sparse):
        torch._foreach_mul_(same_kind, scale.to(device=same_kind[0].device, dtype=same_kind[0].dtype))
    return total
