"""scripts/mcnemar.py: the exact McNemar p-value against scipy's binomial test, and the script on two
shipped Fashion-MNIST single models with weights (their counts must explain their accuracies)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "mcnemar.py"
SHIPPED = ROOT / "catalog" / "fashion-mnist"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _script():
    spec = importlib.util.spec_from_file_location("mcnemar", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("a,b", [(0, 0), (3, 0), (158, 117), (117, 158), (143, 147), (10, 40), (1, 1)])
def test_exact_p_matches_scipy_binomial_test(a, b):
    binomtest = pytest.importorskip("scipy.stats").binomtest
    want = 1.0 if a + b == 0 else binomtest(a, a + b, 0.5, alternative="two-sided").pvalue
    assert _script().exact_mcnemar_p(a, b) == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.torch
@pytest.mark.skipif(not FMNIST.exists(), reason="dataset-fashion-mnist not installed")
def test_script_counts_explain_the_two_accuracies():
    from melplan.core.catalog import load_catalog

    singles = sorted(f.id for f in load_catalog(SHIPPED) if f.n == 1 and f.weights)[:2]
    assert len(singles) == 2, "the shipped catalog has two single models with weights"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--catalog", str(SHIPPED), *singles],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "entry records" not in r.stdout  # every model reproduces its catalog accuracy
    acc = {m: float(a) for m, a in re.findall(r"^(\S+): (\d\.\d+) on 10,000 test images$", r.stdout, re.M)}
    n01, n10, p = re.search(
        r"only the first right on (\d+), only the second on (\d+); exact McNemar p = ([\d.]+)", r.stdout
    ).groups()
    # accuracy difference = (images only the first gets right - images only the second gets right) / N
    assert acc[singles[0]] - acc[singles[1]] == pytest.approx((int(n01) - int(n10)) / 10_000, abs=1e-4)
    assert float(p) == pytest.approx(_script().exact_mcnemar_p(int(n01), int(n10)), abs=1e-4)
