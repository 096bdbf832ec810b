"""`melplan serve` end to end: real processes, the official Open Inference Protocol client
(tritonclient[http], binary and JSON tensors), plain HTTP, malformed requests, SIGKILL failover and
SIGTERM cleanup.  One deployment is started for the whole module (its processes load torch once);
every wait is bounded.  The oracle for the answers is the family's network run here in-process on
the same Fashion-MNIST test images."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "examples" / "cluster-4.yaml"
pytestmark = [pytest.mark.torch]

tritonclient_http = pytest.importorskip("tritonclient.http")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    plan = tmp / "plan.json"
    subprocess.run(
        [sys.executable, "-m", "melplan", "plan", "--servers", str(CLUSTER), "--out", str(plan)],
        check=True,
        capture_output=True,
        env=_env(),
        timeout=120,
    )
    run_dir = tmp / "run"
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "melplan",
            "serve",
            "--plan",
            str(plan),
            "--port",
            "0",
            "--run-dir",
            str(run_dir),
            "--no-restart",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    dep_file = run_dir / "deployment.json"
    end = time.monotonic() + 300
    while not dep_file.exists():
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            pytest.fail("melplan serve did not start: " + (tmp / "serve.log").read_text()[-2000:])
        time.sleep(0.2)
    dep = json.loads(dep_file.read_text())
    info = {"proc": proc, "dep": dep, "plan": json.loads(plan.read_text()), "log": tmp / "serve.log", "run": run_dir}
    yield info
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    for c in dep["components"]:
        if _alive(c["pid"]):
            os.kill(c["pid"], signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def fmnist():
    from melplan.train.data import load_dataset

    ds = load_dataset("fashion-mnist", test_limit=400)
    return ds


@pytest.fixture(scope="module")
def oracle(deployment, fmnist):
    """Labels of every subset computed in-process by the family's network on the same images."""
    import torch

    from melplan.core.catalog import load_catalog
    from melplan.train.data import to_input
    from melplan.train.trainer import load_weights

    fam = load_catalog(ROOT / "catalog").get(deployment["dep"]["model"])
    model = load_weights(fam)
    x = to_input(
        fmnist.test.images, torch.tensor(fmnist.mean).view(1, -1, 1, 1), torch.tensor(fmnist.std).view(1, -1, 1, 1)
    )
    with torch.inference_mode():
        out, _ = model(x)
    return {k: v.argmax(1).numpy() for k, v in out.items()}


def _client(deployment):
    return tritonclient_http.InferenceServerClient(deployment["dep"]["gateway"]["url"].split("//")[1])


