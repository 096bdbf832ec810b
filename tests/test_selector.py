"""RuntimeSelector: fast path against the RouteTable oracle and a brute force, policies, re-plans,
threads, callbacks."""

from __future__ import annotations

import random
import threading
from dataclasses import replace

import oracle
import pytest
from factories import make_cluster, make_family
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melplan.core.catalog import Catalog
from melplan.core.cluster import Server
from melplan.core.errors import InfeasiblePlanError, MelplanError, PlanFileError
from melplan.core.evaluate import RouteTable
from melplan.core.plan import Plan
from melplan.runtime.reconcile import Event, Health, PlanView, Policy, ReplanState, decide, placement_actions
from melplan.runtime.selector import RouteLookup, RuntimeSelector, SelectorError


def random_plan(n: int, m: int, seed: int, *, shared: bool = False, max_replicas: int = 2):
    """A family with n upstreams, an m-server cluster and a random valid placement (some combiners
    may have no replica: their subsets are then never servable)."""
    rng = random.Random(seed)
    family = make_family(n, seed=seed, shared=shared)
    cluster = make_cluster(m, seed=seed + 1)
    hosts = rng.sample(cluster.names, n)
    placement = {u: (h,) for u, h in zip(family.upstream_names, hosts)}
    for c in family.combiners:
        k = rng.randint(0 if rng.random() < 0.15 else 1, max_replicas)
        if k:
            placement[c.name] = tuple(rng.sample(cluster.names, k))
    plan = Plan(family.id, placement, "expected", 0.0, 0.0, {})
    return family, cluster, plan


def brute_best(family, placement, cluster, up: set[str]) -> float:
    """The independent oracle of tests/oracle.py (reachability from the ingress included)."""
    return oracle.best_accuracy(family, placement, cluster, frozenset(up))


def assert_matches_oracle(route, oracle_route, up: set[str], best: float) -> None:
    assert route.answer == oracle_route.answer
    assert route.accuracy == oracle_route.accuracy
    assert route.servers == oracle_route.servers
    assert route.combiner_server == oracle_route.combiner_server
    assert route.latency_ms == oracle_route.latency_ms
    assert set(route.servers) <= up, "routed through a down server"
    assert route.accuracy == pytest.approx(best)
    assert route.down == (best == 0.0 and route.answer is None)


plans = st.tuples(st.integers(1, 4), st.integers(0, 4), st.integers(0, 10_000), st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans, st.lists(st.tuples(st.integers(0, 7), st.booleans()), max_size=25))
def test_route_is_servable_and_best_after_any_events(spec, events):
    n, extra, seed, shared = spec
    family, cluster, plan = random_plan(n, n + extra, seed, shared=shared and n >= 2)
    oracle = RouteTable(family, plan.placement, cluster)
    sel = RuntimeSelector(plan, family, cluster, policy="failover-only")
    up = set(cluster.names)
    for t, (i, goes_down) in enumerate(events):
        server = cluster.names[i % len(cluster.names)]
        if goes_down:
            route = sel.mark_down(server, now=float(t))
            up.discard(server)
        else:
            route = sel.mark_up(server, now=float(t))
            up.add(server)
        assert route is sel.route()
        assert_matches_oracle(route, oracle.route(up), up, brute_best(family, plan.placement, cluster, up))
        assert route.degraded == (route.accuracy < sel.lookup.accuracy_all_up - 1e-12)
    for s in cluster.names:
        sel.mark_up(s, now=1e6)
    assert sel.route() == sel.lookup.all_up == sel.route_for([])
    assert_matches_oracle(
        sel.route(),
        oracle.route(cluster.names),
        set(cluster.names),
        brute_best(family, plan.placement, cluster, set(cluster.names)),
    )
    assert len(sel.history) == len(events) + len(cluster.names)


