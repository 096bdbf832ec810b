"""The placement ILP against the brute-force oracle of tests/oracle.py.

The oracle enumerates every placement (each upstream on its own server, each combiner on any
0..R servers), keeps the valid ones, scores them over every state of every server and failure
domain with its own reachability (networkx) and returns the best.  The planner, pinned to one
family, must reach the same value on every instance, ingress, relays, sparse links and failure
domains included.
"""

from __future__ import annotations

import math
import re

import oracle
import pulp
import pytest
from factories import make_cluster, make_family

from melplan.core.catalog import subset_key
from melplan.core.evaluate import capacity_violations, evaluate_placement, path_latency_ms
from melplan.planner.ilp import ModelSpec, build_family_model, family_data, read_placement, useful_subsets
from melplan.planner.planner import PlanOptions, objective_value, plan
from melplan.planner.solve import solve

# -- the oracle: tests/oracle.py (independent of melplan.core.evaluate) -----------------------------


def scores(family, placement, cluster, failures):
    return oracle.scores(family, placement, cluster, failures)


def brute_force(family, cluster, **kw):
    return oracle.brute_force(family, cluster, **kw)


# -- instances ----------------------------------------------------------------------------------

CASES = [
    # (family kwargs, cluster kwargs, replicas)
    (dict(n=2, seed=1), dict(m=5, seed=1), 1),
    (dict(n=2, seed=2), dict(m=6, seed=2, rate=200.0), 2),
    (dict(n=2, seed=3), dict(m=6, seed=3, slo=25.0), 1),
    (dict(n=3, seed=4, shared=True), dict(m=5, seed=4), 1),
    (dict(n=3, seed=5, shared=True), dict(m=5, seed=5, memory=(0.3, 1.2)), 2),
    (dict(n=3, seed=6), dict(m=4, seed=6, memory=(0.4, 1.5)), 1),
    (dict(n=1, seed=7), dict(m=6, seed=7, slo=20.0), 1),
]


def _family(kw):
    kw = dict(kw)
    return make_family(kw.pop("n"), **kw)


def _ids(case):
    f, c, r = case
    return f"n{f['n']}{'-shared' if f.get('shared') else ''}-m{c['m']}-s{c['seed']}-R{r}"


def _solve_alone(fam, cl, **spec):
    """The ILP by itself on every server of the cluster: no reductions, no starting plan."""
    model = _model(fam, cl, **spec)
    res = solve(model.problem, solver="highs", time_limit_s=60, gap_rel=0.0, gap_abs=1e-10)
    assert res.optimal
    pl = read_placement(model)
    assert capacity_violations(fam, pl, cl) == []
    return res, pl, model


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_ilp_alone_expected_equals_brute_force_every_scenario(case):
    fkw, ckw, reps = case
    fam, cl = _family(fkw), make_cluster(**ckw)
    want, _ = brute_force(fam, cl, replicas=reps)
    res, pl, model = _solve_alone(fam, cl, combiner_replicas=reps)
    assert model.modeled_mass == pytest.approx(1.0)
    assert res.objective == pytest.approx(want, abs=1e-5)  # the model's value is the exact one ...
    assert scores(fam, pl, cl, 1)[0] == pytest.approx(want, abs=1e-9)  # ... and so is its placement's


@pytest.mark.parametrize("case", CASES[:6], ids=_ids)
@pytest.mark.parametrize("failures", [1, 2])
def test_ilp_alone_worst_case_equals_brute_force(case, failures):
    fkw, ckw, reps = case
    fam, cl = _family(fkw), make_cluster(**ckw)
    (w_want, _), _ = brute_force(fam, cl, objective="worst-case", failures=failures, replicas=reps)
    res, pl, _ = _solve_alone(fam, cl, objective="worst-case", worst_failures=failures, combiner_replicas=reps)
    assert res.objective == pytest.approx(w_want, abs=1e-5)  # (up to the solver's feasibility tolerance)
    assert scores(fam, pl, cl, failures)[1] == pytest.approx(w_want, abs=1e-9)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_expected_objective_equals_brute_force_every_scenario(case):
    fkw, ckw, reps = case
    fam, cl = _family(fkw), make_cluster(**ckw)
    want, _ = brute_force(fam, cl, replicas=reps)
    got = plan([fam], cl, PlanOptions(max_failures=None, combiner_replicas=reps, gap=0.0))
    assert got.plan.expected_accuracy == pytest.approx(want, abs=1e-9)
    assert got.chosen.status == "solved" and got.proven_optimal
    assert capacity_violations(fam, got.plan.placement, cl) == []


