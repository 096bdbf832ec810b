"""Tests of `melplan export`: the deployable view, Kubernetes objects checked against the API schema
with the official `kubernetes` client's models, names, writing, and the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from factories import make_cluster, make_family
from hypothesis import given, settings
from hypothesis import strategies as st

from melplan.cli import main
from melplan.core.catalog import MIB, Combiner, Family, Upstream, nonempty_subsets, save_family, subset_key
from melplan.core.cluster import Cluster, Link, Server, Workload
from melplan.core.errors import CatalogError, InputError, PlanFileError
from melplan.core.evaluate import evaluate_placement
from melplan.core.plan import Plan, load_plan
from melplan.deploy.export import MANIFEST_SCHEMA, build_manifest, export_plan, load_inputs
from melplan.deploy.k8s import (
    DNS1035_RE,
    LABEL_VALUE_RE,
    MEMORY_MARGIN,
    K8sOptions,
    dns_name,
    label_value,
    make_naming,
    memory_request,
    unique_names,
)

kube = pytest.importorskip("kubernetes")

MODELS = {"Deployment": "V1Deployment", "Service": "V1Service", "ConfigMap": "V1ConfigMap"}
QUALIFIED_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
PLACEMENT3 = {"u1": ["s0"], "u2": ["s1"], "u3": ["s2"], "u1+u2": ["s3", "s4"], "u2+u3": ["s4"], "u1+u2+u3": ["s3"]}


# -- helpers -----------------------------------------------------------------------------------


def make_plan(family: Family, placement: dict, cluster: Cluster) -> Plan:
    """A plan file's content for a hand-made placement, evaluated exactly."""
    ev = evaluate_placement(family, placement, cluster)
    return Plan(
        family=family.id,
        placement={k: tuple(v) for k, v in placement.items()},
        objective="expected",
        expected_accuracy=ev.expected_accuracy,
        accuracy_all_up=ev.accuracy_all_up,
        worst_case_accuracy=ev.worst_case_accuracy,
        fallback=tuple(ev.fallback),
        solver={"name": "hand", "status": "given"},
        servers=ev.servers,
        latency_ms=ev.latency_ms,
        cluster=cluster,  # self-sufficient: the selector needs the ingress and links (reachability)
    )


@pytest.fixture
def setup(tmp_path):
    """A catalog of two families (one with a weights file beside its JSON) and a plan for the first."""
    cat = tmp_path / "catalog"
    fam = dataclasses.replace(make_family(3, seed=1, fid="demo-n3", params_scale=2_000_000), weights="demo-n3.pt")
    save_family(fam, cat)
    (cat / "demo-n3.pt").write_bytes(bytes(range(256)) * 40)
    save_family(make_family(2, seed=5, fid="other-n2", shared=True), cat / "sub")
    cluster = make_cluster(5, seed=2, memory=(100.0, 200.0))
    plan = make_plan(fam, PLACEMENT3, cluster)
    plan_path = tmp_path / "plan.json"
    plan.save(plan_path)
    family = load_inputs(plan_path, cat)[1]
    return {"cat": cat, "family": family, "plan": plan, "plan_path": plan_path, "cluster": cluster, "tmp": tmp_path}


def is_gateway(obj: dict) -> bool:
    return obj["metadata"]["labels"].get("melplan/kind") == "gateway"


def api_client():
    return kube.client.ApiClient()


def to_model(obj: dict):
    """Deserialize into the kubernetes client's model (raises ValueError on a missing required field)."""
    return api_client()._ApiClient__deserialize(obj, MODELS[obj["kind"]])


def read_objects(out: Path) -> tuple[list[dict], dict]:
    kust = yaml.safe_load((out / "kustomization.yaml").read_text())
    return [yaml.safe_load((out / f).read_text()) for f in kust["resources"]], kust


