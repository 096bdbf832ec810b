"""One family, end to end (docs/ilp.md): reduce the servers, start from cheap plans, search the ILP on
the candidates (growing them while the bound is open), and score the result exactly."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from melplan.core.catalog import Family
from melplan.core.cluster import Cluster
from melplan.core.errors import MelplanError, SolverError
from melplan.core.evaluate import (
    MAX_EXACT_SERVERS,
    capacity_violations,
)
from melplan.planner.bounds import (
    Relaxation,
)
from melplan.planner.ilp import (
    MAX_SCENARIO_VARS,
    FamilyData,
    ModelSpec,
    PairLatency,
    build_family_model,
    combiner_inputs,
    read_placement,
    scenario_count,
    useful_combiners,
    useful_subsets,
)
from melplan.planner.outcome import (
    TOL,
    FamilyOutcome,
    PlanOptions,
    Reduction,
    objective_value,
    plan_score,
    role_of,
)
from melplan.planner.reductions import (
    _capability,
    _dominated,
    max_servers_per_plan,
)
from melplan.planner.solve import SolveResult, solve

MAX_CANDIDATES = 10  # beyond this, the ILP runs on the most promising servers (the bound stays global)


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
    data_all, fits0, alone, n = reduced.data_all, reduced.fits, reduced.alone, family.n
    assert data_all is not None and fits0 is not None and alone is not None  # set by _reduce
    fits = fits0.copy()
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
    if reduced.reduction.restricted and out.status != "solved" and opts.current is not None:
        stopped = "not grown: a re-plan keeps to the first candidates to answer fast"
    while (
        not stopped
        and reduced.reduction.restricted
        and out.status != "solved"
        and time.perf_counter() < ctx.deadline - 0.05
    ):
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
    assert best is not None  # a placement or an incumbent exists here
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
        model is not None
        and searched
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
        failures_modeled=model.failures_modeled if model is not None and searched else None,
        modeled_mass=model.modeled_mass if model is not None and searched else None,
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
        host = (current.get(u) or (None,))[0]
        j = pos.get(host) if host is not None else None
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
    return _greedy(
        family, data, tuple(int(j) for j in tup if j is not None), cluster, keep={k: v for k, v in keep.items() if v}
    )


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
