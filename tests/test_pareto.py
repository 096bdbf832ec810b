"""Pareto fronts: the sort against brute force, hypervolume, objectives, --pick, the CLI and the plot."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from factories import make_family
from hypothesis import given, settings
from hypothesis import strategies as st

from melplan.cli import main
from melplan.core.catalog import load_catalog, save_family
from melplan.core.cluster import Cluster, Link, Server, Workload
from melplan.core.errors import InputError, MelplanError
from melplan.core.evaluate import evaluate_placement
from melplan.pareto import front as P

# -- brute force -----------------------------------------------------------------------------


def brute_ranks(F: list[list[float]]) -> list[int]:
    """Peel fronts: rank k = not dominated by anything left after removing ranks < k."""
    left = set(range(len(F)))
    rank = [-1] * len(F)
    k = 0
    while left:
        front = {i for i in left if not any(P.dominates(F[j], F[i]) for j in left if j != i)}
        for i in front:
            rank[i] = k
        left -= front
        k += 1
    return rank


def random_table(rng: random.Random, rows: int, cols: int, levels: int) -> list[list[float]]:
    """Few distinct levels per column, so ties and identical rows are common."""
    base = [[float(rng.randrange(levels)) for _ in range(cols)] for _ in range(rows)]
    for _ in range(rows // 4):  # explicit duplicates of existing rows
        base.append(list(rng.choice(base)))
    rng.shuffle(base)
    return base


@pytest.mark.parametrize("seed", range(40))
def test_sort_matches_brute_force_on_seeded_tables(seed):
    rng = random.Random(seed)
    F = random_table(rng, rng.randint(1, 30), rng.randint(2, 4), rng.choice([2, 3, 5, 50]))
    ranks, first = P.non_dominated_ranks(F)
    assert ranks == brute_ranks(F)
    for i, j in enumerate(first):
        assert F[i] == F[j] and j <= i
        assert ranks[i] == ranks[j]  # duplicates share a rank


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=3, max_size=3), min_size=1, max_size=25))
def test_sort_matches_brute_force_hypothesis(rows):
    F = [[float(x) for x in r] for r in rows]
    ranks, _ = P.non_dominated_ranks(F)
    assert ranks == brute_ranks(F)


def test_identical_rows_are_all_on_the_front_and_linked():
    F = [[1.0, 2.0], [2.0, 1.0], [1.0, 2.0], [3.0, 3.0], [3.0, 3.0]]
    ranks, first = P.non_dominated_ranks(F)
    assert ranks == [0, 0, 0, 1, 1]
    assert first == [0, 1, 0, 3, 3]


# -- catalogs --------------------------------------------------------------------------------


def reference_family(params_scale: int = 1_000_000):
    ref = make_family(1, seed=99, fid="ref-full", params_scale=params_scale)
    return replace(
        ref,
        accuracy={"u1": 0.93},
        extra={"role": "reference"},
        reference={"id": "ref-full", "accuracy": 0.93, "params": ref.params, "macs": ref.macs},
    )


def catalog_families(with_reference: bool = True, lambdas: bool = False):
    fams = []
    for n in (1, 2, 3):
        for s in range(5):
            f = make_family(n, seed=10 * n + s, fid=f"fam-n{n}-s{s}")
            if lambdas:
                keys = [f.key(x) for x in f.subsets()]
                f = replace(f, training={"lambdas": {k: (2.0 if "+" not in k else 1.0) for k in keys}})
            fams.append(f)
    if with_reference:
        fams.append(reference_family())
    return fams


@pytest.fixture
def catalog_dir(tmp_path):
    root = tmp_path / "cat"
    for f in catalog_families(lambdas=True):
        save_family(f, root)
    return root


def test_front_of_catalog_is_exactly_the_non_dominated_ids(catalog_dir):
    cat = load_catalog(catalog_dir)
    res = P.analyse(cat)
    assert_front_is_exactly_non_dominated(cat, res)
    assert res.row("ref-full").role == "reference" and res.reference.source == "catalog"


SHIPPED = Path(__file__).resolve().parent.parent / "catalog" / "fashion-mnist"


def assert_front_is_exactly_non_dominated(cat, res) -> None:
    objs = res.objectives
    points = {f.id: [o.minimised(o.value(f)) for o in objs] for f in cat if f.id not in dict(res.excluded)}
    for fid, p in points.items():
        dominated = any(P.dominates(q, p) for g, q in points.items() if g != fid)
        assert (fid in res.front_ids) == (not dominated), fid


@pytest.mark.skipif(
    not SHIPPED.is_dir() or not any(SHIPPED.rglob("*.json")),
    reason="the trained catalog has not landed in catalog/fashion-mnist yet",
)
@pytest.mark.parametrize("objectives", [None, "acc_all_up,expected@0.05,macs"])
def test_shipped_catalog_front_is_exactly_the_non_dominated_ids(objectives):
    cat = load_catalog(SHIPPED)
    res = P.analyse(cat, objectives)
    assert res.front_ids
    assert_front_is_exactly_non_dominated(cat, res)


def test_duplicate_families_share_a_rank_and_are_reported(tmp_path):
    a = make_family(2, seed=1, fid="a")
    b = replace(a, id="b")
    res = P.analyse([a, b, make_family(2, seed=2, fid="c")])
    ra, rb = res.row("a"), res.row("b")
    assert ra.rank == rb.rank and rb.same_as == "a" and ra.same_as is None


def test_objectives_registry_and_values():
    f = make_family(3, seed=4)
    acc = f.accuracy
    assert P.get_objective("acc_all_up").value(f) == acc["u1+u2+u3"]
    assert P.get_objective("acc_weakest_single").value(f) == min(acc["u1"], acc["u2"], acc["u3"])
    assert P.get_objective("acc_best_single").value(f) == max(acc["u1"], acc["u2"], acc["u3"])
    assert P.get_objective("acc_worst_pair").value(f) == min(acc["u1+u2"], acc["u1+u3"], acc["u2+u3"])
    assert P.get_objective("params").value(f) == f.params
    assert P.get_objective("macs").value(f) == f.macs
    assert P.get_objective("weight_bytes").value(f) == f.weight_bytes
    assert P.get_objective("acc_worst_pair").value(make_family(1)) is None
    assert P.get_objective("expected@0.05").name == "expected@0.05"
    for bad, msg in [
        ("nope", "unknown objective"),
        ("expected", "needs a failure probability"),
        ("expected@x", "probability"),
        ("expected@1.5", "outside"),
    ]:
        with pytest.raises(P.ObjectiveError, match=msg):
            P.get_objective(bad)
    with pytest.raises(P.ObjectiveError, match="twice"):
        P.parse_objectives("params,params")
    with pytest.raises(P.ObjectiveError, match="at least two"):
        P.parse_objectives("params")


@pytest.mark.parametrize("n,seed,p", [(1, 0, 0.1), (2, 1, 0.05), (3, 2, 0.2), (3, 5, 0.5), (4, 3, 0.1)])
def test_expected_accuracy_matches_the_plan_evaluator(n, seed, p):
    """Each upstream alone on a server down with p; every combiner on a server that never fails: the
    exact plan evaluator (the project's semantics oracle) gives the same expectation."""
    f = make_family(n, seed=seed)
    servers = [Server(f"s{i}", 1e6, 1e3, p) for i in range(n)] + [Server("solid", 1e6, 1e3, 0.0)]
    cluster = Cluster(tuple(servers), Workload(1.0), Link(1.0, 1000.0))
    placement = {u: [f"s{i}"] for i, u in enumerate(f.upstream_names)}
    placement.update({c.name: ["solid"] for c in f.combiners})
    oracle = evaluate_placement(f, placement, cluster).expected_accuracy
    assert P.expected_accuracy(f, p) == pytest.approx(oracle, abs=1e-12)


def test_worst_pair_excludes_single_models_from_the_sort():
    fams = catalog_families()
    res = P.analyse(fams, "acc_worst_pair,params")
    singles = {f.id for f in fams if f.n == 1}
    assert {i for i, _ in res.excluded} == singles
    assert not singles & {r.id for r in res.rows}


def test_mixed_datasets_need_dataset():
    a = make_family(2, seed=1, fid="a")
    b = replace(make_family(2, seed=2, fid="b"), dataset={"name": "other", "num_classes": 10})
    with pytest.raises(InputError, match="mixes datasets"):
        P.analyse([a, b])
    assert P.analyse([a, b], dataset="other").front_ids == ["b"]


# -- hypervolume -----------------------------------------------------------------------------


def test_hypervolume_two_objectives_by_hand():
    """acc 0.82 and 0.91 at 25% and 50% of the reference params, 10 classes:
    normalised points (0.2, 0.25) and (0.1, 0.5); area dominated inside the unit box."""
    objs = P.parse_objectives("acc_all_up,params")
    norm = P.Normalisation(10, {"params": 1000.0}, True)
    hv = P.hypervolume([[0.82, 250.0], [0.91, 500.0]], objs, norm)
    assert norm.forward(objs[0], 0.82) == pytest.approx(0.2)
    expected = (1 - 0.2) * (1 - 0.25) + (0.2 - 0.1) * (1 - 0.5)
    assert hv == pytest.approx(expected)
    # a point costlier than the reference model adds nothing; a dominated one neither
    assert P.hypervolume([[0.82, 250.0], [0.91, 500.0], [0.99, 1500.0], [0.8, 600.0]], objs, norm) == pytest.approx(
        expected
    )


def test_hypervolume_is_comparable_across_catalogs():
    """Adding a non-dominated family can only grow the hypervolume; the scale comes from the
    reference model, not from the catalog, so a subset's value is not rescaled."""
    fams = catalog_families()
    full = P.analyse(fams)
    part = P.analyse([f for f in fams if f.id not in full.front_ids[:2]])
    assert full.normalisation.comparable and part.normalisation.comparable
    assert full.normalisation.scale == part.normalisation.scale
    assert 0 < part.hypervolume <= full.hypervolume <= 1


def test_hypervolume_without_reference_says_it_is_not_comparable():
    fams = [replace(f, reference=None) for f in catalog_families(with_reference=False)]
    res = P.analyse(fams)
    assert not res.normalisation.comparable and "not comparable" in res.normalisation.note
    assert res.reference.source == "none"


# -- pick ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,name,op,value,relative",
    [
        ("params<=0.4*reference", "params", "<=", 0.4, True),
        ("params <= reference * 0.4", "params", "<=", 0.4, True),
        ("params<=ref", "params", "<=", 1.0, True),
        ("acc_weakest_single>=0.85", "acc_weakest_single", ">=", 0.85, False),
        ("acc_all_up > 90%", "acc_all_up", ">", 0.9, False),
        ("params<1.5M", "params", "<", 1.5e6, False),
        ("macs<=250k", "macs", "<=", 250e3, False),
        ("weight_bytes<=2e6", "weight_bytes", "<=", 2e6, False),
        ("expected@0.05>=0.8", "expected@0.05", ">=", 0.8, False),
    ],
)
def test_parse_constraint(text, name, op, value, relative):
    c = P.parse_constraint(text)
    assert (c.objective.name, c.op, c.relative) == (name, op, relative)
    assert c.value == pytest.approx(value)