def assert_valid_k8s_object(obj: dict) -> None:
    """Schema check through the client's models plus the API server's name and label rules."""
    model = to_model(obj)
    # Every key we wrote is a field of the model (a misspelt key would be dropped here).
    assert api_client().sanitize_for_serialization(model) == obj
    md = obj["metadata"]
    assert len(md["name"]) <= 63 and DNS1035_RE.match(md["name"]), md["name"]
    for k, v in md.get("labels", {}).items():
        assert QUALIFIED_KEY_RE.match(k) and len(k.split("/")[-1]) <= 63, k
        assert isinstance(v, str) and len(v) <= 63 and LABEL_VALUE_RE.match(v), (k, v)
    for k, v in md.get("annotations", {}).items():
        assert QUALIFIED_KEY_RE.match(k) and isinstance(v, str), k
    if obj["kind"] == "Deployment":
        spec = model.spec
        assert spec.selector.match_labels.items() <= spec.template.metadata.labels.items()
        for k, v in spec.template.metadata.labels.items():
            assert LABEL_VALUE_RE.match(v) and len(v) <= 63, (k, v)
        c = spec.template.spec.containers[0]
        assert re.fullmatch(r"[1-9][0-9]*Mi", c.resources.requests["memory"])
        assert {v.name for v in spec.template.spec.volumes} >= {m.name for m in c.volume_mounts}
    if obj["kind"] == "ConfigMap":
        assert all(re.fullmatch(r"[-._a-zA-Z0-9]+", k) for k in obj["data"])
        assert sum(len(v.encode()) for v in obj["data"].values()) < 1 << 20


# -- the deployable view -----------------------------------------------------------------------


def test_manifest_lists_every_placed_replica_once_with_catalog_numbers(setup):
    fam, plan = setup["family"], setup["plan"]
    m = build_manifest(plan, fam, plan_source="plan.json")
    assert m["schema"] == MANIFEST_SCHEMA and m["family"]["id"] == "demo-n3"
    pairs = [(e["component"], s["name"]) for s in m["servers"] for e in s["components"]]
    assert sorted(pairs) == sorted((c, s) for c, srvs in PLACEMENT3.items() for s in srvs)
    for s in m["servers"]:
        assert s["memory_bytes"] == sum(fam.component(e["component"]).memory_bytes for e in s["components"])
        assert s["macs"] == sum(fam.component(e["component"]).macs for e in s["components"])
        assert s["planned"] == plan.servers[s["name"]]
        for e in s["components"]:
            c = fam.component(e["component"])
            assert (e["memory_bytes"], e["macs"], e["params"]) == (c.memory_bytes, c.macs, c.params)
            assert e["kind"] == ("upstream" if e["component"] in fam.upstream_names else "combiner")


def test_manifest_wiring_accuracies_fallback_and_checksum(setup):
    fam, plan = setup["family"], setup["plan"]
    m = build_manifest(plan, fam)
    entries = {(e["component"], s["name"]): e for s in m["servers"] for e in s["components"]}
    # combiners name the servers of the upstreams that feed them
    assert entries[("u1+u2", "s4")]["inputs"] == [
        {"upstream": "u1", "server": "s0"},
        {"upstream": "u2", "server": "s1"},
    ]
    assert entries[("u1+u2", "s3")]["replicas"] == 2
    # upstreams say where their features go: every placed combiner that contains them
    assert entries[("u2", "s1")]["feeds"] == [
        {"combiner": "u1+u2", "servers": ["s3", "s4"]},
        {"combiner": "u2+u3", "servers": ["s4"]},
        {"combiner": "u1+u2+u3", "servers": ["s3"]},
    ]
    assert [f["combiner"] for f in entries[("u1", "s0")]["feeds"]] == ["u1+u2", "u1+u2+u3"]
    assert entries[("u2+u3", "s4")]["serves"] == ["u2+u3"] and entries[("u3", "s2")]["serves"] == ["u3"]
    # the plan's accuracies and fallback travel unchanged
    assert m["accuracy"]["expected"] == plan.expected_accuracy
    assert m["accuracy"]["all_up"] == plan.accuracy_all_up
    assert m["accuracy"]["worst_case"] == dict(plan.worst_case_accuracy)
    assert m["accuracy"]["by_subset"] == dict(fam.accuracy)
    assert m["fallback"] == [dict(f) for f in plan.fallback] and len(m["fallback"]) == 5 + 10
    # the weights file is found beside the catalog JSON and checksummed
    digest = hashlib.sha256((setup["cat"] / "demo-n3.pt").read_bytes()).hexdigest()
    assert m["weights"] == {
        "file": "demo-n3.pt",
        "path": str(setup["cat"] / "demo-n3.pt"),
        "found": True,
        "sha256": digest,
        "size_bytes": 256 * 40,
    }
    assert all(e["weights"] == {"file": "demo-n3.pt", "sha256": digest} for e in entries.values())


