"""Engram tables sharded over GPUs (:mod:`engram.sharded`): training throughput of a table-heavy model on 1 vs 2 GPUs,
and the largest table that trains on 1 vs 2 GPUs.

* Throughput: d=512, 4 layers, vocab 32k, seq 1024, 32 sequences a step (the global batch, split over the GPUs);
  small MoE FFNs; Engram at layers 1 and 3 with 16 sub-tables of ~2M rows x 32 each (2.1 B table parameters,
  8.6 GB in fp32). One GPU is the reference, measured in the same run: whole tables read by the fused lookup, as a
  single-GPU trial trains. Two GPUs: DDP for the backbone, the tables sharded by row with their rows fetched by
  all-to-all, as ``engram-lab train`` with ``train.devices=2`` trains. Tables step with
  :class:`engram.optim_tables.RowSparseAdam`; bf16 autocast; the whole step is timed (forward, backward, clipping,
  router biases, both optimizers). The first step's loss on two GPUs must match the one-GPU loss (to bf16 rounding).
* Capacity: one table of R rows x 32, stepped by RowSparseAdam (weights and both moments in fp32: 384 bytes a row),
  on each GPU its rows and their moments, a step reading 32k tokens x 16 sub-tables of rows through the all-to-all.
  R doubles until a rank cannot hold its part with a 2 GiB margin (the step's transient buffers), then bisects to
  1/64. The ranks agree on every probe before stepping, so an out-of-memory rank never leaves another waiting.

Processes are started by ``torch.multiprocessing.spawn``, one per GPU, on NCCL.

    PYTHONPATH=. python3 benchmarks/bench_sharded.py                  # needs 2 GPUs
    BENCH_SMOKE=1 PYTHONPATH=. python3 benchmarks/bench_sharded.py    # the script's logic on the CPU: gloo processes,
                                                                      # toy sizes, a 64 MiB stand-in for GPU memory
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from benchmarks.common import check_close, cuda_time_ms, smoke, table, write_result
from engram.config import EngramConfig, ModelConfig, MoEConfig, build
from engram.memory import HashedTables
from engram.model import EngramLM
from engram.optim_tables import RowSparseAdam, clip_grad_norm_
from engram.sharded import ShardGroup, TableShards, shard_rows, shard_tables_, sharded_tables

WORLDS = (1, 2)
SEQ, BATCH = (64, 4) if smoke() else (1024, 32)  # tokens per sequence; sequences per step over all GPUs
MARGIN = (1 << 20) if smoke() else (2 << 30)  # free memory a capacity probe keeps for the step's transient buffers
SMOKE_MEMORY = 64 << 20  # a smoke run's stand-in for one GPU's memory (the CPU never runs out at toy sizes)


def model_config() -> ModelConfig:
    if smoke():
        return ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=2, ffn_hidden=128, max_seq_len=SEQ,
                           moe=MoEConfig(n_routed=4, top_k=2, n_shared=1, expert_hidden=32, first_dense=1),
                           engram=EngramConfig(layers=[1], orders=[2, 3], heads=2, mem_dim=32, rows=1009))
    return ModelConfig(vocab_size=32768, d_model=512, n_layers=4, n_heads=8, ffn_hidden=1536, max_seq_len=SEQ,
                       moe=MoEConfig(n_routed=8, top_k=2, n_shared=1, expert_hidden=512, first_dense=1),
                       engram=EngramConfig(layers=[1, 3], orders=[2, 3], heads=8, mem_dim=512, rows=1 << 21))


def device(rank: int) -> torch.device:
    return torch.device("cpu") if smoke() else torch.device("cuda", rank)


def spawn(fn, world: int, *args):
    """``fn(rank, world, *args)`` on ``world`` processes (NCCL, or gloo in a smoke run); rank 0's return value."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_entry, args=(world, fn, tmp, args), nprocs=world, join=True)
        return json.loads((Path(tmp) / "result.json").read_text())


def _entry(rank: int, world: int, fn, tmp: str, args: tuple) -> None:
    if not smoke():
        torch.cuda.set_device(rank)
    dist.init_process_group("gloo" if smoke() else "nccl", init_method=f"file://{tmp}/pg", rank=rank,
                            world_size=world)
    try:
        result = fn(rank, world, *args)
        if rank == 0:
            (Path(tmp) / "result.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


# -- throughput --------------------------------------------------------------------------------------------------


def throughput(rank: int, world: int, config: dict, iters: int) -> dict:
    """Tokens/s of whole training steps on ``world`` GPUs, the first step's loss and the peak memory of a GPU."""
    cfg = build(ModelConfig, config)
    dev = device(rank)
    torch.manual_seed(0)
    model = EngramLM(cfg)  # whole tables in host memory, the same on every rank
    if world > 1:
        shard_tables_(model)  # before the move: a GPU only ever holds its own rows
        model._ddp_params_and_buffers_to_ignore = [name for name, _ in sharded_tables(model)]
    model.set_row_sparse_tables(True)
    model.to(dev)
    tables = [t.weight for t in model.memory_tables()]
    backbone = [p for p in model.parameters() if all(p is not t for t in tables)]
    net = DistributedDataParallel(model, device_ids=None if smoke() else [rank]) if world > 1 else model
    optimizers = [torch.optim.AdamW(backbone, lr=3e-4, weight_decay=0.1), RowSparseAdam(tables, lr=1.5e-3)]
    # clipping takes the global norm over everything, the table shards' squares summed over the ranks
    replicated, shards = (backbone, tables) if world > 1 else (backbone + tables, [])
    group = model.table_shards.sg.group if world > 1 else None

    g = torch.Generator().manual_seed(1)
    seq_BT = torch.randint(0, cfg.vocab_size, (BATCH, SEQ + 1), generator=g)
    mine = slice(rank * BATCH // world, (rank + 1) * BATCH // world)  # this rank's share of the global batch
    x_BT, y_BT = seq_BT[mine, :-1].to(dev), seq_BT[mine, 1:].to(dev)

    def step() -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not smoke()):
            logits = net(x_BT)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y_BT.flatten())
        loss.backward()
        clip_grad_norm_(replicated, 1.0, sharded=shards, group=group)
        model.update_router_biases()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.detach()

    first = step()
    dist.all_reduce(first)  # the global batch's loss: the mean of the ranks' (equal) shares
    step_ms = cuda_time_ms(step, warmup=3, iters=iters)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    table_params = sum(t.total_rows for t in model.memory_tables()) * cfg.engram.head_dim
    return {"gpus": world, "first_loss": float(first) / world, "step_ms": step_ms,
            "tokens_per_second": BATCH * SEQ / (step_ms * 1e-3), "table_params": table_params,
            "peak_memory_gb": peak / 1e9}


