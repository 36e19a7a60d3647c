"""``torch.compile`` with the settings every compiled path of this project uses (trainer, tests, benchmarks).

Inductor's mix-order reduction (on by default for GPUs since torch 2.10) fuses a reduction along rows with one along
columns into one kernel; RMSNorm's backward (the weight's gradient sums over tokens, the input's over the width) is
its main target, small ones excepted. Upstream it returned gradients that were never written, holding uninitialised
or stale memory, when the reduced buffer is a view into a larger one (pytorch/pytorch#193061, regression in 2.10,
fixed by #193103), and mis-fused conv-bias gradients in 2.10 (#190796). It is off here. That is not what breaks the
ladder's compiled steps on an H200 (torch 2.11): with it off, ``tests/engram/test_compiled_training.py`` still finds
the compiled gradients equal to eager ones at the first step and ~1e4 off from the second (results/README.md,
2026-12-03); ``benchmarks/compiled_grads.py`` bisects that by backend and by module. On a CPU compiled and eager
steps agree.
"""

from __future__ import annotations

import torch


def compiled(fn, cuda_graphs: bool = False, options: dict | None = None, **kwargs):
    """``torch.compile(fn, **kwargs)`` with mix-order reduction off; ``cuda_graphs`` is ``mode="reduce-overhead"``
    (each call replays CUDA graphs: a small model's step is otherwise bound by kernel launches); ``options`` are
    more Inductor settings."""
    import torch._inductor.config as inductor

    settings = {"triton.cudagraphs": cuda_graphs}
    if hasattr(inductor.triton, "mix_order_reduction"):  # torch < 2.10 has no such fusion
        settings["triton.mix_order_reduction"] = False
    return torch.compile(fn, options={**settings, **(options or {})}, **kwargs)
