"""Process helpers shared by the tests that run the real serving programs (`melplan plan`, `melplan
serve`) as subprocesses: one place for how they are started, waited for and stopped."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "examples" / "cluster-4.yaml"


def melplan_env() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH (the subprocess imports this tree)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def alive(pid: int) -> bool:
    """Is ``pid`` running? A zombie (exited, not yet reaped) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def make_plan(out: Path, *args: str, cluster: Path = CLUSTER) -> Path:
    """``melplan plan --servers CLUSTER ARGS --out OUT`` in a subprocess; returns ``out``."""
    subprocess.run(
        [sys.executable, "-m", "melplan", "plan", "--servers", str(cluster), *args, "--out", str(out)],
        check=True,
        capture_output=True,
        env=melplan_env(),
        timeout=120,
    )
    return out


class RouteOracle:
    """What the gateway of a plan must answer with some servers down: the best accuracy of a servable
    subset (tests/oracle.py, the brute-force oracle, independent of the selector the gateway runs).
    The gateway is the ingress, so, as in `melplan serve`, the cluster's ingress does not count.
    Computed from the plan file: nothing here knows which family the shipped catalog makes win."""

    def __init__(self, plan: Path) -> None:
        from melplan.core.plan import load_plan_bundle

        b = load_plan_bundle(plan)
        assert b.cluster is not None
        self.family, self.placement = b.family, {k: tuple(v) for k, v in b.plan.placement.items()}
        self.cluster = dataclasses.replace(b.cluster, ingress=None)
        self.ingress = b.cluster.ingress

    def best(self, down: set[str] | frozenset[str] = frozenset()) -> tuple[float, set[str]]:
        """(best accuracy, the subset keys with that accuracy) with ``down`` down and every other server up."""
        import oracle

        up = frozenset(self.cluster.names) - set(down)
        acc = oracle.best_accuracy(self.family, self.placement, self.cluster, up)
        return acc, ({k for k, a in self.family.accuracy.items() if a == acc} if acc > 0 else set())

    def server_of(self, component: str) -> str:
        return self.placement[component][0]

    def in_route(self, subset: str, component: str) -> bool:
        """Does an answer of ``subset`` need ``component``? (its upstreams, or a combiner serving it)"""
        members = tuple(subset.split("+"))
        if component in self.family.upstream_names:
            return component in members
        return len(members) > 1 and members in self.family.combiner(component).serves

    def uses(self, subset: str, servers: str, component: str, server: str) -> bool:
        """Did an answer of ``subset`` through ``servers`` go through ``component`` on ``server``?"""
        return server in servers.split(",") and self.in_route(subset, component)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST ``body`` to ``url``; the status and the JSON reply, for errors (4xx/5xx) as well."""
    req = urllib.request.Request(url, data=body, headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def serving(plan: Path, tmp: Path, *args: str, start_timeout: float = 300) -> Iterator[dict[str, Any]]:
    """``melplan serve --plan PLAN --port 0 --run-dir TMP/run ARGS`` until its deployment.json exists.
    Yields ``{"proc", "dep" (deployment.json), "dep_file", "log", "run"}``; stops it (SIGTERM) on exit."""
    run = tmp / "run"
    log = tmp / "serve.log"
    with open(log, "wb") as fh:
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
                str(run),
                *args,
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=melplan_env(),
        )
    try:
        dep_file = run / "deployment.json"
        end = time.monotonic() + start_timeout
        while not dep_file.exists():
            if proc.poll() is not None or time.monotonic() > end:
                pytest.fail("melplan serve did not start: " + log.read_text()[-2000:])
            time.sleep(0.2)
        yield {"proc": proc, "dep": json.loads(dep_file.read_text()), "dep_file": dep_file, "log": log, "run": run}
    finally:
        stop(proc)