@pytest.mark.parametrize(
    "text,msg",
    [
        ("params", "not a constraint"),
        ("params<=", "not a constraint"),
        ("params<=0.4*", "not a constraint"),
        ("params<=0.4*foo", "not a constraint"),
        ("params=1", "equality"),
        ("bogus<=1", "unknown objective"),
        ("acc_all_up>=90", "fraction"),
        ("acc_all_up>=2k", "not a constraint"),
        ("__import__('os').system('true')", "cannot read"),
        ("params<=1;rm", "cannot read"),
    ],
)
def test_bad_constraints_are_clear_errors(text, msg):
    with pytest.raises(P.PickError, match=msg) as exc:
        P.parse_constraint(text)
    assert exc.value.exit_code == 2 and exc.value.field == "--pick" and exc.value.fix


def test_parse_constraints_splits_and_rejects_empty_parts():
    cs = P.parse_constraints("params<=0.4*reference, acc_weakest_single>=0.85")
    assert [c.objective.name for c in cs] == ["params", "acc_weakest_single"]
    assert P.parse_constraints("") == ()
    with pytest.raises(P.PickError, match="empty"):
        P.parse_constraints("params<=1,,acc_all_up>=0.5")


def test_pick_is_the_best_feasible_family_by_brute_force():
    fams = catalog_families()
    ref = next(f for f in fams if f.extra.get("role") == "reference")
    res = P.analyse(fams, pick="params<=0.4*reference, acc_weakest_single>=0.7", prefer="acc_all_up")
    feasible = [f for f in fams if f.params <= 0.4 * ref.params + 1e-9 and f.weakest_single >= 0.7]
    best = max(f.accuracy_all_up for f in feasible)
    chosen = next(f for f in fams if f.id == res.pick.id)
    assert chosen.accuracy_all_up == best and chosen in feasible
    assert res.pick.id in res.pick.reason and "params<=0.4*reference" in res.pick.reason
    assert set(res.pick.feasible) == {f.id for f in feasible}


