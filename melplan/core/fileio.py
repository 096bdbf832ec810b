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


# -- reading untrusted files ------------------------------------------------------------------
#
# Every file melplan reads (cluster, catalog entry, plan, trace, sweep, search state) goes through
# these readers, so the limits below hold for all of them and for `check` alike.

MAX_FILE_BYTES = 64 << 20  # larger input files are refused before they are read
MAX_DEPTH = 64  # nesting of lists/mappings in a JSON or YAML document
MAX_YAML_NODES = 2_000_000  # nodes of a YAML document with every alias expanded (billion laughs)
MAX_INT_DIGITS = 20  # integers in JSON; larger magnitudes are refused (nothing melplan reads needs more)


def _error_class(error: type | None) -> type:
    from melplan.core.errors import InputError

    return error or InputError


def read_bytes_limited(
    path: str | os.PathLike, *, error: type | None = None, fix: str = "check the path", limit: int = MAX_FILE_BYTES
) -> bytes:
    """The bytes of ``path``; raises ``error`` (an InputError subclass) when it cannot be read, is not
    a regular file or is larger than ``limit``."""
    err = _error_class(error)
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            st = os.fstat(fh.fileno())
            import stat

            if not stat.S_ISREG(st.st_mode):
                raise err("not a regular file", file=str(p), fix=fix)
            data = fh.read(limit + 1)
    except IsADirectoryError:
        raise err("is a directory, not a file", file=str(p), fix=fix) from None
    except OSError as exc:
        raise err(f"cannot read the file ({exc.strerror or exc})", file=str(p), fix=fix) from None
    if len(data) > limit:
        raise err(
            f"the file is larger than {limit >> 20} MiB", file=str(p), fix="pass the right file (this one is too big)"
        )
    return data


def decode_utf8(data: bytes, *, source: str | None, error: type | None = None) -> str:
    """Strict UTF-8 (a leading byte-order mark is dropped); raises ``error`` naming the first bad byte."""
    err = _error_class(error)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        utf16 = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise err(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} cannot be decoded{utf16}",
            file=source,
            fix="save the file as UTF-8 text (binary files are not accepted)",
        ) from None


def read_text_limited(
    path: str | os.PathLike, *, error: type | None = None, fix: str = "check the path", limit: int = MAX_FILE_BYTES
) -> str:
    """:func:`read_bytes_limited` then :func:`decode_utf8`."""
    return decode_utf8(read_bytes_limited(path, error=error, fix=fix, limit=limit), source=str(path), error=error)


def _check_depth(obj: Any, *, source: str | None, error: type, what: str) -> None:
    """Iteratively: refuse documents nested deeper than :data:`MAX_DEPTH`."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: list[Any] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth >= MAX_DEPTH:
            raise error(
                f"{what} is nested deeper than {MAX_DEPTH} levels",
                file=source,
                fix="flatten the document; no melplan file nests that deep",
            )
        stack.extend((c, depth + 1) for c in children)


def parse_json_text(text: str, *, source: str | None, error: type | None = None, what: str = "the JSON") -> Any:
    """Strict JSON: no NaN/Infinity, floats finite, integers of at most :data:`MAX_INT_DIGITS` digits,
    nesting at most :data:`MAX_DEPTH`. Raises ``error`` with the line and column of a syntax error."""
    err = _error_class(error)

    def bad_constant(name: str) -> Any:
        raise err(
            f"{what} holds {name}, which is not a JSON number",
            file=source,
            fix="write a finite number, or null where the value is unknown",
        )

    def parse_int(s: str) -> int:
        if len(s.lstrip("-")) > MAX_INT_DIGITS:
            raise err(
                f"{what} holds an integer with {len(s.lstrip('-'))} digits",
                file=source,
                fix=f"use integers of at most {MAX_INT_DIGITS} digits",
            )
        return int(s)

    def parse_float(s: str) -> float:
        v = float(s)
        if not math.isfinite(v):
            raise err(
                f"{what} holds the number {s[:40]}, too large for a float", file=source, fix="write a finite number"
            )
        return v

    try:
        data = json.loads(text, parse_constant=bad_constant, parse_int=parse_int, parse_float=parse_float)
    except json.JSONDecodeError as exc:
        raise err(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            file=source,
            fix="repair the JSON syntax or regenerate the file with melplan",
        ) from None
    except RecursionError:
        raise err(
            f"{what} is nested too deeply to read",
            file=source,
            fix="flatten the document; no melplan file nests that deep",
        ) from None
    _check_depth(data, source=source, error=err, what=what)
    return data


def load_json_file(path: str | os.PathLike, *, error: type | None = None, fix: str = "check the path") -> Any:
    """Read, decode and parse a JSON file with the limits of :func:`parse_json_text`."""
    return parse_json_text(read_text_limited(path, error=error, fix=fix), source=str(path), error=error)


def parse_yaml_text(text: str, *, source: str | None, error: type | None = None) -> Any:
    """``yaml.safe_load`` with bounds: a document whose aliases would expand to more than
    :data:`MAX_YAML_NODES` nodes (a "billion laughs"), a recursive alias or nesting deeper than
    :data:`MAX_DEPTH` is refused before anything is built.  Raises ``error`` naming line and column."""
    import yaml

    err = _error_class(error)
    # the C parser when libyaml is there (10x faster on large clusters), the same safe subset of YAML
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise err("the YAML is nested too deeply to read", file=source, fix="flatten the document") from None
        if node is not None:
            _check_yaml_nodes(node, source=source, error=err)
        try:
            data = loader.construct_document(node) if node is not None else None
        except RecursionError:
            raise err("the YAML is nested too deeply to read", file=source, fix="flatten the document") from None
        except ValueError as exc:  # e.g. an integer beyond Python's digit limit
            raise err(f"not valid YAML ({exc})", file=source, fix="write ordinary numbers") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise err(
            f"not valid YAML{where} ({problem})",
            file=source,
            fix="repair the YAML syntax (indentation, colons, brackets)",
        ) from None
    finally:
        loader.dispose()
    return data


def _check_yaml_nodes(root: Any, *, source: str | None, error: type) -> None:
    """Count the nodes of a composed YAML graph with aliases expanded (memoised, so linear in the
    graph), refusing cycles, too many nodes and too much depth."""
    import yaml

    size: dict[int, int] = {}
    depth_of: dict[int, int] = {}
    in_progress: set[int] = set()
    # iterative post-order walk
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            in_progress.discard(key)
            kids = _yaml_children(node, yaml)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth_of[key] = 1 + max((depth_of[id(k)] for k in kids), default=0)
            if size[key] > MAX_YAML_NODES:
                raise error(
                    f"the YAML expands to more than {MAX_YAML_NODES} values (aliases such as *a repeat "
                    "their anchor's whole content)",
                    file=source,
                    fix="write the values out instead of nesting aliases",
                )
            if depth_of[key] > MAX_DEPTH:
                raise error(
                    f"the YAML is nested deeper than {MAX_DEPTH} levels", file=source, fix="flatten the document"
                )
            continue
        if key in size:
            continue
        if key in in_progress:
            raise error("the YAML holds a recursive alias", file=source, fix="remove the alias that refers to itself")
        in_progress.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _yaml_children(node, yaml) if id(k) not in size)


def _yaml_children(node: Any, yaml: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    return []


def load_yaml_file(path: str | os.PathLike, *, error: type | None = None, fix: str = "check the path") -> Any:
    """Read, decode and parse a YAML file with the bounds of :func:`parse_yaml_text`."""
    return parse_yaml_text(read_text_limited(path, error=error, fix=fix), source=str(path), error=error)
