"""The local deployment behind ``melplan serve`` (DESIGN §8): one OS process per placed component
replica (each stands for its server), the gateway, ``deployment.json``, and a clean stop (no torch).

Component processes run ``python -m melplan.serve.component`` with ``--parent-pid`` (they exit when
this process is gone, even after a SIGKILL of it), stderr to ``RUN_DIR/logs/<component>@<server>.log``.
The gateway runs in this process and is ready (``/v2/health/ready`` 200) only when every placed
component reports ready.  Re-plan actions from the gateway's selector start and stop real
processes, readiness-gated: a started component routes only once it reports ready.  With
``restart`` (the default, like a Kubernetes ``restartPolicy``) a component process that dies is
started again on the same port after ``restart_delay_s``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melplan.core.catalog import Family
from melplan.core.cluster import Cluster
from melplan.core.errors import InputError, MelplanError, PlanFileError, ServeError
from melplan.core.fileio import atomic_write_json
from melplan.core.plan import Plan
from melplan.runtime.selector import ReplanResult
from melplan.serve.defaults import DEFAULT_HEARTBEAT_MS, DEFAULT_HEDGE_MS, DEFAULT_TIMEOUT_MS
from melplan.serve.gateway import Endpoint, Gateway
from melplan.serve.httpserver import OIPServer


@dataclass
class ServingInputs:
    """What serving needs from a plan: the plan, its family (entry written for the components), the
    cluster (optional) and the weights file with its digest."""

    plan: Plan
    family: Family
    cluster: Cluster | None
    weights: Path
    sha256: str | None
    source: str


def load_for_serving(
    plan_path: str | os.PathLike,
    *,
    catalog_dir: str | None = None,
    cluster_path: str | None = None,
    service: str | None = None,
) -> ServingInputs:
    """Load a plan, its family and weights (and the cluster when given or embedded).

    One loader (:func:`melplan.core.plan.load_plan_bundle`): a v2 plan embeds family, cluster and
    the weights' location and digest; ``service`` picks one service of a site plan.
    Raises PlanFileError/CatalogError/ClusterError for bad files,
    and PlanFileError when the family has no weights file to serve or it cannot be found."""
    from melplan.core.plan import load_plan_bundle
    from melplan.serve.component import sha256_of

    b = load_plan_bundle(plan_path, catalog_dir=catalog_dir, cluster_path=cluster_path, service=service)
    wp = b.require_weights()  # found and digest-checked, or PlanFileError naming where it looked
    ref = b.plan.weights
    digest = ref.sha256 if ref is not None and ref.sha256 else sha256_of(wp)
    return ServingInputs(b.plan, b.family, b.cluster, Path(wp), digest, str(plan_path))


def listen(app: Any, host: str, port: int) -> OIPServer:
    """Bind an Open Inference Protocol server for ``app`` (the gateway of ``melplan serve`` and of
    ``python -m melplan.serve.gateway``).  Raises InputError naming ``--port`` when it cannot bind."""
    try:
        return OIPServer(app, host, port)
    except OSError as exc:
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror})",
            field="--port",
            fix="choose a free port with --port (0 picks one)",
        ) from None


@dataclass
class ComponentProcess:
    component: str
    server: str
    popen: subprocess.Popen
    log_path: Path
    port: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    listening: threading.Event = field(default_factory=threading.Event)
    expected_exit: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.component, self.server)


class LocalDeployment:
    """Start, supervise and stop a plan's component processes and its gateway.

    Use as a context manager or call :meth:`start` and :meth:`stop`.  Raises :class:`ServeError`
    when a component does not come up within ``ready_timeout_s`` (with the tail of its log), and
    InputError when the gateway port is taken or the run folder holds a live deployment.
    """

    def __init__(
        self,
        inputs: ServingInputs,
        *,
        run_dir: str | os.PathLike = "melplan-run",
        host: str = "127.0.0.1",
        port: int = 8000,
        policy: str | None = None,
        timeout_ms: float = DEFAULT_TIMEOUT_MS,
        heartbeat_ms: float = DEFAULT_HEARTBEAT_MS,
        hedge_ms: float = DEFAULT_HEDGE_MS,
        restart: bool = True,
        restart_delay_s: float = 1.0,
        ready_timeout_s: float = 300.0,
        threads: int = 1,
        force: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.inputs = inputs
        self.run_dir = Path(run_dir)
        self.host = host
        self.port = port
        self.policy = policy
        self.timeout_ms = timeout_ms
        self.heartbeat_ms = heartbeat_ms
        self.hedge_ms = hedge_ms
        self.restart = restart
        self.restart_delay_s = restart_delay_s
        self.ready_timeout_s = ready_timeout_s
        self.threads = threads
        self.force = force
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._procs: dict[tuple[str, str], ComponentProcess] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._actions: queue.Queue[ReplanResult | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.gateway: Gateway | None = None
        self.server: OIPServer | None = None
        self.family_file = self.run_dir / "family.json"
        self.deployment_file = self.run_dir / "deployment.json"

    # -- processes --------------------------------------------------------------------------------
    def _spawn(self, component: str, server: str, port: int = 0) -> ComponentProcess:
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{component}@{server}.log"
        cmd = [
            sys.executable,
            "-m",
            "melplan.serve.component",
            "--family-file",
            str(self.family_file),
            "--component",
            component,
            "--server",
            server,
            "--weights",
            str(self.inputs.weights.resolve()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            str(self.threads),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.inputs.sha256:
            cmd += ["--weights-sha256", self.inputs.sha256]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log_path, "ab") as err:
            popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env)
        proc = ComponentProcess(component, server, popen, log_path, port or None)
        threading.Thread(target=self._read_events, args=(proc,), daemon=True).start()
        return proc

    def _read_events(self, proc: ComponentProcess) -> None:
        assert proc.popen.stdout is not None
        for line in proc.popen.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            proc.events.append(ev)
            if ev.get("event") == "listening":
                proc.port = int(ev["port"])
                proc.listening.set()
        proc.listening.set()  # the process ended: stop waiting

    def _await_listening(self, procs: list[ComponentProcess], timeout: float) -> None:
        end = time.monotonic() + timeout
        for p in procs:
            p.listening.wait(max(0.0, end - time.monotonic()))
            if p.port is None or p.popen.poll() is not None:
                raise ServeError(
                    f"component {p.component}@{p.server} did not start: {self._tail(p.log_path)}",
                    file=str(p.log_path),
                    fix="read the component's log",
                )

    @staticmethod
    def _tail(path: Path, n: int = 600) -> str:
        try:
            text = path.read_text(errors="replace").strip()
        except OSError:
            return "(no log)"
        return text[-n:] or "(empty log)"

    def start_component(self, component: str, server: str, port: int = 0, *, wait: bool = True) -> ComponentProcess:
        """Start (or restart, on ``port``) one component process and hand it to the gateway."""
        proc = self._spawn(component, server, port)
        with self._lock:
            self._procs[(component, server)] = proc
        if wait:
            self._await_listening([proc], self.ready_timeout_s)
            if self.gateway is not None:
                self.gateway.set_endpoint(Endpoint(component, server, proc.url))
            self.write_deployment()
        return proc

    def kill(self, component: str, server: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to one component process (failure injection); returns its pid. The supervisor
        restarts it only when ``restart`` is on."""
        with self._lock:
            proc = self._procs[(component, server)]
        os.kill(proc.popen.pid, sig)
        return proc.popen.pid

    def restart_component(self, component: str, server: str) -> ComponentProcess:
        """Start a stopped or killed component again on its old port (as a restarted pod keeps its Service)."""
        with self._lock:
            old = self._procs[(component, server)]
            old.expected_exit = True
        if old.popen.poll() is None:
            old.popen.kill()
        old.popen.wait(timeout=10)
        return self.start_component(component, server, old.port or 0)

    def stop_component(self, component: str, server: str) -> None:
        with self._lock:
            proc = self._procs.pop((component, server), None)
        if self.gateway is not None:
            self.gateway.remove_endpoint(component, server)
        if proc is not None:
            proc.expected_exit = True
            self._terminate([proc])
        self.write_deployment()

    @staticmethod
    def _terminate(procs: list[ComponentProcess], grace_s: float = 5.0) -> None:
        for p in procs:
            if p.popen.poll() is None:
                try:
                    p.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + grace_s
        for p in procs:
            try:
                p.popen.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(timeout=5)

    def processes(self) -> list[ComponentProcess]:
        with self._lock:
            return list(self._procs.values())

    def pids(self) -> list[int]:
        return [p.popen.pid for p in self.processes()]

    # -- supervision and re-plans -----------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.wait(0.2):
            if not self.restart:
                continue
            for p in self.processes():
                if p.popen.poll() is not None and not p.expected_exit and not self._stop.is_set():
                    self._log(
                        f"melplan serve: {p.component}@{p.server} exited ({p.popen.returncode}); "
                        f"restarting in {self.restart_delay_s:g} s"
                    )
                    p.expected_exit = True
                    threading.Thread(target=self._delayed_restart, args=(p,), daemon=True).start()

    def _delayed_restart(self, p: ComponentProcess) -> None:
        if self._stop.wait(self.restart_delay_s):
            return
        with self._lock:
            if self._procs.get(p.key) is not p:
                return
        try:
            self.start_component(p.component, p.server, p.port or 0)
        except MelplanError as exc:
            self._log(f"melplan serve: restart of {p.component}@{p.server} failed: {exc}")

    def _on_replan(self, result: ReplanResult) -> None:
        self._actions.put(result)  # runs under the selector's lock: hand the work to a thread

    def _act(self) -> None:
        while True:
            result = self._actions.get()
            if result is None or self._stop.is_set():
                return
            for a in result.actions:
                try:
                    if a.verb == "start":
                        self._log(f"melplan serve: {a} (re-plan)")
                        self.start_component(a.component, a.server)
                    elif a.verb == "stop":
                        self._log(f"melplan serve: {a} (re-plan)")
                        self.stop_component(a.component, a.server)
                except (MelplanError, KeyError, OSError) as exc:
                    self._log(f"melplan serve: action '{a}' failed: {exc}")

    # -- the whole deployment ---------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        if self.deployment_file.exists() and not self.force:
            try:
                pid = int(json.loads(self.deployment_file.read_text())["gateway"]["pid"])
                os.kill(pid, 0)
                alive = True
            except (OSError, ValueError, KeyError, TypeError):
                alive = False
            raise InputError(
                "a deployment is already running from this run folder"
                if alive
                else "a deployment.json from an earlier run is there",
                file=str(self.deployment_file),
                field="--run-dir",
                fix="stop it first, or use another --run-dir" if alive else "pass --force to replace it",
            )

    def start(self) -> LocalDeployment:
        self._check_run_dir()
        self.server = listen(_Pending(self.inputs.family.id), self.host, self.port)
        self.port = self.server.port
        self.server.start_background()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.family_file, self.inputs.family.to_dict())
        try:
            placed = [(c, s) for c, servers in self.inputs.plan.placement.items() for s in servers]
            procs = [self._spawn(c, s) for c, s in placed]
            with self._lock:
                for p in procs:
                    self._procs[p.key] = p
            self._await_listening(procs, self.ready_timeout_s)
            gw = Gateway(
                self.inputs.plan,
                self.inputs.family,
                [Endpoint(p.component, p.server, p.url) for p in procs],
                cluster=self.inputs.cluster,
                policy=self.policy,
                timeout_ms=self.timeout_ms,
                heartbeat_ms=self.heartbeat_ms,
                hedge_ms=self.hedge_ms,
                on_replan=self._on_replan,
                log=self._log,
            )
            self.gateway = gw
            self.server.app = gw
            gw.start()
            for target in (self._supervise, self._act):
                t = threading.Thread(target=target, daemon=True)
                t.start()
                self._threads.append(t)
            end = time.monotonic() + self.ready_timeout_s
            while not gw.ready():
                dead = [p for p in procs if p.popen.poll() is not None]
                if dead:
                    p = dead[0]
                    raise ServeError(
                        f"component {p.component}@{p.server} exited while loading: {self._tail(p.log_path)}",
                        file=str(p.log_path),
                        fix="read the component's log",
                    )
                if time.monotonic() > end:
                    raise ServeError(
                        f"the components were not all ready within {self.ready_timeout_s:g} s",
                        field="--ready-timeout",
                        fix="raise --ready-timeout on a slow machine, or read the logs in " + str(self.run_dir),
                    )
                time.sleep(0.05)
            self.write_deployment()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def deployment(self) -> dict[str, Any]:
        return {
            "gateway": {"url": self.url, "pid": os.getpid()},
            "model": self.inputs.family.id,
            "components": [
                {"component": p.component, "server": p.server, "pid": p.popen.pid, "url": p.url}
                for p in self.processes()
                if p.port is not None
            ],
        }

    def write_deployment(self) -> None:
        if self.gateway is not None and not self._stop.is_set():
            atomic_write_json(self.deployment_file, self.deployment())

    def stop(self) -> None:
        """Stop the gateway and every process this deployment started (idempotent)."""
        self._stop.set()
        self._actions.put(None)
        if self.gateway is not None:
            self.gateway.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self._lock:
            procs = list(self._procs.values())
            for p in procs:
                p.expected_exit = True
        self._terminate(procs)
        try:
            if self.deployment_file.exists() and json.loads(self.deployment_file.read_text())["gateway"]["pid"] == (
                os.getpid()
            ):
                self.deployment_file.unlink()
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def parse_endpoint(spec: str) -> Endpoint:
    """One ``--component`` value of the standalone gateway, ``COMPONENT@SERVER=URL`` (the form
    :func:`melplan.deploy.k8s.endpoint_arg` writes), as an :class:`Endpoint`.  Raises InputError."""
    head, eq, url = spec.partition("=")
    component, at, server = head.rpartition("@")
    if not (eq and at and component and server) or not url.startswith(("http://", "https://")):
        raise InputError(
            f"'{spec}' is not COMPONENT@SERVER=URL",
            field="--component",
            fix="write one per placed replica, e.g. --component u1@edge-a=http://127.0.0.1:41001",
        )
    return Endpoint(component, server, url.rstrip("/"))


def check_endpoints(plan: Plan, endpoints: list[Endpoint], source: str) -> None:
    """Exactly one endpoint per placed (component, server) replica of ``plan``; raises InputError."""
    placed = {(c, s) for c, servers in plan.placement.items() for s in servers}
    given = [(e.component, e.server) for e in endpoints]
    twice = sorted({f"{c}@{s}" for c, s in given if given.count((c, s)) > 1})
    extra = sorted(f"{c}@{s}" for c, s in set(given) - placed)
    missing = sorted(f"{c}@{s}" for c, s in placed - set(given))
    for what, items in (("given twice", twice), ("not placed by the plan", extra), ("missing", missing)):
        if items:
            raise InputError(
                f"--component {what}: {', '.join(items)}",
                file=source,
                field="--component",
                fix="give one COMPONENT@SERVER=URL for every replica the plan places, and no other",
            )


def gateway_main(argv: list[str] | None = None) -> int:
    """``python -m melplan.serve.gateway``: the gateway alone, in front of component servers that run
    elsewhere (the Kubernetes Deployment ``melplan export --format k8s`` writes).  Same Gateway, same
    port binding and the same request, failover and heartbeat semantics as ``melplan serve``; the
    selector only fails over (policy ``failover-only``): nothing here starts processes, so a re-plan
    could not be carried out.  Stops on SIGTERM/SIGINT."""
    import argparse

    from melplan.core.plan import load_plan_bundle

    p = argparse.ArgumentParser(
        prog="python -m melplan.serve.gateway",
        description="The melplan gateway alone: one Open Inference Protocol model (the plan's family id) "
        "in front of the plan's component servers.",
    )
    p.add_argument("--plan", required=True, help="plan file (v2: it embeds its family and cluster)")
    p.add_argument(
        "--component",
        action="append",
        default=[],
        metavar="COMPONENT@SERVER=URL",
        help="where one placed replica answers; one per replica of the plan",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 only on purpose)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    p.add_argument("--timeout-ms", type=float, default=DEFAULT_TIMEOUT_MS, help="deadline of one request")
    p.add_argument("--heartbeat-ms", type=float, default=DEFAULT_HEARTBEAT_MS, help="readiness check interval")
    p.add_argument("--hedge-ms", type=float, default=DEFAULT_HEDGE_MS, help="wait before racing a route around a call")
    args = p.parse_args(argv)
    stop = threading.Event()
    try:
        for name, value in (
            ("--timeout-ms", args.timeout_ms),
            ("--heartbeat-ms", args.heartbeat_ms),
            ("--hedge-ms", args.hedge_ms),
        ):
            if not value > 0:
                raise InputError(f"{name} must be > 0, got {value}", field=name, fix=f"pass a positive {name}")
        endpoints = [parse_endpoint(spec) for spec in args.component]
        bundle = load_plan_bundle(args.plan)
        check_endpoints(bundle.plan, endpoints, args.plan)
        gw = Gateway(
            bundle.plan,
            bundle.family,
            endpoints,
            cluster=bundle.cluster,
            policy="failover-only",
            timeout_ms=args.timeout_ms,
            heartbeat_ms=args.heartbeat_ms,
            hedge_ms=args.hedge_ms,
        )
        server = listen(gw, args.host, args.port)
    except MelplanError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    gw.start()
    server.start_background()
    sys.stdout.write(
        json.dumps({"event": "listening", "model": gw.model, "port": server.port, "pid": os.getpid()}) + "\n"
    )
    sys.stdout.flush()
    print(
        f"melplan gateway: serving {gw.model} on http://{args.host}:{server.port} "
        f"in front of {len(endpoints)} component replica(s)",
        file=sys.stderr,
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    gw.close()
    server.shutdown()
    server.server_close()
    print("melplan gateway: stopped; " + json.dumps({"latency": gw.latency_report()}), file=sys.stderr, flush=True)
    return 0


class _Pending:
    """The app a gateway port answers with before the gateway exists (live, never ready)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return False

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "melplan-gateway", "extensions": []}

    def model_metadata(self, model: str) -> dict[str, Any]:
        from melplan.serve.protocol import ProtocolError

        raise ProtocolError("the gateway is starting", 503)

    def model_ready(self, model: str) -> bool:
        from melplan.serve.protocol import ProtocolError

        raise ProtocolError("the gateway is starting", 503)

    def infer(self, model: str, body: bytes, header_length: str | None):
        from melplan.serve.protocol import ProtocolError

        raise ProtocolError("the gateway is starting", 503)

    def extra_get(self, path: str):
        return None


__all__ = [
    "LocalDeployment",
    "ServeError",
    "ServingInputs",
    "gateway_main",
    "listen",
    "load_for_serving",
    "parse_endpoint",
    "PlanFileError",
]