def test_pick_with_weights_maximises_the_weighted_sum():
    fams = catalog_families()
    ref_params = next(f for f in fams if f.extra.get("role") == "reference").params
    res = P.analyse(fams, weights="acc_all_up=1,params=-0.2")
    score = {f.id: f.accuracy_all_up - 0.2 * f.params / ref_params for f in fams}
    assert res.pick.id == max(score, key=score.get)
    assert res.pick.score == pytest.approx(score[res.pick.id])


def test_pick_errors():
    fams = catalog_families()
    with pytest.raises(P.NoFamilyMatchesError, match="closest is"):
        P.analyse(fams, pick="acc_all_up>=0.999")
    with pytest.raises(P.PickError, match="both"):
        P.analyse(fams, prefer="params", weights="params=-1")
    with pytest.raises(P.PickError, match="NAME=WEIGHT"):
        P.analyse(fams, weights="acc_all_up")
    with pytest.raises(P.PickError, match="not a number"):
        P.analyse(fams, weights="acc_all_up=high")
    no_ref = [replace(f, reference=None) for f in catalog_families(with_reference=False)]
    with pytest.raises(P.PickError, match="reference model's params"):
        P.analyse(no_ref, pick="params<=0.5*reference")


def test_labels_show_sizes_and_lambdas():
    f = catalog_families(lambdas=True)[6]  # n=2
    assert P.family_label(f) == f"b{f.upstreams[0].blocks}/b{f.upstreams[1].blocks} λ2:2:1"
    g = catalog_families(lambdas=True)[11]  # n=3
    assert P.family_label(g, compact=True).endswith("λ2:1:1 by size")
    assert P.family_label(reference_family()).startswith("reference")


