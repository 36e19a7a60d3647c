"""How much of the GPU several seeds of one small shape could use if trained as one model: a design measurement.

A trial of the allocation ladder is too small to fill an H100/H200 (results/README.md: 1-3% of the bf16 peak per
trial, eager or with CUDA graphs). Trained as one model, S seeds of one grid point would keep the kernel count of a
single model while every kernel grows S times: each weight gets a leading seed dimension and each matmul becomes a
batched matmul over the seeds. Before a trainer is built that way, this measures the ceiling (on an H200: 1.32x at
16 seeds, results/README.md 2026-12-03, so none was built) on a stand-in of the ladder's 2e14 model (rho 0.8, as the
spec resolves it): its width, depth, heads, vocabulary, batch and sequence length, with the MoE's active
feed-forward (the shared and the top-k routed experts) as one SwiGLU of their summed hidden width, and no Engram
lookup and no routing (their kernels would come on top). Each step is forward, backward and fused AdamW, the loss
compiled into CUDA graphs, at S = 1, 2, 4, 8 and 16 seeds; the reference is S = 1. Prints tokens per second summed
over the seeds, MFU against the device's dense bf16 peak and the ratio to one seed. A check first: seed s of a stack
computes what a one-seed model holding seed s's weights computes.

``--budgets`` measures the stand-ins of other rungs of the ladder; ``--widths`` widens the last named rung's
stand-in (its depth and head size kept, its feed-forward in proportion): where, in width, one model of this family
would use a quarter of the GPU.

    PYTHONPATH=. python3 benchmarks/batched_seeds.py
    PYTHONPATH=. python3 benchmarks/batched_seeds.py --budgets 7e14 3e15 --widths 512 768 --seeds 1 4
    BENCH_SMOKE=1 PYTHONPATH=. python3 benchmarks/batched_seeds.py   # the script's path on a CPU, toy sizes
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import check_close, compile_, cuda_time_ms, device, ladder_trial, smoke, table, write_result
from engram.device import device_name, mfu

SMOKE = {"vocab": 256, "d_model": 32, "n_layers": 2, "n_heads": 2, "ffn": 64, "batch": 2, "seq": 16}


def ladder_shape(budget: str = "2e14", rho: float = 0.8) -> dict:
    """The stand-in's sizes from a ladder trial; the feed-forward is the MoE's active one (shared + top-k experts)."""
    trial = ladder_trial(budget, rho)
    m = trial.model
    return {"vocab": m.vocab_size, "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads,
            "ffn": (m.moe.n_shared + m.moe.top_k) * m.moe.expert_hidden, "batch": trial.train.batch_size,
            "seq": trial.data.seq_len}


def rms(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, x.shape[-1:], eps=1e-6) * gain


class SeedStack(nn.Module):
    """``seeds`` pre-norm transformers of one shape, every weight stacked along a leading seed dimension."""

    def __init__(self, seeds: int, vocab: int, d_model: int, n_layers: int, n_heads: int, ffn: int, **_):
        super().__init__()
        S, D, L = seeds, d_model, n_layers
        self.n_heads = n_heads

        def weight(*shape):
            return nn.Parameter(torch.randn(*shape) * 0.02)

        self.embed, self.head = weight(S, vocab, D), weight(S, D, vocab)
        self.wqkv, self.wo = weight(L, S, D, 3 * D), weight(L, S, D, D)
        self.w13, self.w2 = weight(L, S, D, 2 * ffn), weight(L, S, ffn, D)
        self.gains = nn.Parameter(torch.ones(2 * L + 1, S, 1, D))

    def loss(self, ids_SBT: torch.Tensor, targets_SBT: torch.Tensor) -> torch.Tensor:
        """The sum over seeds of each seed's mean next-token loss: each seed's gradient is its own model's."""
        S, B, T = ids_SBT.shape
        D, H = self.embed.shape[-1], self.n_heads
        x = self.embed[torch.arange(S, device=ids_SBT.device)[:, None, None], ids_SBT].view(S, B * T, D)
        for layer in range(self.wqkv.shape[0]):
            qkv = torch.bmm(rms(x, self.gains[2 * layer]), self.wqkv[layer])  # [S, BT, 3D]
            q, k, v = qkv.view(S * B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)  # each [SB, H, T, D/H]
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(S, B * T, D)
            x = x + torch.bmm(attn, self.wo[layer])
            gate, up = torch.bmm(rms(x, self.gains[2 * layer + 1]), self.w13[layer]).chunk(2, dim=-1)
            x = x + torch.bmm(F.silu(gate) * up, self.w2[layer])
        logits = torch.bmm(rms(x, self.gains[-1]), self.head)  # [S, BT, V]
        per_seed = F.cross_entropy(logits.float().transpose(1, 2), targets_SBT.reshape(S, B * T), reduction="none")
        return per_seed.mean(1).sum()

    def seed(self, s: int, **shape) -> SeedStack:
        """A one-seed model holding seed ``s``'s weights (the layer-stacked weights carry the seed second)."""
        one = SeedStack(1, **shape).to(self.embed.device)
        one.load_state_dict({name: p[:, s:s + 1] if p.dim() == 4 else p[s:s + 1]
                             for name, p in self.state_dict().items()})
        return one


