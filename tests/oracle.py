"""The brute-force oracle: DESIGN §1/§3/§4 written out a second time, independently of melplan.core.evaluate.

Shared by the tests and benchmarks/plan_scale.py.  Nothing here imports the evaluator's route
order, reachability, relays or state enumeration; it only uses the catalog and cluster numbers,
``evaluate.path_latency_ms`` for the SLO (latency is not what is being checked), and networkx.

* Every state of **every** server and failure domain of the cluster is enumerated (2^(m+d)); a
  server is up when it and all of its domains are up.
* Reachability: with an ingress, the answering servers must lie in the ingress's connected
  component of the graph of up servers (``networkx.node_connected_component``); without one, in a
  common component.  A complete graph when ``links.default`` is set, else only the listed links.
* The answer is the best accuracy over servable subsets (0 when none).
* Worst case with k failures: the minimum over every set of k servers other than the ingress (all
  of them when fewer) being down, everything else up.
* Validity: memory and compute (every component at the full rate), anti-affinity, every
  answering path within the SLO and existing.
"""

from __future__ import annotations

import itertools
import math

import networkx as nx

from melplan.core.catalog import subset_key
from melplan.core.evaluate import path_latency_ms


def link_graph(cluster) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(cluster.names)
    if cluster.default_link is not None:
        g.add_edges_from(itertools.combinations(cluster.names, 2))
    g.add_edges_from((a, b) for a, b, _ in cluster.overrides)
    return g


def up_distribution(cluster) -> dict[frozenset, float]:
    """P(exactly this set of servers is up), over every state of servers and domains."""
    names = cluster.names
    doms = list(cluster.failure_domains)
    out: dict[frozenset, float] = {}
    for dstate in itertools.product((True, False), repeat=len(doms)):  # True = domain up
        pd = math.prod(1 - d.failure_prob if up else d.failure_prob for d, up in zip(doms, dstate))
        dead = {s.name for s in cluster.servers for d, up in zip(doms, dstate) if not up and d.contains(s)}
        for sstate in itertools.product((True, False), repeat=len(names)):
            ps = math.prod(
                1 - cluster.server(n).failure_prob if up else cluster.server(n).failure_prob
                for n, up in zip(names, sstate)
            )
            up = frozenset(n for n, u in zip(names, sstate) if u and n not in dead)
            out[up] = out.get(up, 0.0) + pd * ps
    return out


_COMPONENTS: dict = {}


def _label(graph, up: frozenset) -> dict:
    """Server -> connected-component id in the graph of up servers (memoised per graph and state)."""
    key = (id(graph), up)
    if key not in _COMPONENTS:
        if len(_COMPONENTS) > 200_000:
            _COMPONENTS.clear()
        lab = {}
        for i, comp in enumerate(nx.connected_components(graph.subgraph(up))):
            for v in comp:
                lab[v] = i
        _COMPONENTS[key] = lab
    return _COMPONENTS[key]


def _connected(cluster, graph, up: frozenset, servers: set) -> bool:
    if not servers <= up:
        return False
    lab = _label(graph, up)
    if cluster.ingress is not None:
        if cluster.ingress not in up:
            return False
        root = lab[cluster.ingress]
    else:
        root = lab[next(iter(servers))]
    return all(lab[s] == root for s in servers)


def best_accuracy(family, placement, cluster, up: frozenset, graph=None) -> float:
    """The best accuracy of a servable subset when exactly ``up`` is up (0 if none)."""
    graph = graph if graph is not None else link_graph(cluster)
    best = 0.0
    ups = {u: placement[u][0] for u in family.upstream_names}
    for r in range(1, family.n + 1):
        for s in itertools.combinations(family.upstream_names, r):
            key = subset_key(s)
            hosts = {ups[u] for u in s}
            if r == 1:
                ok = _connected(cluster, graph, up, hosts)
            else:
                reps = [srv for c in family.combiners if s in c.serves for srv in placement.get(c.name, ())]
                ok = any(_connected(cluster, graph, up, hosts | {srv}) for srv in reps)
            if ok:
                best = max(best, family.accuracy[key])
    return best


