"""The placement planner: choose a family and place it so the service stays accurate through failures.

``plan(catalog, cluster, options)`` solves one ILP per family (melplan.planner.ilp) on a small set of
candidate servers, keeps the best, and scores every plan with the exact evaluator: the plan's
accuracy numbers never come from an ILP objective.

How the instance is cut down, and why each cut loses nothing (docs/ilp.md has the proofs):

1. **Servers that cannot hold a component** (memory, compute, single-path SLO) get no variable.
2. **Dominated servers.**  s dominates t for a role (hosting an upstream, or combiners only)
   when every set of components of that role that fits on t fits on s, s is down no more often,
   and, under an SLO, s computes at least as fast and is no further from every other server.
   A plan uses at most ``M = n + R*|C|`` servers, so when t has M dominators one of them is
   unused and t's components can move there without loss; t is dropped for that role.
   Identical servers beyond M copies go the same way.
3. **Relaxation bound on upstream hosts.**  With upstreams on servers ``s_u``, whatever the
   combiners do, ``E <= sum_W P(exactly W's servers down) * A(-W)`` where ``A(-W)`` is the best
   accuracy of a subset avoiding W.  Its maximum over server tuples is cheap (each upstream only
   needs its n most reliable hosts), which bounds the whole family, and, per (upstream, server),
   bounds every plan that puts that upstream there.  A host whose bound is below a plan already
   found (the best tuple, completed greedily, scored exactly) cannot improve on it: dropped.
   Likewise for a server that could only run a combiner alone.  A starting plan that reaches the
   family's bound is optimal without a search.
4. **Families** whose bound cannot beat the best plan found so far are not solved (pruned).
5. **Not exact:** when more than MAX_CANDIDATES servers remain, the model runs on the most
   promising of them; the family's bound still covers every server, so the gap stays honest and
   the family is marked ``unproven`` unless the bound is met.

The expected-accuracy model counts the scenarios with at most F candidate servers down (every
state when F = all and the scenario budget allows); the remaining probability times the best
accuracy is added to the bound, so the reported gap is against the exact optimum.

Raises InputError for bad options, InfeasiblePlanError (naming the cause) when nothing can be
placed, SolverError when the solver fails or finds nothing in time.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from melplan.core.catalog import Catalog, Family, subset_key
from melplan.core.cluster import Cluster
from melplan.core.errors import InfeasiblePlanError, InputError, MelplanError, SolverError
from melplan.core.evaluate import (
    MAX_EXACT_SERVERS,
    RouteTable,
    Scores,
    capacity_violations,
    evaluate_placement,
    prob_at_most,
    scores,
)
from melplan.core.plan import Plan
from melplan.planner.ilp import (
    MAX_SCENARIO_VARS,
    FamilyData,
    ModelSpec,
    PairLatency,
    build_family_model,
    combiner_inputs,
    family_data,
    read_placement,
    scenario_count,
    useful_combiners,
    useful_subsets,
    with_used,
)
from melplan.planner.solve import SolveResult, choose_solver, solve

OBJECTIVES = ("expected", "worst-case")
PROGRESS_AFTER_S = 2.0  # runs longer than this report each family on ``options.progress``
TOL = 1e-9
MAX_CANDIDATES = 10  # beyond this, the ILP runs on the most promising servers (the bound stays global)
MAX_HOST_BOUND_TUPLES = 1000  # per-host relaxation bounds only for families with few upstreams
MAX_PACKING_COMBINERS = 10  # beyond this, capability is compared on raw memory and compute
MAX_LINK_DOMINANCE = 300  # complete graphs with overrides: exact link comparison up to this many servers


# -- options and results -----------------------------------------------------------------------


@dataclass(frozen=True)
class PlanOptions:
    """What to optimise and how.

    ``max_failures`` (F): the expected-accuracy model counts the failure scenarios with at most F
    candidate servers down (``None`` = all, exact); for ``worst-case`` it is the number of server
    failures the plan must survive (default 1).  ``min_accuracy_under_failure``: the accuracy
    the plan must keep whichever F servers (1 when F is all) fail.  ``gap``: relative optimality
    gap at which a solve may stop.  ``time_limit_s``: for the whole call.

    Re-plan: ``current`` (component -> servers of the running placement of ``current_family``)
    and ``migration_weight`` (accuracy points, 1 point = 0.01 of accuracy, given up per MiB of
    weights started on a server where that component does not run yet; components that stay
    cost nothing) make the planner prefer what already runs.  ``family`` pins one family.
    ``used``: memory (MiB) and compute (GMAC/s) per server already taken by other services; the
    family is placed on what is left (melplan.planner.site plans services one after another so).
    """

    objective: str = "expected"
    max_failures: int | None = None
    min_accuracy_under_failure: float | None = None
    combiner_replicas: int = 1
    solver: str | None = None
    time_limit_s: float = 30.0
    gap: float = 1e-4
    family: str | None = None
    current: Mapping[str, Sequence[str]] | None = None
    current_family: str | None = None
    migration_weight: float = 0.0
    threads: int | None = None
    reduce: bool = True
    started: float | None = field(default=None, compare=False)  # perf_counter() when the run began (loading)
    progress: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    used: Mapping[str, tuple[float, float]] | None = None  # (MiB, GMAC/s) per server already taken by others

    def __post_init__(self) -> None:
        self.validated()

    def validated(self) -> PlanOptions:
        """Return self, or raise InputError naming the option that is out of range."""
        if self.objective not in OBJECTIVES:
            raise InputError(
                f"unknown objective {self.objective!r}", field="--objective", fix="use 'expected' or 'worst-case'"
            )
        mf = self.max_failures
        if mf is not None and (isinstance(mf, bool) or not isinstance(mf, int) or mf < 0):
            raise InputError(
                f"must be a whole number >= 0 or 'all', got {mf!r}",
                field="--max-failures",
                fix="give e.g. --max-failures 2, or --max-failures all",
            )
        if self.objective == "worst-case" and mf is not None and mf < 1:
            raise InputError("the worst case needs at least one failure", field="--max-failures", fix="give 1 or more")
        a = self.min_accuracy_under_failure
        if a is not None and not 0.0 <= a <= 1.0:
            raise InputError(
                f"must be a fraction in [0, 1], got {a!r}",
                field="--min-accuracy-under-failure",
                fix="give accuracy as a fraction, e.g. 0.85",
            )
        r = self.combiner_replicas
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise InputError(
                f"must be a whole number >= 1, got {r!r}",
                field="--combiner-replicas",
                fix="give 1 (the default) or more",
            )
        if not self.time_limit_s > 0:
            raise InputError(
                f"must be > 0 seconds, got {self.time_limit_s!r}", field="--time-limit", fix="give e.g. 30"
            )
        if not 0.0 <= self.gap < 1.0:
            raise InputError(f"must be in [0, 1), got {self.gap!r}", field="--gap", fix="give e.g. 0.0001")
        if not self.migration_weight >= 0:
            raise InputError(
                f"must be >= 0, got {self.migration_weight!r}",
                field="migration_weight",
                fix="give accuracy points per MiB moved, e.g. 0.05",
            )
        return self

    @property
    def worst_failures(self) -> int:
        return self.max_failures if self.max_failures is not None else 1

    @property
    def failures_label(self) -> str:
        return "all" if self.max_failures is None else str(self.max_failures)

    @property
    def move_cost(self) -> float:
        """Objective units per MiB moved (0 when not re-planning)."""
        return self.migration_weight / 100.0 if self.current is not None else 0.0


@dataclass(frozen=True)
class Reduction:
    """How the servers were cut down for one family (all cuts are exact)."""

    servers: int
    candidates: int
    cannot_host: int
    dominated: int
    bounded: int
    max_used: int
    restricted: bool = False
    left: int = 0  # servers left after the exact cuts

    def to_dict(self) -> dict[str, Any]:
        return {
            "servers": self.servers,
            "candidates": self.candidates,
            "cannot_host": self.cannot_host,
            "dominated": self.dominated,
            "cut_by_bound": self.bounded,
            "max_servers_per_plan": self.max_used,
            "restricted": self.restricted,
            "left_after_exact_cuts": self.left,
        }


@dataclass(frozen=True)
class FamilyOutcome:
    """One row of the families-considered table.

    ``status``: ``solved`` (its best plan proved within the gap), ``time_limit`` (a plan, not
    proved), ``pruned`` (its bound cannot beat the chosen plan), ``infeasible`` (``reason`` says
    why), ``not_solved`` (time ran out first).  ``value``: the requested objective of its best
    plan, computed exactly; ``bound``: proven upper bound on what the family can reach.
    """

    family: str
    n: int
    role: str
    status: str
    value: float | None = None
    bound: float | None = None
    expected_accuracy: float | None = None
    worst_case_accuracy: float | None = None
    accuracy_all_up: float | None = None
    moved_mib: float | None = None
    placement: Mapping[str, tuple[str, ...]] | None = None
    reason: str = ""
    solver: Mapping[str, Any] = field(default_factory=dict)
    reduction: Reduction | None = None
    failures_modeled: int | None = None
    modeled_mass: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "family": self.family,
            "n": self.n,
            "role": self.role,
            "status": self.status,
            "value": _r(self.value),
            "bound": _r(self.bound),
            "expected_accuracy": _r(self.expected_accuracy),
            "worst_case_accuracy": _r(self.worst_case_accuracy),
            "accuracy_all_up": _r(self.accuracy_all_up),
            "reason": self.reason,
        }
        if self.moved_mib is not None:
            d["moved_mib"] = _r(self.moved_mib)
        if self.solver:
            d["solver"] = dict(self.solver)
        if self.reduction is not None:
            d["candidates"] = self.reduction.to_dict()
        if self.failures_modeled is not None:
            d["failures_modeled"] = self.failures_modeled
        return d


@dataclass(frozen=True)
class PlanResult:
    """The chosen plan, the families considered, and the best single-model deployment."""

    plan: Plan
    considered: tuple[FamilyOutcome, ...]
    chosen: FamilyOutcome
    best_single: FamilyOutcome | None
    proven_optimal: bool
    gap: float
    notes: tuple[str, ...]
    wall_s: float

    @property
    def gain_over_single(self) -> float | None:
        if self.best_single is None or self.best_single.value is None or self.chosen.value is None:
            return None
        return self.chosen.value - self.best_single.value


def _r(v: float | None, nd: int = 6) -> float | None:
    return None if v is None else round(float(v), nd)


def role_of(family: Family) -> str:
    """The catalog's ``role`` field, else ``mel`` for n > 1 and ``single`` for n == 1."""
    role = family.extra.get("role")
    if isinstance(role, str) and role:
        return role
    return "mel" if family.n > 1 else "single"