@settings(max_examples=25, deadline=None)
@given(plans)
def test_table_equals_oracle_on_every_mask_and_memo_path(spec):
    n, extra, seed, shared = spec
    family, cluster, plan = random_plan(n, n + extra, seed, shared=shared and n >= 2)
    oracle = RouteTable(family, plan.placement, cluster)
    eager = RouteLookup(family, plan.placement, cluster)
    lazy = RouteLookup(family, plan.placement, cluster, eager_max_servers=0)
    bare = RouteLookup(family, plan.placement, None)
    assert eager.table is not None and lazy.table is None
    assert eager.used == oracle.used and eager.relevant == oracle.relevant
    for mask in range(1 << len(eager.relevant)):
        up = {s for i, s in enumerate(eager.relevant) if mask >> i & 1}
        want = oracle.route(up)
        assert want.accuracy == brute_best(
            family, plan.placement, cluster, up | (set(cluster.names) - set(eager.relevant))
        )
        for lk in (eager, lazy):
            got = lk.route_mask(mask)
            assert (got.answer, got.accuracy, got.servers, got.latency_ms) == (
                want.answer,
                want.accuracy,
                want.servers,
                want.latency_ms,
            )
        if cluster.ingress is not None and cluster.ingress not in up:
            continue  # without a cluster the selector cannot know the ingress
        got = bare.route(set(eager.used) - up)  # no cluster: same answer, replicas in placement order
        assert (got.answer, got.accuracy, got.latency_ms) == (want.answer, want.accuracy, None)
        assert set(got.servers) <= up


def test_route_fields_components_and_flags():
    family, cluster, plan = random_plan(3, 3, 7)
    placement = {
        "u1": ("s0",),
        "u2": ("s1",),
        "u3": ("s2",),
        "u1+u2": ("s3",),
        "u1+u3": ("s4",),
        "u2+u3": ("s5",),
        "u1+u2+u3": ("s4", "s5"),
    }
    cluster = make_cluster(6, seed=3)
    plan = Plan(family.id, placement, "expected", 0, 0, {})
    sel = RuntimeSelector(plan, family, cluster, policy="failover-only")
    top = sel.route()
    assert top.answer == "u1+u2+u3" or family.accuracy["u1+u2+u3"] < max(family.accuracy.values())
    r = sel.mark_down("s0", now=1)
    assert "s0" not in r.servers and all(s != "s0" for _, s in r.components)
    for comp, srv in r.components:
        assert srv in placement[comp]
    everything = [sel.mark_down(s, now=2) for s in ("s1", "s2")][-1]
    assert everything.down and everything.degraded and everything.accuracy == 0.0
    assert everything.to_dict()["down"] is True and everything.to_dict()["answer"] is None


def test_unknown_server_raises_and_outside_servers_do_not_move_the_route():
    family, cluster, plan = random_plan(2, 2, 3, max_replicas=1)
    big = make_cluster(6, seed=3)
    sel = RuntimeSelector(plan, family, big, policy="failover-only")
    before = sel.route()
    outside = next(s for s in big.names if s not in sel.lookup.used)
    assert sel.mark_down(outside, now=1) is before
    assert outside in sel.down
    with pytest.raises(SelectorError) as e:
        sel.mark_down("edge-zz", now=2)
    assert "edge-zz" in str(e.value) and "Fix:" in str(e.value)
    assert isinstance(e.value, MelplanError) and e.value.exit_code == 2
    with pytest.raises(SelectorError):
        sel.route_for(["nope"])
    bare = RuntimeSelector(plan, family)  # no cluster: only the plan's servers are known
    assert bare.policy.name == "failover-only"
    with pytest.raises(SelectorError):
        bare.mark_down(outside)


def test_plan_family_mismatch_and_policy_needing_cluster():
    family, cluster, plan = random_plan(2, 3, 1)
    other = make_family(2, seed=99)
    with pytest.raises(PlanFileError):
        RuntimeSelector(plan, other, cluster)
    with pytest.raises(SelectorError):
        RuntimeSelector(plan, family, None, policy="replan-after")
    with pytest.raises(MelplanError):
        RuntimeSelector(plan, family, cluster, policy="sometimes")
    bad = replace(plan, placement={**plan.placement, "u1": ("nowhere",)})
    with pytest.raises(PlanFileError):
        RuntimeSelector(bad, family, cluster)


def test_callbacks_fire_on_changes_in_order():
    family, cluster, plan = random_plan(3, 5, 11)
    seen = []
    sel = RuntimeSelector(plan, family, cluster, policy="failover-only", on_route_change=seen.append)
    used = sel.lookup.used
    sel.mark_down(used[0], now=1)
    sel.mark_down(used[0], now=2)  # repeated: no change, no callback
    sel.mark_up(used[0], now=3)
    changed = [r for r in sel.history if r.changed]
    assert seen == changed
    assert [r.seq for r in sel.history] == [1, 2, 3]
    assert all(r.previous is not r.route for r in seen)


