"""The one exact evaluator of a placement (DESIGN §1, §3, §4), independent of the ILP (no torch).

This module is the only code in melplan that

* **validates a placement** against its family and cluster (:func:`validate_placement`),
* **orders routes**: which subset answers first, and through which combiner replica
  (:func:`route_choices`: subsets by accuracy, then fewer upstreams; replicas fastest first), and
* **enumerates up/down states** of the servers and failure domains that matter to a placement
  (:class:`RouteTable`, :func:`evaluate_placement`).

The planner, the repair re-planner, the runtime selector, the simulator and export read it; tests
check it against an independent brute force (``tests/oracle.py``).

Semantics.  For a set of *up* servers, subset ``S`` is servable when every upstream of ``S`` runs on
an up server, for ``|S| >= 2`` an up replica of a combiner serving ``S`` runs too, and **every
server on the answering path is reachable**: with an ingress, each of them lies in the ingress's
connected component of the graph of up servers and the links between them (the ingress must be
up; relay servers count like any other); without an ingress, they lie in one connected component
(requests may enter anywhere).  With ``links.default`` set the graph is complete, so reachability
only asks the ingress to be up.  The most accurate servable subset answers; none: the service is
down.

Which states matter.  The *relevant* servers of a placement are the servers it uses, the ingress,
and the **relays**: every server that lies on some simple path between two of those (computed
from the blocks of the link graph: a relay outside them can never change who reaches whom).  Its
*relevant domains* are the failure domains holding a relevant server.  A server is up when it and
all of its domains are up; servers and domains fail independently.  Expected accuracy sums over
every state of these ``r + d`` elements; placements with more than ``MAX_EXACT_SERVERS`` relevant
servers are refused rather than approximated.

Worst case.  ``worst_case_accuracy[k]`` is the minimum over every way that ``k`` relevant servers
*other than the ingress* fail, the ingress and every domain up (with an ingress that can fail,
"any one server" would always be 0: the ingress's own share is reported separately as
``ingress_down_probability`` and ``ingress_share``, the expected accuracy its outages cost).
``worst_domain`` is the lowest accuracy when any one relevant domain is down (all else up).

Reachability is an exact bit-mask breadth-first search over the relevant servers (vectorised
over all ``2^r`` states with numpy; networkx would cost a graph per state), and relays come
from networkx's biconnected components.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from melplan.core.catalog import Family, subset_key
from melplan.core.cluster import Cluster, FailureDomain
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
    combiner: str | None = None

    @property
    def down(self) -> bool:
        return self.answer is None


DOWN = Route(None, 0.0, ())


@dataclass(frozen=True)
class Choice:
    """One way to answer: subset ``key`` through one replica of ``combiner`` (None for a single).

    ``servers``: the answering path (upstream servers, then the combiner's), each listed once.
    """

    key: str
    accuracy: float
    upstream_servers: tuple[str, ...]
    combiner: str | None
    combiner_server: str | None
    latency_ms: float | None
    servers: tuple[str, ...]

    def route(self) -> Route:
        return Route(self.key, self.accuracy, self.servers, self.combiner_server, self.latency_ms, self.combiner)


@dataclass(frozen=True)
class Evaluation:
    expected_accuracy: float
    accuracy_all_up: float
    worst_case_accuracy: dict[str, float]  # "k" -> min accuracy with k relevant non-ingress servers down
    availability: float  # probability that some subset is servable
    used_servers: tuple[str, ...]
    fallback: list[dict]
    servers: dict[str, dict]
    latency_ms: dict[str, float]
    relevant_servers: tuple[str, ...] = ()
    relays: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()  # names (key=value) of the relevant failure domains
    worst_domain: dict[str, Any] | None = None  # {"domain": "zone=hall", "accuracy": 0.0}
    ingress: str | None = None
    ingress_down_probability: float = 0.0
    ingress_share: float = 0.0  # expected accuracy lost to the ingress's own outages
    domain_worst: dict[str, float] = field(default_factory=dict)  # per relevant domain

    def network_dict(self) -> dict[str, Any]:
        """What the plan file records about reachability and domains (``plan.extra['network']``)."""
        return {
            "relevant_servers": list(self.relevant_servers),
            "relays": list(self.relays),
            "ingress": self.ingress,
            "ingress_down_probability": round(self.ingress_down_probability, 10),
            "ingress_share": round(self.ingress_share, 10),
            "failure_domains": list(self.domains),
            "worst_domain": self.worst_domain,
            "accuracy_by_domain_down": {k: round(v, 10) for k, v in self.domain_worst.items()},
            "worst_case_counts": "k failures among the relevant servers other than the ingress",
        }


# -- validation ------------------------------------------------------------------------------------


def validate_placement(
    family: Family, placement: Placement, cluster: Cluster | None, *, source: str | None = None
) -> None:
    """Every component known to the family, upstreams on exactly one server, no server listed twice
    for a component, and (with a cluster) every server known.  Raises :class:`PlanFileError`."""
    names = family.component_names()
    for comp, servers in placement.items():
        if comp not in names:
            raise PlanFileError(
                f"placement names unknown component '{comp}'",
                file=source,
                field=f"placement.{comp}",
                fix=f"use components of family {family.id}: {', '.join(names)}",
            )
        if len(set(servers)) != len(tuple(servers)):
            raise PlanFileError(
                f"component '{comp}' lists a server twice: {list(servers)}",
                file=source,
                field=f"placement.{comp}",
                fix="list each server once",
            )
        if cluster is not None:
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


# -- latency ----------------------------------------------------------------------------------------


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
    combiner, answer back to the ingress (network terms are 0 without an ingress).  Paths are the
    least-latency paths with every server up."""
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


# -- route order ------------------------------------------------------------------------------------


def route_choices(family: Family, placement: Placement, cluster: Cluster | None) -> list[Choice]:
    """Every way to answer, in the order they are tried: subsets by accuracy (ties: fewer upstreams,
    then catalog order), and within a subset the replicas of its combiners fastest first (ties:
    combiner name, server name).  Without a cluster, replicas keep placement order and latency is
    None.  This is the only place that defines route order."""
    placement = {k: tuple(v) for k, v in placement.items()}
    upstream_server = {u: placement[u][0] for u in family.upstream_names}
    ranked = sorted(family.subsets(), key=lambda s: (-family.accuracy[subset_key(s)], len(s)))
    out: list[Choice] = []
    for s in ranked:
        key = subset_key(s)
        acc = family.accuracy[key]
        ups = tuple(upstream_server[u] for u in s)
        if len(s) == 1:
            lat = None if cluster is None else path_latency_ms(family, cluster, key, upstream_server, None, None)
            out.append(Choice(key, acc, ups, None, None, lat, ups))
            continue
        reps: list[tuple[Any, str, str]] = []
        for c in family.combiners_serving(key):
            for srv in placement.get(c.name, ()):
                lat = None if cluster is None else path_latency_ms(family, cluster, key, upstream_server, c.name, srv)
                reps.append((lat, c.name, srv))
        if cluster is not None:
            reps.sort()
        for lat, comb, srv in reps:
            out.append(Choice(key, acc, ups, comb, srv, lat, tuple(dict.fromkeys(ups + (srv,)))))
    return out


# -- which servers matter ----------------------------------------------------------------------------


def relays(cluster: Cluster, terminals: Iterable[str]) -> tuple[str, ...]:
    """Servers, other than ``terminals``, on some simple path between two terminals (cluster order).

    With a complete graph (``links.default`` set) two up servers always share a link: none.
    Otherwise the union of the biconnected blocks on the block-cut tree's paths between the
    terminals (in a block, every vertex lies on a simple path between any two others)."""
    term = set(terminals)
    if cluster.complete or len(term) < 2:
        return ()
    blocks, cuts, parent, depth, comp = _block_cut_tree(cluster)
    marked = set()
    for t in term:
        if t in cuts:
            marked.add(("c", t))
        else:
            marked.update(("b", i) for i in _blocks_of(cluster, blocks).get(t, ()))
    keep: set = set()
    by_comp: dict[int, list] = {}
    for x in marked:
        by_comp.setdefault(comp[x], []).append(x)
    for xs in by_comp.values():
        if len(xs) < 2:
            continue
        anchor = xs[0]
        keep.add(anchor)
        for x in xs[1:]:  # the tree path x .. anchor, through their lowest common ancestor
            a, b = x, anchor
            keep.add(a)
            while a != b:
                if depth[a] >= depth[b]:
                    a = parent[a]
                else:
                    b = parent[b]
                keep.add(a)
                keep.add(b)
    nodes: set[str] = set()
    for kind, v in keep:
        if kind == "b":
            nodes |= blocks[v]
        else:
            nodes.add(v)
    return tuple(s for s in sorted(nodes, key=cluster.index.__getitem__) if s not in term)


def _block_cut_tree(cluster: Cluster):
    """(blocks, cut vertices, parent, depth, component) of the block-cut tree of the link graph,
    rooted per component; computed once per cluster (``cluster.memo``)."""
    hit = cluster.memo.get("block_cut_tree")
    if hit is not None:
        return hit
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(cluster.names)
    g.add_edges_from((a, b) for a, b, _ in cluster.overrides)
    blocks = [frozenset(b) for b in nx.biconnected_components(g)]
    cuts = set(nx.articulation_points(g))
    tree = nx.Graph()
    for i, b in enumerate(blocks):
        tree.add_node(("b", i))
        for v in b & cuts:
            tree.add_edge(("b", i), ("c", v))
    parent: dict = {}
    depth: dict = {}
    comp: dict = {}
    for ci, nodes in enumerate(nx.connected_components(tree)):
        root = min(nodes, key=str)
        parent[root], depth[root], comp[root] = root, 0, ci
        for u, v in nx.bfs_edges(tree, root):
            parent[v], depth[v], comp[v] = u, depth[u] + 1, ci
    out = (blocks, cuts, parent, depth, comp)
    cluster.memo["block_cut_tree"] = out
    return out


def _blocks_of(cluster: Cluster, blocks) -> dict[str, tuple[int, ...]]:
    hit = cluster.memo.get("blocks_of")
    if hit is None:
        acc: dict[str, list[int]] = {}
        for i, b in enumerate(blocks):
            for v in b:
                acc.setdefault(v, []).append(i)
        hit = {k: tuple(v) for k, v in acc.items()}
        cluster.memo["blocks_of"] = hit
    return hit


# -- the table of one placement --------------------------------------------------------------------


class RouteTable:
    """Routes of one placement for every up/down state of its relevant servers.

    ``relevant``: used servers (placement order), then the ingress, then relays; ``bit[s]`` is the
    bit of ``s`` in an up-mask over ``relevant`` (set = up).  ``choices``: every way to answer in
    route order (:func:`route_choices`).  ``domains``: the failure domains holding a relevant
    server.  Without a cluster there is no reachability, latency or domain (selector files used
    alone).  Raises :class:`PlanFileError` for an invalid placement or too many relevant servers.
    """

    def __init__(self, family: Family, placement: Placement, cluster: Cluster | None) -> None:
        self.family = family
        self.cluster = cluster
        self.placement = {k: tuple(v) for k, v in placement.items()}
        validate_placement(family, self.placement, cluster)
        self.upstream_server = {u: self.placement[u][0] for u in family.upstream_names}
        self.used = used_servers(self.placement)
        self.ingress = None if cluster is None else cluster.ingress
        terminals = list(self.used) + ([self.ingress] if self.ingress and self.ingress not in self.used else [])
        self.relays: tuple[str, ...] = () if cluster is None else relays(cluster, terminals)
        self.relevant: tuple[str, ...] = tuple(terminals) + self.relays
        r = len(self.relevant)
        if r > MAX_EXACT_SERVERS:
            raise PlanFileError(
                f"the placement depends on {r} servers (used, ingress and relays); exact evaluation "
                f"enumerates 2^r states and stops at {MAX_EXACT_SERVERS}",
                field="placement",
                fix="use fewer servers or combiner replicas, or link the servers more directly",
            )
        self.bit = {s: 1 << i for i, s in enumerate(self.relevant)}
        self.full_mask = (1 << r) - 1
        self.choices = route_choices(family, self.placement, cluster)
        self._need = [sum(self.bit[s] for s in set(ch.servers)) for ch in self.choices]
        self.complete = cluster is None or cluster.complete
        self._adj = [0] * r
        if not self.complete:
            for i, s in enumerate(self.relevant):
                for t in cluster.neighbours(s):  # type: ignore[union-attr]
                    if t in self.bit:
                        self._adj[i] |= self.bit[t]
        self.domains: tuple[FailureDomain, ...] = ()
        self.domain_mask: tuple[int, ...] = ()
        if cluster is not None and cluster.failure_domains:
            doms = [d for d in cluster.failure_domains if any(d.contains(cluster.server(s)) for s in self.relevant)]
            self.domains = tuple(doms)
            self.domain_mask = tuple(
                sum(self.bit[s] for s in self.relevant if d.contains(cluster.server(s))) for d in doms
            )

    # legacy view: (key, accuracy, upstream servers, [(latency, combiner, server), ...]) per subset
    @property
    def options(self) -> list[tuple[str, float, tuple[str, ...], list[tuple[Any, str | None, str | None]]]]:
        out: list = []
        for ch in self.choices:
            if out and out[-1][0] == ch.key:
                out[-1][3].append((ch.latency_ms, ch.combiner, ch.combiner_server))
            else:
                out.append(
                    (ch.key, ch.accuracy, ch.upstream_servers, [(ch.latency_ms, ch.combiner, ch.combiner_server)])
                )
        return out

    # -- one state -------------------------------------------------------------------------------

    def mask_of_up(self, up: Iterable[str]) -> int:
        m = 0
        for s in up:
            m |= self.bit.get(s, 0)
        return m

    def mask_of_down(self, down: Iterable[str]) -> int:
        m = self.full_mask
        for s in down:
            m &= ~self.bit.get(s, 0)
        return m

    def _reach_one(self, mask: int, root: int) -> int:
        if not mask & root:
            return 0
        if self.complete:
            return mask
        reach, frontier = root, root
        while frontier:
            nxt = 0
            f = frontier
            while f:
                low = f & -f
                nxt |= self._adj[low.bit_length() - 1]
                f ^= low
            nxt &= mask & ~reach
            reach |= nxt
            frontier = nxt
        return reach

    def choice_index(self, mask: int) -> int:
        """Index into ``choices`` of the route for up-mask ``mask`` over ``relevant`` (-1: down)."""
        ing = self.bit[self.ingress] if self.ingress else 0
        reach_ing = self._reach_one(mask, ing) if ing else mask
        for ci, need in enumerate(self._need):
            if mask & need != need:
                continue
            if ing:
                if reach_ing & need == need:
                    return ci
            elif self.complete:
                return ci
            else:
                root = need & -need
                if self._reach_one(mask, root) & need == need:
                    return ci
        return -1

    def choice_ok(self, ci: int, mask: int) -> bool:
        """Whether choice ``ci`` can answer in up-mask ``mask`` (its servers up and reachable from the
        ingress, or from one another without one), whatever the choices before it."""
        need = self._need[ci]
        if mask & need != need:
            return False
        ing = self.bit[self.ingress] if self.ingress else 0
        if ing:
            return self._reach_one(mask, ing) & need == need
        if self.complete:
            return True
        return self._reach_one(mask, need & -need) & need == need

    def route_mask(self, mask: int) -> Route:
        i = self.choice_index(mask)
        return DOWN if i < 0 else self.choices[i].route()

    def route(self, up: Iterable[str]) -> Route:
        """The route when exactly the servers in ``up`` are up (relevant servers not listed are down;
        others do not matter)."""
        return self.route_mask(self.mask_of_up(up))

    def route_down(self, down: Iterable[str] = ()) -> Route:
        """The route when the servers in ``down`` are down and every other server is up."""
        return self.route_mask(self.mask_of_down(down))

    # -- every state (numpy) -------------------------------------------------------------------------

    def _reach_all(self, states, root: int):
        import numpy as np

        reach = np.where((states & root) != 0, root, 0).astype(np.int64)
        if self.complete:
            return np.where(reach != 0, states, 0)
        adj = np.array(self._adj, dtype=np.int64)
        while True:
            new = reach.copy()
            for i in range(len(self.relevant)):
                new |= np.where(((reach >> i) & 1) == 1, adj[i], 0)
            new &= states
            if np.array_equal(new, reach):
                return reach
            reach = new

    def choice_by_mask(self):
        """numpy int array over every up-mask: the index into ``choices`` that answers (-1: down)."""
        import numpy as np

        states = np.arange(1 << len(self.relevant), dtype=np.int64)
        idx = np.full(states.shape, -1, dtype=np.int64)
        ing = self.bit[self.ingress] if self.ingress else 0
        reach_ing = self._reach_all(states, ing) if ing else None
        reach_from: dict[int, Any] = {}
        for ci, need in enumerate(self._need):
            ok = ((states & need) == need) & (idx < 0)
            if reach_ing is not None:
                ok &= (reach_ing & need) == need
            elif not self.complete:
                root = need & -need
                if root not in reach_from:
                    reach_from[root] = self._reach_all(states, root)
                ok &= (reach_from[root] & need) == need
            idx[ok] = ci
        return idx

    def best_by_mask(self):
        """numpy array: the best servable accuracy for every up-mask (0 when down)."""
        import numpy as np

        idx = self.choice_by_mask()
        acc = np.array([ch.accuracy for ch in self.choices] + [0.0])
        return acc[idx]  # -1 picks the trailing 0

    def state_probabilities(self):
        """numpy array over up-masks: P(exactly these relevant servers are up), domains folded in."""
        import numpy as np

        cl = self.cluster
        r = len(self.relevant)
        if cl is None:
            raise ValueError("state probabilities need a cluster")
        p = [cl.server(s).failure_prob for s in self.relevant]
        forced: dict[int, float] = {}
        for state in itertools.product((0, 1), repeat=len(self.domains)):  # 1 = domain down
            pr, fmask = 1.0, 0
            for d, down, dm in zip(self.domains, state, self.domain_mask):
                pr *= d.failure_prob if down else 1.0 - d.failure_prob
                if down:
                    fmask |= dm
            forced[fmask] = forced.get(fmask, 0.0) + pr
        out = np.zeros(1 << r)
        for fmask, pr in forced.items():
            if pr == 0.0:
                continue
            arr = np.ones(1)
            for i in reversed(range(r)):
                f = (1.0, 0.0) if fmask >> i & 1 else (p[i], 1.0 - p[i])
                arr = np.kron(arr, np.array(f))
            out += pr * arr
        return out

    def element_down_probabilities(self) -> list[float]:
        """Down probabilities of the elements that matter: relevant servers, then relevant domains."""
        cl = self.cluster
        assert cl is not None
        return [cl.server(s).failure_prob for s in self.relevant] + [d.failure_prob for d in self.domains]


def best_accuracy_by_state(table: RouteTable):
    """numpy array: best servable accuracy for every up-mask over ``table.relevant``."""
    return table.best_by_mask()


def _popcount(states):
    import numpy as np

    c = np.zeros(states.shape, dtype=np.int64)
    s = states.copy()
    while s.any():
        c += s & 1
        s >>= 1
    return c


def prob_at_most(ps: Sequence[float], k: int | None) -> float:
    """P(at most k of independent events with probabilities ``ps`` happen) (1 when k is None)."""
    if k is None:
        return 1.0
    dist = [1.0]
    for p in ps:
        new = [0.0] * (len(dist) + 1)
        for i, v in enumerate(dist):
            new[i] += v * (1.0 - p)
            new[i + 1] += v * p
        dist = new
    return float(sum(dist[: k + 1]))


@dataclass(frozen=True)
class Scores:
    """Exact numbers of one placement (see the module docstring)."""

    expected: float
    all_up: float
    worst: dict[int, float]  # k -> min accuracy, k = 1..(relevant servers other than the ingress)
    availability: float
    worst_domain: tuple[str, float] | None
    domain_accuracy: dict[str, float]
    ingress_down_probability: float
    ingress_share: float
    relevant: int

    def worst_at(self, k: int) -> float:
        """Worst case with k failures among the relevant servers other than the ingress: with fewer
        such servers than k, all of them down; with none (everything on the ingress), all up."""
        if k <= 0 or not self.worst:
            return self.all_up
        return self.worst[min(k, max(self.worst))]


def scores(table: RouteTable) -> Scores:
    """Expected, worst-case (per k and per domain) and ingress numbers of ``table``'s placement."""
    import numpy as np

    best = table.best_by_mask()
    prob = table.state_probabilities()
    r = len(table.relevant)
    states = np.arange(1 << r, dtype=np.int64)
    expected = float(prob @ best)
    availability = float(prob[best > 0].sum())
    ing = table.bit[table.ingress] if table.ingress else 0
    others = table.full_mask & ~ing
    ndown = _popcount(others & ~states)
    with_ing = (states & ing) == ing
    n_other = r - (1 if ing else 0)
    worst = {k: float(best[(ndown == k) & with_ing].min()) for k in range(1, n_other + 1)}
    dom_acc = {d.name: float(best[table.full_mask & ~dm]) for d, dm in zip(table.domains, table.domain_mask)}
    worst_dom = min(dom_acc.items(), key=lambda kv: (kv[1], kv[0])) if dom_acc else None
    ing_down = ing_share = 0.0
    if ing:
        down = (states & ing) == 0
        ing_down = float(prob[down].sum())
        ing_share = float(prob[down] @ best[states[down] | ing])
    return Scores(
        expected,
        float(best[table.full_mask]),
        worst,
        availability,
        worst_dom,
        dom_acc,
        ing_down,
        ing_share,
        r,
    )


def evaluate_placement(
    family: Family, placement: Placement, cluster: Cluster, *, fallback_depth: int = 2
) -> Evaluation:
    """Exact expected and worst-case accuracy, usage and latency of one placement.

    Raises :class:`PlanFileError` for an invalid placement (unknown component or server, an
    upstream not on exactly one server) or one that depends on too many servers."""
    table = RouteTable(family, placement, cluster)
    sc = scores(table)
    fallback = []
    # rows over the used servers (the ingress and relays stay up; their outages are in the network block)
    for k in range(1, min(fallback_depth, len(table.used)) + 1):
        for down in itertools.combinations(table.used, k):
            r = table.route_down(down)
            fallback.append(
                {"down": list(down), "answer": r.answer, "accuracy": round(r.accuracy, 6), "servers": list(r.servers)}
            )
    return Evaluation(
        sc.expected,
        sc.all_up,
        {str(k): v for k, v in sc.worst.items()},
        sc.availability,
        table.used,
        fallback,
        usage(family, placement, cluster),
        latency_by_subset(table),
        table.relevant,
        table.relays,
        tuple(d.name for d in table.domains),
        None if sc.worst_domain is None else {"domain": sc.worst_domain[0], "accuracy": sc.worst_domain[1]},
        table.ingress,
        sc.ingress_down_probability,
        sc.ingress_share,
        sc.domain_accuracy,
    )


def latency_by_subset(table: RouteTable) -> dict[str, float]:
    """The fastest path's latency per answering subset (ms)."""
    out: dict[str, float] = {}
    for ch in table.choices:
        if ch.key not in out and ch.latency_ms is not None:
            out[ch.key] = round(ch.latency_ms, 4)
    return out


def usage(family: Family, placement: Placement, cluster: Cluster) -> dict[str, dict]:
    """Per used server: components, memory (MiB and share) and compute share at the workload rate."""
    rate = cluster.workload.rate_rps
    out: dict[str, dict] = {}
    for s in used_servers(placement):
        comps = [c for c, srvs in placement.items() if s in srvs]
        mem = sum(family.component(c).memory_bytes for c in comps) / (1 << 20)
        macs = sum(family.component(c).macs for c in comps)
        srv = cluster.server(s)
        out[s] = {
            "components": comps,
            "memory_mb": round(mem, 4),
            "memory_util": round(mem / srv.memory_mb, 6),
            "compute_util": round(macs * rate / (srv.compute_gmacs * 1e9), 6),
        }
    return out


def capacity_violations(family: Family, placement: Placement, cluster: Cluster, *, tol: float = 1e-9) -> list[str]:
    """Human-readable list of memory, compute, anti-affinity, path and SLO violations (empty when valid).

    Compute is checked as if every placed component served the whole request rate, the load a
    replica carries when it is the one answering.  A path that does not exist (infinite latency)
    is a violation.  Raises :class:`PlanFileError` for an invalid placement.
    """
    validate_placement(family, placement, cluster)
    problems = []
    for s, u in usage(family, placement, cluster).items():
        if u["memory_util"] > 1 + tol:
            problems.append(f"{s}: memory {u['memory_mb']:.2f} MiB > {cluster.server(s).memory_mb} MiB")
        if u["compute_util"] > 1 + tol:
            problems.append(f"{s}: compute utilisation {u['compute_util']:.3f} > 1")
    hosts = [placement[u][0] for u in family.upstream_names]
    if len(set(hosts)) != len(hosts):
        problems.append(f"two upstreams share a server: {hosts}")
    slo = cluster.workload.latency_slo_ms
    for ch in route_choices(family, placement, cluster):
        lat = ch.latency_ms
        if lat is None:
            continue
        if not math.isfinite(lat):
            problems.append(f"path {ch.key} via {ch.combiner_server or 'its exit'}: no network path")
        elif slo is not None and lat > slo + 1e-9:
            problems.append(f"path {ch.key} via {ch.combiner_server or 'its exit'} takes {lat:.2f} ms > SLO {slo} ms")
    return problems


# -- scenarios of a set of candidate servers (the ILP's view of the same semantics) ----------------


@dataclass(frozen=True)
class ScenarioSet:
    """Failure scenarios of candidate servers, merged by their effect.

    ``unusable[d]``: the candidate indices that cannot take part in an answer in scenario d (down
    themselves, down with a domain, or cut off from the ingress); ``probability[d]``: the total
    probability of the element states (servers that matter and their domains) with at most
    ``failures`` elements down that have exactly that effect; ``mass``: their sum.  ``exact``:
    False only without an ingress on a sparse graph, where "usable" means up (a relaxation: the
    ILP's value is then an upper bound).
    """

    unusable: tuple[tuple[int, ...], ...]
    probability: tuple[float, ...]
    mass: float
    failures: int
    elements: int
    exact: bool


class CandidateNetwork:
    """The candidate servers with everything their reachability depends on: the ingress, relays
    and the failure domains of all of these, as bit masks (bit i = ``servers[i]``)."""

    def __init__(self, cluster: Cluster, candidates: Sequence[str]) -> None:
        self.cluster = cluster
        self.candidates = tuple(candidates)
        extra = [cluster.ingress] if cluster.ingress and cluster.ingress not in self.candidates else []
        terminals = list(self.candidates) + extra
        self.servers: tuple[str, ...] = tuple(terminals) + relays(cluster, terminals)
        self.bit = {s: 1 << i for i, s in enumerate(self.servers)}
        self.all = (1 << len(self.servers)) - 1
        self.ingress_bit = self.bit[cluster.ingress] if cluster.ingress else 0
        self.complete = cluster.complete
        self.adj = [0] * len(self.servers)
        if not self.complete:
            for i, s in enumerate(self.servers):
                for t in cluster.neighbours(s):
                    self.adj[i] |= self.bit.get(t, 0)
        self.domains = tuple(
            d for d in cluster.failure_domains if any(d.contains(cluster.server(s)) for s in self.servers)
        )
        self.domain_mask = tuple(
            sum(self.bit[s] for s in self.servers if d.contains(cluster.server(s))) for d in self.domains
        )
        self.exact = self.complete or bool(self.ingress_bit)

    def usable(self, up: int) -> int:
        """The up servers (mask) that can take part in an answer: reachable from the ingress."""
        if not self.ingress_bit:
            return up
        if not up & self.ingress_bit:
            return 0
        if self.complete:
            return up
        reach = frontier = self.ingress_bit
        while frontier:
            nxt = 0
            f = frontier
            while f:
                low = f & -f
                nxt |= self.adj[low.bit_length() - 1]
                f ^= low
            nxt &= up & ~reach
            reach |= nxt
            frontier = nxt
        return reach

    def unusable_candidates(self, up: int) -> tuple[int, ...]:
        ok = self.usable(up)
        return tuple(j for j in range(len(self.candidates)) if not ok >> j & 1)

    def elements(self) -> list[tuple[str, float, int]]:
        """(name, down probability, mask of servers it takes down) of every element that can fail."""
        cl = self.cluster
        out = [(s, cl.server(s).failure_prob, self.bit[s]) for s in self.servers]
        out += [(d.name, d.failure_prob, m) for d, m in zip(self.domains, self.domain_mask)]
        return [e for e in out if e[1] > 0]

    def scenarios(self, failures: int | None, *, max_scenarios: int, max_enumerated: int = 200_000) -> ScenarioSet:
        """Every state with at most F elements down (F = ``failures``, all when None), lowered until
        the states enumerated fit ``max_enumerated`` and the distinct effects fit ``max_scenarios``."""
        elems = self.elements()
        n = len(elems)
        F = n if failures is None else min(failures, n)
        while F > 0 and sum(math.comb(n, k) for k in range(F + 1)) > max_enumerated:
            F -= 1
        q_all = math.prod(1.0 - p for _, p, _ in elems)
        while True:
            merged: dict[tuple[int, ...], float] = {}
            mass = 0.0
            for k in range(F + 1):
                for combo in itertools.combinations(range(n), k):
                    pr = q_all
                    down = 0
                    for e in combo:
                        _, p, m = elems[e]
                        pr *= p / (1.0 - p)
                        down |= m
                    key = self.unusable_candidates(self.all & ~down)
                    merged[key] = merged.get(key, 0.0) + pr
                    mass += pr
            if len(merged) <= max_scenarios or F == 0:
                break
            F -= 1
        keys = sorted(merged, key=lambda d: (len(d), d))
        return ScenarioSet(tuple(keys), tuple(merged[d] for d in keys), mass, F, n, self.exact)

    def worst_scenarios(self, k: int) -> list[tuple[int, ...]]:
        """The distinct effects of any k servers other than the ingress failing (domains up); all of
        them when there are fewer than k."""
        pool = [s for s in self.servers if self.bit[s] != self.ingress_bit]
        combos = [tuple(pool)] if len(pool) <= k else list(itertools.combinations(pool, k))
        seen: dict[tuple[int, ...], None] = {}
        for combo in combos:
            down = sum(self.bit[s] for s in combo)
            seen.setdefault(self.unusable_candidates(self.all & ~down))
        return list(seen)
