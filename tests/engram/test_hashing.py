"""Slot ids must equal the official demo's for the same settings, and never change between runs or devices."""

import subprocess
import sys
from math import isqrt

import numpy as np
import pytest
import torch

from engram.compress import Compression
from engram.config import EngramConfig
from engram.hashing import NgramHasher, is_prime, ngram_slots, table_sizes


def demo_reference_slots(ids: np.ndarray, lookup: np.ndarray, vocab_sizes: list[int], max_ngram: int, heads: int,
                         layer_ids: list[int], pad_id: int, seed: int) -> dict[int, np.ndarray]:
    """A NumPy transcription of the demo's NgramHashMapping (compress, shift with pad, XOR mix, prime modulus)."""
    compressed_vocab = int(lookup.max()) + 1
    x = lookup[ids]
    pad = int(lookup[pad_id])
    half = max(1, int(np.iinfo(np.int64).max // compressed_vocab) // 2)
    seen, primes = set(), {}
    for layer in layer_ids:
        primes[layer] = []
        for n in range(2, max_ngram + 1):
            start = vocab_sizes[n - 2] - 1
            for _ in range(heads):
                cand = start + 1
                while not (cand > 1 and all(cand % d for d in range(2, isqrt(cand) + 1)) and cand not in seen):
                    cand += 1
                seen.add(cand)
                primes[layer].append(cand)
                start = cand
    out = {}
    B, T = x.shape
    for layer in layer_ids:
        mult = np.random.default_rng(seed + 10007 * layer).integers(0, half, size=(max_ngram,), dtype=np.int64) * 2 + 1
        shifts = [x if k == 0 else np.pad(x, ((0, 0), (k, 0)), constant_values=pad)[:, :T] for k in range(max_ngram)]
        hashes = []
        for n in range(2, max_ngram + 1):
            mix = shifts[0] * mult[0]
            for k in range(1, n):
                mix = np.bitwise_xor(mix, shifts[k] * mult[k])
            for j in range(heads):
                hashes.append(mix % primes[layer][(n - 2) * heads + j])
        out[layer] = np.stack(hashes, axis=2)
    return out


def _setup():
    vocab = 300
    rng = np.random.default_rng(7)
    lookup = np.concatenate([np.arange(200), rng.integers(0, 200, size=100)])  # a surjective map onto 200 ids
    comp = Compression(tuple(int(v) for v in lookup), 200)
    cfg = EngramConfig(layers=[1, 15], orders=[2, 3], heads=4, mem_dim=64, rows=[1009, 2003], pad_id=2, seed=0)
    ids = rng.integers(0, vocab, size=(3, 17))
    return cfg, comp, lookup, ids


def test_slots_equal_the_demo_transcription():
    cfg, comp, lookup, ids = _setup()
    ref = demo_reference_slots(ids, lookup, [1009, 2003], 3, 4, [1, 15], pad_id=2, seed=0)
    for layer in cfg.layers:
        ours = ngram_slots(torch.from_numpy(ids), cfg, layer, compression=comp)
        assert ours.shape == (3, 17, 8)
        np.testing.assert_array_equal(ours.numpy(), ref[layer])
    hasher = NgramHasher(cfg, comp)
    batched = hasher(torch.from_numpy(ids))
    for i, layer in enumerate(cfg.layers):
        np.testing.assert_array_equal(batched[i].numpy(), ref[layer])


def test_pinned_slot_values():
    cfg = EngramConfig(layers=[1], orders=[2, 3], heads=2, mem_dim=16, rows=[101, 211], pad_id=0, seed=0)
    ids = torch.tensor([[5, 17, 42, 42, 7, 99]])
    slots = ngram_slots(ids, cfg, 1, compression=Compression.identity(128))
    assert table_sizes(cfg) == {1: [101, 103, 211, 223]}
    assert slots[0].tolist() == PINNED


PINNED = [[78, 8, 56, 158], [64, 39, 185, 221], [49, 44, 179, 162], [97, 7, 85, 54], [45, 77, 17, 70],
          [66, 70, 208, 129]]


def test_primes_are_distinct_and_not_below_the_request():
    cfg = EngramConfig(layers=[0, 3, 5], orders=[2, 3, 4], heads=8, mem_dim=48, rows=[500, 500, 90])
    sizes = table_sizes(cfg)
    flat = [p for layer in cfg.layers for p in sizes[layer]]
    assert len(flat) == len(set(flat)) == 3 * 3 * 8
    assert all(is_prime(p) for p in flat)
    for layer in cfg.layers:
        for i, p in enumerate(sizes[layer]):
            assert p >= cfg.rows[i // cfg.heads]


def test_is_prime_matches_trial_division():
    for n in range(0, 5000):
        assert is_prime(n) == (n > 1 and all(n % d for d in range(2, isqrt(n) + 1)))
    assert is_prime(2_262_401) == all(2_262_401 % d for d in range(2, isqrt(2_262_401) + 1))


def test_heads_of_one_order_share_the_mix():
    """Two n-grams whose mixes are equal collide in every head; the prime moduli alone separate the heads."""
    cfg = EngramConfig(layers=[0], orders=[2], heads=4, mem_dim=16, rows=50)
    ids = torch.tensor([[3, 9, 3, 9]])
    s = ngram_slots(ids, cfg, 0, compression=Compression.identity(16))
    assert torch.equal(s[0, 1], s[0, 3])  # the bigram (3, 9) twice


def test_deterministic_across_processes():
    code = ("import torch; from engram.config import EngramConfig; from engram.compress import Compression;"
            "from engram.hashing import ngram_slots;"
            "cfg=EngramConfig(layers=[2], orders=[2,3,4], heads=3, mem_dim=36, rows=[997,1999,4001], seed=5);"
            "ids=torch.arange(40).view(2,20)*37 % 1000;"
            "print(ngram_slots(ids, cfg, 2, Compression.identity(1000)).sum().item())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1
    cfg = EngramConfig(layers=[2], orders=[2, 3, 4], heads=3, mem_dim=36, rows=[997, 1999, 4001], seed=5)
    ids = torch.arange(40).view(2, 20) * 37 % 1000
    assert runs.pop().strip() == str(ngram_slots(ids, cfg, 2, Compression.identity(1000)).sum().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_same_slots_on_gpu():
    cfg, comp, _, ids = _setup()
    hasher = NgramHasher(cfg, comp)
    cpu = hasher(torch.from_numpy(ids))
    gpu = hasher.cuda()(torch.from_numpy(ids).cuda())
    assert torch.equal(cpu, gpu.cpu())


def test_single_row_control_reads_row_zero():
    cfg = EngramConfig(layers=[0], orders=[2, 3], heads=2, mem_dim=8, control="single_row")
    assert table_sizes(cfg) == {0: [1, 1, 1, 1]}
    s = ngram_slots(torch.tensor([[1, 2, 3]]), cfg, 0, compression=Compression.identity(8))
    assert s.abs().sum() == 0
