"""Re-planning against independent oracles: random failures, whole-site, ingress and domain outages,
readiness, the SLO and the ingress after re-plans, for both re-planners (repair here; the ILP in the
slow tier and in a few explicit cases)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from factories import make_cluster, make_family
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melplan.core.catalog import Catalog, subset_key
from melplan.core.evaluate import path_latency_ms
from melplan.core.plan import Plan
from melplan.runtime.reconcile import Policy
from melplan.runtime.repair import repair_replanner
from melplan.runtime.selector import RuntimeSelector, SelectorError, planner_replanner


def site(n: int, m: int, seed: int, *, slo: float | None = 60.0):
    """A family, an m-server cluster with zone labels (z0, z1) and a valid starting plan from the ILP."""
    from melplan.planner.planner import PlanOptions
    from melplan.planner.planner import plan as make_plan

    family = make_family(n, seed=seed)
    base = make_cluster(m, seed=seed + 1, memory=(4.0, 16.0), slo=slo)
    servers = tuple(replace(s, labels={"zone": f"z{i % 2}"}) for i, s in enumerate(base.servers))
    cluster = replace(base, servers=servers)
    first = make_plan(Catalog((family,)), cluster, PlanOptions(time_limit_s=20)).plan
    return family, cluster, first


def oracle_best(family, placement, up: set[str], ingress: str | None, unready=frozenset()) -> float:
    """DESIGN §1 by brute force: best accuracy of a subset whose upstreams and some combiner replica
    run on up servers and are ready; 0 while the ingress is down."""
    if ingress is not None and ingress not in up:
        return 0.0
    best = 0.0
    names = family.upstream_names
    for r in range(1, len(names) + 1):
        for s in itertools.combinations(names, r):
            srv = {u: placement[u][0] for u in s}
            if not all(v in up and (u, v) not in unready for u, v in srv.items()):
                continue
            if r >= 2:
                key = subset_key(s)
                reps = [(c.name, x) for c in family.combiners_serving(key) for x in placement.get(c.name, ())]
                if not any(x in up and (c, x) not in unready for c, x in reps):
                    continue
            best = max(best, family.accuracy[subset_key(s)])
    return best


def paths_within_slo(family, placement, cluster) -> list[str]:
    """Every answering path of the placement, latency measured from the real ingress: the ones over
    the SLO (an independent recomputation with path_latency_ms on the whole cluster)."""
    slo = cluster.workload.latency_slo_ms
    bad = []
    ups = {u: placement[u][0] for u in family.upstream_names}
    for s in family.subsets():
        key = subset_key(s)
        if family.accuracy[key] <= 0:
            continue
        if len(s) == 1:
            lat = path_latency_ms(family, cluster, key, ups, None, None)
            if lat > slo + 1e-9:
                bad.append(f"{key}: {lat:.1f} ms")
        for c in family.combiners_serving(key) if len(s) > 1 else ():
            for x in placement.get(c.name, ()):
                lat = path_latency_ms(family, cluster, key, ups, c.name, x)
                if lat > slo + 1e-9:
                    bad.append(f"{key} via {c.name}@{x}: {lat:.1f} ms")
    return bad


# an event: (kind, index); kinds: server down/up, zone down/up, whole site down, everything up,
# ingress down/up, a component reports ready, time passes (tick)
EVENT = st.tuples(
    st.sampled_from(["down", "up", "zdown", "zup", "site", "allup", "idown", "iup", "ready", "tick"]),
    st.integers(0, 7),
)


def replay(family, cluster, first, events, replanner):
    sel = RuntimeSelector(
        first,
        family,
        cluster,
        policy=Policy.named("eager", backoff_s=1.0, max_backoff_s=4.0, backoff_reset_s=10.0),
        replanner=replanner,
    )
    names = cluster.names
    ingress = cluster.ingress
    self_down: set[str] = set()
    zone_down: set[str] = set()
    failures = []
    sel.subscribe(on_replan_failed=failures.append)
    t = 0.0

    def truly_down() -> set[str]:
        return self_down | {s.name for s in cluster.servers if s.labels.get("zone") in zone_down}

    for kind, i in events:
        t += 5.0
        s = names[i % len(names)]
        z = f"z{i % 2}"
        if kind == "down":
            self_down.add(s)
            sel.mark_down(s, now=t)
        elif kind == "up":
            self_down.discard(s)
            sel.mark_up(s, now=t)
        elif kind == "zdown":
            zone_down.add(z)
            sel.mark_domain_down("zone", z, now=t)
        elif kind == "zup":
            zone_down.discard(z)
            sel.mark_domain_up("zone", z, now=t)
        elif kind == "site":
            for x in names:
                self_down.add(x)
                sel.mark_down(x, now=t)
        elif kind == "allup":
            for x in names:
                self_down.discard(x)
                sel.mark_up(x, now=t)
            for zz in sorted(zone_down):
                sel.mark_domain_up("zone", zz, now=t)
            zone_down.clear()
        elif kind == "idown":
            self_down.add(ingress)
            sel.mark_down(ingress, now=t)
        elif kind == "iup":
            self_down.discard(ingress)
            sel.mark_up(ingress, now=t)
        elif kind == "ready" and sel.pending:
            c, x = sorted(sel.pending)[i % len(sel.pending)]
            sel.mark_ready(c, x, now=t)
        down_before = truly_down()
        serving = sel.serving_placement or {}
        running = {(c, x) for c, xs in serving.items() for x in xs}
        result = sel.tick(now=t)  # never raises
        if result is not None:
            placed = {x for v in result.new_plan.placement.values() for x in v}
            assert not placed & down_before, "a re-plan placed a component on a down server"
            assert not paths_within_slo(sel.family, result.new_plan.placement, cluster), "a re-plan broke the SLO"
            starts = {(a.component, a.server) for a in result.actions if a.verb == "start"}
            # a start is pending until ready, unless the placement still serving runs it already
            assert starts <= set(result.pending) | running, "a started component routes before it is ready"
        down = truly_down()
        assert sel.down == frozenset(down)
        route = sel.route()
        up = set(names) - down
        assert set(route.depends_on) <= up, "routed through a down server or a down ingress"
        assert not set(route.components) & sel.pending, "routed through a component that is not ready"
        # at least as good as the current placement restricted to what is ready, never better than
        # the best of it with everything ready (or of the old placement still serving)
        floor = oracle_best(sel.family, sel.plan.placement, up, ingress, sel.pending)
        assert route.accuracy >= floor - 1e-12
        if not sel.pending:
            assert route.accuracy == pytest.approx(oracle_best(sel.family, sel.plan.placement, up, ingress))
        if route.answer is not None:
            assert ingress in up
    assert all(rec.kind == "replan-failed" and rec.failure for rec in failures)
    return sel, t


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 3), st.integers(0, 3), st.integers(0, 500), st.lists(EVENT, min_size=1, max_size=25))
def test_repair_replans_hold_the_oracle_through_any_outages(n, extra, seed, events):
    family, cluster, first = site(n, n + 1 + extra, seed)
    sel, t = replay(family, cluster, first, events, repair_replanner())
    # everything comes back: the repair re-planner returns to the best (original) placement
    for x in cluster.names:
        sel.mark_up(x, now=t + 1)
    for z in ("z0", "z1"):
        sel.mark_domain_up("zone", z, now=t + 1)
    for k in range(8):
        sel.tick(now=t + 2 + 100 * k)
        for c, x in sorted(sel.pending):
            sel.mark_ready(c, x, now=t + 3 + 100 * k)
    assert sel.route().accuracy == pytest.approx(oracle_best(family, first.placement, set(cluster.names), "s0"))
    assert sel.route().accuracy == pytest.approx(sel.lookup.accuracy_all_up)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 3), st.integers(0, 2), st.integers(0, 500), st.lists(EVENT, min_size=1, max_size=15))
def test_ilp_replans_hold_the_oracle_through_any_outages(n, extra, seed, events):
    family, cluster, first = site(n, n + 1 + extra, seed)
    replay(family, cluster, first, events, planner_replanner(time_limit_s=5.0))


@pytest.mark.parametrize("which", ["planner", "repair"])
def test_whole_site_loss_and_an_ingress_outage_are_recorded_never_raised(which):
    family, cluster, first = site(3, 5, 7)
    replanner = planner_replanner(time_limit_s=5.0) if which == "planner" else repair_replanner()
    events = [("site", 0), ("tick", 0), ("tick", 0), ("allup", 0), ("tick", 0), ("idown", 0)] + [("tick", 0)] * 4
    events += [("iup", 0)] + [("tick", 0)] * 6
    sel, _ = replay(family, cluster, first, events, replanner)
    failed = [r for r in sel.history if r.kind == "replan-failed"]
    assert failed and any("no server is up" in r.failure for r in failed)
    assert all(r.to_dict()["failure"] == r.failure for r in failed)
    applied = [r.replan for r in sel.history if r.kind == "replan"]
    for res in applied:  # whether made while the ingress was down or after: the SLO of the real site
        assert not paths_within_slo(family, res.new_plan.placement, cluster)


def test_a_replan_while_the_ingress_is_down_keeps_it_as_a_relay_and_the_slo():
    family, cluster, first = site(2, 5, 11)
    ingress = cluster.ingress
    seen = []

    def spy(req):
        seen.append(req)
        return repair_replanner()(req)

    sel = RuntimeSelector(first, family, cluster, policy="eager", replanner=spy)
    victim = next(s for s in sel.lookup.used if s != ingress)
    sel.mark_down(ingress, now=0.0)
    sel.mark_down(victim, now=0.0)
    assert sel.route().down  # nothing answers while requests cannot enter
    sel.tick(now=1.0)
    req = seen[-1]
    assert req.cluster.ingress == ingress and req.hosts_nothing == (ingress,)
    assert ingress not in req.hosts and victim not in req.cluster.names


def test_readiness_old_placement_serves_until_the_new_one_is_ready():
    family = make_family(2, seed=4)
    cluster = make_cluster(4, seed=3, memory=(8.0, 16.0))
    plan = Plan(family.id, {"u1": ("s1",), "u2": ("s2",), "u1+u2": ("s3",)}, "expected", 0, 0, {})
    seen = []
    sel = RuntimeSelector(
        plan, family, cluster, policy="eager", replanner=repair_replanner(), on_route_change=seen.append
    )
    sel.mark_down("s3", now=0.0)  # the combiner is lost: the best single upstream answers
    single = sel.route()
    assert single.answer in ("u1", "u2")
    res = sel.tick(now=1.0)
    assert res is not None and res.pending and set(res.pending) == sel.pending
    assert sel.route() == single  # not ready: the old placement still serves
    assert sel.status(now=1.0).pending == res.pending
    for c, x in res.pending:
        route = sel.mark_ready(c, x, now=2.0)
    assert route.answer == "u1+u2" and not sel.pending and seen[-1].kind == "ready"
    with pytest.raises(SelectorError):
        sel.mark_ready("u1+u2", "s3")  # not where the placement runs it
    # without readiness the new route is used at once (the old behaviour, opt-in)
    sel2 = RuntimeSelector(plan, family, cluster, policy="eager", replanner=repair_replanner(), await_ready=False)
    sel2.mark_down("s3", now=0.0)
    assert sel2.tick(now=1.0).pending == () and sel2.route().answer == "u1+u2"


def test_domain_outage_takes_every_member_down_and_back():
    family, cluster, first = site(2, 5, 3)
    sel = RuntimeSelector(first, family, cluster, policy="failover-only")
    z = cluster.server(sel.lookup.used[0]).labels["zone"]
    members = set(sel.domain_members("zone", z))
    sel.mark_down(next(iter(members)), now=0.0)
    sel.mark_domain_down("zone", z, now=1.0)
    assert sel.down == frozenset(members) and not set(sel.route().depends_on) & members
    assert sel.history[-1].kind == "domain-down" and sel.history[-1].server == f"zone={z}"
    sel.mark_domain_up("zone", z, now=2.0)
    assert sel.down == frozenset({next(iter(members))})  # reported down itself: still down
    with pytest.raises(SelectorError):
        sel.mark_domain_down("zone", "nowhere")


def test_replanner_crash_is_recorded_with_its_reason():
    family, cluster, first = site(2, 4, 5)

    def broken(req):
        return {}["missing"]

    sel = RuntimeSelector(first, family, cluster, policy="eager", replanner=broken)
    sel.mark_down(sel.lookup.used[-1], now=0.0)
    assert sel.tick(now=1.0) is None
    rec = sel.history[-1]
    assert rec.kind == "replan-failed" and "crashed (KeyError" in rec.failure
    assert sel.status(now=1.0).last_failure == rec.failure


@pytest.mark.parametrize("which", ["planner", "repair"])
def test_cli_whole_site_then_ingress_alone_exits_0_with_reasons(tmp_path, which):
    import json

    from click.testing import CliRunner

    from melplan.cli import main

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    plan = tmp_path / "plan.json"
    r = CliRunner().invoke(
        main,
        ["plan", "--servers", str(root / "examples/cluster-4.yaml"), "--catalog", str(root / "catalog/fashion-mnist")]
        + ["--out", str(plan), "--quiet"],
    )
    assert r.exit_code == 0, r.output
    trace = tmp_path / "site.csv"
    rows = ["time_s,server,state"] + [f"100,{s},down" for s in ("edge-a", "edge-b", "edge-c", "edge-d")]
    rows += [f"2000,{s},up" for s in ("edge-a", "edge-b", "edge-c", "edge-d")]
    rows += ["4000,edge-a,down", "8000,edge-a,up"]  # later the ingress alone
    trace.write_text("\n".join(rows) + "\n")
    args = ["simulate", "--plan", str(plan), "--trace", str(trace), "--hours", "4", "--replanner", which]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "replan-failed: no server is up to place on" in r.output and "failed and were backed off" in r.output
    r = CliRunner().invoke(main, args + ["--json"])
    assert r.exit_code == 0, r.output
    p = json.loads(r.output)["strategies"][0]
    assert p["failed_replans"] >= 1 and any("no server is up" in f["reason"] for f in p["failure_reasons"])
    assert any(e["kind"] == "replan-failed" and e["failure"] for e in p["events"])
    r = CliRunner().invoke(
        main, ["select", "--plan", str(plan), "--down", "edge-a,edge-b,edge-c,edge-d", "--replan", which, "--json"]
    )
    assert r.exit_code == 0, r.output
    rp = json.loads(r.output)["replan"]
    assert rp["kind"] == "replan-failed" and "no server is up" in rp["failure"]
