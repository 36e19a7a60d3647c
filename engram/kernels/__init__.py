"""Triton fused ops, each beside its PyTorch reference, chosen at run time.

* :mod:`engram.kernels.lookup` — the fused Engram lookup (N-gram window, multiplicative-XOR hash, prime modulus,
  sub-table offset, row gather) and its backward (dense, atomic or sort-based, or a row-sparse COO gradient).
* :mod:`engram.kernels.sparse_adam` — sort/segment reduction of row gradients and the row-sparse Adam update.

Which implementation runs: ``backend(device, requested)``. ``requested`` (an argument, else the environment variable
``ENGRAM_KERNELS``) is ``auto`` (default), ``torch`` or ``triton``. ``auto`` picks Triton for CUDA tensors when Triton
imports, and the PyTorch reference everywhere else. ``triton`` on CPU tensors runs only under ``TRITON_INTERPRET=1``
(set before Triton is imported: that is how the tests check the kernels on a CPU).
"""

from __future__ import annotations

import os

import torch

try:  # Triton is optional: CPU-only installs and machines without it use the PyTorch references
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAS_TRITON = False

BACKENDS = ("auto", "torch", "triton")


def interpreting() -> bool:
    """Triton kernels run on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend(device: torch.device, requested: str | None = None) -> str:
    """``"triton"`` or ``"torch"`` for tensors on ``device``; raises when Triton is forced where it cannot run."""
    choice = requested or os.environ.get("ENGRAM_KERNELS", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"ENGRAM_KERNELS / backend must be one of {BACKENDS}, got {choice!r}")
    if choice == "torch":
        return "torch"
    usable = HAS_TRITON and (device.type == "cuda" or interpreting())
    if choice == "triton":
        if not usable:
            raise RuntimeError(f"Triton kernels were forced but cannot run on {device} (triton installed: "
                               f"{HAS_TRITON}; on CPU set TRITON_INTERPRET=1 before importing triton)")
        return "triton"
    return "triton" if (HAS_TRITON and device.type == "cuda") else "torch"
