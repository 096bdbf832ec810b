"""Failure traces: read and validate CSV traces, generate seeded ones from MTBF/MTTR, with correlated
outages of failure domains (no torch).  Real public records: :mod:`melplan.sim.realtraces`.

A trace is a CSV file with the header ``time_s,server,state``: seconds from the start, a server
name of the cluster or a failure domain written ``key=value`` (every server labelled ``key: value``;
a server is up when it and every domain it is in are up), and ``down`` or ``up``.
Every server is up at time 0.  Rows may come in any order (they are sorted by time, keeping file
order for ties); a repeated state (``down`` for a server already down) changes nothing.
Lines starting with ``#`` and blank lines are skipped.

Generated traces (:func:`generate_trace`) alternate exponential up and down times per server:
mean up time ``mtbf_h``, mean down time ``mttr_h``.  A server given only ``failure_prob`` p gets
``mttr_h = default_mttr_h`` (1 h) and ``mtbf_h = mttr_h * (1 - p) / p``, so it is down a fraction p
of the time, as its probability says; p = 0 never fails.  Each server starts in its stationary
state (down with probability p) and draws from its own stream seeded by ``(seed, name)``, so adding
a server does not change the others' failures.  Times are rounded to the millisecond so a written
trace replays exactly.

Failure domains (DESIGN §1, the cluster's ``failure_domains:``) alternate the same way from their own
MTBF/MTTR (or failure probability), each from its own stream seeded by ``(seed, "key=value")``; while
a domain is down all its servers are down together (correlated outages).
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from melplan.core.cluster import Cluster
from melplan.core.errors import TraceError
from melplan.core.fileio import atomic_write_text

HEADER = ("time_s", "server", "state")
STATES = ("down", "up")
DEFAULT_MTTR_H = 1.0


@dataclass(frozen=True)
class TraceEvent:
    time_s: float
    server: str
    state: str  # "down" | "up"


@dataclass(frozen=True)
class Trace:
    """Events sorted by time over ``[0, horizon_s]``; ``source`` says where they came from."""

    events: tuple[TraceEvent, ...]
    horizon_s: float
    source: str
    seed: int | None = None
    dropped_after_horizon: int = 0
    mapping: tuple[tuple[str, str], ...] = ()  # (server, node of the real record it plays)

    @property
    def hours(self) -> float:
        return self.horizon_s / 3600.0

    def servers(self) -> list[str]:
        return list(dict.fromkeys(e.server for e in self.events))

    def down_time_s(self) -> dict[str, float]:
        """Total time each server is down within the horizon."""
        out: dict[str, float] = {}
        since: dict[str, float] = {}
        for e in self.events:
            if e.state == "down" and e.server not in since:
                since[e.server] = e.time_s
            elif e.state == "up" and e.server in since:
                out[e.server] = out.get(e.server, 0.0) + e.time_s - since.pop(e.server)
        for s, t in since.items():
            out[s] = out.get(s, 0.0) + self.horizon_s - t
        return out


def parse_trace(
    text: str, *, servers: Iterable[str] | None = None, horizon_s: float | None = None, source: str = "<trace>"
) -> Trace:
    """Parse and validate CSV text.  Raises :class:`TraceError` naming the line, field and fix.

    ``servers``: the names allowed (the cluster's); ``horizon_s``: the end of the simulation (events
    after it are dropped and counted), default the time of the last event.
    """
    allowed = None if servers is None else set(servers)
    rows = [
        (i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows:
        raise TraceError(
            "the trace is empty",
            file=source,
            field="time_s,server,state",
            fix="write a header 'time_s,server,state' and one row per change, e.g. '3600,edge-a,down'",
        )
    lineno, head = rows[0]
    header = tuple(c.strip().lower() for c in next(csv.reader([head])))
    if header != HEADER:
        raise TraceError(
            f"line {lineno}: expected the header 'time_s,server,state', got {head.strip()!r}",
            file=source,
            field="header",
            fix="make the first line exactly: time_s,server,state",
        )
    events: list[tuple[float, int, TraceEvent]] = []
    for lineno, line in rows[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        if len(cells) != 3:
            raise TraceError(
                f"line {lineno}: expected 3 columns (time_s,server,state), got {len(cells)}: {line.strip()!r}",
                file=source,
                field="row",
                fix="write one 'seconds,server,down|up' per line",
            )
        t_raw, server, state = cells
        try:
            t = float(t_raw)
        except ValueError:
            t = math.nan
        if not math.isfinite(t) or t < 0:
            raise TraceError(
                f"line {lineno}: time_s must be a finite number of seconds >= 0, got {t_raw!r}",
                file=source,
                field="time_s",
                fix="give seconds since the start of the trace, e.g. 3600",
            )
        if allowed is not None and server not in allowed:
            known = ", ".join(sorted(allowed)[:10])
            raise TraceError(
                f"line {lineno}: unknown server {server!r}",
                file=source,
                field="server",
                fix=f"use server names of the cluster file, or key=value for a failure domain ({known})",
            )
        if not server:
            raise TraceError(f"line {lineno}: empty server name", file=source, field="server", fix="name a server")
        st = state.lower()
        if st not in STATES:
            raise TraceError(
                f"line {lineno}: state must be 'down' or 'up', got {state!r}",
                file=source,
                field="state",
                fix="write down or up",
            )
        events.append((t, len(events), TraceEvent(t, server, st)))
    events.sort(key=lambda e: (e[0], e[1]))
    ordered = [e[2] for e in events]
    if horizon_s is None:
        if not ordered or ordered[-1].time_s <= 0:
            raise TraceError(
                "cannot tell how long the trace lasts (no event after time 0)",
                file=source,
                field="time_s",
                fix="pass --hours to set the simulated horizon",
            )
        horizon_s = ordered[-1].time_s
    kept = tuple(e for e in ordered if e.time_s <= horizon_s)
    return Trace(kept, float(horizon_s), source, None, len(ordered) - len(kept))


def load_trace(
    path: str | os.PathLike, *, servers: Iterable[str] | None = None, horizon_s: float | None = None
) -> Trace:
    """Read a CSV trace file; raises :class:`TraceError` when it is unreadable or malformed."""
    from melplan.core.fileio import read_text_limited

    path = Path(path)
    text = read_text_limited(path, error=TraceError, fix="check the path given to --trace")
    return parse_trace(text, servers=servers, horizon_s=horizon_s, source=str(path))


def trace_to_csv(trace: Trace) -> str:
    out = io.StringIO()
    out.write(f"# {trace.source}\n")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER)
    for e in trace.events:
        w.writerow([f"{e.time_s:.3f}", e.server, e.state])
    return out.getvalue()


def write_trace(trace: Trace, path: str | os.PathLike) -> Path:
    """Write the trace as CSV, atomically."""
    return atomic_write_text(path, trace_to_csv(trace))


def server_rates(cluster: Cluster, *, default_mttr_h: float = DEFAULT_MTTR_H) -> dict[str, tuple[float, float]]:
    """``name -> (mtbf_h, mttr_h)``; mtbf is inf for a server that never fails."""
    out = {}
    for s in cluster.servers:
        if s.mtbf_h is not None:
            out[s.name] = (float(s.mtbf_h), float(s.mttr_h or 0.0))
        elif s.failure_prob <= 0:
            out[s.name] = (math.inf, default_mttr_h)
        else:
            p = s.failure_prob
            out[s.name] = (default_mttr_h * (1 - p) / p, default_mttr_h)
    return out


def domain_names(cluster: Cluster) -> list[str]:
    """Every ``key=value`` label of the cluster's servers (each is a possible failure domain)."""
    return sorted({f"{k}={v}" for s in cluster.servers for k, v in s.labels.items()})


