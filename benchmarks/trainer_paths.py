"""Does a ladder trial learn the same way on every path the trainer can take on a GPU?

One point of ``sweeps/specs/allocation_ladder.yaml`` (a budget level, a rho, seed 0) trained once per path, on the
same text, each from scratch:

  eager         the reference: no compilation, torch's per-parameter (foreach) Adam/AdamW, bf16 autocast
  eager-fp32    the same in full fp32 precision
  fused-adamw   eager with the fused Adam/AdamW kernels the trainer picks on a GPU
  compiled      ``train.compile: true`` with fused Adam/AdamW
  cuda-graphs   ``train.compile: cudagraphs`` with fused Adam/AdamW

A path may change one more thing, to bisect what a path breaks: ``compiled,experts=loop`` (the MoE's per-expert
loop in place of its grouped GEMMs), ``compiled,fused=false`` (the foreach optimizer), ``compiled,backend=aot_eager``
(another ``torch.compile`` backend: ``eager`` runs Dynamo's graph as traced, ``aot_eager`` adds AOTAutograd's joint
graph, ``inductor`` generates kernels), ``compiled,inductor.emulate_precision_casts=true`` (an Inductor setting),
``compiled,optim.grad_clip=0`` (any other dotted key overrides the trial, as ``engram-lab train --set`` does).
``--set`` overrides every path's trial (``--set train.compute=6e13`` for shorter runs).

Prints each path's validation curve, its final loss against the reference's (the ratio) and against the unigram
entropy (a model at the unigram entropy has learned token frequencies and nothing of context), and its steady rate.
With ``--fresh`` each path trains in a process of its own, so that every compilation is its process's first (in
one process a later path finds the earlier paths' compiled code and caches); ``--jobs N`` runs N such processes at
once (the rates are then shared). Every path trains under deterministic algorithms, as sweeps do, unless
``--nondeterministic``. With ``--within F`` it exits with an error, after writing its result, when a path ends more
than F (a fraction) above the first path's loss.

    PYTHONPATH=. python3 benchmarks/trainer_paths.py --budget 2e14 --rho 0.8 [--fresh [--jobs N]] [--nondeterministic]
        [--within F] [--paths PATH[,KEY=VALUE...] ...] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import REPO, Mismatch, ladder_trial, smoke, table, write_result
from experiments.config import parse_override, trial_from_dict

PATHS = {  # name: its settings, KEY=VALUE as a path's extra ones are given
    "eager": [],
    "eager-fp32": ["train.precision='32'"],
    "fused-adamw": ["fused=true"],
    "compiled": ["train.compile=true", "fused=true"],
    "cuda-graphs": ["train.compile=cudagraphs", "fused=true"],
}
EXPERTS = ("auto", "loop", "grouped")
BACKENDS = ("inductor", "aot_eager", "eager")


@dataclasses.dataclass
class PathSettings:
    fused: bool | None = None  # None: torch's default (foreach) Adam/AdamW kernels
    experts: str = "auto"  # the MoE's expert computation: auto, loop, grouped
    backend: str = "inductor"  # torch.compile's, where the trial compiles
    inductor: dict = dataclasses.field(default_factory=dict)  # more Inductor options
    overrides: list[str] = dataclasses.field(default_factory=list)  # the trial's KEY=VALUE


def path_settings(path: str) -> PathSettings:
    """``NAME[,KEY=VALUE...]``: the settings of PATHS[NAME] and the extra ones (values parse as YAML)."""
    name, *extra = path.split(",")
    if name not in PATHS:
        raise SystemExit(f"unknown path {name!r} in {path!r}: choose from {', '.join(PATHS)}")
    settings = PathSettings()
    for item in PATHS[name] + extra:
        parts, value = parse_override(item)
        key = ".".join(parts)
        if key in ("fused", "experts", "backend"):
            setattr(settings, key, value)
        elif key.startswith("inductor."):
            settings.inductor[key.removeprefix("inductor.")] = value
        else:
            settings.overrides.append(item)
    if settings.experts not in EXPERTS:
        raise SystemExit(f"{path!r}: experts is one of {', '.join(EXPERTS)}")
    if settings.backend not in BACKENDS:
        raise SystemExit(f"{path!r}: backend is one of {', '.join(BACKENDS)}")
    return settings


def train(trial, path: str, folder: Path) -> dict:
    import torch

    import engram.moe
    from experiments import module, optim
    from experiments.train import run_trial

    s = path_settings(path)
    trial = trial_from_dict(trial.to_dict(), s.overrides)
    fusable, grouped, compiled = optim._fusable, engram.moe.grouped_mm_available, module.compiled
    optim._fusable = lambda params: s.fused and fusable(params)
    if s.experts != "auto":
        engram.moe.grouped_mm_available = lambda device: s.experts == "grouped"
    if s.backend != "inductor":  # Inductor's settings (CUDA graphs among them) do not apply to the other backends
        module.compiled = lambda fn, cuda_graphs=False: torch.compile(fn, backend=s.backend, dynamic=False)
    elif s.inductor:
        module.compiled = lambda fn, cuda_graphs=False: compiled(fn, cuda_graphs=cuda_graphs, options=s.inductor)
    try:
        record = run_trial(dataclasses.replace(trial, sweep="paths-" + path.split(",")[0]),
                           results=folder / "results", workdir=folder / "runs")
    finally:
        optim._fusable, engram.moe.grouped_mm_available, module.compiled = fusable, grouped, compiled
    m = record["metrics"]
    return {"path": path, "status": record["status"], "reason": record.get("reason"),
            "val_loss": m.get("val_loss"), "unigram_entropy": m.get("unigram_entropy"),
            "train_loss": m.get("train_loss"), "curve": [round(v, 3) for _, v in m.get("val_curve", [])],
            "steady tok/s": m.get("tokens_per_second_steady"), "mfu": m.get("mfu"), "wall_s": record["wall_time_s"]}


def in_fresh_processes(args, folder: Path, on_row) -> list[dict]:
    """Every path in a process of its own, ``args.jobs`` at once; the rows in the order of ``args.paths``, each
    also given to ``on_row`` as it ends. Stopped (an exception, SIGTERM), it kills the processes it started: they
    would train on, and hold the output of whatever reads this one's."""
    passed = ["--budget", args.budget, "--rho", str(args.rho), "--eval-every-tokens", str(args.eval_every_tokens),
              *(["--nondeterministic"] if args.nondeterministic else []), *(["--set", *args.set] if args.set else [])]
    started: list[subprocess.Popen] = []
    lock = threading.Lock()

    def child(i: int, path: str) -> dict:
        row_file = folder / f"row{i}.json"
        with lock:
            started.append(subprocess.Popen([sys.executable, __file__, "--paths", path, "--row-to", str(row_file),
                                             *passed]))
            proc = started[-1]
        code = proc.wait()
        row = (json.loads(row_file.read_text()) if code == 0 and row_file.exists() else  # a crash is a row too
               {"path": path, "status": "failed", "reason": f"exit code {code}", "val_loss": None})
        with lock:
            on_row(row)
        return row

    pool = ThreadPoolExecutor(args.jobs)
    try:
        return list(pool.map(child, range(len(args.paths)), args.paths))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        with lock:
            for proc in started:
                proc.kill()  # a no-op for those that ended


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="2e14", help="a budget level of the ladder spec")
    ap.add_argument("--rho", type=float, default=0.8)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), metavar="PATH[,KEY=VALUE...]",
                    help=f"of {', '.join(PATHS)}; a KEY is experts, backend, fused, inductor.SETTING or a trial's key")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides of every path's trial")
    ap.add_argument("--eval-every-tokens", type=float, default=1e6)
    ap.add_argument("--fresh", action="store_true", help="each path in a process of its own")
    ap.add_argument("--jobs", type=int, default=1, help="with --fresh: processes at once")
    ap.add_argument("--nondeterministic", action="store_true",
                    help="train.deterministic off (sweeps train under deterministic algorithms)")
    ap.add_argument("--within", type=float,
                    help="fail where a path's loss ends more than this fraction above the first path's")
    ap.add_argument("--row-to", type=Path, help=argparse.SUPPRESS)  # a --fresh child: its row as JSON, no table
    args = ap.parse_args()
    settings = {path: path_settings(path) for path in args.paths}  # a bad path fails here, before any training
    trial = ladder_trial(args.budget, args.rho)
    train_cfg = dataclasses.replace(trial.train, eval_every_tokens=int(args.eval_every_tokens),
                                    deterministic=trial.train.deterministic and not args.nondeterministic)
    if smoke():  # the script's own check on a CPU
        trial = dataclasses.replace(trial, data=dataclasses.replace(trial.data, tokenizer_docs=2000,
                                                                    max_train_tokens=500000))
        train_cfg = dataclasses.replace(train_cfg, compute=5e11, eval_every_tokens=100_000, val_tokens=16384)
        args.paths = [p for p in args.paths if not settings[p].fused]  # fused kernels need a GPU
    trial = trial_from_dict(dataclasses.replace(trial, train=train_cfg).to_dict(), args.set)

    def write(rows: list[dict], finished: bool) -> None:
        write_result("trainer_paths", {"budget": args.budget, "rho": args.rho, "fresh_processes": args.fresh,
                                       "jobs": args.jobs if args.fresh else 1, "deterministic": train_cfg.deterministic,
                                       "overrides": args.set, "finished": finished, "paths": rows})

    ended: list[dict] = []

    def on_row(row: dict) -> None:  # the result so far is written at every row: a run cut short keeps its rows
        if args.row_to:  # a --fresh child: its row goes to its parent, which prints and writes it
            args.row_to.write_text(json.dumps(row))
            return
        print(row, flush=True)
        ended.append(row)
        write(ended, finished=False)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # so that cleanup runs on `timeout`
    with tempfile.TemporaryDirectory(dir=REPO / "runs" if (REPO / "runs").is_dir() else None) as tmp:
        if args.fresh:
            rows = in_fresh_processes(args, Path(tmp), on_row)
        else:
            rows = []
            for path in args.paths:
                rows.append(train(trial, path, Path(tmp)))
                on_row(rows[-1])
    if args.row_to:
        return
    reference = rows[0]["val_loss"]
    for row in rows:
        row["vs_" + rows[0]["path"]] = row["val_loss"] / reference if row["val_loss"] and reference else None
        row["above_unigram"] = row["val_loss"] - row["unigram_entropy"] if row["val_loss"] else None
    print(table(rows, ["path", "status", "val_loss", "vs_" + rows[0]["path"], "above_unigram", "steady tok/s",
                       "mfu", "wall_s"]))
    write(rows, finished=True)
    if args.within is not None:  # a path that failed (no loss) or whose reference failed is behind too
        bound = (1 + args.within) * reference if reference else -math.inf
        behind = [r["path"] for r in rows[1:] if not (r["val_loss"] or math.inf) <= bound]
        if behind:
            raise Mismatch(f"{', '.join(behind)}: val loss more than {args.within:.0%} above {rows[0]['path']}'s")


if __name__ == "__main__":
    main()
