"""Real-text sources: local files and folders (txt, jsonl, parquet; gzip too) and Hugging Face datasets by name.

Every source yields documents (strings). The train/validation split is by document and by content: a document goes
to validation when a hash of (seed, its text) falls below ``val_fraction`` — stable under reordering or adding files,
and a document can never sit on both sides.

A folder's files are read together, each at the pace of its size, so that any prefix of the stream (the
tokenizer's documents, the first ``val_tokens`` of validation, a capped training split) samples every file in
proportion to its size instead of the first files by name.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import io
import json
from collections.abc import Iterator
from pathlib import Path

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


def is_validation(text: str, seed: int, val_fraction: float) -> bool:
    h = hashlib.blake2b(f"{seed}|".encode() + text.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < val_fraction


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _base_suffix(p) in SUFFIXES)
        if found:
            return found
        raise FileNotFoundError(f"{path} holds no {', '.join(SUFFIXES)} files (gzip allowed)")
    raise FileNotFoundError(f"data.path {path} does not exist")


def files_fingerprint(path: str | Path) -> str:
    """A hash of the files a ``files`` source reads, names and bytes: a corpus rebuilt from updated packages under
    the same path gets another, and with it another token cache and another version in the report."""
    root = Path(path)
    h = hashlib.sha256()
    for f in _files(root):
        h.update(str(f.relative_to(root) if f != root else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _text_bytes(f: Path) -> int:
    """A file's size as text: for gzip the trailer's ISIZE (exact for one member under 4 GiB, a pace otherwise)."""
    if f.suffix != ".gz":
        return f.stat().st_size
    with open(f, "rb") as fh:
        fh.seek(-4, io.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def _file_documents(f: Path, text_field: str, txt_split: str) -> Iterator[tuple[str, float]]:
    """(document, share of the file read so far) pairs of one file."""
    kind = _base_suffix(f)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(f, columns=[text_field]).column(text_field).to_pylist()
        yield from ((t, (n + 1) / len(rows)) for n, t in enumerate(rows) if t)
        return
    size, done = max(_text_bytes(f), 1), 0
    with (gzip.open(f, "rb") if f.suffix == ".gz" else open(f, "rb")) as fh:
        if txt_split == "file" and kind == ".txt":
            text = fh.read().decode("utf-8").strip()
            if text:
                yield text, 1.0
            return
        block: list[str] = []
        for n, raw in enumerate(fh, 1):
            done += len(raw)
            line = raw.decode("utf-8").replace("\r\n", "\n")
            if kind in (".jsonl", ".json"):
                if line.strip():
                    try:
                        text = json.loads(line)[text_field]
                    except (json.JSONDecodeError, KeyError, TypeError) as err:
                        raise ValueError(f"{f}:{n}: expected a JSON object with field {text_field!r} ({err})")
                    if text:
                        yield text, done / size
            elif txt_split == "line" or line == "\n":  # a line, or the empty line that ends a block
                text = (line if txt_split == "line" else "".join(block)).strip()
                block = []
                if text:
                    yield text, done / size
            else:
                block.append(line)
        text = "".join(block).strip()
        if text:
            yield text, 1.0


def iter_file_documents(path: str | Path, text_field: str = "text", txt_split: str = "blank_line") -> Iterator[str]:
    """Documents of a file or folder: one per JSON line / parquet row (``text_field``), and for .txt files one per
    file, line or blank-line-separated block (``txt_split``). A folder's files interleave: the next document always
    comes from the file read least far, as a share of its size (ties by name)."""
    files = _files(Path(path))
    readers = [_file_documents(f, text_field, txt_split) for f in files]
    heap = [(0.0, i) for i in range(len(readers))]
    while heap:
        _, i = heapq.heappop(heap)
        doc = next(readers[i], None)
        if doc is not None:
            text, share = doc
            yield text
            heapq.heappush(heap, (share, i))


def iter_hub_documents(name: str, subset: str | None, split: str, text_field: str) -> Iterator[str]:
    """Stream a Hugging Face dataset by name; a clear error where the hub or the `datasets` package is missing."""
    try:
        import datasets
    except ImportError:
        raise RuntimeError("data.source=hub needs the `datasets` package: pip install 'engram-lab[hub]'") from None
    try:
        for row in datasets.load_dataset(name, subset, split=split, streaming=True):
            yield row[text_field]
    except (ConnectionError, OSError, ValueError) as err:
        raise RuntimeError(f"cannot stream dataset {name!r} from the Hugging Face hub ({err}). Without the hub, "
                           "use data.source=files with data.path pointing at local files") from None