# -- CLI and plot ----------------------------------------------------------------------------


def test_cli_json_lists_only_the_front(catalog_dir):
    r = CliRunner().invoke(main, ["pareto", "--catalog", str(catalog_dir), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    res = P.analyse(load_catalog(catalog_dir))
    assert [x["id"] for x in data["front"]] == res.front_ids
    assert set(data["front"][0]["values"]) == set(P.DEFAULT_OBJECTIVES)
    assert data["hypervolume"]["value"] == pytest.approx(res.hypervolume)
    assert data["reference"]["id"] == "ref-full"


def test_cli_text_table_pick_and_plot(catalog_dir, tmp_path):
    png = tmp_path / "out" / "front.png"
    r = CliRunner().invoke(
        main,
        [
            "pareto",
            "--catalog",
            str(catalog_dir),
            "--plot",
            str(png),
            "--pick",
            "params<=0.4*reference",
            "--prefer",
            "acc_weakest_single",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "hypervolume" in r.output and "deploy " in r.output and "<- pick" in r.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert not [p for p in png.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_cli_three_objective_plot_without_reference_family(tmp_path):
    root = tmp_path / "c"
    for f in catalog_families(with_reference=False):
        save_family(f, root)
    png = tmp_path / "f.png"
    r = CliRunner().invoke(
        main,
        [
            "pareto",
            "--catalog",
            str(root),
            "--objectives",
            "acc_all_up,expected@0.1,macs",
            "--plot",
            str(png),
            "--label-all",
        ],
    )
    assert r.exit_code == 0, r.output
    assert png.stat().st_size > 20_000


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--pick", "params<<3"], "--pick"),
        (["--objectives", "params,bogus"], "unknown objective"),
        (["--weights", "acc_all_up=x"], "--weights"),
    ],
)
def test_cli_bad_input_exits_2_without_traceback(catalog_dir, args, needle):
    r = CliRunner().invoke(main, ["pareto", "--catalog", str(catalog_dir), *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output and "Fix:" in r.output


def test_cli_no_feasible_family_exits_1(catalog_dir):
    r = CliRunner().invoke(main, ["pareto", "--catalog", str(catalog_dir), "--pick", "acc_all_up>=0.9999"])
    assert r.exit_code == 1 and "no family satisfies" in r.output


def test_cli_merges_catalogs_and_refuses_repeated_ids(catalog_dir, tmp_path):
    other = tmp_path / "other"
    save_family(make_family(2, seed=123, fid="extra-one"), other)
    r = CliRunner().invoke(main, ["pareto", "--catalog", str(catalog_dir), "--catalog", str(other), "--json"])
    assert r.exit_code == 0, r.output
    assert "extra-one" in json.loads(r.output)["ranks"]
    r = CliRunner().invoke(main, ["pareto", "--catalog", str(catalog_dir), "--catalog", str(catalog_dir)])
    assert r.exit_code == 2 and "two catalogs" in r.output


def test_subprocess_pareto_json(catalog_dir):
    out = subprocess.run(
        [sys.executable, "-m", "melplan", "pareto", "--catalog", str(catalog_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["schema"] == "melplan.pareto/v1"


def test_import_is_light():
    code = (
        "import sys, melplan.pareto.front; "
        "print(any(m in sys.modules for m in ('torch', 'matplotlib', 'pandas', 'pymoo')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_errors_are_melplan_errors():
    assert issubclass(P.PickError, InputError) and issubclass(P.NoFamilyMatchesError, MelplanError)
