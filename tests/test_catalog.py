"""Catalog contract: validation, round trips, bad files, the acceptance report (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from click.testing import CliRunner
from factories import make_family

from melplan.cli import main
from melplan.core.catalog import Family, load_catalog, load_family, save_family
from melplan.core.catalog_checks import control_vs_joint, convergence, headline, pairs
from melplan.core.errors import CatalogError


def write(tmp_path, data, name="f.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_roundtrip(tmp_path, n):
    fam = make_family(n, seed=n, shared=(n == 4))
    path = save_family(fam, tmp_path)
    assert load_family(path) == fam
    assert load_catalog(tmp_path).get(fam.id) == fam


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("accuracy"), "accuracy"),
        (lambda d: d["accuracy"].pop("u1+u2"), "accuracy"),
        (lambda d: d["accuracy"].__setitem__("u1", 1.5), "accuracy.u1"),
        (lambda d: d["accuracy"].__setitem__("u9", 0.5), "accuracy"),
        (lambda d: d["upstreams"][0].__setitem__("params", -3), "upstreams[0].params"),
        (lambda d: d["upstreams"][0].__setitem__("macs", "many"), "upstreams[0].macs"),
        (lambda d: d["upstreams"][1].__setitem__("name", "u1"), "upstreams"),
        (lambda d: d["combiners"].clear(), "combiners"),
        (lambda d: d["combiners"][0].__setitem__("subset", ["u1", "u7"]), "combiners[0].subset"),
        (lambda d: d.__setitem__("schema", "v0"), "schema"),
        (lambda d: d.__setitem__("id", "Bad Id"), "id"),
    ],
)
def test_bad_entries_name_file_and_field(tmp_path, mutate, field):
    data = make_family(2).to_dict()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(CatalogError) as err:
        load_family(path)
    assert err.value.field == field and err.value.file == str(path) and err.value.fix


def test_malformed_json_and_empty_and_duplicate(tmp_path):
    with pytest.raises(CatalogError, match="not valid JSON"):
        load_family(write(tmp_path, "{ nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CatalogError, match="holds no family"):
        load_catalog(empty)
    dup = tmp_path / "dup"
    save_family(make_family(2, fid="same"), dup / "a")
    save_family(make_family(2, fid="same", seed=3), dup / "b")
    with pytest.raises(CatalogError, match="appears twice"):
        load_catalog(dup)


def test_cli_bad_catalog_is_one_paragraph_exit_2(tmp_path):
    write(tmp_path, {"schema": "melplan.family/v1", "id": "x"})
    r = CliRunner().invoke(main, ["catalog", "list", "--catalog", str(tmp_path)])
    assert r.exit_code == 2
    assert "field 'dataset'" in r.output and "Traceback" not in r.output
    r = subprocess.run(
        [sys.executable, "-m", "melplan", "catalog", "show", "nope", "--catalog", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_unknown_fields_are_kept(tmp_path):
    data = make_family(2).to_dict()
    data["notes"] = {"by": "someone else's tool"}
    data["upstreams"][0]["device"] = "npu"
    fam = load_family(write(tmp_path, data))
    assert fam.to_dict()["notes"] == {"by": "someone else's tool"}
    assert fam.to_dict()["upstreams"][0]["device"] == "npu"


def test_list_and_frame(tmp_path):
    for s in range(3):
        save_family(make_family(2, seed=s), tmp_path)
    r = CliRunner().invoke(main, ["catalog", "list", "--catalog", str(tmp_path), "--json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 3
    frame = load_catalog(tmp_path).to_frame()
    assert list(frame["id"]) == sorted(frame["id"]) and (frame["params"] > 0).all()


def _with_acc(fam: Family, acc: dict, **kw) -> Family:
    return replace(fam, accuracy={**fam.accuracy, **acc}, **kw)


def test_report_checks_can_pass_and_fail():
    ref = replace(make_family(1, fid="ref", params_scale=1_000_000), extra={"role": "reference"}, accuracy={"u1": 0.92})
    good = _with_acc(make_family(2, fid="good"), {"u1": 0.90, "u2": 0.89, "u1+u2": 0.915})
    weak = _with_acc(make_family(2, fid="weak"), {"u1": 0.80, "u2": 0.89, "u1+u2": 0.915})
    from melplan.core.catalog import Catalog

    assert headline(Catalog((ref, good))).passed
    assert not headline(Catalog((ref, weak))).passed  # weaker single keeps only 87%
    assert not headline(Catalog((good,))).passed  # no reference
    assert convergence(Catalog((ref, good))).passed
    strong_backup = replace(make_family(1, fid="backup"), extra={"role": "backup"}, accuracy={"u1": 0.93})
    # a smaller single model beats the reference: under-trained, so the headline is not judged at all
    assert not convergence(Catalog((ref, good, strong_backup))).passed
    unjudged = headline(Catalog((ref, good, strong_backup)))
    assert not unjudged.passed and "not judged" in unjudged.detail and "backup" in unjudged.detail
    assert "train it longer" in convergence(Catalog((ref, good, strong_backup))).detail
    equal_backup = replace(strong_backup, accuracy={"u1": 0.92})  # a tie is not "more accurate"
    assert not convergence(Catalog((ref, good, equal_backup))).passed
    # an upstream of a family answers alone too: one that beats the reference fails the check
    strong_upstream = _with_acc(make_family(2, fid="strong"), {"u1": 0.90, "u2": 0.925, "u1+u2": 0.93})
    beaten = convergence(Catalog((ref, good, strong_upstream)))
    assert not beaten.passed and "strong u2 (0.9250" in beaten.detail
    assert "good u1 at 0.9000" in convergence(Catalog((ref, good))).detail  # the best smaller single model
    # a larger single model (the full network the reference is a prefix of) is named, not held against it
    full = replace(make_family(1, fid="full", params_scale=4_000_000), extra={"role": "single"}, accuracy={"u1": 0.915})
    with_full = convergence(Catalog((ref, good, full)))
    assert full.params > ref.params and with_full.passed
    assert with_full.detail.endswith(f"; the larger full scores 0.9150 ({full.params:,} params)")
    three = make_family(3, fid="three")
    hi = _with_acc(three, {"u1+u2": 0.90, "u1+u3": 0.90, "u2+u3": 0.90, "u1+u2+u3": 0.91})
    lo = _with_acc(three, {"u1+u2": 0.85, "u1+u3": 0.90, "u2+u3": 0.90, "u1+u2+u3": 0.91})
    assert pairs(Catalog((hi,))).passed and not pairs(Catalog((lo,))).passed


def _with_history(fam: Family, history: list[float]) -> Family:
    validation = {"phases": {"joint": {"history": history}}}
    return replace(fam, training={**fam.training, "validation": validation})


def test_convergence_advice_follows_the_reference_validation_history():
    from melplan.core.catalog import Catalog

    ref = replace(make_family(1, fid="ref", params_scale=1_000_000), extra={"role": "reference"}, accuracy={"u1": 0.92})
    backup = replace(make_family(1, fid="backup"), extra={"role": "backup"}, accuracy={"u1": 0.93})
    rising = convergence(Catalog((_with_history(ref, [0.85, 0.90, 0.915]), backup)))
    flat = convergence(Catalog((_with_history(ref, [0.85, 0.9325, 0.933]), backup)))  # +0.0005: stopped
    assert not rising.passed and "still rising (+0.0150 in its last epoch of 3)" in rising.detail
    assert not flat.passed and "stopped rising (+0.0005 in its last epoch of 3, best 0.9330)" in flat.detail
    assert "train it longer" not in flat.detail


def test_planning_core_imports_without_torch():
    code = (
        "import sys, melplan.core.catalog, melplan.core.cluster, melplan.core.evaluate, melplan.core.plan, "
        "melplan.planner.planner, melplan.planner.ilp, melplan.planner.solve, melplan.runtime.selector, "
        "melplan.core.catalog_checks, melplan.cli; "
        "from melplan import RuntimeSelector; "
        "bad = [m for m in ('torch', 'torchvision', 'matplotlib', 'pandas') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_control_is_compared_with_its_jointly_trained_twin():
    from melplan.core.catalog import Catalog

    lam = {"u1": 2.0, "u2": 2.0, "u1+u2": 1.0}
    joint = replace(
        _with_acc(make_family(2, fid="joint"), {"u1": 0.90, "u2": 0.89, "u1+u2": 0.92}),
        training={"lambdas": lam, "seed": 0},
    )
    control = replace(
        _with_acc(joint, {"u1": 0.91, "u2": 0.90, "u1+u2": 0.915}),
        id="control",
        training={"lambdas": lam, "seed": 0, "independent": True},
    )
    other = replace(control, id="lonely", training={"lambdas": {**lam, "u1+u2": 4.0}, "seed": 0, "independent": True})
    rows = control_vs_joint(Catalog((joint, control, other)))
    assert rows[0].startswith("control (independent) vs joint (joint)") and "u1+u2 0.9150 vs 0.9200" in rows[0]
    assert rows[1] == "lonely: no jointly trained twin in this catalog"
    # an independently trained family is not a candidate for the headline
    ref = replace(make_family(1, fid="ref", params_scale=1_000_000), extra={"role": "reference"}, accuracy={"u1": 0.92})
    assert headline(Catalog((ref, control))).family is None


def test_lambda_label_lists_every_subset_or_one_weight_per_size(tmp_path):
    from melplan.core.catalog import lambda_label, subset_key

    fam = make_family(4, seed=1)
    keys = [subset_key(s) for s in fam.subsets()]
    by_size = {1: 2.0, 2: 1.0, 3: 1.0, 4: 3.0}
    lam = {k: by_size[k.count("+") + 1] for k in keys}
    fam = replace(fam, training={**fam.training, "lambdas": lam})
    assert lambda_label(fam) == ":".join(f"{lam[k]:g}" for k in keys) and lambda_label(fam).count(":") == 14
    assert lambda_label(fam, by_size=True) == "2:1:1:3 by size"
    uneven = replace(fam, training={**fam.training, "lambdas": {**lam, keys[0]: 5.0}})
    assert lambda_label(uneven, by_size=True) == lambda_label(uneven)  # singles differ: the full list
    assert lambda_label(replace(fam, training={})) == "-"
    save_family(fam, tmp_path)
    r = CliRunner().invoke(main, ["catalog", "list", "--catalog", str(tmp_path)])
    assert r.exit_code == 0 and "2:1:1:3 by size" in r.output, r.output
