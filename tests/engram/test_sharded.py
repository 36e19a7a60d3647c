"""Sharded Engram tables: two gloo processes must reproduce a single process that sees the global batch.

Each spawned rank builds the same tiny model (same seed), computes the single-process reference on the whole global
batch itself, then shards the tables and runs its half of the batch through the all-to-all. Gradients of the shards
are gathered back into whole tables and compared with the reference; training steps, a checkpoint round trip and
gradient clipping are compared the same way.

Legend: B global batch, T time, W ranks.
"""

import copy
import functools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engram.config import EngramConfig, ModelConfig, MoEConfig
from engram.model import EngramLM
from engram.optim_tables import RowSparseAdam, clip_grad_norm_
from engram.sharded import (ShardGroup, _RowExchange, gather_rows, plan_exchange, shard_of, shard_rows, shard_tables_,
                            unshard, whole_optimizer_state_, whole_state_dict)

W = 2


def tiny_config(rows: int = 37) -> ModelConfig:
    return ModelConfig(vocab_size=257, d_model=32, n_layers=3, n_heads=2, ffn_hidden=64, max_seq_len=16,
                       moe=MoEConfig(n_routed=4, top_k=2, n_shared=1, expert_hidden=16, first_dense=1),
                       engram=EngramConfig(layers=[0, 2], orders=[2, 3], heads=2, mem_dim=16, rows=rows))


