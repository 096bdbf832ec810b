"""Joint placement of several services on one site: column generation with a proven bound (no torch).

The joint problem (docs/multi-service.md writes it out): every service ``s`` (weight ``w_s``)
gets one family of its catalog and a placement; memory and compute of a server are shared by
all the services placed on it; the failure scenarios are the site's; the objective is
``sum_s w_s * E_s`` where ``E_s`` is the exact expected accuracy of service s (evaluator), or the
weighted sum of each service's accuracy left with F servers down (``worst-case``); a service's
``min_accuracy`` is a floor on its exact expected accuracy.

Decomposition (Dantzig-Wolfe).  A *column* is one service's family and placement with its exact
value and its use of each server.  The master chooses one column per service::

    max  sum_c w_s(c) v_c y_c
    s.t. sum_{c of s} y_c = 1                       (every service placed once)   dual mu_s
         sum_c mem_c[j] y_c <= memory_j             (shared memory)               dual pi_j >= 0
         sum_c cpu_c[j] y_c <= compute_j            (shared compute)              dual rho_j >= 0
         y_c in {0, 1}

Its LP relaxation over the columns found so far gives prices ``pi, rho``; *pricing* looks, for
each service, for a column with positive reduced value ``w_s v_c - pi.mem_c - rho.cpu_c - mu_s``:
the best upstream tuples of the priced relaxation completed greedily, then the per-family ILP
(melplan.planner.ilp with a per-(component, server) cost term) on a handful of candidate servers.

The bound is Lagrangian, valid for any prices ``pi, rho >= 0``::

    OPT <= sum_s max_c (w_s v_c - pi.mem_c - rho.cpu_c) + sum_j (pi_j memory_j + rho_j compute_j)

and the inner maximum is bounded *without* trusting the heuristic: by the relaxation of
melplan.planner.planner (combiners free and always up, upstreams anywhere they fit), with each
upstream's price on its server, maximised exactly over upstream tuples (a host with n hosts at
least as reliable and no dearer is never needed).  The smallest such value over the rounds is the
reported bound; the gap is against it, never against the LP.

Baselines for the report: each service planned alone by ``melplan.planner.planner.plan`` on the
whole site (ignoring the others: the result may overflow servers), and the services planned one
after another in order of weight, each on what the previous ones left.

Raises InputError (bad options), InfeasiblePlanError (a service cannot be placed at all, or no
joint plan found places every service: the message names them), SolverError.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from melplan.core.catalog import Family
from melplan.core.errors import InfeasiblePlanError, InputError, MelplanError, SolverError
from melplan.core.evaluate import RouteTable, capacity_violations, evaluate_placement
from melplan.core.fileio import atomic_write_json
from melplan.core.plan import Plan
from melplan.core.services import Service, Site
from melplan.core.siteplan import SITE_SCHEMA
from melplan.planner.ilp import ModelSpec, build_family_model, family_data, read_placement
from melplan.planner.planner import (
    OBJECTIVES,
    PlanOptions,
    PlanResult,
    _greedy,
    best_without,
    infeasibility_reason,
    max_servers_per_plan,
    objective_value,
    plan,
    relaxation_probabilities,
    relaxed_value,
    worst_upper_bound,
)
from melplan.planner.solve import choose_solver, solve

MIB = float(1 << 20)
TOL = 1e-9
MAX_TUPLES = 200_000  # beyond this the priced relaxation falls back to a looser, separable bound
PRICING_TUPLES = 3  # columns tried per family and round from the best priced tuples
ILP_CANDIDATES = 10  # servers in a pricing ILP


@dataclass(frozen=True)
class SiteOptions:
    """What the joint plan optimises and how long it may search.

    ``max_failures``: F of the per-family pricing ILPs and the single-service baselines (the
    columns are always scored exactly, over every state); for ``worst-case``, the number of
    server failures each service's accuracy is taken at.  ``gap``: the relative gap to the
    bound at which the search stops.  ``ilp_pricing``: price with the per-family ILP too.
    """

    objective: str = "expected"
    max_failures: int | None = None
    combiner_replicas: int = 1
    solver: str | None = None
    time_limit_s: float = 60.0
    gap: float = 0.01
    threads: int | None = None
    ilp_pricing: bool = True
    max_rounds: int = 40
    baselines: bool = True

    def validated(self) -> SiteOptions:
        PlanOptions(
            objective=self.objective,
            max_failures=self.max_failures,
            combiner_replicas=self.combiner_replicas,
            solver=self.solver,
            time_limit_s=self.time_limit_s,
            gap=min(self.gap, 0.99),
        ).validated()
        if not 0.0 <= self.gap < 1.0:
            raise InputError(f"must be in [0, 1), got {self.gap!r}", field="--gap", fix="give e.g. 0.01")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise InputError(f"must be >= 1, got {self.max_rounds!r}", field="max_rounds", fix="give e.g. 40")
        return self

    @property
    def worst_failures(self) -> int:
        return self.max_failures if self.max_failures is not None else 1


@dataclass(frozen=True)
class Column:
    """One service's family and placement, scored exactly, with its use of each server."""

    service: int
    family: Family
    placement: Mapping[str, tuple[str, ...]]
    expected: float
    worst: float
    all_up: float
    value: float  # the service's objective: expected, or worst with F down
    use: Mapping[int, tuple[float, float]]  # server index -> (MiB, GMAC/s)
    origin: str

    @property
    def key(self) -> tuple:
        return (self.service, self.family.id, tuple(sorted((k, tuple(v)) for k, v in self.placement.items())))


