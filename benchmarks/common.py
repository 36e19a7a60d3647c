"""Shared pieces of the benchmarks: timing, the copy-bandwidth ceiling, loud correctness checks, the result JSON.

Every benchmark measures its reference in the same run as the code under test, prints a short table with the
ratio, raises on a numerical mismatch, and writes ``results/benchmarks/<name>.json`` with the device, the library
versions and the exact command.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from engram.compiled import compiled
from engram.device import device_name
from engram_lab.files import write_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "benchmarks"
LADDER = REPO / "sweeps" / "specs" / "allocation_ladder.yaml"


def ladder_trial(budget: str, rho: float, seed: int = 0):
    """The resolved trial of one point of the allocation ladder's spec."""
    from sweeps.spec import expand, load_spec

    for planned in expand(load_spec(LADDER)):
        if planned.axes == {"budget": budget, "rho": rho, "seed": seed}:
            return planned.trial
    raise SystemExit(f"no point budget={budget} rho={rho} seed={seed} in {LADDER}")


class Mismatch(AssertionError):
    """A benchmarked path computed something other than its reference."""


def environment() -> dict:
    import triton

    return {
        "device": device_name(),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "command": "PYTHONPATH=. python3 " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def smoke() -> bool:
    """``BENCH_SMOKE=1``: run a benchmark's code path at toy sizes on the CPU (kernels under TRITON_INTERPRET=1),
    timing with the host clock — a check of the script itself before it spends GPU time, not a measurement."""
    return os.environ.get("BENCH_SMOKE", "0") == "1"


def device() -> torch.device:
    if smoke():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (BENCH_SMOKE=1 runs a CPU check of the script)")
    return torch.device("cuda")


def synchronize() -> None:
    if torch.cuda.is_available() and not smoke():
        torch.cuda.synchronize()


def _host_median_ms(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cuda_time_ms(fn, warmup: int = 5, iters: int = 20) -> float:
    """Median milliseconds of ``fn()`` timed with CUDA events, one event pair per call (after ``warmup`` calls)."""
    if smoke():
        return _host_median_ms(fn, 1, 2)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_time_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median milliseconds of a device-side ``fn()``, L2 flushed between calls (``triton.testing.do_bench``)."""
    if smoke():
        return _host_median_ms(fn, 1, 2)
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def wall_time_ms(fn, warmup: int = 2, iters: int = 10) -> float:
    """Median wall-clock milliseconds of ``fn()`` including host work, the device synchronised after each call."""
    return _host_median_ms(fn, 1 if smoke() else warmup, 2 if smoke() else iters)


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written (the memory ceiling)."""
    if smoke():
        nbytes = 1 << 20
    src = torch.empty(nbytes // 2, dtype=torch.int16, device=device()).random_()
    dst = torch.empty_like(src)
    ms = kernel_time_ms(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3)


def check_equal(name: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    if got.shape != ref.shape or not torch.equal(got, ref):
        bad = (got != ref).sum().item() if got.shape == ref.shape else "shape"
        raise Mismatch(f"{name}: not bit-identical to the reference ({bad} elements differ)")


def check_close(name: str, got: torch.Tensor, ref: torch.Tensor, rel: float) -> float:
    """Relative error ||got - ref|| / ||ref|| (float64); raises when it is over ``rel`` or not finite."""
    got64, ref64 = got.double(), ref.double()
    err = ((got64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()
    if not (err <= rel):  # NaN fails too
        raise Mismatch(f"{name}: relative error {err:.3g} > {rel:.1g}")
    return err


def table(rows: list[dict], columns: list[str]) -> str:
    """A fixed-width text table of ``rows`` (dicts) over ``columns``; floats with 4 significant digits."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]  # rows may be none
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_result(name: str, payload: dict) -> Path:
    """``results/benchmarks/<name>.json`` with the environment, atomically (nothing in a smoke run)."""
    path = RESULTS / f"{name}.json"
    record = {"benchmark": name, **environment(), **payload}
    if smoke():  # still serialised, so that a payload JSON cannot hold fails here and not after a GPU run
        with tempfile.TemporaryDirectory() as tmp:
            write_atomic(Path(tmp) / path.name, record)
        print(f"(smoke run: {path.name} not written)")
        return path
    return write_atomic(path, record)


def compile_(fn, cuda_graphs: bool = False, **kwargs):
    """``engram.compiled.compiled`` (eager in a smoke run: a CPU inductor build would only slow the check down)."""
    return fn if smoke() else compiled(fn, cuda_graphs=cuda_graphs, **kwargs)
