"""Files every stage writes the same way: JSON and text written atomically, and locks that never go stale."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout


class Busy(RuntimeError):
    """Another live process holds the lock."""


def write_through_temp(path: str | Path, write, overwrite: bool = True, binary: bool = False) -> Path:
    """Write with ``write(file)`` (opened in text mode, or binary) to a temporary file in ``path``'s folder, fsync,
    then rename (or, with ``overwrite=False``, hard-link, which fails if another writer got there first): a reader
    never sees half a file. The file is readable by all, as results shared on a cluster must be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists and is never overwritten")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private to its owner
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_atomic(path: str | Path, payload: Any, overwrite: bool = True) -> Path:
    """Write ``payload`` as JSON, never half-written. NaN and infinities are written as null (they are not JSON).

    With ``overwrite=False`` an existing file is left untouched and :class:`FileExistsError` is raised.
    """
    text = json.dumps(_finite(payload), indent=1, sort_keys=True, default=_jsonable, allow_nan=False)
    return write_through_temp(path, lambda f: f.write(text), overwrite)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_through_temp(path, lambda f: f.write(text))


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return _finite(x.item())
    if isinstance(x, (set, tuple)):
        return _finite(list(x))
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if x == x and x not in (float("inf"), float("-inf")) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def waiting_lock(path: str | Path) -> FileLock:
    """An exclusive lock on the file ``path`` (its folder created), waiting for any other holder; the kernel
    releases it when its holder dies, so it never goes stale. Use as a context manager."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), thread_local=False)


class exclusive_lock:
    """An exclusive lock on the file ``path`` taken without waiting: ``busy(message)`` (:class:`Busy` unless given)
    if a live process holds it. The holder writes its host, pid and SLURM job id to ``<path>.holder``."""

    def __init__(self, path: str | Path, busy: type[Exception] = Busy, message: str | None = None):
        self.path = Path(path)
        self.busy, self.message = busy, message or f"{self.path} is held by another process"
        self.holder = self.path.with_name(self.path.name + ".holder")
        self._lock = FileLock(str(self.path), timeout=0, thread_local=False)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise self.busy(self.message) from None
        self.holder.write_text(f"{os.uname().nodename} {os.getpid()} {os.environ.get('SLURM_JOB_ID', '')}\n")
        return self

    def __exit__(self, *exc):
        self._lock.release()