# -- exact values of a placement --------------------------------------------------------------


@dataclass(frozen=True)
class ObjectiveValue:
    expected: float  # exact expected accuracy (every state of the relevant servers and domains)
    covered: float  # probability that at most F of those elements are down
    worst: float  # min accuracy over every way F relevant non-ingress servers fail
    all_up: float
    used: int
    scores: Scores | None = None


def objective_value(
    family: Family,
    placement: Mapping[str, Sequence[str]],
    cluster: Cluster,
    failures: int | None = None,
    worst_failures: int = 1,
) -> ObjectiveValue:
    """Exact expected and worst-case accuracy of a placement, from melplan.core.evaluate (never the ILP)."""
    table = RouteTable(family, placement, cluster)
    sc = scores(table)
    return ObjectiveValue(
        sc.expected,
        prob_at_most(table.element_down_probabilities(), failures),
        sc.worst_at(worst_failures),
        sc.all_up,
        len(table.used),
        sc,
    )


def moved_mib(
    family: Family, placement: Mapping[str, Sequence[str]], current: Mapping[str, Sequence[str]] | None
) -> float:
    """MiB of weights started on servers where the component does not run now."""
    cur = current or {}
    total = 0
    for comp, servers in placement.items():
        had = set(cur.get(comp, ()))
        total += sum(family.component(comp).weight_bytes for s in servers if s not in had)
    return total / float(1 << 20)


def plan_score(
    family: Family,
    placement: Mapping[str, Sequence[str]],
    cluster: Cluster,
    options: PlanOptions,
    current: Mapping[str, Sequence[str]] | None,
) -> tuple[float, ObjectiveValue, float | None]:
    """(score, values, MiB moved): the score is what families are ranked by, computed exactly.

    Expected: exact expected accuracy; worst-case: worst accuracy with F servers down; minus
    ``migration_weight`` points per MiB moved when re-planning.
    """
    ov = objective_value(family, placement, cluster, options.max_failures, options.worst_failures)
    base = ov.expected if options.objective == "expected" else ov.worst
    mv = moved_mib(family, placement, current) if options.current is not None else None
    return base - options.move_cost * (mv or 0.0), ov, mv


# -- bounds ---------------------------------------------------------------------------------------


def best_without(family: Family, exclude: frozenset[str] = frozenset()) -> dict[frozenset, float]:
    """A(-W): the best accuracy of a subset avoiding the upstreams in W (and not in ``exclude``)."""
    acc = family.accuracy
    names = family.upstream_names
    out = {}
    for r in range(len(names) + 1):
        for W in itertools.combinations(names, r):
            rest = [s for s in family.subsets() if not set(s) & set(W) and subset_key(s) not in exclude]
            out[frozenset(W)] = max((acc[subset_key(s)] for s in rest), default=0.0)
    return out


def exclusive_subsets(family: Family) -> list[frozenset[str]]:
    """For each combiner, the subset keys that no other combiner serves."""
    out = []
    for c in family.combiners:
        keys = set()
        for s in c.serves:
            key = subset_key(s)
            if len(family.combiners_serving(key)) == 1:
                keys.add(key)
        out.append(frozenset(keys))
    return out


def relaxed_value(family: Family, p_of: np.ndarray, aw: Mapping[frozenset, float]) -> np.ndarray:
    """``sum_W P(exactly W down) * A(-W)`` for rows of upstream down-probabilities ``p_of`` (T, n)."""
    names = family.upstream_names
    n = len(names)
    p_of = np.atleast_2d(p_of)
    total = np.zeros(p_of.shape[0])
    for mask in range(1 << n):
        W = frozenset(names[i] for i in range(n) if mask >> i & 1)
        pr = np.ones(p_of.shape[0])
        for i in range(n):
            pr *= p_of[:, i] if mask >> i & 1 else 1.0 - p_of[:, i]
        total += pr * aw[W]
    return total


@dataclass(frozen=True)
class Relaxation:
    """The upstream-tuple relaxation of one family (expected objective)."""

    bound: float  # over every placement of the family
    tuple_: tuple[int, ...]  # best upstream servers (indices into the data's servers)
    host_bound: np.ndarray  # (n, servers): bound for plans with upstream i on server j
    without: tuple[float, ...]  # per combiner: the bound when its exclusive subsets never answer


def relaxation(family: Family, data: FamilyData) -> Relaxation | None:
    """Bounds from the relaxation where combiners are free and always up (None if a host is missing).

    The value only falls as an upstream's server gets less reliable, so an optimal tuple puts each
    upstream on one of its n most reliable hosts: at most n-1 of those are taken by the others.
    """
    n = family.n
    aw = best_without(family)
    hosts = [np.flatnonzero(data.fits[i]) for i in range(n)]
    if any(len(h) == 0 for h in hosts):
        return None
    # Valid with reachability and failure domains: E <= P(ingress up) * E[best | ingress up, every
    # domain up], which only grows with more servers up (monotone), and given the ingress and the
    # domains up the upstream servers fail independently with their own p (the ingress's is 0).
    p, scale = relaxation_probabilities(data)
    top = [h[np.argsort(p[h], kind="stable")][:n] for h in hosts]
    tuples = [t for t in itertools.product(*top) if len(set(t)) == n]
    if not tuples:
        return None
    P = p[np.array(tuples)]
    vals = scale * relaxed_value(family, P, aw)
    best = int(np.argmax(vals))
    best_v, best_t = float(vals[best]), tuples[best]
    without = tuple(
        float(scale * relaxed_value(family, P, best_without(family, ex)).max()) if ex else best_v
        for ex in exclusive_subsets(family)
    )
    m = len(data.servers)
    host_bound = np.full((n, m), np.inf)  # no per-host bound: nothing is cut
    if n ** (n - 1) > MAX_HOST_BOUND_TUPLES:
        return Relaxation(best_v, tuple(int(j) for j in best_t), host_bound, without)
    host_bound[:] = -np.inf
    for i in range(n):
        others = [k for k in range(n) if k != i]
        cols = hosts[i]
        vals = np.full(len(cols), -np.inf)
        # the others on their best hosts (distinct among themselves; sharing i's server only
        # loosens the bound), i on each of its hosts
        for combo in itertools.product(*[top[k] for k in others]):
            if len(set(combo)) < len(combo):
                continue
            P = np.empty((len(cols), n))
            P[:, i] = p[cols]
            for k, j in zip(others, combo):
                P[:, k] = p[j]
            vals = np.maximum(vals, scale * relaxed_value(family, P, aw))
        host_bound[i, cols] = vals
    return Relaxation(best_v, tuple(int(j) for j in best_t), host_bound, without)


