"""Every `--json` prints exactly one strict JSON document on stdout, in a real subprocess (so output
written by C code straight to file descriptor 1, like HiGHS's banner, would be caught here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLUSTER4 = ROOT / "examples" / "cluster-4.yaml"
# any entry of the shipped Fashion-MNIST catalog (the first by name; the catalog grows as families finish)
SOME_ID = sorted(p.stem for p in (ROOT / "catalog" / "fashion-mnist").glob("*.json"))[0]


def melplan(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MELPLAN_CATALOG=str(ROOT / "catalog"))
    return subprocess.run(
        [sys.executable, "-m", "melplan", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def strict(text: str):
    """Parse one strict JSON document: NaN/Infinity rejected, nothing before or after it."""

    def refuse(const):
        raise AssertionError(f"non-strict JSON constant {const}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("json")
    r = melplan("plan", "--servers", CLUSTER4, "--out", d / "plan.json", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


def test_plan_json_is_one_document_without_the_solver_banner(workdir):
    r = melplan("plan", "--servers", CLUSTER4, "--json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "HiGHS" not in r.stdout.replace('"HiGHS"', "")  # the solver's name field is fine, its banner is not
    data = strict(r.stdout)
    assert data["schema"] == "melplan.plan/v2"
    saved = strict((workdir / "plan.json").read_text())
    for key in ("family", "placement", "expected_accuracy", "family_entry", "cluster"):
        assert data[key] == saved[key], key


def test_verbose_sends_solver_logs_to_stderr_only(workdir):
    r = melplan("plan", "--servers", CLUSTER4, "--json", "--verbose", cwd=workdir)
    assert r.returncode == 0, r.stderr
    strict(r.stdout)
    assert "Running HiGHS" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("simulate", "--plan", "plan.json", "--hours", "24", "--seed", "1"),
        ("select", "--plan", "plan.json", "--down", "edge-a"),
        ("catalog", "list"),
        ("catalog", "show", SOME_ID),
        ("export", "--plan", "plan.json", "--format", "json", "--out", "deploy"),
        ("pareto",),
        ("cluster", "check", CLUSTER4),
    ],
    ids=lambda a: "-".join(a[:2]) if a[0] in ("cluster", "catalog") else a[0],
)
def test_json_of_every_command_is_strict(workdir, args):
    r = melplan(*args, "--json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    strict(r.stdout)
