"""Engram tables sharded across data-parallel ranks: each rank stores 1/W of every memory layer's rows, and a step's
rows travel by all-to-all (PAPER.md §7: "an All-to-All gathers the active rows in the forward pass and dispatches
gradients in the backward pass"). Table capacity grows with the ranks; traffic grows with the rows a batch reads.

**Partition: cyclic by row.** Row r of a layer's [R, J] table lives on rank ``r % W`` at local row ``r // W``. A
layer's table concatenates its (order, head) sub-tables and every token reads one row of each, so a split into
contiguous ranges would hand whole sub-tables to one rank, and with them a share of the reads set by how many
sub-tables it holds, whatever their sizes. The cyclic split cuts every sub-table W ways: each rank serves ~1/W of
every sub-table's reads (slots are uniform modulo each prime) and holds floor or ceil of R/W rows, with nothing to
look up to find an owner. A hot row (a frequent N-gram) still has one owner; deduplication makes it travel once per
rank that reads it, not once per token.

**The exchange, once per step for all memory layers** (:func:`plan_exchange`, then :class:`_RowExchange`):

1. each rank hashes its own batch into row ids (P, duplicates included), encodes each (layer, row) as a key that
   sorts by owner, then layer, then local row, and keeps the U distinct keys;
2. all-to-all of the [W, L] request counts — read on the host, since they are the next exchanges' split sizes (one
   of the exchange's host syncs; ``torch.unique``'s output size is the other) — then of the local row ids: each rank
   learns the Q rows its peers want from it;
3. the owner gathers them (one ``index_select`` per layer) and all-to-all sends them back in the read dtype (bf16
   under autocast: half the bytes of an fp32 table); the requester expands its U rows to the P it read;
4. backward mirrors it: the P gradient rows are summed into U in float32, one all-to-all returns them to the
   owners, and each owner sums its peers' contributions into its shard's gradient — dense (for
   ``torch.optim.Adam``) or a row-sparse COO (for :class:`engram.optim_tables.RowSparseAdam`).

**Gradient scaling.** DDP averages the backbone's gradients over ranks, which makes each rank's loss (a mean over its
own tokens) into the mean over the global batch. A row's gradient summed over the ranks that read it is W times
that, so the owner multiplies by 1/W: the sharded table gradient equals a single process's on the global batch. The
shards are not DDP's to reduce: the trainer lists them in ``_ddp_params_and_buffers_to_ignore`` (which also keeps
DDP's start-up broadcast from overwriting them), and the exchange runs on its own process group, so its collectives
never interleave with DDP's gradient buckets. Each shard is stepped by the tables' optimizer on its owner alone; for
Adam and RowSparseAdam a row's update depends on that row only, so the sharded step is the single-process step,
sliced. Gradient clipping needs the shards' squared norms summed over ranks (``clip_grad_norm_(sharded=...)``).

**Checkpoints hold whole tables.** :func:`gather_rows` assembles a table, or any row-indexed optimizer state, on rank
0 in host memory, in chunks sent point to point, so no GPU holds more than its shard and one chunk;
:func:`shard_of` slices a whole table back to a rank's rows, for any W (a run may resume on another number of ranks).
:func:`whole_state_dict` does it for a model, :func:`whole_optimizer_state_` for the tables' optimizer.

Legend: B batch, T time, S sub-tables of a layer, J row width, L memory layers, W ranks, R rows of a whole table,
P rows this rank reads (all layers, duplicates included), U distinct (layer, row) pairs among them, Q rows this rank
serves to all peers (peer-major, then layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from engram.memory import HashedTables

CHUNK_ELEMENTS = 1 << 26  # values per point-to-point message when a whole table is assembled (256 MB of fp32)


def shard_rows(rows: int, rank: int, world: int) -> int:
    """How many rows of an R-row table ``rank`` holds: rows ``rank, rank + W, rank + 2W, ...``."""
    return max(0, (rows - rank + world - 1) // world)


def shard_of(whole_R: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of a whole row-indexed tensor (a table, an Adam moment), as a new contiguous tensor."""
    return whole_R[rank::world].clone()


def unshard(shards: list[torch.Tensor]) -> torch.Tensor:
    """The whole tensor from every rank's shard, in rank order (the inverse of :func:`shard_of`)."""
    world = len(shards)
    whole = shards[0].new_empty(sum(s.shape[0] for s in shards), *shards[0].shape[1:])
    for rank, s in enumerate(shards):
        whole[rank::world] = s
    return whole


