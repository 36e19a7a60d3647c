"""Every probe on an Engram model and its iso-parameter MoE twin: probe records and figures under a results folder.

The pair is either given (two checkpoints), picked from a finished allocation sweep (the best rho < 1 run at the
largest budget and the rho = 1 run of the same budget and seed, :func:`analysis.data.memory_and_twin`), or trained
here from the allocation base trial at rho = 0.8 and rho = 1.0 (sweep ``probe-pair``). Then ``engram-lab probe``
runs LogitLens on both, CKA between them, the gates of the Engram model and its memory-off test, with the factual
knowledge task through lm-eval too, and draws the figures into ``<results>/<sweep>/figures``.

    PYTHONPATH=. python3 benchmarks/probe_pair.py                           # on a GPU: train the pair, probe it
    PYTHONPATH=. python3 benchmarks/probe_pair.py --sweep allocation        # the pair of a finished sweep
    PYTHONPATH=. python3 benchmarks/probe_pair.py --engram CKPT --twin CKPT
    BENCH_SMOKE=1 PYTHONPATH=. python3 benchmarks/probe_pair.py             # the script's path on a CPU, toy sizes
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.bench_trial import SMOKE as TOY_TRIAL  # the toy allocation trial of bench_trial's smoke run
from benchmarks.common import smoke

REPO = Path(__file__).resolve().parents[1]
SWEEP = "probe-pair"
RHOS = (0.8, 1.0)  # an Engram model near the paper's optimum, and its twin with every sparse parameter in experts
SMOKE = TOY_TRIAL + ["train.compute=2.0e+10"]  # a few dozen steps: the smoke run checks the path, not the models


def train_pair(config: str, overrides: list[str], results: Path, workdir: Path) -> tuple[str, str]:
    """Train the allocation trial at each of RHOS (same budget and seed); the model folders, Engram first."""
    from experiments.config import load_trial
    from experiments.train import run_trial

    folders = []
    for rho in RHOS:
        pair = [f"budget.rho={rho}", f"axes.rho={rho}", f"sweep={SWEEP}", "train.accelerator=auto"]
        record = run_trial(load_trial(config, pair + (SMOKE if smoke() else []) + overrides), results=results,
                           workdir=workdir)
        if record["status"] != "completed":
            raise SystemExit(f"rho={rho} ended {record['status']}: {record['reason']}")
        print(f"trained rho={rho}: validation loss {record['metrics']['val_loss']:.4f}, {record['checkpoint']}")
        folders.append(record["checkpoint"])
    return folders[0], folders[1]


def main() -> None:
    from engram_lab.cli import main as engram_lab

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engram", help="the Engram checkpoint (with --twin)")
    ap.add_argument("--twin", help="its MoE twin's checkpoint")
    ap.add_argument("--sweep", help="take the pair from this finished allocation sweep under --results")
    ap.add_argument("--config", default=str(REPO / "experiments" / "configs" / "allocation.yaml"),
                    help="the trial trained at each rho when no pair is given")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides of that trial, e.g. train.compute=1e13")
    ap.add_argument("--results", default=None, help="results folder (default: results; a temporary one in smoke)")
    ap.add_argument("--workdir", default=None, help="checkpoints of a trained pair (default: runs; temporary in smoke)")
    ap.add_argument("--tokens", type=int, default=2048 if smoke() else 65536, help="validation tokens per probe")
    ap.add_argument("--tasks", default="engram_world_knowledge", help="lm-eval tasks of the memory-off test")
    ap.add_argument("--limit", type=int, default=10 if smoke() else 500, help="documents per lm-eval task")
    args = ap.parse_args()
    if bool(args.engram) != bool(args.twin):
        ap.error("--engram and --twin go together")
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(args.results or (Path(tmp) / "results" if smoke() else "results"))
        workdir = Path(args.workdir or (Path(tmp) / "runs" if smoke() else "runs"))
        if args.engram:
            engram, twin = args.engram, args.twin
        elif args.sweep:
            from analysis.data import memory_and_twin

            engram, twin = (rec["checkpoint"] for rec in memory_and_twin(results, args.sweep))
        else:
            engram, twin = train_pair(args.config, args.overrides, results, workdir)
        start = time.perf_counter()
        argv = ["probe", str(engram), "--against", str(twin), "--results", str(results), "--tokens", str(args.tokens),
                "--limit", str(args.limit)] + (["--tasks", args.tasks] if args.tasks else [])
        code = engram_lab(argv + (["--device", "cpu"] if smoke() else []))
        print(f"probes: {time.perf_counter() - start:.1f} s, records and figures under {results}")
        if code:
            raise SystemExit(code)


if __name__ == "__main__":
    main()
