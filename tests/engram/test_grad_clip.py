"""Gradient clipping over dense, sparse and mixed-dtype gradients, against a float64 norm; on a GPU too, where the
dense gradients take the foreach kernels (`bash benchmarks/on_gpu.sh check` runs this module there)."""

import pytest
import torch

from engram.optim_tables import clip_grad_norm_

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))]


def test_clip_grad_norm_counts_duplicated_sparse_rows_once_summed():
    w = torch.nn.Parameter(torch.zeros(5, 2))
    w.grad = torch.sparse_coo_tensor(torch.tensor([[1, 1, 3]]), torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 3.0]]),
                                     (5, 2), check_invariants=False)
    v = torch.nn.Parameter(torch.zeros(2))
    v.grad = torch.tensor([0.0, 0.0])
    total = clip_grad_norm_([w, v], max_norm=1.0)
    torch.testing.assert_close(total, torch.tensor(5.0))  # rows 1 -> (4, 0), 3 -> (0, 3)
    torch.testing.assert_close(w.grad.to_dense().norm(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_clip_grad_norm_scales_every_dense_gradient_by_the_float64_norm(device):
    """Shapes of the ladder's 3e15 model (stacked experts, the head) beside a bf16 and a gradient-less parameter: the
    norm within 1e-6 of float64's, every gradient scaled to max_norm over it, each in its own dtype."""
    torch.manual_seed(0)
    kinds = [((30, 384, 384), torch.float32), ((4096, 384), torch.float32), ((64,), torch.bfloat16),
             ((7, 5), torch.float32)]
    params = [torch.nn.Parameter(torch.zeros(shape, device=device, dtype=dtype)) for shape, dtype in kinds]
    for p in params:
        p.grad = torch.randn_like(p) * 0.01
    frozen = torch.nn.Parameter(torch.zeros(3, device=device))
    before = [p.grad.double().clone() for p in params]
    exact = float(torch.sqrt(sum((g ** 2).sum() for g in before)))

    total = clip_grad_norm_(params + [frozen], max_norm=0.5)

    assert float(total) == pytest.approx(exact, rel=1e-6)
    for p, g in zip(params, before, strict=True):
        tol = 1e-2 if p.dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(p.grad.double(), g * 0.5 / (exact + 1e-6), rtol=tol, atol=0)
    assert frozen.grad is None
