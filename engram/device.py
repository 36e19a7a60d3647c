"""Peak dense bf16 FLOP/s of accelerators, for model FLOPs utilisation (MFU).

Datasheet numbers for dense (not 2:4 sparse) bf16 tensor-core maths, matched on the name the driver reports
(``torch.cuda.get_device_name()``), most specific first. MFU = achieved model FLOP/s (``engram.budget.count``'s
training FLOPs per token x tokens per second) / this peak. An H100 SXM reaches ~798 TFLOP/s on an 8192^3
bf16 matrix product (PERF.md), 81% of its datasheet 989 TFLOP/s: MFU is against the datasheet, as is customary.
"""

from __future__ import annotations

import torch

# (substring of the device name, dense bf16 FLOP/s); the first match wins
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H800", 989e12),
    ("H20", 148e12),
    ("B200", 2250e12),
    ("B100", 1750e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16 (no bf16 on Volta)
)


def device_name(device: torch.device | str | None = None) -> str:
    """The accelerator's name as the driver reports it (``"cpu"`` without one): what run records store."""
    device = torch.device(device) if device is not None else None
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return "cpu"


def peak_flops(device_name: str) -> float:
    """Dense bf16 peak FLOP/s of the named device; raises ``KeyError`` for a device not in the table."""
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    raise KeyError(f"no peak-FLOPs entry for {device_name!r}: add it to engram.device.PEAK_BF16_FLOPS")


def mfu(tokens_per_second: float, train_flops_per_token: float, device_name: str) -> float | None:
    """Model FLOPs utilisation of a training run (training FLOPs: 3x the forward, as engram.budget counts);
    ``None`` on a device with no entry in the table (a CPU, say)."""
    try:
        return tokens_per_second * train_flops_per_token / peak_flops(device_name)
    except KeyError:
        return None