def relaxation_probabilities(data: FamilyData) -> tuple[np.ndarray, float]:
    """(own down probabilities with the ingress's set to 0, P(the ingress and its domains are up))."""
    p = data.p.copy()
    cluster = data.cluster
    if cluster is None or cluster.ingress is None:
        return p, 1.0
    if cluster.ingress in data.servers:
        p[data.servers.index(cluster.ingress)] = 0.0
    return p, cluster.up_probability(cluster.ingress)


def worst_upper_bound(family: Family, failures: int, ingress: bool = False) -> float:
    """The worst case cannot beat: for the worst F upstreams down, the best subset of the others.

    With an ingress (which the worst case never fails) one upstream may sit there, immune: the
    best choice of that upstream, then the worst F of the others."""
    aw = best_without(family)
    names = family.upstream_names
    if not ingress:
        F = min(failures, family.n)
        return min(aw[frozenset(W)] for W in itertools.combinations(names, F))
    best = 0.0
    for safe in names:
        rest = [u for u in names if u != safe]
        F = min(failures, len(rest))
        best = max(best, min(aw[frozenset(W)] for W in itertools.combinations(rest, F)))
    return best


# -- server reduction -------------------------------------------------------------------------


def max_servers_per_plan(family: Family, replicas: int) -> int:
    return min(family.n + replicas * len(family.combiners), MAX_EXACT_SERVERS)


def _capability(data: FamilyData, with_upstream: bool) -> np.ndarray:
    """sup[s, t]: every set of components of the role (one upstream with any combiners, or
    combiners only) that fits on t also fits on s."""
    n, nc = data.n, data.n_comb
    comps = range(n + nc) if with_upstream else range(n, n + nc)
    if nc > MAX_PACKING_COMBINERS:
        # sufficient, if coarser: more memory, more compute, and every component that fits on t fits on s
        sup = (data.mem_mib[:, None] >= data.mem_mib[None, :]) & (data.gmacs[:, None] >= data.gmacs[None, :])
        for c in comps:
            sup &= data.fits[c][:, None] | ~data.fits[c][None, :]
        return sup
    masks = np.arange(1 << nc, dtype=np.int64)
    bits = ((masks[:, None] >> np.arange(nc)) & 1).astype(float) if nc else np.zeros((1, 0))
    cmem = bits @ data.comp_mib[n:] if nc else np.zeros(1)
    cgm = bits @ data.comp_gmacs[n:] if nc else np.zeros(1)
    cfit = np.ones((len(masks), len(data.servers)), dtype=bool)
    for k in range(nc):
        cfit &= ~(bits[:, k : k + 1] > 0) | data.fits[n + k][None, :]
    rows = []
    for i in range(n) if with_upstream else [None]:
        mem = cmem + (0.0 if i is None else data.comp_mib[i])
        gm = cgm + (0.0 if i is None else data.comp_gmacs[i])
        ok = (mem[:, None] <= data.mem_mib[None, :]) & (gm[:, None] <= data.gmacs[None, :]) & cfit
        if i is not None:
            ok &= data.fits[i][None, :]
        rows.append(ok)
    return _superset(np.concatenate(rows, axis=0).T)


