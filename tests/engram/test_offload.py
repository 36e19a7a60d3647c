"""Host-memory tables give the same logits as the model with its tables on the device.

On a CPU the host path runs without streams (rows gathered on the host and passed in), and the zero-copy path runs
the fused kernel under Triton's interpreter; the stream/event path runs where CUDA is available.
"""

import importlib
import os

import pytest
import torch

from engram.model import EngramLM
from engram.offload import OffloadedLM

from .variants import VARIANTS


def _model(name="engram+moe", device="cpu"):
    cfg = VARIANTS[name]
    return EngramLM(cfg).to(device).eval(), cfg


@pytest.mark.parametrize("name", ["engram+moe", "overencoding"])
def test_host_tables_give_identical_logits_and_restore(name):
    model, cfg = _model(name)
    x = torch.randint(0, cfg.vocab_size, (2, 19))
    with torch.no_grad():
        ref = model(x)
    weights = [t.weight for t in model.memory_tables()]
    with OffloadedLM(model) as off:
        assert all(t.weight.numel() == 0 for t in model.memory_tables())  # the device copy is gone
        host = off.host_rows(x, 0)
        assert torch.equal(host, model.hasher(x)[0] + model.memory_tables()[0].offsets_S)
        assert torch.equal(off(x), ref)
    assert all(t.weight is w for t, w in zip(model.memory_tables(), weights))
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_pipelined_batches_equal_one_at_a_time():
    model, cfg = _model()
    batches = [torch.randint(0, cfg.vocab_size, (2, 11)) for _ in range(3)]
    with torch.no_grad():
        refs = [model(b) for b in batches]
    with OffloadedLM(model, dtype=torch.float32) as off:
        outs = off.run(batches)
    assert all(torch.equal(o, r) for o, r in zip(outs, refs))


def test_a_larger_host_table_is_served_through_its_own_hasher():
    """A table the device could not hold: rows come from the host table and the matching hasher alone."""
    from dataclasses import replace

    from engram.hashing import NgramHasher

    model, cfg = _model()
    big = replace(cfg.engram, rows=5003)
    hasher = NgramHasher(big, model.compression)
    tables = [torch.randn(int(p.sum()), cfg.engram.head_dim) for p in hasher.primes_LS]
    x = torch.randint(0, cfg.vocab_size, (1, 9))
    with OffloadedLM(model, tables=tables, hasher=hasher) as off:
        rows = off.host_rows(x, 1)
        want = tables[1][rows].flatten(-2)
        assert torch.equal(off.prefetch(x)[1].wait(), want)


def test_zero_copy_kernel_path_gives_identical_logits():
    os.environ["TRITON_INTERPRET"] = "1"
    pytest.importorskip("triton", reason="triton is not installed")
    import engram.kernels.lookup as lookup

    importlib.reload(lookup)  # the kernel must be (re)decorated in interpreter mode on a CPU
    import engram.offload as offload

    importlib.reload(offload)
    model, cfg = _model()
    x = torch.randint(0, cfg.vocab_size, (2, 13))
    with torch.no_grad():
        ref = model(x)
    with offload.OffloadedLM(model, mode="zero_copy", max_programs=1) as off:  # one program loops over all blocks
        assert torch.equal(off(x), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: streams, events and pinned memory")
@pytest.mark.parametrize("mode", ["host", "zero_copy"])
def test_gpu_offload_streams_give_identical_logits(mode):
    model, cfg = _model(device="cuda")
    batches = [torch.randint(0, cfg.vocab_size, (4, 32)) for _ in range(3)]
    with torch.no_grad():
        refs = [model(b.cuda()) for b in batches]
    with OffloadedLM(model, mode=mode) as off:
        outs = off.run(batches)
    torch.cuda.synchronize()
    assert all(torch.equal(o, r) for o, r in zip(outs, refs))
