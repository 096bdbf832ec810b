"""The exported Kubernetes objects of the shipped example plan, without a cluster and without torch:
``kubectl kustomize`` renders them (where Debian's ``kubectl`` is installed), the containers'
arguments are complete (every ``$(NAME)`` defined, one gateway ``--component`` per placed replica
at its pod DNS name), the standalone gateway refuses bad arguments with one paragraph and binds
127.0.0.1 unless told otherwise, and the Dockerfile bakes every shipped weights file where the
manifests look for it.  (The replay of the containers as processes is tests/test_k8s_replay.py.)"""

from __future__ import annotations

import json
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from serving import ROOT, make_plan, melplan_env

from melplan.core.catalog import load_catalog
from melplan.deploy.export import export_plan
from melplan.deploy.k8s import K8sOptions
from melplan.serve.launcher import check_endpoints, parse_endpoint

VAR_RE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k8s-render")
    plan = make_plan(tmp / "plan.json")
    out = tmp / "deploy"
    result = export_plan(plan, "k8s", out, k8s=K8sOptions(namespace="mel-edge"))
    return {"tmp": tmp, "plan": plan, "out": out, "result": result}


def _containers(objects):
    for o in objects:
        if o["kind"] == "Deployment":
            yield o, o["spec"]["template"]["spec"]["containers"][0]


def test_kubectl_kustomize_renders_exactly_the_export(exported):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubernetes-client; .ci/run installs it)")
    p = subprocess.run([kubectl, "kustomize", str(exported["out"])], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rendered = [d for d in yaml.safe_load_all(p.stdout) if d]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    want = {key(o): o for o in exported["result"].objects}
    got = {key(o): o for o in rendered}
    assert set(got) == set(want) and len(rendered) == len(want)
    for k, obj in want.items():
        assert got[k] == obj, k  # kustomize adds nothing: the namespace is already on every object
        assert got[k]["metadata"]["namespace"] == "mel-edge"


def test_every_argument_reference_is_defined_and_the_gateway_knows_every_replica(exported):
    objects = exported["result"].objects
    for dep, c in _containers(objects):
        env = {e["name"] for e in c["env"]}
        refs = {m for a in c["command"] + c["args"] for m in VAR_RE.findall(a)}
        assert refs and refs <= env, (dep["metadata"]["name"], refs - env)  # the kubelet leaves unknown ones as text
        assert c["command"][:2] == ["python", "-m"]
        assert {"MELPLAN_HOST": "0.0.0.0"}.items() <= {e["name"]: e["value"] for e in c["env"]}.items()
        assert ["--host", "$(MELPLAN_HOST)"] == c["args"][c["args"].index("--host") :][:2]
    (gw,) = [c for d, c in _containers(objects) if d["metadata"]["labels"]["melplan/kind"] == "gateway"]
    assert gw["command"] == ["python", "-m", "melplan.serve.gateway"]
    cm = next(o for o in objects if o["kind"] == "ConfigMap")
    endpoints = json.loads(cm["data"]["endpoints.json"])
    specs = [gw["args"][i + 1] for i, a in enumerate(gw["args"]) if a == "--component"]
    parsed = [parse_endpoint(s) for s in specs]
    from melplan.core.plan import load_plan

    plan = load_plan(exported["plan"])
    check_endpoints(plan, parsed, "plan.json")  # one per placed replica, no other
    for e in parsed:
        ep = endpoints[e.component]
        assert e.url == f"http://{ep['replicas'][e.server]['host']}:{ep['port']}"
    # the gateway runs on the plan's ingress server
    aff = next(d for d, c in _containers(objects) if c is gw)["spec"]["template"]["spec"]["affinity"]
    term = aff["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"][0]["values"] == [plan.cluster.ingress] == ["edge-a"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--component", "u1=edge-a"], "is not COMPONENT@SERVER=URL"),
        (["--component", "u1@edge-a=ftp://x"], "is not COMPONENT@SERVER=URL"),
        (["--component", "u1@edge-a=http://127.0.0.1:1"], "--component missing"),
        (["--timeout-ms", "0"], "--timeout-ms must be > 0"),
    ],
)
def test_standalone_gateway_bad_arguments_exit_2_with_one_paragraph(exported, args, needle):
    p = subprocess.run(
        [sys.executable, "-m", "melplan.serve.gateway", "--plan", str(exported["plan"]), *args],
        capture_output=True,
        text=True,
        env=melplan_env(),
        timeout=60,
    )
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("Error: ") and p.stderr.count("\n") == 1


