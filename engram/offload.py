"""Engram tables in pinned host memory, each batch's rows copied to the GPU while earlier work computes.

The rows a batch reads depend on its token ids alone (PAPER.md section 7), so they can be fetched before the layer
that needs them runs. :class:`OffloadedLM` wraps a trained :class:`~engram.model.EngramLM` for inference: its tables
move to pinned host memory (freeing the GPU copy), and ``prefetch(ids)`` starts reading a batch's rows in one of two
ways, returning one :class:`PendingRows` per memory layer, which the model awaits just before that layer:

* ``mode="host"`` (default): the CPU hashes the ids and gathers the rows (``index_select`` into a pinned staging
  buffer); the copy engine moves them on a side stream. No SM is used, so the transfer overlaps any compute, and
  the table itself need not be page-locked (only the staging buffers are pinned).
* ``mode="zero_copy"``: the fused lookup kernel reads the pinned table over PCIe (unified addressing) on a side
  stream, with its grid capped at ``max_programs`` programs per sub-table: a full grid occupies every SM and
  serialises with the compute stream instead of overlapping it (PERF.md).

For throughput, call ``prefetch`` for batch i+1 right after enqueuing batch i (``run`` does): the host gather and
the copy then proceed while the GPU computes batch i, and batch i+1's Engram layer waits only on its own event.
Logits equal the GPU-resident model's (the same rows, the same maths). Training stays on the GPU: host-side
gradients for tables would need the row-sparse optimizer on the host, which this module does not attempt.

Legend: B batch, T time, N = B*T tokens, S sub-tables per layer, J row width, E = S*J, R table rows.
"""

from __future__ import annotations

import torch
from torch import nn

from engram.kernels import backend
from engram.kernels.lookup import MODE_GATHER, launch, orders_tensor, rows_reference


class PendingRows:
    """One memory layer's rows [B, T, E], possibly still being copied; ``wait()`` returns them once the current
    stream is ordered after the copy (and tells the allocator that this stream uses them)."""

    def __init__(self, rows_BTE: torch.Tensor, event: torch.cuda.Event | None = None):
        self.rows = rows_BTE
        self.event = event

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            stream = torch.cuda.current_stream(self.rows.device)
            stream.wait_event(self.event)
            self.rows.record_stream(stream)
        return self.rows


def _exclusive_cumsum(sizes_S: torch.Tensor) -> torch.Tensor:
    return torch.cat([sizes_S.new_zeros(1), sizes_S.cumsum(0)[:-1]])


