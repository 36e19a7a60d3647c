"""Where a small trial's step time goes: the real trainer against bare training loops of the same model.

For each shape of the allocation ladder (the 2e14-FLOP trial of sweeps/specs/allocation_text.yaml and a ~3e15 one)
the same model, optimizers and batch size are trained by

* ``trainer``: :func:`experiments.train.run_trial` (Lightning, bf16, deterministic as sweeps train; its steady
  rate, validation off), compiled and with CUDA graphs (``train.compile: cudagraphs``); the reference;
* ``loop`` variants: a bare loop doing what the trainer's step does (lookup, loss, backward, clipping, router
  biases, optimizers) on random tokens, with and without a host sync per step (reading the loss), eager,
  compiled, with fused AdamW and with CUDA graphs;

and the busy share of the GPU in the compiled and the graphed loops (kernel time / wall time, from the profiler)
says how far launch and Python overhead are from the kernels themselves. MFU is against the device's dense bf16
peak, training FLOPs from ``engram.budget``. Results: ``results/benchmarks/profile_step.json``.

    PYTHONPATH=. python3 benchmarks/profile_step.py
    BENCH_SMOKE=1 PYTHONPATH=. python3 benchmarks/profile_step.py   # the script's path on a CPU, toy sizes
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import device, smoke, synchronize, table, write_result
from engram.budget import count
from engram.compiled import compiled
from engram.compress import Compression
from engram.device import device_name, mfu
from engram.model import EngramLM
from engram.optim_tables import clip_grad_norm_
from experiments.config import load_trial, resolve
from experiments.optim import build_optimizers, set_learning_rates
from experiments.train import run_trial

REPO = Path(__file__).resolve().parents[1]
TEXT = ["data.vocab_size=4096", "data.seq_len=512", "budget.rho=0.8", "train.compute=null"]
SHAPES = {
    "2e14 (d176)": TEXT + ["budget.total_params=2.7e+7", "model.d_model=176", "model.ffn_hidden=528",
                           "model.moe.expert_hidden=256", "model.engram.mem_dim=96"],
    "3e15 (d384)": TEXT + ["budget.total_params=9.0e+7", "model.d_model=384", "model.n_heads=6",
                           "model.ffn_hidden=1152", "model.moe.expert_hidden=384", "model.engram.mem_dim=192"],
}
SMOKE = ["model.d_model=64", "model.n_heads=2", "model.ffn_hidden=128", "model.moe.expert_hidden=64",
         "model.engram.mem_dim=32", "budget.total_params=1.0e+6", "data.seq_len=64", "data.vocab_size=512",
         "data.tokenizer_docs=500", "train.batch_size=4", "train.val_tokens=1024"]
LOOPS = {  # name: (compile mode or None, fused AdamW, host sync every step)
    "loop eager, sync": (None, False, True),
    "loop eager": (None, False, False),
    "loop compiled, sync": ("default", False, True),
    "loop compiled": ("default", False, False),
    "loop compiled, fused AdamW": ("default", True, False),
    "loop cudagraphs, fused AdamW": ("reduce-overhead", True, False),
}
PROFILED = ("loop compiled, fused AdamW", "loop cudagraphs, fused AdamW")
TRAINERS = {"trainer compiled": "true", "trainer cudagraphs": "cudagraphs"}  # train.compile


def bare_loop(trial, steps: int, mode: str | None, fused: bool, sync: bool, profile: bool = False) -> dict:
    """Train ``steps`` steps as the trainer's step does, on random tokens; the rate after a warm-up."""
    dev = device()
    torch.manual_seed(trial.seed)
    model = EngramLM(trial.model, Compression.identity(trial.model.vocab_size)).to(dev)
    opt = build_optimizers(model, trial.optim)
    if fused:
        for member in opt.optimizers:
            for group in member.param_groups:
                if isinstance(member, (torch.optim.AdamW, torch.optim.Adam)):
                    group["fused"], group["foreach"] = dev.type == "cuda", False
    graphs = mode == "reduce-overhead" and dev.type == "cuda"
    loss_fn = compiled(model.loss, cuda_graphs=graphs) if mode else model.loss
    B, T = trial.train.batch_size, trial.data.seq_len
    tokens = torch.randint(0, trial.model.vocab_size, (8, B, T + 1), device=dev)
    params = list(model.parameters())
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    def step(i: int) -> None:
        x, y = tokens[i % 8, :, :-1], tokens[i % 8, :, 1:]
        set_learning_rates(opt, i, steps, trial.optim)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            out = loss_fn(x, y, memory=model.memory(x))
        out.loss.backward()
        clip_grad_norm_(params, trial.optim.grad_clip)
        model.update_router_biases()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sync and not torch.isfinite(out.loss):
            raise RuntimeError("loss became non-finite")

    warmup = 3 if smoke() else 15
    for i in range(warmup):
        step(i)
    synchronize()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    synchronize()
    seconds = time.perf_counter() - t0
    result = {"tokens_per_second": steps * B * T / seconds, "step_ms": 1e3 * seconds / steps}
    if profile and dev.type == "cuda":
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for i in range(10):
                step(i)
            synchronize()
            wall = time.perf_counter() - t0
        kernel_us = sum(e.device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
        result["gpu_busy"] = kernel_us * 1e-6 / wall
        result["kernels_per_step"] = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA") / 10
        result["top_kernels"] = [(e.key[:60], round(e.device_time_total / 10, 1)) for e in sorted(
            (e for e in prof.key_averages() if e.device_type.name == "CUDA"),
            key=lambda e: -e.device_time_total)[:12]]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "experiments" / "configs" / "allocation.yaml"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--trainer-tokens", type=float, default=4e6)
    args = ap.parse_args()
    steps = 3 if smoke() else args.steps
    rows, profiles = [], {}
    for shape, overrides in SHAPES.items():
        overrides = overrides + (SMOKE if smoke() else [])
        trial = resolve(load_trial(args.config, overrides + ["train.tokens=1e6"]))
        per_token = count(trial.model, seq_len=trial.data.seq_len).train_flops_per_token
        results = {}
        for name, (mode, fused, sync) in LOOPS.items():
            try:
                results[name] = bare_loop(trial, steps, mode, fused, sync, profile=name in PROFILED)
            except Exception as err:  # one path that does not run must not hide the others' numbers
                results[name] = {"error": f"{type(err).__name__}: {err}"[:300]}
        for name, compile_ in TRAINERS.items():
            with tempfile.TemporaryDirectory() as tmp:
                tokens = 2e4 if smoke() else args.trainer_tokens
                record = run_trial(load_trial(args.config, overrides + [
                    f"train.tokens={tokens:g}", "train.eval_every_tokens=0", f"train.compile={compile_}",
                    "train.deterministic=true", "train.accelerator=auto", "sweep=profile-step"]),
                    results=Path(tmp) / "r", workdir=Path(tmp) / "w")
            ok = record["status"] == "completed"
            results[name] = ({"tokens_per_second": record["metrics"]["tokens_per_second_steady"]} if ok
                             else {"error": f"{record['status']}: {record['reason']}"})
        reference = results["trainer compiled"].get("tokens_per_second")
        for name, r in results.items():
            rate = r.get("tokens_per_second")
            rows.append({"shape": shape, "P_act": count(trial.model).P_act, "path": name, "tokens_per_second": rate,
                         "vs_trainer": rate / reference if rate and reference else None,
                         "mfu": mfu(rate, per_token, device_name()) if rate else None,
                         "gpu_busy": r.get("gpu_busy"), "kernels_per_step": r.get("kernels_per_step"),
                         "error": r.get("error")})
            if "top_kernels" in r:
                profiles[f"{shape}, {name}"] = r["top_kernels"]
    print(table(rows, ["shape", "P_act", "path", "tokens_per_second", "vs_trainer", "mfu", "gpu_busy",
                       "kernels_per_step", "error"]))
    for shape, top in profiles.items():
        print(f"\n{shape}: top kernels (us per step)")
        for key, us in top:
            print(f"  {us:9.1f}  {key}")
    write_result("profile_step", {"rows": rows, "top_kernels": profiles})


if __name__ == "__main__":
    main()