@dataclass
class _FamilyInfo:
    family: Family
    fits: np.ndarray  # (components, servers over the whole site)
    p: np.ndarray  # (servers,) own down probabilities, the ingress's 0 (planner.relaxation_probabilities)
    comp_mib: np.ndarray
    comp_gmacs: np.ndarray
    relax_bound: float  # unpriced upper bound of the service objective (w excluded)
    aw: Mapping[frozenset, float]
    scale: float = 1.0  # P(the ingress and its domains are up): the relaxation's factor


@dataclass
class _Svc:
    index: int
    service: Service
    families: list[_FamilyInfo]
    excluded: dict[str, str]  # family id -> why it cannot serve (alone on the site)


@dataclass(frozen=True)
class ServiceOutcome:
    """What the site report says about one service."""

    name: str
    weight: float
    chosen: Column
    alone: Column | None  # its best plan with the site to itself
    sequential: Column | None  # its plan when placed one after another by weight (None: not placed)

    @property
    def gave_up(self) -> float | None:
        return None if self.alone is None else self.alone.value - self.chosen.value


@dataclass(frozen=True)
class SiteResult:
    """The joint plan, per-service plans, the proof, and the comparison with the usual ways."""

    site: Site
    plans: Mapping[str, Plan]
    outcomes: tuple[ServiceOutcome, ...]
    value: float
    bound: float
    gap: float
    status: str
    rounds: int
    columns: int
    wall_s: float
    baselines: Mapping[str, Any]
    servers: Mapping[str, Mapping[str, Any]]
    notes: tuple[str, ...]
    solver: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SITE_SCHEMA,
            "site": {
                "services_file": self.site.source,
                "cluster": self.site.cluster_path,
                "servers": len(self.site.cluster.servers),
            },
            "objective": self.solver.get("objective", "expected"),
            "objective_value": _r(self.value),
            "services": {name: p.to_dict() for name, p in self.plans.items()},
            "servers": {k: dict(v) for k, v in self.servers.items()},
            "solver": dict(self.solver),
            "report": self.report(),
        }

    def save(self, path) -> Any:
        """Write the site plan atomically (melplan.core.fileio); each service's weights reference gains
        its path relative to the plan's folder, as in a single-service plan."""
        d = self.to_dict()
        d["services"] = {name: p.file_dict(path) for name, p in self.plans.items()}
        return atomic_write_json(path, d, strict=True)

    def report(self) -> dict[str, Any]:
        rows = []
        for o in self.outcomes:
            rows.append(
                {
                    "service": o.name,
                    "weight": o.weight,
                    "family": o.chosen.family.id,
                    "value": _r(o.chosen.value),
                    "expected_accuracy": _r(o.chosen.expected),
                    "alone": None
                    if o.alone is None
                    else {
                        "family": o.alone.family.id,
                        "value": _r(o.alone.value),
                        "expected_accuracy": _r(o.alone.expected),
                    },
                    "gave_up": _r(o.gave_up),
                    "sequential": None
                    if o.sequential is None
                    else {"family": o.sequential.family.id, "value": _r(o.sequential.value)},
                }
            )
        return {"services": rows, "baselines": dict(self.baselines), "notes": list(self.notes)}


def _r(v: float | None, nd: int = 6) -> float | None:
    return None if v is None else round(float(v), nd)


# -- columns -------------------------------------------------------------------------------------


def _column(svc: _Svc, family: Family, placement: Mapping[str, Sequence[str]], opts: SiteOptions, origin: str):
    """Score a placement exactly; None when it breaks a constraint of the service alone or its floor."""
    cl = svc.service.cluster
    placed: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in placement.items() if v}
    placement = placed
    try:
        if capacity_violations(family, placement, cl):
            return None
        ov = objective_value(family, placement, cl, None, opts.worst_failures)
    except MelplanError:
        return None
    floor = svc.service.min_accuracy
    if floor is not None and ov.expected < floor - 1e-12:
        return None
    rate = cl.workload.rate_rps
    use: dict[int, list[float]] = {}
    for comp, servers in placement.items():
        c = family.component(comp)
        for s in servers:
            u = use.setdefault(cl.index[s], [0.0, 0.0])
            u[0] += c.memory_bytes / MIB
            u[1] += c.macs * rate / 1e9
    value = ov.expected if opts.objective == "expected" else ov.worst
    return Column(
        svc.index,
        family,
        placed,
        ov.expected,
        ov.worst,
        ov.all_up,
        value,
        {j: (u[0], u[1]) for j, u in use.items()},
        origin,
    )


