"""A plan, served for real and failure-tested, end to end: what an orchestrator around melplan does.

    python examples/orchestrator.py                     # plans examples/cluster-4.yaml first; ~1 minute
    python examples/orchestrator.py --plan plan.json --kill u3 --rate 20

1. `melplan serve --policy eager --no-restart` starts one process per placed component (each stands for
   its server) and the gateway, with the RuntimeSelector inside it, on 127.0.0.1 (a free port).
2. A client streams real Fashion-MNIST test images (one per request, ``--rate`` a second) with the
   official Open Inference Protocol client (tritonclient[http]) and prints every change of the
   answering subset.
3. One component of the all-up route is killed with SIGKILL (its pid from deployment.json).  The
   gateway answers the requests in flight through the best subset that still replies, so none fails.
4. With no restart and the eager policy, the selector re-plans at once: the killed component is started
   on another server (a new process), and routes use it only once it reports ready.
5. SIGTERM to `melplan serve`; every process it started must be gone.

It prints, per answering subset, the requests and their accuracy on these images next to the catalog's
accuracy for the subset (on the whole test set), the failover time (kill -> first answer that avoids the
killed server) and the time until the re-planned component served.  Exit status 0 only when no request
failed, the re-planned component served, and nothing was left running.  Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

START_TIMEOUT_S = 300.0  # component processes import torch and load weights
RECOVER_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


@dataclass
class Answer:
    t: float  # seconds since the start of the run
    image: int
    ok: bool
    subset: str = ""
    servers: tuple[str, ...] = ()
    degraded: bool = False
    accuracy: float = 0.0  # the catalog's, for the subset
    right: bool = False
    error: str = ""


def log(t0: float, msg: str) -> None:
    print(f"[{time.monotonic() - t0:6.2f}s] {msg}", flush=True)


def alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


class Client(threading.Thread):
    """One image per request at a fixed rate through tritonclient; every answer (or failure) is kept."""

    def __init__(self, url: str, model: str, images, labels, rate: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.url, self.model, self.images, self.labels = url.split("//", 1)[-1], model, images, labels
        self.period, self.t0 = 1.0 / rate, t0
        self.answers: list[Answer] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.url, connection_timeout=10.0, network_timeout=10.0)
        out = [httpclient.InferRequestedOutput("label")]
        i, last = 0, None
        nxt = time.monotonic()
        while not self.stop.is_set():
            k = i % len(self.images)
            x = self.images[k : k + 1]
            inp = httpclient.InferInput("input", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x)
            try:
                res = client.infer(self.model, [inp], outputs=out)
                p = res.get_response()["parameters"]
                a = Answer(
                    time.monotonic() - self.t0,
                    k,
                    True,
                    p["subset"],
                    tuple(p["servers"].split(",")),
                    bool(p["degraded"]),
                    float(p["accuracy"]),
                    bool(res.as_numpy("label")[0] == self.labels[k]),
                )
            except Exception as exc:  # noqa: BLE001 - every failure of a request counts
                a = Answer(time.monotonic() - self.t0, k, False, error=f"{type(exc).__name__}: {exc}")
            self.answers.append(a)
            now = (a.subset, a.servers, a.degraded) if a.ok else None
            if now != last:
                what = (
                    f"answers from {a.subset} on {','.join(a.servers)}"
                    f" (catalog accuracy {a.accuracy:.4f}{', degraded' if a.degraded else ''})"
                    if a.ok
                    else f"request FAILED: {a.error}"
                )
                log(self.t0, f"client: {what}")
                last = now
            i += 1
            nxt += self.period
            self.stop.wait(max(0.0, nxt - time.monotonic()))


def relay(stream, t0: float) -> None:
    """Print what `melplan serve` says on stderr, with the run's clock."""
    for line in iter(stream.readline, b""):
        log(t0, "serve:  " + line.decode(errors="replace").rstrip())


