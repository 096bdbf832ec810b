"""Replay a failure trace against a plan and the usual alternatives (no torch; matplotlib only in
:func:`plot_report`).

Model (docs/simulate.md):

* The trace gives the *true* state of every server.  A heartbeat monitor sees a change
  ``detection_s`` after it happens, and only if it lasts that long
  (:func:`melplan.sim.traces.observed_events`).  Every strategy acts on what the monitor sees.
* A strategy's *delivered* accuracy at time t is the accuracy of the route it chose if every server
  on that route is truly up, else 0 (requests sent to a dead server are lost).  Availability is the
  fraction of time with an answer; time below the floor counts every moment with a delivered
  accuracy under ``floor`` (no answer included).
* **plan**: a :class:`~melplan.runtime.selector.RuntimeSelector` with the chosen policy.  A re-plan starts
  components that need ``load_s`` to load; until then the old placement keeps serving (make before
  break) unless the new route needs nothing new.
* **cold restart**: the reference (full) model on the most reliable server that fits; when that
  server is seen down, the model is started on the next most reliable fitting server that is seen up
  and answers ``load_s`` later.
* **backup**: the reference model on the most reliable fitting server and a compressed backup model,
  hot, on the next most reliable server that fits it; the backup answers while the first is seen down.
* **cloud failover**: the reference model on the most reliable fitting server; while it is seen down
  requests go to the cloud (always up, full accuracy), ``wan_rtt_ms`` plus the upload of one input at
  ``wan_mbps`` away.  When that latency exceeds the workload's SLO the cloud's answers are late and
  count as missed (no answer).

Baseline models come from the catalog: families with ``extra['role']`` ``reference`` and ``backup``
of the plan's dataset; otherwise, among single-model families without a role, the largest is the
reference and the smallest the backup; without either, the reference is built from the plan family's
``reference`` block (accuracy, params, macs).  A backup-role model is never the reference.
"Fits" means memory, compute at the workload rate,
and the SLO from the ingress, as for the planner.  Servers are ranked by failure probability, then
compute (faster first), then name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from melplan.core.catalog import Catalog, Family, Upstream
from melplan.core.cluster import Cluster
from melplan.core.errors import InputError
from melplan.core.evaluate import input_bytes, path_latency_ms, validate_placement
from melplan.core.fileio import atomic_write_with
from melplan.core.plan import Plan
from melplan.runtime.reconcile import Policy
from melplan.runtime.selector import Replanner, RouteLookup, RuntimeSelector
from melplan.sim.traces import Trace, observed_events

DEFAULT_DETECTION_S = 10.0
DEFAULT_LOAD_S = 60.0
DEFAULT_WAN_RTT_MS = 80.0
DEFAULT_WAN_MBPS = 50.0
DEFAULT_FLOOR_FRACTION = 0.9


@dataclass(frozen=True)
class SimOptions:
    """Assumptions of a simulation (defaults documented in docs/simulate.md).

    ``floor``: accuracy floor (default ``0.9 x`` the reference model's accuracy, or of the plan's
    all-up accuracy without a reference); ``detection_s``: heartbeat detection delay;
    ``load_s``: time to start a component (cold restart, or a component a re-plan starts);
    ``wan_rtt_ms``/``wan_mbps``: the link to the cloud; ``baselines``: simulate the baselines too;
    ``any_family``: let re-plans switch to another family of the catalog (default: keep the plan's).
    """

    policy: Policy = field(default_factory=Policy)
    detection_s: float = DEFAULT_DETECTION_S
    load_s: float = DEFAULT_LOAD_S
    wan_rtt_ms: float = DEFAULT_WAN_RTT_MS
    wan_mbps: float = DEFAULT_WAN_MBPS
    floor: float | None = None
    migration_weight: float | None = None
    baselines: bool = True
    any_family: bool = False

    def __post_init__(self) -> None:
        for key in ("detection_s", "load_s", "wan_rtt_ms"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"{key} must be a finite number >= 0, got {v!r}", field=key, fix=f"set {key} >= 0")
        if isinstance(self.wan_mbps, bool) or not isinstance(self.wan_mbps, (int, float)) or not self.wan_mbps > 0:
            raise InputError(
                f"wan_mbps must be > 0, got {self.wan_mbps!r}", field="wan_mbps", fix="give the WAN bandwidth in Mbit/s"
            )
        if self.floor is not None and not (0.0 <= self.floor <= 1.0):
            raise InputError(
                f"floor must be an accuracy in [0, 1], got {self.floor!r}",
                field="floor",
                fix="write the floor as a fraction, e.g. 0.85",
            )


@dataclass(frozen=True)
class StrategyResult:
    """Metrics of one strategy over the trace.  ``series``: (time_s, delivered accuracy) at every
    change, starting at 0.  Not deployable strategies carry the reason in ``note`` and no numbers."""

    key: str
    label: str
    deployable: bool
    note: str = ""
    accuracy: float = 0.0  # time-weighted delivered accuracy
    availability: float = 0.0  # fraction of time with an answer
    below_floor_s: float = 0.0
    replans: int = 0  # re-plans (plan) or restarts (cold restart)
    bytes_moved: int = 0
    servers: tuple[str, ...] = ()
    series: tuple[tuple[float, float], ...] = ()
    details: tuple[dict, ...] = ()

    def to_dict(self, *, series: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "label": self.label, "deployable": self.deployable, "note": self.note}
        if self.deployable:
            d.update(
                accuracy=round(self.accuracy, 6),
                availability=round(self.availability, 6),
                below_floor_h=round(self.below_floor_s / 3600, 6),
                replans=self.replans,
                bytes_moved=self.bytes_moved,
                servers=list(self.servers),
            )
            if self.details:
                d["events"] = list(self.details)
            if series:
                d["series"] = [[round(t, 3), a] for t, a in self.series]
        return d


@dataclass(frozen=True)
class SimulationReport:
    horizon_s: float
    trace_source: str
    seed: int | None
    events: int
    floor: float
    floor_source: str
    options: SimOptions
    plan_family: str
    expected_accuracy: float  # the plan's exact expected accuracy (independent failures)
    strategies: tuple[StrategyResult, ...]
    dropped_after_horizon: int = 0  # trace rows after the horizon, ignored

    @property
    def hours(self) -> float:
        return self.horizon_s / 3600.0

    def strategy(self, key: str) -> StrategyResult:
        for s in self.strategies:
            if s.key == key:
                return s
        raise KeyError(key)

    def to_dict(self, *, series: bool = False) -> dict[str, Any]:
        o = self.options
        return {
            "schema": "melplan.simulation/v1",
            "hours": self.hours,
            "trace": self.trace_source,
            "seed": self.seed,
            "events": self.events,
            "dropped_after_horizon": self.dropped_after_horizon,
            "floor": self.floor,
            "floor_source": self.floor_source,
            "plan_family": self.plan_family,
            "plan_expected_accuracy": self.expected_accuracy,
            "assumptions": {
                "policy": o.policy.to_dict(),
                "any_family": o.any_family,
                "detection_s": o.detection_s,
                "load_s": o.load_s,
                "wan_rtt_ms": o.wan_rtt_ms,
                "wan_mbps": o.wan_mbps,
                "migration_weight": o.migration_weight,
            },
            "strategies": [s.to_dict(series=series) for s in self.strategies],
        }


# -- baseline models and servers ----------------------------------------------------------------


def baseline_families(catalog: Catalog | None, family: Family) -> tuple[Family | None, Family | None, str]:
    """(reference, backup, how they were chosen) for the plan's dataset; see the module docstring."""
    dataset = family.dataset.get("name")
    singles = [f for f in (catalog or ()) if f.n == 1 and f.dataset.get("name") == dataset]
    by_size = sorted(singles, key=lambda f: (f.weight_bytes, f.id))
    refs = [f for f in singles if f.extra.get("role") == "reference"]
    backs = [f for f in singles if f.extra.get("role") == "backup"]
    how = []
    unmarked = [f for f in by_size if f.extra.get("role") not in ("reference", "backup")]
    if refs:
        reference = max(refs, key=lambda f: (f.accuracy_all_up, f.id))
        how.append(f"reference {reference.id} (role)")
    elif unmarked:
        reference = unmarked[-1]
        how.append(f"reference {reference.id} (largest single model without a role)")
    else:
        reference = _reference_from_block(family)
        how.append(
            f"reference {reference.id} (from the plan family's reference block)"
            if reference
            else (
                "no reference model (no family with role 'reference', no single model without a role, "
                "no reference block in the plan's family)"
            )
        )
    backs = [f for f in backs if reference is None or f.id != reference.id]
    if backs:
        backup = min(backs, key=lambda f: (f.weight_bytes, f.id))
        how.append(f"backup {backup.id} (role)")
    else:
        small = [f for f in unmarked if reference is None or f.id != reference.id]
        backup = small[0] if small else None
        how.append(
            f"backup {backup.id} (smallest single model without a role)" if backup else "no backup model in the catalog"
        )
    return reference, backup, "; ".join(how)


def _reference_from_block(family: Family) -> Family | None:
    ref = family.reference or {}
    if "accuracy" not in ref or "params" not in ref:
        return None
    params = int(ref["params"])
    up = Upstream(name="u1", params=params, macs=int(ref.get("macs", 0)), weight_bytes=4 * params, feature_bytes=0)
    return Family(
        id=str(ref.get("id", f"{family.id}-reference")),
        dataset=dict(family.dataset),
        base=family.base,
        training={},
        upstreams=(up,),
        combiners=(),
        accuracy={"u1": float(ref["accuracy"])},
        extra={"role": "reference", "derived_from": family.id},
    )


def fitting_servers(single: Family, cluster: Cluster) -> tuple[list[str], dict[str, str]]:
    """Servers that can run a single model (memory, compute at the workload rate, SLO), most
    reliable first; plus why each other server cannot."""
    up = single.upstreams[0]
    rate = cluster.workload.rate_rps
    slo = cluster.workload.latency_slo_ms
    ok, why = [], {}
    for s in sorted(cluster.servers, key=lambda s: (s.failure_prob, -s.compute_gmacs, s.name)):
        if up.memory_bytes > s.memory_bytes:
            why[s.name] = f"needs {up.memory_bytes / (1 << 20):.1f} MiB, has {s.memory_mb:g}"
            continue
        if up.macs * rate > s.compute_gmacs * 1e9:
            why[s.name] = f"needs {up.macs * rate / 1e9:.2f} GMAC/s, has {s.compute_gmacs:g}"
            continue
        if slo is not None:
            lat = path_latency_ms(single, cluster, single.all_key, {up.name: s.name}, None, None)
            if lat > slo:
                why[s.name] = f"latency {lat:.1f} ms > SLO {slo:g} ms"
                continue
        ok.append(s.name)
    return ok, why


def _why_none(model: Family, why: dict[str, str]) -> str:
    sample = "; ".join(f"{k}: {v}" for k, v in list(why.items())[:3])
    return f"no server can run {model.id} ({sample})"


# -- strategies ---------------------------------------------------------------------------------


class _Strategy:
    key = ""
    label = ""
    servers: tuple[str, ...] = ()
    replans = 0
    bytes_moved = 0
    note = ""

    def observe(self, t: float, server: str, state: str) -> None:
        raise NotImplementedError

    def due(self, t: float) -> float | None:
        return None

    def wake(self, t: float) -> None:
        pass

    def delivered(self, t: float, true_down: set[str]) -> float:
        """Delivered accuracy, or -1.0 for no answer."""
        raise NotImplementedError

    def details(self) -> tuple[dict, ...]:
        return ()


class _PlanStrategy(_Strategy):
    key = "plan"

    def __init__(
        self,
        plan: Plan,
        family: Family,
        cluster: Cluster,
        catalog: Catalog | None,
        options: SimOptions,
        replanner: Replanner | None,
    ) -> None:
        self.sel = RuntimeSelector(
            plan,
            family,
            cluster,
            catalog=catalog,
            policy=options.policy,
            replanner=replanner,
            migration_weight=options.migration_weight,
            clock=lambda: self._t,
        )
        self._t = 0.0
        self.load_s = options.load_s
        self.label = f"plan: {family.id} ({options.policy.name})"
        self.servers = tuple(self.sel.lookup.used)
        self._old: RouteLookup | None = None
        self._until = -math.inf
        self._pending: frozenset[tuple[str, str]] = frozenset()
        self._replans: list[dict] = []

    def observe(self, t: float, server: str, state: str) -> None:
        self._t = t
        (self.sel.mark_down if state == "down" else self.sel.mark_up)(server, now=t)

    def due(self, t: float) -> float | None:
        due = self.sel.next_due(now=t)
        if self._old is not None and (due is None or self._until < due):
            due = self._until
        return due

    def wake(self, t: float) -> None:
        self._t = t
        if self._old is not None and t >= self._until:
            self._old, self._pending = None, frozenset()
        before = self.sel.lookup
        result = self.sel.tick(now=t)
        if result is None:
            return
        self.replans += 1
        self.bytes_moved += result.bytes_moved
        self._replans.append(
            {
                "time_s": t,
                "reason": result.reason,
                "family": result.new_plan.family,
                "actions": [str(a) for a in result.actions],
                "bytes_moved": result.bytes_moved,
            }
        )
        starts = frozenset((a.component, a.server) for a in result.actions if a.verb == "start")
        if starts and self.load_s > 0:
            self._old, self._until, self._pending = before, t + self.load_s, starts

    def delivered(self, t: float, true_down: set[str]) -> float:
        route = self.sel.route()
        if self._old is not None and t < self._until and any(c in self._pending for c in route.components):
            route = self._old.route(self.sel.down)
        if route.answer is None or any(s in true_down for s in route.servers):
            return -1.0
        return route.accuracy

    def details(self) -> tuple[dict, ...]:
        return tuple(self._replans)

    @property
    def failed(self) -> int:
        return self.sel.replan_failures


class _ColdRestart(_Strategy):
    key = "cold-restart"

    def __init__(self, model: Family, candidates: Sequence[str], load_s: float) -> None:
        self.label = f"full model, cold restart ({model.id})"
        self.acc = model.accuracy_all_up
        self.weight = model.weight_bytes
        self.candidates = list(candidates)
        self.load_s = load_s
        self.cur: str | None = self.candidates[0]
        self.ready_at = 0.0
        self.seen_down: set[str] = set()
        self.servers = (self.cur,)
        self.note = (
            f"restarts on the next of {', '.join(self.candidates[:4])}{' ...' if len(self.candidates) > 4 else ''}"
        )

    def _restart(self, t: float) -> None:
        nxt = next((s for s in self.candidates if s not in self.seen_down), None)
        self.cur = nxt
        if nxt is not None:
            self.ready_at = t + self.load_s
            self.replans += 1
            self.bytes_moved += self.weight

    def observe(self, t: float, server: str, state: str) -> None:
        if state == "down":
            self.seen_down.add(server)
            if server == self.cur:
                self._restart(t)
        else:
            self.seen_down.discard(server)
            if self.cur is None:
                self._restart(t)

    def due(self, t: float) -> float | None:
        return self.ready_at if self.ready_at > t else None

    def delivered(self, t: float, true_down: set[str]) -> float:
        if self.cur is None or t < self.ready_at or self.cur in true_down:
            return -1.0
        return self.acc


class _Backup(_Strategy):
    key = "backup"

    def __init__(self, model: Family, backup: Family, primary: str, second: str) -> None:
        self.label = f"full model + compressed backup ({model.id} + {backup.id})"
        self.acc, self.acc_b = model.accuracy_all_up, backup.accuracy_all_up
        self.primary, self.second = primary, second
        self.servers = (primary, second)
        self.seen_down: set[str] = set()

    def observe(self, t: float, server: str, state: str) -> None:
        (self.seen_down.add if state == "down" else self.seen_down.discard)(server)

    def delivered(self, t: float, true_down: set[str]) -> float:
        for srv, acc in ((self.primary, self.acc), (self.second, self.acc_b)):
            if srv not in self.seen_down:
                return -1.0 if srv in true_down else acc
        return -1.0


class _Cloud(_Strategy):
    key = "cloud"

    def __init__(self, model: Family, primary: str, cloud_ms: float, slo: float | None) -> None:
        self.label = f"cloud failover ({model.id})"
        self.acc = model.accuracy_all_up
        self.primary = primary
        self.servers = (primary,)
        self.cloud_ok = slo is None or cloud_ms <= slo
        slo_txt = "no SLO" if slo is None else f"SLO {slo:g} ms"
        self.note = f"cloud path {cloud_ms:.1f} ms, {slo_txt}: " + (
            "cloud answers count" if self.cloud_ok else "cloud answers are late and count as missed"
        )
        self.seen_down = False

    def observe(self, t: float, server: str, state: str) -> None:
        if server == self.primary:
            self.seen_down = state == "down"

    def delivered(self, t: float, true_down: set[str]) -> float:
        if not self.seen_down:
            return -1.0 if self.primary in true_down else self.acc
        return self.acc if self.cloud_ok else -1.0


# -- the simulation -----------------------------------------------------------------------------


def simulate(
    plan: Plan,
    family: Family,
    cluster: Cluster,
    trace: Trace,
    *,
    catalog: Catalog | None = None,
    options: SimOptions | None = None,
    replanner: Replanner | None = None,
) -> SimulationReport:
    """Replay ``trace`` against the plan (through a :class:`RuntimeSelector`) and the baselines.

    Raises :class:`PlanFileError` when the plan does not fit the family or cluster,
    :class:`TraceError` when the trace names servers outside the cluster, :class:`InputError` for
    bad options.  Planner failures during re-plans are recorded, not raised.
    """
    from melplan.core.errors import TraceError

    options = options or SimOptions()
    validate_placement(family, plan.placement, cluster)
    unknown = sorted({e.server for e in trace.events} - set(cluster.names))
    if unknown:
        raise TraceError(
            f"the trace names servers that are not in the cluster: {unknown[:5]}",
            file=trace.source,
            field="server",
            fix="use the cluster file the trace was recorded on",
        )
    reference, backup, how = baseline_families(catalog, family)
    if options.floor is not None:
        floor, floor_src = options.floor, "given"
    elif reference is not None:
        floor = DEFAULT_FLOOR_FRACTION * reference.accuracy_all_up
        floor_src = f"{DEFAULT_FLOOR_FRACTION:g} x reference accuracy ({reference.id})"
    else:
        floor = DEFAULT_FLOOR_FRACTION * family.accuracy_all_up
        floor_src = f"{DEFAULT_FLOOR_FRACTION:g} x the plan's all-up accuracy"

    strategies: list[_Strategy] = [
        _PlanStrategy(plan, family, cluster, catalog if options.any_family else None, options, replanner)
    ]
    skipped: list[StrategyResult] = []
    if options.baselines:
        strategies_b, skipped = _baselines(reference, backup, how, cluster, options, family)
        strategies += strategies_b

    results = _run(strategies, trace, options.detection_s, floor)
    plan_s = strategies[0]
    assert isinstance(plan_s, _PlanStrategy)
    notes = []
    if plan_s.replans:
        idle = sum(1 for d in plan_s.details() if not d["actions"])
        notes.append(f"{plan_s.replans - idle} re-plan(s) moved components, {idle} changed nothing")
    if plan_s.failed:
        notes.append(f"{plan_s.failed} failed and were backed off")
    switched = list(dict.fromkeys(d["family"] for d in plan_s.details() if d["family"] != family.id))
    if switched:
        notes.append(f"re-plans switched to {', '.join(switched)}")
    if notes:
        results[0] = replace(results[0], note="; ".join(notes))
    from melplan.core.evaluate import evaluate_placement

    expected = evaluate_placement(family, plan.placement, cluster, fallback_depth=0).expected_accuracy
    order = {"plan": 0, "cold-restart": 1, "backup": 2, "cloud": 3}
    allres = sorted(results + skipped, key=lambda r: order.get(r.key, 9))
    return SimulationReport(
        trace.horizon_s,
        trace.source,
        trace.seed,
        len(trace.events),
        floor,
        floor_src,
        options,
        family.id,
        expected,
        tuple(allres),
        trace.dropped_after_horizon,
    )


def _baselines(
    reference: Family | None, backup: Family | None, how: str, cluster: Cluster, options: SimOptions, family: Family
) -> tuple[list[_Strategy], list[StrategyResult]]:
    out: list[_Strategy] = []
    skipped: list[StrategyResult] = []
    labels = {
        "cold-restart": "full model, cold restart",
        "backup": "full model + compressed backup",
        "cloud": "cloud failover",
    }
    if reference is None:
        for key, label in labels.items():
            skipped.append(StrategyResult(key, label, False, how))
        return out, skipped
    ref_ok, ref_why = fitting_servers(reference, cluster)
    if not ref_ok:
        note = _why_none(reference, ref_why)
        for key, label in labels.items():
            skipped.append(StrategyResult(key, f"{label} ({reference.id})", False, note))
        return out, skipped
    out.append(_ColdRestart(reference, ref_ok, options.load_s))
    if backup is None:
        skipped.append(StrategyResult("backup", labels["backup"], False, how))
    else:
        b_ok, b_why = fitting_servers(backup, cluster)
        b_ok = [s for s in b_ok if s != ref_ok[0]]
        if b_ok:
            out.append(_Backup(reference, backup, ref_ok[0], b_ok[0]))
        else:
            skipped.append(
                StrategyResult(
                    "backup",
                    f"{labels['backup']} ({reference.id} + {backup.id})",
                    False,
                    _why_none(backup, b_why) if b_why else "no second server for the backup",
                )
            )
    cloud_ms = options.wan_rtt_ms + input_bytes(family) * 8 / (options.wan_mbps * 1e3)
    out.append(_Cloud(reference, ref_ok[0], cloud_ms, cluster.workload.latency_slo_ms))
    return out, skipped


def _run(strategies: Sequence[_Strategy], trace: Trace, detection_s: float, floor: float) -> list[StrategyResult]:
    """The event loop: true changes, observed changes and strategies' own wake-ups, in time order.
    At one instant: true changes, then observations, then wake-ups; then delivered accuracy is read."""
    horizon = trace.horizon_s
    true_ev = list(trace.events)
    obs_ev = [e for e in observed_events(true_ev, detection_s) if e.time_s <= horizon]
    k = len(strategies)
    acc_int = [0.0] * k
    answered = [0.0] * k
    below = [0.0] * k
    series: list[list[tuple[float, float]]] = [[] for _ in range(k)]
    true_down: set[str] = set()
    i = j = 0
    t = 0.0
    while True:
        while i < len(true_ev) and true_ev[i].time_s <= t:
            e = true_ev[i]
            (true_down.add if e.state == "down" else true_down.discard)(e.server)
            i += 1
        while j < len(obs_ev) and obs_ev[j].time_s <= t:
            e = obs_ev[j]
            for s in strategies:
                s.observe(t, e.server, e.state)
            j += 1
        for s in strategies:
            for _ in range(1000):
                d = s.due(t)
                if d is None or d > t:
                    break
                s.wake(t)
            else:  # pragma: no cover - a strategy that keeps asking to run at the same instant
                raise RuntimeError(f"strategy {s.key} does not settle at t={t}")
        values = [s.delivered(t, true_down) for s in strategies]
        nxt = horizon
        if i < len(true_ev):
            nxt = min(nxt, true_ev[i].time_s)
        if j < len(obs_ev):
            nxt = min(nxt, obs_ev[j].time_s)
        for s in strategies:
            d = s.due(t)
            if d is not None and d > t:
                nxt = min(nxt, d)
        dt = max(0.0, nxt - t)
        for n, v in enumerate(values):
            acc = max(v, 0.0)
            if not series[n] or series[n][-1][1] != acc:
                series[n].append((t, acc))
            acc_int[n] += acc * dt
            if v >= 0:
                answered[n] += dt
            if v < 0 or v < floor - 1e-12:
                below[n] += dt
        if nxt >= horizon:
            break
        t = nxt
    out = []
    for n, s in enumerate(strategies):
        out.append(
            StrategyResult(
                s.key,
                s.label,
                True,
                s.note,
                acc_int[n] / horizon,
                answered[n] / horizon,
                below[n],
                s.replans,
                s.bytes_moved,
                tuple(s.servers),
                tuple(series[n]),
                s.details(),
            )
        )
    return out


# -- plot -----------------------------------------------------------------------------------------


def binned_series(series: Sequence[tuple[float, float]], horizon_s: float, bins: int) -> tuple[list, list, list, list]:
    """Per bin of ``horizon_s / bins``: start time, time-weighted mean, minimum, and the time without
    an answer (accuracy 0) in seconds."""
    width = horizon_s / bins
    starts = [b * width for b in range(bins)]
    mean = [0.0] * bins
    low = [math.inf] * bins
    gap = [0.0] * bins
    pts = list(series) + [(horizon_s, series[-1][1] if series else 0.0)]
    for (t0, a), (t1, _) in zip(pts[:-1], pts[1:]):
        if t1 <= t0:
            continue
        b0, b1 = int(t0 // width), min(bins - 1, int(math.ceil(t1 / width)) - 1)
        for b in range(max(0, b0), b1 + 1):
            lo, hi = max(t0, starts[b]), min(t1, starts[b] + width)
            if hi <= lo:
                continue
            mean[b] += a * (hi - lo) / width
            low[b] = min(low[b], a)
            if a <= 0:
                gap[b] += hi - lo
    return starts, mean, [0.0 if math.isinf(x) else x for x in low], gap


def plot_report(report: SimulationReport, path: str, *, title: str | None = None, bins: int = 400) -> str:
    """Accuracy over time, one panel per deployable strategy, hours on x, written atomically as PNG.

    Each panel shows the time-weighted mean accuracy per bin (``bins`` bins over the horizon), the
    band down to the lowest accuracy in the bin, the floor, and red marks where there was no answer.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [s for s in report.strategies if s.deployable]
    if not rows:
        raise InputError("nothing to plot: no strategy is deployable", field="plot", fix="check the notes in the table")
    hours = report.hours
    bins = max(1, min(bins, int(report.horizon_s)))
    height = 1.7 * len(rows) + 1.3
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, height), sharex=True, squeeze=False)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    nonzero = [a for s in rows for _, a in s.series if a > 0]
    low_y = max(0.0, min(nonzero + [report.floor]) - 0.04) if nonzero else 0.0
    for ax, s, color in zip(axes[:, 0], rows, colors):
        starts, mean, low, gap = binned_series(s.series, report.horizon_s, bins)
        xs = [t / 3600 for t in starts] + [hours]
        ax.stairs(mean, xs, baseline=None, color=color, lw=1.3)
        ax.stairs(mean, xs, baseline=[max(v, low_y) for v in low], fill=True, color=color, alpha=0.25, lw=0)
        ax.axhline(report.floor, color="gray", ls="--", lw=0.8)
        for x0, x1, g in zip(xs[:-1], xs[1:], gap):
            if g > 0:
                ax.axvspan(x0, x1, ymin=0, ymax=0.06, color="red", lw=0)
        ax.set_ylim(low_y, 1.0)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.set_title(
            f"{s.label}:  mean {s.accuracy:.4f},  availability {s.availability:.3%},  "
            f"below floor {s.below_floor_s / 3600:.2f} h,  re-plans/restarts {s.replans}",
            fontsize=9,
            loc="left",
        )
    axes[-1, 0].set_xlabel("time (hours)")
    axes[-1, 0].set_xlim(0, hours)
    handles = [
        Line2D([], [], color="black", lw=1.3, label=f"mean accuracy per {hours / bins:.3g} h bin"),
        Patch(color="black", alpha=0.25, label="down to the lowest accuracy in the bin"),
        Line2D([], [], color="gray", ls="--", lw=0.8, label=f"floor {report.floor:.3f}"),
        Patch(color="red", label="no answer for part of the bin"),
    ]
    fig.suptitle(
        title or f"Delivered accuracy over {hours:g} h ({report.trace_source})",
        fontsize=10,
        y=1 - 0.08 / height,
        va="top",
    )
    fig.legend(
        handles=handles, loc="upper center", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1 - 0.27 / height)
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))
    try:
        atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return str(path)


# -- files in, report out (``melplan simulate``) ------------------------------------------------


@dataclass(frozen=True)
class SimulationRun:
    report: SimulationReport
    trace: Trace
    plot: str | None = None
    trace_out: str | None = None


def simulate_files(
    plan_path: str,
    cluster_path: str | None = None,
    *,
    catalog_dir: str | None = None,
    trace_path: str | None = None,
    hours: float | None = None,
    seed: int | None = None,
    default_mttr_h: float | None = None,
    options: SimOptions | None = None,
    plot_path: str | None = None,
    write_trace_path: str | None = None,
    replanner: Replanner | str | None = None,
    replan_time_limit_s: float | None = None,
    service: str | None = None,
) -> SimulationRun:
    """Load the plan with its family and cluster (:func:`melplan.core.plan.load_plan_bundle`: a v2 plan
    embeds both; ``cluster_path``/``catalog_dir`` given anyway must agree with it), the catalog for
    the baselines (the one given, else the one the plan recorded when it still exists, else none),
    the trace (or generate one), simulate, and write the plot and the trace when asked.

    With ``trace_path``, ``hours`` (optional) sets the horizon; without it, ``hours`` is required and
    a trace is generated with ``seed`` (default 0).  ``replanner``: a callable, ``"planner"`` (the
    ILP, default) or ``"repair"`` (:mod:`melplan.runtime.repair`); ``replan_time_limit_s`` bounds each ILP
    re-plan.  ``service``: the service of a site plan (``melplan plan --services``) to simulate.
    Raises :class:`InputError` subclasses for bad files or options.
    """
    from melplan.core.plan import load_plan_bundle
    from melplan.sim.traces import DEFAULT_MTTR_H, generate_trace, load_trace, write_trace

    if trace_path is None and hours is None:
        raise InputError(
            "give a failure trace or a horizon to generate one",
            field="--trace/--hours",
            fix="pass --trace trace.csv, or --hours H (with --seed S) to generate failures from MTBF/MTTR",
        )
    if trace_path is not None and (seed is not None or default_mttr_h is not None):
        raise InputError(
            "--seed and --default-mttr apply to generated traces only",
            field="--seed",
            fix="drop them, or drop --trace to generate a trace",
        )
    if hours is not None and (isinstance(hours, bool) or not math.isfinite(hours) or hours <= 0):
        raise InputError(
            f"--hours must be a positive number, got {hours!r}",
            field="--hours",
            fix="give the simulated horizon in hours, e.g. --hours 720",
        )
    replanner = make_replanner(replanner, replan_time_limit_s)
    bundle = load_plan_bundle(
        plan_path, catalog_dir=catalog_dir, cluster_path=cluster_path, want_catalog=True, service=service
    )
    plan, family, catalog = bundle.plan, bundle.family, bundle.catalog
    cluster = bundle.require_cluster("--servers")
    validate_placement(family, plan.placement, cluster, source=str(plan_path))
    if trace_path is not None:
        trace = load_trace(trace_path, servers=cluster.names, horizon_s=None if hours is None else hours * 3600)
    else:
        trace = generate_trace(
            cluster,
            hours,
            0 if seed is None else seed,
            default_mttr_h=DEFAULT_MTTR_H if default_mttr_h is None else default_mttr_h,
        )
    report = simulate(plan, family, cluster, trace, catalog=catalog, options=options, replanner=replanner)
    plot = plot_report(report, plot_path) if plot_path else None
    trace_out = str(write_trace(trace, write_trace_path)) if write_trace_path else None
    return SimulationRun(report, trace, plot, trace_out)


REPLANNERS = ("planner", "repair")


def make_replanner(which: Replanner | str | None, time_limit_s: float | None = None) -> Replanner | None:
    """``"planner"`` / None (the ILP), ``"repair"`` (local repair) or a callable, returned as a
    replanner.  Raises :class:`InputError` for another name or a bad time limit."""
    if callable(which):
        return which
    if time_limit_s is not None and not (isinstance(time_limit_s, (int, float)) and time_limit_s > 0):
        raise InputError(
            f"the re-plan time limit must be > 0 seconds, got {time_limit_s!r}",
            field="--replan-time-limit",
            fix="give e.g. 10",
        )
    if which is None or which == "planner":
        from melplan.runtime.selector import planner_replanner

        return planner_replanner(**({} if time_limit_s is None else {"time_limit_s": float(time_limit_s)}))
    if which == "repair":
        from melplan.runtime.repair import repair_replanner

        return repair_replanner()
    raise InputError(f"unknown replanner {which!r}", field="--replanner", fix=f"use one of: {', '.join(REPLANNERS)}")