@pytest.mark.parametrize("case", CASES[:5], ids=_ids)
@pytest.mark.parametrize("failures", [1, 2])
def test_worst_case_objective_equals_brute_force(case, failures):
    fkw, ckw, reps = case
    fam, cl = _family(fkw), make_cluster(**ckw)
    (w_want, e_want), _ = brute_force(fam, cl, objective="worst-case", failures=failures, replicas=reps)
    got = plan([fam], cl, PlanOptions(objective="worst-case", max_failures=failures, combiner_replicas=reps, gap=0.0))
    w_got = objective_value(fam, got.plan.placement, cl, None, failures).worst
    assert w_got == pytest.approx(w_want, abs=1e-9)
    # among the plans with that worst case, the most accurate on average
    assert got.plan.expected_accuracy == pytest.approx(e_want, abs=1e-9)
    assert capacity_violations(fam, got.plan.placement, cl) == []


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5]], ids=_ids)
def test_min_accuracy_under_failure_matches_brute_force(case):
    fkw, ckw, reps = case
    fam, cl = _family(fkw), make_cluster(**ckw)
    (w_best, _), _ = brute_force(fam, cl, objective="worst-case", failures=1, replicas=reps)
    floor = w_best - 1e-6  # only the plans that keep the best guarantee
    want, _ = brute_force(fam, cl, replicas=reps, min_worst=floor)
    got = plan([fam], cl, PlanOptions(min_accuracy_under_failure=floor, combiner_replicas=reps, gap=0.0))
    assert got.plan.expected_accuracy == pytest.approx(want, abs=1e-9)
    assert objective_value(fam, got.plan.placement, cl).worst >= floor


def test_without_reductions_the_same_optimum():
    fam, cl = make_family(3, seed=11, shared=True), make_cluster(6, seed=11)
    a = plan([fam], cl, PlanOptions(gap=0.0))
    b = plan([fam], cl, PlanOptions(gap=0.0, reduce=False))
    assert a.plan.expected_accuracy == pytest.approx(b.plan.expected_accuracy, abs=1e-12)
    assert b.chosen.reduction.candidates == 6


@pytest.mark.parametrize("seed", range(8))
def test_constraints_never_violated_on_random_instances(seed):
    fam = make_family(2 + seed % 2, seed=100 + seed, shared=seed % 3 == 0)
    cl = make_cluster(
        6, seed=200 + seed, rate=[10.0, 300.0][seed % 2], slo=[None, 30.0][seed % 2 == 0], memory=(0.3, 3.0)
    )
    try:
        got = plan([fam], cl, PlanOptions(combiner_replicas=1 + seed % 2))
    except Exception as exc:  # an infeasible instance must say why, not fail
        from melplan.core.errors import InfeasiblePlanError

        assert isinstance(exc, InfeasiblePlanError)
        return
    pl = got.plan.placement
    assert capacity_violations(fam, pl, cl) == []
    hosts = [pl[u][0] for u in fam.upstream_names]
    assert len(set(hosts)) == len(hosts)  # anti-affinity
    ev = evaluate_placement(fam, pl, cl)
    assert got.plan.expected_accuracy == ev.expected_accuracy  # numbers from the evaluator, not the ILP


# -- the model itself -------------------------------------------------------------------------------


def _model(fam, cl, **spec):
    return build_family_model(family_data(fam, cl), ModelSpec(**spec))


def _constraint_names(problem) -> list[str]:
    cons = problem.constraints
    items = cons() if callable(cons) else cons.values()
    return [c.name for c in items]


def test_no_duplicate_variables_and_names_from_indices_only():
    fam = make_family(3, seed=1, shared=True, fid="fam-with-dashes")
    cl = make_cluster(5, seed=1, slo=30.0)
    for spec in (
        dict(),
        dict(objective="worst-case", worst_failures=2),
        dict(min_worst=0.5, failures=1),
        dict(current={"u1": ("s1",)}, move_cost=0.01, combiner_replicas=2),
    ):
        model = _model(fam, cl, **spec)
        model.problem.checkDuplicateVars()
        names = [v.name for v in model.problem.variables()] + _constraint_names(model.problem)
        assert len(set(names)) == len(names)
        for name in names:
            assert re.fullmatch(r"[a-z]+(_[a-z]*[0-9]*)*", name), name
            assert not any(s in name for s in ("fam", "dashes", "shared"))