def test_shared_combiner_serves_several_subsets(tmp_path):
    fam = make_family(3, seed=3, fid="shared-n3", shared=True)
    cluster = make_cluster(4, seed=0, memory=(50.0, 60.0))
    plan = make_plan(fam, {"u1": ["s0"], "u2": ["s1"], "u3": ["s2"], "shared": ["s3", "s0"]}, cluster)
    m = build_manifest(plan, fam)
    shared = [e for s in m["servers"] for e in s["components"] if e["component"] == "shared"]
    assert len(shared) == 2
    assert shared[0]["serves"] == ["u1+u2", "u1+u3", "u2+u3", "u1+u2+u3"] and shared[0]["subset"] == "u1+u2+u3"
    naming = make_naming(fam, plan.placement)
    assert naming.service["shared"] == "shared-n3-shared"


def test_missing_weights_file_is_reported_without_checksum(setup):
    (setup["cat"] / "demo-n3.pt").unlink()
    result = export_plan(setup["plan_path"], "json", setup["tmp"] / "out", catalog_dir=setup["cat"])
    w = result.manifest["weights"]
    assert w["found"] is False and w["sha256"] is None and w["size_bytes"] is None
    assert any("demo-n3.pt" in x and "not found" in x for x in result.warnings)


def test_json_and_yaml_hold_the_same_data_and_are_deterministic(setup):
    a = export_plan(setup["plan_path"], "json", setup["tmp"] / "a", catalog_dir=setup["cat"])
    b = export_plan(setup["plan_path"], "yaml", setup["tmp"] / "b", catalog_dir=setup["cat"])
    assert [p.name for p in a.files] == ["manifest.json"] and [p.name for p in b.files] == ["manifest.yaml"]
    data = json.loads(a.files[0].read_text())
    assert data == yaml.safe_load(b.files[0].read_text()) == a.manifest
    again = export_plan(setup["plan_path"], "json", setup["tmp"] / "a", catalog_dir=setup["cat"])
    assert again.files[0].read_bytes() == json.dumps(data, indent=2).encode() + b"\n"
    assert not list((setup["tmp"] / "a").glob(".*.tmp"))


# -- Kubernetes --------------------------------------------------------------------------------


def test_k8s_objects_pass_the_api_schema_and_match_the_plan(setup):
    out = setup["tmp"] / "deploy"
    opts = K8sOptions(image="registry.local/mel:1", namespace="mel-edge", overhead_mib=300)
    result = export_plan(setup["plan_path"], "k8s", out, catalog_dir=setup["cat"], k8s=opts)
    objects, kust = read_objects(out)
    assert objects == [dict(o) for o in result.objects]
    assert kust["namespace"] == "mel-edge" and kust["kind"] == "Kustomization"
    assert sorted(p.name for p in out.iterdir()) == sorted(kust["resources"] + ["kustomization.yaml"])
    for obj in objects:
        assert_valid_k8s_object(obj)
        assert obj["metadata"]["namespace"] == "mel-edge"
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))
    by_kind = {k: [o for o in objects if o["kind"] == k and not is_gateway(o)] for k in MODELS}
    assert len(by_kind["ConfigMap"]) == 1
    assert len(by_kind["Service"]) == len(PLACEMENT3)
    assert len(by_kind["Deployment"]) == sum(len(v) for v in PLACEMENT3.values())
    assert sorted(o["kind"] for o in objects if is_gateway(o)) == ["Deployment", "Service"]

    fam = setup["family"]
    seen = set()
    for d in by_kind["Deployment"]:
        ann, labels = d["metadata"]["annotations"], d["metadata"]["labels"]
        comp, server = ann["melplan/component"], ann["melplan/server"]
        seen.add((comp, server))
        pod = d["spec"]["template"]["spec"]
        term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert term == [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [server]}]}]
        c = pod["containers"][0]
        assert c["image"] == "registry.local/mel:1"
        want = math.ceil((fam.component(comp).memory_bytes + 300 * MIB) * (1 + MEMORY_MARGIN) / MIB)
        assert c["resources"]["requests"]["memory"] == f"{want}Mi"
        assert c["command"] == ["python", "-m", "melplan.serve.component"]
        assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert labels["melplan/family"] == "demo-n3" and labels["melplan/server"] == server
        assert labels["melplan/subset"] == ann["melplan/subset"].replace("+", "-")
        assert labels["melplan/kind"] == ("upstream" if comp in fam.upstream_names else "combiner")
        assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"] == {"type": "Recreate"}
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["MELPLAN_COMPONENT"] == comp and env["MELPLAN_WEIGHTS"] == "/models/demo-n3.pt"
        assert env["MELPLAN_WEIGHTS_SHA256"] == result.manifest["weights"]["sha256"]
        if comp in fam.upstream_names:
            assert env["MELPLAN_FEEDS"].split(",") == [k for k in PLACEMENT3 if "+" in k and comp in k.split("+")]
        else:
            assert env["MELPLAN_INPUTS"].split(",") == comp.split("+")
    assert seen == {(c, s) for c, srvs in PLACEMENT3.items() for s in srvs}


