"""Training steps: Engram+MoE vs the iso-parameter MoE it is compared with, and PERF.md's tiny dense model.

Each step is the whole of it: bf16-autocast forward and backward, router-bias update, optimizer steps and
zeroing the gradients. Engram's lookup runs eagerly ahead of the compiled backbone (``EngramLM.memory``); the
backbone (attention, MoE, Engram's gate/projection/conv) is one ``torch.compile(fullgraph=True)`` graph.

* Engram+MoE vs MoE: d=512, 8 layers, vocab 32k, seq 1024, 16 sequences a step; MoE with 64 routed experts (top-4,
  hidden 256, one shared), and the Engram model ``engram.budget.solve`` gives at the same total parameters with
  75% of the sparse budget in experts (49) and the rest in tables at layers 1 and 4. Tables train with
  :class:`engram.optim_tables.RowSparseAdam` (also measured with dense AdamW over the tables).
* Tiny dense (PERF.md): 4 layers, d=256, vocab 32k, seq 1024: eager, compiled and compiled with CUDA graphs
  (``mode="reduce-overhead"``), at 16 and 4 sequences a step.

MFU = tokens/s x training FLOPs per token (``engram.budget.count``, 3x forward, attention included) / the device's
dense bf16 peak (``engram.device.peak_flops``).

    PYTHONPATH=. python3 benchmarks/bench_train_step.py
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
from dataclasses import replace

import torch

from benchmarks.common import Mismatch, compile_, cuda_time_ms, device, smoke, table, write_result
from engram.budget import count, solve
from engram.config import EngramConfig, ModelConfig, MoEConfig
from engram.device import device_name, mfu
from engram.model import EngramLM
from engram.optim_tables import RowSparseAdam


def engram_configs(vocab: int, seq: int) -> tuple[ModelConfig, ModelConfig]:
    base = ModelConfig(vocab_size=vocab, d_model=512, n_layers=8, n_heads=8, max_seq_len=seq, ffn_hidden=1536,
                       moe=MoEConfig(n_routed=64, top_k=4, n_shared=1, expert_hidden=256, first_dense=1),
                       engram=EngramConfig(layers=[1, 4], orders=[2, 3], heads=8, mem_dim=512, rows=1000))
    moe_cfg = replace(base, engram=None)
    engram_cfg, _ = solve(base, count(moe_cfg).P_tot, rho=0.75)
    return moe_cfg, engram_cfg


def tiny_dense(vocab: int, seq: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, d_model=256, n_layers=4, n_heads=4, max_seq_len=seq, moe=None, engram=None)


class Step:
    """One training step of ``model`` in ``mode`` (eager | compile | reduce-overhead)."""

    def __init__(self, model: EngramLM, mode: str, row_sparse: bool, lr: float = 3e-4):
        self.model, self.mode = model, mode
        self.set_optimizers(row_sparse, lr)

        def loss(ids, targets, memory):
            return model.loss(ids, targets, memory=memory).loss

        self.fullgraph, self.error = mode != "eager", None
        if mode == "eager":
            self.loss = loss
        else:
            graphs = mode == "reduce-overhead"
            self.loss = compile_(loss, cuda_graphs=graphs, fullgraph=True)
            self._fallback = lambda: compile_(loss, cuda_graphs=graphs)

    def set_optimizers(self, row_sparse: bool, lr: float = 3e-4) -> None:
        """AdamW (fused) for the backbone; the tables with RowSparseAdam (row-sparse gradients) or fused Adam."""
        model = self.model
        model.set_row_sparse_tables(row_sparse)
        tables = model.table_parameters() if model.hasher is not None else []
        table_ids = {id(p) for p in tables}
        dense = [p for n, p in model.named_parameters() if p.requires_grad and id(p) not in table_ids]
        fused = model.embed.weight.is_cuda
        self.opts = [torch.optim.AdamW(dense, lr=lr, fused=fused)]
        if tables:
            self.opts.append(RowSparseAdam(tables, lr=5 * lr) if row_sparse
                             else torch.optim.Adam(tables, lr=5 * lr, fused=fused))

    def __call__(self, ids, targets) -> torch.Tensor:
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(ids.device.type, dtype=torch.bfloat16):
            memory = self.model.memory(ids) if self.model.hasher is not None else None
            loss = self.loss(ids, targets, memory)
        loss.backward()
        self.model.update_router_biases()
        for opt in self.opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.detach()

    def first(self, ids, targets) -> torch.Tensor:
        """The first step (it compiles); fullgraph is dropped, and the reason kept, if Dynamo cannot have it."""
        try:
            return self(ids, targets)
        except Mismatch:
            raise
        except Exception as err:  # noqa: BLE001 - a compile failure is reported, not hidden
            if self.mode == "eager":
                raise
            self.fullgraph, self.error = False, repr(err)[:2000]
            for opt in self.opts:
                opt.zero_grad(set_to_none=True)
            torch._dynamo.reset()
            self.loss = self._fallback()
            return self(ids, targets)


def profile_steps(name: str, step, x, y) -> None:
    """The device kernels of 3 steps, by self time: where a step's time goes (printed, and kept under $OUT)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step(x, y)
        torch.cuda.synchronize()
    text = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=70)
    print(f"\nPROFILE {name} (3 steps)\n{text}", flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "profile_train_step.txt"), "a") as f:
            f.write(f"PROFILE {name} (3 steps)\n{text}\n")


