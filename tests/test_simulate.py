"""Simulation: hand-computed traces for the plan and every baseline, trace parsing and generation,
re-plans with load time, the long-run agreement with the exact evaluator, the plot."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from factories import make_cluster, make_family, make_single
from hypothesis import given, settings
from hypothesis import strategies as st

from melplan.core.catalog import Catalog
from melplan.core.cluster import Cluster, Link, Server, Workload
from melplan.core.errors import InfeasiblePlanError, InputError, PlanFileError, TraceError
from melplan.core.plan import Plan
from melplan.runtime.reconcile import Policy
from melplan.sim.simulate import SimOptions, binned_series, choose_baselines, fitting_servers, plot_report, simulate
from melplan.sim.traces import (
    Trace,
    TraceEvent,
    generate_trace,
    load_trace,
    observed_events,
    parse_trace,
    server_rates,
    trace_to_csv,
    write_trace,
)

H = 3600.0


def hand_setup(slo: float | None = None):
    """u1 on a, u2 on b, combiner u1+u2 on c; d and e are the most reliable servers (baselines)."""
    fam = make_family(2, seed=3)
    fam = replace(fam, accuracy={"u1": 0.80, "u2": 0.70, "u1+u2": 0.90})
    servers = tuple(
        Server(n, 256.0, 50.0, p) for n, p in (("a", 0.05), ("b", 0.05), ("c", 0.05), ("d", 0.001), ("e", 0.002))
    )
    cluster = Cluster(servers, Workload(10.0, slo), Link(1.0, 1000.0), (), None)
    ref = make_single("full", params=1_000_000, accuracy=0.95, role="reference", dataset=fam.dataset)
    small = make_single("small", params=100_000, accuracy=0.85, role="backup", dataset=fam.dataset)
    plan = Plan(fam.id, {"u1": ("a",), "u2": ("b",), "u1+u2": ("c",)}, "expected", 0.0, 0.0, {})
    return fam, cluster, plan, Catalog((fam, ref, small)), ref


def trace_of(rows, hours):
    return Trace(tuple(TraceEvent(t * H, s, st) for t, s, st in rows), hours * H, "hand-made")


def test_time_weighted_accuracy_equals_hand_computation_for_the_plan_and_baselines():
    fam, cluster, plan, catalog, ref = hand_setup()
    rows = [
        (1, "b", "down"),
        (2, "d", "down"),
        (3, "b", "up"),
        (4, "d", "up"),
        (5, "a", "down"),
        (6, "a", "up"),
        (7, "c", "down"),
        (8, "a", "down"),
        (8.5, "a", "up"),
        (9, "c", "up"),
        (9, "a", "down"),
        (9, "b", "down"),
        (9.5, "a", "up"),
        (9.5, "b", "up"),
    ]
    trace = trace_of(rows, 10)
    opts = SimOptions(policy=Policy.named("failover-only"), detection_s=0, load_s=600, floor=0.75)
    rep = simulate(plan, fam, cluster, trace, catalog=catalog, options=opts)
    # plan, hour by hour: who answers
    #   [0,1) u1+u2 .9 | [1,3) b down: u1 .8 | [3,5) .9 | [5,6) a down: u2 .7 | [6,7) .9
    #   [7,8) c down: u1 .8 | [8,8.5) c,a down: u2 .7 | [8.5,9) u1 .8 | [9,9.5) a,b down: none | [9.5,10) .9
    hand = (
        1 * 0.9 + 2 * 0.8 + 2 * 0.9 + 1 * 0.7 + 1 * 0.9 + 1 * 0.8 + 0.5 * 0.7 + 0.5 * 0.8 + 0.5 * 0 + 0.5 * 0.9
    ) / 10
    p = rep.strategy("plan")
    assert p.accuracy == pytest.approx(hand, abs=1e-12)
    assert p.availability == pytest.approx(9.5 / 10)
    assert p.below_floor_s == pytest.approx((1 + 0.5 + 0.5) * H)  # the .7 hours and the outage
    assert p.replans == 0 and p.bytes_moved == 0
    assert p.series[:3] == ((0.0, 0.9), (1 * H, 0.8), (3 * H, 0.9))
    # cold restart: the full model on d (most reliable); d fails at 2 h, restarts on e, answers 600 s later
    cold = rep.strategy("cold-restart")
    assert cold.servers == ("d",)
    assert cold.accuracy == pytest.approx(0.95 * (10 * H - 600) / (10 * H), abs=1e-12)
    assert cold.availability == pytest.approx((10 * H - 600) / (10 * H))
    assert cold.replans == 1 and cold.bytes_moved == ref.weight_bytes
    assert cold.below_floor_s == pytest.approx(600)
    # compressed backup on e answers (0.85) while d is down for 2 h
    bk = rep.strategy("backup")
    assert bk.servers == ("d", "e")
    assert bk.accuracy == pytest.approx((8 * 0.95 + 2 * 0.85) / 10, abs=1e-12)
    assert bk.availability == pytest.approx(1.0)
    # cloud failover, no SLO: full accuracy all the time
    assert rep.strategy("cloud").accuracy == pytest.approx(0.95)


def test_cloud_answers_that_break_the_slo_count_as_missed():
    fam, cluster, plan, catalog, _ = hand_setup(slo=50.0)
    trace = trace_of([(2, "d", "down"), (4, "d", "up")], 10)
    opts = SimOptions(policy=Policy.named("failover-only"), detection_s=0, wan_rtt_ms=80.0)
    cloud = simulate(plan, fam, cluster, trace, catalog=catalog, options=opts).strategy("cloud")
    assert cloud.accuracy == pytest.approx(0.95 * 8 / 10) and cloud.availability == pytest.approx(0.8)
    assert "late" in cloud.note
    fast = replace(opts, wan_rtt_ms=20.0)
    cloud = simulate(plan, fam, cluster, trace, catalog=catalog, options=fast).strategy("cloud")
    assert cloud.accuracy == pytest.approx(0.95) and cloud.availability == pytest.approx(1.0)


def test_detection_delay_and_flaps_shorter_than_detection_are_lost_requests():
    fam, cluster, plan, catalog, _ = hand_setup()
    # b fails for 2 h; a flaps for 30 s, shorter than the 60 s detection, while u1 alone answers
    rows = [(1, "b", "down"), (2, "a", "down"), (2 + 30 / H, "a", "up"), (3, "b", "up")]
    rep = simulate(
        plan,
        fam,
        cluster,
        trace_of(rows, 4),
        catalog=catalog,
        options=SimOptions(policy=Policy.named("failover-only"), detection_s=60, baselines=False),
    )
    # [0,1h) .9 | 60 s lost (route still on b) | u1 .8 until b is seen up at 3h+60 s, minus a's 30 s flap | .9
    hand = (H * 0.9 + 60 * 0 + (2 * H - 30) * 0.8 + 30 * 0 + (H - 60) * 0.9) / (4 * H)
    p = rep.strategy("plan")
    assert p.accuracy == pytest.approx(hand, abs=1e-12)
    assert p.availability == pytest.approx((4 * H - 90) / (4 * H))
    assert [s.key for s in rep.strategies] == ["plan"]


def greedy_replanner(req):
    """Move components off excluded servers onto the first available server without an upstream."""
    fam = req.current_family
    avail = req.cluster.names
    hosts = {req.current.placement[u][0] for u in fam.upstream_names if req.current.placement[u][0] in avail}
    new = {}
    for comp, servers in req.current.placement.items():
        keep = tuple(s for s in servers if s in avail)
        if not keep:
            free = [s for s in avail if comp not in fam.upstream_names or s not in hosts]
            if not free:
                raise InfeasiblePlanError("no server left", fix="add servers")
            keep = (free[0],)
            hosts.add(free[0])
        new[comp] = keep
    return replace(req.current, placement=new)


def test_replan_counts_bytes_and_old_route_serves_while_new_components_load():
    fam, cluster, plan, catalog, _ = hand_setup()
    trace = trace_of([(1, "b", "down"), (5, "b", "up")], 6)
    opts = SimOptions(
        policy=Policy.named("replan-after", grace_s=300, hold_down_s=600), detection_s=0, load_s=600, baselines=False
    )
    p = simulate(plan, fam, cluster, trace, catalog=catalog, options=opts, replanner=greedy_replanner).strategy("plan")
    # [0,1h) .9 | grace 300 s: u1 .8 | re-plan starts u2 on c, loading 600 s: still u1 .8 | .9 to the end;
    # b back at 5 h, counted after the 600 s hold-down: a second re-plan that moves nothing
    hand = (H * 0.9 + 900 * 0.8 + (5 * H - 900) * 0.9) / (6 * H)
    assert p.accuracy == pytest.approx(hand, abs=1e-12)
    assert p.replans == 2 and p.bytes_moved == fam.upstream("u2").weight_bytes
    assert p.note == "1 re-plan(s) moved components, 1 changed nothing"
    assert p.details[0]["actions"] == ["start u2 on c", "stop u2 on b"] and p.details[0]["time_s"] == H + 300
    assert p.details[1]["time_s"] == 5 * H + 600 and p.details[1]["actions"] == []


def test_failed_replans_are_noted_not_raised():
    fam, cluster, plan, catalog, _ = hand_setup()

    def fails(req):
        raise InfeasiblePlanError("nothing fits", fix="add servers")

    p = simulate(
        plan,
        fam,
        cluster,
        trace_of([(1, "b", "down")], 3),
        catalog=catalog,
        replanner=fails,
        options=SimOptions(baselines=False, detection_s=0),
    ).strategy("plan")
    assert p.replans == 0 and "failed" in p.note


def test_long_run_matches_the_exact_expected_accuracy():
    fam = make_family(3, seed=1)
    # no ingress: the evaluator of this branch does not count the ingress's own failures yet
    cluster = replace(make_cluster(6, seed=2, memory=(4, 16)), ingress=None)
    placement = {
        "u1": ("s0",),
        "u2": ("s1",),
        "u3": ("s2",),
        "u1+u2": ("s3",),
        "u1+u3": ("s3", "s4"),
        "u2+u3": ("s5",),
        "u1+u2+u3": ("s4", "s5"),
    }
    plan = Plan(fam.id, placement, "expected", 0, 0, {})
    trace = generate_trace(cluster, 20_000, seed=3)
    rep = simulate(
        plan,
        fam,
        cluster,
        trace,
        options=SimOptions(policy=Policy.named("failover-only"), detection_s=0, baselines=False),
    )
    from melplan.core.evaluate import evaluate_placement

    ev = evaluate_placement(fam, placement, cluster)
    assert rep.strategy("plan").accuracy == pytest.approx(ev.expected_accuracy, abs=0.003)
    assert rep.strategy("plan").availability == pytest.approx(ev.availability, abs=0.002)
    assert rep.expected_accuracy == ev.expected_accuracy


# -- traces -------------------------------------------------------------------------------------


def test_parse_trace_sorts_and_validates(tmp_path):
    text = "# outages\ntime_s,server,state\n7200,b,UP\n3600, b ,down\n\n"
    t = parse_trace(text, servers=["a", "b"])
    assert [(e.time_s, e.server, e.state) for e in t.events] == [(3600.0, "b", "down"), (7200.0, "b", "up")]
    assert t.horizon_s == 7200.0 and t.down_time_s() == {"b": 3600.0}
    cut = parse_trace(text, servers=["a", "b"], horizon_s=5000)
    assert len(cut.events) == 1 and cut.dropped_after_horizon == 1
    bad = {
        "": "empty",
        "time,server,state\n1,a,down\n": "header",
        "time_s,server,state\nsoon,a,down\n": "line 2",
        "time_s,server,state\n-5,a,down\n": "time_s",
        "time_s,server,state\n1,zz,down\n": "unknown server",
        "time_s,server,state\n1,a,broken\n": "state",
        "time_s,server,state\n1,a\n": "3 columns",
        "time_s,server,state\n0,a,down\n": "--hours",
        "time_s,server,state\nnan,a,down\n": "finite",
    }
    for body, needle in bad.items():
        with pytest.raises(TraceError) as e:
            parse_trace(body, servers=["a", "b"], source="t.csv")
        assert needle in str(e.value) and "t.csv" in str(e.value) and "Fix:" in str(e.value), body
    with pytest.raises(TraceError):
        load_trace(tmp_path / "missing.csv")
    p = write_trace(t, tmp_path / "out" / "t.csv")
    again = load_trace(p, servers=["a", "b"])
    assert again.events == t.events


def test_generated_traces_are_seeded_stable_per_server_and_match_the_failure_probability(tmp_path):
    cluster = make_cluster(4, seed=5)
    a = generate_trace(cluster, 500, seed=1)
    assert a == generate_trace(cluster, 500, seed=1)
    assert a.events != generate_trace(cluster, 500, seed=2).events
    more = cluster.with_servers([Server("extra", 8.0, 5.0, 0.2)])
    b = generate_trace(more, 500, seed=1)
    assert [e for e in b.events if e.server != "extra"] == list(a.events)
    assert all(0 <= e.time_s <= a.horizon_s for e in a.events)
    assert load_trace(write_trace(a, tmp_path / "g.csv"), servers=cluster.names).events == a.events
    long = generate_trace(cluster, 40_000, seed=7)
    down = long.down_time_s()
    for s in cluster.servers:
        assert down.get(s.name, 0.0) / long.horizon_s == pytest.approx(s.failure_prob, abs=0.01)
    mt = Cluster((Server("m", 8.0, 5.0, 0.0, mtbf_h=10.0, mttr_h=2.0),), Workload(1.0))
    assert server_rates(mt)["m"] == (10.0, 2.0)
    assert server_rates(Cluster((Server("p", 8.0, 5.0, 0.2),), Workload(1.0)))["p"] == pytest.approx((4.0, 1.0))
    assert generate_trace(Cluster((Server("z", 8.0, 5.0, 0.0),), Workload(1.0)), 100, seed=0).events == ()
    with pytest.raises(TraceError):
        generate_trace(cluster, 0, seed=0)


def test_observed_events_are_delayed_and_debounced():
    ev = [
        TraceEvent(0, "a", "down"),
        TraceEvent(5, "a", "up"),
        TraceEvent(100, "a", "down"),
        TraceEvent(100, "a", "down"),
        TraceEvent(200, "a", "up"),
        TraceEvent(50, "b", "up"),
    ]
    ev.sort(key=lambda e: e.time_s)
    got = [(e.time_s, e.server, e.state) for e in observed_events(ev, 10)]
    assert got == [(110, "a", "down"), (210, "a", "up")]
    assert [(e.time_s, e.state) for e in observed_events(ev, 0)] == [(0, "down"), (5, "up"), (100, "down"), (200, "up")]


# -- baselines, plot ----------------------------------------------------------------------------


def test_baselines_are_the_best_trained_single_models():
    fam, cluster, plan, catalog, ref = hand_setup()
    m = choose_baselines(catalog, fam, cluster)
    assert (m.primary.id, m.backup.id, m.cloud.id) == ("full", "small", "full")
    assert m.primary_servers[0] == "d" and m.backup_server == "e"
    # an under-trained reference: the better (smaller) single model is the primary, the reference is
    # used nowhere (it is larger than the primary, so not a backup), and the backup is a hot replica
    weak = Catalog((fam, replace(ref, accuracy={"u1": 0.70}), catalog.get("small")))
    m = choose_baselines(weak, fam, cluster)
    assert (m.primary.id, m.backup.id, m.cloud.id) == ("small", "small", "small") and "hot replica" in m.how
    rep = simulate(plan, fam, cluster, trace_of([(1, "d", "down"), (2, "d", "up")], 4), catalog=weak)
    assert rep.floor == pytest.approx(0.9 * 0.85) and "small" in rep.floor_source
    assert "hot replica" in rep.strategy("backup").label
    # without single models: the family's reference block; without that either: not deployable
    m = choose_baselines(Catalog((fam,)), fam, cluster)
    assert m.primary is not None and m.primary.accuracy_all_up == fam.reference["accuracy"]
    assert m.primary.upstreams[0].weight_bytes == 4 * fam.reference["params"]
    no_ref = replace(fam, reference=None)
    assert choose_baselines(Catalog((no_ref,)), no_ref, cluster).primary is None
    rep = simulate(
        plan,
        no_ref,
        cluster,
        trace_of([(1, "a", "down")], 2),
        catalog=Catalog((no_ref,)),
        options=SimOptions(policy=Policy.named("failover-only")),
    )
    assert [s.deployable for s in rep.strategies] == [True, False, False, False]
    assert "no single model" in rep.strategy("cold-restart").note


def test_baselines_that_fit_nowhere_are_reported_not_deployable():
    fam, cluster, plan, catalog, ref = hand_setup()
    huge = replace(ref, upstreams=(replace(ref.upstreams[0], weight_bytes=10**12),))
    ok, why = fitting_servers(huge, cluster)
    assert ok == [] and "MiB" in why["d"]
    # the full model fits nowhere: the small one runs at the edge, the cloud runs the full one
    m = choose_baselines(Catalog((fam, huge, catalog.get("small"))), fam, cluster)
    assert (m.primary.id, m.cloud.id) == ("small", "full")
    cat = Catalog((fam, huge))
    rep = simulate(
        plan,
        fam,
        cluster,
        trace_of([(1, "a", "down")], 2),
        catalog=cat,
        options=SimOptions(policy=Policy.named("failover-only")),
    )
    assert [s.deployable for s in rep.strategies] == [True, False, False, False]
    assert "no server can run full" in rep.strategy("cloud").note
    assert rep.to_dict()["strategies"][1] == {
        "key": "cold-restart",
        "label": rep.strategies[1].label,
        "deployable": False,
        "note": rep.strategies[1].note,
    }


def test_unknown_trace_server_and_bad_plan_are_input_errors():
    fam, cluster, plan, catalog, _ = hand_setup()
    with pytest.raises(TraceError):
        simulate(plan, fam, cluster, trace_of([(1, "zz", "down")], 2))
    bad = replace(plan, placement={"u1": ("a",), "u2": ("nowhere",)})
    with pytest.raises(PlanFileError):
        simulate(bad, fam, cluster, trace_of([(1, "a", "down")], 2))
    with pytest.raises(InputError):
        SimOptions(floor=1.5)


def test_binned_series_and_plot(tmp_path):
    # no answer (None) is kept apart: it lowers neither the mean nor the minimum of a bin, it is a gap
    starts, mean, low, gap = binned_series([(0.0, 0.9), (30.0, None), (40.0, 0.5), (80, None)], 100.0, 4)
    assert starts == [0, 25, 50, 75]
    assert mean == pytest.approx([0.9, (5 * 0.9 + 10 * 0.5) / 15, 0.5, 0.5])
    assert low == [0.9, 0.5, 0.5, 0.5] and gap == [0, 10, 0, 20]
    assert binned_series([(0.0, None)], 10.0, 2) == ([0, 5], [None, None], [None, None], [5, 5])
    fam, cluster, plan, catalog, _ = hand_setup()
    rep = simulate(
        plan,
        fam,
        cluster,
        trace_of([(1, "b", "down"), (3, "b", "up"), (2, "d", "down")], 10),
        catalog=catalog,
        options=SimOptions(policy=Policy.named("failover-only")),
    )
    out = plot_report(rep, str(tmp_path / "plots" / "sim.png"))
    data = (tmp_path / "plots" / "sim.png").read_bytes()
    assert out.endswith("sim.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["sim.png"]  # no temp file left
    d = rep.to_dict(series=True)
    assert d["strategies"][0]["series"][0] == [0.0, 0.9] and math.isclose(d["hours"], 10)
    assert trace_to_csv(trace_of([(1, "b", "down")], 2)).splitlines()[1] == "time_s,server,state"


def test_replans_keep_the_plan_family_unless_any_family():
    fam, cluster, plan, catalog, _ = hand_setup()
    seen = []

    def spy(req):
        seen.append(tuple(req.catalog.ids()))
        return greedy_replanner(req)

    trace = trace_of([(1, "b", "down")], 2)
    for any_family, want in ((False, (fam.id,)), (True, tuple(catalog.ids()))):
        seen.clear()
        rep = simulate(
            plan,
            fam,
            cluster,
            trace,
            catalog=catalog,
            replanner=spy,
            options=SimOptions(detection_s=0, baselines=False, any_family=any_family),
        )
        assert seen and all(ids == want for ids in seen)
        assert rep.to_dict()["assumptions"]["any_family"] is any_family


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(0, 5000),
    st.lists(st.tuples(st.floats(0, 100), st.integers(0, 5), st.booleans()), max_size=30),
)
def test_failover_only_equals_integrating_the_oracle_over_the_trace(n, seed, rows):
    from melplan.core.evaluate import RouteTable

    fam = make_family(n, seed=seed)
    cluster = make_cluster(n + 3, seed=seed)
    rng = random.Random(seed)
    placement = {u: (h,) for u, h in zip(fam.upstream_names, rng.sample(cluster.names, n))}
    for c in fam.combiners:
        placement[c.name] = tuple(rng.sample(cluster.names, rng.randint(1, 2)))
    plan = Plan(fam.id, placement, "expected", 0.0, 0.0, {})
    events = sorted(
        ((round(t, 3), cluster.names[i % len(cluster.names)], "down" if d else "up") for t, i, d in rows),
        key=lambda e: e[0],
    )
    trace = Trace(tuple(TraceEvent(*e) for e in events), 100.0, "random")
    rep = simulate(
        plan,
        fam,
        cluster,
        trace,
        options=SimOptions(policy=Policy.named("failover-only"), detection_s=0, baselines=False),
    )
    table = RouteTable(fam, placement, cluster)
    up, t, total, answered = set(cluster.names), 0.0, 0.0, 0.0
    for time_s, server, state in events + [(100.0, None, None)]:
        r = table.route(up if cluster.ingress in up else ())  # nothing answers while the ingress is down
        total += r.accuracy * (time_s - t)
        answered += (time_s - t) if r.answer is not None else 0.0
        t = time_s
        if server is not None:
            (up.discard if state == "down" else up.add)(server)
    p = rep.strategy("plan")
    assert p.accuracy == pytest.approx(total / 100.0, abs=1e-9)
    assert p.availability == pytest.approx(answered / 100.0, abs=1e-9)