@dataclass
class ShardGroup:
    """The ranks that share the tables: their process group (spanning every rank, in order), this rank, their count.

    ``world == 1`` needs no process group: every exchange is then a local copy."""

    group: object | None
    rank: int
    world: int

    @classmethod
    def create(cls) -> "ShardGroup":
        """A new process group over every rank (so the exchange never queues behind DDP's collectives), or the
        trivial single-process group when torch.distributed is not initialised. Every rank must call it."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls(None, 0, 1)
        group = dist.new_group()
        return cls(group, dist.get_rank(group), dist.get_world_size(group))

    def transport(self, device: torch.device) -> torch.device:
        """Where point-to-point messages must live: a CUDA device for NCCL, anywhere for gloo."""
        if self.world > 1 and dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return device


def _all_to_all(out: torch.Tensor, inp: torch.Tensor, out_splits: list[int], in_splits: list[int],
                sg: ShardGroup) -> torch.Tensor:
    if sg.world == 1:
        return out.copy_(inp)
    dist.all_to_all_single(out, inp.contiguous(), out_splits, in_splits, group=sg.group)
    return out


@dataclass
class Exchange:
    """Who asks whom for which rows in one step: index work only; the rows travel in :class:`_RowExchange`."""

    inverse_P: torch.Tensor  # position among the U distinct requests of each row read
    ask_W: list[int]  # distinct rows this rank asks of each peer (and gets back from it)
    serve_W: list[int]  # rows each peer asks of this rank
    serve_L: list[int]  # rows asked of this rank per layer, all peers together
    local_Q: torch.Tensor  # local row ids asked of this rank, peer-major then layer (the order they go back in)
    order_Q: torch.Tensor  # stable permutation sorting Q by layer


def plan_exchange(rows: list[torch.Tensor], table_rows: list[int], sg: ShardGroup) -> Exchange:
    """The exchange for ``rows`` (per memory layer, whole-table row ids of any shape) of tables of ``table_rows``."""
    W, L = sg.world, len(rows)
    span = max(1, max(shard_rows(R, 0, W) for R in table_rows))  # every local row id is < span
    device = rows[0].device
    # key = ((owner * L + layer) * span + local row): distinct keys come out of unique sorted by owner, then layer
    keys_P = torch.cat([((r.reshape(-1) % W) * L + layer) * span + r.reshape(-1) // W for layer, r in enumerate(rows)])
    uniq_U, inverse_P = torch.unique(keys_P, return_inverse=True)
    ends_WL = torch.searchsorted(uniq_U, torch.arange(1, W * L + 1, device=device) * span)
    ask_WL = torch.diff(ends_WL, prepend=ends_WL.new_zeros(1))
    serve_WL = torch.empty_like(ask_WL)
    _all_to_all(serve_WL, ask_WL, [L] * W, [L] * W, sg)
    ask, serve = torch.stack([ask_WL, serve_WL]).view(2, W, L).tolist()  # split sizes: the host must know them
    ask_W, serve_W = [sum(a) for a in ask], [sum(s) for s in serve]
    Q = sum(serve_W)
    local_Q = torch.empty(Q, dtype=torch.long, device=device)
    _all_to_all(local_Q, uniq_U % span, serve_W, ask_W, sg)
    layer_Q = torch.repeat_interleave(torch.arange(L, device=device).repeat(W), serve_WL, output_size=Q)
    order_Q = torch.argsort(layer_Q, stable=True)
    serve_L = [sum(serve[p][layer] for p in range(W)) for layer in range(L)]
    return Exchange(inverse_P, ask_W, serve_W, serve_L, local_Q, order_Q)


class _RowExchange(torch.autograd.Function):
    """Forward: the P rows this rank read [P, J], fetched from their owners. Backward: their gradients summed per
    distinct row, returned to the owners, summed over peers and scaled by 1/W into each shard's gradient."""

    @staticmethod
    def forward(ctx, ex: Exchange, sg: ShardGroup, out_dtype: torch.dtype, sparse: list[bool], *shards):
        J, device = shards[0].shape[1], shards[0].device
        local_by_layer = ex.local_Q[ex.order_Q].split(ex.serve_L)
        served = torch.cat([s.index_select(0, idx).to(out_dtype) for s, idx in zip(shards, local_by_layer)])
        served_QJ = torch.empty(len(ex.local_Q), J, dtype=out_dtype, device=device)
        served_QJ.index_copy_(0, ex.order_Q, served)  # back to peer-major order (a permutation: no collisions)
        rows_UJ = served_QJ.new_empty(sum(ex.ask_W), J)
        _all_to_all(rows_UJ, served_QJ, ex.ask_W, ex.serve_W, sg)
        ctx.ex, ctx.sg, ctx.sparse = ex, sg, sparse
        ctx.shards = [(s.shape, s.dtype) for s in shards]
        return rows_UJ[ex.inverse_P]

    @staticmethod
    def backward(ctx, grad_PJ):
        ex, sg = ctx.ex, ctx.sg
        J, device = grad_PJ.shape[1], grad_PJ.device
        deterministic = torch.are_deterministic_algorithms_enabled()
        # duplicates summed in float32 (as the single-process lookup's backward does), sent in float32
        grad_UJ = torch.zeros(sum(ex.ask_W), J, dtype=torch.float32, device=device)
        _accumulate(grad_UJ, ex.inverse_P, grad_PJ, deterministic)
        got_QJ = grad_UJ.new_empty(len(ex.local_Q), J)
        _all_to_all(got_QJ, grad_UJ, ex.serve_W, ex.ask_W, sg)
        got_by_layer = got_QJ[ex.order_Q].split(ex.serve_L)
        local_by_layer = ex.local_Q[ex.order_Q].split(ex.serve_L)
        grads = []
        needs = ctx.needs_input_grad[4:]
        for (shape, dtype), sparse, need, idx, g in zip(ctx.shards, ctx.sparse, needs, local_by_layer, got_by_layer):
            if not need:
                grads.append(None)
            elif sparse:  # uncoalesced: a row asked by several peers appears once per peer; RowSparseAdam sums them
                grads.append(torch.sparse_coo_tensor(idx.view(1, -1), (g / sg.world).to(dtype), size=shape,
                                                     check_invariants=False))
            else:
                dense = torch.zeros(shape, dtype=torch.float32, device=device)
                _accumulate(dense, idx, g, deterministic)
                grads.append(dense.div_(sg.world).to(dtype))
        return (None, None, None, None, *grads)