def scores(family, placement, cluster, failures: int = 1, dist=None, graph=None) -> tuple[float, float]:
    """(exact expected accuracy, worst accuracy with ``failures`` non-ingress servers down)."""
    graph = graph if graph is not None else link_graph(cluster)
    dist = dist if dist is not None else up_distribution(cluster)
    expected = sum(p * best_accuracy(family, placement, cluster, up, graph) for up, p in dist.items() if p > 0)
    pool = [s for s in cluster.names if s != cluster.ingress]
    combos = [tuple(pool)] if len(pool) <= failures else itertools.combinations(pool, failures)
    every = frozenset(cluster.names)
    worst = min(best_accuracy(family, placement, cluster, every - set(c), graph) for c in combos)
    return expected, worst


def valid(family, placement, cluster) -> bool:
    """Memory, compute, anti-affinity and the SLO (every answering path exists and meets it)."""
    rate = cluster.workload.rate_rps
    mem: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for comp, servers in placement.items():
        c = family.component(comp)
        for s in servers:
            mem[s] = mem.get(s, 0.0) + c.memory_bytes
            cpu[s] = cpu.get(s, 0.0) + c.macs * rate
    for s in mem:
        srv = cluster.server(s)
        if mem[s] > srv.memory_bytes or cpu[s] > srv.compute_gmacs * 1e9:
            return False
    ups = {u: placement[u][0] for u in family.upstream_names}
    if len(set(ups.values())) != len(ups):
        return False
    slo = cluster.workload.latency_slo_ms
    limit = math.inf if slo is None else slo
    for u in family.upstream_names:
        lat = path_latency_ms(family, cluster, u, ups, None, None)
        if not (math.isfinite(lat) and lat <= limit):
            return False
    for c in family.combiners:
        for srv in placement.get(c.name, ()):
            for s in c.serves:
                lat = path_latency_ms(family, cluster, subset_key(s), ups, c.name, srv)
                if not (math.isfinite(lat) and lat <= limit):
                    return False
    return True


def _replica_sets(servers, r):
    return [c for k in range(r + 1) for c in itertools.combinations(servers, k)]


def placements(family, cluster, replicas: int = 1):
    """Every placement: upstreams on distinct servers, each combiner on 0..R servers."""
    names = cluster.names
    for ups in itertools.permutations(names, family.n):
        base = {u: (s,) for u, s in zip(family.upstream_names, ups)}
        for combo in itertools.product(*[_replica_sets(names, replicas) for _ in family.combiners]):
            placement = dict(base)
            placement.update({c.name: reps for c, reps in zip(family.combiners, combo) if reps})
            yield placement


def brute_force(family, cluster, *, objective="expected", failures=1, replicas=1, min_worst=None):
    """The best value of the objective over every valid placement, and one placement reaching it.

    ``objective="worst-case"`` returns ``(worst, expected)`` (ties on the worst case broken by
    expected accuracy, as the planner promises).  ``(-inf, None)`` when nothing is valid."""
    graph = link_graph(cluster)
    dist = up_distribution(cluster)
    memo: dict = {}

    def score(placement):
        key = tuple(sorted((k, tuple(v)) for k, v in placement.items()))
        if key not in memo:
            memo[key] = scores(family, placement, cluster, failures, dist, graph)
        return memo[key]

    best_v, best_p = -math.inf, None
    for placement in placements(family, cluster, replicas):
        if not valid(family, placement, cluster):
            continue
        e, w = score(placement)
        if min_worst is not None and w < min_worst - 1e-12:
            continue
        v = e if objective == "expected" else (w, e)
        if best_p is None or v > best_v:
            best_v, best_p = v, placement
    return best_v, best_p