def _prepare(site: Site, opts: SiteOptions) -> list[_Svc]:
    out = []
    for si, service in enumerate(site.services):
        fams: list[_FamilyInfo] = []
        excluded: dict[str, str] = {}
        for fam in service.catalog:
            data = family_data(fam, service.cluster, pairs=False)
            why = infeasibility_reason(fam, service.cluster, data)
            aw = best_without(fam)
            if opts.objective == "expected":
                # ingress and domains: E <= P(ingress up) * relaxation with own probabilities
                p_rel, scale = relaxation_probabilities(data)
                P = np.sort(p_rel[data.fits[: fam.n].any(axis=0)])[: fam.n]
                # the unpriced bound: the upstreams on the n most reliable hosts of any of them, in
                # the best order (loosened, valid: the relaxation only falls as a host gets worse)
                rb = 0.0
                if len(P) == fam.n:
                    perms = np.array(list(itertools.permutations(P)), dtype=float).reshape(-1, fam.n)
                    rb = scale * float(relaxed_value(fam, perms, aw).max())
            else:
                p_rel, scale = data.p, 1.0
                rb = worst_upper_bound(fam, opts.worst_failures, service.cluster.ingress is not None)
            if why is None and service.min_accuracy is not None and rb < service.min_accuracy - 1e-12:
                if opts.objective == "expected":
                    why = f"cannot reach min_accuracy {service.min_accuracy:g}: at best {rb:.4f}"
            if why is not None:
                excluded[fam.id] = why
                continue
            fams.append(_FamilyInfo(fam, data.fits, p_rel, data.comp_mib, data.comp_gmacs, rb, aw, scale))
        if not fams:
            detail = "; ".join(f"{k}: {v}" for k, v in list(excluded.items())[:3])
            raise InfeasiblePlanError(
                f"service '{service.name}' cannot be placed even with the site to itself ({detail})",
                file=site.source,
                field=f"services ({service.name})",
                fix="lower its min_accuracy or workload, give it other families, or add servers",
            )
        out.append(_Svc(si, service, fams, excluded))
    return out


def _pareto_hosts(p: np.ndarray, cost: np.ndarray, hosts: np.ndarray, keep: int) -> np.ndarray:
    """Hosts with fewer than ``keep`` others at least as reliable and no dearer (ties by index)."""
    if len(hosts) <= keep:
        return hosts
    order = hosts[np.lexsort((hosts, cost[hosts], p[hosts]))]
    best: list[float] = []
    kept = []
    for j in order:
        c = cost[j]
        if len(best) < keep or c < best[-1] - 1e-15:
            kept.append(j)
        if len(best) < keep:
            best.append(c)
            best.sort()
        elif c < best[-1]:
            best[-1] = c
            best.sort()
    return np.array(kept, dtype=np.int64)


@dataclass
class _Priced:
    bound: float  # upper bound of max over the family's columns of w*v - price
    tuples: list[tuple[int, ...]]  # best priced upstream tuples (site server indices)


def _price_family(fi: _FamilyInfo, w: float, pm: np.ndarray, pc: np.ndarray, opts: SiteOptions) -> _Priced:
    fam = fi.family
    n = fam.n
    cost = pm[None, :] * fi.comp_mib[:, None] + pc[None, :] * fi.comp_gmacs[:, None]  # (components, servers)
    hosts = [np.flatnonzero(fi.fits[i]) for i in range(n)]
    kept = [_pareto_hosts(fi.p, cost[i], h, n) for i, h in enumerate(hosts)]
    if opts.objective != "expected":
        # worst case: the family's bound on it, minus the cheapest host of every upstream
        ub = w * fi.relax_bound - sum(float(cost[i, h].min()) for i, h in enumerate(hosts))
        tup = _cheapest_tuple(cost, kept, fi.p)
        return _Priced(ub, [tup] if tup is not None else [])
    size = math.prod(len(k) for k in kept)
    if size > MAX_TUPLES:
        ub = w * fi.relax_bound - sum(float(cost[i, h].min()) for i, h in enumerate(hosts))
        tup = _cheapest_tuple(cost, kept, fi.p)
        return _Priced(ub, [tup] if tup is not None else [])
    grids = np.array(list(itertools.product(*kept)), dtype=np.int64).reshape(-1, n)
    if n > 1:
        distinct = np.ones(len(grids), dtype=bool)
        for a in range(n):
            for b in range(a + 1, n):
                distinct &= grids[:, a] != grids[:, b]
        grids = grids[distinct]
    if len(grids) == 0:
        return _Priced(-math.inf, [])
    vals = w * fi.scale * relaxed_value(fam, fi.p[grids], fi.aw) - cost[np.arange(n)[None, :], grids].sum(axis=1)
    top = np.argsort(-vals, kind="stable")[:PRICING_TUPLES]
    return _Priced(float(vals[top[0]]), [tuple(int(j) for j in grids[t]) for t in top])


