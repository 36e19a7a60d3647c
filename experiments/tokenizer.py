"""Tokenizers: a byte-level BPE trained on the training split and cached by content hash, or one named on the hub.

Special tokens come first in a trained tokenizer: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2 (so
``EngramConfig.pad_id = 0`` pads N-gram windows with the padding token). The vocabulary compression map for
Engram is built from whichever tokenizer is used (:meth:`Tokenizer.compression`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from engram.compress import Compression

SPECIALS = ("<pad>", "<bos>", "<eos>")
BPE_VERSION = "bytelevel-bpe-1"  # part of the cache key: bump when the trainer's settings change


def cache_dir() -> Path:
    return Path(os.environ.get("ENGRAM_LAB_CACHE", Path.home() / ".cache" / "engram-lab"))


class Tokenizer:
    """A thin wrapper around a ``tokenizers.Tokenizer`` with the ids the suite needs."""

    def __init__(self, tok: HFTokenizer, name: str):
        self.tok = tok
        self.name = name
        self.pad_id = self._special("<pad>", ("[PAD]", "<|endoftext|>", "</s>"))
        self.bos_id = self._special("<bos>", ("<s>", "[CLS]", "<|endoftext|>"))
        self.eos_id = self._special("<eos>", ("</s>", "[SEP]", "<|endoftext|>"))

    def _special(self, token: str, fallbacks: tuple[str, ...]) -> int:
        for t in (token, *fallbacks):
            tid = self.tok.token_to_id(t)
            if tid is not None:
                return tid
        return 0

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.tok.to_str().encode()).hexdigest()[:16]

    def compression(self, vocab_size: int | None = None) -> Compression:
        """The Engram vocabulary map of this tokenizer; ids past its vocabulary (a model may be wider) stay distinct."""
        n = self.vocab_size
        decoded = [self.tok.decode([i], skip_special_tokens=False) for i in range(n)]
        raw = [self.tok.id_to_token(i) or "" for i in range(n)]
        comp = Compression.from_vocabulary(decoded, raw)
        extra = (vocab_size or n) - n
        if extra < 0:
            raise ValueError(f"the model's vocabulary ({vocab_size}) is smaller than the tokenizer's ({n})")
        return Compression(comp.lookup + tuple(range(comp.size, comp.size + extra)), comp.size + extra)

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    def save_hf(self, folder: str | Path, model_max_length: int) -> Path:
        """Export in Hugging Face format (``tokenizer.json`` + configs) for tools that load by path (lm-eval RULER)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(folder / "tokenizer.json"))
        names = {"pad_token": self.pad_id, "bos_token": self.bos_id, "eos_token": self.eos_id}
        specials = {k: self.tok.id_to_token(v) for k, v in names.items()}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
                  "clean_up_tokenization_spaces": False, **specials}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls(HFTokenizer.from_file(str(path)), name=str(path))


def train_bpe(texts: Iterable[str], vocab_size: int, cache: Path | None = None) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``texts``; reused from the cache when the same texts and
    size were seen before (the key is a hash of the content, not of file names)."""
    texts = list(texts)
    digest = hashlib.sha256(f"{BPE_VERSION}|{vocab_size}|".encode())
    for t in texts:
        digest.update(hashlib.sha256(t.encode()).digest())
    key = digest.hexdigest()[:20]
    path = (cache or cache_dir() / "tokenizers") / f"bpe-{vocab_size}-{key}.json"
    if path.exists():
        return Tokenizer.load(path)
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)  # concurrent trials may race to write the same tokenizer; either copy is the same
    return Tokenizer(tok, name=path.name)


def load_named(name: str) -> Tokenizer:
    """A tokenizer by hub name (needs the hub) or by local path to a ``tokenizer.json``."""
    if Path(name).exists():
        return Tokenizer.load(Path(name) / "tokenizer.json" if Path(name).is_dir() else name)
    try:
        return Tokenizer(HFTokenizer.from_pretrained(name), name=name)
    except Exception as err:  # the hub client raises many types; all mean the same thing here
        raise RuntimeError(f"cannot load tokenizer {name!r} from the Hugging Face hub ({err}). Without the hub, use "
                           "data.tokenizer=bpe or a local path to a tokenizer.json") from None
