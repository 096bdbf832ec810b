"""Replay real public failure records: LANL HPC failures and Grid'5000 (Failure Trace Archive format).

Both readers turn a published record into a :class:`~melplan.sim.traces.Trace` over the cluster's
servers (no torch; ``.xz`` files are read with :mod:`lzma`).

**Mapping nodes onto servers** (deterministic, named in the trace's ``source`` and ``mapping``):

1. the candidate nodes: LANL, every node of one system (``select``: the system number, default
   :data:`DEFAULT_LANL_SYSTEM`; node numbers ``0 .. nodes-1`` of the record's ``nodes`` column, so
   nodes that never failed count, always up); FTA, every node whose name starts with ``select``
   (default: all 1,288 nodes; ``G1/site1/c1`` keeps one cluster of one site, whose nodes share power
   and network and so fail together);
2. sorted by name (LANL: node number), then ``random.Random("melplan-trace-map:<seed>").sample`` picks
   as many as the cluster has servers; the i-th picked node plays the i-th server of the cluster file.

**Time**: second 0 is the start of the record (LANL: the first problem start of the chosen system;
FTA: the first interval start of the chosen nodes).  The horizon is ``hours`` when given, else the end
of the record.  A node down at second 0 starts down.  Overlapping down intervals of one node are merged.
LANL times are local wall-clock minutes (mm/dd/yyyy hh:mm) read as UTC (no daylight-saving shifts).
"""

from __future__ import annotations

import csv
import io
import lzma
import os
import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from melplan.core.errors import TraceError
from melplan.sim.traces import Trace, TraceEvent

FORMATS = ("csv", "lanl", "fta")
DEFAULT_LANL_SYSTEM = "2"  # 49 nodes and 7,104 failures: the densest record of the 22 systems
MAP_SEED_PREFIX = "melplan-trace-map"


def _read_text(path: str | os.PathLike, what: str) -> str:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise TraceError(
            f"cannot read the file ({exc.strerror})", file=str(p), fix="check the path given to --trace"
        ) from None
    if raw[:6] == b"\xfd7zXZ\x00":
        try:
            raw = lzma.decompress(raw)
        except lzma.LZMAError as exc:
            raise TraceError(
                f"a damaged .xz file ({exc})", file=str(p), fix=f"give the {what} file, compressed or not"
            ) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TraceError("not a text file", file=str(p), fix=f"give the {what} file") from None


def _intervals_to_trace(
    down: dict[str, list[tuple[float, float]]],
    node_of: Sequence[tuple[str, str]],
    start: float,
    end: float,
    hours: float | None,
    source: str,
    seed: int,
) -> Trace:
    """Down intervals (absolute seconds) per node -> a Trace over the servers (relative seconds)."""
    horizon = (end - start) if hours is None else hours * 3600.0
    if not horizon > 0:
        raise TraceError("the record spans no time", file=source, field="--hours", fix="give --hours > 0")
    events: list[tuple[float, int, TraceEvent]] = []
    order = 0
    dropped = 0
    for server, node in node_of:
        merged: list[list[float]] = []
        for a, b in sorted(down.get(node, ())):
            a, b = a - start, b - start
            if b <= 0:
                continue
            a = max(a, 0.0)
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        for a, b in merged:
            if a > horizon:
                dropped += 1
                continue
            events.append((round(a, 3), order, TraceEvent(round(a, 3), server, "down")))
            order += 1
            if b <= horizon:
                events.append((round(b, 3), order, TraceEvent(round(b, 3), server, "up")))
                order += 1
    events.sort(key=lambda e: (e[0], e[1]))
    mapping = tuple(node_of)
    return Trace(tuple(e[2] for e in events), float(horizon), source, seed, dropped, mapping)


def _pick(nodes: Sequence[str], servers: Sequence[str], seed: int, source: str, select: str) -> list[tuple[str, str]]:
    if len(nodes) < len(servers):
        raise TraceError(
            f"the selection {select!r} has {len(nodes)} node(s), the cluster has {len(servers)} servers",
            file=source,
            field="--trace-nodes",
            fix="select more nodes (another system or a shorter name prefix), or use a smaller cluster",
        )
    rng = random.Random(f"{MAP_SEED_PREFIX}:{seed}")
    picked = rng.sample(list(nodes), len(servers))
    return list(zip(servers, picked))


def _lanl_time(text: str, lineno: int, source: str) -> float:
    try:
        dt = datetime.strptime(text.strip(), "%m/%d/%Y %H:%M")
    except ValueError:
        raise TraceError(
            f"line {lineno}: time {text!r} is not mm/dd/yyyy hh:mm",
            file=source,
            field="Prob Started/Prob Fixed",
            fix="give the LANL failure record (LA-UR-05-7318) as published",
        ) from None
    return dt.replace(tzinfo=timezone.utc).timestamp()