def _cheapest_tuple(cost: np.ndarray, kept: list[np.ndarray], p: np.ndarray) -> tuple[int, ...] | None:
    taken: set[int] = set()
    out = []
    for i, k in enumerate(kept):
        order = k[np.lexsort((p[k], cost[i, k]))]
        j = next((int(j) for j in order if int(j) not in taken), None)
        if j is None:
            return None
        taken.add(j)
        out.append(j)
    return tuple(out)


def _candidates(svc: _Svc, fi: _FamilyInfo, tuples: list[tuple[int, ...]], cost_rank: np.ndarray, limit: int):
    """Site server indices for a family's small model: the tuples' servers, then reliable cheap hosts."""
    chosen: list[int] = []
    for t in tuples:
        for j in t:
            if j not in chosen:
                chosen.append(j)
    can = np.flatnonzero(fi.fits.any(axis=0))
    order = can[np.lexsort((can, fi.p[can], cost_rank[can]))]
    for j in order:
        if len(chosen) >= limit:
            break
        if int(j) not in chosen:
            chosen.append(int(j))
    return chosen[: max(limit, len({j for t in tuples for j in t}))]


def _greedy_column(svc: _Svc, fi: _FamilyInfo, tup: tuple[int, ...], opts: SiteOptions, pm, pc) -> Column | None:
    cl = svc.service.cluster
    fam = fi.family
    cost_rank = pm * 1.0 + pc
    cand = _candidates(svc, fi, [tup], cost_rank, fam.n + 3)
    names = [cl.names[j] for j in cand]
    data = family_data(fam, cl, names)
    local = tuple(cand.index(j) for j in tup)
    placement = _greedy(fam, data, local, cl)
    if placement is None:
        return None
    return _column(svc, fam, placement, opts, "priced")


def _ilp_column(
    svc: _Svc, fi: _FamilyInfo, tuples, opts: SiteOptions, pm, pc, solver: str, seconds: float
) -> Column | None:
    cl = svc.service.cluster
    fam = fi.family
    w = svc.service.weight
    cost_rank = pm + pc
    cand = _candidates(svc, fi, tuples, cost_rank, ILP_CANDIDATES)
    names = [cl.names[j] for j in cand]
    data = family_data(fam, cl, names)
    comps = list(fam.upstreams) + list(fam.combiners)
    cost = {}
    for ci, c in enumerate(comps):
        for j, s in zip(cand, names):
            v = (pm[j] * fi.comp_mib[ci] + pc[j] * fi.comp_gmacs[ci]) / w
            if v > 0:
                cost[(c.name, s)] = float(v)
    n_used = fam.n + opts.combiner_replicas * len(fam.combiners)
    spec = ModelSpec(
        objective=opts.objective,
        failures=opts.max_failures if opts.objective == "expected" else None,
        worst_failures=opts.worst_failures,
        combiner_replicas=opts.combiner_replicas,
        max_used=max_servers_per_plan(fam, opts.combiner_replicas) if n_used > 22 else None,
        cost=cost,
    )
    model = build_family_model(data, spec, name="price")
    res = solve(model.problem, solver=solver, time_limit_s=seconds, gap_rel=1e-4, gap_abs=1e-9, threads=opts.threads)
    if not res.has_solution:
        return None
    placement = read_placement(model)
    if not all(len(placement.get(u, ())) == 1 for u in fam.upstream_names):
        return None
    return _column(svc, fam, placement, opts, "ilp")


# -- the master ----------------------------------------------------------------------------------


