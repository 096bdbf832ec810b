"""Runtime selector: which subset answers now, and when to re-plan (no torch).

Fast path: :class:`RouteLookup` precomputes, for one placement, the route of every up/down state of
the servers the placement uses (a list of ``2^m`` entries indexed by an up-bit-mask, m <= 16; a
memoised scan above that).  ``RuntimeSelector.mark_down`` / ``mark_up`` flip one bit and index the
list, under a lock: one failover decision is a few microseconds (``benchmarks/selector.py``).  The
semantics are those of :class:`melplan.core.evaluate.RouteTable` (DESIGN §1): the most accurate servable
subset answers, through the fastest up replica of its combiner; a route never uses a down server.

Slow path: the selector keeps an immutable :class:`~melplan.runtime.reconcile.Health` snapshot, asks the
pure :func:`~melplan.runtime.reconcile.decide` whether to re-plan (policy, grace period, hold-down,
back-off), and ``tick()`` acts on it: it calls the planner without the down servers, preferring to
keep what already runs, and swaps in the new placement together with the start/stop actions that
get there.  The solver runs outside the lock, so failovers never wait for it.

Every event and decision is kept as a frozen :class:`Record`; ``on_route_change`` and
``on_replan`` callbacks run in event order, under the selector's (re-entrant) lock, on the thread
that caused them: keep them short (hand work to a queue).  Time comes from an injectable clock, or
an explicit ``now=`` on every call, so tests and the simulator are deterministic.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from melplan.core.catalog import Catalog, Family
from melplan.core.cluster import Cluster, Server
from melplan.core.errors import MelplanError, PlanFileError, SelectorError
from melplan.core.evaluate import RouteTable, validate_placement
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

EAGER_TABLE_MAX_SERVERS = 16  # 2^16 precomputed routes; above that routes are memoised on demand
_EPS = 1e-12


# -- routes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """What answers for one up/down state of a plan's servers.

    ``answer``: the subset key that answers (None when the service is down); ``servers``: the servers
    on the answering path (upstreams, then the combiner's); ``components``: (component, server)
    pairs on that path; ``degraded``: accuracy below the plan's all-up accuracy (always true when
    down); ``generation``: which placement (0 for the initial plan, +1 per applied re-plan).
    """

    answer: str | None
    accuracy: float
    servers: tuple[str, ...]
    components: tuple[tuple[str, str], ...] = ()
    combiner: str | None = None
    combiner_server: str | None = None
    latency_ms: float | None = None
    degraded: bool = True
    accuracy_all_up: float = 0.0
    generation: int = field(default=0, compare=False)

    @property
    def down(self) -> bool:
        """No subset is servable: the service has no answer."""
        return self.answer is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "accuracy": self.accuracy,
            "servers": list(self.servers),
            "components": [{"component": c, "server": s} for c, s in self.components],
            "combiner": self.combiner,
            "combiner_server": self.combiner_server,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 4),
            "degraded": self.degraded,
            "down": self.down,
            "accuracy_all_up": self.accuracy_all_up,
            "generation": self.generation,
        }


class RouteLookup:
    """Every route of one placement, indexed by an up-mask over ``relevant`` (bit i = ``relevant[i]``
    up): the used servers, then the ingress and the relays on the placement's paths.

    Routes, their order and reachability are those of :class:`melplan.core.evaluate.RouteTable`
    (the one evaluator; replicas fastest first, latency filled in).  Without a cluster (``melplan
    select`` with no ``--servers``) replicas are tried in placement order, ``latency_ms`` is None
    and there is no reachability.  Raises :class:`PlanFileError` for a placement that does not fit
    the family (or the cluster).
    """

    def __init__(
        self,
        family: Family,
        placement: Mapping[str, Sequence[str]],
        cluster: Cluster | None = None,
        *,
        generation: int = 0,
        source: str | None = None,
        eager_max_servers: int = EAGER_TABLE_MAX_SERVERS,
    ) -> None:
        self.family = family
        self.placement = {k: tuple(v) for k, v in placement.items()}
        self.cluster = cluster
        self.generation = generation
        try:
            rt = RouteTable(family, self.placement, cluster)
        except PlanFileError as exc:
            raise PlanFileError(exc.message, file=source, field=exc.field, fix=exc.fix) from None
        self._rt = rt
        self.used: tuple[str, ...] = tuple(rt.used)
        # the servers whose state matters: used, then the ingress and relays (bits of the up-mask)
        self.relevant: tuple[str, ...] = tuple(rt.relevant)
        self.bit: dict[str, int] = dict(rt.bit)
        self.full_mask = rt.full_mask
        upstream_server = rt.upstream_server
        protos = []
        for ch in rt.choices:
            comps = tuple((u, upstream_server[u]) for u in ch.key.split("+"))
            if ch.combiner is not None:
                comps += ((ch.combiner, ch.combiner_server),)
            protos.append((ch.key, ch.accuracy, ch.servers, comps, ch.combiner, ch.combiner_server, ch.latency_ms))
        all_up = self._scan_index(self.full_mask)
        self.accuracy_all_up = 0.0 if all_up < 0 else protos[all_up][1]
        self.routes: tuple[Route, ...] = tuple(
            Route(
                key,
                acc,
                servers,
                comps,
                comb,
                srv,
                lat,
                acc < self.accuracy_all_up - _EPS,
                self.accuracy_all_up,
                generation,
            )
            for key, acc, servers, comps, comb, srv, lat in protos
        )
        self.down_route = Route(None, 0.0, (), (), None, None, None, True, self.accuracy_all_up, generation)
        m = len(self.relevant)
        if m <= eager_max_servers:
            self.table: list[Route] | None = self._build_table()
            self.route_mask: Callable[[int], Route] = self.table.__getitem__
        else:
            self.table = None
            self._memo: dict[int, Route] = {}
            self.route_mask = self._route_memo

    @property
    def all_up(self) -> Route:
        return self.route_mask(self.full_mask)

    def _scan_index(self, mask: int) -> int:
        return self._rt.choice_index(mask)

    def _route_memo(self, mask: int) -> Route:
        r = self._memo.get(mask)
        if r is None:
            i = self._scan_index(mask)
            r = self.down_route if i < 0 else self.routes[i]
            self._memo[mask] = r
        return r

    def _build_table(self) -> list[Route]:
        idx = self._rt.choice_by_mask()
        pool = list(self.routes) + [self.down_route]  # index -1 -> down
        return [pool[i] for i in idx.tolist()]

    def mask_of(self, down: Iterable[str]) -> int:
        """The up-mask with the given servers down (servers that do not matter are ignored)."""
        mask = self.full_mask
        for s in down:
            mask &= ~self.bit.get(s, 0)
        return mask

    def route(self, down: Iterable[str] = ()) -> Route:
        """The route with ``down`` servers down (servers that do not matter are ignored)."""
        return self.route_mask(self.mask_of(down))


# -- records and re-plans -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReplanRequest:
    """What a replanner gets: the catalog, the cluster without the excluded servers, the plan that
    runs now (and its family) and the migration weight to prefer keeping it."""

    time: float
    reason: str
    catalog: Catalog
    cluster: Cluster
    current: Plan
    current_family: Family
    excluded: tuple[str, ...]
    migration_weight: float | None = None


Replanner = Callable[[ReplanRequest], Plan]


@dataclass(frozen=True)
class ReplanResult:
    """An applied re-plan: the new plan, the actions from the old placement and the bytes they move."""

    time: float
    reason: str
    excluded: tuple[str, ...]
    old_plan: Plan
    new_plan: Plan
    actions: tuple[Action, ...]
    bytes_moved: int
    wall_s: float
    generation: int

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
        }


RECORD_KINDS = ("down", "up", "join", "wait", "replan", "replan-failed")


@dataclass(frozen=True)
class Record:
    """One event or decision, in order (``seq``).  ``route`` is the route after it, ``previous``
    the route before; ``changed`` says whether the answering path moved.

    Kinds: ``down``/``up``/``join`` (an event and the fast path's verdict), ``wait`` (``tick`` saw a
    pending re-plan: grace period, hold-down or back-off; recorded once per new verdict),
    ``replan`` (applied, with ``replan``), ``replan-failed`` (the planner's error in ``detail``).
    """

    seq: int
    time: float
    kind: str  # one of RECORD_KINDS
    server: str | None
    route: Route
    previous: Route
    detail: str = ""
    replan: ReplanResult | None = None

    @property
    def changed(self) -> bool:
        """The route differs in what it answers or how (a re-plan that keeps the same path on a new
        placement generation is not a change)."""
        return self.route != self.previous

    def to_dict(self) -> dict[str, Any]:
        d = {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "server": self.server,
            "answer": self.route.answer,
            "accuracy": self.route.accuracy,
            "servers": list(self.route.servers),
            "changed": self.changed,
            "detail": self.detail,
        }
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


DEFAULT_REPLAN_TIME_LIMIT_S = 10.0
DEFAULT_MIGRATION_WEIGHT = 0.05  # accuracy points (0.01 accuracy each) given up per MiB of weights started


def planner_replanner(**plan_options: Any) -> Replanner:
    """A replanner that calls :func:`melplan.planner.planner.plan` on the cluster without the excluded
    servers, with the running placement (``current``, ``current_family``) and the migration weight
    (default :data:`DEFAULT_MIGRATION_WEIGHT` points per MiB started), so it prefers what already runs.

    The settings the plan was made with (objective, ``max_failures``, ``combiner_replicas``,
    ``min_accuracy_under_failure``, read from the plan's ``planner`` block) are kept; the time limit
    is :data:`DEFAULT_REPLAN_TIME_LIMIT_S`.  ``plan_options`` override any ``PlanOptions`` field.
    """

    def replan(request: ReplanRequest) -> Plan:
        from melplan.planner import planner

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


# -- the selector -------------------------------------------------------------------------------


class RuntimeSelector:
    """Routes requests of one deployed plan through failures and re-plans it when failures last.

    Parameters: the :class:`~melplan.core.plan.Plan`, its :class:`~melplan.core.catalog.Family`, and the
    :class:`~melplan.core.cluster.Cluster` (needed for latencies and re-planning; without it the policy
    defaults to ``failover-only`` and only the plan's servers are known).  ``catalog`` lets a re-plan
    switch family (default: the plan's family only).  ``policy``: a name or a
    :class:`~melplan.runtime.reconcile.Policy` (default ``replan-after``).  ``clock``: seconds, default
    ``time.monotonic``; every method also takes ``now=``.  ``replanner``: default
    :func:`planner_replanner`.  ``migration_weight``: accuracy points per MiB of weights a re-plan
    starts (default :data:`DEFAULT_MIGRATION_WEIGHT`).  ``history_limit``: keep only the last N records (default all).

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
        self._route_listeners: list[Callable[[Record], Any]] = [on_route_change] if on_route_change else []
        self._replan_listeners: list[Callable[[ReplanResult], Any]] = [on_replan] if on_replan else []
        self._records: deque[Record] = deque(maxlen=history_limit)
        self._seq = 0
        self._plan = plan
        self._family = family
        self._lookup = RouteLookup(family, plan.placement, cluster, generation=0, source=source)
        self._known: set[str] = set(cluster.names) if cluster is not None else set(self._lookup.used)
        self._basis = frozenset(self._known)
        self._health = Health()
        self._rstate = ReplanState()
        self._replanning = False
        self._last_wait: tuple | None = None
        self._bytes_moved = 0
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
        return self._health.down

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

    def route_for(self, down: Iterable[str]) -> Route:
        """What would answer on the current placement with exactly ``down`` servers down (no state
        change).  Raises :class:`SelectorError` for an unknown server name."""
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
    ) -> None:
        """Add callbacks (they run in event order under the selector's lock)."""
        with self._lock:
            if on_route_change:
                self._route_listeners.append(on_route_change)
            if on_replan:
                self._replan_listeners.append(on_replan)

    # -- fast path ------------------------------------------------------------------------------
    def mark_down(self, server: str, now: float | None = None) -> Route:
        """Record that ``server`` is down and return the new route at once."""
        return self._observe("down", server, now)

    def mark_up(self, server: str, now: float | None = None) -> Route:
        """Record that ``server`` is up again and return the new route at once."""
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

    def _unknown(self, server: Any) -> SelectorError:
        known = sorted(self._known)
        more = " ..." if len(known) > 12 else ""
        return SelectorError(
            f"unknown server {server!r}",
            field="server",
            fix=f"use a server of the plan or cluster: {', '.join(known[:12])}{more}",
        )

    def _observe(self, kind: str, server: str, now: float | None) -> Route:
        with self._lock:
            if server not in self._known:
                raise self._unknown(server)
            t = self._clock() if now is None else now
            self._health = health = self._health.observe(Event(t, kind, server))
            bit = self._lookup.bit.get(server, 0)
            if bit:
                self._mask = self._mask & ~bit if server in health.down_since else self._mask | bit
            previous = self._route
            route = self._route = self._lookup.route_mask(self._mask)
            record = self._record(t, kind, server, route, previous)
            if route is not previous and self._route_listeners:
                for cb in self._route_listeners:
                    cb(record)
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
    ) -> Record:
        self._seq += 1
        rec = Record(self._seq, t, kind, server, route, previous, detail, replan)
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
            )

    def tick(self, now: float | None = None) -> ReplanResult | None:
        """Run a re-plan if one is due (call it from the control loop).  Returns the applied
        re-plan, or None.  A planner failure (:class:`MelplanError`) is recorded as
        ``replan-failed`` and backed off, not raised; other exceptions propagate."""
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
            request = ReplanRequest(
                t,
                d.reason,
                self._catalog,
                self._cluster.without(d.exclude),
                self._plan,
                self._family,
                d.exclude,
                self._migration_weight,
            )
        try:
            started = time.perf_counter()
            try:
                new_plan = self._replanner(request)
                new_family = self._catalog.get(new_plan.family)
                validate_placement(new_family, new_plan.placement, request.cluster)  # never on an excluded server
                lookup = RouteLookup(
                    new_family, new_plan.placement, self._cluster_snapshot(), generation=self._lookup.generation + 1
                )
            except MelplanError as exc:
                with self._lock:
                    self._rstate = self._rstate.after(t, self._policy, ok=False)
                    self._record(t, "replan-failed", None, self._route, self._route, detail=f"{d.reason}: {exc}")
                return None
            wall = time.perf_counter() - started
            with self._lock:
                return self._apply(request, new_plan, new_family, lookup, wall)
        finally:
            with self._lock:
                self._replanning = False

    def _cluster_snapshot(self) -> Cluster:
        with self._lock:
            return self._cluster

    def _apply(
        self, request: ReplanRequest, new_plan: Plan, new_family: Family, lookup: RouteLookup, wall: float
    ) -> ReplanResult:
        t = request.time
        actions = placement_actions(self._family, self._plan.placement, new_family, new_plan.placement)
        moved = sum(a.bytes for a in actions if a.verb == "start")
        result = ReplanResult(
            t, request.reason, request.excluded, self._plan, new_plan, actions, moved, wall, lookup.generation
        )
        # the new basis: what the re-plan could use, plus servers left out only by coincidence (down or
        # unsettled, already accounted for, not used by the old plan): their return needs no re-plan.
        # Servers the old plan lost, and those never accounted for (recovering, joined), stay outside
        # and trigger a re-plan once stable.
        old_used = set(self._lookup.used)
        coincidental = {s for s in request.excluded if s in self._basis and s not in old_used}
        self._basis = frozenset(request.cluster.names) | frozenset(coincidental)
        self._plan, self._family, self._lookup = new_plan, new_family, lookup
        self._rstate = self._rstate.after(t, self._policy, ok=True)
        self._bytes_moved += moved
        self._mask = lookup.mask_of(self._health.down)
        previous = self._route
        route = self._route = lookup.route_mask(self._mask)
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

    def to_dict(self) -> dict[str, Any]:
        d = {
            "plan": self.plan_path,
            "family": self.family,
            "down_servers": list(self.down),
            "not_in_plan": list(self.ignored),
            "plan_servers": list(self.plan_servers),
        }
        d.update(self.route.to_dict())
        return d


def select_route(
    plan_path: str,
    down: Sequence[str],
    *,
    catalog_dir: str | None = None,
    cluster_path: str | None = None,
    service: str | None = None,
) -> Selection:
    """Load a plan with its family and cluster (embedded in a v2 plan; from ``catalog_dir`` and
    ``cluster_path`` for a v1 plan) and return the route with ``down`` servers down.

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
    return Selection(
        str(plan_path),
        family.id,
        tuple(names),
        tuple(s for s in names if s not in lookup.bit),
        lookup.route(names),
        tuple(lookup.used),
    )