def batch(seed: int, B: int = 4, T: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq_BT = torch.randint(0, 60, (B, T + 1), generator=g)  # a small id range: many repeated N-grams and rows
    return seq_BT[:, :-1], seq_BT[:, 1:]


def spawn(fn, tmp_path, *args) -> None:
    """Run ``fn(rank, init_file, *args)`` on W gloo processes; a failed assertion in any rank fails the test."""
    mp.spawn(_entry, args=(fn, str(tmp_path / "pg"), args), nprocs=W, join=True)


def _entry(rank: int, fn, init_file: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=W)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def _average_backbone_grads(model: EngramLM) -> None:
    """What DDP does to every replicated parameter: average the gradients over the ranks."""
    for name, p in model.named_parameters():
        if p.grad is not None and "tables" not in name:
            dist.all_reduce(p.grad)
            p.grad /= W


def _whole_grad(tables, sg) -> torch.Tensor | None:
    grad = tables.weight.grad
    return gather_rows(grad.to_dense() if grad.is_sparse else grad, tables.total_rows, sg)


# -- in one process ---------------------------------------------------------------------------------------------


def test_cyclic_partition_round_trips():
    whole = torch.arange(23 * 3).view(23, 3)
    shards = [shard_of(whole, r, 4) for r in range(4)]
    assert [s.shape[0] for s in shards] == [shard_rows(23, r, 4) for r in range(4)] == [6, 6, 6, 5]
    assert torch.equal(shards[1][2], whole[9]) and torch.equal(unshard(shards), whole)


def test_single_rank_sharding_reads_and_learns_like_the_whole_table():
    torch.manual_seed(0)
    ref = EngramLM(tiny_config())
    model = copy.deepcopy(ref)
    shard_tables_(model)  # torch.distributed is not initialised: one rank holding every row
    x, y = batch(1)
    ref.loss(x, y).loss.backward()
    model.loss(x, y).loss.backward()
    for a, b in zip(ref.memory_tables(), model.memory_tables()):
        torch.testing.assert_close(b.weight.grad, a.weight.grad, rtol=0, atol=1e-7)
    with pytest.raises(RuntimeError, match="memory"):
        model.memory_tables()[0](torch.zeros(1, 2, 4, dtype=torch.long))  # a shard refuses a direct gather


# -- two processes ----------------------------------------------------------------------------------------------


def _parity(rank: int, row_sparse: bool, deterministic: bool) -> None:
    torch.use_deterministic_algorithms(deterministic)
    torch.manual_seed(0)
    ref = EngramLM(tiny_config())
    model = copy.deepcopy(ref)
    x_BT, y_BT = batch(7)
    ref.set_row_sparse_tables(row_sparse)
    ref_loss = ref.loss(x_BT, y_BT).loss
    ref_loss.backward()

    sg = ShardGroup.create()
    shard_tables_(model, sg)
    model.set_row_sparse_tables(row_sparse)
    half = x_BT.shape[0] // W
    mine = slice(rank * half, (rank + 1) * half)
    rows = model.memory(x_BT[mine])
    reference_rows = ref.memory(x_BT[mine])
    for got, want in zip(rows, reference_rows):  # the fetched rows are the whole table's rows, bit for bit
        assert torch.equal(got, want)
    loss = model.loss(x_BT[mine], y_BT[mine], memory=rows).loss
    loss.backward()
    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss)
    torch.testing.assert_close(global_loss / W, ref_loss.detach(), rtol=1e-6, atol=1e-6)
    for tables, ref_tables in zip(model.memory_tables(), ref.memory_tables()):
        assert tables.weight.grad.is_sparse == row_sparse
        whole = _whole_grad(tables, sg)
        if rank == 0:
            want = ref_tables.weight.grad
            want = want.to_dense() if want.is_sparse else want
            assert whole.shape == want.shape and want.abs().sum() > 0
            torch.testing.assert_close(whole, want, rtol=1e-5, atol=1e-6)
    _average_backbone_grads(model)
    norm = clip_grad_norm_([p for n, p in model.named_parameters() if "tables" not in n], 1e9,
                           sharded=[t.weight for t in model.memory_tables()], group=sg.group)
    ref_norm = clip_grad_norm_(ref.parameters(), 1e9)
    torch.testing.assert_close(norm, ref_norm, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("row_sparse,deterministic", [(False, False), (True, True)])
def test_two_ranks_match_one_process_on_the_global_batch(tmp_path, row_sparse, deterministic):
    spawn(_parity, tmp_path, row_sparse, deterministic)


def _steps(model: EngramLM, optimizers: list, seeds: range, rank: int | None) -> list[float]:
    """Train on the batches of ``seeds`` (rank: this rank's half; None: the whole batch); global losses."""
    losses = []
    for seed in seeds:
        x_BT, y_BT = batch(seed)
        if rank is not None:
            half = x_BT.shape[0] // W
            x_BT, y_BT = x_BT[rank * half:(rank + 1) * half], y_BT[rank * half:(rank + 1) * half]
        loss = model.loss(x_BT, y_BT).loss
        loss.backward()
        value = loss.detach().clone()
        if rank is not None:
            _average_backbone_grads(model)
            dist.all_reduce(value)
            value /= W
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(float(value))
    return losses


def _build_optimizers(model: EngramLM, row_sparse: bool) -> list:
    tables = [t.weight for t in model.memory_tables()]
    rest = [p for n, p in model.named_parameters() if "tables" not in n]
    model.set_row_sparse_tables(row_sparse)
    table_opt = (RowSparseAdam if row_sparse else torch.optim.Adam)(tables, lr=5e-2, betas=(0.9, 0.95))
    return [torch.optim.AdamW(rest, lr=1e-2, betas=(0.9, 0.95)), table_opt]


def _training_and_resume(rank: int, row_sparse: bool, checkpoint: str) -> None:
    torch.manual_seed(0)
    init = EngramLM(tiny_config())
    ref = copy.deepcopy(init)
    ref_losses = _steps(ref, _build_optimizers(ref, row_sparse), range(4), None)

    sg = ShardGroup.create()
    model = copy.deepcopy(init)
    shard_tables_(model, sg)
    optimizers = _build_optimizers(model, row_sparse)
    losses = _steps(model, optimizers, range(2), rank)
    # a checkpoint: whole tables and whole table-optimizer moments, written by rank 0 and read by every rank (a real
    # file, not an object handed over in memory: that would share rank 0's live optimizer tensors with the resumed
    # optimizers, and every step of one would move the other's moments too)
    whole_optimizer_state_(optimizers[1], model)
    saved = [whole_state_dict(model), [opt.state_dict() for opt in optimizers]]  # collectives: on every rank
    if rank == 0:
        torch.save(saved, checkpoint)
    dist.barrier()
    state, optimizer_states = torch.load(checkpoint, weights_only=True)
    table_state = optimizer_states[1]["state"]
    assert [table_state[i]["exp_avg"].shape[0] for i in range(2)] == [t.total_rows for t in model.memory_tables()]

    resumed = EngramLM(tiny_config())
    resumed.load_state_dict(state)
    shard_tables_(resumed, sg)
    new_opts = _build_optimizers(resumed, row_sparse)
    whole_optimizer_state_(new_opts[1], resumed)
    for opt, opt_state in zip(new_opts, optimizer_states):
        opt.load_state_dict(opt_state)
    losses += _steps(resumed, new_opts, range(2, 4), rank)
    continued = _steps(model, optimizers, range(2, 4), rank)  # the same run, never interrupted
    for a, b in zip(resumed.memory_tables(), model.memory_tables()):
        assert torch.equal(a.weight, b.weight)  # resuming from whole tables continues exactly
    assert losses[2:] == continued
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-5)
    whole = whole_state_dict(resumed)
    if rank == 0:
        for name, value in ref.state_dict().items():
            torch.testing.assert_close(whole[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("row_sparse", [False, True])
def test_sharded_training_follows_one_process_and_resumes_exactly(tmp_path, row_sparse):
    spawn(_training_and_resume, tmp_path, row_sparse, str(tmp_path / "checkpoint.pt"))


def _uneven(rank: int) -> None:
    """A table smaller than W (rank 1 holds none of it), a rank that asks nothing of a peer, duplicated reads."""
    sg = ShardGroup.create()
    table_rows = [5, 1]
    rows = [torch.tensor([0, 0, 2]) if rank == 0 else torch.tensor([4, 4]), torch.tensor([0])]
    ex = plan_exchange(rows, table_rows, sg)
    assert ex.ask_W == ([3, 0] if rank == 0 else [2, 0])  # every row read here is owned by rank 0
    assert ex.serve_W == ([3, 2] if rank == 0 else [0, 0])
    tables = [torch.arange(R * 2, dtype=torch.float32).view(R, 2) for R in table_rows]
    shards = [shard_of(t, rank, W) for t in tables]
    got = _RowExchange.apply(ex, sg, torch.float32, [False, False], *shards)
    assert torch.equal(got, torch.cat([tables[0][rows[0]], tables[1][rows[1]]]))


def test_exchange_handles_uneven_requests(tmp_path):
    spawn(_uneven, tmp_path)


def test_spawn_helper_reports_a_failing_rank(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 fails"):
        spawn(functools.partial(_fail_on, 1), tmp_path)


def _fail_on(bad: int, rank: int) -> None:
    assert rank != bad, f"rank {rank} fails"