class _Master:
    """Columns, and the LP/IP over them (scipy's HiGHS)."""

    def __init__(self, site: Site, svcs: list[_Svc]) -> None:
        self.site = site
        self.svcs = svcs
        self.cols: list[Column] = []
        self.keys: set[tuple] = set()
        self.cap = np.array([[s.memory_mb, s.compute_gmacs] for s in site.cluster.servers], dtype=float)
        self.penalty = 1.0 + sum(s.service.weight for s in svcs)  # an unplaced service costs more than all gains

    def add(self, col: Column | None) -> bool:
        if col is None or col.key in self.keys:
            return False
        self.keys.add(col.key)
        self.cols.append(col)
        return True

    def _matrices(self):
        from scipy.sparse import coo_matrix

        ns = len(self.svcs)
        nc = len(self.cols)
        used = sorted({j for c in self.cols for j in c.use})
        row_of = {j: r for r, j in enumerate(used)}
        rows, cols, vals = [], [], []
        for ci, c in enumerate(self.cols):
            for j, (mem, cpu) in c.use.items():
                rows += [2 * row_of[j], 2 * row_of[j] + 1]
                cols += [ci, ci]
                vals += [mem, cpu]
        A_ub = coo_matrix((vals, (rows, cols)), shape=(2 * len(used), nc + ns)).tocsr()
        b_ub = self.cap[used].reshape(-1)
        er = [c.service for c in self.cols] + list(range(ns))
        A_eq = coo_matrix((np.ones(nc + ns), (er, np.arange(nc + ns))), shape=(ns, nc + ns)).tocsr()
        w = np.array([s.service.weight for s in self.svcs])
        obj = np.concatenate([[w[c.service] * c.value for c in self.cols], np.full(ns, -self.penalty)])
        return used, A_ub, b_ub, A_eq, obj

    def lp(self):
        """(value, memory prices, compute prices, service duals) of the LP over the columns."""
        from scipy.optimize import linprog

        used, A_ub, b_ub, A_eq, obj = self._matrices()
        ns = len(self.svcs)
        res = linprog(-obj, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=np.ones(ns), bounds=(0, None), method="highs")
        if res.status != 0:
            raise SolverError(f"the master LP failed ({res.message})", fix="report this as a bug")
        m = len(self.site.cluster.servers)
        pm = np.zeros(m)
        pc = np.zeros(m)
        dual = -np.asarray(res.ineqlin.marginals)
        for r, j in enumerate(used):
            pm[j] = max(0.0, dual[2 * r])
            pc[j] = max(0.0, dual[2 * r + 1])
        mu = -np.asarray(res.eqlin.marginals)
        return -float(res.fun), pm, pc, mu

    def ip(self, seconds: float, gap: float, fixed: np.ndarray | None = None):
        """(chosen column per service or None when unplaced, value, proved) of the IP over the columns;
        ``fixed[c]``: column c is left out (reduced-cost fixing)."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        used, A_ub, b_ub, A_eq, obj = self._matrices()
        upper = np.ones(len(obj))
        if fixed is not None:
            upper[: len(fixed)] = np.where(fixed, 0.0, 1.0)
        ns = len(self.svcs)
        cons = [LinearConstraint(A_eq, np.ones(ns), np.ones(ns))]
        if A_ub.shape[0]:
            cons.append(LinearConstraint(A_ub, -np.inf, b_ub))
        res = milp(
            -obj,
            constraints=cons,
            integrality=np.ones(len(obj)),
            bounds=Bounds(0, upper),
            options={"time_limit": max(0.5, seconds), "mip_rel_gap": gap * 0.1},
        )
        if res.x is None:
            raise SolverError(f"the master IP found no solution ({res.message})", fix="give a longer --time-limit")
        x = res.x
        chosen: list[Column | None] = [None] * ns
        for ci, c in enumerate(self.cols):
            if x[ci] > 0.5:
                chosen[c.service] = c
        return chosen, -float(res.fun), res.status == 0


# -- the planner ---------------------------------------------------------------------------------


def plan_site(site: Site, options: SiteOptions | None = None) -> SiteResult:
    """Place every service of ``site`` jointly; see the module docstring for the model."""
    opts = (options or SiteOptions()).validated()
    start = time.perf_counter()
    deadline = start + opts.time_limit_s
    solver = choose_solver(opts.solver)
    svcs = _prepare(site, opts)
    master = _Master(site, svcs)
    notes: list[str] = []
    single_opts = PlanOptions(
        objective=opts.objective,
        max_failures=opts.max_failures,
        combiner_replicas=opts.combiner_replicas,
        solver=opts.solver,
        gap=1e-4,
        threads=opts.threads,
    )

    # 1. baselines, which are also the first columns
    alone: list[Column | None] = [None] * len(svcs)
    sequential: list[Column | None] = [None] * len(svcs)
    alone_t = seq_t = 0.0
    cache: dict = {}
    if opts.baselines:
        t0 = time.perf_counter()
        for svc in svcs:
            res = _plan_alone(svc, single_opts, deadline, None, cache)
            if res is not None:
                alone[svc.index] = _column(
                    svc, svc.service.catalog.get(res.chosen.family), res.chosen.placement or {}, opts, "alone"
                )
                for o in res.considered:
                    if o.placement:
                        master.add(_column(svc, svc.service.catalog.get(o.family), o.placement, opts, "alone"))
        alone_t = time.perf_counter() - t0
        t0 = time.perf_counter()
        used: dict[str, list[float]] = {}
        for svc in sorted(svcs, key=lambda v: (-v.service.weight, v.index)):
            res = _plan_alone(svc, single_opts, deadline, {k: (v[0], v[1]) for k, v in used.items()}, cache)
            if res is None:
                continue
            col = _column(
                svc, svc.service.catalog.get(res.chosen.family), res.chosen.placement or {}, opts, "sequential"
            )
            sequential[svc.index] = col
            master.add(col)
            if col is not None:
                for j, (mem, cpu) in col.use.items():
                    u = used.setdefault(site.cluster.names[j], [0.0, 0.0])
                    u[0] += mem
                    u[1] += cpu
        seq_t = time.perf_counter() - t0
    for c in alone:
        master.add(c)

    # 2. column generation: LP prices, priced columns, Lagrangian bound
    m = len(site.cluster.servers)
    zero = np.zeros(m)
    bound = _lagrangian(svcs, zero, zero, site, opts, master)[0]
    rounds = 0
    lp_value = -math.inf
    best_ip = -math.inf
    chosen: list[Column | None] = [None] * len(svcs)
    ip_proved = False
    # column generation stops early enough to leave the integer master a quarter of the time
    cg_deadline = deadline - max(1.0, 0.25 * opts.time_limit_s)
    while rounds < opts.max_rounds and time.perf_counter() < cg_deadline:
        rounds += 1
        lp_value, pm, pc, mu = master.lp()
        lb, priced = _lagrangian(svcs, pm, pc, site, opts, master)
        bound = min(bound, lb)
        added = 0
        for svc, items in zip(svcs, priced):
            w = svc.service.weight
            tol = 1e-9 * max(1.0, w)
            best_rc = -math.inf  # the best reduced value of a column found for this service
            for fi, pr in items:
                if pr.bound <= mu[svc.index] + tol:
                    continue
                for tup in pr.tuples:
                    col = _greedy_column(svc, fi, tup, opts, pm, pc)
                    if col is not None:
                        best_rc = max(best_rc, w * col.value - _price(col, pm, pc) - mu[svc.index])
                        added += master.add(col)
            # the per-family ILP with prices, for the family with the best priced bound, when the
            # greedy columns stay short of that bound
            open_ = [(pr.bound, k) for k, (fi, pr) in enumerate(items) if pr.bound > mu[svc.index] + tol]
            if not opts.ilp_pricing or not open_ or time.perf_counter() >= cg_deadline:
                continue
            top_bound, k = max(open_)
            if best_rc >= top_bound - mu[svc.index] - 1e-6 * max(w, abs(top_bound)):
                continue
            fi, pr = items[k]
            left = cg_deadline - time.perf_counter()
            col = _ilp_column(svc, fi, pr.tuples, opts, pm, pc, solver, max(0.2, min(5.0, left / 2)))
            if col is not None and w * col.value - _price(col, pm, pc) - mu[svc.index] > tol:
                added += master.add(col)
        if lp_value >= bound - max(1e-9, opts.gap * 0.1 * abs(bound)):  # the LP is within a tenth of the target
            break
        if not added:
            break
    if rounds == 0:
        lp_value = -math.inf

    # 3. the integer master over every column found
    w_of = [svc.service.weight for svc in svcs]

    def total(cols) -> float:
        return sum(w_of[c.service] * c.value for c in cols if c is not None)

    # reduced-cost fixing (exact): with the LP optimal over the columns, a plan using column c is
    # worth at most LP + rc_c (rc_c <= 0), so columns with rc_c below (incumbent - LP) cannot be
    # in a plan better than the incumbent (the sequential plan)
    fixed = None
    if all(c is not None for c in sequential) and rounds > 0:
        lp_final, pm, pc, mu = master.lp()
        slack = lp_final - total(sequential)
        rc = np.array([w_of[c.service] * c.value - _price(c, pm, pc) - mu[c.service] for c in master.cols])
        fixed = rc < -slack - 1e-7 * max(1.0, abs(lp_final))
        notes.append(
            f"{int(fixed.sum())} of {len(fixed)} columns fixed out by their reduced cost before the integer master"
        )
    left = max(0.5, deadline - time.perf_counter() - 1.0)
    chosen, best_ip, ip_proved = master.ip(left, opts.gap, fixed)
    # never worse than the sequential baseline, whose columns are in the master (the IP may stop
    # at its time limit on an incumbent below it)

    if all(c is not None for c in sequential) and (
        any(c is None for c in chosen) or total(sequential) > total(chosen) + 1e-12
    ):
        chosen = list(sequential)
        notes.append("the integer master stopped on a plan below the sequential one; the sequential plan is kept")
    unplaced = [svcs[i].service.name for i, c in enumerate(chosen) if c is None]
    if unplaced:
        raise InfeasiblePlanError(
            f"no joint plan found that places every service: {', '.join(unplaced)} could not be placed "
            f"beside the others (searched {len(master.cols)} columns in {time.perf_counter() - start:.1f} s)",
            file=site.source,
            field="services",
            fix="add servers or memory, lower the workloads or floors, or give a longer --time-limit",
        )
    value = sum(svcs[c.service].service.weight * c.value for c in chosen if c is not None)
    gap = max(0.0, bound - value) / max(abs(bound), 1e-12)
    wall = time.perf_counter() - start
    status = (
        "optimal"
        if gap <= max(opts.gap, 1e-7) + 1e-12
        else ("time_limit" if wall >= opts.time_limit_s - 0.5 else "feasible")
    )
    solver_block = {
        "name": "HiGHS",
        "method": "column generation (Dantzig-Wolfe), Lagrangian bound",
        "objective": opts.objective,
        "status": status,
        "value": _r(value),
        "bound": _r(bound),
        "gap": round(gap, 8),
        "gap_target": opts.gap,
        "lp_value": _r(lp_value if math.isfinite(lp_value) else None),
        "rounds": rounds,
        "columns": len(master.cols),
        "master_ip_proved": ip_proved,
        "wall_s": round(wall, 4),
        "baseline_s": {"alone": round(alone_t, 4), "sequential": round(seq_t, 4)},
        "time_limit_s": opts.time_limit_s,
        "max_failures": "all" if opts.max_failures is None else opts.max_failures,
    }
    if gap <= max(opts.gap, 1e-7):
        notes.append(f"within {gap:.3%} of the proven bound {bound:.6f} (target {opts.gap:.2%})")
    else:
        notes.append(f"NOT within the target: {gap:.3%} below the proven bound {bound:.6f}")
    placed = [c for c in chosen if c is not None]
    outcomes = tuple(
        ServiceOutcome(svc.service.name, svc.service.weight, placed[svc.index], alone[svc.index], sequential[svc.index])
        for svc in svcs
    )
    baselines = _baselines(site, svcs, outcomes, value, opts)
    plans = {o.name: _service_plan(site, svcs[i], o.chosen, solver_block, opts) for i, o in enumerate(outcomes)}
    servers = _server_totals(site, outcomes)
    return SiteResult(
        site,
        plans,
        outcomes,
        value,
        bound,
        gap,
        status,
        rounds,
        len(master.cols),
        wall,
        baselines,
        servers,
        tuple(notes),
        solver_block,
    )


def _price(col: Column, pm: np.ndarray, pc: np.ndarray) -> float:
    return float(sum(pm[j] * mem + pc[j] * cpu for j, (mem, cpu) in col.use.items()))


def _lagrangian(svcs: list[_Svc], pm: np.ndarray, pc: np.ndarray, site: Site, opts: SiteOptions, master: _Master):
    """The Lagrangian bound at prices (pm, pc), and each service's priced families."""
    total = float(pm @ master.cap[:, 0] + pc @ master.cap[:, 1])
    priced = []
    for svc in svcs:
        w = svc.service.weight
        items = [(fi, _price_family(fi, w, pm, pc, opts)) for fi in svc.families]
        best = max([pr.bound for _, pr in items] + [-master.penalty])
        total += best
        priced.append(items)
    return total, priced