def test_threads_serialise_events_like_a_sequential_replay():
    family, cluster, plan = random_plan(4, 6, 5)
    sel = RuntimeSelector(plan, family, cluster, policy="failover-only", clock=lambda: 0.0)
    changes = []
    sel.subscribe(on_route_change=changes.append)
    servers = cluster.names
    barrier = threading.Barrier(4)
    errors = []

    def worker(k: int) -> None:
        rng = random.Random(k)
        try:
            barrier.wait()
            for _ in range(400):
                s = rng.choice(servers)
                route = sel.mark_down(s) if rng.random() < 0.5 else sel.mark_up(s)
                assert route.answer is None or route.servers
                sel.route()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    history = sel.history
    assert len(history) == 1600 and [r.seq for r in history] == list(range(1, 1601))
    oracle = RouteTable(family, plan.placement, cluster)
    up = set(servers)
    prev = oracle.route(up)
    for rec in history:  # each record is what a sequential replay of the records gives
        (up.discard if rec.kind == "down" else up.add)(rec.server)
        want = oracle.route(up)
        assert (rec.route.answer, rec.route.servers) == (want.answer, want.servers)
        assert (rec.previous.answer, rec.previous.servers) == (prev.answer, prev.servers)
        prev = want
    assert sel.route() == history[-1].route
    assert changes == [r for r in history if r.changed]


# -- the pure decision ------------------------------------------------------------------------


def _view(used=("a", "b"), basis=("a", "b", "c"), known=("a", "b", "c")):
    return PlanView(frozenset(used), frozenset(basis), frozenset(known))


def test_decide_waits_for_the_grace_period_then_replans_without_down_servers():
    pol = Policy.named("replan-after", grace_s=300, hold_down_s=600)
    h = Health().observe(Event(100.0, "down", "a"))
    d = decide(h, _view(), ReplanState(), pol, 399.0)
    assert not d.replan and d.due_at == 400.0
    d = decide(h, _view(), ReplanState(), pol, 400.0)
    assert d.replan and d.lost == ("a",) and d.exclude == ("a",)
    # a flap shorter than the grace period never triggers
    h2 = h.observe(Event(250.0, "up", "a"))
    assert not decide(h2, _view(), ReplanState(), pol, 10_000.0).replan
    # a server the plan does not use may fail without a re-plan
    h3 = Health().observe(Event(0.0, "down", "c"))
    assert decide(h3, _view(), ReplanState(), pol, 10_000.0) == decide(h3, _view(), ReplanState(), pol, 10_000.0)
    assert not decide(h3, _view(), ReplanState(), pol, 10_000.0).replan


def test_decide_hold_down_resets_on_flaps_and_counts_joins():
    pol = Policy.named("replan-after", grace_s=300, hold_down_s=600)
    view = _view(basis=("a", "b"))  # c was left out of the current plan
    h = Health({"c": 0.0}).observe(Event(1000.0, "up", "c"))
    d = decide(h, view, ReplanState(), pol, 1500.0)
    assert not d.replan and d.due_at == 1600.0
    h = h.observe(Event(1550.0, "down", "c")).observe(Event(1700.0, "up", "c"))
    assert decide(h, view, ReplanState(), pol, 2200.0).due_at == 2300.0
    d = decide(h, view, ReplanState(), pol, 2300.0)
    assert d.replan and d.gained == ("c",) and d.exclude == ()
    joined = Health().observe(Event(0.0, "join", "d"))
    view_d = _view(known=("a", "b", "c", "d"))
    assert decide(joined, view_d, ReplanState(), pol, 599.0).exclude == ()
    assert not decide(joined, view_d, ReplanState(), pol, 599.0).replan
    assert decide(joined, view_d, ReplanState(), pol, 600.0).gained == ("d",)