def test_each_service_selects_exactly_its_components_pods(setup):
    result = export_plan(setup["plan_path"], "k8s", setup["tmp"] / "d", catalog_dir=setup["cat"])
    deps = [o for o in result.objects if o["kind"] == "Deployment"]
    gw_svc, gw_dep = (o for o in result.objects if is_gateway(o))
    assert [
        d for d in deps if gw_svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ] == [gw_dep]
    for svc in (o for o in result.objects if o["kind"] == "Service" and not is_gateway(o)):
        sel = svc["spec"]["selector"].items()
        picked = {
            d["metadata"]["annotations"]["melplan/server"]
            for d in deps
            if sel <= d["spec"]["template"]["metadata"]["labels"].items()
        }
        comp = svc["metadata"]["annotations"]["melplan/component"]
        assert picked == set(PLACEMENT3[comp])
    # and no Deployment's selector matches another Deployment's pods
    for a in deps:
        sel = a["spec"]["selector"]["matchLabels"].items()
        assert [b["metadata"]["name"] for b in deps if sel <= b["spec"]["template"]["metadata"]["labels"].items()] == [
            a["metadata"]["name"]
        ]


def test_configmap_holds_plan_fallback_family_and_endpoints(setup):
    result = export_plan(setup["plan_path"], "k8s", setup["tmp"] / "d", catalog_dir=setup["cat"])
    cm = next(o for o in result.objects if o["kind"] == "ConfigMap")
    plan = Plan.from_dict(json.loads(cm["data"]["plan.json"]))
    assert plan == load_plan(setup["plan_path"])
    assert json.loads(cm["data"]["fallback.json"]) == [dict(f) for f in setup["plan"].fallback]
    assert Family.from_dict(json.loads(cm["data"]["family.json"])) == setup["family"]
    endpoints = json.loads(cm["data"]["endpoints.json"])
    names = {(o["kind"], o["metadata"]["name"]) for o in result.objects}
    assert set(endpoints) == set(PLACEMENT3)
    deps = {d["metadata"]["name"]: d for d in result.objects if d["kind"] == "Deployment" and not is_gateway(d)}
    for comp, ep in endpoints.items():
        assert ("Service", ep["service"]) in names and set(ep["replicas"]) == set(PLACEMENT3[comp])
        for server, rep in ep["replicas"].items():
            pod = deps[rep["deployment"]]["spec"]["template"]["spec"]
            # the pod's DNS name inside the namespace is <hostname>.<subdomain>, subdomain = headless Service
            assert rep["host"] == f"{pod['hostname']}.{pod['subdomain']}" and pod["subdomain"] == ep["service"]
            assert deps[rep["deployment"]]["metadata"]["annotations"]["melplan/server"] == server
    hosts = [r["host"] for ep in endpoints.values() for r in ep["replicas"].values()]
    assert len(hosts) == len(set(hosts)) == len(deps)
    assert all(o["spec"]["clusterIP"] == "None" for o in result.objects if o["kind"] == "Service" and not is_gateway(o))
    # every pod mounts this ConfigMap and restarts when it changes
    for d in (o for o in result.objects if o["kind"] == "Deployment"):
        tpl = d["spec"]["template"]
        assert tpl["spec"]["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
        assert re.fullmatch(r"[0-9a-f]{64}", tpl["metadata"]["annotations"]["melplan/config-sha256"])


def test_configmap_alone_drives_the_runtime_selector(setup):
    """What a pod finds under its mount is enough to build the selector, and it agrees with the
    plan's fallback table; each route's (component, server) pairs have a pod address."""
    from melplan.runtime.selector import RuntimeSelector

    result = export_plan(setup["plan_path"], "k8s", setup["tmp"] / "d", catalog_dir=setup["cat"])
    cm = next(o for o in result.objects if o["kind"] == "ConfigMap")
    mount = setup["tmp"] / "mount"
    mount.mkdir()
    for key, text in cm["data"].items():
        (mount / key).write_text(text)
    endpoints = json.loads(cm["data"]["endpoints.json"])
    fallback = json.loads(cm["data"]["fallback.json"])
    for row in fallback:
        sel = RuntimeSelector.from_files(
            str(mount / "plan.json"), catalog_dir=str(mount / "family.json"), policy="failover-only"
        )
        for server in row["down"]:
            route = sel.mark_down(server, now=0.0)
        assert (route.answer, route.accuracy) == (row["answer"], pytest.approx(row["accuracy"]))
        for comp, server in route.components:
            assert endpoints[comp]["replicas"][server]["host"]


def test_schema_check_catches_a_missing_required_field(setup):
    """Negative control: the model check used above really rejects a broken object."""
    result = export_plan(setup["plan_path"], "k8s", setup["tmp"] / "d", catalog_dir=setup["cat"])
    dep = json.loads(json.dumps(next(o for o in result.objects if o["kind"] == "Deployment")))
    del dep["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        to_model(dep)
    svc = json.loads(json.dumps(next(o for o in result.objects if o["kind"] == "Service")))
    svc["spec"]["portz"] = svc["spec"].pop("ports")
    assert api_client().sanitize_for_serialization(to_model(svc)) != svc


def awkward_family() -> Family:
    """Names that collide once made DNS-safe: upstream 'u1-u2' beside combiner 'u1+u2', a long id."""
    names = ["u1", "u2", "u1-u2"]
    ups = tuple(
        Upstream(
            name=n,
            params=1000 * (i + 1),
            macs=10_000,
            weight_bytes=4000 * (i + 1),
            feature_bytes=64,
            activation_bytes=5 * MIB,
        )
        for i, n in enumerate(names)
    )
    combs = tuple(
        Combiner(subset=s, kind="fc", params=500, macs=500, weight_bytes=2000)
        for s in nonempty_subsets(names)
        if len(s) >= 2
    )
    acc = {subset_key(s): 0.5 + 0.1 * len(s) for s in nonempty_subsets(names)}
    return Family(
        id="9.fmnist_effb0.u3-with-a-rather-long-identifier_",
        dataset={"name": "t", "num_classes": 10},
        base="efficientnet_b0",
        training={},
        upstreams=ups,
        combiners=combs,
        accuracy=acc,
    )


def test_colliding_and_awkward_names_stay_valid_and_distinct(tmp_path):
    fam = awkward_family()
    cat = tmp_path / "cat"
    save_family(fam, cat)
    servers = ("edge-a", "edge.a", "edge_a", "node-with-a-very-long-hostname.rack-17.site-north.example")
    cluster = Cluster(tuple(Server(s, 100.0, 10.0, 0.1) for s in servers), Workload(1.0), Link(1.0, 1000.0))
    placement = {
        "u1": ["edge-a"],
        "u2": ["edge.a"],
        "u1-u2": ["edge_a"],
        "u1+u2": [servers[3], "edge-a"],
        "u1+u1-u2": ["edge.a"],
        "u2+u1-u2": ["edge_a"],
        "u1+u2+u1-u2": [servers[3]],
    }
    plan_path = tmp_path / "p.json"
    make_plan(fam, placement, cluster).save(plan_path)
    result = export_plan(plan_path, "k8s", tmp_path / "d", catalog_dir=cat)
    objects, _ = read_objects(tmp_path / "d")
    for obj in objects:
        assert_valid_k8s_object(obj)
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)) == 1 + 7 + 8 + 2  # ConfigMap, Services, Deployments, the gateway's two
    svc = {
        o["metadata"]["annotations"]["melplan/component"]: o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Service" and not is_gateway(o)
    }
    assert len(set(svc.values())) == 7 and svc["u1"].startswith("m-9-fmnist")
    assert svc["u1+u2"] != svc["u1-u2"]
    deps = [o for o in objects if o["kind"] == "Deployment" and not is_gateway(o)]
    assert {d["metadata"]["annotations"]["melplan/server"] for d in deps} == set(servers)
    # distinct components never share a component label (Service selectors stay disjoint)
    labels = {
        o["metadata"]["annotations"]["melplan/component"]: o["metadata"]["labels"]["melplan/component"] for o in deps
    }
    assert len(set(labels.values())) == len(labels) == 7
    assert result.manifest["family"]["id"] == fam.id


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abz019-_.+", min_size=1, max_size=70), min_size=1, max_size=8, unique=True))
def test_unique_names_are_valid_and_distinct(texts):
    from melplan.deploy.k8s import name_part

    names = unique_names({t: (dns_name(["fam", name_part(t)], t), t) for t in texts})
    assert len(set(names.values())) == len(texts)
    for n in names.values():
        assert len(n) <= 63 and DNS1035_RE.match(n), n
    for t in texts:
        v = label_value(t)
        assert len(v) <= 63 and LABEL_VALUE_RE.match(v) and (v == t or len(t) > 63 or not LABEL_VALUE_RE.match(t))