def _plan_alone(svc: _Svc, opts: PlanOptions, deadline: float, used, cache: dict) -> PlanResult | None:
    """The single-service planner on the site (on what ``used`` leaves); services with the same
    families and workload on the same free capacity share one run (``cache``)."""
    wl = svc.service.workload
    key = (
        tuple(fi.family.id for fi in svc.families),
        wl.rate_rps,
        wl.latency_slo_ms,
        svc.service.min_accuracy,
        tuple(sorted((k, round(a, 9), round(b, 9)) for k, (a, b) in (used or {}).items())),
    )
    if key not in cache:
        cache[key] = _plan_alone_uncached(svc, opts, deadline, used)
    return cache[key]


def _plan_alone_uncached(svc: _Svc, opts: PlanOptions, deadline: float, used) -> PlanResult | None:
    left = deadline - time.perf_counter()
    if left <= 0.5:
        return None
    from dataclasses import replace

    o = replace(opts, time_limit_s=max(0.5, min(left / 2, 30.0)), used=used)
    fams = [fi.family for fi in svc.families]
    try:
        res = plan(fams, svc.service.cluster, o)
    except (InfeasiblePlanError, SolverError):
        return None
    floor = svc.service.min_accuracy
    if floor is not None and res.chosen.expected_accuracy is not None and res.chosen.expected_accuracy < floor:
        ok = [c for c in res.considered if c.expected_accuracy is not None and c.expected_accuracy >= floor - 1e-12]
        if not ok:
            return None
        from dataclasses import replace as rep

        best = max(ok, key=lambda c: (c.value, c.family))
        res = rep(res, chosen=best)
    return res