def train_flops_per_token(vocab: int, d_model: int, n_layers: int, ffn: int, seq: int, **_) -> float:
    """Forward FLOPs per token x 3: the matmuls (QKV, output, SwiGLU, head) and attention over the whole
    sequence (QK^T and AV; causal masking is not discounted, as :mod:`engram.budget` counts it)."""
    D = d_model
    per_layer = 2 * (3 * D * D + D * D + 3 * D * ffn) + 2 * 2 * seq * D
    return 3.0 * (n_layers * per_layer + 2 * D * vocab)


def check(shape: dict, dev: torch.device) -> float:
    torch.manual_seed(0)
    stack = SeedStack(3, **shape).to(dev)
    ids = torch.randint(0, shape["vocab"], (3, shape["batch"], shape["seq"] + 1), device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        together = stack.loss(ids[..., :-1], ids[..., 1:])
        alone = stack.seed(1, **shape).loss(ids[1:2, :, :-1], ids[1:2, :, 1:])
        rest = (stack.seed(0, **shape).loss(ids[:1, :, :-1], ids[:1, :, 1:])
                + stack.seed(2, **shape).loss(ids[2:, :, :-1], ids[2:, :, 1:]))
    return check_close("seed 1 of a 3-seed stack against its own model", together - rest, alone, 1e-2)


def measure(seeds: int, shape: dict, dev: torch.device) -> dict:
    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = SeedStack(seeds, **shape).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=dev.type == "cuda")
    loss_fn = compile_(model.loss, cuda_graphs=True, dynamic=False)  # each seed count its own static graphs
    ids = torch.randint(0, shape["vocab"], (seeds, shape["batch"], shape["seq"] + 1), device=dev)
    x, y = ids[..., :-1].contiguous(), ids[..., 1:].contiguous()

    def step():
        if not smoke():
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = cuda_time_ms(step, warmup=5, iters=20)
    tokens_s = seeds * shape["batch"] * shape["seq"] / (ms * 1e-3)
    return {"seeds": seeds, "step ms": ms, "tokens/s": tokens_s,
            "mfu": mfu(tokens_s, train_flops_per_token(**shape), device_name()),
            "memory GB": torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None}


def widened(shape: dict, d_model: int) -> dict:
    """``shape`` at width ``d_model``: heads of the same size, the feed-forward in the same proportion."""
    head = shape["d_model"] // shape["n_heads"]
    return {**shape, "d_model": d_model, "n_heads": max(1, d_model // head),
            "ffn": round(shape["ffn"] * d_model / shape["d_model"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--budgets", nargs="+", default=["2e14"], help="ladder rungs whose stand-ins to measure")
    ap.add_argument("--widths", type=int, nargs="*", default=[], help="the last rung's stand-in widened to these")
    args = ap.parse_args()
    seeds = sorted(set(args.seeds) | {1})  # one seed is the reference
    dev = device()
    if smoke():
        shapes = {"smoke": SMOKE} | {f"smoke d{w}": widened(SMOKE, w) for w in args.widths}
    else:
        shapes = {b: ladder_shape(b) for b in args.budgets}
        last = shapes[args.budgets[-1]]
        shapes |= {f"{args.budgets[-1]} widened to d{w}": widened(last, w) for w in args.widths}
    error = max(check(shape, dev) for shape in shapes.values())
    print(f"check: seed 1 of a stack against its own model, largest relative error {error:.2g}")
    rows = []
    for name, shape in shapes.items():
        measured = [{"shape": name, "d_model": shape["d_model"], **measure(s, shape, dev)} for s in seeds]
        for row in measured:
            row["vs 1 seed"] = row["tokens/s"] / measured[0]["tokens/s"]
        rows += measured
    print(table(rows, ["shape", "d_model", "seeds", "step ms", "tokens/s", "mfu", "vs 1 seed", "memory GB"]))
    write_result("batched_seeds", {"shapes": shapes, "check_relative_error": error, "rows": rows})


if __name__ == "__main__":
    main()
