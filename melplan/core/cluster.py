"""Edge clusters: servers, links and workload, validated from YAML (no torch).

See docs/cluster.md for the file reference.  Links form a graph: with a ``default`` link every pair
of servers is connected directly (overrides change single pairs); with ``default: null`` only the
listed links exist and traffic takes multi-hop paths.  Path latency is the sum along the path of
least latency; path bandwidth is the narrowest link on the widest of the least-latency paths.
Paths are computed per source on demand (Dijkstra, O(E log V) each, cached), never all pairs.

Failure domains (``failure_domains:``, DESIGN §3) group servers by a label value (``zone: hall``);
a domain that is down takes every server in it down.  A server is up when it and every domain it
belongs to are up; all of these fail independently.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from melplan.core.errors import ClusterError
from melplan.core.fields import FieldChecker

MIN_MTBF_H = 1 / 60  # a server that fails more often than once a minute is not a server
MAX_FAILURE_PROB = 0.99  # a server down more than 99% of the time should be left out of the file
SERVER_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
DEFAULT_LINK = {"latency_ms": 1.0, "bandwidth_mbps": 1000.0}


@dataclass(frozen=True)
class Server:
    name: str
    memory_mb: float  # MiB available for model weights and activations
    compute_gmacs: float  # sustained 10^9 multiply-adds per second
    failure_prob: float  # probability of being down at a random instant
    mtbf_h: float | None = None
    mttr_h: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> float:
        return self.memory_mb * (1 << 20)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "memory_mb": self.memory_mb, "compute_gmacs": self.compute_gmacs}
        if self.mtbf_h is not None:
            d.update(mtbf_h=self.mtbf_h, mttr_h=self.mttr_h)
        else:
            d["failure_prob"] = self.failure_prob
        if self.labels:
            d["labels"] = dict(self.labels)
        return d


@dataclass(frozen=True)
class Link:
    latency_ms: float
    bandwidth_mbps: float

    def transfer_ms(self, nbytes: float) -> float:
        """Latency plus serialisation time of ``nbytes`` over this link (0 on the same server;
        infinite between servers that no path connects, e.g. after ``Cluster.without``)."""
        if nbytes <= 0 or math.isinf(self.bandwidth_mbps):
            return self.latency_ms
        if self.bandwidth_mbps <= 0:
            return math.inf
        return self.latency_ms + nbytes * 8 / (self.bandwidth_mbps * 1e3)


@dataclass(frozen=True)
class FailureDomain:
    """The servers whose label ``key`` equals ``value``: down together with probability ``failure_prob``."""

    key: str
    value: str
    failure_prob: float
    mtbf_h: float | None = None
    mttr_h: float | None = None

    @property
    def name(self) -> str:
        """``key=value``, e.g. ``zone=hall``."""
        return f"{self.key}={self.value}"

    def contains(self, server: Server) -> bool:
        return server.labels.get(self.key) == self.value

    def to_dict(self) -> dict[str, Any]:
        if self.mtbf_h is not None:
            return {"mtbf_h": self.mtbf_h, "mttr_h": self.mttr_h}
        return {"failure_prob": self.failure_prob}


@dataclass(frozen=True)
class Workload:
    rate_rps: float
    latency_slo_ms: float | None = None


@dataclass(frozen=True)
class Cluster:
    servers: tuple[Server, ...]
    workload: Workload
    default_link: Link | None = Link(**DEFAULT_LINK)
    overrides: tuple[tuple[str, str, Link], ...] = ()
    ingress: str | None = None
    source: str | None = field(default=None, compare=False)
    failure_domains: tuple[FailureDomain, ...] = ()

    @cached_property
    def index(self) -> dict[str, int]:
        return {s.name: i for i, s in enumerate(self.servers)}

    @property
    def complete(self) -> bool:
        """Every pair of servers has a direct link (``links.default`` is set)."""
        return self.default_link is not None

    @cached_property
    def _domains_of(self) -> dict[str, tuple[FailureDomain, ...]]:
        out: dict[str, tuple[FailureDomain, ...]] = {}
        for s in self.servers:
            ds = tuple(d for d in self.failure_domains if d.contains(s))
            if ds:
                out[s.name] = ds
        return out

    def domains_of(self, name: str) -> tuple[FailureDomain, ...]:
        """The failure domains server ``name`` belongs to (empty when none)."""
        return self._domains_of.get(name, ())

    def domain_members(self, domain: FailureDomain) -> tuple[str, ...]:
        return tuple(s.name for s in self.servers if domain.contains(s))

    def up_probability(self, name: str) -> float:
        """P(server up): its own and every one of its domains' up probabilities multiplied."""
        q = 1.0 - self.server(name).failure_prob
        for d in self.domains_of(name):
            q *= 1.0 - d.failure_prob
        return q

    @cached_property
    def _adjacency(self) -> tuple[dict[int, tuple[int, ...]], dict[int, dict[int, Link]]]:
        """Sparse part of the graph: override links per server index (both directions)."""
        nbrs: dict[int, dict[int, Link]] = {}
        for a, b, link in self.overrides:
            i, j = self.index[a], self.index[b]
            nbrs.setdefault(i, {})[j] = link
            nbrs.setdefault(j, {})[i] = link
        return {i: tuple(sorted(v)) for i, v in nbrs.items()}, nbrs

    def neighbours(self, name: str) -> tuple[str, ...]:
        """Servers with a direct link to ``name`` (every other server when ``links.default`` is set)."""
        names = self._name_tuple
        if self.complete:
            return tuple(n for n in names if n != name)
        adj, _ = self._adjacency
        return tuple(names[j] for j in adj.get(self.index[name], ()))

    @cached_property
    def _name_tuple(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.servers)

    @cached_property
    def memo(self) -> dict[str, Any]:
        """Per-cluster cache of derived structures (block-cut tree, interchange classes, ...)."""
        return {}

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.servers]

    def server(self, name: str) -> Server:
        try:
            return self.servers[self.index[name]]
        except KeyError:
            raise ClusterError(
                f"unknown server '{name}'",
                file=self.source,
                field="servers",
                fix=f"use one of: {', '.join(self.names[:10])}",
            ) from None

    def without(self, names: Iterable[str]) -> Cluster:
        """The same cluster with some servers removed (links and ingress kept where possible)."""
        gone = set(names)
        keep = tuple(s for s in self.servers if s.name not in gone)
        ov = tuple(o for o in self.overrides if o[0] not in gone and o[1] not in gone)
        ingress = self.ingress if self.ingress not in gone else None
        return replace(self, servers=keep, overrides=ov, ingress=ingress)

    def with_servers(self, servers: Iterable[Server]) -> Cluster:
        return replace(self, servers=tuple(self.servers) + tuple(servers))

    def graph(self):
        """The link graph as a networkx Graph (edge attributes latency_ms, bandwidth_mbps)."""
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from(self.names)
        if self.default_link is not None:
            for i, a in enumerate(self.names):
                for b in self.names[i + 1 :]:
                    g.add_edge(
                        a, b, latency_ms=self.default_link.latency_ms, bandwidth_mbps=self.default_link.bandwidth_mbps
                    )
        for a, b, link in self.overrides:
            g.add_edge(a, b, latency_ms=link.latency_ms, bandwidth_mbps=link.bandwidth_mbps)
        return g

    @cached_property
    def _path_cache(self) -> dict[int, tuple[Any, Any]]:
        return {}

    def paths_from(self, name: str):
        """(latency ms, bandwidth Mbit/s) numpy arrays from ``name`` to every server, in server order.

        Dijkstra on least latency; among the least-latency paths the widest (largest bottleneck
        bandwidth) is kept.  Unreachable servers get latency inf and bandwidth 0.  With a default
        link the graph is complete, and each popped server relaxes the servers it has no override
        with in one step, so a source costs O((V + overrides) log V).  Cached per source.
        """
        i = self.index[name]
        hit = self._path_cache.get(i)
        if hit is None:
            hit = self._dijkstra(i)
            self._path_cache[i] = hit
        return hit

    def _dijkstra(self, src: int):
        import heapq

        import numpy as np

        n = len(self.servers)
        _, nbrs = self._adjacency
        lat = np.full(n, np.inf)
        bw = np.zeros(n)
        lat[src], bw[src] = 0.0, np.inf
        done = np.zeros(n, dtype=bool)
        heap = [(0.0, -math.inf, src)]
        default = self.default_link
        # servers not yet relaxed over a default link (complete graph only)
        pending = set(range(n)) - {src} if default is not None else set()
        while heap:
            d, negb, u = heapq.heappop(heap)
            if done[u] or d > lat[u] or (d == lat[u] and -negb < bw[u]):
                continue
            done[u] = True
            bu = -negb
            over = nbrs.get(u, {})
            for v, link in over.items():
                if done[v]:
                    continue
                nd, nb = d + link.latency_ms, min(bu, link.bandwidth_mbps)
                if nd < lat[v] - 1e-12 or (abs(nd - lat[v]) <= 1e-12 and nb > bw[v]):
                    lat[v], bw[v] = nd, nb
                    heapq.heappush(heap, (nd, -nb, v))
            if default is not None and pending:
                nd, nb = d + default.latency_ms, min(bu, default.bandwidth_mbps)
                relaxed = [v for v in pending if v not in over and not done[v]]
                for v in relaxed:
                    pending.discard(v)
                    if nd < lat[v] - 1e-12 or (abs(nd - lat[v]) <= 1e-12 and nb > bw[v]):
                        lat[v], bw[v] = nd, nb
                        heapq.heappush(heap, (nd, -nb, v))
        return lat, bw

    @property
    def _paths(self):
        """All-pairs (latency, bandwidth) matrices: n Dijkstra runs, O(n^2) memory.  For small
        clusters, tests and ``cluster check``; the planner asks ``paths_from`` for what it needs."""
        import numpy as np

        n = len(self.servers)
        lat = np.empty((n, n))
        bw = np.empty((n, n))
        for i, s in enumerate(self.names):
            lat[i], bw[i] = self.paths_from(s)
        return lat, bw

    def path(self, a: str, b: str) -> Link:
        """The best path between two servers (latency 0 and unlimited bandwidth when a == b)."""
        lat, bw = self.paths_from(a)
        j = self.index[b]
        return Link(float(lat[j]), float(bw[j]))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"servers": [s.to_dict() for s in self.servers]}
        links: dict[str, Any] = {
            "default": None
            if self.default_link is None
            else {"latency_ms": self.default_link.latency_ms, "bandwidth_mbps": self.default_link.bandwidth_mbps}
        }
        if self.overrides:
            links["overrides"] = [
                {"between": [a, b], "latency_ms": ln.latency_ms, "bandwidth_mbps": ln.bandwidth_mbps}
                for a, b, ln in self.overrides
            ]
        d["links"] = links
        if self.failure_domains:
            fd: dict[str, dict[str, Any]] = {}
            for dom in self.failure_domains:
                fd.setdefault(dom.key, {})[dom.value] = dom.to_dict()
            d["failure_domains"] = fd
        if self.ingress:
            d["ingress"] = self.ingress
        w: dict[str, Any] = {"rate_rps": self.workload.rate_rps}
        if self.workload.latency_slo_ms is not None:
            w["latency_slo_ms"] = self.workload.latency_slo_ms
        d["workload"] = w
        return d


