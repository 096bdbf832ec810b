"""examples/orchestrator.py end to end: a real `melplan serve` deployment, a tritonclient stream of
Fashion-MNIST test images, a SIGKILL of one component, in-request failover, an eager re-plan that starts
the component on another server (a new process, readiness-gated), and a SIGTERM that leaves nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.torch]
pytest.importorskip("tritonclient.http")

ANSWER = re.compile(r"\] client: answers from (\S+) on (\S+) \(catalog accuracy ([0-9.]+)(, degraded)?\)")


def test_orchestrator_example_fails_over_replans_and_stops():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "orchestrator.py"), "--rate", "20"],
        capture_output=True,
        text=True,
        timeout=480,
        cwd=ROOT,
    )
    text = out.stdout
    assert out.returncode == 0, text[-4000:] + out.stderr[-2000:]
    kill = re.search(r"\] kill -9 (\d+)  \((\S+) on (\S+), from deployment.json\)", text)
    assert kill, text[-3000:]
    victim, victim_server = kill.group(2), kill.group(3)
    before, after = text[: kill.start()], text[kill.end() :]
    first = ANSWER.search(before)
    assert first and first.group(4) is None  # every server up: the plan's best subset, not degraded
    best, best_acc = first.group(1), float(first.group(3))
    assert victim in best.split("+") and victim_server in first.group(2).split(",")
    changes = ANSWER.findall(after)
    assert changes, after[-3000:]
    # at once: a degraded subset that avoids the killed server
    fallback = changes[0]
    assert fallback[3] == ", degraded" and victim_server not in fallback[1].split(",")
    assert float(fallback[2]) < best_acc
    # after the re-plan: the best subset again, the victim now on another server
    assert "re-plan applied" in after and f"start {victim} on " in after
    back = [c for c in changes if c[0] == best and c[3] == ""]
    assert back and victim_server not in back[-1][1].split(","), changes
    summary = text[text.index("\nRequests: ") :]
    sent, answered, failed = map(int, re.search(r"(\d+) sent, (\d+) answered, (\d+) failed", summary).groups())
    assert failed == 0 and sent == answered >= 50
    assert re.search(r"melplan serve exited with 0; none of the \d+ component processes left", summary)
