"""Where analysis outputs go, and writing text outputs atomically (as experiments.records does for JSON)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable


def analysis_dir(results: str | Path, sweeps: Iterable[str]) -> Path:
    """``results/<sweep>`` for one sweep; ``results/_combined/<a>+<b>...`` when several are pooled."""
    names = sorted(sweeps)
    if len(names) == 1:
        return Path(results) / names[0]
    return Path(results) / "_combined" / "+".join(names)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text through a temporary file in the same folder and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
