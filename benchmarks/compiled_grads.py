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
              cudagraphs     ``engram.compiled`` with CUDA graphs (``train.compile: cudagraphs``)
  --scopes    loss           the model's whole loss compiled, as the trainer compiles it
              attn, moe, engram, mlp, norm   only the modules of that kind compiled, the rest eager

The first backend that departs from eager names the layer at fault (capture, autograd, decompositions, kernels);
the first scope that departs names the module. ``--poison`` fills the allocator's free memory with NaN before
every step, so that a kernel that reads memory nothing wrote shows at the step it does so (as NaN) instead of
through the stale values of an earlier step. Prints, per combination, the largest relative gradient error at each
step and the parameters furthest off at the first step over 0.1.

    PYTHONPATH=. python3 benchmarks/compiled_grads.py [--backends ...] [--scopes ...] [--poison]
    BENCH_SMOKE=1 PYTHONPATH=. python3 benchmarks/compiled_grads.py --backends eager aot_eager   # a CPU check
"""

from __future__ import annotations

import argparse
import copy
import math

import torch

from benchmarks.common import device, smoke, table, write_result
from engram.compiled import compiled
from engram.model import EngramLM
from tests.engram.test_compiled_training import model_config, step_by_step

BACKENDS = {
    "eager": lambda fn: torch.compile(fn, backend="eager"),
    "aot_eager": lambda fn: torch.compile(fn, backend="aot_eager"),
    "aot_eager_decomp_partition": lambda fn: torch.compile(fn, backend="aot_eager_decomp_partition"),
    "inductor": compiled,
    "inductor-defaults": torch.compile,
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


def run(backend: str, scope: str, batch_size: int, seq: int, use_poison: bool) -> dict:
    dev = device()
    config = model_config("small" if smoke() else "ladder")
    torch.manual_seed(0)
    eager = EngramLM(config).to(dev)
    twin = copy.deepcopy(eager)
    gen = torch.Generator().manual_seed(1)
    batches = [(t[:, :-1].to(dev), t[:, 1:].to(dev))
               for t in (torch.randint(0, config.vocab_size, (batch_size, seq + 1), generator=gen) for _ in range(4))]
    make = BACKENDS[backend]
    if scope == "loss":
        loss_fn = make(twin.loss)
    else:
        kinds = SCOPES[scope]
        targets = [m for name, m in twin.named_modules() if name.rsplit(".", 1)[-1] in kinds]
        if not targets:
            return {"backend": backend, "scope": scope, "verdict": "no such module in this model"}
        for m in targets:
            m.forward = make(m.forward)
        loss_fn = twin.loss
    graphs = backend == "cudagraphs"
    try:
        steps = step_by_step(eager, twin, loss_fn, batches, dev, graphs,
                             before_step=(lambda: poison(dev)) if use_poison else None)
    except Exception as err:  # a crash is a finding too; the next combination still runs
        return {"backend": backend, "scope": scope, "verdict": f"raised {type(err).__name__}: {err}"[:300]}
    finally:
        torch._dynamo.reset()
    errors = [max(err for err, _ in grads.values()) for _, _, grads in steps]
    first_far = next((i for i, e in enumerate(errors) if not e < FAR), None)  # NaN counts as far
    furthest = None
    if first_far is not None:
        ranked = sorted(steps[first_far][2].items(), key=lambda kv: -kv[1][0] if kv[1][0] == kv[1][0] else -math.inf)
        furthest = [[name, round(err, 4), round(ratio, 4)] for name, (err, ratio) in ranked[:4]]
    return {"backend": backend, "scope": scope, "poison": use_poison, "grad error by step": errors,
            "loss rel": max(abs(twin - ref) / abs(ref) for ref, twin, _ in steps), "first far step": first_far,
            "verdict": "follows eager" if first_far is None else f"departs at step {first_far}",
            "furthest (parameter, error, norm ratio)": furthest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS),
                        default=["eager", "aot_eager", "aot_eager_decomp_partition", "inductor"])
    parser.add_argument("--scopes", nargs="+", choices=["loss", *SCOPES], default=["loss"])
    parser.add_argument("--poison", action="store_true", help="NaN in the allocator's free memory before each step")
    args = parser.parse_args()
    batch_size, seq = (4, 64) if smoke() else (32, 512)
    rows = []
    for scope in args.scopes:
        for backend in args.backends:
            row = run(backend, scope, batch_size, seq, args.poison)
            print(f"{backend} / {scope}: {row['verdict']}; {row.get('furthest (parameter, error, norm ratio)') or ''}",
                  flush=True)
            rows.append(row)
    shown = [{**r, "grad error by step": " ".join(f"{e:.3g}" for e in r.get("grad error by step", []))} for r in rows]
    print(table(shown, ["backend", "scope", "grad error by step", "loss rel", "verdict"]))
    write_result("compiled_grads", {"model": "small" if smoke() else "ladder 2e14, rho 0.8", "batch": batch_size,
                                    "seq": seq, "poison": args.poison, "rows": rows})


if __name__ == "__main__":
    main()