def test_backoff_doubles_caps_and_resets():
    pol = Policy.named("eager", backoff_s=60, max_backoff_s=200, backoff_reset_s=1000)
    assert pol.grace_s == 0 and pol.hold_down_s == 0
    s = ReplanState().after(0.0, pol, ok=True)
    assert s.backoff_s == 60
    s = s.after(60.0, pol, ok=True)
    assert s.backoff_s == 120
    s = s.after(180.0, pol, ok=False)
    assert s.backoff_s == 200 and s.failures == 1 and s.count == 3
    s = s.after(5000.0, pol, ok=True)
    assert s.backoff_s == 60
    h = Health().observe(Event(5001.0, "down", "a"))
    d = decide(h, _view(), s, pol, 5001.0)
    assert not d.replan and d.due_at == 5060.0
    assert decide(h, _view(), s, pol, 5060.0).replan
    capped = Policy.named("eager", max_replans=4)
    assert not decide(h, _view(), s, capped, 9999.0).replan
    assert not decide(h, _view(), ReplanState(), Policy.named("failover-only"), 9999.0).replan


def test_policy_validation():
    with pytest.raises(MelplanError):
        Policy.named("replan-after", grace_s=-1)
    with pytest.raises(MelplanError):
        Policy.named("replan-after", nonsense=3)
    with pytest.raises(MelplanError):
        Policy.named("replan-after", backoff_s=100, max_backoff_s=10)


def test_placement_actions_start_before_stop_with_bytes():
    family = make_family(2, seed=4)
    old = {"u1": ("a",), "u2": ("b",), "u1+u2": ("b",)}
    new = {"u1": ("a",), "u2": ("d",), "u1+u2": ("c", "d")}
    acts = placement_actions(family, old, family, new)
    assert [str(a) for a in acts] == [
        "start u1+u2 on c",
        "start u1+u2 on d",
        "start u2 on d",
        "stop u1+u2 on b",
        "stop u2 on b",
    ]
    assert sum(a.bytes for a in acts) == 2 * family.combiner("u1+u2").weight_bytes + family.upstream("u2").weight_bytes
    assert placement_actions(family, old, family, old) == ()


# -- re-plans through the selector -------------------------------------------------------------


def greedy_replanner(calls):
    """Move every component off the excluded servers onto the least-loaded available server that
    runs no other upstream (deterministic, enough to exercise the selector)."""

    def replan(req):
        calls.append(req)
        fam = req.current_family
        avail = req.cluster.names
        new = {}
        hosts = {req.current.placement[u][0] for u in fam.upstream_names if req.current.placement[u][0] in avail}
        for comp, servers in req.current.placement.items():
            keep = tuple(s for s in servers if s in avail)
            if not keep:
                if comp in fam.upstream_names:
                    free = [s for s in avail if s not in hosts]
                    if not free:
                        raise InfeasiblePlanError("fewer servers than upstreams", fix="add servers")
                    keep = (free[0],)
                    hosts.add(free[0])
                else:
                    keep = (avail[0],)
            new[comp] = keep
        return replace(req.current, placement=new)

    return replan


def test_replan_after_grace_moves_components_and_records_everything():
    family, _, _ = random_plan(2, 2, 21)
    cluster = make_cluster(5, seed=8)
    plan = Plan(family.id, {"u1": ("s0",), "u2": ("s1",), "u1+u2": ("s2",)}, "expected", 0, 0, {})
    calls, replans = [], []
    sel = RuntimeSelector(
        plan,
        family,
        cluster,
        policy=Policy.named("replan-after", grace_s=300),
        replanner=greedy_replanner(calls),
        on_replan=replans.append,
        clock=lambda: 0.0,
    )
    r = sel.mark_down("s1", now=10.0)
    assert r.answer == "u1" and r.degraded
    assert sel.tick(now=200.0) is None and sel.next_due(now=200.0) == 310.0
    res = sel.tick(now=310.0)
    assert res is not None and replans == [res]
    assert "s1" not in calls[0].cluster.names and calls[0].excluded == ("s1",)
    assert calls[0].current_family is family
    assert [str(a) for a in res.actions] == ["start u2 on s2", "stop u2 on s1"]
    assert res.bytes_moved == family.upstream("u2").weight_bytes == sel.bytes_moved
    # readiness: u2 on s2 is pending until it reports ready; the old placement (u1 alone) serves meanwhile
    assert res.pending == (("u2", "s2"),) and sel.pending == {("u2", "s2")}
    assert sel.route().answer == "u1" and sel.history[-1].pending == (("u2", "s2"),)
    assert sel.status(now=311.0).pending == (("u2", "s2"),)
    assert sel.mark_ready("u2", "s2", now=340.0).answer == "u1+u2"
    assert sel.route().answer == "u1+u2" and not sel.route().degraded and sel.route().generation == 1
    assert "s1" not in sel.route().servers and sel.pending == frozenset()
    assert [r.kind for r in sel.history] == ["down", "wait", "replan", "ready"] and sel.history[-1].changed
    assert "next check at t=310" in sel.history[1].detail and not sel.history[1].changed
    assert sel.tick(now=400.0) is None  # nothing left to do
    # s1 comes back: counted as recovered only after the hold-down, then re-planned with it
    sel.mark_up("s1", now=1000.0)
    assert sel.next_due(now=1000.0) == 1600.0
    res2 = sel.tick(now=1600.0)
    assert res2 is not None and "s1" in calls[-1].cluster.names and res2.actions == ()
    assert sel.status(now=1600.0).replans == 2


