"""Every Triton kernel against its PyTorch reference, on the CPU through Triton's interpreter.

TRITON_INTERPRET must be set before Triton decorates a kernel; other test modules may have imported the kernel
modules already, so they are reloaded here (a reload re-runs the decorators in the same module namespace).
"""

import copy
import importlib
import os

import numpy as np
import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="triton is not installed: the fused kernels cannot be checked")

import engram.kernels.lookup as lookup  # noqa: E402
import engram.kernels.sparse_adam as sparse_adam  # noqa: E402

importlib.reload(lookup)
importlib.reload(sparse_adam)

from engram.config import EngramConfig  # noqa: E402
from engram.hashing import hash_mixed, layer_multipliers, table_sizes  # noqa: E402
from engram.model import EngramLM  # noqa: E402
from engram.moe import experts_grouped, experts_loop  # noqa: E402
from engram.optim_tables import RowSparseAdam  # noqa: E402

from .variants import VARIANTS  # noqa: E402


def _layer(orders, heads, rows, vocab=1000, seed=3, J=8):
    """A layer's hashing constants as the model builds them, and a random table."""
    cfg = EngramConfig(layers=[2], orders=orders, heads=heads, mem_dim=len(orders) * heads * J, rows=rows, seed=seed)
    primes = torch.tensor(table_sizes(cfg)[2])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), primes.cumsum(0)[:-1]])
    mult = torch.from_numpy(layer_multipliers(cfg, 2, vocab))
    table = torch.randn(int(primes.sum()), J)
    return mult, primes, offsets, table


@pytest.mark.parametrize("orders,heads,B,T", [([2, 3], 4, 3, 37), ([2, 3, 4], 2, 2, 3), ([3], 3, 1, 50)])
def test_kernel_rows_are_bit_identical_to_hash_mixed(orders, heads, B, T):
    mult, primes, offsets, _ = _layer(orders, heads, rows=[997] * len(orders))
    ids = torch.randint(0, 1000, (B, T))
    pad = 7
    ref = hash_mixed(ids, mult, primes, orders, heads, pad) + offsets
    got = lookup.rows_triton(ids, mult, primes, offsets, orders, heads, pad)
    assert got.dtype == torch.long and torch.equal(got, ref)


@pytest.mark.parametrize("grad_mode", ["atomic", "sorted", "sparse"])
def test_fused_lookup_forward_and_table_gradient_match_the_reference(grad_mode):
    orders, heads = [2, 3], 3
    mult, primes, offsets, table = _layer(orders, heads, rows=[23, 29], J=12)  # small tables: many repeated rows
    ids = torch.randint(0, 40, (4, 33))
    grads = {}
    for kernels in ("triton", "torch"):
        w = table.clone().requires_grad_()
        out = lookup.engram_lookup(ids, w, mult, primes, offsets, orders, heads, 5, grad_mode=grad_mode,
                                   kernels=kernels)
        assert out.shape == (4, 33, len(orders) * heads * 12)
        grads[kernels] = (out, torch.autograd.grad(out, w, torch.linspace(-1, 1, out.numel()).view_as(out))[0])
    (out_t, g_t), (out_r, g_r) = grads["triton"], grads["torch"]
    assert torch.equal(out_t, out_r)
    assert g_t.is_sparse == (grad_mode == "sparse") == g_r.is_sparse
    torch.testing.assert_close(g_t.to_dense(), g_r.to_dense(), rtol=1e-5, atol=1e-5)


def test_fused_lookup_casts_rows_on_the_way_out():
    mult, primes, offsets, table = _layer([2, 3], 2, rows=[101, 103])
    ids = torch.randint(0, 1000, (2, 9))
    out = lookup.engram_lookup(ids, table, mult, primes, offsets, [2, 3], 2, 0, out_dtype=torch.bfloat16,
                               kernels="triton")
    ref = lookup.engram_lookup(ids, table, mult, primes, offsets, [2, 3], 2, 0, kernels="torch")
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.to(torch.bfloat16))


