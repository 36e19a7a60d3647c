"""A sweep's use of one GPU: a slice of the allocation ladder run as a real local sweep, with and without CUDA MPS.

The slice is one budget level of ``sweeps/specs/allocation_ladder.yaml`` and a few of its rho values with all their
seeds, launched as the spec says (a point's seeds in one job, ``max_parallel`` jobs at once). Modes:

  processes  the jobs share the GPU by time-slicing: one process's kernels run while another's host code does
  mps        the same jobs under an MPS control daemon that this script starts and stops: kernels of different
             processes run on the GPU at the same time

Each mode starts with empty compile caches, so neither inherits the other's kernels. Prints, per mode, the training
FLOPs of its trials over its wall time (start-up, compilation and validation included) as a share of the GPU's bf16
peak and the ratio to ``processes``; per trial, startup_s and warmup_s by its place in its job (the first seed of a
job compiles the point's shapes; the later ones reuse them).

``--jobs`` sets how many jobs run at once (one per rho). A mode that runs past ``--timeout`` counts the trials that
finished by then, its jobs are killed, and its share of the peak is a lower bound.

    PYTHONPATH=. python3 benchmarks/sweep_throughput.py --budget 2e14 --rho 0.5 0.8
    PYTHONPATH=. python3 benchmarks/sweep_throughput.py --budget 7e14 --rho 0.2 0.4 0.6 0.8 0.9 1.0 --jobs 6 \
        --modes mps --compile cudagraphs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import LADDER, REPO, smoke, table, write_result
from engram.device import peak_flops
from sweeps.cli import COMPILE


def slice_spec(folder: Path, name: str, budget: str, rhos: list[float], jobs: int | None = None) -> Path:
    raw = yaml.safe_load(LADDER.read_text())
    if jobs:
        raw["launch"]["max_parallel"] = jobs
    raw["name"] = name
    raw["base"] = str((LADDER.parent / raw["base"]).resolve())
    raw["grid"]["budget"]["levels"] = {budget: raw["grid"]["budget"]["levels"][budget]}
    raw["grid"]["rho"]["values"] = rhos
    raw.pop("points", None)  # the ladder's extra seeds at chosen points, most of them outside the slice
    if smoke():  # the script's own check on a CPU: small trials, two seeds, no compilation
        raw["grid"]["budget"]["levels"][budget]["train.compute"] = 2e12
        raw["set"].update({"train.compile": False, "train.eval_every_tokens": 0, "data.tokenizer_docs": 2000,
                           "data.max_train_tokens": 2000000})
        raw["seeds"], raw["launch"]["seeds_per_job"], raw["launch"]["max_parallel"] = 2, 2, 1
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class MPS:
    """An MPS control daemon for the processes started while it runs (they find it through the pipe folder)."""

    def __init__(self, folder: Path):
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}

    def __enter__(self):
        for path in self.env.values():
            Path(path).mkdir(parents=True)
        os.environ.update(self.env)
        subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True)
        return self

    def __exit__(self, *exc):
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, check=False)
        for key in self.env:
            os.environ.pop(key, None)


def prepare_text(spec_path: Path) -> float:
    """Seconds to make the slice's tokenizer and token cache ready, outside every mode's clock."""
    from experiments.data import load_corpus
    from sweeps.spec import expand, load_spec

    trial = expand(load_spec(spec_path))[0].trial
    started = time.time()
    load_corpus(trial.data, 1, trial.train.val_tokens)
    return time.time() - started


def run_mode(mode: str, args, folder: Path) -> tuple[dict, list[dict]]:
    from sweeps.launch import run_sweep
    from sweeps.spec import expand, load_spec

    work = folder / mode
    for cache in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # the jobs inherit the driver's environment
        os.environ[cache] = str(work / cache.lower())
    spec_path = slice_spec(folder, f"throughput-{mode}", args.budget, args.rho, args.jobs)
    if mode == "mps" and not shutil.which("nvidia-cuda-mps-control"):
        return {"mode": mode, "error": "nvidia-cuda-mps-control is not on the PATH"}, []
    started, error = time.time(), None
    with MPS(work / "mps") if mode == "mps" else contextlib.nullcontext():
        try:
            run_sweep(spec_path, results=work / "results", workdir=work / "runs", analyse=False, poll_s=1.0,
                      timeout_s=args.timeout, echo=print,
                      compile_=None if args.compile is None or smoke() else COMPILE[args.compile])
        except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as err:
            error = f"{type(err).__name__}: {err}"[:300]
        wall = time.time() - started
        # jobs ignore SIGTERM (as on SLURM) and would train on past a timeout; MPS shuts down only once they are gone
        subprocess.run(["pkill", "-9", "-f", str(work / "runs")], check=False)
    # what finished, also when the sweep timed out (then a lower bound: the trials cut off add wall time only)
    records = [json.loads(p.read_text()) for p in (work / "results").rglob("runs/*.json")]
    done = [r for r in records if r["status"] == "completed"]
    flops = sum(r["accounting"]["total_flops"] for r in done)
    devices = {r["device"] for r in done}
    try:
        peak = peak_flops(devices.pop()) if len(devices) == 1 else None
    except KeyError:  # a CPU (the smoke check)
        peak = None
    per_job = load_spec(spec_path).launch.seeds_per_job
    trials = [{"mode": mode, "rho": r["axes"]["rho"], "seed": r["seed"], "place in job": r["seed"] % per_job,
               "startup_s": r["metrics"].get("startup_s"), "warmup_s": r["metrics"].get("warmup_s"),
               "steady tok/s": r["metrics"]["tokens_per_second_steady"], "wall_s": r["wall_time_s"]}
              for r in sorted(done, key=lambda r: (r["axes"]["rho"], r["seed"]))]
    return {"mode": mode, "trials": len(done), "of": len(expand(load_spec(spec_path))), "flops": flops,
            "wall_s": wall, "mfu": flops / wall / peak if peak else None, "error": error}, trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="2e14", help="a budget level of the ladder spec")
    ap.add_argument("--rho", type=float, nargs="+", default=[0.5, 0.8])
    ap.add_argument("--modes", nargs="+", default=["processes", "mps"], choices=["processes", "mps"])
    ap.add_argument("--jobs", type=int, help="jobs at once (default: the spec's max_parallel); a job per rho")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mode")
    ap.add_argument("--compile", choices=tuple(COMPILE), help="every trial's train.compile (default: the spec's)")
    args = ap.parse_args()
    rows, trials = [], []
    with tempfile.TemporaryDirectory(dir=REPO / "runs" if (REPO / "runs").is_dir() else None) as tmp:
        prepared = prepare_text(slice_spec(Path(tmp), "throughput-text", args.budget, args.rho))
        print(f"text: tokenizer and token cache ready in {prepared:.1f} s (built once, then read by every mode)")
        for mode in args.modes:
            row, per_trial = run_mode(mode, args, Path(tmp))
            rows.append(row)
            trials.extend(per_trial)
    reference = rows[0].get("mfu")
    for row in rows:
        row["vs_processes"] = row["mfu"] / reference if row.get("mfu") and reference else None
    print(table(trials, ["mode", "rho", "seed", "place in job", "startup_s", "warmup_s", "steady tok/s", "wall_s"]))
    print(table(rows, ["mode", "trials", "of", "flops", "wall_s", "mfu", "vs_processes", "error"]))
    write_result("sweep_throughput", {"budget": args.budget, "rho": args.rho, "compile": args.compile,
                                      "jobs": args.jobs or yaml.safe_load(LADDER.read_text())["launch"]["max_parallel"],
                                      "text_ready_s": prepared,
                                      "modes": rows, "trials": trials})
    sys.stdout.flush()


if __name__ == "__main__":
    main()
