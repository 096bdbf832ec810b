"""What the planner takes and gives: options, the families table rows, the result, and the exact
value of a placement (from melplan.core.evaluate, never from an ILP objective).  No torch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from melplan.core.catalog import Family
from melplan.core.cluster import Cluster
from melplan.core.errors import InputError
from melplan.core.evaluate import (
    RouteTable,
    Scores,
    prob_at_most,
    scores,
)
from melplan.core.plan import Plan

OBJECTIVES = ("expected", "worst-case")
PROGRESS_AFTER_S = 2.0  # runs longer than this report each family on ``options.progress``
TOL = 1e-9


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