def test_replan_failure_is_recorded_and_backed_off():
    family, _, _ = random_plan(2, 2, 21)
    cluster = make_cluster(2, seed=8)
    plan = Plan(family.id, {"u1": ("s0",), "u2": ("s1",), "u1+u2": ("s0",)}, "expected", 0, 0, {})
    sel = RuntimeSelector(
        plan,
        family,
        cluster,
        policy=Policy.named("replan-after", grace_s=0, backoff_s=60),
        replanner=greedy_replanner([]),
    )
    sel.mark_down("s1", now=0.0)
    assert sel.tick(now=0.0) is None
    assert sel.history[-1].kind == "replan-failed" and "fewer servers" in sel.history[-1].failure
    assert "grace" in sel.history[-1].detail and sel.history[-1].to_dict()["failure"] == sel.history[-1].failure
    assert sel.replan_failures == 1 and sel.next_due(now=1.0) == 60.0
    assert sel.tick(now=30.0) is None and sel.replans == 1
    sel.tick(now=60.0)
    assert sel.replans == 2 and sel.next_due(now=61.0) == 180.0  # doubled back-off


def test_flapping_server_never_replans_under_replan_after_and_is_bounded_under_eager():
    family, _, _ = random_plan(2, 2, 21)
    cluster = make_cluster(5, seed=8)
    plan = Plan(family.id, {"u1": ("s0",), "u2": ("s1",), "u1+u2": ("s2",)}, "expected", 0, 0, {})
    greedy = greedy_replanner([])

    def back_home(req):  # the original placement whenever its servers are available
        if set(plan.used_servers) <= set(req.cluster.names):
            return plan
        return greedy(req)

    for name, bound in (("replan-after", 0), ("eager", 7)):
        sel = RuntimeSelector(plan, family, cluster, policy=name, replanner=back_home)
        t = 0.0
        while t < 3600:
            sel.mark_down("s0", now=t)
            sel.tick(now=t + 1)
            sel.mark_up("s0", now=t + 10)
            sel.tick(now=t + 11)
            t += 20
        assert sel.replans <= bound, (name, sel.replans)
        if name == "eager":
            assert sel.replans >= 5
            times = [r.time for r in sel.history if r.kind.startswith("replan")]
            gaps = [b - a for a, b in zip(times, times[1:])]
            assert all(g2 >= g1 for g1, g2 in zip(gaps, gaps[1:]))  # backed off, never faster


def test_join_counts_after_hold_down():
    family, _, _ = random_plan(2, 2, 21)
    cluster = make_cluster(3, seed=8)
    plan = Plan(family.id, {"u1": ("s0",), "u2": ("s1",), "u1+u2": ("s2",)}, "expected", 0, 0, {})
    calls = []
    sel = RuntimeSelector(
        plan, family, cluster, policy=Policy.named("replan-after", hold_down_s=100), replanner=greedy_replanner(calls)
    )
    sel.add_server(Server("s9", 64.0, 10.0, 0.01), now=0.0)
    assert sel.history[-1].kind == "join"
    with pytest.raises(SelectorError):
        sel.add_server(Server("s9", 64.0, 10.0, 0.01), now=1.0)
    assert sel.tick(now=50.0) is None
    assert sel.tick(now=100.0) is not None and "s9" in calls[0].cluster.names
    sel.mark_down("s9", now=200.0)  # joined servers can be marked like any other


