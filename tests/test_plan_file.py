"""Self-sufficient plan files (melplan.plan/v2): embedded family, cluster and weights, one loader,
v1 compatibility, and agreement checks of a --catalog / --servers given anyway."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from factories import make_family

from melplan.cli import main
from melplan.core.catalog import save_family
from melplan.core.cluster import load_cluster
from melplan.core.errors import PlanFileError
from melplan.core.fileio import dumps_strict, sha256_file, strict_json
from melplan.core.plan import PLAN_SCHEMA, Plan, load_plan, load_plan_bundle

ROOT = Path(__file__).resolve().parent.parent
CLUSTER4 = ROOT / "examples" / "cluster-4.yaml"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def made(tmp_path):
    """A catalog in its own directory (one family with a weights file), and a plan made from it."""
    cat = tmp_path / "far" / "catalog"
    fam = replace(make_family(2, seed=2, fid="mel-2"), weights="weights/mel-2.pt")
    save_family(fam, cat)
    save_family(make_family(1, seed=1, fid="ref-full"), cat)
    (cat / "weights").mkdir()
    (cat / "weights" / "mel-2.pt").write_bytes(b"not really torch, but bytes with a digest" * 100)
    plan_path = tmp_path / "plans" / "plan.json"
    r = run("plan", "--servers", CLUSTER4, "--catalog", cat, "--family", "mel-2", "--out", plan_path)
    assert r.exit_code == 0, r.output
    return {"cat": cat, "plan": plan_path, "weights": cat / "weights" / "mel-2.pt", "tmp": tmp_path}


def test_plan_embeds_family_cluster_and_weights(made):
    data = json.loads(made["plan"].read_text())
    assert data["schema"] == PLAN_SCHEMA == "melplan.plan/v2"
    # the family entry is the catalog file as it was, the cluster the one solved for
    assert data["family_entry"] == json.loads((made["cat"] / "mel-2.json").read_text())
    assert load_cluster(CLUSTER4).to_dict() == data["cluster"]
    w = data["weights"]
    assert w["sha256"] == sha256_file(made["weights"]) and w["size_bytes"] == made["weights"].stat().st_size
    assert Path(w["path"]) == made["weights"].resolve()
    assert (made["plan"].parent / w["relative_path"]).resolve() == made["weights"].resolve()
    assert data["catalog_dir"] == str(made["cat"].resolve())
    plan = load_plan(made["plan"])
    assert plan.self_sufficient and plan.family == "mel-2" and plan.family_entry.id == "mel-2"
    assert Plan.from_dict(plan.to_dict()) == plan


def test_select_simulate_export_need_only_the_plan(made, tmp_path):
    plan = made["plan"]
    with_files = run("select", "--plan", plan, "--down", "edge-a", "--json", "--catalog", made["cat"],
                     "--servers", CLUSTER4)  # fmt: skip
    alone = run("select", "--plan", plan, "--down", "edge-a", "--json")
    assert alone.exit_code == 0, alone.output
    assert json.loads(alone.output) == json.loads(with_files.output)
    # the embedded cluster is used: edge-d is not in the plan but is in the cluster
    r = run("select", "--plan", plan, "--down", "edge-d", "--json")
    assert r.exit_code == 0, r.output

    sim = run("simulate", "--plan", plan, "--hours", "50", "--seed", "3", "--json")
    assert sim.exit_code == 0, sim.output
    sim_files = run("simulate", "--plan", plan, "--hours", "50", "--seed", "3", "--json", "--servers", CLUSTER4,
                    "--catalog", made["cat"])  # fmt: skip
    a, b = json.loads(sim.output), json.loads(sim_files.output)
    assert a["strategies"] == b["strategies"]

    out = tmp_path / "deploy"
    r = run("export", "--plan", plan, "--format", "json", "--out", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["weights"]["found"] and m["weights"]["sha256"] == sha256_file(made["weights"])


def test_the_catalog_directory_can_vanish(made, tmp_path):
    """A plan copied with its weights file beside it works after the catalog is gone."""
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(made["plan"], moved / "plan.json")
    shutil.copy(made["weights"], moved / "mel-2.pt")
    shutil.rmtree(made["cat"])
    b = load_plan_bundle(moved / "plan.json")
    assert b.weights_path == moved / "mel-2.pt" and b.catalog is None
    assert b.require_weights() == moved / "mel-2.pt"
    r = run("simulate", "--plan", moved / "plan.json", "--hours", "20", "--json")
    assert r.exit_code == 0, r.output  # no baselines without a catalog, but the plan simulates
    # a file of the same name with other bytes is not taken for the weights
    (moved / "mel-2.pt").write_bytes(b"other")
    b = load_plan_bundle(moved / "plan.json")
    assert b.weights_path is None
    with pytest.raises(PlanFileError) as exc:
        b.require_weights()
    assert "sha256" in exc.value.message and str(moved / "mel-2.pt") in exc.value.message


def test_weights_found_when_plan_and_catalog_move_together(made, tmp_path):
    """relative_path: the plan and the catalog moved as one tree (e.g. a copied project folder)."""
    tree = tmp_path / "copy"
    shutil.copytree(tmp_path / "far", tree / "far")
    shutil.copytree(tmp_path / "plans", tree / "plans")
    made["weights"].write_bytes(b"changed after the copy")  # the original is no longer the right file
    b = load_plan_bundle(tree / "plans" / "plan.json")
    assert b.weights_path is not None and b.weights_path.resolve() == (tree / "far/catalog/weights/mel-2.pt").resolve()


def test_a_disagreeing_catalog_or_cluster_is_an_error_naming_both(made, tmp_path):
    other = tmp_path / "other"
    save_family(replace(make_family(2, seed=2, fid="mel-2"), accuracy={"u1": 0.5, "u2": 0.5, "u1+u2": 0.6}), other)
    r = run("select", "--plan", made["plan"], "--catalog", other)
    assert r.exit_code == 2
    assert str(made["plan"]) in r.output and str(other / "mel-2.json") in r.output and "accuracy" in r.output

    changed = yaml.safe_load(CLUSTER4.read_text())
    changed["servers"][0]["memory_mb"] = 1
    cpath = tmp_path / "changed.yaml"
    cpath.write_text(yaml.safe_dump(changed))
    for cmd in (["select"], ["simulate", "--hours", "5"]):
        r = run(*cmd, "--plan", made["plan"], "--servers", cpath)
        assert r.exit_code == 2, r.output
        assert str(cpath) in r.output and str(made["plan"]) in r.output
        assert changed["servers"][0]["name"] in r.output and "Traceback" not in r.output

    empty = tmp_path / "empty-cat"
    save_family(make_family(1, seed=1, fid="ref-full"), empty)
    r = run("export", "--plan", made["plan"], "--format", "json", "--out", tmp_path / "x", "--catalog", empty)
    assert r.exit_code == 2 and "no family with that id" in r.output


def test_v1_plans_still_load_and_say_what_is_missing(made, tmp_path):
    data = json.loads(made["plan"].read_text())
    for key in ("family_entry", "cluster", "weights", "catalog_dir"):
        data.pop(key)
    data["schema"] = "melplan.plan/v1"
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps(data))
    plan = load_plan(v1)
    assert plan.schema == "melplan.plan/v1" and not plan.self_sufficient
    r = run("select", "--plan", v1, "--down", "edge-a", "--catalog", made["cat"], "--json")
    assert r.exit_code == 0, r.output
    r = run("simulate", "--plan", v1, "--hours", "5", "--catalog", made["cat"])
    assert r.exit_code == 2 and "does not embed the cluster" in r.output and "--servers" in r.output
    r = run("simulate", "--plan", v1, "--hours", "5", "--catalog", made["cat"], "--servers", CLUSTER4)
    assert r.exit_code == 0, r.output
    r = run("select", "--plan", v1, "--catalog", tmp_path / "nothing-here")
    assert r.exit_code == 2


def test_an_embedded_entry_that_contradicts_the_plan_is_rejected(made, tmp_path):
    data = json.loads(made["plan"].read_text())
    data["family_entry"]["id"] = "someone-else"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(PlanFileError) as exc:
        load_plan(bad)
    assert exc.value.field == "family_entry.id" and exc.value.file == str(bad)
    data = json.loads(made["plan"].read_text())
    data["cluster"]["servers"][0]["memory_mb"] = -1
    bad.write_text(json.dumps(data))
    with pytest.raises(PlanFileError) as exc:
        load_plan(bad)
    assert exc.value.field.startswith("cluster.")
    r = run("select", "--plan", bad)
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_strict_json_maps_non_finite_to_null():
    obj = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": (1, "x"), "d": {"e": None}}
    assert strict_json(obj) == {"a": None, "b": [None, None, 1.5], "c": [1, "x"], "d": {"e": None}}
    text = dumps_strict(obj)
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict constant {c}"))


CLUSTER_FILES = sorted(
    p for p in (ROOT / "examples").glob("*.yaml") if "services:" not in p.read_text()
)  # not services files


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_embedded_cluster_loses_nothing(path, tmp_path):
    """Whatever a cluster file can say (labels, links, ingress, and fields added later) survives the plan."""
    from melplan.core.cluster import parse_cluster

    cluster = load_cluster(path)
    fam = make_family(1, seed=1, fid="one")
    plan = Plan("one", {"u1": (cluster.names[0],)}, "expected", 0.0, 0.0, {}).embed(fam, cluster)
    plan.save(tmp_path / "p.json")
    back = load_plan(tmp_path / "p.json")
    assert back.cluster == cluster and parse_cluster(cluster.to_dict()) == cluster
    assert back.family_entry == fam


def test_embedded_cluster_keeps_failure_domains(tmp_path):
    data = yaml.safe_load(CLUSTER4.read_text())
    data["servers"][0]["labels"] = {"zone": "north"}
    data["servers"][1]["labels"] = {"zone": "north"}
    data["failure_domains"] = {"zone": {"north": {"failure_prob": 0.005}}}
    path = tmp_path / "fd.yaml"
    path.write_text(yaml.safe_dump(data))
    cluster = load_cluster(path)
    assert cluster.failure_domains
    r = run("plan", "--servers", path, "--out", tmp_path / "plan.json")
    assert r.exit_code == 0, r.output
    plan = load_plan(tmp_path / "plan.json")
    assert plan.cluster == cluster and plan.cluster.failure_domains == cluster.failure_domains
    # select, given only the plan, sees the same cluster (same route as with --servers)
    a = run("select", "--plan", tmp_path / "plan.json", "--down", plan.used_servers[0], "--json")
    b = run("select", "--plan", tmp_path / "plan.json", "--down", plan.used_servers[0], "--json", "--servers", path)
    assert a.exit_code == 0 and json.loads(a.output) == json.loads(b.output)
