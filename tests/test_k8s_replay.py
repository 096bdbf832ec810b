"""The exported Kubernetes manifests run: their containers' commands, arguments and environment,
replayed as local processes, answer real Open Inference Protocol requests (tritonclient[http]) with
the labels of the family's network run here in-process on the same Fashion-MNIST test images, and
SIGTERM (what the kubelet sends) leaves no process behind.

The plan is the shipped example (``melplan plan --servers examples/cluster-4.yaml``), exported with
``melplan export --format k8s``; every Deployment in ``kustomization.yaml`` is replayed.  What the
replay changes, and nothing else:

* the ConfigMap's files are written to a local folder standing for its mount (``/etc/melplan``), and
  environment values under the mount path point into that folder;
* ``MELPLAN_HOST`` (``0.0.0.0`` in the pod) becomes ``127.0.0.1`` and ``MELPLAN_PORT`` (8080) a free
  port per container; in the gateway's arguments each replica's in-cluster URL
  (``http://<server>.<service>:8080``, its pod DNS name) becomes ``http://127.0.0.1:<its port>``;
* ``MELPLAN_WEIGHTS`` (``/models/...``, baked into the image) becomes the catalog's file, whose
  SHA-256 the component checks against ``MELPLAN_WEIGHTS_SHA256`` as it does in the pod;
* ``python`` (the image's interpreter) becomes this interpreter, with ``PYTHONPATH`` naming this checkout;
  it runs in an empty folder, as the image's working directory holds no catalog.

Then ``$(NAME)`` in command and arguments is expanded from the container's environment as the
kubelet does.  Every wait is bounded.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from serving import CLUSTER, ROOT, alive, melplan_env

MOUNT = "/etc/melplan"
START_TIMEOUT_S = 300
pytestmark = [pytest.mark.torch]

tritonclient_http = pytest.importorskip("tritonclient.http")


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's expansion of command and args: ``$(NAME)`` becomes the variable's value when the
    container defines it (else it stays as written), ``$$`` becomes ``$``."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)


def test_expand_follows_the_kubelet():
    env = {"A": "1", "B": "x y"}
    assert expand("$(A)-$(B)", env) == "1-x y"
    assert expand("$(C)", env) == "$(C)" and expand("$$(A)", env) == "$(A)" and expand("a$$b", env) == "a$b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().split(")")[-1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2]) << 20


def get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def container_command(container: dict, env: dict[str, str]) -> list[str]:
    cmd = [expand(a, env) for a in container["command"] + container.get("args", [])]
    assert cmd[0] == "python", cmd
    return [sys.executable, *cmd[1:]]


class Replay:
    """The exported objects and the local processes running their containers."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.plan = tmp / "plan.json"
        self.out = tmp / "deploy"
        for argv in (
            ["plan", "--servers", str(CLUSTER), "--out", str(self.plan)],
            ["export", "--plan", str(self.plan), "--format", "k8s", "--out", str(self.out)],
        ):
            subprocess.run(
                [sys.executable, "-m", "melplan", *argv],
                check=True,
                capture_output=True,
                env=melplan_env(),
                timeout=120,
            )
        kust = yaml.safe_load((self.out / "kustomization.yaml").read_text())
        self.objects = [yaml.safe_load((self.out / f).read_text()) for f in kust["resources"]]
        self.deployments = [o for o in self.objects if o["kind"] == "Deployment"]
        cm = next(o for o in self.objects if o["kind"] == "ConfigMap")
        self.mount = tmp / "etc-melplan"
        self.mount.mkdir()
        for key, text in cm["data"].items():
            (self.mount / key).write_text(text)
        self.endpoints = json.loads(cm["data"]["endpoints.json"])
        self.weights = Path(json.loads(self.plan.read_text())["weights"]["path"])
        self.procs: dict[str, subprocess.Popen] = {}  # Deployment name -> its replayed container
        self.ports: dict[str, int] = {}
        self.logs: dict[str, Path] = {}
        self.gateway = ""  # the gateway Deployment's name, once started
        self.workdir = tmp / "workdir"  # empty, like the image's /home/melplan
        self.workdir.mkdir()

    def local_env(self, container: dict, name: str) -> dict[str, str]:
        env = {e["name"]: e["value"] for e in container["env"]}
        for k, v in env.items():
            if v.startswith(MOUNT + "/"):
                env[k] = str(self.mount / v[len(MOUNT) + 1 :])
        assert env["MELPLAN_HOST"] == "0.0.0.0" and env["MELPLAN_PORT"] == "8080"
        env["MELPLAN_HOST"] = "127.0.0.1"
        env["MELPLAN_PORT"] = str(self.ports.setdefault(name, free_port()))
        if "MELPLAN_WEIGHTS" in env:
            assert env["MELPLAN_WEIGHTS"].startswith("/models/")
            env["MELPLAN_WEIGHTS"] = str(self.weights)
        return env

    def cluster_urls(self) -> dict[str, str]:
        """In-cluster URL of every replica (its pod DNS name) -> its replayed local URL."""
        by_deployment = {d["metadata"]["name"]: d for d in self.deployments}
        urls = {}
        for ep in self.endpoints.values():
            for rep in ep["replicas"].values():
                assert rep["deployment"] in by_deployment
                urls[f"http://{rep['host']}:{ep['port']}"] = f"http://127.0.0.1:{self.ports[rep['deployment']]}"
        return urls

    def start(self, dep: dict, args_map: dict[str, str] | None = None) -> None:
        name = dep["metadata"]["name"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = self.local_env(container, name)
        cmd = container_command(container, env)
        if args_map:
            for i, a in enumerate(cmd):
                head, eq, url = a.partition("=")
                if eq and url in args_map:
                    cmd[i] = f"{head}={args_map[url]}"
        self.logs[name] = self.tmp / f"{name}.log"
        with open(self.logs[name], "wb") as log:
            self.procs[name] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**melplan_env(), **env},
                cwd=self.workdir,
            )

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def wait_ready(self, names: list[str], path: str) -> None:
        end = time.monotonic() + START_TIMEOUT_S
        pending = list(names)
        while pending:
            for n in list(pending):
                if self.procs[n].poll() is not None:
                    pytest.fail(f"{n} exited ({self.procs[n].returncode}): {self.logs[n].read_text()[-2000:]}")
                if get(self.url(n) + path, timeout=2) == 200:
                    pending.remove(n)
            if pending and time.monotonic() > end:
                pytest.fail(f"not ready within {START_TIMEOUT_S} s: {pending}")
            time.sleep(0.2)

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def is_gateway(dep: dict) -> bool:
    return dep["metadata"]["labels"]["melplan/kind"] == "gateway"


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    r = Replay(tmp_path_factory.mktemp("k8s-replay"))
    components = [d for d in r.deployments if not is_gateway(d)]
    (gateway,) = [d for d in r.deployments if is_gateway(d)]
    try:
        for d in components:
            r.start(d)
        r.wait_ready([d["metadata"]["name"] for d in components], "/v2/health/ready")
        r.start(gateway, r.cluster_urls())
        r.gateway = gateway["metadata"]["name"]
        r.wait_ready([r.gateway], "/v2/health/ready")
        yield r
    finally:
        r.kill_all()