def measure(name: str, cfg: ModelConfig, mode: str, batch: int, seq: int, dev, row_sparse: bool = True,
            iters: int = 20, dense_tables_too: bool = False, profile: bool = False) -> list[dict]:
    """Time a step; with ``dense_tables_too``, time it again (same compiled graph) with dense-Adam tables."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = EngramLM(cfg).to(dev).train()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=dev)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    with torch.autocast(dev.type, dtype=torch.bfloat16):  # the reference loss, eager, before any update
        ref = copy.deepcopy(model).loss(x, y).loss.detach().float()
    step = Step(model, mode, row_sparse)
    first = float(step.first(x, y))  # a Python float: a CUDA-graph output is overwritten by the next replay
    ref = float(ref)
    if not abs(first - ref) <= 2e-2 * abs(ref):  # NaN fails too
        raise Mismatch(f"{name} {mode}: first-step loss {first:.5f} vs eager {ref:.5f}")
    counts = count(cfg, seq_len=seq)
    outs = []
    for tables in ("row-sparse", "dense") if dense_tables_too else ("row-sparse" if row_sparse else "dense",):
        if tables == "dense" and dense_tables_too:
            step.set_optimizers(row_sparse=False)
            name = name.replace("row-sparse tables", "dense Adam tables")
        gc.collect()
        gc.freeze()  # keep the collector's pauses out of the timed steps
        ms = cuda_time_ms(lambda: step(x, y), warmup=3, iters=iters)
        gc.unfreeze()
        if profile and tables == "row-sparse" and dev.type == "cuda":
            profile_steps(f"{name} [{mode}]", step, x, y)
        tok_s = batch * seq / (ms * 1e-3)
        util = mfu(tok_s, counts.train_flops_per_token, device_name(dev)) if dev.type == "cuda" else None
        outs.append({"model": name, "mode": mode, "tokens/step": batch * seq, "ms": ms, "Mtok/s": tok_s / 1e6,
                     "MFU": util if util is not None else float("nan"), "fullgraph": step.fullgraph,
                     "train_GFLOP/token": counts.train_flops_per_token / 1e9, "P_tot_M": counts.P_tot / 1e6,
                     "P_act_M": counts.P_act / 1e6, "compile_error": step.error, "first_loss": first,
                     "eager_loss": ref})
    del step, model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("all", "engram", "tiny"), default="all")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--engram-modes", default="compile,reduce-overhead",
                    help="modes of the Engram+MoE vs MoE comparison, comma-separated")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of the compiled steps")
    args = ap.parse_args()
    dev = device()
    if smoke():
        args.vocab, args.seq, args.batch = 512, 32, 2
    rows, results = [], {}

    def report():
        print(table(rows, ["model", "mode", "tokens/step", "ms", "Mtok/s", "MFU", "fullgraph", "x MoE step",
                           "x MoE per FLOP", "x eager"]), flush=True)
        write_result("bench_train_step", results)  # after every part: a later failure keeps what was measured

    if args.part in ("all", "engram"):
        moe_cfg, engram_cfg = engram_configs(args.vocab, args.seq)
        if smoke():
            small = dict(expert_hidden=16, n_routed=4, top_k=2)
            moe_cfg = replace(moe_cfg, d_model=64, n_heads=2, ffn_hidden=96, moe=replace(moe_cfg.moe, **small))
            engram_cfg = replace(engram_cfg, d_model=64, n_heads=2, ffn_hidden=96, moe=replace(engram_cfg.moe, **small),
                                 engram=replace(engram_cfg.engram, rows=101, mem_dim=64))
        results["engram_vs_moe"] = {"moe_config": moe_cfg.to_dict(), "engram_config": engram_cfg.to_dict()}
        for mode in args.engram_modes.split(","):
            prof = args.profile and mode == "compile"
            moe = measure("MoE (64 experts)", moe_cfg, mode, args.batch, args.seq, dev, profile=prof)[0]
            eng = measure(f"Engram+MoE ({engram_cfg.moe.n_routed} experts), row-sparse tables", engram_cfg, mode,
                          args.batch, args.seq, dev, dense_tables_too=True, profile=prof)
            for r in (moe, *eng):
                r["x MoE step"] = r["ms"] / moe["ms"]
                r["x MoE per FLOP"] = r["x MoE step"] / (r["train_GFLOP/token"] / moe["train_GFLOP/token"])
                rows.append(r)
            results["engram_vs_moe"][mode] = {"moe": moe, "engram_row_sparse": eng[0], "engram_dense_tables": eng[1]}
            report()
    if args.part in ("all", "tiny"):
        cfg = tiny_dense(args.vocab, args.seq)
        tiny = []
        for mode, batch in (("eager", args.batch), ("compile", args.batch), ("reduce-overhead", args.batch),
                            ("reduce-overhead", max(1, args.batch // 4)), ("eager", max(1, args.batch // 4))):
            tiny += measure("tiny dense", cfg, mode, batch, args.seq, dev)
            for r in tiny:
                r["x eager"] = tiny[0]["ms"] / r["ms"] * (r["tokens/step"] / tiny[0]["tokens/step"])
            results["tiny_dense"] = tiny
        rows += tiny
        report()
    for r in rows:
        if r["compile_error"]:
            print(f"{r['model']} {r['mode']}: fullgraph failed: {r['compile_error'][:300]}")


if __name__ == "__main__":
    main()
