"""Reachability and failure domains: the evaluator (melplan.core.evaluate) against the independent
oracle (tests/oracle.py), the ILP against brute force on sparse sites with relays and domains, and
the cluster file's ``failure_domains:``."""

from __future__ import annotations

import random

import oracle
import pytest
from factories import make_cluster, make_family, make_site

from melplan.core.cluster import load_cluster, parse_cluster
from melplan.core.errors import ClusterError
from melplan.core.evaluate import RouteTable, evaluate_placement, relays, scores
from melplan.planner.planner import PlanOptions, objective_value, plan


def _random_placement(family, cluster, rng):
    hosts = rng.sample(cluster.names, family.n)
    pl = {u: (h,) for u, h in zip(family.upstream_names, hosts)}
    for c in family.combiners:
        k = rng.randint(0, 2)
        if k:
            pl[c.name] = tuple(rng.sample(cluster.names, k))
    return pl


@pytest.mark.parametrize("seed", range(12))
def test_evaluator_equals_the_oracle_on_sparse_sites_with_domains(seed):
    rng = random.Random(seed)
    fam = make_family(1 + seed % 3, seed=seed, shared=seed % 4 == 3)
    cl = make_site(5 + seed % 3, seed=seed, domains=seed % 2 == 0, ingress=seed % 5 != 4)
    dist, graph = oracle.up_distribution(cl), oracle.link_graph(cl)
    for _ in range(4):
        pl = _random_placement(fam, cl, rng)
        ev = evaluate_placement(fam, pl, cl)
        for k in (1, 2):
            e, w = oracle.scores(fam, pl, cl, k, dist, graph)
            assert ev.expected_accuracy == pytest.approx(e, abs=1e-12)
            assert objective_value(fam, pl, cl, None, k).worst == pytest.approx(w, abs=1e-12)
        table = RouteTable(fam, pl, cl)
        for mask in range(1 << len(table.relevant)):
            up = frozenset(s for i, s in enumerate(table.relevant) if mask >> i & 1)
            full = up | (frozenset(cl.names) - set(table.relevant))
            route = table.route(up)
            assert route.accuracy == oracle.best_accuracy(fam, pl, cl, full, graph)
            assert set(route.servers) <= up


def test_relays_are_the_servers_on_paths_between_terminals():
    cl = load_cluster("examples/edge-site-12.yaml")
    assert relays(cl, ["north-gw", "north-gpu-1"]) == ()
    # east-gpu-1 hangs off east-gw; north-gw reaches east-gw directly or through south-gw
    assert relays(cl, ["north-gw", "east-gpu-1"]) == ("east-gw", "south-gw")
    assert relays(make_cluster(5, seed=1), ["s0", "s3"]) == ()  # complete graph: direct links


def test_ingress_down_means_no_answer_and_its_share_is_reported():
    fam = make_family(2, seed=3)
    cl = make_cluster(4, seed=3)
    pl = {"u1": ("s1",), "u2": ("s2",), "u1+u2": ("s3",)}
    table = RouteTable(fam, pl, cl)
    assert table.route_down(["s0"]).down  # s0 is the ingress, used by nobody
    sc = scores(table)
    p0 = cl.server("s0").failure_prob
    assert sc.ingress_down_probability == pytest.approx(p0)
    assert sc.expected == pytest.approx((1 - p0) * (sc.expected + sc.ingress_share) / 1.0, rel=1e-9)


def test_a_zone_outage_takes_every_server_of_the_zone_down():
    fam = make_family(2, seed=4)
    cl = make_site(6, seed=4)
    pl = {"u1": ("s2",), "u2": ("s4",), "u1+u2": ("s0",)}  # all in zone a
    ev = evaluate_placement(fam, pl, cl)
    assert ev.domains == ("zone=a",)
    assert ev.worst_domain == {"domain": "zone=a", "accuracy": 0.0}


# -- the planner on sparse sites with domains (brute force over every placement) ---------------------