@pytest.fixture(scope="module")
def fmnist():
    from melplan.train.data import load_dataset

    return load_dataset("fashion-mnist", test_limit=400)


@pytest.fixture(scope="module")
def oracle(replay, fmnist):
    """Labels of every subset, computed in-process by the family's network on the same images."""
    import torch

    from melplan.core.catalog import load_catalog
    from melplan.train.data import to_input
    from melplan.train.trainer import load_weights

    family_id = json.loads(replay.plan.read_text())["family"]
    model = load_weights(load_catalog(ROOT / "catalog").get(family_id))
    x = to_input(
        fmnist.test.images, torch.tensor(fmnist.mean).view(1, -1, 1, 1), torch.tensor(fmnist.std).view(1, -1, 1, 1)
    )
    with torch.inference_mode():
        out, _ = model(x)
    return {k: v.argmax(1).numpy() for k, v in out.items()}


def test_every_placed_replica_and_the_gateway_are_replayed(replay):
    plan = json.loads(replay.plan.read_text())
    placed = {(c, s) for c, servers in plan["placement"].items() for s in servers}
    comps = {
        (d["metadata"]["annotations"]["melplan/component"], d["metadata"]["annotations"]["melplan/server"])
        for d in replay.deployments
        if not is_gateway(d)
    }
    assert comps == placed and len(replay.procs) == len(placed) + 1
    # the probes the manifests declare answer 200 on the replayed containers
    for d in replay.deployments:
        (c,) = d["spec"]["template"]["spec"]["containers"]
        for probe in ("livenessProbe", "readinessProbe"):
            assert get(replay.url(d["metadata"]["name"]) + c[probe]["httpGet"]["path"]) == 200


