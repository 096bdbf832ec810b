"""Hostile input (issue 11): one case per kind of bad input, through the real CLI, and fuzz tests of
every parser.

Each table case breaks one thing in an otherwise valid file or command and expects the answer every
bad input must get: exit 2, one paragraph naming the file or option and the field, a fix, no
traceback, within two seconds.  The fuzz tests feed arbitrary bytes and arbitrary JSON/YAML values to
each parser: the result is a valid object or a melplan error, never another exception.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melplan.cli import main
from melplan.core.errors import MelplanError

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "examples" / "cluster-4.yaml"
SHIPPED = ROOT / "catalog" / "fashion-mnist"
# a shipped 2-upstream entry with weights (the first by name): the bad-input cases edit a copy of it
ENTRY = next(
    p
    for p in sorted(SHIPPED.glob("*.json"))
    if len(json.loads(p.read_text())["upstreams"]) == 2 and json.loads(p.read_text()).get("weights")
)

BILLION_LAUGHS = 'lol: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"l{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, n in zip("abcdefgh", "bcdefghi")
)

LABEL_BOMB = (
    "{a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol], "
    + ", ".join(f"{n}: &{n} [" + ", ".join([f"*{q}"] * 9) + "]" for q, n in zip("abcdefgh", "bcdefghi"))
    + "}"
)


def run(*args: str):
    started = time.perf_counter()
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r, time.perf_counter() - started


@pytest.fixture(scope="module")
def work():
    """A folder with a valid cluster, a one-family catalog and a plan made from them."""
    d = Path(tempfile.mkdtemp(prefix="melplan-hostile-"))
    shutil.copy(CLUSTER, d / "cluster.yaml")
    (d / "cat").mkdir()
    for f in SHIPPED.glob("*.json"):
        shutil.copy(f, d / "cat" / f.name)
    r, _ = run("plan", "--servers", d / "cluster.yaml", "--catalog", d / "cat", "--out", d / "plan.json", "--quiet")
    assert r.exit_code == 0, r.output
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _cluster(d: Path, edit) -> Path:
    data = yaml.safe_load(CLUSTER.read_text())
    edit(data)
    p = d / "bad-cluster.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _raw_cluster(d: Path, text: str | bytes) -> Path:
    p = d / "bad-cluster.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def _entry(d: Path, edit, raw: str | bytes | None = None) -> Path:
    cat = d / "badcat"
    shutil.rmtree(cat, ignore_errors=True)
    cat.mkdir()
    data = json.loads(ENTRY.read_text())
    edit(data)
    text = raw if raw is not None else json.dumps(data)
    (cat / ENTRY.name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return cat


def _plan(d: Path, edit) -> Path:
    data = json.loads((d / "plan.json").read_text())
    edit(data)
    p = d / "bad-plan.json"
    p.write_text(json.dumps(data))
    return p


def _set(path, value):
    def edit(data):
        cur = data
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value

    return edit


def _two_upstreams_on_one_server(data):
    up = data["family_entry"]["upstreams"]
    data["placement"][up[1]["name"]] = list(data["placement"][up[0]["name"]])


def _server_too_small(data):
    host = data["placement"][data["family_entry"]["upstreams"][0]["name"]][0]
    for s in data["cluster"]["servers"]:
        if s["name"] == host:
            s["memory_mb"] = 0.01


# kind -> (command builder given the work folder, text expected in the message: the file/option and field)
CASES = {
    "billion laughs in a cluster file": (
        lambda d: ["cluster", "check", _raw_cluster(d, CLUSTER.read_text() + BILLION_LAUGHS.replace("lol:", "x:"))],
        "expands to more than",
    ),
    "billion laughs in labels": (
        lambda d: [
            "cluster",
            "check",
            _raw_cluster(
                d, re.sub(r"labels: \{[^}]*\}", lambda m: "labels: " + LABEL_BOMB, CLUSTER.read_text(), count=1)
            ),
        ],
        "expands to more than",
    ),
    "UTF-16 cluster file": (
        lambda d: ["cluster", "check", _raw_cluster(d, CLUSTER.read_text().encode("utf-16"))],
        "not UTF-8",
    ),
    "binary garbage as a catalog entry": (
        lambda d: ["catalog", "check", "--catalog", _entry(d, lambda x: None, raw=bytes(range(256)))],
        "badcat",
    ),
    "unhashable ingress": (lambda d: ["cluster", "check", _cluster(d, _set(["ingress"], ["a"]))], "ingress"),
    "nested lists as a link's ends": (
        lambda d: ["cluster", "check", _cluster(d, _set(["links", "overrides", 0, "between"], [["a"], ["b"]]))],
        "between",
    ),
    "401-digit memory_mb": (
        lambda d: ["cluster", "check", _cluster(d, _set(["servers", 0, "memory_mb"], 10**400))],
        "memory_mb",
    ),
    "mtbf_h 1e-20": (
        lambda d: ["cluster", "check", _cluster(d, _set(["servers", 2, "mtbf_h"], 1e-20))],
        "mtbf_h",
    ),
    "100,000 nested brackets in a catalog entry": (
        lambda d: ["catalog", "check", "--catalog", _entry(d, lambda x: None, raw="[" * 100_000 + "]" * 100_000)],
        "nested",
    ),
    "combiner kind given as a list": (
        lambda d: ["catalog", "check", "--catalog", _entry(d, _set(["combiners", 0, "kind"], ["fc"]))],
        "combiners[0].kind",
    ),
    "string lambdas": (
        lambda d: ["catalog", "check", "--catalog", _entry(d, _set(["training", "lambdas"], "1,1,1"))],
        "training.lambdas",
    ),
    "num_classes as a word": (
        lambda d: ["catalog", "check", "--catalog", _entry(d, _set(["dataset", "num_classes"], "ten"))],
        "dataset.num_classes",
    ),
    "input_shape as a string": (
        lambda d: ["catalog", "check", "--catalog", _entry(d, _set(["dataset", "input_shape"], "abc"))],
        "dataset.input_shape",
    ),
    "params 10**400": (
        lambda d: ["catalog", "check", "--catalog", _entry(d, _set(["upstreams", 0, "params"], 10**400))],
        "401 digits",
    ),
    "weights outside the catalog folder": (
        lambda d: ["catalog", "check", "--catalog", _entry(d, _set(["weights"], "/etc/passwd"))],
        "weights",
    ),
    "plan: expected_accuracy as a word": (
        lambda d: ["select", "--plan", _plan(d, _set(["expected_accuracy"], "high"))],
        "expected_accuracy",
    ),
    "plan: worst_case_accuracy as a list": (
        lambda d: ["select", "--plan", _plan(d, _set(["worst_case_accuracy"], [1, 2]))],
        "worst_case_accuracy",
    ),
    "plan: fallback as a number": (lambda d: ["select", "--plan", _plan(d, _set(["fallback"], 5))], "fallback"),
    "plan: solver as a list": (lambda d: ["select", "--plan", _plan(d, _set(["solver"], [1, 2]))], "solver"),
    "plan: servers as a string": (lambda d: ["select", "--plan", _plan(d, _set(["servers"], "abc"))], "servers"),
    "plan: two upstreams on one server": (
        lambda d: ["simulate", "--plan", _plan(d, _two_upstreams_on_one_server), "--hours", "10"],
        "placement",
    ),
    "plan: a component on a server too small for it": (
        lambda d: ["simulate", "--plan", _plan(d, _server_too_small), "--hours", "10"],
        "placement",
    ),
    "--out under a file": (
        lambda d: [
            "plan",
            "--servers",
            d / "cluster.yaml",
            "--catalog",
            d / "cat",
            "--out",
            d / "cluster.yaml" / "p.json",
        ],
        "--out",
    ),
    "--plot under a file": (
        lambda d: ["pareto", "--catalog", d / "cat", "--plot", d / "cluster.yaml" / "front.png"],
        "--plot",
    ),
    "export --out under a file": (
        lambda d: ["export", "--plan", d / "plan.json", "--format", "k8s", "--out", d / "cluster.yaml" / "k8s"],
        "--out",
    ),
    "--time-limit inf": (
        lambda d: ["plan", "--servers", d / "cluster.yaml", "--catalog", d / "cat", "--time-limit", "inf"],
        "--time-limit",
    ),
    "--default-mttr nan": (
        lambda d: ["simulate", "--plan", d / "plan.json", "--hours", "10", "--default-mttr", "nan"],
        "--default-mttr",
    ),
    "--max-failures beyond the cluster": (
        lambda d: ["plan", "--servers", d / "cluster.yaml", "--catalog", d / "cat", "--max-failures", "99"],
        "--max-failures",
    ),
    "trace that is not text": (
        lambda d: [
            "simulate",
            "--plan",
            d / "plan.json",
            "--trace",
            _raw_cluster(d, b"\xff\xfe\x00garbage"),
        ],
        "not UTF-8",
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_every_kind_of_bad_input_is_refused_cleanly(kind, work):
    build, expected = CASES[kind]
    args = build(work)
    r, seconds = run(*args)
    out = r.output
    assert r.exit_code == 2, f"{kind}: exit {r.exit_code}\n{out}\n{r.exception!r}"
    assert not (r.exception and not isinstance(r.exception, SystemExit)), f"{kind}: raised {r.exception!r}"
    assert "Traceback" not in out
    assert expected in out, f"{kind}: {expected!r} not in {out!r}"
    assert "Fix:" in out or "Invalid value" in out, out
    assert seconds < 2.0, f"{kind}: took {seconds:.1f} s"


def test_a_refused_output_leaves_no_file_and_solves_nothing(work):
    r, seconds = run(
        "plan", "--servers", work / "cluster.yaml", "--catalog", work / "cat", "--out", work / "cluster.yaml" / "p.json"
    )
    assert r.exit_code == 2 and seconds < 2.0 and "Chosen" not in r.output


def test_a_plan_that_cannot_be_written_is_saved_elsewhere_and_said(work, monkeypatch):
    """The destination passes the early check but the write fails (disk full, permissions changed):
    the solved plan goes to the temporary folder and the message says where."""
    from melplan.core import plan as plan_mod

    real_save = plan_mod.Plan.save
    target = work / "lost.json"

    def failing_save(self, path):
        if Path(path) == target:
            raise OSError(28, "No space left on device")
        return real_save(self, path)

    monkeypatch.setattr(plan_mod.Plan, "save", failing_save)
    r, _ = run("plan", "--servers", work / "cluster.yaml", "--catalog", work / "cat", "--out", target, "--quiet")
    assert "No space left on device" in r.output and "saved to" in r.output
    rescued = Path(r.output.split("saved to ")[1].split(" instead")[0])
    try:
        assert json.loads(rescued.read_text())["family"]
    finally:
        rescued.unlink(missing_ok=True)


def test_kubernetes_export_is_whole_or_nothing(work, monkeypatch):
    """A failure on the fifth object file leaves no folder at all (then the export works in full)."""
    from melplan.deploy import export as export_mod

    real = export_mod.atomic_write_text
    calls = {"n": 0}

    def flaky(path, text):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(5, "Input/output error")
        return real(path, text)

    out = work / "k8s-out"
    monkeypatch.setattr(export_mod, "atomic_write_text", flaky)
    with pytest.raises(OSError):
        export_mod.export_plan(work / "plan.json", "k8s", out)
    assert not out.exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".k8s-out")]  # no temporary folder left
    monkeypatch.setattr(export_mod, "atomic_write_text", real)
    res = export_mod.export_plan(work / "plan.json", "k8s", out)
    assert (out / "kustomization.yaml").exists() and len(res.files) == len(list(out.iterdir()))


def test_cluster_generate_5000_servers_is_quick(tmp_path):
    r, seconds = run("cluster", "generate", "--servers", "5000", "--out", tmp_path / "c.yaml")
    assert r.exit_code == 0, r.output
    assert seconds < 20, f"{seconds:.1f} s"  # measured ~2 s on an idle core; generous for a shared CI
    r, _ = run("cluster", "check", tmp_path / "c.yaml")
    assert r.exit_code == 0, r.output


def test_catalog_list_json_is_strict_without_a_reference(work):
    cat = _entry(work, lambda d: d.pop("reference", None))
    r, _ = run("catalog", "list", "--catalog", cat, "--json")
    assert r.exit_code == 0, r.output
    json.loads(r.output, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))


# -- fuzz: every parser answers with an object or a melplan error ------------------------------

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


def _parsers():
    from melplan.core.catalog import load_family
    from melplan.core.cluster import load_cluster
    from melplan.core.plan import load_plan
    from melplan.core.services import load_site
    from melplan.sim.traces import load_trace

    return {
        "cluster": (load_cluster, ".yaml"),
        "catalog entry": (load_family, ".json"),
        "plan": (load_plan, ".json"),
        "trace": (load_trace, ".csv"),
        "services": (load_site, ".yaml"),
    }


def _feed(kind: str, data: bytes) -> None:
    parse, suffix = _parsers()[kind]
    fd, name = tempfile.mkstemp(suffix=suffix)
    try:
        os.write(fd, data)
        os.close(fd)
        try:
            parse(name)
        except MelplanError:
            pass
    finally:
        os.unlink(name)


@pytest.mark.parametrize("kind", ["cluster", "catalog entry", "plan", "trace", "services"])
@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(kind, data):
    _feed(kind, data)


@pytest.mark.parametrize("kind", ["cluster", "catalog entry", "plan", "services"])
@FUZZ
@given(value=json_values)
def test_fuzz_arbitrary_values(kind, value):
    suffix = _parsers()[kind][1]
    if suffix == ".json":
        text = json.dumps(value)  # NaN/Infinity included: the reader must refuse them
    else:
        text = yaml.safe_dump(value)
    _feed(kind, text.encode())


@pytest.mark.parametrize("kind", ["cluster", "catalog entry", "plan"])
@FUZZ
@given(data=st.data())
def test_fuzz_one_field_of_a_valid_file(kind, data, tmp_path_factory):
    """Replace one value anywhere in a valid file by an arbitrary value."""
    d = tmp_path_factory.getbasetemp() / "fuzz-valid"
    if kind == "cluster":
        doc = yaml.safe_load(CLUSTER.read_text())
    elif kind == "catalog entry":
        doc = json.loads(ENTRY.read_text())
    else:
        plan = d / "plan.json"
        if not plan.exists():
            d.mkdir(parents=True, exist_ok=True)
            r, _ = run("plan", "--servers", CLUSTER, "--catalog", SHIPPED, "--out", plan, "--quiet")
            assert r.exit_code == 0, r.output
        doc = json.loads(plan.read_text())
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + (i,))

    walk(doc, ())
    path = data.draw(st.sampled_from(paths[1:]))
    _set(list(path), data.draw(json_values))(doc)
    text = json.dumps(doc) if kind != "cluster" else yaml.safe_dump(doc)
    _feed(kind, text.encode())


# -- training and sweeps: refused before the first step (torch) ----------------------------------

TRAIN_CASES = {
    "--id that escapes its folder": (["train", "--id", "../escape", "--dataset", "mnist5k"], "--id"),
    "--device bogus": (["train", "--device", "bogus", "--dataset", "mnist5k"], "--device"),
    "--lambdas nan": (["train", "--lambdas", "nan,nan,nan", "--dataset", "mnist5k"], "--lambdas"),
    "--threads -1": (["train", "--threads", "-1"], "--threads"),
    "--test-limit 0": (["train", "--test-limit", "0"], "--test-limit"),
    "--role reference for two upstreams": (["train", "--blocks", "4,4", "--role", "reference"], "role"),
    "id of a shipped entry, other recipe": (
        ["train", "--id", ENTRY.stem, "--blocks", "4", "--epochs", "1", "--catalog", str(SHIPPED)],
        "--id",
    ),
}


@pytest.mark.torch
@pytest.mark.parametrize("kind", list(TRAIN_CASES))
def test_training_refuses_bad_options_before_training(kind, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from melplan.train import trainer

    reads = []  # training starts by reading its data: a refusal must come before that
    monkeypatch.setattr(trainer, "load_dataset", lambda *a, **k: reads.append(a) or pytest.fail("data was read"))
    args, expected = TRAIN_CASES[kind]
    if "--catalog" not in args:
        args = [*args, "--catalog", str(tmp_path / "cat")]
    r, seconds = run(*args, "--checkpoint-dir", tmp_path / "ck", "--quiet")
    assert r.exit_code == 2, f"{kind}: exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    assert expected in r.output and "Traceback" not in r.output
    assert not reads, f"{kind}: training read its data before refusing"
    assert seconds < 60, f"{kind}: {seconds:.1f} s (no hang; about 1 s on an idle core)"
    assert not (tmp_path / "escape.json").exists() and not (tmp_path / "ck").exists()


SWEEP_CASES = {
    "blocks: 5": ("families:\n  - {blocks: 5}\n", "families[0].blocks"),
    "a bare 5": ("families:\n  - 5\n", "families[0]"),
    "defaults: [1, 2]": ("defaults: [1, 2]\nfamilies:\n  - {blocks: [5, 5]}\n", "defaults"),
    "epochs: two": ("families:\n  - {blocks: [5, 5], epochs: two}\n", "families[0].epochs"),
    "pretrained: 'yes'": ("families:\n  - {blocks: [5, 5], pretrained: 'yes'}\n", "families[0].pretrained"),
    "val_fraction: a tenth": (
        "defaults: {val_fraction: a tenth}\nfamilies:\n  - {blocks: [5]}\n",
        "families[0].val_fraction",
    ),
    "duplicate ids": (
        "families:\n  - {blocks: [5, 5], family_id: a}\n  - {blocks: [4, 4], family_id: a}\n",
        "families[1].family_id",
    ),
    "role: boss": ("families:\n  - {blocks: [5], role: boss}\n", "families[0].role"),
    "billion laughs in lambdas": (
        "families:\n  - {blocks: [5, 5], lambdas: " + LABEL_BOMB + "}\n",
        "expands to more than",
    ),
}


@pytest.mark.torch
@pytest.mark.parametrize("kind", list(SWEEP_CASES))
def test_sweep_files_are_refused_naming_the_file_and_entry(kind, tmp_path):
    pytest.importorskip("torch")
    text, expected = SWEEP_CASES[kind]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(text)
    r, seconds = run("sweep", sweep, "--catalog", tmp_path / "cat", "--quiet")
    assert r.exit_code == 2, f"{kind}: exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    assert "sweep.yaml" in r.output and expected in r.output, r.output
    assert seconds < 60  # no hang (the file is refused before torch trains anything)


def test_serving_a_family_without_weights_is_refused_before_anything_starts(tmp_path):
    """The planner may choose a family whose entry names no weights file (a shipped control, say);
    `melplan serve` then exits 2 in one paragraph naming the plan, the family, the field and the fix,
    and starts nothing."""
    cat = _entry(tmp_path, lambda d: d.pop("weights"))
    fid = json.loads(ENTRY.read_text())["id"]
    plan = tmp_path / "plan.json"
    r, _ = run("plan", "--servers", CLUSTER, "--catalog", cat, "--out", plan, "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads(plan.read_text())["family"] == fid  # the only family, so the chosen one
    r, _ = run("serve", "--plan", plan, "--port", "0", "--run-dir", tmp_path / "run")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert str(plan) in r.output and fid in r.output and "'weights'" in r.output and "--family" in r.output
    assert not (tmp_path / "run").exists()