def test_default_catalog_is_the_plan_family_and_other_families_need_a_catalog():
    family, cluster, plan = random_plan(2, 3, 2)
    sel = RuntimeSelector(plan, family, cluster, catalog=Catalog((family, make_family(3, seed=1))))
    assert sel.policy.name == "replan-after"
    with pytest.raises(PlanFileError):
        RuntimeSelector(plan, family, cluster, catalog=Catalog((make_family(3, seed=1),)))


# -- replanners: local repair and the real ILP planner ------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 3), st.integers(0, 10_000))
def test_repair_moves_only_what_failed_and_picks_the_best_server_for_one_upstream(n, seed):
    from melplan.core.evaluate import capacity_violations, evaluate_placement, validate_placement
    from melplan.runtime.repair import expected_accuracy, repair_placement

    family = make_family(n, seed=seed)
    cluster = make_cluster(n + 4, seed=seed, memory=(8.0, 16.0))
    rng = random.Random(seed)
    hosts = rng.sample(cluster.names, n)
    placement = {u: (h,) for u, h in zip(family.upstream_names, hosts)}
    for c in family.combiners:
        placement[c.name] = (rng.choice(cluster.names),)
    if capacity_violations(family, placement, cluster):
        return
    lost = hosts[0]
    avail = cluster.without([lost])
    new = repair_placement(family, placement, avail)
    validate_placement(family, new, avail)
    assert not capacity_violations(family, new, avail)
    for comp, servers in placement.items():
        kept = tuple(s for s in servers if s != lost)
        if kept:
            assert new[comp][: len(kept)] == kept  # nothing that runs is moved
    acts = placement_actions(family, placement, family, new)
    displaced = {c for c, servers in placement.items() if lost in servers}
    assert {a.component for a in acts if a.verb == "start"} <= displaced
    assert all(a.server == lost for a in acts if a.verb == "stop")
    # with one displaced upstream and nothing else displaced, the greedy choice is the best server
    if displaced == {family.upstream_names[0]}:
        u = family.upstream_names[0]
        others = {placement[v][0] for v in family.upstream_names if v != u}
        best = 0.0
        for s in avail.names:
            if s in others:
                continue
            trial = {**placement, u: (s,)}
            if capacity_violations(family, trial, avail):
                continue
            best = max(best, expected_accuracy(family, trial, avail)[0])
        assert evaluate_placement(family, new, avail).expected_accuracy == pytest.approx(best, abs=1e-12)


def test_repair_replanner_through_the_selector_and_infeasible_repair():
    from melplan.runtime.repair import repair_replanner

    family, _, _ = random_plan(2, 2, 21)
    cluster = make_cluster(4, seed=8, memory=(8.0, 16.0))
    plan = Plan(family.id, {"u1": ("s0",), "u2": ("s1",), "u1+u2": ("s2",)}, "expected", 0, 0, {})
    sel = RuntimeSelector(
        plan, family, cluster, policy=Policy.named("replan-after", grace_s=0), replanner=repair_replanner()
    )
    sel.mark_down("s1", now=0.0)
    res = sel.tick(now=0.0)
    assert res is not None and res.new_plan.solver["name"] == "repair"
    assert [a.verb for a in res.actions] == ["start", "stop"] and res.actions[1].server == "s1"
    assert res.new_plan.expected_accuracy > 0 and "s1" not in res.new_plan.used_servers
    for s in ("s0", "s2", "s3"):
        sel.mark_down(s, now=1.0)
    assert sel.tick(now=1000.0) is None and sel.history[-1].kind == "replan-failed"