def load_lanl(
    path: str | os.PathLike,
    servers: Sequence[str],
    *,
    seed: int = 0,
    select: str | None = None,
    hours: float | None = None,
) -> Trace:
    """The LANL failure records of one system mapped onto ``servers`` (see the module).

    Raises :class:`TraceError` for an unreadable file, a missing column, an unknown system, or a
    system with fewer nodes than servers."""
    src = str(path)
    text = _read_text(path, "LANL failure record (.csv or .csv.xz)")
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None) or []
    cols = {h.strip(): i for i, h in enumerate(header)}
    need = ("System", "nodes", "nodenumz", "Prob Started", "Prob Fixed")
    missing = [c for c in need if c not in cols]
    if missing:
        raise TraceError(
            f"not a LANL failure record: no column(s) {missing}",
            file=src,
            field="header",
            fix="give LA-UR-05-7318-failure-data-1996-2005.csv(.xz), or choose --trace-format csv|fta",
        )
    system = DEFAULT_LANL_SYSTEM if select is None else str(select)
    down: dict[str, list[tuple[float, float]]] = {}
    systems: dict[str, int] = {}
    n_nodes = 0
    first = None
    last = None
    for lineno, row in enumerate(rows, start=2):
        if len(row) <= max(cols[c] for c in need):
            continue
        s = row[cols["System"]].strip()
        systems[s] = systems.get(s, 0) + 1
        if s != system:
            continue
        try:
            n_nodes = max(n_nodes, int(row[cols["nodes"]]))
        except ValueError:
            pass
        a = _lanl_time(row[cols["Prob Started"]], lineno, src)
        b = _lanl_time(row[cols["Prob Fixed"]], lineno, src)
        if b < a:
            continue  # a fix before the start: a clerical error, skipped
        node = row[cols["nodenumz"]].strip()
        down.setdefault(node, []).append((a, b))
        first = a if first is None else min(first, a)
        last = b if last is None else max(last, b)
    if first is None or last is None:
        known = ", ".join(sorted(systems, key=lambda x: (len(x), x)))
        raise TraceError(
            f"no failure of system {system!r} in the record",
            file=src,
            field="--trace-nodes",
            fix=f"give one of the systems: {known}",
        )
    nodes = [str(i) for i in range(max(n_nodes, 1 + max(int(k) for k in down if k.isdigit())))]
    node_of = _pick(nodes, servers, seed, src, f"system {system}")
    source = (
        f"LANL system {system} ({len(nodes)} nodes), nodes {', '.join(n for _, n in node_of)} as "
        f"{', '.join(s for s, _ in node_of)} (mapping seed {seed})"
    )
    return _intervals_to_trace(down, [(s, n) for s, n in node_of], first, last, hours, f"{src}: {source}", seed)


def load_fta(
    path: str | os.PathLike,
    servers: Sequence[str],
    *,
    seed: int = 0,
    select: str | None = None,
    hours: float | None = None,
) -> Trace:
    """The Failure Trace Archive ``event_trace.tab`` (e.g. Grid'5000) mapped onto ``servers``.

    Columns: event_id component_id node_id platform_id node_name event_type event_start_time
    event_stop_time event_end_reason (tab-separated, ``#`` header); event_type 0 = unavailable.
    Raises :class:`TraceError` for an unreadable or malformed file or too few nodes."""
    src = str(path)
    text = _read_text(path, "FTA event_trace.tab (.tab or .tab.xz)")
    prefix = select or ""
    down: dict[str, list[tuple[float, float]]] = {}
    nodes: set[str] = set()
    first = None
    last = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) < 8:
            cells = line.split()
        if len(cells) < 8:
            raise TraceError(
                f"line {lineno}: expected 9 tab-separated columns of an FTA event_trace, got {len(cells)}",
                file=src,
                field="event_trace",
                fix="give the FTA event_trace.tab(.xz), or choose --trace-format csv|lanl",
            )
        name = cells[4].strip()
        if not name.startswith(prefix):
            continue
        try:
            kind = int(cells[5])
            a, b = float(cells[6]), float(cells[7])
        except ValueError:
            raise TraceError(
                f"line {lineno}: event_type and times must be numbers, got {cells[5:8]}",
                file=src,
                field="event_trace",
                fix="give the FTA event_trace.tab as published",
            ) from None
        nodes.add(name)
        first = a if first is None else min(first, a)
        last = b if last is None else max(last, b)
        if kind == 0 and b > a:
            down.setdefault(name, []).append((a, b))
    if first is None or last is None:
        raise TraceError(
            f"no node name starts with {prefix!r}",
            file=src,
            field="--trace-nodes",
            fix="give a node-name prefix such as G1/site1 or G1/site1/c1, or none for every node",
        )
    node_of = _pick(sorted(nodes), servers, seed, src, f"nodes {prefix or '(all)'}*")
    source = (
        f"FTA {len(nodes)} nodes{f' under {prefix}' if prefix else ''}, "
        f"{', '.join(n for _, n in node_of)} as {', '.join(s for s, _ in node_of)} (mapping seed {seed})"
    )
    return _intervals_to_trace(down, node_of, first, last, hours, f"{src}: {source}", seed)


def load_any(
    path: str | os.PathLike,
    fmt: str,
    servers: Iterable[str],
    *,
    seed: int | None = None,
    select: str | None = None,
    hours: float | None = None,
    domains: Iterable[str] = (),
) -> Trace:
    """Read a trace in ``fmt`` (``csv``, ``lanl`` or ``fta``).  Raises :class:`TraceError`."""
    from melplan.sim.traces import load_trace

    servers = list(servers)
    if fmt == "csv":
        if select is not None:
            raise TraceError(
                "--trace-nodes applies to --trace-format lanl|fta only", field="--trace-nodes", fix="drop it"
            )
        return load_trace(path, servers=servers + list(domains), horizon_s=None if hours is None else hours * 3600)
    if fmt == "lanl":
        return load_lanl(path, servers, seed=seed or 0, select=select, hours=hours)
    if fmt == "fta":
        return load_fta(path, servers, seed=seed or 0, select=select, hours=hours)
    raise TraceError(f"unknown trace format {fmt!r}", field="--trace-format", fix=f"use one of: {', '.join(FORMATS)}")