# -- reporting -------------------------------------------------------------------------------------


def _loads(site: Site, cols: Sequence[Column | None]) -> np.ndarray:
    load = np.zeros((len(site.cluster.servers), 2))
    for c in cols:
        if c is None:
            continue
        for j, (mem, cpu) in c.use.items():
            load[j, 0] += mem
            load[j, 1] += cpu
    return load


def _overflows(site: Site, cols: Sequence[Column | None]) -> list[dict[str, Any]]:
    load = _loads(site, cols)
    out = []
    for j, s in enumerate(site.cluster.servers):
        if load[j, 0] > s.memory_mb * (1 + 1e-9) or load[j, 1] > s.compute_gmacs * (1 + 1e-9):
            out.append(
                {
                    "server": s.name,
                    "memory_mb": round(float(load[j, 0]), 4),
                    "memory_capacity": s.memory_mb,
                    "compute_gmacs": round(float(load[j, 1]), 4),
                    "compute_capacity": s.compute_gmacs,
                }
            )
    return out


def _baselines(site: Site, svcs, outcomes: Sequence[ServiceOutcome], value: float, opts: SiteOptions) -> dict[str, Any]:
    w = [s.service.weight for s in svcs]
    out: dict[str, Any] = {"joint": {"value": _r(value)}}
    if not opts.baselines:
        return out
    alone = [o.alone for o in outcomes]
    if all(c is not None for c in alone):
        av = sum(w[i] * c.value for i, c in enumerate(alone) if c is not None)
        over = _overflows(site, alone)
        out["alone"] = {
            "value": _r(av),
            "fits": not over,
            "overflows": over,
            "note": "each service planned by itself on the whole site, ignoring the others"
            + ("" if not over else "; together they overflow the servers listed, so the value is not reachable"),
        }
    seq = [o.sequential for o in outcomes]
    placed = [i for i, c in enumerate(seq) if c is not None]
    sv = sum(w[i] * seq[i].value for i in placed)  # type: ignore[union-attr]
    out["sequential"] = {
        "value": _r(sv),
        "order": [svcs[i].service.name for i in sorted(range(len(svcs)), key=lambda i: (-w[i], i))],
        "unplaced": [svcs[i].service.name for i in range(len(svcs)) if seq[i] is None],
        "note": "services planned one after another in order of weight, each on what the others left",
    }
    if len(placed) == len(svcs):
        out["sequential"]["gain_of_joint"] = _r(value - sv)
    return out