def test_tritonclient_through_the_replayed_gateway_matches_the_network(replay, fmnist, oracle):
    """Every answer's labels are those of the subset it names, run in-process on the same images. With
    every replica up that is the plan's all-up subset; on a loaded machine a call can miss the 1 s
    deadline and the gateway answers through a fallback subset, which must then be right too."""
    client = tritonclient_http.InferenceServerClient(replay.url(replay.gateway).split("//")[1])
    plan = json.loads(replay.plan.read_text())
    model = plan["family"]
    assert client.is_server_ready() and client.is_model_ready(model)
    images = fmnist.test.images.numpy()[:, 0]
    got, want, subsets = [], [], []
    for i in range(0, len(images), 50):
        for binary in (True, False):
            inp = tritonclient_http.InferInput("input", [len(images[i : i + 50]), 28, 28], "UINT8")
            inp.set_data_from_numpy(images[i : i + 50], binary_data=binary)
            out = tritonclient_http.InferRequestedOutput("label", binary_data=binary)
            r = client.infer(model, [inp], outputs=[out])
            key = r.get_response()["parameters"]["subset"]
            subsets.append(key)
            got.append(r.as_numpy("label"))
            want.append(oracle[key][i : i + 50])
    got_all, want_all = np.concatenate(got), np.concatenate(want)
    assert len(got_all) == 800
    assert (got_all == want_all).mean() >= 0.9975  # same network and images (float sums may differ in order)
    all_up = [k for k in set(subsets) if plan["family_entry"]["accuracy"][k] == pytest.approx(plan["accuracy_all_up"])]
    assert all_up and subsets.count(all_up[0]) >= len(subsets) // 2, subsets


def test_memory_requests_cover_the_measured_peak(replay):
    """Each replayed process's peak resident memory (VmHWM, after the requests above) fits in the memory
    request its manifest makes: the request is the measured figure plus the stated margin."""
    rows = []
    for d in replay.deployments:
        name = d["metadata"]["name"]
        (c,) = d["spec"]["template"]["spec"]["containers"]
        request = mebibytes(c["resources"]["requests"]["memory"])
        peak = peak_rss_bytes(replay.procs[name].pid)
        rows.append((name, round(peak / 2**20, 1), request >> 20))
        assert peak <= request, (name, peak, request)
    print("\nreplayed container peak RSS MiB vs request MiB:", rows)


def test_tampered_weights_are_refused_at_start(replay):
    """The component checks the baked-in weights against MELPLAN_WEIGHTS_SHA256 before loading them."""
    dep = next(d for d in replay.deployments if not is_gateway(d))
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env = replay.local_env(container, "tampered")
    bad = replay.tmp / "tampered.pt"
    shutil.copyfile(replay.weights, bad)
    with open(bad, "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    env["MELPLAN_WEIGHTS"] = str(bad)
    p = subprocess.run(
        container_command(container, env),
        capture_output=True,
        text=True,
        env={**melplan_env(), **env},
        cwd=replay.workdir,
        timeout=120,
    )
    assert p.returncode == 2 and "sha256 does not match" in p.stderr and "Traceback" not in p.stderr


def test_sigterm_leaves_no_process_behind(replay):
    pids = {n: p.pid for n, p in replay.procs.items()}
    below = set().union(*(descendants(pid) for pid in pids.values()))
    for p in replay.procs.values():
        p.send_signal(signal.SIGTERM)
    for n, p in replay.procs.items():
        assert p.wait(timeout=30) == 0, (n, replay.logs[n].read_text()[-1000:])
    end = time.monotonic() + 10
    while any(alive(x) for x in below) and time.monotonic() < end:
        time.sleep(0.1)
    assert not [x for x in set(pids.values()) | below if alive(x)]
