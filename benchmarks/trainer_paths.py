"""Does a ladder trial learn the same way on every path the trainer can take on a GPU?

One point of ``sweeps/specs/allocation_ladder.yaml`` (a budget level, a rho, seed 0) trained in this process once per
path, on the same text, each from scratch:

  eager         the reference: no compilation, torch's per-parameter (foreach) Adam/AdamW, bf16 autocast
  eager-fp32    the same in full fp32 precision
  fused-adamw   eager with the fused Adam/AdamW kernels the trainer picks on a GPU
  compiled      ``train.compile: true`` with fused Adam/AdamW
  cuda-graphs   ``train.compile: cudagraphs`` with fused Adam/AdamW

Prints each path's validation curve, its final loss against the reference's (the ratio) and against the unigram
entropy (a model at the unigram entropy has learned token frequencies and nothing of context), and its steady rate.
With ``--fresh`` each path trains in a process of its own, so that every compilation is its process's first (in
one process a later path finds the earlier paths' compiled code and caches). Every path trains under deterministic
algorithms, as sweeps do, unless ``--nondeterministic``. With ``--within F`` it exits with an error, after writing
its result, when a path ends more than F (a fraction) above the first path's loss.

    PYTHONPATH=. python3 benchmarks/trainer_paths.py --budget 2e14 --rho 0.8 [--fresh] [--nondeterministic] [--within F]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import REPO, Mismatch, ladder_trial, smoke, table, write_result

PATHS = {  # name: (train.compile, fused optimizer, precision)
    "eager": (False, None, "auto"),
    "eager-fp32": (False, None, "32"),
    "fused-adamw": (False, True, "auto"),
    "compiled": (True, True, "auto"),
    "cuda-graphs": ("cudagraphs", True, "auto"),
}


def train(trial, path: str, folder: Path) -> dict:
    from experiments import optim
    from experiments.train import run_trial

    compile_, fused, precision = PATHS[path]
    train_cfg = dataclasses.replace(trial.train, compile=compile_, precision=precision)
    fusable = optim._fusable
    optim._fusable = lambda params: fused and fusable(params)  # None: torch's default (foreach) kernels
    try:
        record = run_trial(dataclasses.replace(trial, train=train_cfg, sweep=f"paths-{path}"),
                           results=folder / "results", workdir=folder / "runs")
    finally:
        optim._fusable = fusable
    m = record["metrics"]
    return {"path": path, "status": record["status"], "reason": record.get("reason"),
            "val_loss": m.get("val_loss"), "unigram_entropy": m.get("unigram_entropy"),
            "train_loss": m.get("train_loss"), "curve": [round(v, 3) for _, v in m.get("val_curve", [])],
            "steady tok/s": m.get("tokens_per_second_steady"), "mfu": m.get("mfu"), "wall_s": record["wall_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="2e14", help="a budget level of the ladder spec")
    ap.add_argument("--rho", type=float, default=0.8)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--eval-every-tokens", type=float, default=1e6)
    ap.add_argument("--fresh", action="store_true", help="each path in a process of its own")
    ap.add_argument("--nondeterministic", action="store_true",
                    help="train.deterministic off (sweeps train under deterministic algorithms)")
    ap.add_argument("--within", type=float,
                    help="fail where a path's loss ends more than this fraction above the first path's")
    ap.add_argument("--row-to", type=Path, help=argparse.SUPPRESS)  # a --fresh child: its row as JSON, no table
    args = ap.parse_args()
    trial = ladder_trial(args.budget, args.rho)
    train_cfg = dataclasses.replace(trial.train, eval_every_tokens=int(args.eval_every_tokens),
                                    deterministic=trial.train.deterministic and not args.nondeterministic)
    if smoke():  # the script's own check on a CPU
        trial = dataclasses.replace(trial, data=dataclasses.replace(trial.data, tokenizer_docs=2000,
                                                                    max_train_tokens=500000))
        train_cfg = dataclasses.replace(train_cfg, compute=5e11, eval_every_tokens=100_000, val_tokens=16384)
        args.paths = [p for p in args.paths if PATHS[p][1] is None]  # fused kernels need a GPU
    trial = dataclasses.replace(trial, train=train_cfg)
    rows = []
    with tempfile.TemporaryDirectory(dir=REPO / "runs" if (REPO / "runs").is_dir() else None) as tmp:
        for path in args.paths:
            if args.fresh:
                row_file = Path(tmp) / f"{path}.json"
                subprocess.run([sys.executable, __file__, "--budget", args.budget, "--rho", str(args.rho), "--paths",
                                path, "--eval-every-tokens", str(args.eval_every_tokens), "--row-to", str(row_file),
                                *(["--nondeterministic"] if args.nondeterministic else [])], check=True)
                rows.append(json.loads(row_file.read_text()))
            else:
                rows.append(train(trial, path, Path(tmp)))
            if args.row_to:
                args.row_to.write_text(json.dumps(rows[0]))
                return
            print(rows[-1], flush=True)
    reference = rows[0]["val_loss"]
    for row in rows:
        row["vs_" + rows[0]["path"]] = row["val_loss"] / reference if row["val_loss"] and reference else None
        row["above_unigram"] = row["val_loss"] - row["unigram_entropy"] if row["val_loss"] else None
    print(table(rows, ["path", "status", "val_loss", "vs_" + rows[0]["path"], "above_unigram", "steady tok/s",
                       "mfu", "wall_s"]))
    write_result("trainer_paths", {"budget": args.budget, "rho": args.rho, "fresh_processes": args.fresh,
                                   "deterministic": train_cfg.deterministic, "paths": rows})
    if args.within is not None:  # a path that failed (no loss) or whose reference failed is behind too
        bound = (1 + args.within) * reference if reference else -math.inf
        behind = [r["path"] for r in rows[1:] if not (r["val_loss"] or math.inf) <= bound]
        if behind:
            raise Mismatch(f"{', '.join(behind)}: val loss more than {args.within:.0%} above {rows[0]['path']}'s")


if __name__ == "__main__":
    main()
