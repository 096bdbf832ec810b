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

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from melplan.core.catalog import Catalog, Family
from melplan.core.cluster import Cluster
from melplan.core.errors import InfeasiblePlanError, InputError, SolverError
from melplan.core.evaluate import (
    RouteTable,
    evaluate_placement,
)
from melplan.core.plan import Plan
from melplan.planner.bounds import (
    MAX_HOST_BOUND_TUPLES,
    Relaxation,
    best_without,
    exclusive_subsets,
    relaxation,
    relaxation_probabilities,
    relaxed_value,
    worst_upper_bound,
)
from melplan.planner.family import (
    MAX_CANDIDATES,
    _Context,
    _greedy,
    _out_of_time,
    _solve_family,
    infeasibility_reason,
)
from melplan.planner.ilp import (
    family_data,
    with_used,
)
from melplan.planner.outcome import (
    OBJECTIVES,
    PROGRESS_AFTER_S,
    TOL,
    FamilyOutcome,
    ObjectiveValue,
    PlanOptions,
    PlanResult,
    Reduction,
    _r,
    moved_mib,
    objective_value,
    plan_score,
    role_of,
)
from melplan.planner.reductions import (
    MAX_LINK_DOMINANCE,
    MAX_PACKING_COMBINERS,
    link_dominance,
    max_servers_per_plan,
)
from melplan.planner.solve import choose_solver

# the planner's API, re-exported from the modules it is split into (callers import from here)
__all__ = [
    "FamilyOutcome",
    "MAX_CANDIDATES",
    "MAX_HOST_BOUND_TUPLES",
    "MAX_LINK_DOMINANCE",
    "MAX_PACKING_COMBINERS",
    "OBJECTIVES",
    "ObjectiveValue",
    "PROGRESS_AFTER_S",
    "PlanOptions",
    "PlanResult",
    "Reduction",
    "Relaxation",
    "TOL",
    "_greedy",
    "_solve_family",
    "best_without",
    "exclusive_subsets",
    "infeasibility_reason",
    "link_dominance",
    "max_servers_per_plan",
    "moved_mib",
    "objective_value",
    "plan",
    "plan_score",
    "relaxation",
    "relaxation_probabilities",
    "relaxed_value",
    "role_of",
    "worst_upper_bound",
]


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
            # past the limit: quick plans of single models, always until one plan exists
            none_yet = not any(o.value is not None for o in outcomes.values())
            late = time.perf_counter() >= hard_stop and not none_yet
            data = family_data(fam, cluster) if fam.n == 1 and not late else None
            outcomes[fam.id] = _out_of_time(fam, data, None, ctx, math.inf if none_yet else hard_stop)
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
