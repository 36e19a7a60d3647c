"""Data: corpus -> tokenizer -> token arrays per split -> deterministic batches addressed by optimizer step.

Each split is materialised once as a flat token array (documents joined by ``<eos>``) with a parallel array of
category ids, cached by content hash under ``$ENGRAM_LAB_CACHE`` (default ``~/.cache/engram-lab``). The training
split is cached once per data config, whatever the token budget: a trial that needs fewer tokens than a cached
stream holds cuts exactly what it would have materialised from it (the trials of one sweep differ in budget by a
few tokens and would otherwise each tokenise their own copy), and trials started together wait for the one that
builds the token arrays instead of each building them (each still trains, or reads, the tokenizer). Training
batches are addressed by step: sequence k of the run is chunk ``perm_e[k mod C]`` of epoch ``e = k // C`` (C chunks
of ``seq_len + 1`` tokens, a seeded permutation per epoch), so a resumed run reads exactly the batches an
uninterrupted one would, on any number of devices. Validation is a fixed prefix of the validation split.

Shapes: B batch, T sequence length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from engram.config import ConfigError
from engram_lab.files import waiting_lock
from engram_lab.records import data_identity
from experiments.synthetic import CATEGORIES, SyntheticConfig, SyntheticCorpus
from experiments.text import files_fingerprint, is_validation, iter_file_documents, iter_hub_documents
from experiments.tokenizer import Tokenizer, cache_dir, load_named, train_bpe

TOKENS_VERSION = "tokens-3"  # part of the cache key: bump when tokenisation or packing changes


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token sequences.

    Attributes:
        source: ``synthetic`` (the embedded generated corpus, no files), ``files`` (local txt/jsonl/parquet files or
            a folder, gzip allowed) or ``hub`` (a Hugging Face dataset by name, streamed; needs the hub).
        path: file or folder for ``files``.
        name, subset, split: dataset name, configuration and split for ``hub``.
        text_field: the text column of jsonl/parquet/hub rows.
        txt_split: documents of a .txt file: ``blank_line`` blocks, ``line``s or the whole ``file``.
        val_fraction: share of documents (by content hash) held out for validation (``files`` and ``hub``).
        tokenizer: ``bpe`` (byte-level BPE trained on the training split, cached) or a hub name / local path.
        vocab_size: the model's vocabulary; a trained BPE gets exactly this many tokens, a named tokenizer must fit.
        tokenizer_docs: training-split documents the BPE is trained on.
        seq_len: tokens per training sequence.
        max_train_tokens: cap on materialised training tokens for ``files`` / ``hub`` (0 = the whole split).
        heldout: a file or folder of a second text source that is never trained on (``files`` and ``hub``): the final
            model's loss on its first ``train.val_tokens`` tokens, with the run's tokenizer, is recorded as
            ``metrics.heldout_loss``: how far what was learnt carries beyond the training corpus.
        seed: seed of the document split (``files`` / ``hub``).
        synthetic: the generated corpus's knobs (``source: synthetic``).
    """

    source: Literal["synthetic", "files", "hub"] = "synthetic"
    path: str | None = None
    name: str | None = None
    subset: str | None = None
    split: str = "train"
    text_field: str = "text"
    txt_split: Literal["blank_line", "line", "file"] = "blank_line"
    val_fraction: float = 0.02
    tokenizer: str = "bpe"
    vocab_size: int = 4096
    tokenizer_docs: int = 20000
    seq_len: int = 256
    max_train_tokens: int = 0
    heldout: str | None = None
    seed: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.source == "files" and not self.path:
            raise ConfigError("path", "data.source=files needs data.path (a file or folder)")
        if self.heldout is not None and self.source == "synthetic":
            raise ConfigError("heldout", "a held-out text source is for real text (source files or hub)")
        if self.source == "hub" and not self.name:
            raise ConfigError("name", "data.source=hub needs data.name (a Hugging Face dataset)")
        if self.source not in ("synthetic", "files", "hub"):
            raise ConfigError("source", f"unknown {self.source!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must lie in (0, 1), got {self.val_fraction}")
        if self.vocab_size < 260:
            raise ConfigError("vocab_size", f"a byte-level vocabulary needs >= 260 tokens, got {self.vocab_size}")
        for name in ("seq_len", "tokenizer_docs"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")


def identity(cfg: DataConfig) -> dict:
    """The data config as it enters the run id and the token cache key."""
    return data_identity(dataclasses.asdict(cfg))


DOCS_PER_BATCH = 256  # documents tokenised at a time; materialising stops after the batch that passes the budget


@dataclass
class TokenSplit:
    tokens: np.ndarray  # int32 [N]
    categories: np.ndarray  # uint8 [N], index into names
    names: list[str]
    documents: int
    batch_ends: np.ndarray  # int64 [batches, 2]: tokens and documents after each batch of documents
    complete: bool  # the whole split (the source ran out), not a prefix of it

    def prefix(self, max_tokens: int) -> TokenSplit | None:
        """What materialising this stream to ``max_tokens`` gives (0: the whole split), cut from this longer
        materialisation; None when it does not reach that far."""
        ends = self.batch_ends
        i = int(np.searchsorted(ends[:, 0], max_tokens, side="right")) if max_tokens else len(ends)
        if i == len(ends):
            return self if self.complete else None
        n_tokens, n_docs = (int(v) for v in ends[i])
        return TokenSplit(self.tokens[:n_tokens], self.categories[:n_tokens], self.names, n_docs, ends[:i + 1],
                          complete=False)

    def chunks(self, seq_len: int) -> int:
        return max(0, (len(self.tokens) - 1) // seq_len)

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the empirical token distribution: the loss of a model that ignores all context."""
        counts = np.bincount(self.tokens)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())


@dataclass
class Corpus:
    tokenizer: Tokenizer
    train: TokenSplit
    validation: TokenSplit
    info: dict  # recorded with the run: split rule, document and token counts, tokenizer fingerprint


def _documents(cfg: DataConfig, split: str):
    """(text, category) pairs of one split, in a fixed order."""
    if cfg.source == "synthetic":
        yield from SyntheticCorpus(cfg.synthetic).documents(split)
        return
    if cfg.source == "files":
        docs = iter_file_documents(cfg.path, cfg.text_field, cfg.txt_split)
    else:
        docs = iter_hub_documents(cfg.name, cfg.subset, cfg.split, cfg.text_field)
    want_val = split == "validation"
    for text in docs:
        if is_validation(text, cfg.seed, cfg.val_fraction) == want_val:
            yield text, "text"


def materialise(cfg: DataConfig, tok: Tokenizer, split: str, max_tokens: int, documents=None) -> TokenSplit:
    """Tokenise documents (joined by <eos>) until ``max_tokens + 1`` tokens, or the whole split when 0; the
    split's documents unless ``documents`` ((text, category) pairs) are given."""
    names = list(CATEGORIES) if cfg.source == "synthetic" else ["text"]
    index = {n: i for i, n in enumerate(names)}
    parts, cats, ends, total, docs = [], [], [], 0, 0
    stream = _documents(cfg, split) if documents is None else iter(documents)
    complete = False
    while max_tokens == 0 or total <= max_tokens:
        batch = [d for _, d in zip(range(DOCS_PER_BATCH), stream)]
        if not batch:
            complete = True
            break
        for ids, (_, category) in zip(tok.encode_batch([t for t, _ in batch]), batch):
            ids.append(tok.eos_id)
            parts.append(np.asarray(ids, dtype=np.int32))
            cats.append(np.full(len(ids), index[category], dtype=np.uint8))
            total += len(ids)
            docs += 1
        ends.append((total, docs))
    if not parts:
        raise ValueError(f"the {split} split of the data is empty (source={cfg.source})")
    return TokenSplit(np.concatenate(parts), np.concatenate(cats), names, docs, np.asarray(ends, dtype=np.int64),
                      complete)


def load_heldout(cfg: DataConfig, tok: Tokenizer, max_tokens: int) -> TokenSplit:
    """The first ``max_tokens + 1`` tokens of ``cfg.heldout``'s documents, every one of them (none is trained on)."""
    docs = ((text, "text") for text in iter_file_documents(cfg.heldout, cfg.text_field, cfg.txt_split))
    return materialise(cfg, tok, "heldout", max_tokens, docs)


def _tokenizer(cfg: DataConfig) -> Tokenizer:
    if cfg.tokenizer != "bpe":
        tok = load_named(cfg.tokenizer)
        if tok.vocab_size > cfg.vocab_size:
            raise ConfigError("data.vocab_size", f"{cfg.vocab_size} is smaller than tokenizer {cfg.tokenizer!r}'s "
                                                 f"{tok.vocab_size} tokens")
        return tok
    texts = [text for _, (text, _) in zip(range(cfg.tokenizer_docs), _documents(cfg, "train"))]
    return train_bpe(texts, cfg.vocab_size)


def _key(cfg: DataConfig, tok: Tokenizer, val_tokens: int, text: str | None) -> str:
    stream = {k: v for k, v in identity(cfg).items() if k != "seq_len"}  # cutting is not the stream
    blob = json.dumps([TOKENS_VERSION, stream, tok.fingerprint(), val_tokens, text], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _read_cached(path: Path, train_tokens: int) -> tuple[TokenSplit | None, TokenSplit | None]:
    """(the training stream cut to ``train_tokens``, or None where the cache holds less; the validation split), or
    (None, None) without a cache. Only the cut part is widened to int32."""
    if not path.exists():
        return None, None
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        stored = TokenSplit(z["train"], z["train_cats"], meta["names"], meta["train_documents"], z["train_ends"],
                            meta["train_complete"])
        val = TokenSplit(z["val"].astype(np.int32), z["val_cats"], meta["names"], meta["validation_documents"],
                         z["val_ends"], meta["validation_complete"])
    train = stored.prefix(train_tokens)
    return (None if train is None else dataclasses.replace(train, tokens=train.tokens.astype(np.int32))), val


def _write_cached(path: Path, train: TokenSplit, val: TokenSplit) -> None:
    meta = {"names": train.names, "train_documents": train.documents, "validation_documents": val.documents,
            "train_complete": train.complete, "validation_complete": val.complete}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")

    def stored(tokens: np.ndarray) -> np.ndarray:  # half the bytes for vocabularies under 2^16, before compression
        return tokens.astype(np.uint16) if tokens.size and int(tokens.max()) < 2**16 else tokens

    np.savez_compressed(tmp, train=stored(train.tokens), train_cats=train.categories, train_ends=train.batch_ends,
                        val=stored(val.tokens), val_cats=val.categories, val_ends=val.batch_ends,
                        meta=json.dumps(meta))
    os.replace(tmp, path)  # atomic: an interrupted build leaves the old stream whole


def load_corpus(cfg: DataConfig, train_tokens: int, val_tokens: int) -> Corpus:
    """The tokenizer and both splits, cut from the cache when a long enough stream was materialised before.

    Synthetic data is generated to ``train_tokens`` (each sequence seen once); files are read whole (or to
    ``max_train_tokens``), so a small corpus is repeated in epochs.
    """
    tok = _tokenizer(cfg)
    if cfg.source != "synthetic":
        train_tokens = cfg.max_train_tokens
    text = files_fingerprint(cfg.path) if cfg.source == "files" else None
    path = cache_dir() / "tokens" / f"{_key(cfg, tok, val_tokens, text)}.npz"
    train, val = _read_cached(path, train_tokens)
    if train is None:
        with waiting_lock(path.with_name(f".{path.stem}.lock")):  # one of the trials started together builds it
            train, val = _read_cached(path, train_tokens)  # the others read what it built
            if train is None:
                train = materialise(cfg, tok, "train", train_tokens)
                if val is None:
                    val = materialise(cfg, tok, "validation", val_tokens)
                _write_cached(path, train, val)
    if int(train.tokens.max()) >= cfg.vocab_size:
        raise ConfigError("data.vocab_size", f"token id {int(train.tokens.max())} exceeds the vocabulary")
    info = {
        "source": cfg.source, "tokenizer": tok.name, "tokenizer_fingerprint": tok.fingerprint(),
        "tokenizer_vocab": tok.vocab_size, "split_rule": ("independent generated streams" if cfg.source == "synthetic"
                                                          else f"content hash < {cfg.val_fraction} (seed {cfg.seed})"),
        "train_documents": train.documents, "validation_documents": val.documents,
        "train_tokens_available": int(len(train.tokens)), "validation_tokens_available": int(len(val.tokens)),
        # which text the losses are on: a rebuilt corpus under the same path changes the validation set
        **({"text_fingerprint": text} if text else {}),
        "validation_fingerprint": hashlib.sha256(val.tokens.astype(np.int64).tobytes()).hexdigest()[:16],
        "categories": train.names,
    }
    return Corpus(tok, train, val, info)


class TrainBatches(torch.utils.data.IterableDataset):
    """Batches [B, T] of (inputs, targets) from optimizer step ``start_step`` on, for one data-parallel rank."""

    def __init__(self, split: TokenSplit, seq_len: int, batch_size: int, seed: int, start_step: int = 0,
                 rank: int = 0, world: int = 1):
        self.tokens = torch.from_numpy(split.tokens.astype(np.int64))
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.start_step, self.rank, self.world = start_step, rank, world
        self.n_chunks = split.chunks(seq_len)
        if self.n_chunks == 0:
            raise ValueError(f"the training split has fewer than seq_len + 1 = {seq_len + 1} tokens")
        self._perm: tuple[int, torch.Tensor] | None = None

    def chunk(self, k: int) -> int:
        epoch, pos = divmod(k, self.n_chunks)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n_chunks, generator=g))
        return int(self._perm[1][pos])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = (step * self.world + self.rank) * self.batch_size
        rows = []
        for k in range(first, first + self.batch_size):
            start = self.chunk(k) * self.seq_len
            rows.append(self.tokens[start:start + self.seq_len + 1])
        seq = torch.stack(rows)
        return seq[:, :-1], seq[:, 1:]

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


PADDING = -1  # the category of a validation sequence that only keeps ranks in step; validation leaves it out


class ValidationSet(torch.utils.data.Dataset):
    """The fixed validation prefix as (inputs, targets, target categories) sequences; rank r of W takes sequences
    r, r + W, ... Every rank yields as many sequences (data-parallel ranks run each forward pass together, and
    sharded tables exchange rows in it): a rank short of one repeats sequence 0 with every category ``PADDING``."""

    def __init__(self, split: TokenSplit, seq_len: int, val_tokens: int, rank: int = 0, world: int = 1):
        n = min(val_tokens // seq_len, split.chunks(seq_len))
        if n == 0:
            raise ValueError(f"the validation split has fewer than {seq_len + 1} tokens")
        self.tokens = torch.from_numpy(split.tokens[: n * seq_len + 1].astype(np.int64))
        self.cats = torch.from_numpy(split.categories[: n * seq_len + 1].astype(np.int64))
        self.seq_len = seq_len
        per_rank = -(-n // world)
        self.indices = [i if i < n else None for i in range(rank, per_rank * world, world)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        start = (index or 0) * self.seq_len
        seq = self.tokens[start:start + self.seq_len + 1]
        cats = self.cats[start + 1:start + self.seq_len + 1]
        return seq[:-1], seq[1:], cats if index is not None else torch.full_like(cats, PADDING)