SITES = [
    (dict(n=1, seed=21), dict(m=5, seed=21)),
    (dict(n=2, seed=22), dict(m=5, seed=22)),
    (dict(n=2, seed=23), dict(m=6, seed=23, slo=40.0)),
    (dict(n=2, seed=24), dict(m=5, seed=24, ingress=False)),
    (dict(n=3, seed=25, shared=True), dict(m=5, seed=25)),
    (dict(n=2, seed=26), dict(m=6, seed=26, memory=(0.3, 1.5))),
]


@pytest.mark.parametrize("case", SITES, ids=lambda c: f"n{c[0]['n']}-m{c[1]['m']}-s{c[1]['seed']}")
def test_planner_is_optimal_on_sites_with_relays_and_domains(case):
    fkw, ckw = dict(case[0]), case[1]
    fam, cl = make_family(fkw.pop("n"), **fkw), make_site(**ckw)
    want, _ = oracle.brute_force(fam, cl)
    if want == -float("inf"):
        return
    got = plan([fam], cl, PlanOptions(gap=0.0))
    # exact numbers, optimal within the reported gap (0 when proved)
    e, _ = oracle.scores(fam, got.plan.placement, cl)
    assert got.plan.expected_accuracy == pytest.approx(e, abs=1e-12)
    assert got.plan.expected_accuracy >= want * (1 - got.gap) - 1e-9
    if cl.ingress is not None:  # reachability exactly modeled: proved optimal
        assert got.proven_optimal and got.plan.expected_accuracy == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("case", SITES[:3] + SITES[4:5], ids=lambda c: f"n{c[0]['n']}-s{c[1]['seed']}")
@pytest.mark.parametrize("failures", [1, 2])
def test_worst_case_on_sites_with_relays(case, failures):
    fkw, ckw = dict(case[0]), case[1]
    fam, cl = make_family(fkw.pop("n"), **fkw), make_site(**ckw)
    (w_want, e_want), _ = oracle.brute_force(fam, cl, objective="worst-case", failures=failures)
    got = plan([fam], cl, PlanOptions(objective="worst-case", max_failures=failures, gap=0.0))
    _, w = oracle.scores(fam, got.plan.placement, cl, failures)
    assert w == pytest.approx(w_want, abs=1e-9)
    assert got.plan.expected_accuracy == pytest.approx(e_want, abs=1e-9)  # ties broken by expected


# -- the cluster file --------------------------------------------------------------------------------


def _doc(**extra):
    d = {
        "servers": [
            {"name": "a", "memory_mb": 64, "compute_gmacs": 10, "failure_prob": 0.01, "labels": {"zone": "hall"}},
            {"name": "b", "memory_mb": 64, "compute_gmacs": 10, "mtbf_h": 700, "mttr_h": 7, "labels": {"zone": "yard"}},
        ],
        "workload": {"rate_rps": 10},
    }
    d.update(extra)
    return d


def test_failure_domains_parse_and_round_trip():
    cl = parse_cluster(
        _doc(failure_domains={"zone": {"hall": {"failure_prob": 0.002}, "yard": {"mtbf_h": 999, "mttr_h": 1}}})
    )
    assert [d.name for d in cl.failure_domains] == ["zone=hall", "zone=yard"]
    assert cl.failure_domains[1].failure_prob == pytest.approx(1 / 1000)
    assert cl.up_probability("a") == pytest.approx(0.99 * 0.998)
    assert parse_cluster(cl.to_dict()) == cl


