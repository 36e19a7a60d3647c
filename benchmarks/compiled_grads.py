"""Where do compiled gradients leave the eager ones? A bisection of ``torch.compile`` for the ladder's model.

``tests/engram/test_compiled_training.py`` fails on an H200 (torch 2.11): the compiled loss's gradients agree with
eager ones at the first AdamW step and are ~1e4 off (relative norm) from the second on, in every parameter, with the
losses still within 1%; with Inductor's mix-order reduction off as well (results/README.md, 2026-12-03). This runs
that test's steps (its own ``step_by_step``, so that the diagnosis is of what the test sees) for every combination
of:

  --backends  eager          Dynamo's graph capture alone, run by eager torch
              aot_eager      plus AOTAutograd's joint forward-backward graph and its partition
              aot_eager_decomp_partition   plus Inductor's decompositions
              inductor       plus Inductor's kernels, as ``engram.compiled`` sets it up (the trainer's compile)
              inductor-defaults            Inductor as torch ships it (mix-order reduction on where it exists)
              inductor-no-reuse            ``engram.compiled`` with Inductor's buffer reuse and in-place buffers off
              inductor-no-donation         ``engram.compiled`` with AOTAutograd's donated buffers off (the
                                           backward reusing saved activations' memory in place)
              inductor-dynamic             ``engram.compiled`` with symbolic shapes, as the compile test's GPU
                                           cases were compiled before ``engram.compiled`` fixed the shapes
              cudagraphs     ``engram.compiled`` with CUDA graphs (``train.compile: cudagraphs``)
  --memory    plain          the allocator as it is
              poisoned       the allocator's free memory filled with NaN before every step
  --scopes    loss           the model's whole loss compiled, as the trainer compiles it
              attn, moe, engram, mlp, norm   only the modules of that kind compiled, the rest eager

The first backend that departs from eager names the layer at fault (capture, autograd, decompositions, kernels);
the first scope that departs names the module. Poisoned memory makes a kernel that reads memory nothing wrote
show at the step it does so (as NaN) instead of through the stale values of an earlier step. ``--frozen`` runs
one batch at fixed parameters and router biases at every step: a departure then comes from the compiled function's
own state (its graphs, its buffers), not from the model's new values. Prints, per combination, the largest relative
gradient error at each step, the graphs Dynamo compiled during each step, and at the first step over 0.1 the
parameters furthest off and the spread of the gradient norm ratios over all parameters (one ratio everywhere: the
gradient entering the backward is scaled; spread: garbage inside it).

    PYTHONPATH=. python3 benchmarks/compiled_grads.py [--backends ...] [--scopes ...] [--memory ...] [--frozen]
    BENCH_SMOKE=1 PYTHONPATH=. python3 benchmarks/compiled_grads.py --backends eager aot_eager   # a CPU check
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math

import torch
from torch._dynamo.utils import counters

from benchmarks.common import device, smoke, table, write_result
from engram.compiled import compiled
from engram.model import EngramLM
from tests.engram.test_compiled_training import model_config, step_by_step


def without_donated_buffers(fn):
    run = compiled(fn)

    def call(*args, **kwargs):  # the setting is read when AOTAutograd compiles, at the first call
        with torch._functorch.config.patch(donated_buffer=False):
            return run(*args, **kwargs)
    return call


BACKENDS = {
    "eager": lambda fn: torch.compile(fn, backend="eager"),
    "aot_eager": lambda fn: torch.compile(fn, backend="aot_eager"),
    "aot_eager_decomp_partition": lambda fn: torch.compile(fn, backend="aot_eager_decomp_partition"),
    "inductor": compiled,
    "inductor-defaults": torch.compile,
    "inductor-no-reuse": lambda fn: compiled(fn, options={"allow_buffer_reuse": False, "inplace_buffers": False}),
    "inductor-no-donation": without_donated_buffers,
    "inductor-dynamic": lambda fn: compiled(fn, dynamic=True),
    "cudagraphs": lambda fn: compiled(fn, cuda_graphs=True),
}
SCOPES = {  # a module's kind, from its attribute name in a block (the whole model's norm is a "norm" too)
    "attn": ("attn",), "moe": ("moe",), "engram": ("engram",), "mlp": ("mlp",),
    "norm": ("attn_norm", "ffn_norm", "norm"),
}
FAR = 0.1  # the test's bound on a parameter's relative gradient error


def poison(dev: torch.device, small_bytes: int = 64 << 20) -> None:
    """Fill the caching allocator's free blocks with 0xFF bytes, NaN in every float type, so that the blocks the
    next allocations are carved from hold NaN until a kernel writes them: the large pool's cached blocks in 2 MB
    pieces until the allocator has to reserve more, and ``small_bytes`` of its small pool (allocations of 1 MB or
    less) in 64 kB ones."""
    if dev.type != "cuda":
        return
    reserved = torch.cuda.memory_reserved(dev)
    held = []
    while torch.cuda.memory_reserved(dev) == reserved:
        held.append(torch.empty(2 << 20, dtype=torch.uint8, device=dev).fill_(0xFF))
    held += [torch.empty(64 << 10, dtype=torch.uint8, device=dev).fill_(0xFF) for _ in range(small_bytes >> 16)]
    del held


def run(backend: str, scope: str, batch_size: int, seq: int, memory: str, frozen: bool) -> dict:
    dev = device()
    config = model_config("small" if smoke() else "ladder")
    torch.manual_seed(0)
    eager = EngramLM(config).to(dev)
    twin = copy.deepcopy(eager)
    gen = torch.Generator().manual_seed(1)
    batches = [(t[:, :-1].to(dev), t[:, 1:].to(dev))
               for t in (torch.randint(0, config.vocab_size, (batch_size, seq + 1), generator=gen) for _ in range(4))]
    if frozen:
        batches = batches[:1] * len(batches)
    make = BACKENDS[backend]
    what = {"backend": backend, "scope": scope, "memory": memory, "frozen": frozen}
    if scope == "loss":
        loss_fn = make(twin.loss)
    else:
        kinds = SCOPES[scope]
        targets = [m for name, m in twin.named_modules() if name.rsplit(".", 1)[-1] in kinds]
        if not targets:
            return {**what, "verdict": "no such module in this model"}
        for m in targets:
            m.forward = make(m.forward)
        loss_fn = twin.loss
    graphs_so_far = []

    def before_step():
        graphs_so_far.append(counters["stats"]["unique_graphs"])
        if memory == "poisoned":
            poison(dev)

    try:
        steps = step_by_step(eager, twin, loss_fn, batches, dev, backend == "cudagraphs", before_step=before_step,
                             learn=not frozen)
    except Exception as err:  # a crash is a finding too; the next combination still runs
        return {**what, "verdict": f"raised {type(err).__name__}: {err}"[:300]}
    finally:
        graphs_so_far.append(counters["stats"]["unique_graphs"])
        torch._dynamo.reset()
        counters.clear()
    errors = [max(err for err, _ in grads.values()) for _, _, grads in steps]
    first_far = next((i for i, e in enumerate(errors) if not e < FAR), None)  # NaN counts as far
    furthest = ratios = None
    if first_far is not None:
        far = steps[first_far][2]
        ranked = sorted(far.items(), key=lambda kv: -kv[1][0] if kv[1][0] == kv[1][0] else -math.inf)
        furthest = [[name, round(err, 4), round(ratio, 4)] for name, (err, ratio) in ranked[:4]]
        ratios = [round(float(q), 4) for q in torch.tensor([r for _, r in far.values()]).nanquantile(
            torch.tensor([0.0, 0.5, 1.0]))]
    return {**what, "grad error by step": errors,
            "graphs compiled by step": [b - a for a, b in itertools.pairwise(graphs_so_far)],
            "loss rel": max(abs(twin - ref) / abs(ref) for ref, twin, _ in steps), "first far step": first_far,
            "verdict": "follows eager" if first_far is None else f"departs at step {first_far}",
            "furthest (parameter, error, norm ratio)": furthest, "norm ratio min/median/max": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS),
                        default=["eager", "aot_eager", "aot_eager_decomp_partition", "inductor"])
    parser.add_argument("--scopes", nargs="+", choices=["loss", *SCOPES], default=["loss"])
    parser.add_argument("--memory", nargs="+", choices=["plain", "poisoned"], default=["plain"])
    parser.add_argument("--frozen", action="store_true", help="one batch, no optimizer step, no router bias update")
    args = parser.parse_args()
    batch_size, seq = (4, 64) if smoke() else (32, 512)
    rows = []
    for scope in args.scopes:
        for memory in args.memory:
            for backend in args.backends:
                row = run(backend, scope, batch_size, seq, memory, args.frozen)
                print(f"{backend} / {scope} / {memory}: {row['verdict']}; graphs by step "
                      f"{row.get('graphs compiled by step')}; ratios {row.get('norm ratio min/median/max')}; "
                      f"{row.get('furthest (parameter, error, norm ratio)') or ''}", flush=True)
                rows.append(row)
    shown = [{**r, "grad error by step": " ".join(f"{e:.3g}" for e in r.get("grad error by step", []))} for r in rows]
    print(table(shown, ["backend", "scope", "memory", "grad error by step", "loss rel", "verdict"]))
    write_result("compiled_grads", {"model": "small" if smoke() else "ladder 2e14, rho 0.8", "batch": batch_size,
                                    "seq": seq, "frozen": args.frozen, "rows": rows})


if __name__ == "__main__":
    main()