def _infer(client, model, images, *, binary=True):
    inp = tritonclient_http.InferInput("input", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images, binary_data=binary)
    outs = [
        tritonclient_http.InferRequestedOutput("label", binary_data=binary),
        tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    return client.infer(model, [inp], outputs=outs)


def _post(url, body: bytes, headers=None):
    req = urllib.request.Request(url, data=body, headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_deployment_file_and_health(deployment):
    dep = deployment["dep"]
    assert set(dep) == {"gateway", "model", "components"}
    assert dep["gateway"]["url"].startswith("http://127.0.0.1:")
    placed = sorted((c, s) for c, ss in deployment["plan"]["placement"].items() for s in ss)
    assert sorted((c["component"], c["server"]) for c in dep["components"]) == placed
    client = _client(deployment)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(dep["model"])
    meta = client.get_model_metadata(dep["model"])
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert {(i["name"], i["datatype"]) for i in meta["inputs"]} == {("input", "UINT8"), ("input", "FP32")}
    for c in dep["components"]:
        with urllib.request.urlopen(c["url"] + "/v2/health/ready", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{c['url']}/v2/models/{c['component']}", timeout=10) as r:
            meta = json.loads(r.read())
        assert meta["parameters"]["rss_bytes"] > 0 and meta["parameters"]["load_s"] > 0
    # the gateway listens on 127.0.0.1 only
    port = int(dep["gateway"]["url"].rsplit(":", 1)[1])
    addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    for a in addrs:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((a, port)) != 0


def test_tritonclient_binary_matches_the_network(deployment, fmnist, oracle):
    client = _client(deployment)
    model = deployment["dep"]["model"]
    images = fmnist.test.images.numpy()[:, 0]
    labels, subsets = [], set()
    for i in range(0, len(images), 50):
        r = _infer(client, model, images[i : i + 50])
        labels.append(r.as_numpy("label"))
        p = r.get_response()["parameters"]
        subsets.add(p["subset"])
        assert p["degraded"] is False and r.as_numpy("probabilities").shape == (len(labels[-1]), 10)
    assert len(subsets) == 1  # every server up: one route, the plan's all-up answer
    (key,) = subsets
    got = np.concatenate(labels)
    assert (got == oracle[key]).mean() >= 0.9975  # same network, same images (float sums may differ in order)
    acc = (got == fmnist.test.labels.numpy()).mean()
    assert abs(acc - (oracle[key] == fmnist.test.labels.numpy()).mean()) <= 0.0025


def test_tritonclient_json_tensors_agree_with_binary(deployment, fmnist):
    client = _client(deployment)
    model = deployment["dep"]["model"]
    images = fmnist.test.images.numpy()[:8, 0]
    a = _infer(client, model, images, binary=True)
    b = _infer(client, model, images, binary=False)
    np.testing.assert_array_equal(a.as_numpy("label"), b.as_numpy("label"))
    np.testing.assert_allclose(a.as_numpy("probabilities"), b.as_numpy("probabilities"), rtol=1e-5, atol=1e-6)


def test_client_example_against_the_deployment(deployment, fmnist, oracle):
    """examples/client.py (the quickstart's tritonclient step) reads deployment.json and reports, per
    request, the answering subset and how many labels were right: checked against the network here."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "client.py"), "--run-dir", str(deployment["run"]), "--images", "40"]
        + ["--batch", "20"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    truth = fmnist.test.labels.numpy()
    for i, line in enumerate(lines[:2]):
        right = int(line.split(": ", 1)[1].split("/", 1)[0])
        key = line.split("answered by ", 1)[1].split(" ", 1)[0]
        want = int((oracle[key][20 * i : 20 * i + 20] == truth[20 * i : 20 * i + 20]).sum())
        assert abs(right - want) <= 1, (line, want)
        assert line.startswith(f"images {20 * i}-{20 * i + 19}: ") and "degraded false" in line
    assert lines[2].startswith("40 of 40 images answered, 0 request(s) failed; accuracy ")


def test_plain_http_json_and_fp32(deployment, fmnist):
    url = deployment["dep"]["gateway"]["url"] + f"/v2/models/{deployment['dep']['model']}/infer"
    img = fmnist.test.images.numpy()[:2, 0]
    body = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [2, 28, 28], "data": img.tolist()}]}
    status, out = _post(url, json.dumps(body).encode())
    assert status == 200, out
    names = {o["name"]: o for o in out["outputs"]}
    assert names["label"]["datatype"] == "INT64" and names["label"]["shape"] == [2]
    assert names["probabilities"]["shape"] == [2, 10]
    assert set(out["parameters"]) >= {"subset", "servers", "degraded"}
    # FP32 already preprocessed gives the same labels
    from melplan.core.preprocessing import from_record

    fam = json.loads((deployment["run"] / "family.json").read_text())
    x = from_record(fam["dataset"]["preprocessing"]).apply(img)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    status, out2 = _post(url, json.dumps(body).encode())
    assert status == 200 and out2["outputs"][0]["data"] == names["label"]["data"]


@pytest.mark.parametrize(
    "tensor, fragment",
    [
        ({"name": "input", "datatype": "UINT8", "shape": [1, 27, 27], "data": [0] * 729}, "shape"),
        ({"name": "input", "datatype": "INT32", "shape": [1, 28, 28], "data": [0] * 784}, "datatype"),
        ({"name": "input", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 783}, "elements"),
        ({"name": "input", "datatype": "UINT8", "shape": [1, 28, 28], "data": [300] * 784}, "does not fit"),
        ({"name": "pixels", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}, "unknown input"),
        ({"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 31], "data": [0.0] * 2976}, "shape"),
    ],
)
def test_malformed_requests_get_400(deployment, tensor, fragment):
    url = deployment["dep"]["gateway"]["url"] + f"/v2/models/{deployment['dep']['model']}/infer"
    status, out = _post(url, json.dumps({"inputs": [tensor]}).encode())
    assert status == 400 and fragment in out["error"]


def test_binary_size_mismatch_unknown_model_and_bad_json(deployment):
    base = deployment["dep"]["gateway"]["url"]
    model = deployment["dep"]["model"]
    head = json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "UINT8", "shape": [1, 28, 28], "parameters": {"binary_data_size": 700}}
            ]
        }
    ).encode()
    status, out = _post(
        f"{base}/v2/models/{model}/infer",
        head + bytes(700),
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
    )
    assert status == 400 and "needs 784" in out["error"]
    status, out = _post(f"{base}/v2/models/nope/infer", b'{"inputs": []}')
    assert status == 404 and "unknown model" in out["error"]
    status, out = _post(f"{base}/v2/models/{model}/infer", b"{not json")
    assert status == 400 and "JSON" in out["error"]


def test_body_over_the_limit_gets_413_without_reading_it(deployment):
    port = int(deployment["dep"]["gateway"]["url"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"POST /v2/models/{deployment['dep']['model']}/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {64 << 20}\r\n\r\n".encode()
        )
        data = b""
        while b"over the limit" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        data = data.decode()
    assert data.startswith("HTTP/1.1 413") and "over the limit" in data
    assert _client(deployment).is_server_ready()


def test_metrics(deployment):
    with urllib.request.urlopen(deployment["dep"]["gateway"]["url"] + "/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "melplan_requests_total{" in text and "melplan_request_latency_seconds_bucket" in text
    assert 'melplan_component_up{component="u1",server="edge-a"} 1.0' in text
    assert "melplan_route_changes_total" in text


def test_sigkill_of_components_fails_no_request(deployment, fmnist):
    """Kill an upstream, then the combiner's process, under load: every request is answered."""
    client = _client(deployment)
    model = deployment["dep"]["model"]
    images = fmnist.test.images.numpy()[:, 0]
    results: list[tuple[float, str, str]] = []
    errors: list[str] = []
    stop = threading.Event()

    def load():
        c = _client(deployment)
        i = 0
        while not stop.is_set():
            try:
                r = _infer(c, model, images[i % 400 : i % 400 + 1])
                p = r.get_response()["parameters"]
                results.append((time.monotonic(), p["subset"], p["servers"]))
            except Exception as exc:  # noqa: BLE001 - any failure counts
                errors.append(f"{type(exc).__name__}: {exc}")
            i += 1
            time.sleep(0.005)

    t = threading.Thread(target=load)
    t.start()
    try:
        comps = {c["component"]: c for c in deployment["dep"]["components"]}
        time.sleep(1.0)
        route0 = results[-1][1]
        os.kill(comps["u1"]["pid"], signal.SIGKILL)
        time.sleep(1.5)
        n1 = len(results)
        combiner = next(c for c in comps if c not in ("u1", "u2", "u3"))
        os.kill(comps[combiner]["pid"], signal.SIGKILL)
        time.sleep(1.5)
    finally:
        stop.set()
        t.join(timeout=30)
    assert not errors, errors[:3]
    assert route0 == results[0][1] and "u1" in route0.split("+")
    dead = {comps["u1"]["server"], comps[combiner]["server"]}
    assert all(comps["u1"]["server"] not in s.split(",") for _, _, s in results[n1 - 5 :])
    assert all(not dead & set(s.split(",")) for _, _, s in results[-5:]), results[-5:]
    assert len(results) > 100
    assert client.is_server_live()


def test_sigterm_stops_every_process(deployment):
    proc = deployment["proc"]
    pids = [c["pid"] for c in deployment["dep"]["components"]]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    end = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
    assert not (deployment["run"] / "deployment.json").exists()
