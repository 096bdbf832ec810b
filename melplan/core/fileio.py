"""Atomic file writes and safe reads shared by every module that touches disk."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file the permissions a plain open() would have, then rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader sees either the old file or the whole new one, never a partial write.
    """

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write_with(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-Infinity) replaced by ``None``, so that it serialises
    as strict JSON (RFC 8259 has no NaN/Infinity).  ``null`` then means "no finite value": undefined
    (NaN, e.g. a ratio to a reference that does not exist) or unbounded (infinity, e.g. the latency
    between servers no path connects).  Tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if type(obj).__module__ == "numpy":
        item = getattr(obj, "item", None)
        if item is not None and getattr(obj, "ndim", 0) == 0:
            return strict_json(item())
        tolist = getattr(obj, "tolist", None)
        if tolist is not None:
            return strict_json(tolist())
    return obj


def dumps_strict(obj: Any, *, indent: int | None = 2) -> str:
    """One strict JSON document (see :func:`strict_json`); raises ValueError for what JSON cannot hold."""
    return json.dumps(strict_json(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, strict: bool = False) -> Path:
    """Write ``obj`` as indented JSON; ``strict``: non-finite floats become null (:func:`strict_json`)."""
    text = dumps_strict(obj) if strict else json.dumps(obj, indent=2, sort_keys=False)
    return atomic_write_text(path, text + "\n")


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Let ``writer(tmp_path)`` produce a file (for example ``torch.save`` or ``savefig``), then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        _publish(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks. Raises OSError when it cannot be read."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