def domain_members(cluster: Cluster, domain: str) -> tuple[str, ...]:
    key, _, value = domain.partition("=")
    return tuple(s.name for s in cluster.servers if s.labels.get(key) == value)


def _rate(spec, default_mttr_h: float) -> tuple[float, float] | None:
    get = spec.get if isinstance(spec, Mapping) else (lambda k, d=None: getattr(spec, k, d))
    mtbf, mttr, p = get("mtbf_h"), get("mttr_h"), get("failure_prob")
    if mtbf is not None:
        return float(mtbf), float(mttr or 0.0)
    if p is None or p <= 0:
        return None
    return default_mttr_h * (1 - p) / p, default_mttr_h


def domain_rates(cluster: Cluster, *, default_mttr_h: float = DEFAULT_MTTR_H) -> dict[str, tuple[float, float]]:
    """``"key=value" -> (mtbf_h, mttr_h)`` of the cluster's failure domains (``failure_domains:`` of
    the cluster file: ``{key: {value: {failure_prob | mtbf_h + mttr_h}}}``); empty without any.  A
    domain given only ``failure_prob`` p gets ``mttr_h = default_mttr_h``, as servers do."""
    spec = getattr(cluster, "failure_domains", None) or {}
    out: dict[str, tuple[float, float]] = {}
    if isinstance(spec, Mapping):
        items = [(k, v, d) for k, vals in spec.items() for v, d in (vals or {}).items()]
    else:  # a sequence of domain objects with key, value and rates
        items = [(getattr(d, "key", None) or getattr(d, "label", None), getattr(d, "value", None), d) for d in spec]
    for k, v, d in items:
        r = _rate(d, default_mttr_h)
        if r is not None and k is not None and v is not None:
            out[f"{k}={v}"] = r
    return out


