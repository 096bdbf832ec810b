"""The shipped audio and text catalogs plan onto the example cluster unchanged; their weights
reproduce their accuracies; the default catalog still plans Fashion-MNIST alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from melplan.cli import main
from melplan.core.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent
CLUSTER4 = ROOT / "examples" / "cluster-4.yaml"
MODAL = {"fsdd": "audio", "fsdd-heldout": "audio", "trec": "text"}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("name", sorted(MODAL))
def test_shipped_catalog_plans_onto_cluster_4(name):
    cat = load_catalog(ROOT / "catalog" / name)
    sizes = {f.n for f in cat}
    assert {1, 2, 3} <= sizes and any(f.extra.get("role") == "reference" for f in cat)
    for f in cat:
        assert f.dataset["preprocessing"]["modality"] == MODAL[name]
        assert f.reference and f.reference["accuracy"] == max(
            g.accuracy_all_up for g in cat if g.id == f.reference["id"]
        )
    r = run("plan", "--servers", CLUSTER4, "--catalog", ROOT / "catalog" / name, "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["family"] in {f.id for f in cat}
    assert 0 < plan["expected_accuracy"] <= plan["accuracy_all_up"] <= 1
    assert run("catalog", "check", "--catalog", ROOT / "catalog" / name).exit_code == 0


def test_default_catalog_with_several_datasets_plans_fashion_mnist(tmp_path, monkeypatch):
    root = tmp_path / "catalog"
    for sub in ("fashion-mnist", "trec"):
        shutil.copytree(ROOT / "catalog" / sub, root / sub, ignore=shutil.ignore_patterns("weights"))
    monkeypatch.setenv("MELPLAN_CATALOG", str(root))
    assert {f.dataset["name"] for f in load_catalog()} == {"fashion-mnist"}
    assert {f.dataset["name"] for f in load_catalog(dataset="trec")} == {"trec"}
    assert {f.dataset["name"] for f in load_catalog(root)} == {"fashion-mnist", "trec"}  # explicit: all of it
    r = run("plan", "--servers", CLUSTER4, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["dataset"] == "fashion-mnist"
    r = run("plan", "--servers", CLUSTER4, "--catalog", root)
    assert r.exit_code == 2 and "--dataset" in r.output


@pytest.mark.torch
@pytest.mark.parametrize("name,dataset", [("fsdd", "fsdd"), ("trec", "trec")])
def test_shipped_weights_reproduce_the_catalog_accuracy(name, dataset):
    pytest.importorskip("torch")
    from test_modal_train import reevaluate

    from melplan.train.data import load_dataset

    ds = load_dataset(dataset)
    with_weights = [f for f in load_catalog(ROOT / "catalog" / name) if f.weights]
    assert len(with_weights) >= 3
    for fam in with_weights:
        assert reevaluate(fam, ds) == pytest.approx(dict(fam.accuracy), abs=1e-6), fam.id


@pytest.mark.slow
@pytest.mark.torch
def test_retraining_a_shipped_text_family_from_its_sweep_reproduces_it(tmp_path):
    """The sweep file is the recipe: the same spec and seed on one thread give the shipped numbers."""
    torch = pytest.importorskip("torch")
    from melplan.train.trainer import sweep_specs, train_family

    spec = next(s for s, _ in sweep_specs(ROOT / "sweeps" / "trec.yaml") if s.blocks == (2,))
    shipped = load_catalog(ROOT / "catalog" / "trec").get("trec-textcnn-b2-s0")
    assert spec.val_fraction == 0 and spec.epochs == shipped.training["epochs"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fam = train_family(spec, catalog_dir=tmp_path, latency=False)
    finally:
        torch.set_num_threads(threads)
    assert fam.accuracy == pytest.approx(dict(shipped.accuracy), abs=0.01)
    assert fam.params == shipped.params and [u.macs for u in fam.upstreams] == [u.macs for u in shipped.upstreams]
