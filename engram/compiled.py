"""``torch.compile`` with the settings every compiled path of this project uses (trainer, tests, benchmarks).

Inductor's mix-order reduction (on by default for GPUs since torch 2.10) fuses a reduction along rows with one along
columns into one kernel; RMSNorm's backward (the weight's gradient sums over tokens, the input's over the width) is
its main target, small ones excepted. Upstream it returned gradients that were never written, holding uninitialised
or stale memory, when the reduced buffer is a view into a larger one (pytorch/pytorch#193061, regression in 2.10,
fixed by #193103), and mis-fused conv-bias gradients in 2.10 (#190796). It is off here. Shapes are fixed: a new
shape is a new static compilation, never Dynamo's recompilation with symbolic sizes (automatic dynamic shapes),
under which the ladder's model had gradients ~1e4 off eager ones from the second step.

Inductor's coalescing tiling analysis (``triton.coalesce_tiling_analysis``, on by default in torch 2.11) is off too:
with it, every ladder trial compiled by Inductor on an H100 stalled at the unigram entropy, with or without CUDA
graphs, deterministic algorithms, fused AdamW or clipping, while the same trial learned under the ``aot_eager``
backend; with it off, or with no fusion at all (``max_fusion_size=1``), the trial learns as eager does (2e14,
rho 0.8: 4.007 compiled and graphed against 4.011 eager). What in the kernels it tiles goes wrong is not known
(results/README.md, 2026-12-06 and 2026-12-07; ``benchmarks/trainer_paths.py`` bisects by Inductor setting).
"""

from __future__ import annotations

import torch

OFF = ("mix_order_reduction", "coalesce_tiling_analysis")  # Inductor's passes that broke training here (above)


def compiled(fn, cuda_graphs: bool = False, options: dict | None = None, **kwargs):
    """``torch.compile(fn, dynamic=False, **kwargs)`` with mix-order reduction and coalescing tiling analysis off;
    ``cuda_graphs`` replays CUDA graphs at each call (a small model's step is otherwise bound by kernel launches);
    ``options`` are more Inductor settings."""
    import torch._inductor.config as inductor

    settings = {"triton.cudagraphs": cuda_graphs}
    for name in OFF:
        if hasattr(inductor.triton, name):  # older torch has neither pass
            settings[f"triton.{name}"] = False
    return torch.compile(fn, options={**settings, **(options or {})}, **{"dynamic": False, **kwargs})
