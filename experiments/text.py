"""Real-text sources: local files and folders (txt, jsonl, parquet; gzip too) and Hugging Face datasets by name.

Every source yields documents (strings). The train/validation split is by document and by content: a document goes
to validation when a hash of (seed, its text) falls below ``val_fraction`` — stable under reordering or adding files,
and a document can never sit on both sides.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


def is_validation(text: str, seed: int, val_fraction: float) -> bool:
    h = hashlib.blake2b(f"{seed}|".encode() + text.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < val_fraction


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


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


def iter_file_documents(path: str | Path, text_field: str = "text", txt_split: str = "blank_line") -> Iterator[str]:
    """Documents of a file or folder: one per JSON line / parquet row (``text_field``), and for .txt files one per
    file, line or blank-line-separated block (``txt_split``)."""
    for f in _files(Path(path)):
        kind = _base_suffix(f)
        if kind == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(f, columns=[text_field])
            yield from (t for t in table.column(text_field).to_pylist() if t)
        elif kind in (".jsonl", ".json"):
            with _open_text(f) as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            text = json.loads(line)[text_field]
                        except (json.JSONDecodeError, KeyError, TypeError) as err:
                            raise ValueError(f"{f}:{n}: expected a JSON object with field {text_field!r} ({err})")
                        if text:
                            yield text
        else:
            with _open_text(f) as fh:
                content = fh.read()
            if txt_split == "file":
                parts = [content]
            elif txt_split == "line":
                parts = content.splitlines()
            else:
                parts = content.split("\n\n")
            yield from (p.strip() for p in parts if p.strip())


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