@pytest.mark.parametrize(
    "fd, field, words",
    [
        ({"rack": {"r1": {"failure_prob": 0.1}}}, "failure_domains.rack", "no server has a label 'rack'"),
        ({"zone": {"cellar": {"failure_prob": 0.1}}}, "failure_domains.zone.cellar", "zone=cellar"),
        ({"zone": {"hall": {"failure_prob": 1.5}}}, "failure_domains.zone.hall.failure_prob", "must be"),
        ({"zone": {"hall": {"p": 0.1}}}, "failure_domains.zone.hall.p", "unknown key"),
        ({"zone": {"hall": {}}}, "failure_domains.zone.hall", "exactly one form"),
        ({"zone": []}, "failure_domains.zone", "non-empty mapping"),
        ([1], "failure_domains", "expected a mapping"),
    ],
)
def test_bad_failure_domains_name_the_field_and_fix(fd, field, words):
    with pytest.raises(ClusterError) as err:
        parse_cluster(_doc(failure_domains=fd), source="c.yaml")
    assert err.value.field == field and words in str(err.value) and err.value.fix and err.value.file == "c.yaml"


# -- planner contracts of issue 12 --------------------------------------------------------------------


def test_a_tiny_time_limit_still_returns_a_plan_with_a_truthful_status():
    from melplan.core.clustergen import generate_cluster

    cl = generate_cluster(300, seed=5)
    cat = [make_family(1, seed=1, fid="single"), make_family(3, seed=4, shared=True, fid="mel-3")]
    res = plan(cat, cl, PlanOptions(max_failures=2, time_limit_s=1e-6))
    assert res.plan.family == "single"  # the quick plan of the single model
    assert res.plan.solver["status"] == "time_limit" and not res.proven_optimal
    assert res.plan.solver["gap"] is None  # a family was never bounded: the gap is unknown, not 0
    assert any("NOT proven optimal" in n for n in res.notes)


def test_worst_case_ties_are_solved_not_pruned():
    """Two families with the same worst case: the one with the better expected accuracy wins."""
    import dataclasses

    base = make_family(2, seed=7, fid="a")
    better = dataclasses.replace(make_family(2, seed=7, fid="b"), accuracy=dict(base.accuracy))
    # same worst case (best single survives one failure), b is more accurate with both up
    better = dataclasses.replace(better, accuracy=dict(base.accuracy, **{"u1+u2": base.accuracy["u1+u2"] + 0.01}))
    cl = make_cluster(5, seed=7, ingress=False)
    res = plan([base, better], cl, PlanOptions(objective="worst-case", max_failures=1, gap=0.0))
    rows = {o.family: o for o in res.considered}
    assert rows["a"].status != "pruned" and rows["b"].status != "pruned"
    assert rows["a"].value == pytest.approx(rows["b"].value)
    assert res.plan.family == "b"


def test_progress_goes_to_the_callback_and_a_proven_plan_says_so():
    lines = []
    fam, cl = make_family(2, seed=3), make_site(6, seed=3)
    res = plan([fam], cl, PlanOptions(gap=0.0, progress=lines.append))
    assert res.proven_optimal and res.plan.solver["status"] == "optimal" and res.plan.solver["gap"] <= 1e-7
    assert not any("NOT proven" in n for n in res.notes)
    assert lines == []  # a run this short prints no progress


def test_progress_goes_to_stderr_and_json_stays_clean(monkeypatch, tmp_path):
    import json

    from click.testing import CliRunner

    import melplan.planner.planner as driver
    from melplan.cli import main
    from melplan.core.cluster import dump_cluster_yaml

    monkeypatch.setattr(driver, "PROGRESS_AFTER_S", -1.0)  # report every family, however short the run
    path = tmp_path / "site.yaml"
    path.write_text(dump_cluster_yaml(make_site(6, seed=3)))
    for quiet in (False, True):
        args = ["plan", "--servers", str(path), "--json"] + (["--quiet"] if quiet else [])
        res = CliRunner().invoke(main, args, catch_exceptions=False)
        assert res.exit_code == 0
        doc = json.loads(res.stdout)  # exactly one JSON document on stdout
        assert doc["network"]["ingress"] == "s0"
        lines = [ln for ln in res.stderr.splitlines() if "families searched" in ln]
        assert (lines == []) == quiet
        if not quiet:
            assert "best" in lines[-1] and "bound" in lines[-1]
