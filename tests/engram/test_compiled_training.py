"""``torch.compile`` of the model's loss trains as the eager loss does, step by step.

Compiled ladder trials stalled at the unigram entropy on an H200 while eager ones learned (results/README.md,
2026-12-03). These tests take the trainer's step apart: the same model and batches, eager against compiled as the
trainer compiles (``engram.compiled``), a few AdamW steps with the trainer's learning rate, under the trainer's
autocast; every step's loss and every parameter's gradient at every step must agree. On a CPU a small model of the
same family runs (and CI runs it); on a GPU the ladder's 2e14 shape runs too, with and without CUDA graphs (``bash
benchmarks/on_gpu.sh check``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from engram.compiled import compiled
from engram.config import ModelConfig
from engram.model import EngramLM
from sweeps.spec import expand, load_spec

from .variants import base

ON_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
LADDER = Path(__file__).resolve().parents[2] / "sweeps" / "specs" / "allocation_ladder.yaml"


def model_config(name: str) -> ModelConfig:
    """``small`` (of the library tests' family) or ``ladder``: the ladder's 2e14 model at rho 0.8, as its spec
    resolves it."""
    if name == "small":
        return base(n_layers=3)
    return next(p.trial.model for p in expand(load_spec(LADDER))
                if p.axes == {"budget": "2e14", "rho": 0.8, "seed": 0})


def train_steps(model: EngramLM, batches, loss_fn, device: torch.device, graphs: bool, before_step=None):
    """Losses and gradients of AdamW steps on ``batches``, as the trainer's step runs them; ``before_step()`` runs
    before each (``benchmarks/compiled_grads.py`` poisons free memory there)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    losses, grads = [], []
    for x, y in batches:
        if before_step is not None:
            before_step()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = loss_fn(x, y, memory=model.memory(x))
        losses.append(float(out.loss.detach()))
        out.loss.backward()
        grads.append({n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None})
        model.update_router_biases()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, grads


@pytest.mark.parametrize("model, device, mode, batch, seq", [
    pytest.param("small", "cpu", "default", 4, 64, id="small-cpu"),
    pytest.param("ladder", "cuda", "default", 32, 512, id="ladder-cuda", marks=ON_GPU),
    pytest.param("ladder", "cuda", "cuda-graphs", 32, 512, id="ladder-cuda-graphs", marks=ON_GPU),
])
def test_compiled_steps_follow_the_eager_steps(model, device, mode, batch, seq):
    config, device = model_config(model), torch.device(device)
    torch.manual_seed(0)
    eager = EngramLM(config).to(device)
    twin = copy.deepcopy(eager)
    gen = torch.Generator().manual_seed(1)
    batches = [(t[:, :-1].to(device), t[:, 1:].to(device))
               for t in (torch.randint(0, config.vocab_size, (batch, seq + 1), generator=gen) for _ in range(4))]
    ref_losses, ref_grads = train_steps(eager, batches, eager.loss, device, graphs=False)
    graphs = mode == "cuda-graphs"
    losses, grads = train_steps(twin, batches, compiled(twin.loss, cuda_graphs=graphs), device, graphs=graphs)
    assert losses == pytest.approx(ref_losses, rel=0.01), (losses, ref_losses)
    for step, (got, ref_step) in enumerate(zip(grads, ref_grads)):
        assert got.keys() == ref_step.keys()
        far = {n: float((got[n] - ref).norm() / ref.norm().clamp_min(1e-6)) for n, ref in ref_step.items()}
        assert max(far.values()) < 0.1, (step, sorted(far.items(), key=lambda kv: -kv[1])[:5])
