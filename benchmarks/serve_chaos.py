"""Chaos benchmark of `melplan serve`: the real Fashion-MNIST test set streamed through the gateway
at a fixed rate while component processes are SIGKILLed on a schedule (`melplan serve` restarts
them, as a Kubernetes restartPolicy would), side by side with the best single model served the same
way (one process, cold restart).

    python benchmarks/serve_chaos.py --out out/chaos        # about 4 minutes on 2 cores (docs/serve.md)

Each deployment is a real `melplan serve --plan ...` process (its gateway and one process per placed
component); this script is only the client, the killer and the judge.  It prints, against the
issue's targets: live accuracy per answering subset vs the catalog's accuracy for that subset on the
same images (the family's network run here in-process); failed requests; failover time (SIGKILL ->
first answer routed around the killed component, measured by a probe that keeps one request in
flight across each kill, so the time waiting for the next request is not counted) median and p99;
latency p50/p99 while all components are up and while degraded, against the plan's SLO; throughput
against the plan's rate_rps; gateway overhead p50 over calling the component directly; predicted vs
measured path latency; and the same load through the single model.  Writes ``OUT/timeline.png``
(accuracy and latency per second, kills marked), ``OUT/requests-*.csv``, ``OUT/summary.json``.
Open-loop load: latency counts from each request's scheduled send time, so a stall is not hidden (no
coordinated omission).  Only 127.0.0.1 is contacted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import queue
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Req:
    i: int  # image index
    sched: float  # scheduled send time (s since the run's start)
    done: float = float("nan")
    ok: bool = False
    subset: str = ""
    servers: str = ""
    degraded: bool = False
    label: int = -1
    error: str = ""

    @property
    def latency_ms(self) -> float:
        return (self.done - self.sched) * 1e3


def pct(xs, q):
    xs = sorted(xs)
    return float("nan") if not xs else xs[min(len(xs) - 1, int(q * len(xs)))]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def make_plan(out: Path, cluster: str, family: str | None, name: str) -> Path:
    path = out / name
    cmd = [sys.executable, "-m", "melplan", "plan", "--servers", cluster, "--out", str(path), "--force"]
    if family:
        cmd += ["--family", family]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    if r.returncode != 0:
        sys.exit(f"melplan plan failed: {r.stderr}")
    return path


def uses(subset: str, servers: str, component: str, server: str) -> bool:
    """Did an answer (its subset key and servers) go through ``component`` on ``server``?"""
    if server not in servers.split(","):
        return False
    members = subset.split("+")
    return component in members if component.startswith("u") and "+" not in component else len(members) > 1


class Serve:
    """One `melplan serve` process; its stderr lines are kept with their arrival time."""

    def __init__(self, plan: Path, run_dir: Path, t_ref: float, hedge_ms: float | None) -> None:
        cmd = [sys.executable, "-m", "melplan", "serve", "--plan", str(plan), "--port", "0"]
        cmd += ["--run-dir", str(run_dir), "--force"]
        if hedge_ms is not None:
            cmd += ["--hedge-ms", str(hedge_ms)]
        self.run_dir = run_dir
        self.t_ref = t_ref
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
        threading.Thread(target=self._read, daemon=True).start()
        dep_file = run_dir / "deployment.json"
        end = time.monotonic() + 300
        while not dep_file.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                sys.exit("melplan serve did not start:\n" + "\n".join(m for _, m in self.lines[-20:]))
            time.sleep(0.1)
        self.dep = json.loads(dep_file.read_text())
        self.url = self.dep["gateway"]["url"]
        self.host = self.url.split("//")[1]
        self.model = self.dep["model"]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic() - self.t_ref, line.rstrip()))

    def pid(self, component: str, server: str) -> int:
        dep = json.loads((self.run_dir / "deployment.json").read_text())
        return next(c["pid"] for c in dep["components"] if (c["component"], c["server"]) == (component, server))

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def infer(client, http, model: str, img: np.ndarray, r: Req) -> None:
    inp = http.InferInput("input", [1, 28, 28], "UINT8")
    inp.set_data_from_numpy(img)
    res = client.infer(model, [inp])
    p = res.get_response().get("parameters", {})
    r.label = int(res.as_numpy("label")[0])
    r.subset, r.servers, r.degraded, r.ok = p["subset"], p["servers"], bool(p["degraded"]), True


def run_load(host: str, model: str, images: np.ndarray, *, rate: float, duration: float, workers: int, t0: float):
    """Open-loop load at ``rate`` requests/s for ``duration`` s; one image per request, in order."""
    import tritonclient.http as http

    n = int(rate * duration)
    reqs = [Req(i % len(images), i / rate) for i in range(n)]
    q: queue.Queue[Req | None] = queue.Queue()

    def worker():
        client = http.InferenceServerClient(host, connection_timeout=5.0, network_timeout=5.0)
        while True:
            r = q.get()
            if r is None:
                return
            try:
                infer(client, http, model, images[r.i : r.i + 1], r)
            except Exception as exc:  # noqa: BLE001 - a failed request is data here
                r.error = str(exc)[:160]
                client.close()
                client = http.InferenceServerClient(host, connection_timeout=5.0, network_timeout=5.0)
            r.done = time.monotonic() - t0

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for r in reqs:
        delay = t0 + r.sched - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        q.put(r)
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join(timeout=30)
    return reqs


def chaos(srv: Serve, schedule, t0: float, images: np.ndarray, log) -> list[dict]:
    """SIGKILL each scheduled (time, component, server).  A probe keeps one request in flight from
    30 ms before each kill until an answer avoids the killed component: kill -> that answer is the
    failover time, with no wait for the next request of the stream in it."""
    import tritonclient.http as http

    probe = http.InferenceServerClient(srv.host, connection_timeout=5.0, network_timeout=5.0)
    events = []
    for k, (at, comp, server) in enumerate(schedule):
        delay = t0 + at - 0.03 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pid = srv.pid(comp, server)
        answers: list[Req] = []
        ev = {"kill": float("nan"), "component": comp, "server": server, "pid": pid, "probe": answers}
        killer = threading.Timer(max(0.0, t0 + at - time.monotonic()), lambda e=ev, p=pid: _kill(e, p, t0))
        killer.start()
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            r = Req(k % len(images), time.monotonic() - t0)
            try:
                infer(probe, http, srv.model, images[r.i : r.i + 1], r)
            except Exception as exc:  # noqa: BLE001
                r.error = str(exc)[:160]
                probe.close()
                probe = http.InferenceServerClient(srv.host, connection_timeout=5.0, network_timeout=5.0)
            r.done = time.monotonic() - t0
            answers.append(r)
            killed = ev["kill"] == ev["kill"]  # not NaN: the kill happened
            if killed and r.ok and r.done > ev["kill"] and not uses(r.subset, r.servers, comp, server):
                break
        killer.join()
        before = [r for r in answers if r.ok and r.done < ev["kill"]]
        ev["in_route"] = bool(before) and uses(before[-1].subset, before[-1].servers, comp, server)
        around = [r for r in answers if r.ok and r.done > ev["kill"] and not uses(r.subset, r.servers, comp, server)]
        ev["failover_ms"] = (around[0].done - ev["kill"]) * 1e3 if around else None
        ev["probe_failed"] = sum(1 for r in answers if not r.ok)
        ev["probe_ms"] = [  # each probe request: sent and answered (ms from the kill), subset, servers
            [round((r.sched - ev["kill"]) * 1e3, 2), round((r.done - ev["kill"]) * 1e3, 2), r.subset, r.servers]
            for r in answers
        ]
        log(
            f"  t={ev['kill']:6.2f}s SIGKILL {comp}@{server} (pid {pid}): "
            + ("in the route, " if ev["in_route"] else "not in the route, ")
            + (f"first answer around it after {ev['failover_ms']:.1f} ms" if around else "no answer around it in 3 s")
        )
        events.append(ev)
    return events


def _kill(ev: dict, pid: int, t0: float) -> None:
    os.kill(pid, signal.SIGKILL)
    ev["kill"] = time.monotonic() - t0


def windows(srv: Serve, events: list[dict], t0_ref: float, end: float) -> None:
    """For each kill: when the gateway marked the server down and when it was back in the route
    (from `melplan serve`'s log lines, timed on arrival here)."""
    for e in events:
        k = e["kill"] + t0_ref
        down = [t for t, m in srv.lines if t >= k and f"; {e['server']} marked down" in m]
        back = [t for t, m in srv.lines if t >= k and re.search(rf"\b{re.escape(e['server'])} ready again", m)]
        e["marked_down_ms"] = (down[0] - k) * 1e3 if down else None
        e["back"] = (back[0] - t0_ref) if back else end


def direct_vs_gateway(srv: Serve, images, pp, n: int) -> dict:
    """p50 of the same single-image request to the upstream component directly and through the
    gateway, alternating, sequential, each on one keep-alive tritonclient connection.  Same body both
    ways (FP32, preprocessed here), so the difference is the gateway's hop; raw UINT8 through the
    gateway (preprocessed there) is timed too."""
    import tritonclient.http as http

    comp = srv.dep["components"][0]
    direct = http.InferenceServerClient(comp["url"].split("//")[1])
    gw = http.InferenceServerClient(srv.host)
    d_ms, g_ms, u_ms = [], [], []
    for k in range(n):
        x = images[k % len(images) : k % len(images) + 1]
        xf = pp.apply(x)
        for client, model, arr, dt, out in (
            (direct, comp["component"], xf, "FP32", d_ms),
            (gw, srv.model, xf, "FP32", g_ms),
            (gw, srv.model, x, "UINT8", u_ms),
        ):
            inp = http.InferInput("input", list(arr.shape), dt)
            inp.set_data_from_numpy(arr)
            t = time.perf_counter()
            client.infer(model, [inp])
            out.append((time.perf_counter() - t) * 1e3)
    return {
        "component": comp["component"],
        "direct_p50_ms": statistics.median(d_ms),
        "gateway_fp32_p50_ms": statistics.median(g_ms),
        "gateway_uint8_p50_ms": statistics.median(u_ms),
        "overhead_p50_ms": statistics.median(g_ms) - statistics.median(d_ms),
        "samples": n,
    }


def oracle_labels(path: Path, images_u8, mean, std):
    """Every subset's labels from the family's network (weights at ``path``) run here on the same images."""
    import torch

    from melplan.train.data import to_input
    from melplan.train.models.mel import MELNet

    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = MELNet(payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    out: dict[str, list] = {}
    with torch.inference_mode():
        for i in range(0, len(images_u8), 500):
            x = to_input(
                torch.from_numpy(images_u8[i : i + 500]).unsqueeze(1),
                torch.tensor(mean).view(1, -1, 1, 1),
                torch.tensor(std).view(1, -1, 1, 1),
            )
            res, _ = model(x)
            for k, v in res.items():
                out.setdefault(k, []).append(v.argmax(1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def summarise(name, reqs, events, truth, oracle, slo_ms, rate, duration):
    ok = [r for r in reqs if r.ok]
    failed = [r for r in reqs if not r.ok]
    rows = []
    for key in sorted({r.subset for r in ok}, key=lambda k: -sum(1 for r in ok if r.subset == k)):
        rs = [r for r in ok if r.subset == key]
        idx = np.array([r.i for r in rs])
        got = np.array([r.label for r in rs])
        rows.append(
            {
                "subset": key,
                "requests": len(rs),
                "live_acc": float(np.mean(got == truth[idx])),
                "catalog_acc": float(np.mean(oracle[key][idx] == truth[idx])) if key in oracle else float("nan"),
                "agree": float(np.mean(got == oracle[key][idx])) if key in oracle else float("nan"),
            }
        )

    # all up: sent outside every [kill, server back in the route] window
    def all_up(r: Req) -> bool:
        return not any(e["kill"] <= r.sched <= e["back"] for e in events)

    up_reqs = [r for r in reqs if all_up(r)]
    up_ok = [r for r in up_reqs if r.ok]
    hit = [e for e in events if e["in_route"] and e["failover_ms"] is not None]
    failover = [e["failover_ms"] for e in hit]
    detect = [e["marked_down_ms"] for e in events if e.get("marked_down_ms") is not None]
    deg = [r.latency_ms for r in ok if r.degraded]
    span = max((r.done for r in reqs if r.done == r.done), default=duration)
    return {
        "name": name,
        "requests": len(reqs),
        "answered": len(ok),
        "failed": len(failed),
        "failed_examples": sorted({r.error for r in failed})[:3],
        "accuracy_live": float(np.mean([r.label == truth[r.i] for r in ok])) if ok else float("nan"),
        "accuracy_sent": float(sum(r.label == truth[r.i] for r in ok) / len(reqs)) if reqs else float("nan"),
        "subsets": rows,
        "kills": len(events),
        "kills_in_route": len([e for e in events if e["in_route"]]),
        "failover_ms_median": statistics.median(failover) if failover else None,
        "failover_ms_p99": pct(failover, 0.99) if failover else None,
        "failover_ms": failover,
        "marked_down_ms_median": statistics.median(detect) if detect else None,
        "probe_failed": sum(e["probe_failed"] for e in events),
        "all_up_requests": len(up_reqs),
        "all_up_answered": len(up_ok),
        "all_up_s": sum(1 for _ in up_reqs) / rate,
        "latency_all_up_p50": pct([r.latency_ms for r in up_ok], 0.5),
        "latency_all_up_p99": pct([r.latency_ms for r in up_ok], 0.99),
        "latency_degraded_p50": pct(deg, 0.5),
        "latency_degraded_p99": pct(deg, 0.99),
        "latency_p99": pct([r.latency_ms for r in ok], 0.99),
        "degraded_requests": len(deg),
        "throughput_rps": len(ok) / span if span > 0 else float("nan"),
        "slo_ms": slo_ms,
        "rate_rps": rate,
        "events": [{k: v for k, v in e.items() if k != "probe"} for e in events],
    }


def f(v, digits=1):
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def print_table(mel, base, overhead, latency_rows, slo, rate, log):
    from melplan.commands.common import table
    from melplan.commands.serve_cmd import format_latency_report

    log("\nAnswering subsets (MEL): live accuracy vs the catalog's accuracy for that subset on the same images")
    log(
        table(
            [
                [r["subset"], r["requests"], r["live_acc"], r["catalog_acc"], r["agree"], r["catalog_recorded"]]
                for r in mel["subsets"]
            ],
            ["subset", "requests", "live accuracy", "catalog accuracy (same images)", "labels agree"]
            + ["catalog entry (whole test set)"],
            align="lrrrrr",
        )
    )
    rows = [
        ["requests sent", mel["requests"], base["requests"], ""],
        ["SIGKILLs (in the answering route)", f"{mel['kills']} ({mel['kills_in_route']})", f"{base['kills']}", ""],
        ["failed requests", mel["failed"], base["failed"], "0 when any one component dies"],
        ["accuracy over answered", f(mel["accuracy_live"], 4), f(base["accuracy_live"], 4), ""],
        ["accuracy over sent (failed = wrong)", f(mel["accuracy_sent"], 4), f(base["accuracy_sent"], 4), ""],
        ["failover median (ms)", f(mel["failover_ms_median"]), "- (no other route)", "<= 20 ms"],
        ["failover p99 (ms)", f(mel["failover_ms_p99"]), "-", ""],
        ["kill -> gateway marks it down, median (ms)", f(mel["marked_down_ms_median"]), "-", ""],
        ["latency p50 all up (ms)", f(mel["latency_all_up_p50"]), f(base["latency_all_up_p50"]), ""],
        ["latency p99 all up (ms)", f(mel["latency_all_up_p99"]), f(base["latency_all_up_p99"]), f"< SLO {slo:g} ms"],
        ["latency p50 degraded (ms)", f(mel["latency_degraded_p50"]), "-", ""],
        ["latency p99 degraded (ms)", f(mel["latency_degraded_p99"]), "-", ""],
        ["latency p99 all answers (ms)", f(mel["latency_p99"]), f(base["latency_p99"]), ""],
        [
            "answered / sent while all up",
            f"{mel['all_up_answered']}/{mel['all_up_requests']}",
            f"{base['all_up_answered']}/{base['all_up_requests']}",
            "all",
        ],
        ["throughput (answers/s)", f(mel["throughput_rps"]), f(base["throughput_rps"]), f"rate_rps {rate:g}"],
        [
            "gateway overhead p50 (ms)",
            "",
            f(overhead["overhead_p50_ms"], 2),
            f"<= 2 ms (direct {overhead['direct_p50_ms']:.2f}, gateway {overhead['gateway_fp32_p50_ms']:.2f} FP32, "
            f"{overhead['gateway_uint8_p50_ms']:.2f} UINT8)",
        ],
    ]
    log("\nSide by side (same images, same rate, SIGKILLs at the same times)")
    log(table(rows, ["measure", "MEL (melplan serve)", "single model, cold restart", "target"], align="lrrl"))
    log("\n" + format_latency_report(latency_rows))
    checks = [
        (
            "0 failed requests when any one component dies (MEL)",
            mel["failed"] == 0 and mel["probe_failed"] == 0,
            f"{mel['failed']} failed of {mel['requests']}, probe {mel['probe_failed']} failed",
        ),
        (
            "failover median <= 20 ms on a process death",
            mel["failover_ms_median"] is not None and mel["failover_ms_median"] <= 20.0,
            f"{f(mel['failover_ms_median'])} ms over {len(mel['failover_ms'])} kills in the route",
        ),
        (
            "gateway overhead <= 2 ms p50",
            overhead["overhead_p50_ms"] <= 2.0,
            f"{overhead['overhead_p50_ms']:.2f} ms",
        ),
        (
            "rate_rps held with p99 under the SLO while all are up",
            mel["all_up_answered"] == mel["all_up_requests"] > 0
            and mel["latency_all_up_p99"] < slo
            and mel["throughput_rps"] >= 0.98 * rate,
            f"{mel['all_up_answered']}/{mel['all_up_requests']} answered, p99 {f(mel['latency_all_up_p99'])} ms "
            f"(SLO {slo:g}), {f(mel['throughput_rps'])} answers/s (rate {rate:g})",
        ),
    ]
    log("\nTargets")
    for what, ok, detail in checks:
        log(f"  {'PASS' if ok else 'FAIL'}  {what}: {detail}")
    return checks


def plot(path: Path, runs, slo):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    colors = {"MEL": "tab:blue", "single": "tab:red"}
    for name, reqs, _events, truth in runs:
        end = int(max(r.sched for r in reqs)) + 1
        secs = np.arange(end)
        acc, p50, p99 = [], [], []
        for s in secs:
            rs = [r for r in reqs if s <= r.sched < s + 1]
            ok = [r for r in rs if r.ok]
            acc.append(sum(r.label == truth[r.i] for r in ok) / len(rs) if rs else np.nan)
            lat = [r.latency_ms for r in ok]
            p50.append(pct(lat, 0.5) if lat else np.nan)
            p99.append(pct(lat, 0.99) if lat else np.nan)
        c = colors[name]
        label = "MEL plan" if name == "MEL" else "single model"
        axes[0].step(secs, acc, where="post", color=c, label=f"{label}: correct answers / requests sent")
        axes[1].step(secs, p50, where="post", color=c, label=f"{label} p50")
        axes[1].step(secs, p99, where="post", color=c, ls=":", label=f"{label} p99")
    for e in runs[0][2]:
        for ax in axes:
            ax.axvline(e["kill"], color="k", alpha=0.35, lw=1)
        axes[0].annotate(
            f"{e['component']}@{e['server']}",
            (e["kill"], 0.02),
            rotation=90,
            fontsize=7,
            va="bottom",
            ha="right",
            alpha=0.8,
        )
    axes[1].axhline(slo, color="k", ls="--", lw=1, label=f"SLO {slo:g} ms")
    axes[0].set_ylabel("accuracy per second\n(correct / sent)")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylabel("latency per second (ms)")
    axes[1].set_yscale("log")
    ticks = [2, 5, 10, 20, 50, 100, 200, 500, 1000]
    ys = [float(y) for ln in axes[1].lines for y in np.asarray(ln.get_ydata(), dtype=float) if y == y]
    top = max(2 * slo, 1.3 * max(ys, default=1.0))
    axes[1].set_ylim(2, top)
    axes[1].set_yticks([t for t in ticks if t <= top])
    axes[1].set_yticklabels([str(t) for t in ticks if t <= top])
    axes[1].minorticks_off()
    axes[1].set_xlabel(
        "seconds since the load started (vertical lines: SIGKILL of the named MEL component; "
        "the single model's one process is killed at the same times)"
    )
    axes[0].legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, ncol=2, frameon=False)
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, 1.0), fontsize=8, ncol=5, frameon=False)
    fig.suptitle("melplan serve under SIGKILLs: the MEL plan vs the best single model (cold restart)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cluster", default=str(ROOT / "examples" / "cluster-4.yaml"))
    ap.add_argument("--plan", default=None, help="MEL plan (default: `melplan plan` on --cluster)")
    ap.add_argument(
        "--single",
        default=None,
        help="single-model family for the baseline (default: the most accurate single model with weights)",
    )
    ap.add_argument("--rate", type=float, default=None, help="requests/s (default: the plan's rate_rps)")
    ap.add_argument("--duration", type=float, default=90.0, help="seconds of load per deployment")
    ap.add_argument("--first-kill", type=float, default=6.0, help="seconds into the load of the first kill")
    ap.add_argument("--kill-every", type=float, default=6.0, help="seconds between kills")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill order")
    ap.add_argument("--workers", type=int, default=8, help="client threads")
    ap.add_argument("--hedge-ms", type=float, default=None, help="passed to melplan serve (default: its own)")
    ap.add_argument("--overhead-samples", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "out" / "chaos"))
    args = ap.parse_args()

    def log(msg=""):
        print(msg, flush=True)

    import torch

    torch.set_num_threads(1)
    from melplan.core.plan import load_plan_bundle
    from melplan.core.preprocessing import from_record
    from melplan.train.data import load_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mel_plan = Path(args.plan) if args.plan else make_plan(out, args.cluster, None, "plan.json")
    if args.single is None:
        from melplan.core.catalog import load_catalog

        singles = [f for f in load_catalog() if f.n == 1 and f.weights]
        args.single = max(singles, key=lambda f: f.accuracy_all_up).id
    single_plan = make_plan(out, args.cluster, args.single, "plan-single.json")
    ds = load_dataset("fashion-mnist")
    images = ds.test.images.numpy()[:, 0].copy()
    truth = ds.test.labels.numpy()
    log(f"load average before the runs: {os.getloadavg()}")
    summaries, runs = {}, []
    overhead: dict = {}
    latency_rows: list = []
    kill_times: list[float] = []
    counters: dict = {}
    for name, plan_path in (("MEL", mel_plan), ("single", single_plan)):
        b = load_plan_bundle(plan_path)
        wp = b.require_weights()
        cl = b.cluster
        rate = args.rate or (cl.workload.rate_rps if cl is not None and cl.workload.rate_rps else 50.0)
        slo = cl.workload.latency_slo_ms if cl is not None and cl.workload.latency_slo_ms else 50.0
        placed = [(c, s) for c, ss in b.plan.placement.items() for s in ss]
        order = placed[:]
        random.Random(args.seed).shuffle(order)
        if name == "MEL":
            n_kills = max(0, int((args.duration - args.first_kill - 4) // args.kill_every) + 1)
            kill_times = [args.first_kill + k * args.kill_every for k in range(n_kills)]
        schedule = [(t, *order[k % len(order)]) for k, t in enumerate(kill_times)]
        log(f"\n== {name}: {b.family.id}, placement {dict(b.plan.placement)}; {rate:g} req/s, SLO {slo:g} ms")
        oracle = oracle_labels(Path(wp), images, ds.mean, ds.std)
        t_ref = time.monotonic()
        srv = Serve(plan_path, out / f"run-{name}", t_ref, args.hedge_ms)
        try:
            warm = run_load(srv.host, srv.model, images, rate=rate, duration=2.0, workers=2, t0=time.monotonic())
            log(f"   ready; warm-up {sum(r.ok for r in warm)}/{len(warm)} answered")
            if name == "single":
                pp = from_record(b.family.dataset["preprocessing"])
                overhead = direct_vs_gateway(srv, images, pp, args.overhead_samples)
            t0 = time.monotonic()
            events: list = []
            killer = threading.Thread(
                target=lambda ev=events, sc=schedule, t=t0, s=srv: ev.extend(chaos(s, sc, t, images, log)), daemon=True
            )
            killer.start()
            reqs = run_load(srv.host, srv.model, images, rate=rate, duration=args.duration, workers=args.workers, t0=t0)
            killer.join(timeout=60)
            time.sleep(0.5)
            windows(srv, events, t0 - t_ref, args.duration)
            if name == "MEL":
                latency_rows = json.loads(srv.get("/melplan/status"))["latency"]
            text = srv.get("/metrics").decode()
            counters[name] = {
                k: metric(text, k)
                for k in ("melplan_hedges_total", "melplan_in_request_fallbacks_total", "melplan_route_changes_total")
            }
        finally:
            srv.stop()
            (out / f"serve-{name}.log").write_text("".join(f"{t:9.4f} {m}\n" for t, m in srv.lines))
        s = summarise(name, reqs, events, truth, oracle, slo, rate, args.duration)
        for row in s["subsets"]:
            row["catalog_recorded"] = b.family.accuracy.get(row["subset"], float("nan"))
        s["counters"] = counters[name]
        summaries[name] = s
        runs.append((name, reqs, events, truth))
        with open(out / f"requests-{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "sched_s", "done_s", "ok", "subset", "servers", "degraded", "label", "truth", "error"])
            for r in reqs:
                w.writerow(
                    [r.i, f"{r.sched:.4f}", f"{r.done:.4f}", int(r.ok), r.subset, r.servers, int(r.degraded)]
                    + [r.label, truth[r.i], r.error]
                )
        log(f"   {s['answered']}/{s['requests']} answered, {s['failed']} failed; gateway counters {counters[name]}")
    checks = print_table(summaries["MEL"], summaries["single"], overhead, latency_rows, slo, rate, log)
    plot(out / "timeline.png", runs, slo)
    summary = {
        "args": vars(args),
        "load_average_after": os.getloadavg(),
        "mel": summaries["MEL"],
        "single": summaries["single"],
        "overhead": overhead,
        "latency": latency_rows,
        "targets": [{"target": w, "pass": ok, "measured": d} for w, ok, d in checks],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log(f"\nWrote {out / 'timeline.png'}, {out / 'summary.json'}, requests-*.csv (kill order seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
