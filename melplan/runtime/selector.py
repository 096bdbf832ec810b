"""Runtime selector: which subset answers now, when to re-plan, and when new components may serve
(no torch).

Fast path: :class:`~melplan.runtime.routes.RouteLookup` holds the route of every up/down state of the
servers a placement depends on; ``RuntimeSelector.mark_down`` / ``mark_up`` flip one bit and index the
list, under a lock: one failover decision is a few microseconds (``benchmarks/selector.py``).  Failure
domains (a zone, a rack, a power feed: servers that share a label) go down and up as one with
``mark_domain_down`` / ``mark_domain_up``; a server is up when it and every domain it is in are up.

Slow path: the selector keeps an immutable :class:`~melplan.runtime.reconcile.Health` snapshot, asks the
pure :func:`~melplan.runtime.reconcile.decide` whether to re-plan (policy, grace period, hold-down,
back-off), and ``tick()`` acts on it: it calls the replanner on
:func:`~melplan.runtime.replanners.replan_cluster` (the cluster without the excluded servers, the
ingress kept as the point where requests enter), preferring to keep what already runs, and swaps in
the new placement together with the start/stop actions that get there.  The solver runs outside the
lock, so failovers never wait for it.  **Re-planning never raises**: any exception of the replanner is
recorded as ``replan-failed`` with its reason and backed off.

Readiness: a component a re-plan starts is *pending* until the orchestrator calls
``mark_ready(component, server)``; routes never use a pending component.  Until then the previous
placement keeps serving (its components are stopped only after the starts are ready: make before
break), or the new placement's best route that needs nothing pending, whichever is more accurate.

Every event and decision is kept as a frozen :class:`Record`; ``on_route_change``, ``on_replan`` and
``on_replan_failed`` callbacks run in event order, under the selector's (re-entrant) lock, on the thread
that caused them: keep them short (hand work to a queue).  Time comes from an injectable clock, or an
explicit ``now=`` on every call, so tests and the simulator are deterministic.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from melplan.core.catalog import Catalog, Family
from melplan.core.cluster import Cluster, Server
from melplan.core.errors import InfeasiblePlanError, PlanFileError, SelectorError
from melplan.core.evaluate import validate_placement
from melplan.core.plan import Plan
from melplan.runtime.reconcile import (
    Action,
    Decision,
    Event,
    Health,
    PlanView,
    Policy,
    ReplanState,
    decide,
    placement_actions,
)
from melplan.runtime.replanners import (  # noqa: F401  (re-exported: the selector's public API)
    DEFAULT_MIGRATION_WEIGHT,
    DEFAULT_REPLAN_TIME_LIMIT_S,
    Replanner,
    ReplanRequest,
    check_request,
    failure_reason,
    planner_replanner,
    replan_cluster,
)
from melplan.runtime.routes import EAGER_TABLE_MAX_SERVERS, Route, RouteLookup  # noqa: F401  (re-exported)

_EPS = 1e-12
Pair = tuple[str, str]  # (component, server)


# -- records and re-plans -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReplanResult:
    """An applied re-plan: the new plan, the actions from the old placement, the bytes they move and
    the starts still ``pending`` (not ready) when it was applied."""

    time: float
    reason: str
    excluded: tuple[str, ...]
    old_plan: Plan
    new_plan: Plan
    actions: tuple[Action, ...]
    bytes_moved: int
    wall_s: float
    generation: int
    pending: tuple[Pair, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "reason": self.reason,
            "excluded": list(self.excluded),
            "family": self.new_plan.family,
            "placement": {k: list(v) for k, v in self.new_plan.placement.items()},
            "actions": [a.to_dict() for a in self.actions],
            "bytes_moved": self.bytes_moved,
            "wall_s": round(self.wall_s, 4),
            "generation": self.generation,
            "pending": [{"component": c, "server": s} for c, s in self.pending],
        }


RECORD_KINDS = ("down", "up", "join", "domain-down", "domain-up", "ready", "wait", "replan", "replan-failed")


@dataclass(frozen=True)
class Record:
    """One event or decision, in order (``seq``).  ``route`` is the route after it, ``previous``
    the route before; ``changed`` says whether the answering path moved.

    Kinds: ``down``/``up``/``join`` (an event and the fast path's verdict), ``domain-down``/``domain-up``
    (``server`` is ``key=value``), ``ready`` (a started component reported ready), ``wait`` (``tick``
    saw a pending re-plan: grace period, hold-down or back-off; recorded once per new verdict),
    ``replan`` (applied, with ``replan``), ``replan-failed`` (why the re-plan was wanted in ``detail``,
    why it failed in ``failure``).  ``pending``: the starts not ready after this record.
    """

    seq: int
    time: float
    kind: str  # one of RECORD_KINDS
    server: str | None
    route: Route
    previous: Route
    detail: str = ""
    replan: ReplanResult | None = None
    failure: str = ""
    pending: tuple[Pair, ...] = ()

    @property
    def changed(self) -> bool:
        """The route differs in what it answers or how (a re-plan that keeps the same path on a new
        placement generation is not a change)."""
        return self.route != self.previous

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "server": self.server,
            "answer": self.route.answer,
            "accuracy": self.route.accuracy,
            "servers": list(self.route.servers),
            "changed": self.changed,
            "detail": self.detail,
            "pending": [{"component": c, "server": s} for c, s in self.pending],
        }
        if self.failure:
            d["failure"] = self.failure
        if self.replan is not None:
            d["replan"] = self.replan.to_dict()
        return d


@dataclass(frozen=True)
class SelectorStatus:
    """A consistent snapshot of the selector."""

    time: float
    route: Route
    down: tuple[str, ...]
    plan: Plan
    generation: int
    policy: Policy
    decision: Decision
    replans: int
    replan_failures: int
    bytes_moved: int
    pending: tuple[Pair, ...] = ()
    domains_down: tuple[str, ...] = ()
    last_failure: str = ""


# -- the selector -------------------------------------------------------------------------------


class RuntimeSelector:
    """Routes requests of one deployed plan through failures and re-plans it when failures last.

    Parameters: the :class:`~melplan.core.plan.Plan`, its :class:`~melplan.core.catalog.Family`, and the
    :class:`~melplan.core.cluster.Cluster` (needed for latencies, the ingress, failure domains and
    re-planning; without it the policy defaults to ``failover-only`` and only the plan's servers are
    known).  ``catalog`` lets a re-plan switch family (default: the plan's family only).  ``policy``:
    a name or a :class:`~melplan.runtime.reconcile.Policy` (default ``replan-after``).  ``clock``:
    seconds, default ``time.monotonic``; every method also takes ``now=``.  ``replanner``: default
    :func:`planner_replanner`.  ``migration_weight``: accuracy points per MiB of weights a re-plan
    starts (default :data:`DEFAULT_MIGRATION_WEIGHT`).  ``await_ready``: components a re-plan starts
    serve only after ``mark_ready`` (default True; False treats them as ready at once).
    ``history_limit``: keep only the last N records (default all).

    Raises :class:`PlanFileError` when the plan does not match the family or cluster, and
    :class:`SelectorError` for a policy that needs a cluster without one.
    """

    def __init__(
        self,
        plan: Plan,
        family: Family,
        cluster: Cluster | None = None,
        *,
        catalog: Catalog | None = None,
        policy: str | Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
        replanner: Replanner | None = None,
        migration_weight: float | None = None,
        on_route_change: Callable[[Record], Any] | None = None,
        on_replan: Callable[[ReplanResult], Any] | None = None,
        on_replan_failed: Callable[[Record], Any] | None = None,
        await_ready: bool = True,
        history_limit: int | None = None,
        source: str | None = None,
    ) -> None:
        if plan.family != family.id:
            raise PlanFileError(
                f"the plan is for family '{plan.family}' but family '{family.id}' was given",
                file=source,
                field="family",
                fix="pass the plan's own family from the catalog",
            )
        if policy is None:
            policy = Policy.named("replan-after" if cluster is not None else "failover-only")
        elif isinstance(policy, str):
            policy = Policy.named(policy)
        if policy.replans and cluster is None:
            raise SelectorError(
                f"policy '{policy.name}' re-plans, which needs the cluster",
                field="cluster",
                fix="pass the cluster (--servers cluster.yaml), or use policy 'failover-only'",
            )
        if history_limit is not None and (
            isinstance(history_limit, bool) or not isinstance(history_limit, int) or history_limit < 1
        ):
            raise SelectorError(
                f"history_limit must be a whole number >= 1 or None, got {history_limit!r}",
                field="history_limit",
                fix="give the number of records to keep, or None for all",
            )
        self._lock = threading.RLock()
        self._clock = clock
        self._policy = policy
        self._cluster = cluster
        self._catalog = catalog if catalog is not None else Catalog((family,))
        if family.id not in self._catalog.ids():
            raise PlanFileError(
                f"family '{family.id}' is not in the catalog given",
                file=source,
                field="family",
                fix="pass the catalog that holds the plan's family",
            )
        self._replanner = replanner if replanner is not None else planner_replanner()
        self._migration_weight = migration_weight
        self._await_ready = bool(await_ready)
        self._route_listeners: list[Callable[[Record], Any]] = [on_route_change] if on_route_change else []
        self._replan_listeners: list[Callable[[ReplanResult], Any]] = [on_replan] if on_replan else []
        self._failed_listeners: list[Callable[[Record], Any]] = [on_replan_failed] if on_replan_failed else []
        self._records: deque[Record] = deque(maxlen=history_limit)
        self._seq = 0
        self._plan = plan
        self._family = family
        self._original, self._original_family = plan, family
        self._lookup = RouteLookup(family, plan.placement, cluster, generation=0, source=source)
        self._known: set[str] = set(cluster.names) if cluster is not None else set(self._lookup.used)
        self._basis = frozenset(self._known)
        self._health = Health()
        self._marked_down: set[str] = set()  # servers reported down themselves
        self._domains_down: set[tuple[str, str]] = set()
        self._rstate = ReplanState()
        self._replanning = False
        self._last_wait: tuple | None = None
        self._last_failure = ""
        self._bytes_moved = 0
        self._pending: frozenset[Pair] = frozenset()
        self._serving: RouteLookup | None = None  # the last fully ready placement, while starts are pending
        self._mask = self._lookup.full_mask
        self._route = self._lookup.route_mask(self._mask)

    @classmethod
    def from_files(
        cls,
        plan_path: str,
        cluster_path: str | None = None,
        catalog_dir: str | None = None,
        *,
        any_family: bool = False,
        **kwargs: Any,
    ) -> RuntimeSelector:
        """Load the plan with its family and cluster (:func:`melplan.core.plan.load_plan_bundle`: a v2 plan
        needs nothing else), then build a selector.  Re-plans keep the plan's family unless ``any_family``
        (then any family of the catalog given, or of the one the plan recorded, may be chosen).
        Raises the loader's errors (:class:`PlanFileError`, :class:`CatalogError`, :class:`ClusterError`)."""
        from melplan.core.plan import load_plan_bundle

        b = load_plan_bundle(plan_path, catalog_dir=catalog_dir, cluster_path=cluster_path, want_catalog=any_family)
        if any_family and b.catalog is None:
            raise SelectorError(
                "re-plans may switch family only with a catalog, and the one the plan was made from is gone",
                file=str(plan_path),
                field="--catalog",
                fix="pass --catalog, or keep the plan's family",
            )
        return cls(
            b.plan,
            b.family,
            b.cluster,
            catalog=b.catalog if any_family else None,
            source=str(plan_path),
            **kwargs,
        )

    # -- read-only views ------------------------------------------------------------------------
    @property
    def plan(self) -> Plan:
        return self._plan

    @property
    def family(self) -> Family:
        return self._family

    @property
    def cluster(self) -> Cluster | None:
        return self._cluster

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def lookup(self) -> RouteLookup:
        return self._lookup

    @property
    def down(self) -> frozenset[str]:
        """Servers down now (reported down themselves, or in a domain that is down)."""
        return self._health.down

    @property
    def pending(self) -> frozenset[Pair]:
        """(component, server) pairs a re-plan started that have not reported ready."""
        return self._pending

    @property
    def serving_placement(self) -> dict[str, tuple[str, ...]] | None:
        """The previous placement, still serving while starts are pending (its stops wait until they
        are ready); None when nothing is pending."""
        serving = self._serving
        return None if serving is None else dict(serving.placement)

    @property
    def history(self) -> tuple[Record, ...]:
        with self._lock:
            return tuple(self._records)

    @property
    def bytes_moved(self) -> int:
        """Weight bytes started by every applied re-plan so far."""
        return self._bytes_moved

    @property
    def replans(self) -> int:
        """Re-plans attempted (applied or failed)."""
        return self._rstate.count

    @property
    def replan_failures(self) -> int:
        return self._rstate.failures

    def route(self) -> Route:
        """The current route (lock-free: one attribute read)."""
        return self._route

    def answers(self, down: Iterable[str]) -> bool:
        """Whether the current route still answers when exactly ``down`` servers are down (its path
        up and reachable from the ingress): what a request sent along it meets."""
        route = self._route
        if route.answer is None:
            return False
        down = set(down)
        for lookup in (self._lookup, self._serving):
            if lookup is not None and lookup.owns(route):
                return lookup.answers(route, down)
        return False

    def route_for(self, down: Iterable[str]) -> Route:
        """What would answer on the current placement, every component ready, with exactly ``down``
        servers down (no state change).  Raises :class:`SelectorError` for an unknown server name."""
        down = list(down)
        for s in down:
            if s not in self._known:
                raise self._unknown(s)
        lookup = self._lookup
        return lookup.route_mask(lookup.mask_of(down))

    def subscribe(
        self,
        *,
        on_route_change: Callable[[Record], Any] | None = None,
        on_replan: Callable[[ReplanResult], Any] | None = None,
        on_replan_failed: Callable[[Record], Any] | None = None,
    ) -> None:
        """Add callbacks (they run in event order under the selector's lock)."""
        with self._lock:
            if on_route_change:
                self._route_listeners.append(on_route_change)
            if on_replan:
                self._replan_listeners.append(on_replan)
            if on_replan_failed:
                self._failed_listeners.append(on_replan_failed)

    # -- fast path ------------------------------------------------------------------------------
    def mark_down(self, server: str, now: float | None = None) -> Route:
        """Record that ``server`` is down and return the new route at once."""
        return self._observe("down", server, now)

    def mark_up(self, server: str, now: float | None = None) -> Route:
        """Record that ``server`` is up again and return the new route at once (it stays down while a
        domain it belongs to is down)."""
        return self._observe("up", server, now)

    def add_server(self, server: Server, now: float | None = None) -> Route:
        """A new server joins the cluster (it counts for re-planning after the hold-down).

        Raises :class:`SelectorError` when the name is taken or there is no cluster.
        """
        with self._lock:
            if self._cluster is None:
                raise SelectorError(
                    "servers can join only a selector built with a cluster",
                    field="cluster",
                    fix="pass the cluster to RuntimeSelector",
                )
            if server.name in self._known:
                raise SelectorError(
                    f"server '{server.name}' is already known",
                    field="server",
                    fix="use mark_up for a server that comes back",
                )
            self._cluster = self._cluster.with_servers([server])
            self._known.add(server.name)
            return self._observe("join", server.name, now)

    def domain_members(self, key: str, value: str) -> tuple[str, ...]:
        """The servers of the failure domain ``key=value`` (servers whose label ``key`` is ``value``).

        Raises :class:`SelectorError` without a cluster or when no server carries that label."""
        if self._cluster is None:
            raise SelectorError(
                "failure domains need the cluster", field="cluster", fix="pass the cluster to RuntimeSelector"
            )
        members = tuple(s.name for s in self._cluster.servers if s.labels.get(key) == value)
        if not members:
            values = sorted({s.labels[key] for s in self._cluster.servers if key in s.labels})
            raise SelectorError(
                f"no server has the label {key}={value}",
                field="domain",
                fix=f"use a label of the cluster's servers ({key}: {', '.join(values) or 'none'})",
            )
        return members

    def mark_domain_down(self, key: str, value: str, now: float | None = None) -> Route:
        """A whole failure domain (every server labelled ``key=value``: a zone, a rack, a power feed)
        is down; returns the new route at once."""
        return self._observe_domain(key, value, True, now)

    def mark_domain_up(self, key: str, value: str, now: float | None = None) -> Route:
        """The domain ``key=value`` is back: its servers are up unless reported down themselves or in
        another domain that is down."""
        return self._observe_domain(key, value, False, now)

    def mark_ready(self, component: str, server: str, now: float | None = None) -> Route:
        """A component a re-plan started on ``server`` reports ready (loaded, first inference done):
        from now on routes may use it.  Returns the route.  A pair that is not pending changes
        nothing; a component or server the current placement does not have raises
        :class:`SelectorError`."""
        with self._lock:
            if server not in self._plan.placement.get(component, ()):
                raise SelectorError(
                    f"the current placement does not run {component} on {server}",
                    field="component",
                    fix="report readiness of a component a re-plan started (see ReplanResult.pending)",
                )
            pair = (component, server)
            if pair not in self._pending:
                return self._route
            t = self._clock() if now is None else now
            self._pending = self._pending - {pair}
            if not self._pending:
                self._serving = None
            previous = self._route
            route = self._route = self._compute_route()
            record = self._record(t, "ready", server, route, previous, detail=f"{component} on {server} is ready")
            if route != previous:
                for cb in self._route_listeners:
                    cb(record)
            return route

    def _unknown(self, server: Any) -> SelectorError:
        known = sorted(self._known)
        more = " ..." if len(known) > 12 else ""
        return SelectorError(
            f"unknown server {server!r}",
            field="server",
            fix=f"use a server of the plan or cluster: {', '.join(known[:12])}{more}",
        )

    def _in_down_domain(self, server: str) -> bool:
        if not self._domains_down or self._cluster is None or server not in self._cluster.index:
            return False
        labels = self._cluster.server(server).labels
        return any(labels.get(k) == v for k, v in self._domains_down)

    def _observe(self, kind: str, server: str, now: float | None) -> Route:
        with self._lock:
            if server not in self._known:
                raise self._unknown(server)
            t = self._clock() if now is None else now
            if kind == "down":
                self._marked_down.add(server)
            else:
                self._marked_down.discard(server)
            effective = kind
            if kind in ("up", "join") and self._in_down_domain(server):
                effective = "down"  # its domain is still down
            self._health = self._health.observe(Event(t, effective, server))
            return self._after_health_change(t, kind, server)

    def _observe_domain(self, key: str, value: str, down: bool, now: float | None) -> Route:
        with self._lock:
            members = self.domain_members(key, value)
            t = self._clock() if now is None else now
            (self._domains_down.add if down else self._domains_down.discard)((key, value))
            health = self._health
            for s in members:
                is_down = s in self._marked_down or self._in_down_domain(s)
                health = health.observe(Event(t, "down" if is_down else "up", s))
            self._health = health
            return self._after_health_change(t, "domain-down" if down else "domain-up", f"{key}={value}")

    def _after_health_change(self, t: float, kind: str, server: str) -> Route:
        lookup = self._lookup
        self._mask = lookup.mask_of(self._health.down)
        previous = self._route
        route = self._route = lookup.route_mask(self._mask) if not self._pending else self._compute_route()
        record = self._record(t, kind, server, route, previous)
        if route is not previous and route != previous and self._route_listeners:
            for cb in self._route_listeners:
                cb(record)
        return route

    def _compute_route(self) -> Route:
        """The route now: the current placement's, skipping pending components, or the previous
        (fully ready) placement's when that is more accurate."""
        lookup = self._lookup
        route = lookup.route_ready(self._mask, self._pending)
        if self._pending and self._serving is not None:
            old = self._serving.route(self._health.down)
            if old.answer is not None and (route.answer is None or old.accuracy > route.accuracy + _EPS):
                route = old
        return route

    def _record(
        self,
        t: float,
        kind: str,
        server: str | None,
        route: Route,
        previous: Route,
        detail: str = "",
        replan: ReplanResult | None = None,
        failure: str = "",
    ) -> Record:
        self._seq += 1
        rec = Record(self._seq, t, kind, server, route, previous, detail, replan, failure, tuple(sorted(self._pending)))
        self._records.append(rec)
        return rec

    # -- slow path ------------------------------------------------------------------------------
    def _view(self) -> PlanView:
        return PlanView(frozenset(self._lookup.used), self._basis, frozenset(self._known))

    def decision(self, now: float | None = None) -> Decision:
        """What the policy says now (pure; changes nothing)."""
        with self._lock:
            t = self._clock() if now is None else now
            return decide(self._health, self._view(), self._rstate, self._policy, t)

    def next_due(self, now: float | None = None) -> float | None:
        """When ``tick`` may next have work (None: nothing pending without a new event)."""
        return self.decision(now).due_at

    def status(self, now: float | None = None) -> SelectorStatus:
        with self._lock:
            t = self._clock() if now is None else now
            return SelectorStatus(
                t,
                self._route,
                tuple(sorted(self._health.down)),
                self._plan,
                self._lookup.generation,
                self._policy,
                decide(self._health, self._view(), self._rstate, self._policy, t),
                self._rstate.count,
                self._rstate.failures,
                self._bytes_moved,
                tuple(sorted(self._pending)),
                tuple(f"{k}={v}" for k, v in sorted(self._domains_down)),
                self._last_failure,
            )

    def tick(self, now: float | None = None) -> ReplanResult | None:
        """Run a re-plan if one is due (call it from the control loop).  Returns the applied
        re-plan (its ``pending`` starts serve once ``mark_ready`` says so), or None.  Never raises
        for a replanner's failure: any exception it raises, and a plan that uses an excluded server,
        is recorded as ``replan-failed`` with its reason (``Record.failure``) and backed off."""
        with self._lock:
            t = self._clock() if now is None else now
            d = decide(self._health, self._view(), self._rstate, self._policy, t)
            if not d.replan or self._replanning:
                key = (d.reason, d.due_at)
                if d.due_at is not None and key != self._last_wait:  # record each new verdict once
                    self._last_wait = key
                    self._record(
                        t,
                        "wait",
                        None,
                        self._route,
                        self._route,
                        detail=d.reason if d.due_at is None else f"{d.reason}; next check at t={d.due_at:g} s",
                    )
                return None
            self._replanning = True
            self._last_wait = None
            assert self._cluster is not None  # a re-planning policy needs one (checked in __init__)
            cluster, hosts_nothing = replan_cluster(self._cluster, d.exclude)
            request = ReplanRequest(
                t,
                d.reason,
                self._catalog,
                cluster,
                self._plan,
                self._family,
                d.exclude,
                self._migration_weight,
                self._original,
                self._original_family,
                hosts_nothing,
            )
        try:
            started = time.perf_counter()
            try:
                check_request(request)
                new_plan = self._replanner(request)
                new_family = self._catalog.get(new_plan.family)
                validate_placement(new_family, new_plan.placement, request.cluster)  # never on an excluded server
                on_relay = sorted({s for v in new_plan.placement.values() for s in v} & set(request.hosts_nothing))
                if on_relay:
                    raise InfeasiblePlanError(
                        f"the replanner placed components on {', '.join(on_relay)}, which may only relay requests",
                        field="placement",
                    )
                lookup = RouteLookup(
                    new_family, new_plan.placement, self._cluster_snapshot(), generation=self._lookup.generation + 1
                )
            except Exception as exc:  # never raises: every failure is recorded with its reason
                reason = failure_reason(exc)
                with self._lock:
                    self._rstate = self._rstate.after(t, self._policy, ok=False)
                    self._last_failure = reason
                    rec = self._record(
                        t, "replan-failed", None, self._route, self._route, detail=d.reason, failure=reason
                    )
                    for cb in self._failed_listeners:
                        cb(rec)
                return None
            wall = time.perf_counter() - started
            with self._lock:
                return self._apply(request, new_plan, new_family, lookup, wall)
        finally:
            with self._lock:
                self._replanning = False

    def _cluster_snapshot(self) -> Cluster:
        with self._lock:
            assert self._cluster is not None
            return self._cluster

    def _apply(
        self, request: ReplanRequest, new_plan: Plan, new_family: Family, lookup: RouteLookup, wall: float
    ) -> ReplanResult:
        t = request.time
        actions = placement_actions(self._family, self._plan.placement, new_family, new_plan.placement)
        moved = sum(a.bytes for a in actions if a.verb == "start")
        starts = frozenset((a.component, a.server) for a in actions if a.verb == "start")
        if self._await_ready:
            same_family = new_family.id == self._family.id
            still = {p for p in self._pending if same_family and p[1] in new_plan.placement.get(p[0], ())}
            # what the placement still serving (its stops wait for readiness) runs is ready already
            running: set[Pair] = set()
            if self._serving is not None and self._serving.family.id == new_family.id:
                running = {(c, x) for c, xs in self._serving.placement.items() for x in xs}
            pending = frozenset((starts | still) - running)
        else:
            pending = frozenset()
        if pending and self._serving is None and not self._pending:
            self._serving = self._lookup  # the old placement serves until the new one is ready
        elif not pending:
            self._serving = None
        result = ReplanResult(
            t,
            request.reason,
            request.excluded,
            self._plan,
            new_plan,
            actions,
            moved,
            wall,
            lookup.generation,
            tuple(sorted(pending)),
        )
        # the new basis: what the re-plan could place on, plus servers left out only by coincidence
        # (down or unsettled, already accounted for, not used by the old plan): their return needs no
        # re-plan.  Servers the old plan lost, and those never accounted for (recovering, joined), stay
        # outside and trigger a re-plan once stable.
        old_used = set(self._lookup.used)
        coincidental = {s for s in request.excluded if s in self._basis and s not in old_used}
        self._basis = frozenset(request.hosts) | frozenset(coincidental)
        self._plan, self._family, self._lookup = new_plan, new_family, lookup
        self._pending = pending
        self._rstate = self._rstate.after(t, self._policy, ok=True)
        self._bytes_moved += moved
        self._mask = lookup.mask_of(self._health.down)
        previous = self._route
        route = self._route = self._compute_route()
        record = self._record(t, "replan", None, route, previous, detail=request.reason, replan=result)
        for cb in self._replan_listeners:
            cb(result)
        if record.changed:
            for cb in self._route_listeners:
                cb(record)
        return result


# -- one-shot query (``melplan select``) --------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The route of a plan for a given set of down servers (what ``melplan select`` shows)."""

    plan_path: str
    family: str
    down: tuple[str, ...]
    ignored: tuple[str, ...]  # down servers the plan does not use
    route: Route
    plan_servers: tuple[str, ...]
    replan: dict[str, Any] | None = None  # with replanner=: the re-plan's outcome (applied or failed, why)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "plan": self.plan_path,
            "family": self.family,
            "down_servers": list(self.down),
            "not_in_plan": list(self.ignored),
            "plan_servers": list(self.plan_servers),
        }
        d.update(self.route.to_dict())
        if self.replan is not None:
            d["replan"] = self.replan
        return d


def select_route(
    plan_path: str,
    down: Sequence[str],
    *,
    catalog_dir: str | None = None,
    cluster_path: str | None = None,
    service: str | None = None,
    replanner: Replanner | None = None,
) -> Selection:
    """Load a plan with its family and cluster (embedded in a v2 plan; from ``catalog_dir`` and
    ``cluster_path`` for a v1 plan) and return the route with ``down`` servers down.  With
    ``replanner``, also re-plan once without the down servers (what a selector's ``tick`` would do
    past the grace period) and report the outcome in ``replan``: the actions, or ``replan-failed``
    with its reason (never raised).

    Raises :class:`PlanFileError`, :class:`CatalogError` or :class:`ClusterError` for bad files and
    :class:`SelectorError` for a server name that is neither in the plan nor in the cluster.
    """
    from melplan.core.plan import load_plan_bundle

    b = load_plan_bundle(plan_path, catalog_dir=catalog_dir, cluster_path=cluster_path, service=service)
    plan, family, cluster = b.plan, b.family, b.cluster
    lookup = RouteLookup(family, plan.placement, cluster, source=str(plan_path))
    known = set(cluster.names) if cluster is not None else set(lookup.used)
    names = list(dict.fromkeys(down))
    for s in names:
        if s not in known:
            where = "the cluster" if cluster is not None else "the plan"
            hint = "" if cluster is not None else "; pass --servers cluster.yaml to name servers outside the plan"
            raise SelectorError(
                f"unknown server {s!r}: not in {where}",
                file=str(plan_path),
                field="down",
                fix=f"use one of: {', '.join(sorted(known)[:12])}{hint}",
            )
    outcome = None
    if replanner is not None:
        if cluster is None:
            raise SelectorError(
                "a re-plan needs the cluster", field="--replan", fix="pass --servers for a v1 plan, or drop --replan"
            )
        sel = RuntimeSelector(
            plan, family, cluster, policy=Policy.named("eager"), replanner=replanner, clock=lambda: 0.0
        )
        for s in names:
            sel.mark_down(s, now=0.0)
        result = sel.tick(now=0.0)
        last = sel.history[-1]
        if result is not None:
            outcome = {"kind": "replan", **result.to_dict()}
        elif last.kind == "replan-failed":
            outcome = {"kind": "replan-failed", "reason": last.detail, "failure": last.failure}
        else:
            outcome = {"kind": "none", "reason": last.detail or "nothing to re-plan: no used server is down"}
    return Selection(
        str(plan_path),
        family.id,
        tuple(names),
        tuple(s for s in names if s not in lookup.bit),
        lookup.route(names),
        tuple(lookup.used),
        outcome,
    )