def _accumulate(dst_RJ: torch.Tensor, rows_P: torch.Tensor, vals_PJ: torch.Tensor, deterministic: bool) -> None:
    """``dst[rows[p]] += vals[p]``: atomics, or a fixed summation order under deterministic algorithms."""
    if deterministic:
        from engram.kernels.sparse_adam import segment_sum_into

        segment_sum_into(dst_RJ, rows_P, vals_PJ)
    else:
        dst_RJ.index_add_(0, rows_P, vals_PJ.to(dst_RJ.dtype))


class TableShards:
    """The all-to-all reader of an :class:`~engram.model.EngramLM` whose tables hold one rank's rows each."""

    def __init__(self, sg: ShardGroup):
        self.sg = sg

    def read(self, rows: list[torch.Tensor], tables: list[HashedTables]) -> list[torch.Tensor]:
        """Each layer's rows [B, T, S*J] for its whole-table row ids ``rows`` [B, T, S], from their owners."""
        ex = plan_exchange(rows, [t.total_rows for t in tables], self.sg)
        out_dtype = tables[0].read_dtype()
        rows_PJ = _RowExchange.apply(ex, self.sg, out_dtype, [t.row_sparse for t in tables],
                                     *[t.weight for t in tables])
        J = rows_PJ.shape[1]
        parts = rows_PJ.split([r.numel() for r in rows])
        return [part.view(*r.shape[:-1], r.shape[-1] * J) for r, part in zip(rows, parts)]


def shard_tables_(model: nn.Module, sg: ShardGroup | None = None) -> TableShards:
    """Keep only this rank's rows of every memory table of ``model`` (an :class:`~engram.model.EngramLM`), in place,
    and route its reads through the all-to-all. The tables must be whole and equal on every rank (the same seed);
    do this before building optimizers (they must hold the shard parameters) and before DDP wraps the model."""
    sg = sg or ShardGroup.create()
    if model.table_shards is not None:
        raise RuntimeError("the model's tables are sharded already")
    for tables in model.memory_tables():
        tables.weight = nn.Parameter(shard_of(tables.weight.detach(), sg.rank, sg.world),
                                     requires_grad=tables.weight.requires_grad)
        tables.shard = (sg.rank, sg.world)
    model.table_shards = TableShards(sg)
    return model.table_shards


def sharded_tables(module: nn.Module) -> list[tuple[str, HashedTables]]:
    """(state-dict name of the weight, tables) of every sharded table under ``module``, in module order."""
    return [(f"{name}.weight" if name else "weight", m) for name, m in module.named_modules()
            if isinstance(m, HashedTables) and m.shard is not None]


