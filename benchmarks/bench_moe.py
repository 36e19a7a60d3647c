"""MoE layer forward + backward: grouped GEMMs vs an iso-active-FLOPs dense SwiGLU and vs the per-expert loop.

d = 512, N = 32768 tokens, no shared experts, bf16 autocast, (E=8, k=2, F=1024) and (E=64, k=8, F=256). Both
configurations activate k x F = 2048 hidden units per token, so the dense reference is one SwiGLU of hidden 2048.

Two numbers (METHOD.md): expert FLOPs forward = 2 x N x 3 x D x (k F) = 206 GFLOP, x3 with the backward = 618
GFLOP; at the ~380 TFLOP/s a d=512 bf16 matmul reaches here (PERF.md) that is ~1.6 ms, the dense layer's floor.
The MoE layer also moves the routed copies: k x N x D bf16 gathered in and out (k=8: 268 MB each way), a few
hundred microseconds at ~3 TB/s, forward and backward.

    PYTHONPATH=. python3 benchmarks/bench_moe.py
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import check_close, compile_, cuda_time_ms, device, smoke, table, write_result
from engram.config import MoEConfig
from engram.layers import SwiGLU
from engram.moe import MoE, experts_grouped

CONFIGS = ((8, 2, 1024), (64, 8, 256))


def fwd_bwd(module, x, grad):
    """One forward and backward with a real (not expanded) output gradient: torch._grouped_mm's backward fails on
    a stride-0 gradient."""
    def run():
        x.grad = None
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            y = module(x)
        y.backward(grad)
    return run


def compiled(module, x, grad):
    """torch.compile with fullgraph=True, compiled by a first call; if that fails, the error is recorded and
    fullgraph dropped (a compile failure is a finding; a wrong number is not: those raise)."""
    try:
        fn = compile_(module, fullgraph=True)
        fwd_bwd(fn, x, grad)()
        return fn, True, None
    except Exception as err:  # noqa: BLE001 - recorded in the results
        torch._dynamo.reset()
        fn = compile_(module)
        fwd_bwd(fn, x, grad)()
        return fn, False, repr(err)[:2000]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--d-model", type=int, default=512)
    args = ap.parse_args()
    dev = device()
    if smoke():
        args.tokens, args.d_model = 256, 64
    N, D = args.tokens, args.d_model
    torch.manual_seed(0)
    results, rows = {"tokens": N, "d_model": D, "configs": {}}, []
    for E, k, Fh in CONFIGS:
        if smoke():
            Fh = Fh // 16
        moe = MoE(D, MoEConfig(n_routed=E, top_k=k, n_shared=0, expert_hidden=Fh, bias_update_rate=0.0)).to(dev)
        for p in moe.parameters():
            torch.nn.init.normal_(p, std=0.02)
        dense = SwiGLU(D, k * Fh).to(dev)
        for p in dense.parameters():
            torch.nn.init.normal_(p, std=0.02)
        x = torch.randn(1, N, D, device=dev, requires_grad=True)
        grad = torch.randn(1, N, D, device=dev)

        # correctness: grouped GEMMs vs the per-expert loop, outputs and gradients
        outs = {}
        for backend in ("grouped", "loop"):
            moe.backend = backend
            moe.zero_grad(set_to_none=True)
            x.grad = None
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                y = moe(x)
            y.backward(grad)
            outs[backend] = (y.detach().float(), x.grad.clone(), moe.w1_EFD.grad.clone(), moe.w2_EDF.grad.clone())
        names = ("output", "d x", "d w1", "d w2")
        errs = {n: check_close(f"E={E} k={k}: grouped vs loop {n}", a, b, 3e-2)
                for n, a, b in zip(names, outs["grouped"], outs["loop"])}
        with torch.no_grad():
            sel = moe.route(x.view(-1, D))[0]
            load = torch.zeros(E, device=dev).scatter_add_(0, sel.flatten(), torch.ones(sel.numel(), device=dev))
        imbalance = (load.max() / load.mean()).item()

        moe.backend = "grouped"
        moe_c, moe_full, moe_err = compiled(moe, x, grad)
        dense_c, dense_full, dense_err = compiled(dense, x, grad)
        t = {
            "dense SwiGLU eager": cuda_time_ms(fwd_bwd(dense, x, grad)),
            "dense SwiGLU compiled": cuda_time_ms(fwd_bwd(dense_c, x, grad)),
            "MoE grouped eager": cuda_time_ms(fwd_bwd(moe, x, grad)),
            "MoE grouped compiled": cuda_time_ms(fwd_bwd(moe_c, x, grad)),
        }
        # the floor of this design: the three grouped GEMMs alone, on tokens already in expert order
        xs = torch.randn(N * k, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        gs = torch.randn(N * k, D, device=dev, dtype=torch.bfloat16)
        counts = torch.bincount(moe.route(x.view(-1, D))[0].flatten(), minlength=E)

        def gemms_only():
            experts_grouped(xs, counts, moe.w1_EFD, moe.w3_EFD, moe.w2_EDF).backward(gs)

        t["grouped GEMMs alone (pre-sorted bf16)"] = cuda_time_ms(gemms_only)
        moe.backend = "loop"
        t["MoE per-expert loop eager"] = cuda_time_ms(fwd_bwd(moe, x, grad), warmup=2, iters=5)
        moe.backend = "grouped"
        flops = 3 * 2 * N * 3 * D * k * Fh
        name = f"E={E} k={k} F={Fh}"
        for variant, ms in t.items():
            ref = t["dense SwiGLU compiled" if "compiled" in variant or "alone" in variant else "dense SwiGLU eager"]
            rows.append({"config": name, "variant": variant, "ms": ms, "TFLOP/s": flops / (ms * 1e-3) / 1e12,
                         "x dense (same mode)": ms / ref, "x loop": ms / t["MoE per-expert loop eager"]})
        results["configs"][name] = {"ms": t, "flops_fwd_bwd": flops, "grouped_vs_loop_rel_err": errs,
                                    "load_max_over_mean": imbalance,
                                    "fullgraph": {"moe": moe_full, "dense": dense_full},
                                    "compile_errors": {"moe": moe_err, "dense": dense_err},
                                    "ratio_compiled": t["MoE grouped compiled"] / t["dense SwiGLU compiled"],
                                    "ratio_eager": t["MoE grouped eager"] / t["dense SwiGLU eager"]}
        print(f"{name}: load max/mean {imbalance:.2f}; grouped vs loop rel. err {errs}; "
              f"fullgraph moe={moe_full} dense={dense_full}")
        del moe, dense, moe_c, dense_c, x, grad, outs
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print(f"\nMoE layer fwd+bwd, d={D}, {N} tokens, bf16 autocast")
    print(table(rows, ["config", "variant", "ms", "TFLOP/s", "x dense (same mode)", "x loop"]))
    write_result("bench_moe", results)


if __name__ == "__main__":
    main()