def test_parse_endpoint_reads_what_the_export_writes():
    from melplan.core.errors import InputError
    from melplan.deploy.k8s import endpoint_arg

    e = parse_endpoint(endpoint_arg("u1+u2", "edge.a", "http://edge-a.fam-u1-u2:8080/"))
    assert (e.component, e.server, e.url) == ("u1+u2", "edge.a", "http://edge-a.fam-u1-u2:8080")
    with pytest.raises(InputError):
        parse_endpoint("@edge-a=http://x")


def test_standalone_gateway_binds_127_0_0_1_by_default_and_stops_on_sigterm(exported):
    pytest.importorskip("prometheus_client")
    plan = json.loads(exported["plan"].read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    comps = [f"--component={c}@{srv}=http://127.0.0.1:9" for c, ss in plan["placement"].items() for srv in ss]
    p = subprocess.Popen(
        [sys.executable, "-m", "melplan.serve.gateway", "--plan", str(exported["plan"]), "--port", str(port), *comps],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=melplan_env(),
    )
    try:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 60)
        assert ready, "the gateway printed nothing within 60 s"
        event = json.loads(p.stdout.readline())
        assert event["event"] == "listening" and event["port"] == port and event["model"] == plan["family"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=10) as r:
            assert r.status == 200
        try:  # no component answers (port 9): live, never ready
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10)
            raise AssertionError("ready without components")
        except urllib.error.HTTPError as e:
            assert e.code == 503
        addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
        for a in addrs:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((a, port)) != 0
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def test_dockerfile_bakes_every_shipped_weights_file_where_the_manifests_look():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "download.pytorch.org/whl/cpu" in text and re.search(r"TORCH_VERSION=\d+\.\d+\.\d+", text)
    assert re.search(r"^USER 10001", text, re.M) and re.search(r"^EXPOSE 8080", text, re.M)
    assert "cp catalog/*/weights/*.pt /models/weights/" in text
    baked = {p.name for p in ROOT.glob("catalog/*/weights/*.pt")}
    assert len(baked) == len(list(ROOT.glob("catalog/*/weights/*.pt")))  # no two files would collide
    opts = K8sOptions()
    for fam in load_catalog(ROOT / "catalog"):
        if fam.weights and fam.source and (Path(fam.source).parent / fam.weights).is_file():
            # MELPLAN_WEIGHTS = <weights_dir>/<the entry's weights path>; the image has it
            assert fam.weights.startswith("weights/") and fam.weights.count("/") == 1, fam.weights
            assert f"{opts.weights_dir}/{fam.weights}" == f"/models/weights/{Path(fam.weights).name}"
            assert Path(fam.weights).name in baked
    ignore = (ROOT / ".dockerignore").read_text().split()
    for needed in ("pyproject.toml", "setup.py", "README.md", "melplan", "catalog"):
        assert f"!{needed}" in ignore


def test_gateway_probe_and_service(exported):
    objects = exported["result"].objects
    gw = [o for o in objects if o["metadata"]["labels"].get("melplan/kind") == "gateway"]
    svc, dep = sorted(gw, key=lambda o: o["kind"], reverse=True)
    assert svc["kind"] == "Service" and svc["spec"]["type"] == "ClusterIP"
    c = dep["spec"]["template"]["spec"]["containers"][0]
    # ready = the gateway answers; /v2/health/ready (every component up) would drop it from its Service
    # exactly when a server fails and MEL should answer from the fallback table (docs/design-notes.md)
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert svc["spec"]["ports"][0]["targetPort"] == "http" == c["ports"][0]["name"]