def test_sorted_segment_sum_is_exact_order_and_reproducible():
    rows = torch.cat([torch.randint(0, 40, (150,)), torch.full((100,), 11)])  # one row spans several chunks
    rows = rows[torch.randperm(rows.numel())]
    vals = torch.randn(rows.numel(), 5)
    outs = []
    for _ in range(2):
        dst = torch.zeros(40, 5)
        sparse_adam.segment_sum_into(dst, rows, vals, kernels="triton")
        outs.append(dst)
    ref = torch.zeros(40, 5, dtype=torch.float64).index_put_((rows,), vals.double(), accumulate=True)
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0].double(), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode,kernels", [("sorted", "triton"), ("atomic", "triton"), ("sorted", "torch")])
@pytest.mark.parametrize("decoupled", [False, True])
def test_row_sparse_adam_equals_dense_adam_on_touched_rows(mode, kernels, decoupled):
    R, J = 30, 6
    touched = torch.tensor([0, 3, 4, 17, 29])
    init = torch.randn(R, J)
    sparse_w = torch.nn.Parameter(init.clone())
    dense_w = torch.nn.Parameter(init.clone())
    kw = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    ours = RowSparseAdam([sparse_w], decoupled_weight_decay=decoupled, mode=mode, kernels=kernels, **kw)
    dense = (torch.optim.AdamW if decoupled else torch.optim.Adam)([dense_w], **kw)
    for _ in range(4):
        rows = touched[torch.randint(0, touched.numel(), (40,))]  # duplicates, every touched row present
        rows[: touched.numel()] = touched
        vals = torch.randn(rows.numel(), J)
        sparse_w.grad = torch.sparse_coo_tensor(rows[None], vals, (R, J), check_invariants=False)
        dense_w.grad = torch.zeros(R, J).index_add_(0, rows, vals)
        ours.step()
        dense.step()
    torch.testing.assert_close(sparse_w.data[touched], dense_w.data[touched], rtol=1e-5, atol=1e-6)
    untouched = torch.ones(R, dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(sparse_w.data[untouched], init[untouched])
    m = dense.state[dense_w]["exp_avg"][touched]
    torch.testing.assert_close(ours.state[sparse_w]["exp_avg"][touched], m, rtol=1e-5, atol=1e-6)


def test_row_sparse_adam_state_dict_round_trip_continues_identically():
    def steps(opt, w, n, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            rows = torch.randint(0, 20, (15,), generator=g)
            w.grad = torch.sparse_coo_tensor(rows[None], torch.randn(15, 4, generator=g), (20, 4),
                                             check_invariants=False)
            opt.step()

    w = torch.nn.Parameter(torch.randn(20, 4))
    opt = RowSparseAdam([w], lr=0.01, kernels="triton")
    steps(opt, w, 3, seed=1)
    saved_w, saved = w.data.clone(), copy.deepcopy(opt.state_dict())
    steps(opt, w, 2, seed=2)
    w2 = torch.nn.Parameter(saved_w)
    opt2 = RowSparseAdam([w2], lr=0.01, kernels="triton")
    opt2.load_state_dict(saved)
    assert opt2.state[w2]["step"] == 3 and opt2.state[w2]["exp_avg"].dtype == torch.float32
    steps(opt2, w2, 2, seed=2)
    assert torch.equal(w.data, w2.data)


@pytest.mark.parametrize("name", ["engram+moe+hc", "overencoding"])  # 4-grams: the rows test; frozen: test_model
def test_model_fused_path_equals_reference_path(name):
    cfg = VARIANTS[name]
    fused = EngramLM(cfg)
    ref = copy.deepcopy(fused)
    fused.set_kernels("triton")
    ref.set_kernels("torch")
    x = torch.randint(0, cfg.vocab_size, (2, 21))
    out_f, out_r = fused.loss(x[:, :-1], x[:, 1:]), ref.loss(x[:, :-1], x[:, 1:])
    assert torch.equal(out_f.loss, out_r.loss)
    out_f.loss.backward()
    out_r.loss.backward()
    for (n, p), (_, q) in zip(fused.named_parameters(), ref.named_parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)
    assert torch.equal(torch.cat([s.flatten() for s in fused.slots(x)]), torch.cat([s.flatten() for s in ref.slots(x)]))


def test_row_sparse_training_step_matches_dense_table_gradient():
    cfg = VARIANTS["engram+moe"]
    sparse_model = EngramLM(cfg)
    dense_model = copy.deepcopy(sparse_model)
    sparse_model.set_kernels("triton")
    sparse_model.set_row_sparse_tables(True)
    x = torch.randint(0, cfg.vocab_size, (2, 17))
    sparse_model.loss(x[:, :-1], x[:, 1:]).loss.backward()
    dense_model.loss(x[:, :-1], x[:, 1:]).loss.backward()
    opt = RowSparseAdam(sparse_model.table_parameters(), lr=0.01, kernels="triton")
    ref = torch.optim.Adam(dense_model.table_parameters(), lr=0.01)
    for p, q in zip(sparse_model.table_parameters(), dense_model.table_parameters()):
        assert p.grad.is_sparse and p.grad._nnz() == x[:, :-1].numel() * cfg.engram.n_subtables
        torch.testing.assert_close(p.grad.to_dense(), q.grad, rtol=1e-5, atol=1e-6)
    opt.step()
    ref.step()
    for p, q in zip(sparse_model.table_parameters(), dense_model.table_parameters()):
        torch.testing.assert_close(p.data, q.data, rtol=1e-5, atol=1e-6)  # fresh moments: no row drifts lazily


def test_grouped_experts_match_the_loop_forward_and_backward():
    counts = torch.tensor([5, 0, 9, 2])
    x = torch.randn(16, 32)
    w = [torch.randn(4, 24, 32) * 0.2, torch.randn(4, 24, 32) * 0.2, torch.randn(4, 32, 24) * 0.2]
    try:
        torch._grouped_mm(x.bfloat16(), w[0].bfloat16().transpose(-2, -1), offs=counts.cumsum(0).int())
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"torch._grouped_mm does not run on this device/build: {err}")
    grads = []
    for fn in (experts_grouped, experts_loop):
        xs = x.bfloat16().float().requires_grad_()
        ws = [t.bfloat16().float().requires_grad_() for t in w]
        y = fn(xs, counts, *ws)
        y.backward(torch.randn_like(y, generator=torch.Generator().manual_seed(0)))  # a real (non-expanded) grad
        grads.append((y, xs.grad, *[t.grad for t in ws]))
    for a, b in zip(*grads):
        assert np.isfinite(a.detach().numpy()).all()
        rel = (a - b).norm() / b.norm()
        assert rel < 2e-2, rel  # bf16 operands in the grouped path