def test_real_planner_replan_avoids_down_servers_and_prefers_what_runs():
    pytest.importorskip("highspy")
    from melplan.planner.planner import PlanOptions
    from melplan.planner.planner import plan as make_plan

    family = make_family(2, seed=4)
    cluster = make_cluster(5, seed=6, memory=(8.0, 16.0))
    first = make_plan(Catalog((family,)), cluster, PlanOptions(time_limit_s=20)).plan
    replans = []
    sel = RuntimeSelector(
        first, family, cluster, policy=Policy.named("replan-after", grace_s=60), on_replan=replans.append
    )
    victim = sel.route().servers[0]
    sel.mark_down(victim, now=0.0)
    res = sel.tick(now=60.0)
    assert res is not None and replans == [res]
    assert victim not in res.new_plan.used_servers and victim not in sel.route().servers
    assert res.new_plan.extra["planner"]["migration_weight"] == pytest.approx(0.05)
    before = {(c, s) for c, srv in first.placement.items() for s in srv}
    after = {(c, s) for c, srv in res.new_plan.placement.items() for s in srv}
    assert {(a.component, a.server) for a in res.actions if a.verb == "start"} == after - before
    assert {(a.component, a.server) for a in res.actions if a.verb == "stop"} == before - after
    assert res.bytes_moved == sum(family.component(c).weight_bytes for c, _ in after - before)
    # a very high migration weight keeps every component that still has a live server where it is
    sel2 = RuntimeSelector(
        first, family, cluster, policy=Policy.named("replan-after", grace_s=0), migration_weight=1000.0
    )
    sel2.mark_down(victim, now=0.0)
    res2 = sel2.tick(now=0.0)
    assert res2 is not None
    kept = {(c, s) for c, s in before if s != victim}
    moved_away = {(a.component, a.server) for a in res2.actions if a.verb == "stop"} - {(c, victim) for c, _ in before}
    assert not moved_away, moved_away
    assert kept <= {(c, s) for c, srv in res2.new_plan.placement.items() for s in srv}


def test_failover_does_not_wait_for_a_running_replan():
    import time as _time

    family, _, _ = random_plan(2, 2, 21)
    cluster = make_cluster(5, seed=8)
    plan = Plan(family.id, {"u1": ("s0",), "u2": ("s1",), "u1+u2": ("s2",)}, "expected", 0, 0, {})
    inside = threading.Event()
    greedy = greedy_replanner([])

    def slow(req):
        inside.set()
        _time.sleep(0.5)
        return greedy(req)

    sel = RuntimeSelector(
        plan, family, cluster, policy=Policy.named("replan-after", grace_s=0), replanner=slow, history_limit=3
    )
    sel.mark_down("s1", now=0.0)
    th = threading.Thread(target=sel.tick, kwargs={"now": 0.0})
    th.start()
    assert inside.wait(5)
    started = _time.perf_counter()
    r = sel.mark_down("s0", now=0.1)  # during the solve
    assert _time.perf_counter() - started < 0.1 and r.down
    assert sel.tick(now=0.2) is None  # one re-plan at a time
    th.join()
    assert sel.history[-1].kind == "replan" and len(sel.history) == 3  # history_limit keeps the last 3
    assert "s0" in sel.down and sel.route() == sel.route_for(sel.down)
    with pytest.raises(SelectorError):
        RuntimeSelector(plan, family, cluster, history_limit=0)


def test_only_servers_a_plan_lost_or_never_counted_trigger_recovery_replans():
    family, _, _ = random_plan(2, 2, 21)
    cluster = make_cluster(6, seed=8)
    plan = Plan(family.id, {"u1": ("s0",), "u2": ("s1",), "u1+u2": ("s2",)}, "expected", 0, 0, {})
    calls = []
    sel = RuntimeSelector(
        plan,
        family,
        cluster,
        replanner=greedy_replanner(calls),
        policy=Policy.named("replan-after", grace_s=100, hold_down_s=100, backoff_s=1),
    )
    sel.mark_down("s5", now=0.0)  # unused, down by coincidence during the re-plan
    sel.mark_down("s1", now=0.0)  # used: lost after the grace period
    assert sel.tick(now=100.0) is not None
    assert set(calls[-1].excluded) == {"s1", "s5"}
    sel.mark_up("s5", now=200.0)
    assert sel.tick(now=400.0) is None and sel.next_due(now=400.0) is None  # nothing to gain from s5
    sel.mark_up("s1", now=500.0)
    assert sel.next_due(now=500.0) == 600.0
    assert sel.tick(now=600.0) is not None and "s1" in calls[-1].cluster.names
    assert sel.next_due(now=700.0) is None