class OffloadedLM:
    """An :class:`EngramLM` whose tables live in pinned host memory (inference only).

    Args:
        model: the trained model, on its GPU (or on the CPU: the host path then runs without streams).
        mode: ``host`` (CPU gather + copy engine) or ``zero_copy`` (capped Triton gather over PCIe).
        dtype: the host tables' dtype (default: the model's table dtype). bf16 halves the bytes moved; under bf16
            autocast the logits are unchanged, since every consumer of the rows rounds them to bf16 anyway.
        tables: host tables to serve instead of the model's own (one [R, J] tensor per memory layer), with
            ``hasher`` the matching :class:`~engram.hashing.NgramHasher` (for a table larger than the GPU).
        max_programs: ``zero_copy`` grid cap, programs per sub-table.
        pin_tables: page-lock the host tables (default: for ``zero_copy`` only, where the GPU reads them in place).

    ``restore()`` (or leaving the ``with`` block) puts the model's own tables back on its device.
    """

    def __init__(self, model, mode: str = "host", dtype: torch.dtype | None = None, tables: list | None = None,
                 hasher: nn.Module | None = None, max_programs: int = 8, pin_tables: bool | None = None):
        if mode not in ("host", "zero_copy"):
            raise ValueError(f"mode must be 'host' or 'zero_copy', got {mode!r}")
        if model.hasher is None:
            raise ValueError("the model has no Engram memory to offload")
        self.model, self.mode, self.max_programs = model, mode, max_programs
        self.pin_tables = (mode == "zero_copy") if pin_tables is None else pin_tables
        self.device = model.embed.weight.device
        self.cuda = self.device.type == "cuda"
        hasher = hasher if hasher is not None else model.hasher
        self.orders, self.heads, self.pad = list(hasher.orders), hasher.heads, int(hasher.pad)
        modules = model.memory_tables()
        sources = tables if tables is not None else [m.weight.detach() for m in modules]
        self.host_tables = [self._to_host(t, dtype) for t in sources]
        # hashing constants where each mode hashes: on the host (host mode) or on the device (zero-copy)
        where = self.device if mode == "zero_copy" else torch.device("cpu")
        self.lookup = hasher.lookup.to(where)
        self.multipliers_LK = hasher.multipliers_LN.to(where)
        self.primes_LS = hasher.primes_LS.to(where)
        self.offsets_LS = torch.stack([_exclusive_cumsum(p) for p in self.primes_LS])
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._saved = [(m, m.weight) for m in modules]
        for m in modules:  # free the device copy; the model now reads rows only through ``memory=``
            m.weight = nn.Parameter(m.weight.new_empty(0, m.weight.shape[1]), requires_grad=False)

    def _to_host(self, table: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        """The table in host memory, pinned if asked. The host path reads it with the CPU and pins only its staging
        buffers, so a table of any size need not be page-locked; ``zero_copy`` needs it pinned."""
        host = table.detach().to("cpu", dtype or table.dtype).contiguous()
        return host.pin_memory() if (self.pin_tables and torch.cuda.is_available()) else host

    def restore(self):
        """Put the model's own tables back where they were; returns the model."""
        for m, weight in self._saved:
            m.weight = weight
        self._saved = []
        return self.model

    def __enter__(self) -> OffloadedLM:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    # -- reading rows -----------------------------------------------------------------------------------------------
    def host_rows(self, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """Table rows [B, T, S] of one memory layer, hashed on the host."""
        ids_BT = self.lookup[input_ids.cpu()]
        return rows_reference(ids_BT, self.multipliers_LK[layer], self.primes_LS[layer], self.offsets_LS[layer],
                              self.orders, self.heads, self.pad)

    def prefetch(self, input_ids: torch.Tensor) -> list[PendingRows]:
        """Start reading every memory layer's rows for ``input_ids`` (host ids avoid a device-to-host sync)."""
        if self.mode == "zero_copy":
            return self._prefetch_zero_copy(input_ids)
        B, T = input_ids.shape
        ids_BT = self.lookup[input_ids.cpu()]
        pending = []
        for layer, table in enumerate(self.host_tables):
            rows_P = rows_reference(ids_BT, self.multipliers_LK[layer], self.primes_LS[layer],
                                    self.offsets_LS[layer], self.orders, self.heads, self.pad).view(-1)
            staged = torch.empty(rows_P.numel(), table.shape[1], dtype=table.dtype, pin_memory=self.cuda)
            torch.index_select(table, 0, rows_P, out=staged)
            if not self.cuda:
                pending.append(PendingRows(staged.view(B, T, -1)))
                continue
            with torch.cuda.stream(self.stream):
                # the pinned staging block is kept from reuse until this copy is done (caching host allocator)
                rows = staged.to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            pending.append(PendingRows(rows.view(B, T, -1), event))
        return pending

    def _prefetch_zero_copy(self, input_ids: torch.Tensor) -> list[PendingRows]:
        backend(self.device, "triton")  # raises unless the kernel can run (a CUDA device, or TRITON_INTERPRET=1)
        ids_BT = self.lookup[input_ids.to(self.device, non_blocking=True)]
        orders_S = orders_tensor(self.orders, self.heads, self.device)
        pending = []
        if self.cuda:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # ids are ready on the main stream
        for layer, table in enumerate(self.host_tables):
            S, J = self.primes_LS.shape[1], table.shape[1]
            if not self.cuda:
                rows = torch.empty(*ids_BT.shape, S * J, dtype=table.dtype)
                launch(MODE_GATHER, ids_BT, self.multipliers_LK[layer], self.primes_LS[layer],
                       self.offsets_LS[layer], orders_S, max(self.orders), self.pad, table_RJ=table, out_BTE=rows,
                       max_programs=self.max_programs)
                pending.append(PendingRows(rows))
                continue
            with torch.cuda.stream(self.stream):
                rows = torch.empty(*ids_BT.shape, S * J, dtype=table.dtype, device=self.device)
                launch(MODE_GATHER, ids_BT, self.multipliers_LK[layer], self.primes_LS[layer],
                       self.offsets_LS[layer], orders_S, max(self.orders), self.pad, table_RJ=table, out_BTE=rows,
                       max_programs=self.max_programs)
                event = torch.cuda.Event()
                event.record(self.stream)
            pending.append(PendingRows(rows, event))
        if self.cuda:
            ids_BT.record_stream(self.stream)
        return pending

    # -- running ----------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, pending: list[PendingRows] | None = None) -> torch.Tensor:
        """Logits [B, T, V]; rows from ``pending`` (an earlier ``prefetch`` of these ids) or fetched now."""
        if pending is None:
            pending = self.prefetch(input_ids)
        if self.cuda and input_ids.device.type == "cpu" and not input_ids.is_pinned():
            input_ids = input_ids.pin_memory()  # a pageable source would make the copy wait for the device
        return self.model(input_ids.to(self.device, non_blocking=True), memory=pending)

    @torch.inference_mode()
    def run(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """Logits of every batch, batch i+1's rows fetched while batch i computes."""
        outputs = []
        pending = self.prefetch(batches[0]) if batches else None
        for i, ids in enumerate(batches):
            outputs.append(self(ids, pending))
            if i + 1 < len(batches):
                pending = self.prefetch(batches[i + 1])
        return outputs
