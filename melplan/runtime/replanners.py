"""Re-planners: what the selector's slow path calls, and the world it calls them in (no torch).

A replanner is any callable ``ReplanRequest -> Plan``.  :func:`replan_cluster` builds the cluster a
re-plan may use: the selector's cluster without the excluded servers, **keeping the ingress**: when the
ingress itself is excluded (down, or back but not settled) it stays in the cluster as the point where
requests enter, so path latencies and the SLO are those of the real site, but it hosts nothing (its
memory is set to :data:`RELAY_MEMORY_MB`, in which no component fits).  Failure domains and links stay as they are.

* :func:`planner_replanner` (default): the placement ILP with a migration cost;
* :func:`melplan.runtime.repair.repair_replanner`: local repair, then back to the best placement once
  the servers it needs are back.

:func:`failure_reason` turns any exception a replanner raises into the one-line reason the selector
records with ``replan-failed``; the selector never lets it escape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from melplan.core.catalog import Catalog, Family
from melplan.core.cluster import Cluster
from melplan.core.errors import InfeasiblePlanError, MelplanError
from melplan.core.plan import Plan

DEFAULT_REPLAN_TIME_LIMIT_S = 10.0
DEFAULT_MIGRATION_WEIGHT = 0.05  # accuracy points (0.01 accuracy each) given up per MiB of weights started
RELAY_MEMORY_MB = 1e-9  # the memory an excluded ingress keeps in a re-plan's cluster: no component fits


@dataclass(frozen=True)
class ReplanRequest:
    """What a replanner gets: the catalog, the cluster it may place on (:func:`replan_cluster`), the
    plan that runs now (and its family), the plan the selector started with (``original``: the best
    placement when everything is up) and the migration weight to prefer keeping what runs.
    ``hosts_nothing``: servers in ``cluster`` that may relay requests but not run components (the
    ingress while it is excluded)."""

    time: float
    reason: str
    catalog: Catalog
    cluster: Cluster
    current: Plan
    current_family: Family
    excluded: tuple[str, ...]
    migration_weight: float | None = None
    original: Plan | None = None
    original_family: Family | None = None
    hosts_nothing: tuple[str, ...] = ()

    @property
    def hosts(self) -> tuple[str, ...]:
        """The servers a component may be placed on."""
        return tuple(s for s in self.cluster.names if s not in self.hosts_nothing)


Replanner = Callable[[ReplanRequest], Plan]


def replan_cluster(cluster: Cluster, exclude: Iterable[str]) -> tuple[Cluster, tuple[str, ...]]:
    """(the cluster a re-plan may use, the servers in it that host nothing).  See the module."""
    gone = set(exclude)
    ingress = cluster.ingress
    if ingress is None or ingress not in gone:
        return cluster.without(gone), ()
    out = cluster.without(gone - {ingress})
    servers = tuple(replace(s, memory_mb=RELAY_MEMORY_MB) if s.name == ingress else s for s in out.servers)
    return replace(out, servers=servers, ingress=ingress), (ingress,)


def check_request(request: ReplanRequest) -> None:
    """Raise :class:`InfeasiblePlanError` when no planner could succeed (no server to place on, or
    fewer than the family needs), before calling one."""
    hosts = request.hosts
    if not hosts:
        n = len(request.excluded)
        raise InfeasiblePlanError(
            f"no server is up to place on (all {n} excluded: down, or back for less than the hold-down)",
            field="servers",
            fix="wait for servers to return; the fast path answers again as soon as the old placement can",
        )


def failure_reason(exc: BaseException) -> str:
    """The one-line reason recorded with ``replan-failed``."""
    if isinstance(exc, MelplanError):
        return exc.message.rstrip(".")
    text = str(exc).strip() or "no message"
    return f"the replanner crashed ({type(exc).__name__}: {text})"


def planner_replanner(**plan_options: Any) -> Replanner:
    """A replanner that calls :func:`melplan.planner.planner.plan` on the request's cluster, with the
    running placement (``current``, ``current_family``) and the migration weight (default
    :data:`DEFAULT_MIGRATION_WEIGHT` points per MiB started), so it prefers what already runs.

    The settings the plan was made with (objective, ``max_failures``, ``combiner_replicas``,
    ``min_accuracy_under_failure``, read from the plan's ``planner`` block) are kept; the time limit
    is :data:`DEFAULT_REPLAN_TIME_LIMIT_S`.  ``plan_options`` override any ``PlanOptions`` field.
    Raises the planner's errors (the selector records them as ``replan-failed``).
    """

    def replan(request: ReplanRequest) -> Plan:
        from melplan.planner import planner

        check_request(request)
        made_with = request.current.extra.get("planner")
        made_with = made_with if isinstance(made_with, Mapping) else {}
        opts: dict[str, Any] = {
            "objective": request.current.objective,
            "time_limit_s": DEFAULT_REPLAN_TIME_LIMIT_S,
            "current": {k: tuple(v) for k, v in request.current.placement.items()},
            "current_family": request.current_family.id,
            "migration_weight": DEFAULT_MIGRATION_WEIGHT
            if request.migration_weight is None
            else request.migration_weight,
        }
        mf = made_with.get("max_failures")
        if isinstance(mf, int) and not isinstance(mf, bool):
            opts["max_failures"] = mf
        elif isinstance(mf, str) and mf.isdigit():
            opts["max_failures"] = int(mf)
        reps = made_with.get("combiner_replicas")
        if isinstance(reps, int) and not isinstance(reps, bool) and reps >= 1:
            opts["combiner_replicas"] = reps
        floor = made_with.get("min_accuracy_under_failure")
        if isinstance(floor, (int, float)) and not isinstance(floor, bool):
            opts["min_accuracy_under_failure"] = float(floor)
        opts.update(plan_options)
        return planner.plan(request.catalog, request.cluster, planner.PlanOptions(**opts)).plan

    return replan
