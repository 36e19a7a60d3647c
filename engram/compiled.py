"""``torch.compile`` with the settings every compiled path of this project uses (trainer, tests, benchmarks).

Inductor's mix-order reduction (on by default for GPUs since torch 2.10) fuses a reduction along rows with one along
columns into one kernel; RMSNorm's backward (the weight's gradient sums over tokens, the input's over the width) is
its main target, small ones excepted. Upstream it returned gradients that were never written, holding uninitialised
or stale memory, when the reduced buffer is a view into a larger one (pytorch/pytorch#193061, regression in 2.10,
fixed by #193103), and mis-fused conv-bias gradients in 2.10 (#190796). The ladder's compiled loss on an H200 (torch
2.11, the fusion on) had that signature: gradients 0.7-1.3 off eager's (relative norm) in nearly every block, 1e4
off with CUDA graphs, while the losses agreed, and compiled trials stalled at the unigram entropy; on a CPU, which
has no such fusion, compiled and eager steps agree. It is off here; ``tests/engram/test_compiled_training.py``
(``bash benchmarks/on_gpu.sh check``) shows whether the compiled steps then follow the eager ones on a GPU.
"""

from __future__ import annotations

import torch


def compiled(fn, cuda_graphs: bool = False, **kwargs):
    """``torch.compile(fn, **kwargs)`` with mix-order reduction off; ``cuda_graphs`` is ``mode="reduce-overhead"``
    (each call replays CUDA graphs: a small model's step is otherwise bound by kernel launches)."""
    import torch._inductor.config as inductor

    options = {"triton.cudagraphs": cuda_graphs}
    if hasattr(inductor.triton, "mix_order_reduction"):  # torch < 2.10 has no such fusion
        options["triton.mix_order_reduction"] = False
    return torch.compile(fn, options=options, **kwargs)