# -- capacity ----------------------------------------------------------------------------------------------------


def capacity(rank: int, world: int, row_dim: int, reads_per_token: int) -> dict:
    """The largest table of ``row_dim``-wide rows that ``world`` GPUs hold and step, found by doubling and bisection;
    a step reads ``reads_per_token`` rows for each of the rank's tokens."""
    reads = BATCH * SEQ // world * reads_per_token
    sg = ShardGroup.create()
    reader = TableShards(sg)
    dev = device(rank)

    def fits(rows: int) -> bool:
        state = _allocate(rows, row_dim, sg, dev)
        ok = torch.tensor([0 if state is None else 1], device=dev)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank probes the same size and agrees before stepping
        if ok.item():
            tables, opt = state
            ids = torch.randint(0, rows, (1, reads, 1), device=dev)
            reader.read([ids], [tables])[0].float().square().mean().backward()
            opt.step()
            del tables, opt, ids  # all references, so that the cache below can return their memory
        del state
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return bool(ok.item())

    lo, hi = 0, 1 << (10 if smoke() else 20)
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > max(1, lo // 64):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return {"gpus": world, "rows": lo, "table_params": lo * row_dim, "table_gb_fp32": lo * row_dim * 4 / 1e9}


def _allocate(rows: int, row_dim: int, sg: ShardGroup, dev: torch.device):
    """This rank's rows of a ``rows``-row table and their two Adam moments, or None when they (and the margin) do
    not fit. The whole table never exists: its module is built on the meta device and given its shard."""
    held = shard_rows(rows, sg.rank, sg.world)
    try:
        if smoke() and 3 * held * row_dim * 4 + MARGIN > SMOKE_MEMORY:
            raise MemoryError("over the smoke run's stand-in for a GPU's memory")
        with torch.device("meta"):
            tables = HashedTables([rows], row_dim)
        tables.weight = nn.Parameter(torch.zeros(held, row_dim, device=dev))
        tables.shard = (sg.rank, sg.world)
        tables.row_sparse = True
        opt = RowSparseAdam([tables.weight], lr=1e-3)
        opt.state[tables.weight] = {"step": 0, "exp_avg": torch.zeros_like(tables.weight),
                                    "exp_avg_sq": torch.zeros_like(tables.weight)}
        margin = torch.empty(MARGIN, dtype=torch.uint8, device=dev)  # freed now: the allocator keeps it for the step
        del margin
        return tables, opt
    except (torch.cuda.OutOfMemoryError, MemoryError):
        return None


def main() -> None:
    if not smoke() and torch.cuda.device_count() < max(WORLDS):
        raise SystemExit(f"this benchmark needs {max(WORLDS)} GPUs (BENCH_SMOKE=1 runs a CPU check of the script)")
    cfg = model_config()
    runs = [spawn(throughput, world, dataclasses.asdict(cfg), 2 if smoke() else 20) for world in WORLDS]
    check_close("first-step loss on 2 GPUs vs 1", torch.tensor(runs[1]["first_loss"]),
                torch.tensor(runs[0]["first_loss"]), rel=1e-5 if smoke() else 2e-2)
    caps = [spawn(capacity, world, cfg.engram.head_dim, len(cfg.engram.orders) * cfg.engram.heads) for world in WORLDS]
    speedup = runs[1]["tokens_per_second"] / runs[0]["tokens_per_second"]
    growth = caps[1]["rows"] / caps[0]["rows"]
    print(table(runs, ["gpus", "tokens_per_second", "step_ms", "first_loss", "peak_memory_gb", "table_params"]))
    print(f"throughput, 2 GPUs / 1 GPU: {speedup:.2f}x (scaling efficiency {speedup / 2:.0%})")
    print(table(caps, ["gpus", "rows", "table_params", "table_gb_fp32"]))
    print(f"largest table, 2 GPUs / 1 GPU: {growth:.2f}x")
    write_result("sharded", {"config": dataclasses.asdict(cfg), "global_batch": [BATCH, SEQ], "throughput": runs,
                             "throughput_ratio": speedup, "capacity": caps, "capacity_ratio": growth})


if __name__ == "__main__":
    main()