def _server_totals(site: Site, outcomes: Sequence[ServiceOutcome]) -> dict[str, dict[str, Any]]:
    cols = [o.chosen for o in outcomes]
    load = _loads(site, cols)
    out: dict[str, dict[str, Any]] = {}
    for j, s in enumerate(site.cluster.servers):
        if load[j, 0] == 0 and load[j, 1] == 0:
            continue
        comps = []
        for o in outcomes:
            for comp, servers in o.chosen.placement.items():
                if s.name in servers:
                    comps.append(f"{o.name}/{comp}")
        out[s.name] = {
            "components": comps,
            "services": sorted({c.split("/")[0] for c in comps}),
            "memory_mb": round(float(load[j, 0]), 4),
            "memory_util": round(float(load[j, 0] / s.memory_mb), 6),
            "compute_util": round(float(load[j, 1] / s.compute_gmacs), 6),
        }
    return out


def _service_plan(site: Site, svc: _Svc, col: Column, solver_block: Mapping[str, Any], opts: SiteOptions) -> Plan:
    """An ordinary single-service plan (DESIGN §4) for one service of the joint plan."""
    fam = col.family
    cl = svc.service.cluster
    ev = evaluate_placement(fam, col.placement, cl)
    order = list(fam.upstream_names) + [c.name for c in fam.combiners]
    placement = {k: tuple(col.placement[k]) for k in order if k in col.placement}
    table = RouteTable(fam, placement, cl)
    r = table.route(table.used)
    service = svc.service.to_dict()
    plan = Plan(
        family=fam.id,
        placement=placement,
        objective=opts.objective,
        expected_accuracy=ev.expected_accuracy,
        accuracy_all_up=ev.accuracy_all_up,
        worst_case_accuracy=dict(ev.worst_case_accuracy),
        fallback=tuple(ev.fallback),
        solver={k: solver_block[k] for k in ("name", "status", "gap", "wall_s", "time_limit_s")},
        servers=ev.servers,
        latency_ms=ev.latency_ms,
        extra={
            "dataset": fam.dataset.get("name"),
            "service": service,
            "workload": service["workload"],
            "planner": {
                "max_failures": solver_block.get("max_failures"),
                "objective_value": _r(col.value),
                "all_up": {"answer": r.answer, "accuracy": r.accuracy, "servers": list(r.servers)},
                "site": site.source,
                "notes": [f"placed jointly with {len(site.services) - 1} other service(s) on {site.source}"],
            },
        },
    )
    return plan.embed(fam, cl, catalog_dir=svc.service.catalog_path)


__all__ = ["SITE_SCHEMA", "OBJECTIVES", "Column", "SiteOptions", "SiteResult", "ServiceOutcome", "plan_site"]
