"""A whole trial through the real trainer (Lightning, bf16): tokens/s and MFU, compiled against eager.

A paper-family trial (the allocation sweep's base, experiments/configs/allocation.yaml, widened to ~10M activated
parameters at P_tot 90M) is trained twice by ``experiments.train.run_trial`` — once eager, once with
``train.compile`` — on the same 3M tokens (a rate, not a converged model, is measured);
the run records give tokens/s over every training step (compilation included) and at steady state (after the first
10 steps), both without validation, and MFU of the steady rate against the device's dense bf16 peak. The compiled
run's ratio to the eager one is the reference measured in the same run. Results:
``results/benchmarks/bench_trial.json``.

    PYTHONPATH=. python3 benchmarks/bench_trial.py            # on a GPU
    BENCH_SMOKE=1 PYTHONPATH=. python3 benchmarks/bench_trial.py   # the script's path on a CPU, toy sizes
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import smoke, table, write_result
from experiments.config import load_trial
from experiments.train import run_trial

REPO = Path(__file__).resolve().parents[1]

TRIALS = {
    "paper-family (P_act ~10M)": ["model.d_model=384", "model.n_heads=6", "model.ffn_hidden=1152",
                                  "model.moe.expert_hidden=384", "model.engram.mem_dim=192",
                                  "budget.total_params=9.0e+7", "budget.rho=0.8"],
}
SMOKE = ["model.d_model=64", "model.n_heads=2", "model.ffn_hidden=128", "model.moe.expert_hidden=64",
         "model.engram.mem_dim=32", "budget.total_params=1.0e+6", "data.seq_len=64",
         "data.vocab_size=512", "data.tokenizer_docs=500", "train.batch_size=4", "train.val_tokens=1024",
         "train.tokens=2e4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "experiments" / "configs" / "allocation.yaml"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in TRIALS.items():
            overrides = (overrides + ["train.compute=null", "train.tokens=3e6"] + (SMOKE if smoke() else [])
                         + ["train.eval_every_tokens=0", "train.accelerator=auto"])
            result = {}
            for mode in ("eager", "compile"):
                trial = load_trial(args.config, overrides + [f"train.compile={mode == 'compile'}",
                                                             f"sweep=bench-{mode}"])
                record = run_trial(trial, results=Path(tmp) / "results", workdir=Path(tmp) / "runs")
                if record["status"] != "completed":
                    raise SystemExit(f"{name} ({mode}) ended {record['status']}: {record['reason']}")
                m, acc = record["metrics"], record["accounting"]
                result[mode] = {"tokens_per_second": m["tokens_per_second"],
                                "tokens_per_second_steady": m["tokens_per_second_steady"], "mfu": m["mfu"],
                                "val_loss": m["val_loss"], "tokens": acc["tokens"], "P_act": acc["P_act"],
                                "P_tot": acc["P_tot"], "train_flops_per_token": acc["train_flops_per_token"]}
            speedup = result["compile"]["tokens_per_second_steady"] / result["eager"]["tokens_per_second_steady"]
            rows.append({"trial": name, **{f"{k}_{mode}": v for mode, r in result.items() for k, v in r.items()},
                         "compile_speedup": speedup})
    print(table(rows, ["trial", "P_act_eager", "tokens_per_second_steady_eager", "tokens_per_second_steady_compile",
                       "compile_speedup", "mfu_eager", "mfu_compile", "tokens_per_second_compile"]))
    write_result("bench_trial", {"rows": rows})


if __name__ == "__main__":
    main()
