import gzip
import json

import numpy as np
import pandas as pd
import pytest
import torch

from engram.config import ConfigError
from experiments.data import PADDING, DataConfig, TrainBatches, ValidationSet, materialise, load_corpus
from experiments.text import is_validation, iter_file_documents, iter_hub_documents
from experiments.tokenizer import train_bpe

from ..conftest import needs_shared, SHARED

DOCS = [(f"Document number {i} talks about {['apples', 'rivers', 'kings', 'ships'][i % 4]} and more. " * 3).strip()
        for i in range(300)]


def write_sources(folder):
    folder.mkdir()
    with gzip.open(folder / "a.jsonl.gz", "wt") as f:
        for d in DOCS[:100]:
            f.write(json.dumps({"text": d}) + "\n")
    (folder / "b.txt").write_text("\n\n".join(DOCS[100:200]))
    pd.DataFrame({"text": DOCS[200:]}).to_parquet(folder / "c.parquet")
    return folder


def test_file_sources_read_every_document(tmp_path):
    folder = write_sources(tmp_path / "corpus")
    got = list(iter_file_documents(folder))
    assert sorted(got) == sorted(DOCS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(iter_file_documents(tmp_path / "missing"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        list(iter_file_documents(tmp_path / "bad.jsonl"))


def test_a_folder_interleaves_its_files_by_size(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, n in (("a-small.jsonl", 100), ("b-large.jsonl", 300)):  # same-sized lines: bytes ~ documents
        with open(folder / name, "w") as f:
            f.writelines(json.dumps({"text": f"{name} document {i:04d}"}) + "\n" for i in range(n))
    got = list(iter_file_documents(folder))
    assert len(got) == 400
    for cut in (40, 100, 200):  # every prefix holds both files at their shares (1:3), not the first file by name
        small = sum(d.startswith("a-small") for d in got[:cut])
        assert abs(small - cut / 4) <= 2, (cut, small)
    assert [d for d in got if d.startswith("b-large")] == [f"b-large.jsonl document {i:04d}" for i in range(300)]
    assert list(iter_file_documents(folder / "a-small.jsonl")) == [f"a-small.jsonl document {i:04d}"
                                                                   for i in range(100)]


def test_document_split_is_disjoint_stable_and_recorded(tmp_path):
    folder = write_sources(tmp_path / "corpus")
    cfg = DataConfig(source="files", path=str(folder), vocab_size=300, seq_len=16, val_fraction=0.2,
                     tokenizer_docs=300)
    corpus = load_corpus(cfg, 0, 256)
    val_docs = {d for d in DOCS if is_validation(d, 0, 0.2)}
    assert 30 < len(val_docs) < 90
    assert corpus.info["validation_documents"] == len(val_docs)
    assert corpus.info["train_documents"] == len(DOCS) - len(val_docs)
    assert "content hash" in corpus.info["split_rule"]
    # the split follows the text, not the file order: reading again in another order changes nothing
    again = load_corpus(cfg, 0, 256)
    assert np.array_equal(again.train.tokens, corpus.train.tokens)
    eos = corpus.tokenizer.eos_id
    assert (corpus.train.tokens == eos).sum() == corpus.info["train_documents"]


def test_a_rebuilt_corpus_under_the_same_path_is_another_text(tmp_path):
    folder = write_sources(tmp_path / "corpus")
    cfg = DataConfig(source="files", path=str(folder), vocab_size=300, seq_len=16, val_fraction=0.2,
                     tokenizer_docs=300)
    first, again = load_corpus(cfg, 0, 256).info, load_corpus(cfg, 0, 256).info
    assert first["text_fingerprint"] == again["text_fingerprint"]
    assert first["validation_fingerprint"] == again["validation_fingerprint"]
    added = "A document the package update added, about harbours and their ships. " * 3
    with open(folder / "b.txt", "a") as f:
        f.write("\n\n" + added)
    rebuilt = load_corpus(cfg, 0, 256).info  # not the cached tokens of the old files
    assert rebuilt["text_fingerprint"] != first["text_fingerprint"]
    assert (rebuilt["train_documents"] + rebuilt["validation_documents"]
            == first["train_documents"] + first["validation_documents"] + 1)


def test_bpe_is_cached_by_content_and_compresses(tmp_path):
    texts = ["The Cat sat. the cat sat. THE CAT SAT."] * 50 + ["Apple apple APPLE"] * 50
    a = train_bpe(texts, 300, cache=tmp_path)
    b = train_bpe(texts, 300, cache=tmp_path)
    assert a.fingerprint() == b.fingerprint() and len(list(tmp_path.iterdir())) == 1
    c = train_bpe(texts[::-1] + ["new"], 300, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2 and c.vocab_size <= 300
    comp = a.compression(vocab_size=320)
    assert comp.vocab_size == 320 and comp.size < 320  # case variants merged; ids past the tokenizer stay distinct
    ids = {t: a.tok.token_to_id(t) for t in ("Cat", "cat", "Ġcat", "ĠCat") if a.tok.token_to_id(t) is not None}
    assert len({comp.lookup[i] for i in ids.values()}) == 1 < len(ids)
    assert a.decode(a.encode("the cat sat.")) == "the cat sat."


def test_batches_are_addressed_by_step_and_rank(tmp_path):
    cfg = DataConfig(vocab_size=512, tokenizer_docs=300, seq_len=32)
    corpus = load_corpus(cfg, 40_000, 2048)
    full = TrainBatches(corpus.train, 32, 4, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(6)]
    resumed = TrainBatches(corpus.train, 32, 4, seed=3, start_step=4)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first[4:], iter(resumed)))
    x, y = first[0]
    assert x.shape == (4, 32) and np.array_equal(x[:, 1:], y[:, :-1])
    # two ranks of batch 2 read, between them, what one rank of batch 4 reads
    r0 = TrainBatches(corpus.train, 32, 2, seed=3, rank=0, world=2).batch(1)
    r1 = TrainBatches(corpus.train, 32, 2, seed=3, rank=1, world=2).batch(1)
    assert np.array_equal(np.concatenate([r0[0], r1[0]]), first[1][0])
    val = ValidationSet(corpus.validation, 32, 2048)
    assert len(val) == 2048 // 32
    _, _, cats = val[0]
    assert cats.max() < len(corpus.validation.names)
    # three sequences over two ranks: rank 1 pads its second with a sequence validation leaves out
    halves = [ValidationSet(corpus.validation, 32, 3 * 32, rank=r, world=2) for r in range(2)]
    assert [len(h) for h in halves] == [2, 2]
    assert torch.equal(halves[1][0][0], val[1][0]) and torch.equal(halves[0][1][0], val[2][0])
    assert (halves[1][1][2] == PADDING).all() and (halves[0][1][2] != PADDING).all()
    assert 0 < corpus.validation.unigram_entropy() < np.log(512)


def test_data_config_names_the_field():
    with pytest.raises(ConfigError) as err:
        DataConfig(source="files")
    assert err.value.field == "path"
    with pytest.raises(ConfigError) as err:
        DataConfig(vocab_size=100)
    assert err.value.field == "vocab_size"


def test_hub_dataset_fails_clearly_without_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    pytest.importorskip("datasets")
    with pytest.raises(RuntimeError, match="cannot stream dataset .* Without the hub"):
        next(iter_hub_documents("no-such-org/no-such-dataset-xyz", None, "train", "text"))


@needs_shared("data", "text", "gcide.jsonl.gz")
def test_the_real_text_corpus_reads_as_documents():
    docs = iter_file_documents(SHARED / "data" / "text" / "gcide.jsonl.gz")
    first = [next(docs) for _ in range(50)]
    assert all(isinstance(d, str) and d for d in first)


def test_a_shorter_budget_is_cut_from_a_cached_longer_stream_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAM_LAB_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(vocab_size=512, tokenizer_docs=300, seq_len=32)
    long = load_corpus(cfg, 150_000, 1024)  # a few batches of 256 documents
    short = load_corpus(cfg, 50_000, 1024)  # served by the cached longer stream
    assert len(list((tmp_path / "cache" / "tokens").glob("*.npz"))) == 1
    fresh = materialise(cfg, short.tokenizer, "train", 50_000)
    assert np.array_equal(short.train.tokens, fresh.tokens) and short.train.documents == fresh.documents
    assert np.array_equal(short.train.categories, fresh.categories)
    assert len(short.train.tokens) < len(long.train.tokens)
    longer = load_corpus(cfg, 250_000, 1024)  # the cache is too short: materialised again, and kept
    assert np.array_equal(longer.train.tokens[:len(long.train.tokens)], long.train.tokens)
    assert np.array_equal(load_corpus(cfg, 150_000, 1024).train.tokens, long.train.tokens)