def test_memory_request_rounds_up_to_whole_mib():
    assert memory_request(1, 0) == "1Mi"
    assert memory_request(MIB, 0) == "1Mi"
    assert memory_request(MIB + 1, 0) == "2Mi"
    assert memory_request(3 * MIB, 256) == "259Mi"
    assert memory_request(0, 0) == "1Mi"


def test_single_model_family_exports_one_deployment(tmp_path):
    fam = make_family(1, seed=4, fid="ref-full")
    fam = dataclasses.replace(fam, extra={"role": "reference"})
    save_family(fam, tmp_path / "cat")
    plan_path = tmp_path / "p.json"
    make_plan(fam, {"u1": ["s1"]}, make_cluster(3, seed=1)).save(plan_path)
    result = export_plan(plan_path, "k8s", tmp_path / "d", catalog_dir=tmp_path / "cat")
    assert [o["kind"] for o in result.objects] == ["ConfigMap", "Service", "Service", "Deployment", "Deployment"]
    assert [is_gateway(o) for o in result.objects] == [False, False, True, False, True]
    assert result.manifest["family"]["role"] == "reference" and result.manifest["weights"] is None
    env = {e["name"]: e["value"] for e in result.objects[3]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MELPLAN_FEEDS"] == "" and "MELPLAN_WEIGHTS" not in env
    assert "--weights" not in result.objects[3]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any("names no weights file" in w for w in result.warnings)


def test_reexport_removes_only_stale_files_it_wrote(setup):
    out = setup["tmp"] / "d"
    export_plan(setup["plan_path"], "k8s", out, catalog_dir=setup["cat"])
    (out / "notes.txt").write_text("mine")
    smaller = {"u1": ["s0"], "u2": ["s1"], "u3": ["s2"], "u1+u2+u3": ["s3"]}
    plan2 = setup["tmp"] / "plan2.json"
    make_plan(setup["family"], smaller, setup["cluster"]).save(plan2)
    result = export_plan(plan2, "k8s", out, catalog_dir=setup["cat"])
    assert len(result.removed) == 3 + 2  # 3 Deployments and 2 Services gone
    objects, kust = read_objects(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(kust["resources"] + ["kustomization.yaml", "notes.txt"])
    assert len([o for o in objects if o["kind"] == "Deployment"]) == 4 + 1  # and the gateway


# -- bad input ---------------------------------------------------------------------------------


def test_bad_inputs_raise_plan_file_errors(setup):
    tmp = setup["tmp"]
    with pytest.raises(PlanFileError) as e:
        export_plan(tmp / "nope.json", "json", tmp / "o", catalog_dir=setup["cat"])
    assert "nope.json" in str(e.value) and "Fix:" in str(e.value)

    data = setup["plan"].to_dict()
    data["family"] = "ghost"
    bad = tmp / "ghost.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(PlanFileError) as e:
        load_inputs(bad, setup["cat"])
    assert e.value.field == "family" and "ghost" in str(e.value) and "demo-n3" in str(e.value)

    data = setup["plan"].to_dict()
    data["placement"]["u9"] = ["s0"]
    bad.write_text(json.dumps(data))
    with pytest.raises(PlanFileError) as e:
        load_inputs(bad, setup["cat"])
    assert e.value.field == "placement.u9"

    data = setup["plan"].to_dict()
    del data["placement"]["u2"]
    bad.write_text(json.dumps(data))
    with pytest.raises(PlanFileError, match="exactly one server"):
        load_inputs(bad, setup["cat"])

    data = setup["plan"].to_dict()
    data["placement"]["u1"] = ["edge a"]
    bad.write_text(json.dumps(data))
    # a server the plan's own cluster does not have: refused for every format (issue 11: hand-edited
    # plans that break the rules are not exported)
    for fmt in ("json", "k8s"):
        with pytest.raises(PlanFileError, match="unknown server 'edge a'"):
            export_plan(bad, fmt, tmp / "o", catalog_dir=setup["cat"])

    with pytest.raises(InputError, match="format"):
        export_plan(setup["plan_path"], "xml", tmp / "o", catalog_dir=setup["cat"])
    (tmp / "afile").write_text("")
    with pytest.raises(InputError, match="not a directory"):
        export_plan(setup["plan_path"], "json", tmp / "afile", catalog_dir=setup["cat"])
    with pytest.raises(CatalogError):
        export_plan(setup["plan_path"], "json", tmp / "o", catalog_dir=tmp / "no-catalog")
    with pytest.raises(InputError, match="namespace"):
        K8sOptions(namespace="Bad_NS")
    with pytest.raises(InputError, match="overhead"):
        K8sOptions(overhead_mib=-1)


# -- CLI ---------------------------------------------------------------------------------------


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_k8s_prints_the_deployments_and_writes_files(setup):
    out = setup["tmp"] / "deploy"
    r = run_cli(
        "export",
        "--plan",
        str(setup["plan_path"]),
        "--format",
        "k8s",
        "--out",
        str(out),
        "--catalog",
        str(setup["cat"]),
        "--overhead-mib",
        "64",
        "--namespace",
        "edge",
    )
    assert r.exit_code == 0, r.output
    assert "demo-n3-u1-u2-s4" in r.output and "+ 64 MiB runtime overhead" in r.output
    assert f"kubectl apply -k {out}" in r.output
    assert (out / "kustomization.yaml").is_file()
    r = run_cli(
        "export",
        "--plan",
        str(setup["plan_path"]),
        "--format",
        "yaml",
        "--out",
        str(out),
        "--catalog",
        str(setup["cat"]),
        "--json",
    )
    assert r.exit_code == 0
    assert json.loads(r.output)["files"] == [str(out / "manifest.yaml")]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--format", "json", "--plan", "missing.json"], "missing.json"),
        (["--format", "xml"], "xml"),
        (["--format", "json", "--namespace", "x"], "only to --format k8s"),
        (["--format", "k8s", "--namespace", "Not_Valid"], "namespace"),
        (["--format", "k8s", "--overhead-mib", "-5"], "overhead"),
    ],
)
def test_cli_bad_input_exits_2_with_one_paragraph(setup, args, needle):
    argv = ["export", "--out", str(setup["tmp"] / "o"), "--catalog", str(setup["cat"])] + args
    if "--plan" not in args:
        argv += ["--plan", str(setup["plan_path"])]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert isinstance(r.exception, SystemExit)  # a clean exit, not an escaped exception


def test_cli_unknown_family_exits_2(setup):
    data = setup["plan"].to_dict()
    data["family"] = "ghost"
    bad = setup["tmp"] / "ghost.json"
    bad.write_text(json.dumps(data))
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--plan",
            str(bad),
            "--format",
            "json",
            "--out",
            str(setup["tmp"] / "o"),
            "--catalog",
            str(setup["cat"]),
        ],
    )
    assert r.exit_code == 2 and "family 'ghost' is not in the catalog" in r.output and "Fix:" in r.output


def test_real_subprocess_and_light_imports(setup):
    out = setup["tmp"] / "sp"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "melplan",
            "export",
            "--plan",
            str(setup["plan_path"]),
            "--format",
            "json",
            "--out",
            str(out),
            "--catalog",
            str(setup["cat"]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "manifest.json").read_text())["family"]["id"] == "demo-n3"
    code = (
        "import sys, melplan.deploy.export, melplan.deploy.k8s, melplan.commands.export_cmd; "
        "print(sorted(m for m in ('torch', 'kubernetes', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr
