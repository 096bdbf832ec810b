"""Embed melplan's RuntimeSelector in a heartbeat loop over real local worker processes.

Run:  python examples/orchestrator.py            (about 6 s, no network beyond 127.0.0.1)
      python examples/orchestrator.py --replan   (also re-plans with melplan.planner.planner once the
                                                  failure outlasts a 1 s grace period)
      python examples/orchestrator.py --plan plan.json --servers cluster.yaml [--catalog DIR]

One worker process per server listens on 127.0.0.1 (an ephemeral port) and answers three line
commands: ``PING`` (heartbeat), ``RUN <component>`` (pretend inference; refused when the component
is not started there) and ``START/STOP <component>`` (what a re-plan's actions do).  The
orchestrator pings every worker every 100 ms; two missed heartbeats mark the server down, one good
heartbeat marks it up.  Every route change arrives through the selector's ``on_route_change``
callback, and one request is sent along the current route after each phase to show who answers.

Scenario: all up -> kill (SIGKILL) the worker of the first upstream -> failover -> restart it ->
recovery.  The whole run is bounded (see ``DEADLINE_S``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from melplan.core.catalog import Combiner, Family, Upstream  # noqa: E402
from melplan.core.cluster import Cluster, Link, Server, Workload  # noqa: E402
from melplan.core.plan import Plan  # noqa: E402
from melplan.runtime.reconcile import Policy  # noqa: E402
from melplan.runtime.selector import RuntimeSelector, planner_replanner  # noqa: E402

HEARTBEAT_S = 0.1
TIMEOUT_S = 0.15
MISSES_FOR_DOWN = 2
DEADLINE_S = 25.0


# -- a worker: one per server -------------------------------------------------------------------


def worker_main(server: str, components: list[str], port_out) -> None:
    """Serve PING / RUN / START / STOP on 127.0.0.1 until killed."""
    running = set(components)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port_out.send(sock.getsockname()[1])
    port_out.close()
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(1.0)
            try:
                line = conn.makefile("r").readline().strip()
            except OSError:
                continue
            verb, _, arg = line.partition(" ")
            if verb == "PING":
                reply = f"PONG {server}"
            elif verb == "RUN":
                reply = f"OK {arg}@{server}" if arg in running else f"ERR {arg} not running on {server}"
            elif verb == "START":
                running.add(arg)
                reply = f"STARTED {arg}@{server}"
            elif verb == "STOP":
                running.discard(arg)
                reply = f"STOPPED {arg}@{server}"
            else:
                reply = "ERR unknown command"
            try:
                conn.sendall((reply + "\n").encode())
            except OSError:
                pass


def call(port: int, line: str, timeout: float = TIMEOUT_S) -> str | None:
    """One request to a worker on 127.0.0.1; None when it does not answer in time."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall((line + "\n").encode())
            return s.makefile("r").readline().strip() or None
    except OSError:
        return None


class Fleet:
    """The worker processes, by server name."""

    def __init__(self, placement: dict[str, tuple[str, ...]], servers: list[str]) -> None:
        self.placement = placement
        self.procs: dict[str, mp.Process] = {}
        self.ports: dict[str, int] = {}
        for s in servers:
            self.start(s)

    def components_on(self, server: str) -> list[str]:
        return [c for c, srvs in self.placement.items() if server in srvs]

    def start(self, server: str) -> None:
        recv, send = mp.Pipe(duplex=False)
        p = mp.Process(
            target=worker_main, args=(server, self.components_on(server), send), daemon=True, name=f"worker-{server}"
        )
        p.start()
        send.close()
        if not recv.poll(10):
            raise RuntimeError(f"worker {server} did not start")
        self.ports[server] = recv.recv()
        self.procs[server] = p

    def kill(self, server: str) -> None:
        p = self.procs[server]
        p.kill()  # SIGKILL: no goodbye, only missed heartbeats tell
        p.join(2)

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.is_alive():
                p.kill()
                p.join(2)


# -- the orchestrator ---------------------------------------------------------------------------


class Orchestrator:
    def __init__(self, selector: RuntimeSelector, fleet: Fleet, t0: float) -> None:
        self.sel = selector
        self.fleet = fleet
        self.t0 = t0
        self.misses = {s: 0 for s in fleet.ports}
        selector.subscribe(on_route_change=self.on_route_change, on_replan=self.on_replan)

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.2f}s] {msg}", flush=True)

    def on_route_change(self, record) -> None:
        r = record.route
        what = (
            "DOWN (no servable subset)"
            if r.down
            else f"{r.answer} on {', '.join(r.servers)}, accuracy {r.accuracy:.4f}{' (degraded)' if r.degraded else ''}"
        )
        cause = f"{record.kind} {record.server}" if record.server else record.kind
        self.log(f"route change after '{cause}': {what}")

    def on_replan(self, result) -> None:
        self.log(
            f"re-plan ({result.reason}): {len(result.actions)} action(s), {result.bytes_moved / 2**20:.2f} MiB to load"
        )
        for a in result.actions:  # act: starts first, then stops (make before break)
            port = self.fleet.ports.get(a.server)
            reply = call(port, f"{a.verb.upper()} {a.component}") if port else None
            self.log(f"  {a}: {reply or 'server unreachable'}")
        self.fleet.placement = {k: tuple(v) for k, v in result.new_plan.placement.items()}

    def heartbeat_round(self) -> None:
        for server, port in self.fleet.ports.items():
            ok = call(port, "PING") is not None
            if ok:
                self.misses[server] = 0
                if server in self.sel.down:
                    self.sel.mark_up(server)
            else:
                self.misses[server] += 1
                if self.misses[server] == MISSES_FOR_DOWN:
                    started = time.perf_counter()
                    self.sel.mark_down(server)
                    self.log(
                        f"{server} missed {MISSES_FOR_DOWN} heartbeats: marked down, failover decided in "
                        f"{(time.perf_counter() - started) * 1e6:.0f} us (callback included)"
                    )
        self.sel.tick()

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            self.heartbeat_round()
            time.sleep(max(0.0, HEARTBEAT_S - (time.monotonic() - started)))

    def request(self) -> None:
        """Send one request along the current route and show who answered."""
        r = self.sel.route()
        if r.down:
            self.log("request: no route, the service is down")
            return
        replies = [call(self.fleet.ports[s], f"RUN {c}", timeout=1.0) or f"no reply from {s}" for c, s in r.components]
        self.log(f"request served by {r.answer} (accuracy {r.accuracy:.4f}): {'; '.join(replies)}")