def read_deployment(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or being replaced


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", help="plan.json (default: plan examples/cluster-4.yaml into a temporary folder)")
    ap.add_argument(
        "--kill", help="component to SIGKILL (default: an upstream of the all-up route alone on its server)"
    )
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second (0 < rate <= 200)")
    ap.add_argument("--images", type=int, default=1000, help="Fashion-MNIST test images to cycle through")
    args = ap.parse_args(argv)
    if not 0 < args.rate <= 200 or not 1 <= args.images <= 10000:
        ap.error("--rate must be in (0, 200] and --images in 1..10000")

    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="melplan-orchestrator-"))
    plan = Path(args.plan) if args.plan else tmp / "plan.json"
    py = sys.executable
    if not args.plan:
        cmd = [py, "-m", "melplan", "plan", "--servers", str(ROOT / "examples" / "cluster-4.yaml"), "--out", str(plan)]
        log(t0, "$ melplan plan --servers examples/cluster-4.yaml --out " + str(plan))
        done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            return done.returncode
    run_dir = tmp / "run"
    dep_file = run_dir / "deployment.json"
    cmd = [py, "-m", "melplan", "serve", "--plan", str(plan), "--port", "0", "--run-dir", str(run_dir)]
    cmd += ["--policy", "eager", "--no-restart"]
    log(t0, f"$ melplan serve --plan {plan} --port 0 --run-dir {run_dir} --policy eager --no-restart")
    serve = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    threading.Thread(target=relay, args=(serve.stderr, t0), daemon=True).start()
    client: Client | None = None
    seen_pids: set[int] = set()
    ok = False
    try:
        end = time.monotonic() + START_TIMEOUT_S
        while (dep := read_deployment(dep_file)) is None:
            if serve.poll() is not None or time.monotonic() > end:
                log(t0, "melplan serve did not start (see its messages above)")
                return 1
            time.sleep(0.2)
        seen_pids |= {c["pid"] for c in dep["components"]}
        from melplan.train.data import load_dataset

        ds = load_dataset("fashion-mnist", test_limit=args.images)
        images, labels = ds.test.images.numpy()[:, 0], ds.test.labels.numpy()
        client = Client(dep["gateway"]["url"], dep["model"], images, labels, args.rate, t0)
        client.start()
        end = time.monotonic() + 30
        while not [a for a in client.answers if a.ok] and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(2.0)
        first = next((a for a in client.answers if a.ok), None)
        if first is None:
            log(t0, "no answer with every server up")
            return 1

        comps = dep["components"]
        server_of = {c["component"]: c["server"] for c in comps}
        alone = {u for u in server_of if [c for c, s in server_of.items() if s == server_of[u]] == [u]}
        ups = first.subset.split("+")
        victim_name = args.kill or next((u for u in ups if u in alone), ups[0])
        victim = next((c for c in comps if c["component"] == victim_name), None)
        if victim is None:
            log(t0, f"--kill {victim_name}: no such component in the deployment")
            return 2
        log(t0, f"kill -9 {victim['pid']}  ({victim_name} on {victim['server']}, from deployment.json)")
        t_kill = time.monotonic() - t0
        os.kill(victim["pid"], signal.SIGKILL)

        # failover: the first answer after the kill that avoids the killed server; recovery: an answer
        # that uses the killed component again, now on another server (the re-plan's new process)
        failover = recovered = None
        end = time.monotonic() + RECOVER_TIMEOUT_S
        while time.monotonic() < end and (failover is None or recovered is None):
            dep_now = read_deployment(dep_file)
            if dep_now:
                seen_pids |= {c["pid"] for c in dep_now["components"]}
            after = [a for a in client.answers if a.ok and a.t > t_kill]
            if failover is None:
                failover = next((a for a in after if victim["server"] not in a.servers), None)
            if recovered is None:
                recovered = next(
                    (a for a in after if victim_name in a.subset.split("+") and victim["server"] not in a.servers),
                    None,
                )
            time.sleep(0.1)
        time.sleep(1.0)
        client.stop.set()
        client.join(timeout=15)

        log(t0, "$ kill -TERM (melplan serve)")
        serve.send_signal(signal.SIGTERM)
        try:
            rc = serve.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
        time.sleep(0.5)
        left = sorted(p for p in seen_pids if alive(p))

        answers = client.answers
        failed = [a for a in answers if not a.ok]
        print()
        print(f"Requests: {len(answers)} sent, {len(answers) - len(failed)} answered, {len(failed)} failed")
        by: dict[str, list[Answer]] = {}
        for a in answers:
            if a.ok:
                by.setdefault(a.subset, []).append(a)
        print(f"{'subset':<12} {'requests':>8} {'accuracy here':>13} {'catalog accuracy':>16}")
        for key, xs in sorted(by.items(), key=lambda kv: -len(kv[1])):
            print(f"{key:<12} {len(xs):>8} {sum(a.right for a in xs) / len(xs):>13.4f} {xs[0].accuracy:>16.4f}")
        print(
            "(accuracy here: on the images each subset answered; the catalog's is on the whole test set)\n"
            f"Kill of {victim_name} on {victim['server']} at {t_kill:.2f} s: "
            + (
                f"first answer around it {1e3 * (failover.t - t_kill):.0f} ms later (by {failover.subset}); "
                if failover
                else "NO answer around it; "
            )
            + (
                f"{victim_name} served again from {','.join(s for s in recovered.servers)} "
                f"{recovered.t - t_kill:.1f} s after the kill (re-plan, new process, readiness)"
                if recovered
                else f"{victim_name} did NOT serve again within {RECOVER_TIMEOUT_S:.0f} s"
            )
        )
        print(
            f"melplan serve exited with {rc}; "
            + (f"processes left running: {left}" if left else f"none of the {len(seen_pids)} component processes left")
        )
        ok = not failed and failover is not None and recovered is not None and rc == 0 and not left
        return 0 if ok else 1
    finally:
        if client is not None:
            client.stop.set()
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                serve.kill()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"(run folder kept: {tmp})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