def gather_rows(shard_R: torch.Tensor, total_rows: int, sg: ShardGroup) -> torch.Tensor | None:
    """The whole row-indexed tensor in rank 0's host memory from every rank's shard; ``None`` on the other ranks.

    Collective: every rank calls it for the same tensors in the same order. Rows travel in chunks of
    ``CHUNK_ELEMENTS`` values from each owner to rank 0, one owner after another."""
    shard_R = shard_R.detach()
    if sg.world == 1:
        return shard_R.cpu().clone()
    tail = tuple(shard_R.shape[1:])
    chunk = max(1, CHUNK_ELEMENTS // max(1, math.prod(tail)))
    via = sg.transport(shard_R.device)
    if sg.rank != 0:
        for start in range(0, shard_R.shape[0], chunk):
            dist.send(shard_R[start:start + chunk].to(via).contiguous(), group=sg.group, group_dst=0)
        return None
    whole = torch.empty(total_rows, *tail, dtype=shard_R.dtype)
    whole[0::sg.world] = shard_R.cpu()
    for src in range(1, sg.world):
        rows_of_src = whole[src::sg.world]  # a view: received chunks land in place
        for start in range(0, rows_of_src.shape[0], chunk):
            buf = torch.empty(min(chunk, rows_of_src.shape[0] - start), *tail, dtype=shard_R.dtype, device=via)
            dist.recv(buf, group=sg.group, group_src=src)
            rows_of_src[start:start + buf.shape[0]] = buf.cpu()
    return whole


def whole_state_dict(module: nn.Module) -> dict | None:
    """``module.state_dict()`` in host memory with every sharded table whole, on rank 0; ``None`` on the other ranks.
    Collective when tables are sharded (every rank must call it); the plain state dict otherwise."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    shards = sharded_tables(module)
    if not shards:
        return state
    sg = _group_of(module)
    for name, tables in shards:
        state[name] = gather_rows(tables.weight, tables.total_rows, sg)
    return state if sg.rank == 0 else None


def whole_optimizer_state_(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Make ``optimizer`` save and load its state as a single process would hold it, for the sharded tables of
    ``model`` among its parameters: per-row state (anything shaped like the parameter: Adam's moments) is whole.

    ``optimizer.state_dict()`` gathers it on rank 0 (collective when tables are sharded, as :func:`whole_state_dict`;
    the other ranks get ``None`` in its place) and ``optimizer.load_state_dict()`` takes whole state and keeps this
    rank's rows, so a checkpoint reads the same whatever the number of ranks that wrote it or resume from it."""
    by_param = {id(t.weight): t for _, t in sharded_tables(model)}
    if not by_param:
        return
    sg = _group_of(model)

    def sharded_state(opt: torch.optim.Optimizer, state_dict: dict):
        """(per-parameter state dict, tables) of every sharded table this optimizer steps, by state-dict index."""
        params = [p for group in opt.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            if id(p) in by_param and i in state_dict["state"]:
                yield i, state_dict["state"][i], by_param[id(p)]

    def gather(opt: torch.optim.Optimizer, state_dict: dict) -> dict:
        for i, state, tables in list(sharded_state(opt, state_dict)):
            # a new dict: the state dict shares the live per-parameter dicts, which must keep their shards
            state_dict["state"][i] = {k: gather_rows(v, tables.total_rows, sg) if _is_row_state(v, tables.weight.shape)
                                      else v for k, v in state.items()}
        return state_dict

    def scatter(opt: torch.optim.Optimizer, state_dict: dict) -> dict:
        state_dict = {**state_dict, "state": dict(state_dict["state"])}  # the caller's dict stays whole
        for i, state, tables in list(sharded_state(opt, state_dict)):
            whole = (tables.total_rows, *tables.weight.shape[1:])
            state_dict["state"][i] = {k: shard_of(v, sg.rank, sg.world) if _is_row_state(v, whole) else v
                                      for k, v in state.items()}
        return state_dict

    optimizer.register_state_dict_post_hook(gather)
    optimizer.register_load_state_dict_pre_hook(scatter)


def _is_row_state(value, shape: tuple) -> bool:
    return isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(shape)


def _group_of(module: nn.Module) -> ShardGroup:
    for m in module.modules():
        if getattr(m, "table_shards", None) is not None:
            return m.table_shards.sg
    raise RuntimeError("sharded tables without the TableShards of their model")