def test_read_placement_goes_through_the_variable_maps():
    fam, cl = make_family(2, seed=3), make_cluster(4, seed=3)
    model = _model(fam, cl)
    res = solve(model.problem, solver="highs", time_limit_s=20, gap_rel=0.0)
    assert res.optimal
    pl = read_placement(model)
    assert set(pl) >= set(fam.upstream_names)
    for (i, j), v in model.x.items():
        placed = model.data.servers[j] in pl[fam.upstreams[i].name]
        assert placed == (v.varValue > 0.5)
    # the objective of the full-state model is the exact expected accuracy over its servers
    assert res.objective == pytest.approx(evaluate_placement(fam, pl, cl).expected_accuracy, abs=1e-7)


def test_latency_tables_match_the_evaluator():
    fam = make_family(3, seed=8, shared=True)
    cl = make_cluster(5, seed=8, slo=40.0)
    data = family_data(fam, cl)
    ups = {"u1": "s0", "u2": "s3", "u3": "s4"}
    for i, u in enumerate(fam.upstream_names):
        for j, s in enumerate(cl.names):
            one = dict(ups, **{u: s})
            assert data.single_lat[i, j] == pytest.approx(path_latency_ms(fam, cl, u, one, None, None), abs=1e-9)
    comb = fam.combiners[0]
    for t, srv in enumerate(cl.names):
        want = path_latency_ms(fam, cl, fam.all_key, ups, comb.name, srv)
        got = max(data.pair_lat[(i, 0)][cl.index[ups[u]], t] for i, u in enumerate(fam.upstream_names))
        assert got == pytest.approx(want, abs=1e-9)


def test_useful_subsets_drop_subsets_no_better_than_a_member():
    fam = make_family(3, seed=9)
    kept = useful_subsets(fam)
    for s in fam.subsets():
        better = len(s) == 1 or fam.accuracy[subset_key(s)] > max(fam.accuracy[u] for u in s)
        assert (s in kept) == better


def test_truncated_model_is_a_lower_bound_of_the_exact_value():
    fam, cl = make_family(2, seed=4), make_cluster(6, seed=4)
    model = _model(fam, cl, failures=1)
    assert model.failures_modeled == 1
    assert model.modeled_mass < 1.0
    res = solve(model.problem, solver="highs", time_limit_s=20, gap_rel=0.0)
    pl = read_placement(model)
    assert res.objective <= evaluate_placement(fam, pl, cl).expected_accuracy + 1e-12
    # ... short of it by at most the probability left out times the best accuracy
    assert res.objective >= evaluate_placement(fam, pl, cl).expected_accuracy - (1 - model.modeled_mass) - 1e-12


def test_cbc_gives_the_same_optimum_as_highs():
    fam, cl = make_family(2, seed=5), make_cluster(5, seed=5)
    a = plan([fam], cl, PlanOptions(solver="highs", gap=0.0))
    b = plan([fam], cl, PlanOptions(solver="cbc", gap=0.0))
    assert a.plan.expected_accuracy == pytest.approx(b.plan.expected_accuracy, abs=1e-9)
    assert b.plan.solver["name"] == "CBC"


def test_pulp_sees_a_maximisation_with_binary_placement_variables():
    model = _model(make_family(2, seed=6), make_cluster(4, seed=6))
    assert model.problem.sense == pulp.LpMaximize
    assert all(v.cat == pulp.LpBinary or v.cat == pulp.LpInteger for v in model.x.values())


@pytest.mark.parametrize("seed", range(6))
def test_planner_cuts_are_exact_on_random_instances(seed):
    """Dominance, bound cuts and the starting plan never lose the optimum (tight memory, so
    combiners sometimes cannot sit beside their upstreams)."""
    rng_kind = seed % 3
    fam = make_family(2 if rng_kind < 2 else 3, seed=300 + seed, shared=rng_kind == 2)
    cl = make_cluster(6, seed=400 + seed, memory=(0.25, 1.6), slo=[None, 35.0][seed % 2])
    want, _ = brute_force(fam, cl)
    if want == -math.inf:
        return
    got = plan([fam], cl, PlanOptions(gap=0.0))
    assert got.plan.expected_accuracy == pytest.approx(want, abs=1e-9)
    assert got.proven_optimal


def test_combiners_that_cannot_help_are_never_placed():
    import dataclasses

    fam = make_family(2, seed=12)
    worse = dict(fam.accuracy, **{"u1+u2": min(fam.accuracy["u1"], fam.accuracy["u2"]) - 0.01})
    fam = dataclasses.replace(fam, accuracy=worse)  # the pair is worse than either upstream
    cl = make_cluster(4, seed=12)
    model = _model(fam, cl)
    assert model.z == {}
    res = plan([fam], cl, PlanOptions(gap=0.0))
    assert set(res.plan.placement) == {"u1", "u2"}
