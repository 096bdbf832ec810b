"""Each placed component of the shipped example plan SIGKILLed in turn, every server up before each
kill, under tritonclient load through a real `melplan serve` (which restarts what dies): no request
fails, and answers go around the dead process.  The chaos benchmark (benchmarks/serve_chaos.py) measures
the same with timings; this test only asserts what must hold on any machine.  Slow: about a minute."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from serving import RouteOracle, make_plan, serving

pytestmark = [pytest.mark.torch, pytest.mark.slow]

http = pytest.importorskip("tritonclient.http")


def _load(host, model, images, stop: threading.Event, answers: list, errors: list) -> None:
    """Sequential single-image requests (5 ms apart) until ``stop``; every failure is recorded."""
    c = http.InferenceServerClient(host)
    i = 0
    while not stop.is_set():
        inp = http.InferInput("input", [1, 28, 28], "UINT8")
        inp.set_data_from_numpy(images[i % 200 : i % 200 + 1])
        try:
            p = c.infer(model, [inp]).get_response()["parameters"]
            answers.append((time.monotonic(), p["subset"], p["servers"]))
        except Exception as exc:  # noqa: BLE001 - any failure counts
            errors.append(f"{type(exc).__name__}: {exc}")
        i += 1
        time.sleep(0.005)


def test_each_component_sigkilled_in_turn_fails_no_request(tmp_path):
    from melplan.train.data import load_dataset

    images = load_dataset("fashion-mnist", test_limit=200).test.images.numpy()[:, 0]
    plan = make_plan(tmp_path / "plan.json")
    with serving(plan, tmp_path) as info:
        dep, dep_file = info["dep"], info["dep_file"]
        host, model = dep["gateway"]["url"].split("//")[1], dep["model"]
        client = http.InferenceServerClient(host)

        def ask(i: int) -> tuple[str, str]:
            inp = http.InferInput("input", [1, 28, 28], "UINT8")
            inp.set_data_from_numpy(images[i % 200 : i % 200 + 1])
            p = client.infer(model, [inp]).get_response()["parameters"]
            return p["subset"], p["servers"]

        routes = RouteOracle(plan)
        _, all_up = routes.best()
        placed = [(c["component"], c["server"]) for c in dep["components"]]
        assert sorted(placed) == sorted((c, s) for c, ss in routes.placement.items() for s in ss)
        for comp, server in placed:
            end = time.monotonic() + 90  # the one killed before is restarted and back in the route
            while ask(0)[0] not in all_up:
                assert time.monotonic() < end, f"not all up again before killing {comp}@{server}"
                time.sleep(0.2)
            pid = next(c["pid"] for c in json.loads(dep_file.read_text())["components"] if c["component"] == comp)
            answers: list[tuple[float, str, str]] = []
            errors: list[str] = []
            stop = threading.Event()

            t = threading.Thread(target=_load, args=(host, model, images, stop, answers, errors))
            t.start()
            try:
                time.sleep(0.3)
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                time.sleep(0.9)  # melplan serve restarts it after 1 s
            finally:
                stop.set()
                t.join(timeout=30)
            assert not errors, (comp, errors[:3])
            before = [a for a in answers if a[0] < killed]
            after = [a for a in answers if a[0] > killed + 0.3]
            assert before and after, (comp, len(answers))
            if all(routes.in_route(k, comp) for k in all_up):  # in the all-up route: most answers used it
                assert sum(routes.uses(a[1], a[2], comp, server) for a in before) >= 0.5 * len(before), before
            assert not [a for a in after if routes.uses(a[1], a[2], comp, server)], (comp, after[:5])
