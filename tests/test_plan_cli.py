"""`melplan plan` through click's CliRunner and one real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from factories import make_family

from melplan.cli import main
from melplan.core.catalog import save_family
from melplan.core.evaluate import evaluate_placement
from melplan.core.plan import load_plan

ROOT = Path(__file__).resolve().parent.parent
CLUSTER4 = ROOT / "examples" / "cluster-4.yaml"
EDGE12 = ROOT / "examples" / "edge-site-12.yaml"


@pytest.fixture()
def catalog_dir(tmp_path):
    d = tmp_path / "catalog"
    fams = [
        make_family(1, seed=1, fid="ref-full"),
        make_family(1, seed=5, fid="backup-small", params_scale=20_000),
        make_family(2, seed=2, fid="mel-2"),
        make_family(3, seed=4, shared=True, fid="mel-3-shared"),
    ]
    for f in fams:
        save_family(f, d)
    return d


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_plan_prints_choice_families_placement_fallbacks_and_single_model(catalog_dir, tmp_path):
    out = tmp_path / "plan.json"
    r = run("plan", "--servers", CLUSTER4, "--catalog", catalog_dir, "--out", out)
    assert r.exit_code == 0, r.output
    text = r.output
    for piece in (
        "Chosen: ",
        "why: highest expected accuracy",
        "Families considered",
        "Placement",
        "Fallback: what answers when servers are down",
        "vs best single model",
        "solver: HiGHS",
    ):
        assert piece in text
    for fid in ("ref-full", "backup-small", "mel-2", "mel-3-shared"):
        assert fid in text
    plan = load_plan(out)
    assert f"Wrote {out}" in text
    assert plan.family in text and plan.solver["status"] in ("optimal", "feasible", "time_limit")


def test_plan_file_numbers_are_exact(catalog_dir, tmp_path):
    from melplan.core.catalog import load_catalog
    from melplan.core.cluster import load_cluster

    out = tmp_path / "plan.json"
    assert (
        run("plan", "--servers", EDGE12, "--catalog", catalog_dir, "--out", out, "--max-failures", "2").exit_code == 0
    )
    plan = load_plan(out)
    fam = load_catalog(catalog_dir).get(plan.family)
    ev = evaluate_placement(fam, plan.placement, load_cluster(EDGE12))
    assert plan.expected_accuracy == pytest.approx(ev.expected_accuracy, abs=1e-12)
    assert plan.extra["planner"]["max_failures"] == "2"
    assert plan.latency_ms and max(plan.latency_ms.values()) <= 60.0  # the example's SLO


def test_json_output_is_the_plan(catalog_dir):
    r = run("plan", "--servers", CLUSTER4, "--catalog", catalog_dir, "--json", "--objective", "worst-case")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["schema"] == "melplan.plan/v2" and data["objective"] == "worst-case"
    assert {"family", "placement", "expected_accuracy", "worst_case_accuracy", "fallback", "solver"} <= set(data)


def test_infeasible_cluster_exits_1_with_the_cause(catalog_dir, tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        "servers:\n  - {name: a, memory_mb: 0.01, compute_gmacs: 10, failure_prob: 0.1}\nworkload: {rate_rps: 10}\n"
    )
    r = CliRunner().invoke(main, ["plan", "--servers", str(tiny), "--catalog", str(catalog_dir)])
    assert r.exit_code == 1
    assert "no server can hold the smallest upstream" in r.output
    assert "Traceback" not in r.output
    assert isinstance(r.exception, SystemExit)  # a clean exit, not an uncaught error


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--max-failures", "two"], "not a whole number or 'all'"),
        (["--max-failures", "-1"], "negative"),
        (["--objective", "median"], "median"),
        (["--combiner-replicas", "0"], "0"),
        (["--time-limit", "0"], "0"),
        (["--min-accuracy-under-failure", "1.5"], "1.5"),
        (["--solver", "gurobi"], "gurobi"),
    ],
)
def test_bad_options_exit_2(catalog_dir, args, needle):
    r = CliRunner().invoke(main, ["plan", "--servers", str(CLUSTER4), "--catalog", str(catalog_dir)] + args)
    assert r.exit_code == 2 and needle in r.output


def test_worst_case_with_all_failures_is_refused(catalog_dir):
    r = CliRunner().invoke(
        main,
        [
            "plan",
            "--servers",
            str(CLUSTER4),
            "--catalog",
            str(catalog_dir),
            "--objective",
            "worst-case",
            "--max-failures",
            "0",
        ],
    )
    assert r.exit_code == 2 and "at least one failure" in r.output


def test_catalog_with_several_datasets_needs_dataset(catalog_dir):
    import dataclasses

    f = make_family(2, seed=9, fid="other-ds")
    save_family(dataclasses.replace(f, dataset={**f.dataset, "name": "cifar-100"}), catalog_dir)
    r = CliRunner().invoke(main, ["plan", "--servers", str(CLUSTER4), "--catalog", str(catalog_dir)])
    assert r.exit_code == 2 and "--dataset" in r.output
    assert run("plan", "--servers", CLUSTER4, "--catalog", catalog_dir, "--dataset", "test").exit_code == 0


def test_malformed_cluster_exits_2(catalog_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "servers:\n  - {name: a, memory_mb: -5, compute_gmacs: 10, failure_prob: 0.1}\nworkload: {rate_rps: 1}\n"
    )
    r = CliRunner().invoke(main, ["plan", "--servers", str(bad), "--catalog", str(catalog_dir)])
    assert r.exit_code == 2
    assert str(bad) in r.output and "memory_mb" in r.output and "Traceback" not in r.output


def test_pinned_family_and_cbc(catalog_dir):
    r = run("plan", "--servers", CLUSTER4, "--catalog", catalog_dir, "--family", "mel-2", "--solver", "cbc")
    assert r.exit_code == 0, r.output
    assert "Chosen: mel-2" in r.output and "solver: CBC" in r.output


def test_real_subprocess(catalog_dir, tmp_path):
    out = tmp_path / "p.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "melplan",
            "plan",
            "--servers",
            str(CLUSTER4),
            "--catalog",
            str(catalog_dir),
            "--out",
            str(out),
            "--time-limit",
            "20",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Chosen:" in proc.stdout and out.exists()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "melplan",
            "plan",
            "--servers",
            str(tmp_path / "missing.yaml"),
            "--catalog",
            str(catalog_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr and "Traceback" not in bad.stderr
