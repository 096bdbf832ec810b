"""Chaos benchmark of `melplan serve`: the real Fashion-MNIST test set streamed through the gateway
at a fixed rate while component processes are SIGKILLed and restarted on a schedule, side by side
with the best single model served the same way (one process, cold restart).

    nice -n 19 python benchmarks/serve_chaos.py --out out/chaos        # ~4 minutes on 2 cores

Prints, against the issue's targets: live accuracy per answering subset vs the family's own
network on the same images (computed here in-process: the catalog's accuracy for that subset,
restricted to those images); failed requests; failover time (kill -> first answer routed around the
killed server) median and p99; latency p50/p99 with every server up and degraded, against the SLO;
throughput against the plan's rate; gateway overhead over calling the component directly; the
predicted vs measured path latency; the same load through the single model.  Writes
``OUT/timeline.png`` (accuracy and latency per second, kills marked), ``OUT/requests.csv`` and
``OUT/summary.json``.  Open-loop load: latency counts from each request's scheduled send time, so a
stall is not hidden (no coordinated omission).  Only 127.0.0.1 is contacted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
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


def make_plan(out: Path, cluster: str, family: str | None, name: str) -> Path:
    path = out / name
    cmd = [sys.executable, "-m", "melplan", "plan", "--servers", cluster, "--out", str(path), "--force"]
    if family:
        cmd += ["--family", family]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0:
        cmd.remove("--force")
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0:
        sys.exit(f"melplan plan failed: {r.stderr}")
    return path


def run_load(url: str, model: str, images: np.ndarray, *, rate: float, duration: float, workers: int, t0: float):
    """Open-loop load at ``rate`` requests/s for ``duration`` s; one image per request, in order."""
    import tritonclient.http as http

    n = int(rate * duration)
    reqs = [Req(i % len(images), i / rate) for i in range(n)]
    q: queue.Queue[Req | None] = queue.Queue()

    def worker():
        client = http.InferenceServerClient(url, connection_timeout=5.0, network_timeout=5.0)
        while True:
            r = q.get()
            if r is None:
                return
            inp = http.InferInput("input", [1, 28, 28], "UINT8")
            inp.set_data_from_numpy(images[r.i : r.i + 1])
            try:
                res = client.infer(model, [inp])
                p = res.get_response().get("parameters", {})
                r.label = int(res.as_numpy("label")[0])
                r.subset, r.servers, r.degraded, r.ok = p["subset"], p["servers"], bool(p["degraded"]), True
            except Exception as exc:  # noqa: BLE001 - a failed request is data here
                r.error = str(exc)[:120]
                try:
                    client.close()
                except Exception:  # noqa: BLE001
                    pass
                client = http.InferenceServerClient(url, connection_timeout=5.0, network_timeout=5.0)
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


def chaos(dep, schedule, t0, log):
    """Kill at each scheduled time, restart ``down_s`` later (on the same port), record times."""
    events = []
    for at, comp, server, down_s in schedule:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pid = dep.kill(comp, server, signal.SIGKILL)
        tk = time.monotonic() - t0
        events.append({"kill": tk, "component": comp, "server": server, "pid": pid})
        log(f"  t={tk:6.2f}s SIGKILL {comp}@{server} (pid {pid})")
        time.sleep(down_s)
        dep.restart_component(comp, server)
        events[-1]["restart"] = time.monotonic() - t0
        log(f"  t={events[-1]['restart']:6.2f}s restart {comp}@{server} (loading)")
    return events


def oracle_labels(path: Path, images_u8, mean, std):
    """Every subset's labels from the family's network (weights at ``path``) run here on the same images."""
    import torch

    from melplan.train.data import to_input
    from melplan.train.models.mel import MELNet

    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = MELNet(payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    out = {}
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


def direct_vs_gateway(dep, images, pp, n: int) -> dict:
    """p50 of the same single-image request to the upstream component directly (FP32, preprocessed)
    and through the gateway (UINT8, preprocessed there), sequential, on one keep-alive connection."""
    import tritonclient.http as http

    comp = dep.processes()[0]
    direct = http.InferenceServerClient(comp.url.split("//")[1])
    gw = http.InferenceServerClient(dep.url.split("//")[1])
    model = dep.inputs.family.id
    d_ms, g_ms = [], []
    for k in range(n):
        x = images[k % len(images) : k % len(images) + 1]
        a = http.InferInput("input", [1, 28, 28], "UINT8")
        a.set_data_from_numpy(x)
        xf = pp.apply(x)
        b = http.InferInput("input", list(xf.shape), "FP32")
        b.set_data_from_numpy(xf)
        t = time.perf_counter()
        direct.infer(comp.component, [b])
        d_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        gw.infer(model, [a])
        g_ms.append((time.perf_counter() - t) * 1e3)
    return {
        "component": comp.component,
        "direct_p50_ms": statistics.median(d_ms),
        "gateway_p50_ms": statistics.median(g_ms),
        "overhead_p50_ms": statistics.median(g_ms) - statistics.median(d_ms),
        "samples": n,
    }


def summarise(name, reqs, events, truth, oracle, slo_ms, rate, duration, log):
    ok = [r for r in reqs if r.ok]
    failed = [r for r in reqs if not r.ok]
    rows = []
    for key in sorted({r.subset for r in ok}, key=lambda k: -sum(1 for r in ok if r.subset == k)):
        rs = [r for r in ok if r.subset == key]
        idx = np.array([r.i for r in rs])
        live = float(np.mean(np.array([r.label for r in rs]) == truth[idx]))
        want = float(np.mean(oracle[key][idx] == truth[idx])) if key in oracle else float("nan")
        agree = float(np.mean(np.array([r.label for r in rs]) == oracle[key][idx])) if key in oracle else float("nan")
        rows.append({"subset": key, "requests": len(rs), "live_acc": live, "catalog_acc": want, "agree": agree})
    failover = []
    for e in events:
        after = [r for r in ok if r.done >= e["kill"] and e["server"] not in r.servers.split(",")]
        if after:
            failover.append((min(r.done for r in after) - e["kill"]) * 1e3)
        e["failover_ms"] = failover[-1] if after else None
    up = [r.latency_ms for r in ok if not r.degraded]
    deg = [r.latency_ms for r in ok if r.degraded]
    span = max((r.done for r in reqs if r.done == r.done), default=duration)
    s = {
        "name": name,
        "requests": len(reqs),
        "answered": len(ok),
        "failed": len(failed),
        "failed_examples": sorted({r.error for r in failed})[:3],
        "accuracy_live": float(np.mean([r.label == truth[r.i] for r in ok])) if ok else float("nan"),
        "subsets": rows,
        "failover_ms_median": statistics.median(failover) if failover else None,
        "failover_ms_p99": pct(failover, 0.99) if failover else None,
        "failover_ms": failover,
        "latency_all_up_p50": pct(up, 0.5),
        "latency_all_up_p99": pct(up, 0.99),
        "latency_degraded_p50": pct(deg, 0.5),
        "latency_degraded_p99": pct(deg, 0.99),
        "degraded_requests": len(deg),
        "throughput_rps": len(ok) / span if span > 0 else float("nan"),
        "slo_ms": slo_ms,
        "rate_rps": rate,
        "events": events,
    }
    return s


def print_table(mel, base, overhead, latency_rows, slo, log):
    from melplan.commands.common import table

    log("\nAnswering subsets (MEL): live accuracy vs the family's network on the same images")
    log(
        table(
            [[r["subset"], r["requests"], r["live_acc"], r["catalog_acc"], r["agree"]] for r in mel["subsets"]],
            ["subset", "requests", "live accuracy", "catalog accuracy (same images)", "labels agree"],
            align="lrrrr",
        )
    )

    def f(v, unit=""):
        return "-" if v is None or v != v else f"{v:.1f}{unit}"

    rows = [
        ["requests sent", mel["requests"], base["requests"], ""],
        ["failed requests", mel["failed"], base["failed"], "0 when any one component dies"],
        ["accuracy over answered", f"{mel['accuracy_live']:.4f}", f"{base['accuracy_live']:.4f}", ""],
        [
            "accuracy over sent (failed = wrong)",
            f"{mel['accuracy_live'] * mel['answered'] / mel['requests']:.4f}",
            f"{base['accuracy_live'] * base['answered'] / base['requests']:.4f}",
            "",
        ],
        ["failover median (ms)", f(mel["failover_ms_median"]), f(base["failover_ms_median"]), "<= 20 ms"],
        ["failover p99 (ms)", f(mel["failover_ms_p99"]), f(base["failover_ms_p99"]), ""],
        ["latency p50 all up (ms)", f(mel["latency_all_up_p50"]), f(base["latency_all_up_p50"]), f"SLO {slo:g} ms"],
        ["latency p99 all up (ms)", f(mel["latency_all_up_p99"]), f(base["latency_all_up_p99"]), f"< {slo:g} ms"],
        ["latency p50 degraded (ms)", f(mel["latency_degraded_p50"]), f(base["latency_degraded_p50"]), ""],
        ["latency p99 degraded (ms)", f(mel["latency_degraded_p99"]), f(base["latency_degraded_p99"]), ""],
        ["throughput (answers/s)", f(mel["throughput_rps"]), f(base["throughput_rps"]), f"rate {mel['rate_rps']:g}"],
        [
            "gateway overhead p50 (ms)",
            "",
            f"{overhead['overhead_p50_ms']:.2f}",
            f"<= 2 ms (direct {overhead['direct_p50_ms']:.2f}, gateway {overhead['gateway_p50_ms']:.2f})",
        ],
    ]
    log("\nSide by side (same images, same rate, same kill schedule)")
    log(table(rows, ["measure", "MEL (melplan serve)", "single model, cold restart", "target"], align="lrrl"))
    from melplan.commands.serve_cmd import format_latency_report

    log("\n" + format_latency_report(latency_rows))


def plot(path: Path, runs, slo):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    colors = {"MEL": "tab:blue", "single": "tab:red"}
    for name, reqs, events, truth in runs:
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
        axes[0].plot(secs, acc, color=c, label=f"{name}: correct answers / requests sent")
        axes[1].plot(secs, p50, color=c, label=f"{name} p50")
        axes[1].plot(secs, p99, color=c, ls=":", label=f"{name} p99")
        for e in events:
            axes[0].axvline(e["kill"], color=c, alpha=0.3, lw=3 if name == "MEL" else 1)
            axes[1].axvline(e["kill"], color=c, alpha=0.3, lw=3 if name == "MEL" else 1)
    axes[1].axhline(slo, color="k", ls="--", lw=1, label=f"SLO {slo:g} ms")
    axes[0].set_ylabel("accuracy per second")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel("latency (ms, log)")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("seconds (vertical bars: SIGKILL of a component)")
    axes[0].legend(loc="lower left", fontsize=8)
    axes[1].legend(loc="upper right", fontsize=8, ncol=3)
    axes[0].set_title("melplan serve under SIGKILLs: MEL plan vs the best single model (cold restart)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cluster", default=str(ROOT / "examples" / "cluster-4.yaml"))
    ap.add_argument("--plan", default=None, help="MEL plan (default: `melplan plan` on --cluster)")
    ap.add_argument("--single", default="fmnist-effb0-b4-s0", help="single-model family for the baseline")
    ap.add_argument("--rate", type=float, default=None, help="requests/s (default: the plan's rate_rps)")
    ap.add_argument("--duration", type=float, default=100.0, help="seconds of load per deployment")
    ap.add_argument("--first-kill", type=float, default=10.0)
    ap.add_argument("--kill-every", type=float, default=22.0, help="seconds between kills")
    ap.add_argument("--down", type=float, default=3.0, help="seconds a killed process stays dead before restart")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill order")
    ap.add_argument("--workers", type=int, default=8, help="client threads")
    ap.add_argument("--overhead-samples", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "out" / "chaos"))
    args = ap.parse_args()

    def log(msg=""):
        print(msg, flush=True)

    import torch

    torch.set_num_threads(1)
    from melplan.core.preprocessing import from_record
    from melplan.serve.launcher import LocalDeployment, load_for_serving
    from melplan.train.data import load_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mel_plan = Path(args.plan) if args.plan else make_plan(out, args.cluster, None, "plan.json")
    single_plan = make_plan(out, args.cluster, args.single, "plan-single.json")
    ds = load_dataset("fashion-mnist")
    images = ds.test.images.numpy()[:, 0].copy()
    truth = ds.test.labels.numpy()
    summaries, runs = {}, []
    overhead, latency_rows = None, []
    for name, plan_path in (("MEL", mel_plan), ("single", single_plan)):
        inputs = load_for_serving(plan_path)
        cl = inputs.cluster
        rate = args.rate or (cl.workload.rate_rps if cl is not None else 50.0)
        slo = cl.workload.latency_slo_ms if cl is not None and cl.workload.latency_slo_ms else 50.0
        placed = [(c, s) for c, ss in inputs.plan.placement.items() for s in ss]
        rng = random.Random(args.seed)
        order = placed[:]
        rng.shuffle(order)
        n_kills = max(0, int((args.duration - args.first_kill - 5) // args.kill_every) + 1)
        if name == "MEL":
            kill_times = [args.first_kill + k * args.kill_every for k in range(n_kills)]
        schedule = [(t, *order[k % len(order)], args.down) for k, t in enumerate(kill_times)]
        log(f"\n== {name}: {inputs.family.id} placement {dict(inputs.plan.placement)}; {rate:g} req/s, SLO {slo:g} ms")
        oracle = oracle_labels(inputs.weights, images, ds.mean, ds.std)
        log("   catalog accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in inputs.family.accuracy.items()))
        with LocalDeployment(
            inputs, run_dir=out / f"run-{name}", port=0, restart=False, force=True, log=lambda m: None
        ) as dep:
            model = inputs.family.id
            host = dep.url.split("//")[1]
            warm = run_load(host, model, images, rate=rate, duration=2.0, workers=2, t0=time.monotonic())
            log(f"   ready; warm-up {sum(r.ok for r in warm)}/{len(warm)} answered")
            if name == "single":
                pp = from_record(inputs.family.dataset["preprocessing"])
                overhead = direct_vs_gateway(dep, images, pp, args.overhead_samples)
            t0 = time.monotonic()
            events: list = []
            killer = threading.Thread(
                target=lambda ev=events, sc=schedule, t=t0, d=dep: ev.extend(chaos(d, sc, t, log)), daemon=True
            )
            killer.start()
            reqs = run_load(
                dep.url.split("//")[1], model, images, rate=rate, duration=args.duration, workers=args.workers, t0=t0
            )
            killer.join(timeout=60)
            if name == "MEL":
                latency_rows = dep.gateway.latency_report()
        s = summarise(name, reqs, events, truth, oracle, slo, rate, args.duration, log)
        summaries[name] = s
        runs.append((name, reqs, events, truth))
        with open(out / f"requests-{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "sched_s", "done_s", "ok", "subset", "servers", "degraded", "label", "truth", "error"])
            for r in reqs:
                w.writerow(
                    [
                        r.i,
                        f"{r.sched:.4f}",
                        f"{r.done:.4f}",
                        int(r.ok),
                        r.subset,
                        r.servers,
                        int(r.degraded),
                        r.label,
                        truth[r.i],
                        r.error,
                    ]
                )
        log(
            f"   {s['answered']}/{s['requests']} answered, {s['failed']} failed; kills: "
            + ", ".join(
                f"{e['component']}@{e['server']} failover {e['failover_ms'] or float('nan'):.1f} ms" for e in events
            )
        )
    print_table(summaries["MEL"], summaries["single"], overhead, latency_rows, slo, log)
    plot(out / "timeline.png", runs, slo)
    summary = {
        "args": vars(args),
        "mel": summaries["MEL"],
        "single": summaries["single"],
        "overhead": overhead,
        "latency": latency_rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log(f"\nWrote {out / 'timeline.png'}, {out / 'summary.json'}, requests-*.csv (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
