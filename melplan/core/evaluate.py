"""Exact evaluation of a placement, independent of the ILP (no torch).

Given a family, a placement (component name -> servers) and a cluster, this module decides which
subset answers for any set of up servers (DESIGN §1), and computes by full enumeration of the
up/down states of the servers the placement uses:

* ``expected``  = sum over states A of P(up = A) * max{acc(S) : S servable under A}  (0 if none);
* ``worst_case[k]`` = min over the states with exactly k used servers down;
* per-server memory and compute use, and the latency of every answering path.

Failures are independent, each server down with its ``failure_prob``.  The enumeration is
vectorised with numpy over bit masks; placements on more than ``MAX_EXACT_SERVERS`` servers are
refused rather than approximated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from melplan.core.catalog import Family, subset_key
from melplan.core.cluster import Cluster
from melplan.core.errors import PlanFileError

MAX_EXACT_SERVERS = 22
Placement = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Route:
    """What answers when a given set of servers is up."""

    answer: str | None  # subset key, or None when the service is down
    accuracy: float
    servers: tuple[str, ...]  # servers on the answering path (upstreams, then combiner)
    combiner_server: str | None = None
    latency_ms: float | None = None

    @property
    def down(self) -> bool:
        return self.answer is None


DOWN = Route(None, 0.0, ())


@dataclass(frozen=True)
class Evaluation:
    expected_accuracy: float
    accuracy_all_up: float
    worst_case_accuracy: dict[str, float]  # "k" -> min accuracy with k used servers down
    availability: float  # probability that some subset is servable
    used_servers: tuple[str, ...]
    fallback: list[dict]
    servers: dict[str, dict]
    latency_ms: dict[str, float]


def validate_placement(family: Family, placement: Placement, cluster: Cluster, *, source: str | None = None) -> None:
    """Every component known, upstreams on exactly one known server, at least one replica per combiner."""
    names = set(family.component_names())
    for comp, servers in placement.items():
        if comp not in names:
            raise PlanFileError(
                f"placement names unknown component '{comp}'",
                file=source,
                field=f"placement.{comp}",
                fix=f"use components of family {family.id}: {', '.join(family.component_names())}",
            )
        for s in servers:
            if s not in cluster.index:
                raise PlanFileError(
                    f"component '{comp}' is placed on unknown server '{s}'",
                    file=source,
                    field=f"placement.{comp}",
                    fix="use server names from the cluster file",
                )
    for u in family.upstream_names:
        if len(placement.get(u, ())) != 1:
            raise PlanFileError(
                f"upstream '{u}' must be placed on exactly one server",
                file=source,
                field=f"placement.{u}",
                fix="give it a list with one server name",
            )


def used_servers(placement: Placement) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for servers in placement.values():
        for s in servers:
            seen.setdefault(s)
    return tuple(seen)


def component_compute_ms(macs: int, cluster: Cluster, server: str) -> float:
    return macs / (cluster.server(server).compute_gmacs * 1e9) * 1e3


def input_bytes(family: Family) -> int:
    shape = family.dataset.get("input_shape", [3, 32, 32])
    return 4 * math.prod(int(x) for x in shape)


def path_latency_ms(
    family: Family,
    cluster: Cluster,
    key: str,
    upstream_servers: Mapping[str, str],
    combiner: str | None,
    combiner_server: str | None,
) -> float:
    """Request latency of the answer of subset ``key``: input to each upstream, features to the
    combiner, answer back to the ingress (network terms are 0 without an ingress)."""
    members = key.split("+")
    in_bytes = input_bytes(family)
    out_bytes = 4 * int(family.dataset.get("num_classes", 10))
    ingress = cluster.ingress

    def hop(a: str | None, b: str, nbytes: float) -> float:
        return 0.0 if a is None else cluster.path(a, b).transfer_ms(nbytes)

    arrive = []
    for u in members:
        su = upstream_servers[u]
        up = family.upstream(u)
        t = hop(ingress, su, in_bytes) + component_compute_ms(up.macs, cluster, su)
        if combiner_server is not None:
            t += cluster.path(su, combiner_server).transfer_ms(up.feature_bytes)
        arrive.append(t)
    t = max(arrive)
    last = upstream_servers[members[0]]
    if combiner is not None and combiner_server is not None:
        t += component_compute_ms(family.combiner(combiner).macs, cluster, combiner_server)
        last = combiner_server
    if ingress is not None:
        t += cluster.path(last, ingress).transfer_ms(out_bytes)
    return t


class RouteTable:
    """Answers ``route(up_servers)`` for one placement by checking subsets in accuracy order.

    Subsets are tried from the most accurate; for each, the fastest up replica of a combiner that
    serves it is used.  This is the reference semantics the ILP, the selector and the simulator
    agree with.
    """

    def __init__(self, family: Family, placement: Placement, cluster: Cluster) -> None:
        self.family = family
        self.cluster = cluster
        self.placement = {k: tuple(v) for k, v in placement.items()}
        self.upstream_server = {u: self.placement[u][0] for u in family.upstream_names}
        self.used = used_servers(self.placement)
        ranked = sorted(family.subsets(), key=lambda s: (-family.accuracy[subset_key(s)], len(s)))
        # options[i] = (key, accuracy, upstream servers, [(latency, combiner, server), ...] fastest first)
        self.options: list[tuple[str, float, tuple[str, ...], list[tuple[float, str | None, str | None]]]] = []
        for s in ranked:
            key = subset_key(s)
            ups = tuple(self.upstream_server[u] for u in s)
            if len(s) == 1:
                reps = [(path_latency_ms(family, cluster, key, self.upstream_server, None, None), None, None)]
            else:
                reps = sorted(
                    (path_latency_ms(family, cluster, key, self.upstream_server, c.name, srv), c.name, srv)
                    for c in family.combiners_serving(key)
                    for srv in self.placement.get(c.name, ())
                )
            if reps:
                self.options.append((key, family.accuracy[key], ups, reps))

    def route(self, up: Iterable[str]) -> Route:
        up = set(up)
        for key, acc, ups, reps in self.options:
            if not all(s in up for s in ups):
                continue
            for lat, _comb, srv in reps:
                if srv is None or srv in up:
                    servers = ups if srv is None else tuple(dict.fromkeys(ups + (srv,)))
                    return Route(key, acc, servers, srv, lat)
        return DOWN

    def latency_by_subset(self) -> dict[str, float]:
        return {key: round(reps[0][0], 4) for key, _, _, reps in self.options}


def best_accuracy_by_state(table: RouteTable):
    """numpy array: best servable accuracy for every up-mask over ``table.used`` (bit i = server i up)."""
    import numpy as np

    m = len(table.used)
    if m > MAX_EXACT_SERVERS:
        raise PlanFileError(
            f"the placement uses {m} servers; exact evaluation enumerates 2^m states and stops at {MAX_EXACT_SERVERS}",
            field="placement",
            fix="use fewer combiner replicas",
        )
    bit = {s: 1 << i for i, s in enumerate(table.used)}
    states = np.arange(1 << m, dtype=np.int64)
    best = np.zeros(1 << m)
    decided = np.zeros(1 << m, dtype=bool)
    for _key, acc, ups, reps in table.options:
        need = sum({bit[s] for s in ups})
        ok = (states & need) == need
        if reps[0][2] is not None:
            any_rep = np.zeros(1 << m, dtype=bool)
            for _, _, srv in reps:
                any_rep |= (states & bit[srv]) != 0
            ok &= any_rep
        new = ok & ~decided
        best[new] = acc
        decided |= new
    return best


def evaluate_placement(
    family: Family, placement: Placement, cluster: Cluster, *, fallback_depth: int = 2
) -> Evaluation:
    """Exact expected and worst-case accuracy, usage and latency of one placement."""
    import numpy as np

    validate_placement(family, placement, cluster)
    table = RouteTable(family, placement, cluster)
    used = table.used
    m = len(used)
    best = best_accuracy_by_state(table)
    states = np.arange(1 << m, dtype=np.int64)
    prob = np.ones(1 << m)
    for i, s in enumerate(used):
        p_down = cluster.server(s).failure_prob
        upbit = (states >> i) & 1
        prob *= np.where(upbit == 1, 1.0 - p_down, p_down)
    expected = float(np.dot(prob, best))
    availability = float(prob[best > 0].sum())
    ndown = m - np.array([bin(int(x)).count("1") for x in states]) if m else np.zeros(1, dtype=int)
    worst = {str(k): float(best[ndown == k].min()) for k in range(1, m + 1)}
    all_up = float(best[-1]) if m else 0.0

    fallback = []
    import itertools

    for k in range(1, min(fallback_depth, m) + 1):
        for down in itertools.combinations(used, k):
            r = table.route(set(used) - set(down))
            fallback.append(
                {"down": list(down), "answer": r.answer, "accuracy": round(r.accuracy, 6), "servers": list(r.servers)}
            )

    rate = cluster.workload.rate_rps
    usage: dict[str, dict] = {}
    for s in used:
        comps = [c for c, srvs in placement.items() if s in srvs]
        mem = sum(family.component(c).memory_bytes for c in comps) / (1 << 20)
        macs = sum(family.component(c).macs for c in comps)
        srv = cluster.server(s)
        usage[s] = {
            "components": comps,
            "memory_mb": round(mem, 4),
            "memory_util": round(mem / srv.memory_mb, 6),
            "compute_util": round(macs * rate / (srv.compute_gmacs * 1e9), 6),
        }
    return Evaluation(expected, all_up, worst, availability, used, fallback, usage, table.latency_by_subset())


def capacity_violations(family: Family, placement: Placement, cluster: Cluster, *, tol: float = 1e-9) -> list[str]:
    """Human-readable list of memory, compute, anti-affinity and SLO violations (empty when valid).

    Compute is checked as if every placed component served the whole request rate, the load a
    replica carries when it is the one answering.
    """
    problems = []
    ev = evaluate_placement(family, placement, cluster, fallback_depth=0)
    for s, u in ev.servers.items():
        if u["memory_util"] > 1 + tol:
            problems.append(f"{s}: memory {u['memory_mb']:.2f} MiB > {cluster.server(s).memory_mb} MiB")
        if u["compute_util"] > 1 + tol:
            problems.append(f"{s}: compute utilisation {u['compute_util']:.3f} > 1")
    hosts = [placement[u][0] for u in family.upstream_names]
    if len(set(hosts)) != len(hosts):
        problems.append(f"two upstreams share a server: {hosts}")
    slo = cluster.workload.latency_slo_ms
    if slo is not None:
        table = RouteTable(family, placement, cluster)
        for key, _, _, reps in table.options:
            for lat, _comb, srv in reps:
                if lat > slo + 1e-9:
                    problems.append(f"path {key} via {srv or 'its exit'} takes {lat:.2f} ms > SLO {slo} ms")
    return problems
