"""`melplan select` and `melplan simulate` through click's CliRunner and a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from factories import make_family, make_single

from melplan.cli import main
from melplan.core.catalog import save_family
from melplan.core.cluster import Cluster, Link, Server, Workload, dump_cluster_yaml
from melplan.core.fileio import atomic_write_text
from melplan.core.plan import Plan

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def files(tmp_path):
    fam = replace(make_family(2, seed=3), accuracy={"u1": 0.80, "u2": 0.70, "u1+u2": 0.90})
    ref = make_single("full", params=1_000_000, accuracy=0.95, role="reference", dataset=fam.dataset)
    small = make_single("small", params=100_000, accuracy=0.85, role="backup", dataset=fam.dataset)
    for f in (fam, ref, small):
        save_family(f, tmp_path / "cat")
    servers = tuple(
        Server(n, 256.0, 50.0, p) for n, p in (("a", 0.05), ("b", 0.05), ("c", 0.05), ("d", 0.001), ("e", 0.002))
    )
    cluster = Cluster(servers, Workload(10.0, None), Link(1.0, 1000.0), (), None)
    atomic_write_text(tmp_path / "cluster.yaml", dump_cluster_yaml(cluster))
    Plan(fam.id, {"u1": ("a",), "u2": ("b",), "u1+u2": ("c",)}, "expected", 0.0, 0.0, {}).save(tmp_path / "plan.json")
    atomic_write_text(tmp_path / "trace.csv", "time_s,server,state\n3600,b,down\n10800,b,up\n14400,a,up\n")
    return tmp_path


def run(args, tmp_path):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_select_text_and_json(files):
    base = ["select", "--plan", str(files / "plan.json"), "--catalog", str(files / "cat")]
    r = run(base, files)
    assert r.exit_code == 0 and "every server up: u1+u2 answers with accuracy 0.9000" in r.output
    r = run(base + ["--down", "b"], files)
    assert r.exit_code == 0 and "u1 answers with accuracy 0.8000 (degraded" in r.output and "u1 on a" in r.output
    r = run(base + ["--down", "a, b", "--json"], files)
    d = json.loads(r.output)
    assert d["answer"] is None and d["down"] is True and d["accuracy"] == 0.0 and d["servers"] == []
    assert d["down_servers"] == ["a", "b"]
    r = run(base + ["--down", "c", "--json", "--servers", str(files / "cluster.yaml")], files)
    d = json.loads(r.output)
    assert {"answer", "accuracy", "servers", "degraded", "down"} <= set(d)
    assert d["answer"] == "u1" and d["servers"] == ["a"] and d["latency_ms"] is not None


def test_select_servers_outside_the_plan_need_the_cluster(files):
    base = ["select", "--plan", str(files / "plan.json"), "--catalog", str(files / "cat")]
    r = run(base + ["--down", "d"], files)
    assert r.exit_code == 2 and "unknown server 'd'" in r.stderr and "--servers" in r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1
    r = run(base + ["--down", "d", "--servers", str(files / "cluster.yaml")], files)
    assert r.exit_code == 0 and "Not used by the plan" in r.output and "u1+u2 answers" in r.output
    r = run(base + ["--down", "zz", "--servers", str(files / "cluster.yaml")], files)
    assert r.exit_code == 2 and "not in the cluster" in r.stderr


def test_select_bad_files_exit_2(files):
    (files / "broken.json").write_text("{not json")
    r = run(["select", "--plan", str(files / "broken.json"), "--catalog", str(files / "cat")], files)
    assert r.exit_code == 2 and "broken.json" in r.stderr and "Traceback" not in r.output
    other = json.loads((files / "plan.json").read_text())
    other["family"] = "no-such-family"
    (files / "other.json").write_text(json.dumps(other))
    r = run(["select", "--plan", str(files / "other.json"), "--catalog", str(files / "cat")], files)
    assert r.exit_code == 2 and "no-such-family" in r.stderr


def test_simulate_trace_json_matches_a_hand_computation(files):
    r = run(
        [
            "simulate",
            "--plan",
            str(files / "plan.json"),
            "--servers",
            str(files / "cluster.yaml"),
            "--catalog",
            str(files / "cat"),
            "--trace",
            str(files / "trace.csv"),
            "--policy",
            "failover-only",
            "--detection",
            "0",
            "--json",
        ],
        files,
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    plan = d["strategies"][0]
    assert plan["key"] == "plan" and d["hours"] == 4.0 and d["events"] == 3 and d["dropped_after_horizon"] == 0
    assert plan["accuracy"] == pytest.approx((1 * 0.9 + 2 * 0.8 + 1 * 0.9) / 4, abs=1e-6)
    assert plan["availability"] == 1.0
    assert [s["key"] for s in d["strategies"]] == ["plan", "cold-restart", "backup", "cloud"]
    assert d["floor"] == pytest.approx(0.9 * 0.95) and "best single model" in d["floor_source"]


def test_simulate_generated_trace_table_plot_and_replay(files):
    args = [
        "simulate",
        "--plan",
        str(files / "plan.json"),
        "--servers",
        str(files / "cluster.yaml"),
        "--catalog",
        str(files / "cat"),
        "--policy",
        "failover-only",
    ]
    r = run(
        args
        + [
            "--hours",
            "500",
            "--seed",
            "4",
            "--plot",
            str(files / "out" / "sim.png"),
            "--write-trace",
            str(files / "gen.csv"),
        ],
        files,
    )
    assert r.exit_code == 0, r.output
    for needle in (
        "strategy",
        "availability",
        "below floor (h)",
        "plan: ",
        "cold restart",
        "smaller backup",
        "cloud failover",
        "Assumptions:",
        "seed=4",
    ):
        assert needle in r.output, needle
    assert (files / "out" / "sim.png").read_bytes()[:4] == b"\x89PNG"
    first = json.loads(run(args + ["--hours", "500", "--seed", "4", "--json"], files).output)
    again = json.loads(run(args + ["--trace", str(files / "gen.csv"), "--hours", "500", "--json"], files).output)
    assert [s.get("accuracy") for s in first["strategies"]] == [s.get("accuracy") for s in again["strategies"]]
    assert first["seed"] == 4 and again["seed"] is None


def test_simulate_input_errors_exit_2(files):
    base = [
        "simulate",
        "--plan",
        str(files / "plan.json"),
        "--servers",
        str(files / "cluster.yaml"),
        "--catalog",
        str(files / "cat"),
    ]
    r = run(base, files)
    assert r.exit_code == 2 and "--trace" in r.stderr and "--hours" in r.stderr
    (files / "bad.csv").write_text("time_s,server,state\n10,a,sideways\n")
    r = run(base + ["--trace", str(files / "bad.csv")], files)
    assert r.exit_code == 2 and "line 2" in r.stderr and "bad.csv" in r.stderr and "Traceback" not in r.output
    r = run(base + ["--trace", str(files / "trace.csv"), "--hours", "2", "--policy", "failover-only"], files)
    assert r.exit_code == 0 and "2 row(s) after the horizon ignored" in r.output
    r = run(base + ["--hours", "-3"], files)
    assert r.exit_code == 2 and "--hours" in r.stderr
    r = run(base + ["--hours", "10", "--grace", "-1"], files)
    assert r.exit_code == 2 and "--grace" in r.stderr  # refused when parsed, naming the option
    r = run(base + ["--hours", "10", "--floor", "2"], files)
    assert r.exit_code == 2 and "floor" in r.stderr


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_real_subprocesses(files):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "melplan",
            "select",
            "--plan",
            str(files / "plan.json"),
            "--catalog",
            str(files / "cat"),
            "--down",
            "a",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["answer"] == "u2"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "melplan",
            "simulate",
            "--plan",
            str(files / "plan.json"),
            "--servers",
            str(files / "cluster.yaml"),
            "--catalog",
            str(files / "cat"),
            "--trace",
            str(files / "trace.csv"),
            "--policy",
            "failover-only",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["strategies"][0]["availability"] < 1.0  # 10 s detection at 1 h
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "melplan",
            "select",
            "--plan",
            str(files / "plan.json"),
            "--catalog",
            str(files / "cat"),
            "--down",
            "nope",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert out.returncode == 2 and out.stderr.startswith("Error: ") and "Traceback" not in out.stderr