def _superset(feas: np.ndarray, block: int = 16) -> np.ndarray:
    """sup[s, t]: every packing feasible on t (a row of ``feas``) is feasible on s."""
    uniq, inv = np.unique(feas, axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    u = len(uniq)
    sup = np.zeros((u, u), dtype=bool)
    for a in range(0, u, block):
        sup[a : a + block] = ~((~uniq[a : a + block, None, :]) & uniq[None, :, :]).any(axis=2)
    return sup[inv[:, None], inv[None, :]]


def link_dominance(cluster: Cluster) -> np.ndarray | None:
    """ok[s, t] over all servers: s is no further (latency) and no narrower (bandwidth) than t from
    every other server, established without all-pairs paths:

    * sparse graph: s and t are leaves on the same neighbour g and the link s-g is no slower and no
      narrower than t-g (every path of a leaf goes through g);
    * complete graph: neither s nor t has a link override (the two are interchangeable), or, up
      to ``MAX_LINK_DOMINANCE`` servers, the exact comparison of their path rows.

    Other pairs are not compared (never a wrong cut, only fewer).  The ingress is never dominated."""
    m = len(cluster.servers)
    out = np.zeros((m, m), dtype=bool)
    np.fill_diagonal(out, True)
    if cluster.complete:
        touched = np.zeros(m, dtype=bool)
        for a, b, _ in cluster.overrides:
            touched[cluster.index[a]] = touched[cluster.index[b]] = True
        plain = ~touched
        out |= plain[:, None] & plain[None, :]
        special = np.flatnonzero(touched)
        if len(special) and m <= MAX_LINK_DOMINANCE:
            lat, bw = cluster._paths
            for s in range(m):
                for t in special:
                    if s == t:
                        continue
                    cols = np.ones(m, dtype=bool)
                    cols[[s, t]] = False
                    out[s, t] = bool(
                        (lat[s, cols] <= lat[t, cols] + 1e-12).all()
                        and (bw[s, cols] >= bw[t, cols] * (1 - 1e-12)).all()
                    )
                    if touched[s]:
                        out[t, s] = bool(
                            (lat[t, cols] <= lat[s, cols] + 1e-12).all()
                            and (bw[t, cols] >= bw[s, cols] * (1 - 1e-12)).all()
                        )
    else:
        _, nbrs = cluster._adjacency
        groups: dict[int, list[int]] = {}
        for i in range(m):
            if len(nbrs.get(i, {})) == 1:
                groups.setdefault(next(iter(nbrs[i])), []).append(i)
        for g, members in groups.items():
            idx = np.array(members)
            lat = np.array([nbrs[i][g].latency_ms for i in members])
            bw = np.array([nbrs[i][g].bandwidth_mbps for i in members])
            out[np.ix_(idx, idx)] = (lat[:, None] <= lat[None, :] + 1e-12) & (bw[:, None] >= bw[None, :] * (1 - 1e-12))
    if cluster.ingress is not None:
        ing = cluster.index[cluster.ingress]
        out[:, ing] = False  # nothing stands in for the ingress
        out[ing, ing] = True
    return out


def _dominated(
    data: FamilyData, capable: np.ndarray, links: np.ndarray | None, eligible: np.ndarray, threshold: int
) -> np.ndarray:
    """drop[t]: t has at least ``threshold`` strict dominators among the eligible servers
    (``capable[s, t]``: s can hold whatever t can)."""
    m = len(data.servers)
    weak = capable & (data.p[:, None] <= data.p[None, :])
    if data.dom_class is not None:  # same domains, same place in the graph (reachability)
        weak &= data.dom_class[:, None] == data.dom_class[None, :]
    if data.slo_ms is not None:
        weak &= data.gmacs[:, None] >= data.gmacs[None, :]
        if links is None:  # links not compared (too many servers): drop nothing
            return np.zeros(m, dtype=bool)
        weak &= links
    weak &= eligible[:, None] & eligible[None, :]
    idx = np.arange(m)
    dom = (weak & ~weak.T) | (weak & weak.T & (idx[:, None] < idx[None, :]))
    np.fill_diagonal(dom, False)
    return eligible & (dom.sum(axis=0) >= threshold)


# -- one family ---------------------------------------------------------------------------------


@dataclass
class _Context:
    """What every family's solve shares: the cluster, the options, the deadline, the servers
    never to drop (running the current placement), and the link dominance matrix (with an SLO)."""

    cluster: Cluster
    options: PlanOptions
    solver: str
    deadline: float
    protected: frozenset[str]
    links: np.ndarray | None


@dataclass
class _Reduced:
    """The servers a family's model keeps, a starting plan, and how they were cut."""

    data: FamilyData
    reduction: Reduction
    incumbent: dict[str, tuple[str, ...]] | None
    inc_score: float
    fits: np.ndarray | None = None  # after the exact cuts, over data_all's servers
    alone: np.ndarray | None = None
    data_all: FamilyData | None = None
    relax: Relaxation | None = None


def _reduce(
    family: Family,
    data_all: FamilyData,
    ctx: _Context,
    relax: Relaxation | None,
    current: Mapping[str, tuple[str, ...]] | None,
) -> _Reduced:
    """Cut the servers of ``data_all`` for one family (the steps of the module docstring)."""
    opts, cluster = ctx.options, ctx.cluster
    n, m = family.n, len(data_all.servers)
    max_used = max_servers_per_plan(family, opts.combiner_replicas)

    # 1-2. who may host what: fit, then dominance per role
    fits = data_all.fits.copy()
    alone = np.ones(m, dtype=bool)  # False: combiners only beside an upstream on that server
    cannot = int((~fits.any(axis=0)).sum())
    protected = np.array([s in ctx.protected for s in data_all.servers])
    dominated = 0
    if opts.reduce and m > max_used:
        pos = [cluster.index[s] for s in data_all.servers]
        links = None if ctx.links is None else ctx.links[np.ix_(pos, pos)]
        up_host = fits[:n].any(axis=0)
        drop_up = _dominated(data_all, _capability(data_all, True), links, up_host, max_used) & ~protected
        comb_host = fits[n:].any(axis=0) if family.combiners else np.zeros(m, dtype=bool)
        drop_cb = _dominated(data_all, _capability(data_all, False), links, comb_host, max_used) & ~protected
        fits[:n, drop_up] = False
        alone = ~drop_cb
        fits[n:, ~alone & ~fits[:n].any(axis=0)] = False
        dominated = int((data_all.fits.any(axis=0) & ~fits.any(axis=0)).sum())

    # 3. starting plans, and the relaxation bound on hosts
    incumbent: dict[str, tuple[str, ...]] | None = None
    inc_score = -math.inf
    bounded = 0
    if current and _placement_fits(family, current, cluster) and _meets_floor(family, current, cluster, opts):
        incumbent, inc_score = dict(current), plan_score(family, current, cluster, opts, current)[0]
    if relax is not None and opts.objective == "expected":
        starts = [_greedy(family, data_all, relax.tuple_, cluster)]
        if current:
            starts.append(_repair(family, data_all, current, cluster))
        for start in starts:
            if start is not None and _meets_floor(family, start, cluster, opts):
                sc = plan_score(family, start, cluster, opts, current)[0]
                if sc > inc_score:
                    incumbent, inc_score = start, sc
        if incumbent is not None and opts.reduce:
            keep = np.array([s in {x for v in incumbent.values() for x in v} for s in data_all.servers])
            before = fits.any(axis=0)
            # a plan with component c on server j reaches at most its bound there, minus the price
            # of starting c on j when re-planning
            penalty = np.zeros((n + len(family.combiners), m))
            if opts.move_cost > 0:
                for c, name in enumerate(family.component_names()):
                    here = set((current or {}).get(name, ()))
                    penalty[c] = [
                        0.0 if s in here else opts.move_cost * data_all.comp_weight_mib[c] for s in data_all.servers
                    ]
            fits[:n] &= ~((relax.host_bound - penalty[:n] < inc_score + TOL) & ~keep[None, :])
            # a combiner alone on a server (its only replica when R = 1) is lost whenever that
            # server is down: E <= q_t * bound + p_t * bound(without the subsets only it serves)
            if opts.combiner_replicas == 1:
                only_cb = ~fits[:n].any(axis=0)
                for k in range(len(family.combiners)):
                    p_t = data_all.p if data_all.p_eff is None else data_all.p_eff
                    ubk = relax.bound - p_t * (relax.bound - relax.without[k]) - penalty[n + k]
                    fits[n + k] &= ~(only_cb & (ubk < inc_score + TOL) & ~keep)
            fits[n:, ~alone & ~fits[:n].any(axis=0)] = False
            bounded = int((before & ~fits.any(axis=0)).sum())

    left = int(fits.any(axis=0).sum())
    red = Reduction(m, left, cannot, dominated, bounded, max_used, False, left)
    return _restricted(
        _Reduced(data_all, red, incumbent, inc_score, fits, alone, data_all, relax), family, opts, MAX_CANDIDATES
    )


def _restricted(reduced: _Reduced, family: Family, opts: PlanOptions, cap: int) -> _Reduced:
    """6. More than ``cap`` servers left after the exact cuts: the model runs on the most promising
    ``cap`` (not exact; the family's bound stays the relaxation over every server)."""
    data_all, fits, alone, n = reduced.data_all, reduced.fits.copy(), reduced.alone, family.n
    restricted = reduced.reduction.left > cap
    if restricted:
        fits = _restrict(family, data_all, fits, reduced.relax, reduced.incumbent, opts, cap)
        fits[n:, ~alone & ~fits[:n].any(axis=0)] = False
    cand = [s for j, s in enumerate(data_all.servers) if fits[:, j].any()]
    data = replace(data_all, fits=fits, combiner_alone=alone).subset(cand)
    red = replace(reduced.reduction, candidates=len(cand), restricted=restricted)
    return replace(reduced, data=data, reduction=red)


def _solve_family(
    family: Family, data_all: FamilyData, ctx: _Context, ub: float, relax: Relaxation | None
) -> FamilyOutcome:
    """Reduce, start, search and score one family; the row of the families table.

    When the exact cuts leave more than MAX_CANDIDATES servers, the search runs on the most
    promising ones and the candidate set grows (x4 each round, the best plan so far as the
    starting plan) until the family's bound is met, every server left is searched, or time is up."""
    opts = ctx.options
    current = None
    if opts.current is not None:
        current = {k: tuple(v) for k, v in opts.current.items()} if opts.current_family == family.id else {}
    reduced = _reduce(family, data_all, ctx, relax, current)
    rounds = [reduced.reduction.candidates]
    t0 = time.perf_counter()
    out = _solve_reduced(family, reduced, ctx, ub, current)
    last = time.perf_counter() - t0
    stopped = ""
    while reduced.reduction.restricted and out.status != "solved" and time.perf_counter() < ctx.deadline - 0.05:
        cap = min(reduced.reduction.candidates * 4, reduced.reduction.left)
        if not _model_keeps_failures(family, cap, opts):
            stopped = f"not grown past {reduced.reduction.candidates}: a model on {cap} would count fewer failures"
            break
        start = dict(out.placement) if out.placement is not None else reduced.incumbent
        score = out.value if out.value is not None else reduced.inc_score
        reduced = _restricted(replace(reduced, incumbent=start, inc_score=score), family, opts, cap)
        rounds.append(reduced.reduction.candidates)
        # each round may take up to 4x the previous one (at least 0.5 s): growth costs at most a
        # constant factor over the first search, and the time limit still bounds it
        t0 = time.perf_counter()
        budget = replace(ctx, deadline=min(ctx.deadline, t0 + max(0.5, 4 * last)))
        nxt = _solve_reduced(family, reduced, budget, ub, current)
        last = time.perf_counter() - t0
        if nxt.value is not None and (
            out.value is None
            or nxt.value > out.value + TOL
            or (nxt.value >= out.value - TOL and nxt.status == "solved")
        ):
            out = nxt
        else:
            out = replace(out, reduction=reduced.reduction)
    if stopped:
        out = replace(out, reason="; ".join(x for x in (out.reason, stopped) if x))
    if len(rounds) > 1:
        how = " -> ".join(map(str, rounds))
        why = (
            "the bound was met"
            if out.status == "solved"
            else ("every server left was searched" if not reduced.reduction.restricted else "its time ran out")
        )
        out = replace(out, reason="; ".join(x for x in (out.reason, f"candidates grown {how} ({why})") if x))
    return out


def _out_of_time(
    family: Family, data: FamilyData | None, ub: float | None, ctx: _Context, hard_stop: float
) -> FamilyOutcome:
    """The row of a family whose turn came after the time limit: a quick plan (upstreams on their
    most reliable hosts, combiners greedily, scored exactly) while ``hard_stop`` allows, else none."""
    role = role_of(family)
    reason = "the time limit ran out before its turn"
    if data is None or time.perf_counter() >= hard_stop:
        return FamilyOutcome(family.id, family.n, role, "not_solved", bound=ub, reason=reason)
    p = data.p if data.p_eff is None else data.p_eff
    taken: set[int] = set()
    tup = []
    for i in range(family.n):
        hosts = np.flatnonzero(data.fits[i])
        hosts = hosts[np.argsort(p[hosts], kind="stable")]
        pick = next((int(j) for j in hosts if int(j) not in taken), None)
        if pick is None:
            return FamilyOutcome(family.id, family.n, role, "not_solved", bound=ub, reason=reason)
        taken.add(pick)
        tup.append(pick)
    placement = _greedy(family, data, tuple(tup), ctx.cluster)
    if placement is None or not _meets_floor(family, placement, ctx.cluster, ctx.options):
        return FamilyOutcome(family.id, family.n, role, "not_solved", bound=ub, reason=reason)
    value, ov, mv = plan_score(family, placement, ctx.cluster, ctx.options, None)
    return FamilyOutcome(
        family.id,
        family.n,
        role,
        "time_limit",
        value=value,
        bound=ub,
        expected_accuracy=ov.expected,
        worst_case_accuracy=ov.worst,
        accuracy_all_up=ov.all_up,
        moved_mib=mv,
        placement=placement,
        reason=reason + ": a quick plan (most reliable hosts, combiners greedily), not searched",
    )


def _model_keeps_failures(family: Family, servers: int, opts: PlanOptions) -> bool:
    """Whether a model on ``servers`` candidates keeps the failures asked for within the scenario
    budget (relays and domains not counted: an optimistic check, the model lowers F if needed)."""
    if opts.objective == "worst-case":
        return math.comb(servers, min(opts.worst_failures, servers)) <= MAX_SCENARIO_VARS
    F = servers if opts.max_failures is None else min(opts.max_failures, servers)
    answer = len(useful_subsets(family))
    return scenario_count(servers, F) * answer <= MAX_SCENARIO_VARS


def _solve_reduced(
    family: Family, reduced: _Reduced, ctx: _Context, ub: float, current: Mapping[str, tuple[str, ...]] | None
) -> FamilyOutcome:
    """Search and score one family on the candidates of ``reduced``."""
    opts = ctx.options
    cluster = ctx.cluster
    role = role_of(family)
    n = family.n
    data, red = reduced.data, reduced.reduction
    incumbent, inc_score = reduced.incumbent, reduced.inc_score
    restricted = red.restricted
    cand = data.servers
    max_used = red.max_used
    spec = ModelSpec(
        objective=opts.objective,
        failures=opts.max_failures if opts.objective == "expected" else None,
        worst_failures=opts.worst_failures,
        combiner_replicas=opts.combiner_replicas,
        min_worst=opts.min_accuracy_under_failure,
        max_used=max_used if n + opts.combiner_replicas * len(family.combiners) > MAX_EXACT_SERVERS else None,
        current=current,
        move_cost=opts.move_cost,
    )
    notes: list[str] = []
    model = None
    if incumbent is not None and inc_score >= ub - TOL * max(1.0, abs(ub)) and opts.objective == "expected":
        # the starting plan reaches the family's bound: proved, the search would only confirm it
        result, placement = None, None
        notes.append("the starting plan reaches the relaxation bound (proved without search)")
    else:
        model = build_family_model(data, spec)
        result, placement = _run(model, family, ctx)
    if placement is not None and opts.objective == "worst-case":
        # stage 2: among the plans with this worst case, the most accurate on average
        t_star = objective_value(family, placement, cluster, None, opts.worst_failures).worst
        if time.perf_counter() < ctx.deadline:
            floor = max(t_star, opts.min_accuracy_under_failure or 0.0) - 1e-9
            model2 = build_family_model(data, replace(spec, objective="expected", failures=None, min_worst=floor))
            r2, p2 = _run(model2, family, ctx)
            if (
                p2 is not None
                and objective_value(family, p2, cluster, None, opts.worst_failures).worst >= t_star - 1e-9
            ):
                placement = p2
                notes.append(
                    "ties on the worst case broken by expected accuracy"
                    + ("" if r2 is not None and r2.optimal else " (tie-break not proved: time limit)")
                )

    solver_info = result.to_dict() if result is not None else {}
    if placement is None and incumbent is None:
        status = "not_solved" if result is None else result.status
        if status == "infeasible":
            reason = "no placement meets the constraints"
            if opts.min_accuracy_under_failure is not None:
                reason = (
                    f"no placement keeps accuracy {opts.min_accuracy_under_failure:g} with "
                    f"{opts.worst_failures} server(s) down"
                )
            return FamilyOutcome(family.id, n, role, "infeasible", reason=reason, solver=solver_info, reduction=red)
        return FamilyOutcome(
            family.id,
            n,
            role,
            "time_limit" if result is not None else "not_solved",
            bound=ub,
            reason="no plan found within the time limit",
            solver=solver_info,
            reduction=red,
        )

    best = placement
    score_ilp = -math.inf
    if placement is not None:
        score_ilp = plan_score(family, placement, cluster, opts, current)[0]
    if incumbent is not None and inc_score > score_ilp + TOL:
        best = incumbent
        if result is not None:
            notes.append("the starting plan was not improved on")
    value, ov, mv = plan_score(family, best, cluster, opts, current)

    # what is proved about the family
    bound = ub
    proved = result is not None and result.optimal
    if model is not None and result is not None and result.bound is not None and not restricted:
        tail = 0.0
        if opts.objective == "expected":
            tail = (1.0 - model.modeled_mass) * max(family.accuracy.values())
        bound = min(ub, max(value, result.bound + tail))
    elif result is None or not result.has_solution:
        proved = False
    rel_gap = max(0.0, bound - value) / max(abs(bound), 1e-12)
    if rel_gap <= max(opts.gap, 1e-7) + 1e-9 and (proved or bound <= value + TOL):
        status = "solved"
    elif result is None or result.status == "time_limit":
        status = "time_limit"
    else:
        status = "unproven"
    if restricted and result is not None:
        notes.append(
            f"searched {len(cand)} of the servers left after the exact cuts "
            f"(the most promising; the bound still covers every server)"
        )
    searched = model is not None and result is not None
    if (
        searched
        and opts.objective == "expected"
        and model.failures_modeled is not None
        and model.modeled_mass < 1.0 - 1e-12
    ):
        notes.append(
            f"model counts states with <= {model.failures_modeled} of {len(cand)} candidates down "
            f"(probability {model.modeled_mass:.6f})"
        )
    return FamilyOutcome(
        family.id,
        n,
        role,
        status,
        value=value,
        bound=bound,
        expected_accuracy=ov.expected,
        worst_case_accuracy=ov.worst,
        accuracy_all_up=ov.all_up,
        moved_mib=mv,
        placement={k: tuple(v) for k, v in best.items()},
        reason="; ".join(notes),
        solver=solver_info,
        reduction=red,
        failures_modeled=model.failures_modeled if searched else None,
        modeled_mass=model.modeled_mass if searched else None,
    )


def _restrict(
    family: Family,
    data: FamilyData,
    fits: np.ndarray,
    relax: Relaxation | None,
    incumbent: Mapping[str, Sequence[str]] | None,
    opts: PlanOptions,
    cap: int = MAX_CANDIDATES,
) -> np.ndarray:
    """Keep at most ``cap`` servers: the incumbent's, then each upstream's best hosts in
    turn (by relaxation bound, else by reliability), then a few reliable servers for combiners."""
    n, m = family.n, len(data.servers)
    pos = {s: j for j, s in enumerate(data.servers)}
    chosen: list[int] = []
    for v in (incumbent or {}).values():
        for s in v:
            if pos[s] not in chosen:
                chosen.append(pos[s])
    n_cb = min(opts.combiner_replicas * len(family.combiners), 3)
    room_up = max(n, cap - n_cb)
    ranked = []
    for i in range(n):
        hosts = np.flatnonzero(fits[i])
        key = -relax.host_bound[i, hosts] if relax is not None else data.p[hosts]
        ranked.append([int(j) for j in hosts[np.lexsort((data.p[hosts], key))]])
    depth = 0
    while len(chosen) < room_up and any(depth < len(r) for r in ranked):
        for r in ranked:
            if depth < len(r) and r[depth] not in chosen and len(chosen) < room_up:
                chosen.append(r[depth])
        depth += 1
    if family.combiners:
        cb_hosts = [int(j) for j in np.argsort(data.p, kind="stable") if fits[n:, j].any() and j not in chosen]
        chosen += cb_hosts[: max(0, cap - len(chosen))]
    keep = np.zeros(m, dtype=bool)
    keep[chosen] = True
    return fits & keep[None, :]


def _run(model, family: Family, ctx: _Context) -> tuple[SolveResult | None, dict[str, tuple[str, ...]] | None]:
    left = ctx.deadline - time.perf_counter()
    if left <= 0.01:
        return None, None
    opts = ctx.options
    res = solve(
        model.problem,
        solver=ctx.solver,
        time_limit_s=left,
        gap_rel=max(opts.gap, 0.0),
        gap_abs=1e-9,
        threads=opts.threads,
    )
    if not res.has_solution:
        return res, None
    placement = read_placement(model)
    if not all(len(placement.get(u, ())) == 1 for u in family.upstream_names):
        raise SolverError(
            f"the solver returned an incomplete placement for family {family.id}",
            fix="try the other --solver, or report this as a bug",
        )
    problems = capacity_violations(family, placement, ctx.cluster)
    if problems:
        raise SolverError(
            f"the solver's placement for {family.id} breaks a constraint ({problems[0]})",
            fix="try the other --solver, or report this as a bug",
        )
    return res, placement


def _repair(
    family: Family, data: FamilyData, current: Mapping[str, Sequence[str]], cluster: Cluster
) -> dict[str, tuple[str, ...]] | None:
    """The running placement with what sat on missing servers moved: each lost upstream to the most
    reliable free host, each lost combiner greedily (a cheap starting plan for a re-plan)."""
    n = family.n
    pos = {s: j for j, s in enumerate(data.servers)}
    taken: set[int] = set()
    tup: list[int | None] = []
    for i, u in enumerate(family.upstream_names):
        j = pos.get((current.get(u) or (None,))[0])
        if j is not None and data.fits[i, j] and j not in taken:
            tup.append(j)
            taken.add(j)
        else:
            tup.append(None)
    for i in range(n):
        if tup[i] is None:
            hosts = [j for j in np.argsort(data.p, kind="stable") if data.fits[i, j] and j not in taken]
            if not hosts:
                return None
            tup[i] = int(hosts[0])
            taken.add(int(hosts[0]))
    keep = {c.name: tuple(s for s in current.get(c.name, ()) if s in pos) for c in family.combiners}
    return _greedy(family, data, tuple(tup), cluster, keep={k: v for k, v in keep.items() if v})


def _reaches(data: FamilyData, i: int, k: int, s: int, t: int) -> bool:
    """Upstream i on server s can feed combiner k on server t (a path exists, within the SLO)."""
    pl = data.pair_lat
    lat = pl.at((i, k), s, t) if isinstance(pl, PairLatency) else float(pl[(i, k)][s, t])
    return bool(np.isfinite(lat) and (data.slo_ms is None or lat <= data.slo_ms))


def _placement_fits(family: Family, placement: Mapping[str, Sequence[str]], cluster: Cluster) -> bool:
    """Whether a given placement (a running one) is valid on ``cluster``: known servers, capacity,
    anti-affinity, SLO, and a path for every answer."""
    if not all(s in cluster.index for v in placement.values() for s in v):
        return False
    if not all(len(placement.get(u, ())) == 1 for u in family.upstream_names):
        return False
    if set(placement) - set(family.component_names()):
        return False
    try:
        return not capacity_violations(family, placement, cluster)
    except MelplanError:
        return False


def _meets_floor(family: Family, placement, cluster: Cluster, opts: PlanOptions) -> bool:
    if opts.min_accuracy_under_failure is None:
        return True
    ov = objective_value(family, placement, cluster, None, opts.worst_failures)
    return ov.worst >= opts.min_accuracy_under_failure - 1e-12


def _greedy(
    family: Family,
    data: FamilyData,
    tup: tuple[int, ...],
    cluster: Cluster,
    keep: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, tuple[str, ...]] | None:
    """Upstreams on ``tup``; each combiner (unless ``keep`` places it) on the most reliable member
    server with room, else on the most reliable server that takes it (capacity and SLO), else left
    out.  None when the result breaks a constraint."""
    n = family.n
    placement: dict[str, tuple[str, ...]] = {family.upstreams[i].name: (data.servers[j],) for i, j in enumerate(tup)}
    mem_left = data.mem_mib.copy()
    cpu_left = data.gmacs.copy()
    for i, j in enumerate(tup):
        mem_left[j] -= data.comp_mib[i]
        cpu_left[j] -= data.comp_gmacs[i]
    pos = {s: j for j, s in enumerate(data.servers)}
    inputs = combiner_inputs(family)
    for name, servers in (keep or {}).items():
        k = [cb.name for cb in family.combiners].index(name)
        c = n + k
        servers = tuple(
            s for s in servers if data.fits[c, pos[s]] and all(_reaches(data, i, k, tup[i], pos[s]) for i in inputs[k])
        )
        if not servers:
            continue
        placement[name] = servers
        for s in servers:
            mem_left[pos[s]] -= data.comp_mib[c]
            cpu_left[pos[s]] -= data.comp_gmacs[c]
    order = sorted(range(len(family.combiners)), key=lambda k: -len(family.combiners[k].serves[0]))
    useful = useful_combiners(family)
    for k in order:
        if family.combiners[k].name in placement or not useful[k]:
            continue
        c = n + k
        members = set(tup[i] for i in inputs[k])
        ranked = sorted(range(len(data.servers)), key=lambda j: (j not in members, j not in tup, data.p[j], j))
        for j in ranked:
            if (
                not data.fits[c, j]
                or data.comp_mib[c] > mem_left[j] + 1e-12
                or data.comp_gmacs[c] > cpu_left[j] + 1e-12
            ):
                continue
            if not all(_reaches(data, i, k, tup[i], j) for i in inputs[k]):
                continue
            placement[family.combiners[k].name] = (data.servers[j],)
            mem_left[j] -= data.comp_mib[c]
            cpu_left[j] -= data.comp_gmacs[c]
            break
        if len(placement) > 40:  # pragma: no cover - defensive
            break
    return placement if not capacity_violations(family, placement, cluster) else None


# -- feasibility ------------------------------------------------------------------------------------


def infeasibility_reason(family: Family, cluster: Cluster, data: FamilyData) -> str | None:
    """Why no placement of ``family`` exists on the cluster (None when one does)."""
    n = family.n
    m = len(cluster.servers)
    if n > m:
        return f"needs {n} servers (one per upstream), the cluster has {m}"
    for i, u in enumerate(family.upstreams):
        if data.fits[i].any():
            continue
        mem_ok = data.comp_mib[i] <= data.mem_mib
        cpu_ok = data.comp_gmacs[i] <= data.gmacs
        if not mem_ok.any():
            return (
                f"no server can hold upstream {u.name} ({data.comp_mib[i]:.2f} MiB; "
                f"the largest server has {data.mem_mib.max():g} MiB)"
            )
        if not (mem_ok & cpu_ok).any():
            return (
                f"no server with the memory can run upstream {u.name} at {cluster.workload.rate_rps:g} "
                f"requests/s ({data.comp_gmacs[i]:.3g} GMAC/s needed, at most {data.gmacs[mem_ok].max():g})"
            )
        best = float(data.single_lat[i][mem_ok & cpu_ok].min())
        return f"upstream {u.name} alone cannot meet the {data.slo_ms:g} ms SLO (fastest path {best:.2f} ms)"
    hosts = [set(np.flatnonzero(data.fits[i]).tolist()) for i in range(n)]
    matched = _matching(hosts)
    if matched < n:
        union = set().union(*hosts)
        return (
            f"needs {n} different servers that can each hold an upstream; {len(union)} server(s) can hold "
            f"one and at most {matched} upstream(s) can be placed at once"
        )
    return None


def _matching(hosts: list[set[int]]) -> int:
    """Size of a maximum matching of upstreams to distinct servers (augmenting paths)."""
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in sorted(hosts[i]):
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    return sum(1 for i in range(len(hosts)) if augment(i, set()))


# -- the planner ----------------------------------------------------------------------------------


def plan(catalog: Catalog | Sequence[Family], cluster: Cluster, options: PlanOptions | None = None) -> PlanResult:
    """Choose the family and placement that maximise the requested objective on ``cluster``.

    ``options.current`` may name servers no longer in ``cluster`` (removed after a failure):
    the components there count as moved.  Raises InputError (bad options, unknown pinned family,
    a current placement naming unknown components), InfeasiblePlanError (nothing can be placed:
    the message names the cause), SolverError (the solver failed or found nothing in time).
    """
    options = (options or PlanOptions()).validated()
    start = options.started if options.started is not None else time.perf_counter()
    families = list(catalog)
    if options.family is not None:
        pinned = [f for f in families if f.id == options.family]
        if not pinned:
            known = ", ".join(f.id for f in families[:8]) + (" ..." if len(families) > 8 else "")
            raise InputError(
                f"no family with id '{options.family}' in the catalog", field="family", fix=f"use one of: {known}"
            )
        families = pinned
    if not families:
        raise InputError("the catalog holds no family", field="--catalog", fix="point --catalog at a catalog directory")
    if options.current is not None and options.current_family is not None:
        cur_fam = next((f for f in families if f.id == options.current_family), None)
        if cur_fam is not None:
            unknown = set(options.current) - set(cur_fam.component_names())
            if unknown:
                raise InputError(
                    f"the current placement names unknown component(s) {sorted(unknown)} of {cur_fam.id}",
                    field="current",
                    fix=f"use {', '.join(cur_fam.component_names())}",
                )
    solver = choose_solver(options.solver)
    protected = {cluster.ingress} if cluster.ingress is not None else set()  # nothing stands in for it
    if options.current is not None:
        protected |= {s for v in options.current.values() for s in v if s in cluster.index}
    links = link_dominance(cluster) if cluster.workload.latency_slo_ms is not None and options.reduce else None
    ctx = _Context(cluster, options, solver, start + options.time_limit_s, frozenset(protected), links)

    outcomes: dict[str, FamilyOutcome] = {}
    queue = []
    hard_stop = ctx.deadline + 0.5  # quick plans after the limit, then nothing
    # single models first: their data and a quick plan are cheap, so some plan exists early
    families_ordered = sorted(families, key=lambda f: f.n != 1)
    for fam in families_ordered:
        if time.perf_counter() >= ctx.deadline:
            data = family_data(fam, cluster) if time.perf_counter() < hard_stop and fam.n == 1 else None
            outcomes[fam.id] = _out_of_time(fam, data, None, ctx, hard_stop)
            continue
        data = family_data(fam, cluster)
        if options.used:
            data = with_used(data, options.used)
        why = infeasibility_reason(fam, cluster, data)
        if why is None and options.min_accuracy_under_failure is not None:
            wub = worst_upper_bound(fam, options.worst_failures, cluster.ingress is not None)
            if wub < options.min_accuracy_under_failure:
                why = (
                    f"cannot keep accuracy {options.min_accuracy_under_failure:g} with {options.worst_failures} "
                    f"server(s) down: at best {wub:.4f}"
                )
        if why is not None:
            outcomes[fam.id] = FamilyOutcome(fam.id, fam.n, role_of(fam), "infeasible", reason=why)
            continue
        relax = relaxation(fam, data) if options.objective == "expected" else None
        if options.objective == "expected":
            ub = relax.bound if relax is not None else max(fam.accuracy.values())
            if options.move_cost > 0 and fam.id != options.current_family:
                ub -= options.move_cost * sum(u.weight_bytes for u in fam.upstreams) / float(1 << 20)
        else:
            ub = worst_upper_bound(fam, options.worst_failures, cluster.ingress is not None)
        queue.append((fam, data, ub, relax))
    if not queue and not any(o.value is not None for o in outcomes.values()):
        if any(o.status == "not_solved" for o in outcomes.values()):
            raise SolverError(
                f"no plan found within the time limit of {options.time_limit_s:g} s",
                field="--time-limit",
                fix="give a longer --time-limit",
            )
        raise _infeasible(families, cluster, outcomes, options)

    # single models first (cheap, and needed for the comparison), then the most promising
    queue.sort(key=lambda t: (t[0].n != 1, -t[2], t[0].id))
    best_value = -math.inf
    done = 0
    for fam, data, ub, relax in queue:
        # a bound equal to the best value may still win the worst-case tie-break (by expected
        # accuracy): only a bound strictly below prunes there
        cannot_beat = ub < best_value - TOL if options.objective == "worst-case" else ub <= best_value + TOL
        if fam.n > 1 and cannot_beat:
            outcomes[fam.id] = FamilyOutcome(
                fam.id,
                fam.n,
                role_of(fam),
                "pruned",
                bound=ub,
                reason=f"its bound {ub:.5f} cannot beat {best_value:.5f}",
            )
            continue
        if time.perf_counter() >= ctx.deadline:
            out = _out_of_time(fam, data, ub, ctx, hard_stop if best_value == -math.inf or fam.n == 1 else 0.0)
        else:
            out = _solve_family(fam, data, ctx, ub, relax)
        outcomes[fam.id] = out
        if out.value is not None:
            best_value = max(best_value, out.value)
        done += 1
        elapsed = time.perf_counter() - start
        if options.progress is not None and elapsed > PROGRESS_AFTER_S:
            top_bound = max(
                [o.bound for o in outcomes.values() if o.bound is not None and o.status != "pruned"] or [best_value]
            )
            options.progress(
                f"[{elapsed:6.1f} s] {done}/{len(queue)} families searched ({fam.id}: {out.status}); "
                f"best {best_value:.5f}, bound {max(top_bound, best_value):.5f}"
            )

    feasible = [o for o in outcomes.values() if o.value is not None]
    if not feasible:
        stuck = [o for o in outcomes.values() if o.status in ("time_limit", "not_solved")]
        if stuck:
            raise SolverError(
                f"no plan found within the time limit of {options.time_limit_s:g} s "
                f"({len(stuck)} family(ies) unfinished)",
                field="--time-limit",
                fix="give a longer --time-limit",
            )
        raise _infeasible(families, cluster, outcomes, options)
    chosen = max(feasible, key=lambda o: (o.value, o.expected_accuracy or 0.0, -len(_used(o.placement)), o.family))
    singles = [o for o in feasible if o.n == 1]
    best_single = max(singles, key=lambda o: (o.value, o.expected_accuracy or 0.0, o.family)) if singles else None

    # what is proved: every family solved to the gap, pruned by its bound, or infeasible
    bounds = [o.bound for o in outcomes.values() if o.status not in ("pruned", "infeasible") and o.bound is not None]
    top = max([chosen.value] + bounds)
    gap = max(0.0, top - chosen.value) / max(abs(top), 1e-12)
    open_ = [o for o in outcomes.values() if o.status not in ("solved", "pruned", "infeasible")]
    timed_out = [o for o in open_ if o.status in ("time_limit", "not_solved")]
    # proved when every family is settled or carries a bound, and no bound beats the chosen plan by
    # more than the gap (a family left open whose bound is met does not make the plan unproven)
    unbounded = [o for o in open_ if o.bound is None]
    proven = not unbounded and gap <= max(options.gap, 1e-7) + 1e-9

    fam = next(f for f in families if f.id == chosen.family)
    ev = evaluate_placement(fam, chosen.placement, cluster)
    order = list(fam.upstream_names) + [c.name for c in fam.combiners]
    placement = {k: tuple(chosen.placement[k]) for k in order if k in chosen.placement}
    status = "optimal" if proven else ("time_limit" if timed_out else "feasible")
    wall = time.perf_counter() - start
    notes = _notes(chosen, outcomes, options, proven, gap, fam, placement, cluster)
    solver_block = {
        "name": "HiGHS" if solver == "highs" else "CBC",
        "status": status,
        "gap": None if unbounded else round(gap, 8),  # unknown while a family has no bound
        "wall_s": round(wall, 4),
        "time_limit_s": options.time_limit_s,
    }
    ovk = objective_value(fam, placement, cluster, options.max_failures, options.worst_failures)
    planner_block: dict[str, Any] = {
        "max_failures": options.failures_label,
        "objective_value": _r(chosen.value),
        "proven_optimal": proven,
        "probability_left_out": _r(1.0 - ovk.covered, 12) if options.max_failures is not None else 0.0,
        "combiner_replicas": options.combiner_replicas,
        "min_accuracy_under_failure": options.min_accuracy_under_failure,
        "candidates": chosen.reduction.to_dict() if chosen.reduction else None,
        "families": [outcomes[f.id].to_dict() for f in _ordered(families, outcomes)],
        "best_single": None
        if best_single is None
        else {
            "family": best_single.family,
            "value": _r(best_single.value),
            "expected_accuracy": _r(best_single.expected_accuracy),
            "placement": {k: list(v) for k, v in (best_single.placement or {}).items()},
        },
        "gain_over_best_single": None if best_single is None else _r(chosen.value - best_single.value),
        "notes": list(notes),
        "all_up": _all_up_route(fam, placement, cluster),
    }
    if chosen.moved_mib is not None:
        planner_block["moved_mib"] = _r(chosen.moved_mib)
        planner_block["migration_weight"] = options.migration_weight
    the_plan = Plan(
        family=fam.id,
        placement=placement,
        objective=options.objective,
        expected_accuracy=ev.expected_accuracy,
        accuracy_all_up=ev.accuracy_all_up,
        worst_case_accuracy=dict(ev.worst_case_accuracy),
        fallback=tuple(ev.fallback),
        solver=solver_block,
        servers=ev.servers,
        latency_ms=ev.latency_ms,
        extra={"dataset": fam.dataset.get("name"), "planner": planner_block, "network": ev.network_dict()},
    )
    the_plan = the_plan.embed(fam, cluster, catalog_dir=getattr(catalog, "root", None))
    considered = tuple(outcomes[f.id] for f in _ordered(families, outcomes))
    return PlanResult(the_plan, considered, chosen, best_single, proven, math.inf if unbounded else gap, notes, wall)


def _all_up_route(family: Family, placement, cluster: Cluster) -> dict[str, Any]:
    r = RouteTable(family, placement, cluster).route_down(())
    return {"answer": r.answer, "accuracy": r.accuracy, "servers": list(r.servers)}


def _ordered(families: Sequence[Family], outcomes: Mapping[str, FamilyOutcome]) -> list[Family]:
    rank = {"solved": 0, "time_limit": 0, "pruned": 1, "not_solved": 1, "infeasible": 2}

    def key(f: Family):
        o = outcomes[f.id]
        v = o.value if o.value is not None else (o.bound if o.bound is not None else -1.0)
        return (rank.get(o.status, 3), -v, f.id)

    return sorted((f for f in families if f.id in outcomes), key=key)


def _used(placement) -> set[str]:
    return {s for v in (placement or {}).values() for s in v}


def _notes(
    chosen: FamilyOutcome,
    outcomes: Mapping[str, FamilyOutcome],
    options: PlanOptions,
    proven: bool,
    gap: float,
    fam: Family,
    placement,
    cluster: Cluster,
) -> tuple[str, ...]:
    notes = []
    red = chosen.reduction
    if red is not None and (red.cannot_host or red.dominated or red.bounded):
        notes.append(
            f"{_n(red.servers, 'server')} reduced to {_n(red.candidates, 'candidate')} for {chosen.family}: "
            f"{red.cannot_host} cannot hold any of its components, {red.dominated} dominated by at least "
            f"{_n(red.max_used, 'other')} (a plan uses at most {_n(red.max_used, 'server')}), {red.bounded} "
            f"cut by the relaxation bound; every cut is exact"
            + (
                "; the search then ran on the most promising of the rest, the bound still covers them all"
                if red.restricted
                else ""
            )
        )
    pruned = [o for o in outcomes.values() if o.status == "pruned"]
    if pruned:
        notes.append(f"{_n(len(pruned), 'family', 'families')} not solved: the upper bound cannot beat the chosen plan")
    if chosen.modeled_mass is not None and chosen.modeled_mass < 1.0 - 1e-12:
        notes.append(
            f"the model of {chosen.family} counts the states with at most {chosen.failures_modeled} "
            f"candidate servers down (probability {chosen.modeled_mass:.6f}); the rest is in the bound"
        )
    if options.objective == "expected" and options.max_failures is not None:
        ov = objective_value(fam, placement, cluster, options.max_failures)
        notes.append(
            f"states with more than {options.max_failures} of the plan's servers down have probability "
            f"{1.0 - ov.covered:.2e}; the expected accuracy reported counts every state"
        )
    if proven:
        notes.append(f"proven optimal for the whole instance (relative gap {gap:.1e} <= {max(options.gap, 1e-7):.0e})")
    else:
        open_ = [o.family for o in outcomes.values() if o.status not in ("solved", "pruned", "infeasible")]
        if gap > max(options.gap, 1e-7) + 1e-9:
            notes.append(f"NOT proven optimal: the best bound is {gap:.3g} (relative) above the chosen plan")
        else:
            notes.append(f"NOT proven optimal: {', '.join(open_[:3])} has no bound (the time limit ran out first)")
    return tuple(notes)


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _infeasible(
    families: Sequence[Family], cluster: Cluster, outcomes: Mapping[str, FamilyOutcome], options: PlanOptions
) -> InfeasiblePlanError:
    """The error that points at the cause when no family can be placed."""
    src = cluster.source
    reasons = {fid: o.reason for fid, o in outcomes.items()}
    rate = cluster.workload.rate_rps
    mem_max = max(s.memory_mb for s in cluster.servers)
    gm_max = max(s.compute_gmacs for s in cluster.servers)
    if options.min_accuracy_under_failure is not None and all(("keep accuracy" in r) for r in reasons.values()):
        best = max(
            (worst_upper_bound(f, options.worst_failures, cluster.ingress is not None) for f in families), default=0.0
        )
        return InfeasiblePlanError(
            f"no family keeps accuracy {options.min_accuracy_under_failure:g} with {options.worst_failures} "
            f"server(s) down (at best {best:.4f})",
            file=src,
            field="--min-accuracy-under-failure",
            fix="lower the floor, allow fewer failures, or add servers",
        )
    ups = [(u, f) for f in families for u in f.upstreams]
    small, small_f = min(ups, key=lambda t: t[0].memory_bytes)
    if small.memory_bytes / (1 << 20) > mem_max:
        return InfeasiblePlanError(
            f"no server can hold the smallest upstream of any family ({small.name} of {small_f.id} needs "
            f"{small.memory_bytes / (1 << 20):.2f} MiB; the largest server has {mem_max:g} MiB)",
            file=src,
            field="servers[].memory_mb",
            fix="add a server with more memory, or train smaller families",
        )
    light, _ = min(ups, key=lambda t: t[0].macs)
    if light.macs * rate / 1e9 > gm_max:
        return InfeasiblePlanError(
            f"no server can run even the lightest upstream at {rate:g} requests/s ({light.macs * rate / 1e9:.3g} "
            f"GMAC/s needed; the fastest server has {gm_max:g})",
            file=src,
            field="workload.rate_rps",
            fix="lower workload.rate_rps or add faster servers",
        )
    slo = cluster.workload.latency_slo_ms
    if slo is not None and reasons and all("SLO" in r for r in reasons.values()):
        fastest = math.inf
        for f in families:
            data = family_data(f, cluster)
            cap = (data.comp_mib[: f.n, None] <= data.mem_mib[None, :]) & (
                data.comp_gmacs[: f.n, None] <= data.gmacs[None, :]
            )
            if cap.any():
                fastest = min(fastest, float(data.single_lat[cap].min()))
        return InfeasiblePlanError(
            f"the latency SLO of {slo:g} ms cannot be met by any path (the fastest takes {fastest:.2f} ms)",
            file=src,
            field="workload.latency_slo_ms",
            fix="raise the SLO, move the ingress, or add faster links or servers",
        )
    need = min(f.n for f in families)
    if need > len(cluster.servers):
        return InfeasiblePlanError(
            f"fewer servers ({len(cluster.servers)}) than upstreams: every family needs at least {need}",
            file=src,
            field="servers",
            fix="add servers, or add single-model families to the catalog",
        )
    detail = "; ".join(f"{fid}: {r}" for fid, r in list(reasons.items())[:4])
    return InfeasiblePlanError(
        f"no family can be placed on this cluster ({detail})",
        file=src,
        field="servers",
        fix="add servers with more memory or compute, or relax the SLO",
    )