def effective_events(events: Sequence[TraceEvent], cluster: Cluster) -> list[TraceEvent]:
    """Server events only: domain events (``key=value``) expanded, so a server is down while it or
    any domain it is in is down.  Each server's changes of state, in time order."""
    members = {d: domain_members(cluster, d) for d in {e.server for e in events if "=" in e.server}}
    self_down: set[str] = set()
    dom_down: set[str] = set()
    state: dict[str, bool] = {}
    doms_of: dict[str, list[str]] = {}
    for d, ms in members.items():
        for m in ms:
            doms_of.setdefault(m, []).append(d)
    out = []
    for e in events:
        if "=" in e.server:
            (dom_down.add if e.state == "down" else dom_down.discard)(e.server)
            touched: Sequence[str] = members.get(e.server, ())
        else:
            (self_down.add if e.state == "down" else self_down.discard)(e.server)
            touched = (e.server,)
        for s in touched:
            down = s in self_down or any(d in dom_down for d in doms_of.get(s, ()))
            if state.get(s, False) != down:
                state[s] = down
                out.append(TraceEvent(e.time_s, s, "down" if down else "up"))
    return out


def generate_trace(
    cluster: Cluster,
    hours: float,
    seed: int,
    *,
    default_mttr_h: float = DEFAULT_MTTR_H,
    servers: Sequence[str] | None = None,
    domains: Mapping[str, tuple[float, float]] | None = None,
) -> Trace:
    """A seeded trace over ``hours`` for the cluster's servers (or the ``servers`` named) and its
    failure domains (``domains``: ``"key=value" -> (mtbf_h, mttr_h)``, default :func:`domain_rates`).

    Raises :class:`TraceError` for a horizon that is not a positive number or an unknown domain.
    """
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours) or hours <= 0:
        raise TraceError(
            f"the horizon must be a positive number of hours, got {hours!r}",
            field="hours",
            fix="pass --hours, e.g. --hours 720 for a month",
        )
    if default_mttr_h <= 0:
        raise TraceError(
            f"default_mttr_h must be > 0, got {default_mttr_h!r}",
            field="default_mttr_h",
            fix="give a mean repair time in hours",
        )
    horizon = float(hours) * 3600.0
    rates = server_rates(cluster, default_mttr_h=default_mttr_h)
    names = list(servers) if servers is not None else cluster.names
    doms = dict(domain_rates(cluster, default_mttr_h=default_mttr_h) if domains is None else domains)
    for d in doms:
        if not domain_members(cluster, d):
            raise TraceError(
                f"failure domain {d!r} has no server",
                field="failure_domains",
                fix="name a label key and value the cluster's servers carry, e.g. zone=north",
            )
    rates.update(doms)
    names += sorted(doms)
    events: list[tuple[float, int, TraceEvent]] = []
    order = 0
    for name in names:
        mtbf, mttr = rates[name]
        if math.isinf(mtbf) or mttr <= 0:
            continue
        rng = random.Random(f"melplan-trace:{seed}:{name}")
        down = rng.random() < mttr / (mtbf + mttr)
        t = 0.0
        if down:
            events.append((0.0, order, TraceEvent(0.0, name, "down")))
            order += 1
        while True:
            mean_h = mttr if down else mtbf
            t = round(t + rng.expovariate(1.0 / mean_h) * 3600.0, 3)
            if t > horizon:
                break
            down = not down
            events.append((t, order, TraceEvent(t, name, "down" if down else "up")))
            order += 1
    events.sort(key=lambda e: (e[0], e[1]))
    return Trace(
        tuple(e[2] for e in events),
        horizon,
        f"generated: seed={seed}, hours={hours:g}, default_mttr_h={default_mttr_h:g}"
        + (f", domains {', '.join(sorted(doms))}" if doms else ""),
        seed,
    )


def observed_events(events: Sequence[TraceEvent], detection_s: float) -> list[TraceEvent]:
    """What a heartbeat monitor reports: a change is seen ``detection_s`` after it happens, and only
    if it lasts that long (a shorter flap is never seen).  Repeated states are dropped."""
    per: dict[str, list[TraceEvent]] = {}
    for e in events:
        seq = per.setdefault(e.server, [])
        last = seq[-1].state if seq else "up"
        if e.state != last:
            seq.append(e)
    out: list[tuple[float, int, TraceEvent]] = []
    order = 0
    for server, seq in per.items():
        seen = "up"
        for i, e in enumerate(seq):
            t_next = seq[i + 1].time_s if i + 1 < len(seq) else math.inf
            if t_next > e.time_s + detection_s and e.state != seen:
                out.append((e.time_s + detection_s, order, TraceEvent(e.time_s + detection_s, server, e.state)))
                seen = e.state
            order += 1
    out.sort(key=lambda x: (x[0], x[1]))
    return [x[2] for x in out]
