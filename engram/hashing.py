"""Multi-head N-gram hashing on tensors: token ids -> the table row each hash head reads.

The algorithm is the official demo's (multiplicative-XOR, prime-sized tables), so slot ids equal the demo's for the
same settings and tables are interchangeable with it:

* ids are first mapped through the vocabulary compression (V' canonical ids); positions before the sequence start
  are filled with the compressed id of ``pad_id`` (no document-boundary handling, as in the demo);
* layer l draws ``max(orders)`` odd multipliers m = 2r + 1, r ~ ``numpy.random.default_rng(seed + 10007*l)``
  uniform in [0, half) with half = ((2^63 - 1) // V') // 2, so x' * m never overflows int64;
* order n mixes ``(x'_t * m_0) XOR (x'_{t-1} * m_1) XOR ... XOR (x'_{t-n+1} * m_{n-1})``; the K heads of one order
  share this mix and differ only in their prime modulus;
* every (layer, order, head) sub-table has its own prime size: the smallest prime >= the requested rows that no
  earlier sub-table uses, walking layers, then orders, then heads (the search resumes above the previous head's prime).

Shapes: B batch, T time, S = len(orders) * heads sub-tables of one layer, L Engram layers, N max order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engram.compress import Compression
from engram.config import EngramConfig

LAYER_SEED_STRIDE = 10007
_INT64_MAX = np.iinfo(np.int64).max


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (covers every int64)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _next_unused_prime(start: int, seen: set[int]) -> int:
    candidate = start + 1
    while not (is_prime(candidate) and candidate not in seen):
        candidate += 1
    return candidate


def table_sizes(cfg: EngramConfig) -> dict[int, list[int]]:
    """Rows of every sub-table: ``{layer: [size of (order, head) for order in orders for head in heads]}``."""
    if cfg.control == "single_row":
        return {layer: [1] * cfg.n_subtables for layer in cfg.layers}
    seen: set[int] = set()
    sizes: dict[int, list[int]] = {}
    for layer in cfg.layers:
        sizes[layer] = []
        for rows in cfg.rows:
            start = rows - 1
            for _ in range(cfg.heads):
                prime = _next_unused_prime(start, seen)
                seen.add(prime)
                sizes[layer].append(prime)
                start = prime
    return sizes


def layer_multipliers(cfg: EngramConfig, layer: int, compressed_vocab: int) -> np.ndarray:
    """The ``max(orders)`` odd int64 multipliers of one layer."""
    half = max(1, (_INT64_MAX // compressed_vocab) // 2)
    rng = np.random.default_rng(cfg.seed + LAYER_SEED_STRIDE * layer)
    return rng.integers(low=0, high=half, size=(cfg.max_order,), dtype=np.int64) * 2 + 1


def hash_mixed(ids_BT: torch.Tensor, multipliers_N: torch.Tensor, primes_S: torch.Tensor, orders: list[int],
               heads: int, pad: int) -> torch.Tensor:
    """Slots [B, T, S] from already-compressed ids; the core every path (reference, fused kernel, host) must match."""
    T = ids_BT.shape[1]
    mix = ids_BT * multipliers_N[0]
    mixes = {1: mix}
    for k in range(1, max(orders)):
        shifted = F.pad(ids_BT, (k, 0), value=pad)[:, :T]
        mix = torch.bitwise_xor(mix, shifted * multipliers_N[k])
        mixes[k + 1] = mix
    per_order = [mixes[n].unsqueeze(-1).expand(*ids_BT.shape, heads) for n in orders]
    return torch.remainder(torch.cat(per_order, dim=-1), primes_S)


def ngram_slots(input_ids: torch.Tensor, config: EngramConfig, layer: int, compression: Compression) -> torch.Tensor:
    """LongTensor [batch, seq, len(orders) * heads]: the row each head of ``layer`` reads (before per-head offsets).

    ``input_ids`` are raw token ids; they are mapped through ``compression`` here. For ids that are already
    canonical, pass ``Compression.identity(V)``: V' enters the multipliers, so it must be stated, never guessed.
    """
    if layer not in config.layers:
        raise ValueError(f"layer {layer} holds no Engram module (layers: {config.layers})")
    device = input_ids.device
    ids = compression.tensor().to(device)[input_ids.long()]
    if config.control == "single_row":
        return torch.zeros(*ids.shape, config.n_subtables, dtype=torch.long, device=device)
    multipliers = torch.from_numpy(layer_multipliers(config, layer, compression.size)).to(device)
    primes = torch.tensor(table_sizes(config)[layer], dtype=torch.long, device=device)
    pad = int(compression.lookup[config.pad_id])
    return hash_mixed(ids, multipliers, primes, config.orders, config.heads, pad)


class NgramHasher(nn.Module):
    """All Engram layers' slots for a batch, on the model's device, in one call (buffers move with the model).

    ``forward(input_ids) -> slots_LBTS``: row within each sub-table, in the order of ``config.layers``.
    """

    def __init__(self, config: EngramConfig, compression: Compression):
        super().__init__()
        self.orders = list(config.orders)
        self.heads = config.heads
        self.single_row = config.control == "single_row"
        self.compression_size = compression.size
        self.pad = int(compression.lookup[config.pad_id])
        self.register_buffer("lookup", compression.tensor(), persistent=True)
        mult = np.stack([layer_multipliers(config, layer, compression.size) for layer in config.layers])
        self.register_buffer("multipliers_LN", torch.from_numpy(mult), persistent=True)
        sizes = table_sizes(config)
        self.register_buffer("primes_LS", torch.tensor([sizes[x] for x in config.layers], dtype=torch.long),
                             persistent=True)

    def compress(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lookup[input_ids]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = self.compress(input_ids)
        if self.single_row:
            return torch.zeros(self.primes_LS.shape[0], *ids.shape, self.primes_LS.shape[1], dtype=torch.long,
                               device=ids.device)
        return torch.stack([
            hash_mixed(ids, self.multipliers_LN[i], self.primes_LS[i], self.orders, self.heads, self.pad)
            for i in range(self.primes_LS.shape[0])
        ])
