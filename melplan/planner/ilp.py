"""The placement ILP of one family on a set of candidate servers (PuLP; no torch).

``build_family_model`` is a pure function from (family data, spec) to a PuLP problem plus the maps
from (component, server) to variables; ``read_placement`` turns solved values back into a
placement through those maps, never by parsing variable names.  LP names are built from indices
only (``x_3_12``), so user ids never reach the LP file.

Notation (docs/ilp.md writes it out with the same letters):

* ``j in V``: candidate servers, down with probability ``p_j``;
* ``i in U``: upstreams; ``k in C``: combiners; ``S in K``: the subsets worth answering with
  (singles, and subsets more accurate than each of their members);
* ``x[i,j]``: upstream i on server j; ``z[k,j]``: a replica of combiner k on j (binary);
  ``Z[k] = sum_j z[k,j]``;
* ``sigma``: a *scenario*, the set of candidate servers that are down (all others up), with
  probability ``P(sigma) = prod_{j in sigma} p_j prod_{j not in sigma} (1 - p_j)``;
* ``a[sigma,S] in [0, 1]``: subset S answers in scenario sigma.

Constraints::

    sum_j x[i,j] = 1                               every upstream placed once
    Z[k] <= R                                       at most R replicas of a combiner
    sum_i x[i,j] <= 1                               anti-affinity
    sum mem * (x + z) <= memory_j                   memory, MiB (weights + activations)
    sum gmac * (x + z) <= compute_j                 compute: every placed component at the full rate
    x[i,j] = 0   when the single-upstream path of i on j breaks the SLO (or has no path)
    sum_{j' : path i@j' -> k@j breaks the SLO or does not exist} x[i,j'] + z[k,j] <= 1
    z[k,j] <= sum_i x[i,j]   on servers where combiners may only run beside an upstream
    sum_{S contains i} a[sigma,S] + sum_{j in sigma} x[i,j] <= 1          (upstream i is up)
    sum_{S served by g} a[sigma,S] <= sum_{k in g} (Z[k] - sum_{j in sigma} z[k,j])   (a replica is up)
    sum_S a[sigma,S] <= 1                                                   (one answer)

The two middle rows are aggregated over the subsets that need the same upstream (or combiner
group): they imply the one-row-per-subset form and give a much tighter LP relaxation.

Objectives::

    expected:    max sum_{sigma, |sigma| <= F} P(sigma) sum_S acc(S) a[sigma,S]  - lambda * moved
    worst-case:  max t,  t <= sum_S acc(S) a[sigma,S]  for every sigma with |sigma| = F

With ``F`` = the number of candidates the expected objective is exact (every up/down state);
with a smaller F it is a lower bound of the exact value, short of it by at most
``max acc * P(more than F candidates down)`` (the planner reports that tail).
``min_worst`` adds the worst-case rows with ``t >= A`` to either objective.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pulp

from melplan.core.catalog import Family, subset_key
from melplan.core.cluster import Cluster
from melplan.core.evaluate import CandidateNetwork, input_bytes

MIB = float(1 << 20)
MAX_SCENARIO_VARS = 6_000  # a[sigma,S] variables of the expected rows; F is lowered to fit


# -- numbers of one family on a list of servers ----------------------------------------------


@dataclass(frozen=True)
class FamilyData:
    """Everything the model needs about one family on a list of servers, as numpy arrays.

    Components are indexed upstreams first (``0..n-1``), then combiners (``n..n+|C|-1``).
    ``pair_lat[(i, k)][s, t]`` is the latency of upstream i's branch of the path through combiner
    k: input from the ingress to i on server s, its compute, its features to k on server t, k's
    compute, and the answer back (``evaluate.path_latency_ms`` is the max over the branches).
    """

    family: Family
    servers: tuple[str, ...]
    mem_mib: np.ndarray  # (servers,)
    gmacs: np.ndarray  # (servers,)
    p: np.ndarray  # (servers,)
    comp_mib: np.ndarray  # (components,)
    comp_gmacs: np.ndarray  # (components,) load at the workload rate, 10^9 MAC/s
    comp_weight_mib: np.ndarray  # (components,) weights only: what starting it elsewhere moves
    fits: np.ndarray  # (components, servers) fits alone (memory, compute, single-path SLO)
    single_lat: np.ndarray  # (upstreams, servers) ms
    pair_lat: Mapping[tuple[int, int], np.ndarray]
    slo_ms: float | None
    combiner_alone: np.ndarray | None = None  # (servers,) False: combiners only beside an upstream there
    cluster: Cluster | None = None  # for the scenarios (reachability, failure domains)
    p_eff: np.ndarray | None = None  # (servers,) down probability with the server's domains: 1 - q * prod q_d
    dom_class: np.ndarray | None = None  # (servers,) equal ids: same domains and the same place in the graph

    @property
    def n(self) -> int:
        return self.family.n

    @property
    def n_comb(self) -> int:
        return len(self.family.combiners)

    def subset(self, servers: Sequence[str]) -> FamilyData:
        """The same data restricted to ``servers`` (a subsequence of ``self.servers``)."""
        pos = {s: j for j, s in enumerate(self.servers)}
        idx = np.array([pos[s] for s in servers], dtype=np.int64)
        pair = (
            self.pair_lat.subset(idx)
            if isinstance(self.pair_lat, PairLatency)
            else {key: v[np.ix_(idx, idx)] for key, v in self.pair_lat.items()}
        )
        alone = None if self.combiner_alone is None else self.combiner_alone[idx]
        return FamilyData(
            self.family,
            tuple(servers),
            self.mem_mib[idx],
            self.gmacs[idx],
            self.p[idx],
            self.comp_mib,
            self.comp_gmacs,
            self.comp_weight_mib,
            self.fits[:, idx],
            self.single_lat[:, idx],
            pair,
            self.slo_ms,
            alone,
            self.cluster,
            None if self.p_eff is None else self.p_eff[idx],
            None if self.dom_class is None else self.dom_class[idx],
        )


def combiner_inputs(family: Family) -> list[list[int]]:
    """For each combiner, the indices of the upstreams that feed it in some subset it serves."""
    order = {u: i for i, u in enumerate(family.upstream_names)}
    return [sorted({order[u] for s in c.serves for u in s}) for c in family.combiners]


def family_data(
    family: Family, cluster: Cluster, servers: Sequence[str] | None = None, *, pairs: bool = True
) -> FamilyData:
    """Capacities, loads and path latencies of ``family`` on ``servers`` (default: all), vectorised.

    Upstream-to-combiner latencies (``pair_lat``) are computed on demand (:class:`PairLatency`), so
    ``pairs`` (kept for callers) changes nothing: nothing (servers x servers) is built up front."""
    servers = tuple(cluster.names if servers is None else servers)
    idx = np.array([cluster.index[s] for s in servers], dtype=np.int64)
    srv = [cluster.servers[i] for i in idx]
    mem = np.array([s.memory_mb for s in srv], dtype=float)
    gm = np.array([s.compute_gmacs for s in srv], dtype=float)
    p = np.array([s.failure_prob for s in srv], dtype=float)
    comps = list(family.upstreams) + list(family.combiners)
    rate = cluster.workload.rate_rps
    comp_mib = np.array([c.memory_bytes / MIB for c in comps], dtype=float)
    comp_gm = np.array([c.macs * rate / 1e9 for c in comps], dtype=float)
    comp_w = np.array([c.weight_bytes / MIB for c in comps], dtype=float)
    fits = (comp_mib[:, None] <= mem[None, :]) & (comp_gm[:, None] <= gm[None, :])

    compute_ms = np.array([c.macs for c in comps], dtype=float)[:, None] / (gm[None, :] * 1e9) * 1e3
    if cluster.ingress is not None:  # paths are symmetric: one Dijkstra from the ingress
        lat_g, bw_g = cluster.paths_from(cluster.ingress)
        in_ms = transfer_ms(lat_g[idx], bw_g[idx], input_bytes(family))
        out_ms = transfer_ms(lat_g[idx], bw_g[idx], 4 * int(family.dataset.get("num_classes", 10)))
    else:
        in_ms = np.zeros(len(idx))
        out_ms = np.zeros(len(idx))
    n = family.n
    single = in_ms[None, :] + compute_ms[:n] + out_ms[None, :]
    slo = cluster.workload.latency_slo_ms
    pair = PairLatency(family, cluster, servers, in_ms, compute_ms, out_ms)
    # a component must be reachable: from the ingress (upstreams take the input, every answer goes
    # back), and the SLO when there is one
    fits[:n] &= np.isfinite(single)
    fits[n:] &= np.isfinite(out_ms)[None, :]
    if slo is not None:
        fits[:n] &= single <= slo
    p_eff_all, cls_all = _server_arrays(cluster)
    p_eff, dom_class = p_eff_all[idx], cls_all[idx]
    return FamilyData(
        family,
        servers,
        mem,
        gm,
        p,
        comp_mib,
        comp_gm,
        comp_w,
        fits,
        single,
        pair,
        slo,
        None,
        cluster,
        p_eff,
        dom_class,
    )


def _server_arrays(cluster: Cluster) -> tuple[np.ndarray, np.ndarray]:
    """(down probability with domains, interchange class) of every server, once per cluster."""
    hit = cluster.memo.get("server_arrays")
    if hit is None:
        p_eff = np.array([1.0 - cluster.up_probability(s.name) for s in cluster.servers], dtype=float)
        hit = (p_eff, interchange_class(cluster, cluster.names))
        cluster.memo["server_arrays"] = hit
    return hit


def interchange_class(cluster: Cluster, servers: Sequence[str]) -> np.ndarray:
    """Ids such that two servers with the same id may stand in for each other in reachability and
    shared fate: the same failure domains and, on a sparse graph, both leaves on the same neighbour
    (a leaf is never a relay).  Other servers of a sparse graph get an id of their own."""
    out = np.empty(len(servers), dtype=np.int64)
    ids: dict[tuple, int] = {}
    for j, s in enumerate(servers):
        doms = tuple(d.name for d in cluster.domains_of(s))
        if cluster.complete:
            key: tuple = (doms,)
        else:
            nb = cluster.neighbours(s)
            key = (doms, nb[0]) if len(nb) == 1 and s != cluster.ingress else (doms, "self", s)
        out[j] = ids.setdefault(key, len(ids))
    return out


class PairLatency(Mapping):
    """``pair[(i, k)][s, t]``: latency of upstream i's branch through combiner k, upstream on server
    s and combiner on server t, computed on demand: a matrix over the data's servers only when asked
    (after the reductions, a few dozen candidates), single entries through ``at``.  Paths come from
    ``Cluster.paths_from`` (one Dijkstra per source server, cached), never all pairs."""

    def __init__(self, family, cluster, servers, in_ms, compute_ms, out_ms) -> None:
        self.family, self.cluster, self.servers = family, cluster, tuple(servers)
        self.in_ms, self.compute_ms, self.out_ms = in_ms, compute_ms, out_ms
        self.idx = np.array([cluster.index[s] for s in self.servers], dtype=np.int64)
        self.keys_ = [(i, k) for k, members in enumerate(combiner_inputs(family)) for i in members]
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)

    def _branch(self, i: int, k: int, s: np.ndarray, t: np.ndarray, lat: np.ndarray, bw: np.ndarray) -> np.ndarray:
        n = self.family.n
        feat = transfer_ms(lat, bw, self.family.upstreams[i].feature_bytes)
        return (
            (self.in_ms[s] + self.compute_ms[i, s])[:, None]
            + feat
            + (self.compute_ms[n + k, t] + self.out_ms[t])[None, :]
        )

    def __getitem__(self, key: tuple[int, int]) -> np.ndarray:
        if key not in self._cache:
            if key not in self.keys_:
                raise KeyError(key)
            m = len(self.servers)
            lat = np.empty((m, m))
            bw = np.empty((m, m))
            for a, name in enumerate(self.servers):
                la, ba = self.cluster.paths_from(name)
                lat[a], bw[a] = la[self.idx], ba[self.idx]
            rows = np.arange(m)
            for kk in self.keys_:
                self._cache[kk] = self._branch(kk[0], kk[1], rows, rows, lat, bw)
        return self._cache[key]

    def at(self, key: tuple[int, int], s: int, t: int) -> float:
        if key in self._cache:
            return float(self._cache[key][s, t])
        la, ba = self.cluster.paths_from(self.servers[s])
        j = self.idx[t]
        return float(
            self._branch(key[0], key[1], np.array([s]), np.array([t]), la[[j]][None, :], ba[[j]][None, :])[0, 0]
        )

    def subset(self, idx: np.ndarray) -> PairLatency:
        out = PairLatency(
            self.family,
            self.cluster,
            [self.servers[j] for j in idx],
            self.in_ms[idx],
            self.compute_ms[:, idx],
            self.out_ms[idx],
        )
        for key, v in self._cache.items():
            out._cache[key] = v[np.ix_(idx, idx)]
        return out


def with_used(data: FamilyData, used: Mapping[str, tuple[float, float]]) -> FamilyData:
    """``data`` on what is left of each server once ``used[server] = (MiB, GMAC/s)`` is taken by
    others (latencies unchanged: they depend on the server's speed, not on what else it holds)."""
    if not used:
        return data
    take = np.array([used.get(s, (0.0, 0.0)) for s in data.servers], dtype=float).reshape(-1, 2)
    mem = np.maximum(data.mem_mib - take[:, 0], 0.0)
    gm = np.maximum(data.gmacs - take[:, 1], 0.0)
    fits = (
        data.fits & (data.comp_mib[:, None] <= mem[None, :] + 1e-12) & (data.comp_gmacs[:, None] <= gm[None, :] + 1e-12)
    )
    return replace(data, mem_mib=mem, gmacs=gm, fits=fits)


def transfer_ms(lat: np.ndarray, bw: np.ndarray, nbytes: float) -> np.ndarray:
    """Vectorised ``Link.transfer_ms``: latency plus serialisation (none over a same-server path)."""
    lat = np.asarray(lat, dtype=float)
    bw = np.asarray(bw, dtype=float)
    if nbytes <= 0:
        return lat.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ser = np.where(np.isinf(bw), 0.0, nbytes * 8 / (bw * 1e3))
    return lat + ser


def useful_subsets(family: Family) -> list[tuple[str, ...]]:
    """Singles, and the subsets of 2+ upstreams more accurate than each of their members alone.

    A subset no better than one of its own upstreams is never needed: whenever it is servable so
    is that upstream alone, with at least the same accuracy.
    """
    acc = family.accuracy
    return [s for s in family.subsets() if len(s) == 1 or acc[subset_key(s)] > max(acc[u] for u in s)]


def useful_combiners(family: Family) -> list[bool]:
    """Whether each combiner serves a subset worth answering with (else placing it cannot help)."""
    keys = {subset_key(s) for s in useful_subsets(family) if len(s) >= 2}
    return [any(subset_key(s) in keys for s in c.serves) for c in family.combiners]


# -- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """What one family's model optimises.

    ``failures``: F of the expected objective (scenarios with at most F candidates down; ``None``
    = every state).  ``worst_failures``: F of the worst-case rows (objective or ``min_worst``).
    ``current``/``move_cost``: the running placement and the objective price of one MiB of
    weights started on a server where that component does not run yet.  ``cost``: an extra price
    per (component name, server name) subtracted from the objective when that component is placed
    there (the multi-service planner prices shared memory and compute this way).
    """

    objective: str = "expected"  # "expected" | "worst-case"
    failures: int | None = None
    worst_failures: int = 1
    combiner_replicas: int = 1
    min_worst: float | None = None
    max_used: int | None = None
    current: Mapping[str, tuple[str, ...]] | None = None
    move_cost: float = 0.0
    cost: Mapping[tuple[str, str], float] | None = None  # (component, server) -> objective units when placed


@dataclass
class FamilyModel:
    """A built model and the maps from domain objects to its variables."""

    problem: pulp.LpProblem
    data: FamilyData
    spec: ModelSpec
    x: dict[tuple[int, int], pulp.LpVariable]  # (upstream i, server j)
    z: dict[tuple[int, int], pulp.LpVariable]  # (combiner k, server j)
    subsets: list[tuple[str, ...]]
    exp_scenarios: list[tuple[int, ...]] = field(default_factory=list)
    worst_scenarios: list[tuple[int, ...]] = field(default_factory=list)
    t: pulp.LpVariable | None = None
    failures_modeled: int | None = None  # F of the expected rows (elements down: servers and domains)
    exact: bool = True  # False: reachability relaxed (no ingress on a sparse graph), the value is a bound
    modeled_mass: float = 1.0  # probability of the expected scenarios
    moved_mib: pulp.LpAffineExpression | None = None


def _var(
    prob: pulp.LpProblem, name: str, low: float | None = None, up: float | None = None, cat: str = pulp.LpContinuous
) -> pulp.LpVariable:
    """A variable of ``prob`` (``add_variable`` where PuLP has it, the constructor before 3.x)."""
    add = getattr(prob, "add_variable", None)
    if add is not None:
        return add(name, low, up, cat=cat)
    return pulp.LpVariable(name, low, up, cat=cat)  # pragma: no cover - older PuLP


def scenario_count(m: int, f: int) -> int:
    return sum(math.comb(m, k) for k in range(0, min(f, m) + 1))


def expected_failures(m_fail: int, n_subsets: int, failures: int | None, budget: int = MAX_SCENARIO_VARS) -> int:
    """F actually modeled: the one asked for, lowered until the scenario variables fit ``budget``."""
    F = m_fail if failures is None else min(failures, m_fail)
    while F > 0 and scenario_count(m_fail, F) * n_subsets > budget:
        F -= 1
    return F


def build_family_model(data: FamilyData, spec: ModelSpec, *, name: str = "melplan") -> FamilyModel:
    """Build the PuLP problem of one family on ``data.servers``. Pure: the inputs are not changed.

    Raises ValueError on an unknown objective (the planner validates user input first).
    """
    if spec.objective not in ("expected", "worst-case"):
        raise ValueError(f"unknown objective {spec.objective!r}")
    fam = data.family
    n, nc, m = data.n, data.n_comb, len(data.servers)
    R = spec.combiner_replicas
    prob = pulp.LpProblem(name, pulp.LpMaximize)

    x = {(i, j): _var(prob, f"x_{i}_{j}", 0, 1, pulp.LpBinary) for i in range(n) for j in range(m) if data.fits[i, j]}
    useful = useful_combiners(fam)
    z_ok = {(k, j) for k in range(nc) for j in range(m) if data.fits[n + k, j] and useful[k]}
    inputs = combiner_inputs(fam)
    bad_pairs: dict[tuple[int, int, int], list[int]] = {}
    limit = math.inf if data.slo_ms is None else data.slo_ms
    for k, t in sorted(z_ok):
        for i in inputs[k]:
            hosts = [s for s in range(m) if (i, s) in x]
            lat = data.pair_lat[(i, k)][:, t]
            bad = [s for s in hosts if not (math.isfinite(lat[s]) and lat[s] <= limit)]  # too slow, or no path
            if bad:
                if len(bad) == len(hosts):  # no host of i reaches k on t (in time)
                    z_ok.discard((k, t))
                    break
                bad_pairs[(i, k, t)] = bad
    z = {(k, j): _var(prob, f"z_{k}_{j}", 0, 1, pulp.LpBinary) for (k, j) in sorted(z_ok)}

    for i in range(n):
        prob += (pulp.lpSum(x[i, j] for j in range(m) if (i, j) in x) == 1, f"place_u{i}")
    Z: dict[int, pulp.LpVariable] = {}
    for k in range(nc):
        Z[k] = _var(prob, f"nz_{k}", 0, R)
        prob += (pulp.lpSum(z[k, j] for j in range(m) if (k, j) in z) - Z[k] == 0, f"replicas_c{k}")
    for j in range(m):
        ups = [(x[i, j], i) for i in range(n) if (i, j) in x]
        combs = [(z[k, j], n + k) for k in range(nc) if (k, j) in z]
        if len(ups) > 1:
            prob += (pulp.lpSum(v for v, _ in ups) <= 1, f"anti_s{j}")
        both = ups + combs
        if not both:
            continue
        # with at most one upstream, the heaviest upstream plus every combiner is the worst case
        worst_mem = max([data.comp_mib[c] for _, c in ups], default=0.0) + sum(data.comp_mib[c] for _, c in combs)
        if worst_mem > data.mem_mib[j]:
            prob += (
                pulp.LpAffineExpression([(v, float(data.comp_mib[c])) for v, c in both]) <= float(data.mem_mib[j]),
                f"mem_s{j}",
            )
        worst_cpu = max([data.comp_gmacs[c] for _, c in ups], default=0.0) + sum(data.comp_gmacs[c] for _, c in combs)
        if worst_cpu > data.gmacs[j]:
            prob += (
                pulp.LpAffineExpression([(v, float(data.comp_gmacs[c])) for v, c in both]) <= float(data.gmacs[j]),
                f"cpu_s{j}",
            )
    for (i, k, t), bad in sorted(bad_pairs.items()):
        if (k, t) in z:
            prob += (pulp.lpSum(x[i, s] for s in bad) + z[k, t] <= 1, f"slo_u{i}_c{k}_s{t}")
    if data.combiner_alone is not None:
        for (k, j), v in sorted(z.items()):
            if not data.combiner_alone[j]:
                prob += (v - pulp.lpSum(x[i, j] for i in range(n) if (i, j) in x) <= 0, f"beside_c{k}_s{j}")
    if spec.max_used is not None and m > spec.max_used:
        w = {j: _var(prob, f"w_{j}", 0, 1) for j in range(m)}
        for (i, j), v in x.items():
            prob += (w[j] - v >= 0, f"usedx_{i}_{j}")
        for (k, j), v in z.items():
            prob += (w[j] - v >= 0, f"usedz_{k}_{j}")
        prob += (pulp.lpSum(w.values()) <= spec.max_used, "max_used")

    model = FamilyModel(prob, data, spec, x, z, useful_subsets(fam))
    acc = [fam.accuracy[subset_key(s)] for s in model.subsets]
    order = {u: i for i, u in enumerate(fam.upstream_names)}
    members = [{order[u] for u in s} for s in model.subsets]
    serving = [tuple(k for k, c in enumerate(fam.combiners) if tuple(s) in c.serves) for s in model.subsets]
    groups: dict[tuple[int, ...], list[int]] = {}
    for si, s in enumerate(model.subsets):
        if len(s) >= 2 and any((k, j) in z for k in serving[si] for j in range(m)):
            groups.setdefault(serving[si], []).append(si)
    answerable = [si for si, s in enumerate(model.subsets) if len(s) == 1 or any(si in g for g in groups.values())]

    def scenario_rows(tag: str, scenarios: list[tuple[int, ...]]) -> list[list[tuple[int, pulp.LpVariable]]]:
        rows = []
        for d, D in enumerate(scenarios):
            row = {si: _var(prob, f"{tag}_{d}_{si}", 0, 1) for si in answerable}
            for i in range(n):
                down = [x[i, j] for j in D if (i, j) in x]
                if down:
                    mine = [v for si, v in row.items() if i in members[si]]
                    prob.addConstraint(pulp.lpSum(mine) + pulp.lpSum(down) <= 1, f"{tag}up_{d}_u{i}")
            for g, (ks, sis) in enumerate(groups.items()):
                terms = [(row[si], 1.0) for si in sis] + [(Z[k], -1.0) for k in ks]
                terms += [(z[k, j], 1.0) for k in ks for j in D if (k, j) in z]
                prob.addConstraint(pulp.LpAffineExpression(terms) <= 0, f"{tag}cb_{d}_g{g}")
            prob.addConstraint(pulp.LpAffineExpression([(v, 1.0) for v in row.values()]) <= 1, f"{tag}one_{d}")
            rows.append(list(row.items()))
        return rows

    objective = pulp.LpAffineExpression()
    net = None if data.cluster is None else CandidateNetwork(data.cluster, data.servers)
    model.exact = net is None or net.exact
    if spec.objective == "expected":
        if net is not None:
            sset = net.scenarios(spec.failures, max_scenarios=max(1, MAX_SCENARIO_VARS // max(1, len(answerable))))
            everything = tuple(range(m))
            keep = [d for d, D in enumerate(sset.unusable) if D != everything]  # nothing answers: 0
            model.exp_scenarios = [sset.unusable[d] for d in keep]
            weights = [sset.probability[d] for d in keep]
            model.failures_modeled = sset.failures
            model.modeled_mass = sset.mass
        else:  # independent servers, no network (tests of the bare model)
            p = data.p
            can_fail = [j for j in range(m) if p[j] > 0]
            F = expected_failures(len(can_fail), len(answerable), spec.failures)
            model.failures_modeled = F
            model.exp_scenarios = [D for k in range(F + 1) for D in itertools.combinations(can_fail, k)]
            weights = [scenario_probability(p, D) for D in model.exp_scenarios]
            model.modeled_mass = sum(weights)
        rows = scenario_rows("e", model.exp_scenarios)
        terms = []
        for weight, row in zip(weights, rows):
            terms.extend((v, weight * acc[si]) for si, v in row)
        objective = pulp.LpAffineExpression(terms)
    if spec.objective == "worst-case" or spec.min_worst is not None:
        Fw = max(1, spec.worst_failures)
        if net is not None:
            model.worst_scenarios = net.worst_scenarios(Fw)
        else:
            model.worst_scenarios = [tuple(range(m))] if m <= Fw else list(itertools.combinations(range(m), Fw))
        rows_w = scenario_rows("v", model.worst_scenarios)
        model.t = _var(prob, "t", 0, 1)
        for d, row in enumerate(rows_w):
            prob += (model.t - pulp.LpAffineExpression([(v, acc[si]) for si, v in row]) <= 0, f"worst_{d}")
        if spec.min_worst is not None:
            prob += (model.t >= spec.min_worst, "min_worst")
        if spec.objective == "worst-case":
            objective = model.t + 0.0
    if spec.current is not None and spec.move_cost > 0:
        cur = spec.current
        moved = [
            (v, float(data.comp_weight_mib[i]))
            for (i, j), v in x.items()
            if data.servers[j] not in cur.get(fam.upstreams[i].name, ())
        ]
        moved += [
            (v, float(data.comp_weight_mib[n + k]))
            for (k, j), v in z.items()
            if data.servers[j] not in cur.get(fam.combiners[k].name, ())
        ]
        model.moved_mib = pulp.LpAffineExpression(moved)
        objective = objective - spec.move_cost * model.moved_mib
    if spec.cost:
        names = [u.name for u in fam.upstreams] + [c.name for c in fam.combiners]
        priced = [(v, -float(spec.cost.get((names[i], data.servers[j]), 0.0))) for (i, j), v in x.items()]
        priced += [(v, -float(spec.cost.get((names[n + k], data.servers[j]), 0.0))) for (k, j), v in z.items()]
        objective = objective + pulp.LpAffineExpression([t for t in priced if t[1] != 0.0])
    prob += objective
    return model


def scenario_probability(p: np.ndarray, down: Sequence[int]) -> float:
    """P(exactly the servers ``down`` are down among all of ``p``'s servers)."""
    mask = np.zeros(len(p), dtype=bool)
    mask[list(down)] = True
    return float(np.prod(np.where(mask, p, 1.0 - p)))


# -- reading a solution ------------------------------------------------------------------------


def read_placement(model: FamilyModel) -> dict[str, tuple[str, ...]]:
    """The placement in the solved values: upstream name or combiner name -> servers."""
    fam = model.data.family
    servers = model.data.servers
    out: dict[str, tuple[str, ...]] = {}
    for i, u in enumerate(fam.upstreams):
        out[u.name] = tuple(servers[j] for (ii, j), v in sorted(model.x.items()) if ii == i and (v.varValue or 0) > 0.5)
    for k, c in enumerate(fam.combiners):
        hosts = tuple(servers[j] for (kk, j), v in sorted(model.z.items()) if kk == k and (v.varValue or 0) > 0.5)
        if hosts:
            out[c.name] = hosts
    return out