# -- loading and validation ------------------------------------------------------------------


def load_cluster(path: str | os.PathLike) -> Cluster:
    """Read and validate a cluster YAML file; raises ClusterError naming file, field and fix."""
    from melplan.core.fileio import load_yaml_file

    path = Path(path)
    data = load_yaml_file(path, error=ClusterError, fix="check the path given to --servers")
    return parse_cluster(data, source=str(path))


def parse_cluster(data: Any, *, source: str | None = None) -> Cluster:
    check = FieldChecker(ClusterError, source)
    fail, mapping, number = check.fail, check.mapping, check.number

    if data is None:
        fail("servers", "the file is empty", "list at least one server under 'servers:'")
    top = mapping(data, "", {"servers", "links", "ingress", "workload", "failure_domains"})
    raw = top.get("servers")
    if not isinstance(raw, list) or not raw:
        fail(
            "servers", "expected a non-empty list of servers", "add 'servers:' with one '- name: ...' entry per server"
        )
    servers: list[Server] = []
    seen: set[str] = set()
    for i, s in enumerate(raw):
        fld = f"servers[{i}]"
        s = mapping(s, fld, {"name", "memory_mb", "compute_gmacs", "failure_prob", "mtbf_h", "mttr_h", "labels"})
        name = s.get("name")
        if not isinstance(name, str) or not SERVER_NAME_RE.match(name):
            fail(
                f"{fld}.name",
                f"invalid server name {name!r}",
                "use 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
            )
        if name in seen:
            fail(f"{fld}.name", f"duplicate server name '{name}'", "give every server a unique name")
        seen.add(name)
        fld = f"servers[{i}] ({name})"
        memory = number(s, "memory_mb", fld, low=0, low_open=True)
        compute = number(s, "compute_gmacs", fld, low=0, low_open=True)
        has_p = s.get("failure_prob") is not None
        has_m = s.get("mtbf_h") is not None or s.get("mttr_h") is not None
        if has_p and has_m:
            fail(
                f"{fld}.failure_prob",
                "both failure_prob and mtbf_h/mttr_h are given",
                "give either failure_prob or mtbf_h with mttr_h, not both",
            )
        mtbf = mttr = None
        if has_m:
            mtbf = number(s, "mtbf_h", fld, low=MIN_MTBF_H)
            mttr = number(s, "mttr_h", fld, low=0)
            prob = mttr / (mtbf + mttr)
            if prob > MAX_FAILURE_PROB:
                fail(
                    f"{fld}.mttr_h",
                    f"mtbf_h {mtbf:g} and mttr_h {mttr:g} mean the server is down {prob:.1%} of the time",
                    f"check the units (hours); a server down more than {MAX_FAILURE_PROB:.0%} of the time "
                    "should be left out",
                )
        elif has_p:
            prob = number(s, "failure_prob", fld, low=0, high=MAX_FAILURE_PROB)
        else:
            fail(
                f"{fld}.failure_prob",
                "missing",
                "add 'failure_prob' (a probability in [0, 1)) or 'mtbf_h' and 'mttr_h'",
            )
        labels = s.get("labels") or {}
        if not isinstance(labels, Mapping):
            fail(f"{fld}.labels", "expected a mapping", "write labels as 'key: value' pairs, e.g. {zone: north}")
        for k, v in labels.items():
            if not isinstance(k, (str, int)) or isinstance(v, (list, dict, set, bytes)) or len(str(v)) > 253:
                fail(
                    f"{fld}.labels",
                    f"label {str(k)[:40]!r} must map a name to a short text value, got {str(v)[:40]!r}",
                    "write labels as 'key: value' pairs of plain words, e.g. {zone: north}",
                )
        servers.append(Server(name, memory, compute, prob, mtbf, mttr, {str(k): str(v) for k, v in labels.items()}))

    default: Link | None = Link(**DEFAULT_LINK)
    overrides: list[tuple[str, str, Link]] = []
    if "links" in top and top["links"] is not None:
        links = mapping(top["links"], "links", {"default", "overrides"})
        if "default" in links:
            if links["default"] is None:
                default = None
            else:
                d = mapping(links["default"], "links.default", {"latency_ms", "bandwidth_mbps"})
                default = Link(
                    number(d, "latency_ms", "links.default", low=0),
                    number(d, "bandwidth_mbps", "links.default", low=0, low_open=True),
                )
        ov = links.get("overrides") or []
        if not isinstance(ov, list):
            fail(
                "links.overrides",
                "expected a list",
                "write '- {between: [a, b], latency_ms: 2, bandwidth_mbps: 100}' items",
            )
        pairs: set[frozenset[str]] = set()
        for i, o in enumerate(ov):
            fld = f"links.overrides[{i}]"
            o = mapping(o, fld, {"between", "latency_ms", "bandwidth_mbps"})
            between = o.get("between")
            if (
                not isinstance(between, list)
                or len(between) != 2
                or not all(isinstance(b, str) for b in between)
                or between[0] == between[1]
            ):
                fail(
                    f"{fld}.between",
                    f"expected two different server names, got {between!r}",
                    "write 'between: [edge-a, edge-b]'",
                )
            for b in between:
                if b not in seen:
                    fail(
                        f"{fld}.between",
                        f"link to unknown server {b!r}",
                        f"use server names from 'servers' ({', '.join(sorted(seen)[:8])})",
                    )
            pair = frozenset(between)
            if pair in pairs:
                fail(f"{fld}.between", f"link {between[0]}-{between[1]} is listed twice", "keep one entry per pair")
            pairs.add(pair)
            base = default or Link(**DEFAULT_LINK)
            lat = number(o, "latency_ms", fld, low=0, required=default is None)
            bw = number(o, "bandwidth_mbps", fld, low=0, low_open=True, required=default is None)
            overrides.append(
                (
                    between[0],
                    between[1],
                    Link(base.latency_ms if lat is None else lat, base.bandwidth_mbps if bw is None else bw),
                )
            )

    ingress = top.get("ingress")
    if ingress is not None and (not isinstance(ingress, str) or ingress not in seen):
        fail("ingress", f"unknown server {ingress!r}", "name one of the servers, or drop 'ingress'")

    if "workload" not in top or top["workload"] is None:
        fail("workload", "missing", "add 'workload: {rate_rps: 50}' (requests per second; latency_slo_ms optional)")
    w = mapping(top["workload"], "workload", {"rate_rps", "latency_slo_ms"})
    workload = Workload(
        number(w, "rate_rps", "workload", low=0, low_open=True),
        number(w, "latency_slo_ms", "workload", low=0, low_open=True, required=False),
    )

    domains: list[FailureDomain] = []
    if top.get("failure_domains") is not None:
        fds = top["failure_domains"]
        if not isinstance(fds, Mapping):
            fail(
                "failure_domains",
                f"expected a mapping, got {type(fds).__name__}",
                "write 'failure_domains: {zone: {north: {failure_prob: 0.005}}}' (label key, label value, probability)",
            )
        for key, values in fds.items():
            fld = f"failure_domains.{key}"
            key = str(key)
            used_values = {s.labels[key] for s in servers if key in s.labels}
            if not used_values:
                fail(
                    fld,
                    f"no server has a label '{key}'",
                    "use a label key of the servers (e.g. zone), or add 'labels: {"
                    + key
                    + ": ...}' to the servers that share this fate",
                )
            if not isinstance(values, Mapping) or not values:
                fail(
                    fld,
                    "expected a non-empty mapping of label value -> {failure_prob} or {mtbf_h, mttr_h}",
                    f"write e.g. '{key}: {{{sorted(used_values)[0]}: {{failure_prob: 0.005}}}}'",
                )
            for value, spec in values.items():
                vfld = f"{fld}.{value}"
                value = str(value)
                if value not in used_values:
                    fail(
                        vfld,
                        f"no server has the label {key}={value}",
                        f"use one of the values the servers carry: {', '.join(sorted(used_values)[:10])}",
                    )
                spec = mapping(spec, vfld, {"failure_prob", "mtbf_h", "mttr_h"})
                has_p = spec.get("failure_prob") is not None
                has_m = spec.get("mtbf_h") is not None or spec.get("mttr_h") is not None
                if has_p == has_m:
                    fail(
                        vfld,
                        "give either failure_prob or mtbf_h with mttr_h (exactly one form)",
                        "write '{failure_prob: 0.005}' or '{mtbf_h: 8760, mttr_h: 4}'",
                    )
                if has_m:
                    mtbf = number(spec, "mtbf_h", vfld, low=0, low_open=True)
                    mttr = number(spec, "mttr_h", vfld, low=0)
                    domains.append(FailureDomain(key, value, mttr / (mtbf + mttr), mtbf, mttr))
                else:
                    domains.append(
                        FailureDomain(key, value, number(spec, "failure_prob", vfld, low=0, high=1, high_open=True))
                    )

    cluster = Cluster(tuple(servers), workload, default, tuple(overrides), ingress, source, tuple(domains))
    if default is None and len(servers) > 1:
        lat, _ = cluster.paths_from(servers[0].name)
        cut = [cluster.names[j] for j in range(len(servers)) if math.isinf(lat[j])]
        if cut:
            fail(
                "links",
                f"servers {cut[:5]} cannot be reached from {servers[0].name} (default is null)",
                "add overrides that connect every server, or set a default link",
            )
    return cluster


def dump_cluster_yaml(cluster: Cluster) -> str:
    import yaml

    return yaml.safe_dump(cluster.to_dict(), sort_keys=False, default_flow_style=None)