# -- a small deployment: a 3-upstream MEL family on 5 servers -----------------------------------


def demo_deployment() -> tuple[Plan, Family, Cluster]:
    mib = 1 << 20
    names = ["u1", "u2", "u3"]
    ups = tuple(
        Upstream(n, params=160_000, macs=9_000_000, weight_bytes=640_000, feature_bytes=1280, activation_bytes=200_000)
        for n in names
    )
    subsets = [("u1", "u2"), ("u1", "u3"), ("u2", "u3"), ("u1", "u2", "u3")]
    combs = tuple(
        Combiner(subset=s, params=40_000 * len(s), macs=40_000 * len(s), weight_bytes=160_000 * len(s)) for s in subsets
    )
    acc = {"u1": 0.874, "u2": 0.869, "u3": 0.861, "u1+u2": 0.901, "u1+u3": 0.897, "u2+u3": 0.894, "u1+u2+u3": 0.915}
    family = Family(
        id="demo-effb0-u3",
        dataset={"name": "fashion-mnist", "num_classes": 10, "input_shape": [3, 32, 32]},
        base="efficientnet_b0",
        training={},
        upstreams=ups,
        combiners=combs,
        accuracy=acc,
    )
    servers = tuple(
        Server(f"edge-{c}", memory_mb=64.0, compute_gmacs=20.0, failure_prob=p)
        for c, p in zip("abcde", (0.02, 0.03, 0.02, 0.01, 0.01))
    )
    cluster = Cluster(servers, Workload(rate_rps=50.0, latency_slo_ms=100.0), Link(1.0, 1000.0), (), "edge-d")
    placement = {
        "u1": ("edge-a",),
        "u2": ("edge-b",),
        "u3": ("edge-c",),
        "u1+u2": ("edge-d",),
        "u1+u3": ("edge-d",),
        "u2+u3": ("edge-e",),
        "u1+u2+u3": ("edge-d", "edge-e"),
    }
    del mib
    return Plan(family.id, placement, "expected", 0.0, 0.0, {}), family, cluster


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", help="plan.json (default: a built-in 3-upstream deployment)")
    ap.add_argument("--servers", help="cluster.yaml of the plan (needed with --plan for --replan)")
    ap.add_argument("--catalog", help="catalog directory of the plan's family")
    ap.add_argument(
        "--replan",
        action="store_true",
        help="policy replan-after with a 1 s grace period (calls melplan.planner.planner)",
    )
    args = ap.parse_args(argv)

    if args.plan:
        from melplan.core.catalog import load_catalog
        from melplan.core.cluster import load_cluster
        from melplan.core.plan import load_plan

        plan = load_plan(args.plan)
        family = load_catalog(args.catalog).get(plan.family)
        cluster = load_cluster(args.servers) if args.servers else None
    else:
        plan, family, cluster = demo_deployment()
    if args.replan:
        if cluster is None:
            ap.error("--replan needs --servers")
        policy = Policy.named("replan-after", grace_s=1.0, hold_down_s=1.0, backoff_s=1.0)
        replanner = planner_replanner(time_limit_s=5.0)
    else:
        policy, replanner = Policy.named("failover-only"), None
    selector = RuntimeSelector(plan, family, cluster, policy=policy, replanner=replanner)

    t0 = time.monotonic()
    workers = cluster.names if (cluster is not None and args.replan) else list(selector.lookup.used)
    fleet = Fleet({k: tuple(v) for k, v in plan.placement.items()}, workers)
    orch = Orchestrator(selector, fleet, t0)
    try:
        r = selector.route()
        orch.log(f"{len(workers)} workers up on 127.0.0.1 ports {sorted(fleet.ports.values())}; policy {policy.name}")
        orch.log(f"all up: {r.answer} on {', '.join(r.servers)}, accuracy {r.accuracy:.4f}")
        orch.run_for(0.5)
        orch.request()
        victim = r.components[0][1]
        orch.log(f"killing the worker of {victim} (SIGKILL)")
        fleet.kill(victim)
        orch.run_for(3.0 if args.replan else 1.0)
        orch.request()
        orch.log(f"restarting the worker of {victim}")
        fleet.start(victim)
        orch.run_for(3.0 if args.replan else 1.0)
        orch.request()
        if time.monotonic() - t0 > DEADLINE_S:
            orch.log("took longer than expected")
            return 1
        kinds = [rec.kind for rec in selector.history]
        orch.log(f"{len(kinds)} records: " + ", ".join(f"{k} x{kinds.count(k)}" for k in dict.fromkeys(kinds)))
        final = selector.route()
        ok = not final.down and victim not in selector.down
        orch.log(
            "recovered: " + ("yes" if ok else "NO") + f"; final route {final.answer}, accuracy {final.accuracy:.4f}"
        )
        return 0 if ok else 1
    finally:
        fleet.stop_all()


if __name__ == "__main__":
    sys.exit(main())
