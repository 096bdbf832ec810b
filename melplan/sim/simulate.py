"""Replay a failure trace against a plan and the usual alternatives (no torch; matplotlib only in
:mod:`melplan.sim.plot`).

Model (docs/simulate.md):

* The trace gives the *true* state of every server (domain events ``key=value`` expanded: a server
  is down while it or a domain it is in is down).  A heartbeat monitor sees a change ``detection``
  seconds after it happens, and only if it lasts that long
  (:func:`melplan.sim.traces.observed_events`); each strategy has its detection time and acts on
  what its monitor sees.
* A strategy's *delivered* accuracy at time t is the accuracy of the route it chose if every server
  the route depends on is truly up, else no answer (requests sent to a dead server are lost).  While
  the cluster's ingress is truly down no strategy answers (requests enter there; the cloud too).
  Availability is the fraction of time with an answer; time below the floor
  counts every moment with a delivered accuracy under ``floor`` (no answer included).
* **plan**: a :class:`~melplan.runtime.selector.RuntimeSelector` with the chosen policy.  A re-plan's
  started components report ready after their load time (per component, :mod:`melplan.sim.loadtime`);
  until then the selector keeps them out of routes and the old placement serves (make before break).
* the baselines (:mod:`melplan.sim.strategies`): **cold restart**, **backup**, **cloud failover**,
  on the catalog's best-trained single models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from melplan.core.catalog import Catalog, Family
from melplan.core.cluster import Cluster
from melplan.core.errors import InputError
from melplan.core.evaluate import input_bytes, validate_placement
from melplan.core.plan import Plan
from melplan.runtime.reconcile import Policy
from melplan.runtime.selector import Replanner
from melplan.sim.loadtime import DEFAULT_DETECTION_S, DETECTION_SOURCE, LOAD_SOURCE, default_load_s
from melplan.sim.strategies import (  # noqa: F401  (re-exported)
    Backup,
    BaselineModels,
    Cloud,
    ColdRestart,
    PlanStrategy,
    Strategy,
    choose_baselines,
    fitting_servers,
)
from melplan.sim.traces import Trace, effective_events, observed_events

DEFAULT_WAN_RTT_MS = 40.0
WAN_SOURCE = "assumption: a round trip to a regional cloud region; docs/results.md has 20, 40 and 80 ms rows"
DEFAULT_WAN_MBPS = 50.0
DEFAULT_FLOOR_FRACTION = 0.9
STRATEGY_KEYS = ("plan", "cold-restart", "backup", "cloud")


def _seconds(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise InputError(f"{key} must be a finite number of seconds >= 0, got {v!r}", field=key, fix=f"set {key} >= 0")
    return float(v)


@dataclass(frozen=True)
class SimOptions:
    """Assumptions of a simulation (defaults and their sources in docs/simulate.md).

    ``floor``: accuracy floor (default ``0.9 x`` the best single model's accuracy, or the plan's all-up
    accuracy without one); ``detection_s``: heartbeat detection delay of every strategy, with
    ``detection_by`` overriding it per strategy key (``plan``, ``cold-restart``, ``backup``, ``cloud``);
    ``load_s``: time to start any component or model (None: the measured default by size,
    :func:`melplan.sim.loadtime.default_load_s`), with ``load_by`` overriding it per component name
    (``u1``, ``u1+u2``) or strategy key; ``wan_rtt_ms``/``wan_mbps``: the link to the cloud;
    ``baselines``: simulate the baselines too; ``any_family``: let re-plans switch to another family.
    Raises :class:`InputError` for a value out of range.
    """

    policy: Policy = field(default_factory=Policy)
    detection_s: float = DEFAULT_DETECTION_S
    load_s: float | None = None
    wan_rtt_ms: float = DEFAULT_WAN_RTT_MS
    wan_mbps: float = DEFAULT_WAN_MBPS
    floor: float | None = None
    migration_weight: float | None = None
    baselines: bool = True
    any_family: bool = False
    detection_by: Mapping[str, float] = field(default_factory=dict)
    load_by: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _seconds("detection_s", self.detection_s)
        _seconds("wan_rtt_ms", self.wan_rtt_ms)
        if self.load_s is not None:
            _seconds("load_s", self.load_s)
        for k, v in dict(self.detection_by).items():
            if k not in STRATEGY_KEYS:
                raise InputError(
                    f"unknown strategy {k!r} for a detection time",
                    field="--detection-for",
                    fix=f"use one of: {', '.join(STRATEGY_KEYS)}",
                )
            _seconds(f"detection for {k}", v)
        for k, v in dict(self.load_by).items():
            _seconds(f"load for {k}", v)
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

    def detection_for(self, strategy: str) -> float:
        return float(self.detection_by.get(strategy, self.detection_s))

    def load_for(self, strategy: str, component: str | None, weight_bytes: int) -> float:
        """Seconds until a component (or single model) started by ``strategy`` answers."""
        if component is not None and component in self.load_by:
            return float(self.load_by[component])
        if strategy in self.load_by:
            return float(self.load_by[strategy])
        if self.load_s is not None:
            return float(self.load_s)
        return default_load_s(weight_bytes)

    def sources(self) -> dict[str, str]:
        return {
            "detection_s": "given" if "detection_s" in self._given else DETECTION_SOURCE,
            "load_s": "given" if self.load_s is not None else f"measured default by size ({LOAD_SOURCE})",
            "wan_rtt_ms": "given" if "wan_rtt_ms" in self._given else WAN_SOURCE,
        }

    @property
    def _given(self) -> set[str]:
        out = set()
        if self.detection_s != DEFAULT_DETECTION_S:
            out.add("detection_s")
        if self.wan_rtt_ms != DEFAULT_WAN_RTT_MS:
            out.add("wan_rtt_ms")
        return out


@dataclass(frozen=True)
class StrategyResult:
    """Metrics of one strategy over the trace.  ``series``: (time_s, delivered accuracy or None for no
    answer) at every change, starting at 0.  Not deployable strategies carry the reason in ``note``."""

    key: str
    label: str
    deployable: bool
    note: str = ""
    accuracy: float = 0.0  # time-weighted delivered accuracy
    availability: float = 0.0  # fraction of time with an answer
    below_floor_s: float = 0.0
    replans: int = 0  # re-plans attempted (plan) or restarts (cold restart)
    bytes_moved: int = 0
    servers: tuple[str, ...] = ()
    series: tuple[tuple[float, float | None], ...] = ()
    details: tuple[dict, ...] = ()
    failed_replans: int = 0
    failure_reasons: tuple[tuple[str, int], ...] = ()  # (reason, count), most frequent first
    detection_s: float | None = None

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
                detection_s=self.detection_s,
            )
            if self.key == "plan":
                d["failed_replans"] = self.failed_replans
                d["failure_reasons"] = [{"reason": r, "count": n} for r, n in self.failure_reasons]
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
    baselines: str = ""  # how the baseline models were chosen
    mapping: tuple[tuple[str, str], ...] = ()  # real traces: (server, node it plays)
    load_times: tuple[tuple[str, float], ...] = ()  # what each started thing needs, in seconds

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
            "schema": "melplan.simulation/v2",
            "hours": self.hours,
            "trace": self.trace_source,
            "seed": self.seed,
            "trace_mapping": [{"server": s, "node": n} for s, n in self.mapping],
            "events": self.events,
            "dropped_after_horizon": self.dropped_after_horizon,
            "floor": self.floor,
            "floor_source": self.floor_source,
            "plan_family": self.plan_family,
            "plan_expected_accuracy": self.expected_accuracy,
            "baselines": self.baselines,
            "assumptions": {
                "policy": o.policy.to_dict(),
                "any_family": o.any_family,
                "detection_s": o.detection_s,
                "detection_by_strategy": dict(o.detection_by),
                "load_s": o.load_s,
                "load_by": dict(o.load_by),
                "load_times_s": dict(self.load_times),
                "wan_rtt_ms": o.wan_rtt_ms,
                "wan_mbps": o.wan_mbps,
                "migration_weight": o.migration_weight,
                "sources": o.sources(),
            },
            "strategies": [s.to_dict(series=series) for s in self.strategies],
        }


# -- the simulation -----------------------------------------------------------------------------


def baseline_families(catalog: Catalog | None, family: Family, cluster: Cluster) -> BaselineModels:
    """The baselines' single models (:func:`melplan.sim.strategies.choose_baselines`)."""
    return choose_baselines(catalog, family, cluster)


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
    bad options.  Planner failures during re-plans are recorded (with their reasons), never raised.
    """
    from melplan.core.errors import TraceError
    from melplan.sim.traces import domain_names

    options = options or SimOptions()
    validate_placement(family, plan.placement, cluster)
    allowed = set(cluster.names) | set(domain_names(cluster))
    unknown = sorted({e.server for e in trace.events} - allowed)
    if unknown:
        raise TraceError(
            f"the trace names servers that are not in the cluster: {unknown[:5]}",
            file=trace.source,
            field="server",
            fix="use the cluster file the trace was recorded on (domains as key=value of its labels)",
        )
    models = choose_baselines(catalog, family, cluster) if options.baselines else None
    primary = models.primary if models else None
    if options.floor is not None:
        floor, floor_src = options.floor, "given"
    elif primary is not None:
        floor = DEFAULT_FLOOR_FRACTION * primary.accuracy_all_up
        floor_src = f"{DEFAULT_FLOOR_FRACTION:g} x the best single model's accuracy ({primary.id})"
    else:
        floor = DEFAULT_FLOOR_FRACTION * family.accuracy_all_up
        floor_src = f"{DEFAULT_FLOOR_FRACTION:g} x the plan's all-up accuracy"

    loads: dict[str, float] = {}

    def load_of(fam: Family, component: str) -> float:
        s = options.load_for("plan", component, fam.component(component).weight_bytes)
        loads[f"plan {fam.id} {component}"] = s
        return s

    plan_s = PlanStrategy(
        plan,
        family,
        cluster,
        catalog if options.any_family else None,
        options.policy,
        replanner,
        options.migration_weight,
        load_of,
        options.detection_for("plan"),
    )
    strategies: list[Strategy] = [plan_s]
    skipped: list[StrategyResult] = []
    if models is not None:
        strategies_b, skipped = _baselines(models, cluster, options, family, loads)
        strategies += strategies_b

    results = _run(strategies, trace, cluster, floor)
    notes = []
    replans = [d for d in plan_s.details() if d["kind"] == "replan"]
    if replans:
        idle = sum(1 for d in replans if not d["actions"])
        notes.append(f"{len(replans) - idle} re-plan(s) moved components, {idle} changed nothing")
    reasons = tuple(sorted(plan_s.reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    if plan_s.failed:
        top = "; ".join(f"{n}x {r}" for r, n in reasons[:3])
        more = f"; {len(reasons) - 3} other reason(s)" if len(reasons) > 3 else ""
        notes.append(f"{plan_s.failed} re-plan(s) failed and were backed off: {top}{more}")
    switched = list(dict.fromkeys(d["family"] for d in replans if d["family"] != family.id))
    if switched:
        notes.append(f"re-plans switched to {', '.join(switched)}")
    results[0] = replace(results[0], note="; ".join(notes), failed_replans=plan_s.failed, failure_reasons=reasons)
    from melplan.core.evaluate import evaluate_placement

    expected = evaluate_placement(family, plan.placement, cluster, fallback_depth=0).expected_accuracy
    order = {k: i for i, k in enumerate(STRATEGY_KEYS)}
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
        models.how if models else "baselines not simulated",
        trace.mapping,
        tuple(sorted(loads.items())),
    )


def _baselines(
    models: BaselineModels, cluster: Cluster, options: SimOptions, family: Family, loads: dict[str, float]
) -> tuple[list[Strategy], list[StrategyResult]]:
    out: list[Strategy] = []
    skipped: list[StrategyResult] = []
    labels = {
        "cold-restart": "single model, cold restart",
        "backup": "single model + backup",
        "cloud": "cloud failover",
    }
    primary = models.primary
    if primary is None:
        note = models.why_not or models.how
        for key, label in labels.items():
            skipped.append(StrategyResult(key, label, False, note))
        return out, skipped
    servers = list(models.primary_servers)
    load = options.load_for("cold-restart", None, primary.weight_bytes)
    loads[f"cold-restart {primary.id}"] = load
    out.append(ColdRestart(primary, servers, load, options.detection_for("cold-restart")))
    if models.backup is None or models.backup_server is None:
        skipped.append(StrategyResult("backup", labels["backup"], False, "no second server fits a single model"))
    else:
        out.append(Backup(primary, models.backup, servers[0], models.backup_server, options.detection_for("backup")))
    cloud_model = models.cloud or primary
    cloud_ms = options.wan_rtt_ms + input_bytes(family) * 8 / (options.wan_mbps * 1e3)
    out.append(
        Cloud(
            primary,
            cloud_model,
            servers[0],
            cloud_ms,
            cluster.workload.latency_slo_ms,
            options.wan_rtt_ms,
            options.detection_for("cloud"),
        )
    )
    return out, skipped


def _run(strategies: Sequence[Strategy], trace: Trace, cluster: Cluster, floor: float) -> list[StrategyResult]:
    """The event loop: true changes, observed changes (per strategy's detection time) and the
    strategies' own wake-ups, in time order.  At one instant: true changes, then observations, then
    wake-ups; then delivered accuracy is read."""
    horizon = trace.horizon_s
    ingress = cluster.ingress
    true_ev = effective_events(trace.events, cluster)
    by_det: dict[float, list] = {}
    for s in strategies:
        if s.detection_s not in by_det:
            by_det[s.detection_s] = [e for e in observed_events(true_ev, s.detection_s) if e.time_s <= horizon]
    obs = [by_det[s.detection_s] for s in strategies]
    pos = [0] * len(strategies)
    k = len(strategies)
    acc_int = [0.0] * k
    answered = [0.0] * k
    below = [0.0] * k
    series: list[list[tuple[float, float | None]]] = [[] for _ in range(k)]
    true_down: set[str] = set()
    i = 0
    t = 0.0
    while True:
        while i < len(true_ev) and true_ev[i].time_s <= t:
            e = true_ev[i]
            (true_down.add if e.state == "down" else true_down.discard)(e.server)
            i += 1
        for n, s in enumerate(strategies):
            ev = obs[n]
            while pos[n] < len(ev) and ev[pos[n]].time_s <= t:
                e = ev[pos[n]]
                s.observe(t, e.server, e.state)
                pos[n] += 1
        for s in strategies:
            for _ in range(1000):
                d = s.due(t)
                if d is None or d > t:
                    break
                s.wake(t)
            else:  # pragma: no cover - a strategy that keeps asking to run at the same instant
                raise RuntimeError(f"strategy {s.key} does not settle at t={t}")
        if ingress is not None and ingress in true_down:  # requests enter there: nobody answers
            values = [-1.0] * k
        else:
            values = [s.delivered(t, true_down) for s in strategies]
        nxt = horizon
        if i < len(true_ev):
            nxt = min(nxt, true_ev[i].time_s)
        for n, s in enumerate(strategies):
            if pos[n] < len(obs[n]):
                nxt = min(nxt, obs[n][pos[n]].time_s)
            d = s.due(t)
            if d is not None and d > t:
                nxt = min(nxt, d)
        dt = max(0.0, nxt - t)
        for n, v in enumerate(values):
            point = None if v < 0 else v
            if not series[n] or series[n][-1][1] != point:
                series[n].append((t, point))
            acc_int[n] += max(v, 0.0) * dt
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
                detection_s=s.detection_s,
            )
        )
    return out


def plot_report(report: SimulationReport, path: str, **kwargs: Any) -> str:
    """Draw the report (:func:`melplan.sim.plot.plot_report`)."""
    from melplan.sim.plot import plot_report as draw

    return draw(report, path, **kwargs)


def binned_series(series, horizon_s: float, bins: int):
    """Per-bin summary of a series (:func:`melplan.sim.plot.binned_series`)."""
    from melplan.sim.plot import binned_series as summary

    return summary(series, horizon_s, bins)


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
    trace_format: str = "csv",
    trace_nodes: str | None = None,
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

    With ``trace_path`` (``trace_format`` ``csv``, ``lanl`` or ``fta``; the real records are mapped
    onto the servers with ``seed`` and ``trace_nodes``, :mod:`melplan.sim.realtraces`), ``hours``
    (optional) sets the horizon; without it, ``hours`` is required and a trace is generated with
    ``seed`` (default 0), failure domains included.  ``replanner``: a callable, ``"planner"`` (the
    ILP, default) or ``"repair"`` (:mod:`melplan.runtime.repair`); ``replan_time_limit_s`` bounds each ILP
    re-plan.  ``service``: the service of a site plan (``melplan plan --services``) to simulate.
    Raises :class:`InputError` subclasses for bad files or options.
    """
    from melplan.core.plan import load_plan_bundle
    from melplan.sim.realtraces import FORMATS, load_any
    from melplan.sim.traces import DEFAULT_MTTR_H, domain_names, generate_trace, write_trace

    if trace_path is None and hours is None:
        raise InputError(
            "give a failure trace or a horizon to generate one",
            field="--trace/--hours",
            fix="pass --trace trace.csv, or --hours H (with --seed S) to generate failures from MTBF/MTTR",
        )
    if trace_format not in FORMATS:
        raise InputError(
            f"unknown trace format {trace_format!r}", field="--trace-format", fix=f"use one of: {', '.join(FORMATS)}"
        )
    if trace_path is None and (trace_format != "csv" or trace_nodes is not None):
        raise InputError(
            "--trace-format and --trace-nodes describe a --trace file",
            field="--trace-format",
            fix="give --trace FILE, or drop them to generate a trace",
        )
    if trace_path is not None and trace_format == "csv" and seed is not None:
        raise InputError(
            "--seed applies to generated traces and to mapping a real record (--trace-format lanl|fta)",
            field="--seed",
            fix="drop --seed, or drop --trace to generate a trace",
        )
    if trace_path is not None and default_mttr_h is not None:
        raise InputError(
            "--default-mttr applies to generated traces only",
            field="--default-mttr",
            fix="drop it, or drop --trace to generate a trace",
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
        trace = load_any(
            trace_path,
            trace_format,
            cluster.names,
            seed=seed,
            select=trace_nodes,
            hours=hours,
            domains=domain_names(cluster),
        )
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
