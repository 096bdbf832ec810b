"""The gateway: one Open Inference Protocol model (the plan's family id) in front of the component
servers, with the :class:`~melplan.runtime.selector.RuntimeSelector` inside (no torch).

A request's ``input`` is raw input, preprocessed here as the catalog entry's ``dataset.preprocessing``
says (:mod:`melplan.core.preprocessing`): pixels ``UINT8 [N, H, W]`` or ``[N, C, H, W]``; audio clips
``INT16`` or ``FP32 [N, samples]``; sentences ``BYTES [N]``; or the model's input itself (``FP32`` in
its input shape; ``INT64`` token ids ``[N, max_len]`` for text).
The gateway sends it to the upstreams of the current route in parallel, the upstreams' features to
the route's combiner, and answers ``label`` (``INT64 [N]``) and ``probabilities`` (``FP32 [N,
classes]``) with the response parameters ``subset``, ``servers`` (comma-separated), ``degraded``
and ``accuracy`` (the catalog's accuracy of the answering subset).

Failures, in band (Envoy's outlier detection): a call that fails or misses its deadline marks its server
down in the selector at once, and the same request continues on the new route, reusing what already
replied (an upstream's exit answers alone; the features it sent are kept for the next combiner), until
the deadline; at the deadline the best subset that did reply answers. Hedging: a call still unanswered
after the hedge delay (``hedge_ms``, default 10, or 1.5 times the 95th percentile of the server's last
200 call times for that batch size when longer) makes its server suspect; that request answers at once
through the best upstream that already replied, and requests that come while the suspicion lasts ask the
route around the server alongside the best one. The suspicion ends when a call to the server answers; a
failure or the heartbeat marks it down. This bounds failover on a SIGKILL: the kernel closes a killed
torch process's sockets only after tearing down its memory (about 20 ms for 500 MiB resident here,
benchmarks/sigkill_socket_close.py), so waiting for the connection error alone takes that long. Out of
band: a heartbeat checks every component's ``/v2/health/ready`` (default every 50 ms) so idle failures
are seen too. A server comes back only when all its components report ready and its ejection time (it
doubles with each failure within a minute, from 0.25 s up to 8 s) has passed; components that never
reported ready (starting, or started by a re-plan) count as down for routing without being failures.

Data path: the gateway is a hub.  Features travel upstream -> gateway -> combiner, while the
planner's latency model (:func:`melplan.core.evaluate.path_latency_ms`) assumes they go from each
upstream straight to the combiner (ingress -> upstreams -> combiner -> ingress).  With the gateway
at the ingress, the hub adds one hop per upstream (upstream -> ingress -> combiner instead of
upstream -> combiner); on one machine every link is loopback.  :meth:`Gateway.latency_report`
prints both side by side (see docs/serve.md).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from melplan.core.catalog import Family
from melplan.core.cluster import Cluster
from melplan.core.errors import InputError, SelectorError
from melplan.core.plan import Plan
from melplan.core.preprocessing import Preprocessing, TextPreprocessing, from_record, model_datatype
from melplan.runtime.selector import ReplanResult, Route, RuntimeSelector
from melplan.serve.client import CallFailed, ComponentClient
from melplan.serve.defaults import DEFAULT_HEARTBEAT_MS, DEFAULT_HEDGE_MS, DEFAULT_TIMEOUT_MS
from melplan.serve.protocol import ProtocolError, TensorSpec, decode_request, encode_response

DEFAULT_MAX_BATCH = 256
EJECT_BASE_S = 0.25
EJECT_MAX_S = 8.0
EJECT_WINDOW_S = 60.0
HEDGE_FACTOR = 1.5  # the hedge delay: this times a high quantile of the server's recent call times
HEDGE_QUANTILE = 0.95
HEDGE_WINDOW = 200  # recent call times kept per (server, batch-size bucket)
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Endpoint:
    component: str
    server: str
    url: str


Result = dict[str, np.ndarray] | CallFailed


def _bucket_of(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _bucket(inputs: Mapping[str, np.ndarray]) -> int:
    return _bucket_of(int(next(iter(inputs.values())).shape[0]))


@dataclass
class _RequestState:
    """What one request has so far: upstream answers, calls in flight, failed and late servers."""

    batch: int
    have: dict[str, tuple[np.ndarray, np.ndarray, str]] = field(
        default_factory=dict
    )  # upstream -> probs, feats, server
    calls: dict[tuple[str, str], tuple[Future[Result], float]] = field(default_factory=dict)
    combs: dict[tuple[str, str], tuple[Future[Result], float, tuple[str, ...]]] = field(default_factory=dict)
    bad: set[str] = field(default_factory=set)  # servers that failed in this request
    late: set[str] = field(default_factory=set)  # servers with a call of this request past the hedge delay

    @property
    def fallback(self) -> bool:
        return bool(self.bad or self.late)


@dataclass(frozen=True)
class Answer:
    probabilities: np.ndarray
    subset: str
    servers: tuple[str, ...]
    accuracy: float
    degraded: bool
    path_s: float
    fallback: bool  # answered after a component call failed or was passed over as late


class _Metrics:
    """Prometheus metrics of one gateway (its own registry, so several gateways can share a process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "melplan_requests", "Answered requests by answering subset", ["subset", "degraded"], registry=r
        )
        self.errors = Counter("melplan_request_errors", "Requests answered with an error", ["status"], registry=r)
        self.latency = Histogram(
            "melplan_request_latency_seconds",
            "Gateway latency from request body read to response ready",
            ["degraded"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.path = Histogram(
            "melplan_path_latency_seconds",
            "Component path latency (first upstream call to the answer) by answering subset",
            ["subset"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.route_changes = Counter("melplan_route_changes", "Route changes of the runtime selector", registry=r)
        self.fallbacks = Counter(
            "melplan_in_request_fallbacks",
            "Requests answered after a component call failed or was passed over as late",
            registry=r,
        )
        self.hedged = Counter(
            "melplan_hedges", "Times a server became suspect (a call past the hedge delay)", registry=r
        )
        self.call_failures = Counter(
            "melplan_component_call_failures", "Failed component calls", ["component", "server"], registry=r
        )
        self.component_up = Gauge(
            "melplan_component_up",
            "1 when the component reported ready and its server is up",
            ["component", "server"],
            registry=r,
        )
        self.replans = Counter("melplan_replans", "Re-plans applied", registry=r)


class Gateway:
    """The gateway's model side (an :class:`~melplan.serve.httpserver.OIPApp`).

    ``endpoints``: the component servers, one per placed (component, server) replica.  ``cluster``
    enables latencies and re-planning (policy ``replan-after``); without it the selector only fails
    over.  ``on_replan`` receives each applied :class:`ReplanResult` (the launcher starts and stops
    processes from its actions and calls :meth:`set_endpoint` / :meth:`remove_endpoint`).

    Raises the selector's :class:`~melplan.core.errors.PlanFileError` when plan and family disagree.
    """

    def __init__(
        self,
        plan: Plan,
        family: Family,
        endpoints: Iterable[Endpoint],
        *,
        cluster: Cluster | None = None,
        policy: str | None = None,
        timeout_ms: float = DEFAULT_TIMEOUT_MS,
        heartbeat_ms: float = DEFAULT_HEARTBEAT_MS,
        hedge_ms: float = DEFAULT_HEDGE_MS,
        max_batch: int = DEFAULT_MAX_BATCH,
        workers: int = 32,
        on_replan: Callable[[ReplanResult], Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.family = family
        self.model = family.id
        self.timeout_s = timeout_ms / 1e3
        self.heartbeat_s = heartbeat_ms / 1e3
        self.hedge_s = hedge_ms / 1e3
        self.max_batch = max_batch
        self.metrics = _Metrics()
        self._suspect: dict[str, float] = {}  # server -> when a call to it went past the hedge delay
        # (server, batch size rounded up to a power of two) -> moving average of its call time (s)
        self._recent: dict[tuple[str, int], deque[float]] = {}  # recent call times
        self._typical: dict[tuple[str, int], float] = {}  # HEDGE_QUANTILE of _recent
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._lock = threading.RLock()
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        self._ever_ready: set[tuple[str, str]] = set()
        self._ready_now: set[tuple[str, str]] = set()
        self._eject_until: dict[str, float] = {}
        self._ejections: dict[str, deque[float]] = {}
        self._pending: frozenset[str] = frozenset()
        self._on_replan = on_replan
        if cluster is not None and cluster.ingress is not None:
            # the gateway is the ingress and is up while it answers: a dead component process on the
            # ingress server takes that server's components out of the route, not the whole service
            cluster = dataclasses.replace(cluster, ingress=None)
        self.selector = RuntimeSelector(
            plan,
            family,
            cluster,
            policy=policy,
            on_route_change=lambda rec: self.metrics.route_changes.inc(),
            on_replan=self._replanned,
        )
        self._upstreams = set(family.upstream_names)
        try:
            self.preprocessing: Preprocessing | None = from_record(
                family.dataset.get("preprocessing"), source=family.source
            )
        except Exception:
            self.preprocessing = None  # raw input refused with a 400 naming the missing record
        self.input_shape = tuple(int(x) for x in family.dataset.get("input_shape", [3, 32, 32]))
        self.num_classes = int(family.dataset.get("num_classes", 10))
        self._client = ComponentClient()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="melplan-call")
        self._hb_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="melplan-heartbeat")
        self._paths: dict[str, deque[float]] = {}
        self._totals: dict[str, deque[float]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        for e in endpoints:
            self._endpoints[(e.component, e.server)] = e
        self._refresh_pending()
        self.model_datatype = model_datatype(family.dataset)
        pp = self.preprocessing
        self._vocab = len(pp.record["vocabulary"]) if isinstance(pp, TextPreprocessing) else 0
        raw = self.preprocessing.raw_datatypes if self.preprocessing is not None else ("UINT8",)
        self._spec = TensorSpec("input", tuple(dict.fromkeys((*raw, self.model_datatype))), None)

    # -- endpoints and health ---------------------------------------------------------------------
    def set_endpoint(self, endpoint: Endpoint) -> None:
        """Add or move a component replica; it routes only once it reports ready."""
        key = (endpoint.component, endpoint.server)
        with self._lock:
            self._endpoints[key] = endpoint
            self._ever_ready.discard(key)
            self._ready_now.discard(key)
            self._refresh_pending()

    def remove_endpoint(self, component: str, server: str) -> None:
        with self._lock:
            key = (component, server)
            self._endpoints.pop(key, None)
            self._ever_ready.discard(key)
            self._ready_now.discard(key)
            try:
                self.metrics.component_up.remove(component, server)
            except KeyError:
                pass
            self._refresh_pending()

    def endpoints(self) -> list[Endpoint]:
        with self._lock:
            return list(self._endpoints.values())

    def _placed(self) -> list[tuple[str, str]]:
        return [(c, s) for c, servers in self.selector.plan.placement.items() for s in servers]

    def _refresh_pending(self) -> None:
        """Servers with a placed component that has not reported ready since it (re)started."""
        with self._lock:
            self._pending = frozenset(
                s for c, s in self._placed() if (c, s) not in self._endpoints or (c, s) not in self._ever_ready
            )

    def route(self) -> Route:
        pending = self._pending
        if not pending:
            return self.selector.route()
        return self.selector.route_for(self.selector.down | pending)

    def _failed(self, server: str, component: str, exc: CallFailed) -> None:
        self.metrics.call_failures.labels(component, server).inc()
        if not exc.server_fault:
            return
        now = time.monotonic()
        with self._lock:
            self._ready_now.discard((component, server))
            hist = self._ejections.setdefault(server, deque())
            while hist and hist[0] < now - EJECT_WINDOW_S:
                hist.popleft()
            if server in self.selector.down:
                return
            hist.append(now)
            self._eject_until[server] = now + min(EJECT_MAX_S, EJECT_BASE_S * 2 ** (len(hist) - 1))
            self.selector.mark_down(server)
            self._suspect.pop(server, None)
            for c, s in self._placed():
                if s == server:
                    self.metrics.component_up.labels(c, s).set(0)
        self._log(f"melplan gateway: {component}@{server} failed ({exc.reason}); {server} marked down")

    def heartbeat_once(self) -> None:
        """Check every placed component's readiness once and update the selector."""
        with self._lock:
            eps = [self._endpoints[k] for k in self._placed() if k in self._endpoints]
        timeout = max(0.05, min(0.5, 4 * self.heartbeat_s))
        futures = [(e, self._hb_pool.submit(self._client.ready, e.url, timeout=timeout)) for e in eps]
        results = {(e.component, e.server): f.result() for e, f in futures}
        now = time.monotonic()
        by_server: dict[str, list[bool]] = {}
        changed = False
        newly_ready: list[tuple[str, str]] = []
        with self._lock:
            for key, ok in results.items():
                if key not in self._endpoints:
                    continue
                if ok:
                    if key not in self._ever_ready:
                        self._ever_ready.add(key)
                        newly_ready.append(key)
                        changed = True
                    self._ready_now.add(key)
                else:
                    self._ready_now.discard(key)
                by_server.setdefault(key[1], []).append(ok)
            if changed:
                self._refresh_pending()
            down = self.selector.down
            for server, oks in by_server.items():
                if not all(oks) and server not in down and server not in self._pending:
                    self._failed(server, "heartbeat", CallFailed(server, "heartbeat: not ready"))
                elif all(oks) and server in down and now >= self._eject_until.get(server, 0.0):
                    self.selector.mark_up(server)
                    self._suspect.pop(server, None)
                    self._log(f"melplan gateway: {server} ready again; back in the route")
            down = self.selector.down
            for c, s in self._placed():
                up = (c, s) in self._ready_now and s not in down
                self.metrics.component_up.labels(c, s).set(1 if up else 0)
        # a component a re-plan started serves once it reports ready: tell the selector, whose routes
        # skip its pending starts until then (outside the gateway's lock, as the selector calls back)
        pending = self.selector.pending
        for c, s in newly_ready:
            if (c, s) in pending:
                try:
                    self.selector.mark_ready(c, s)
                except SelectorError:  # a newer re-plan moved it meanwhile
                    continue
                self._log(f"melplan gateway: {c}@{s} (started by a re-plan) is ready; it may serve")

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                self.heartbeat_once()
            except Exception as exc:  # keep heartbeating whatever happens
                self._log(f"melplan gateway: heartbeat error {exc!r}")
            self._stop.wait(max(0.0, self.heartbeat_s - (time.monotonic() - t)))

    def _control_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                if self.selector.tick() is not None:
                    self._refresh_pending()
            except Exception as exc:
                self._log(f"melplan gateway: re-plan error {exc!r}")

    def _replanned(self, result: ReplanResult) -> None:
        # runs under the selector's lock: taking the gateway's lock here could deadlock with the
        # heartbeat (gateway lock, then selector); the control loop refreshes pending after tick()
        self.metrics.replans.inc()
        self._log(
            "melplan gateway: re-plan applied ("
            + result.reason
            + "): "
            + (", ".join(str(a) for a in result.actions) or "no actions")
        )
        if self._on_replan is not None:
            self._on_replan(result)

    def start(self) -> None:
        for target in (self._heartbeat_loop, self._control_loop):
            t = threading.Thread(target=target, daemon=True, name=f"melplan-{target.__name__}")
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._hb_pool.shutdown(wait=False, cancel_futures=True)

    def wait_ready(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.ready():
                return True
            time.sleep(0.05)
        return self.ready()

    # -- the request path -------------------------------------------------------------------------
    def _call(self, ep: Endpoint, inputs: Mapping[str, np.ndarray], deadline: float) -> dict[str, np.ndarray]:
        outs, _ = self._client.infer(ep.url, ep.component, inputs, timeout=deadline - time.monotonic())
        return outs

    def _guarded(self, ep: Endpoint, inputs: Mapping[str, np.ndarray], deadline: float) -> Result:
        """One component call in a pool thread.  Its outcome is recorded here, so a late call that
        fails after its request moved on still marks the server down, and one that answers clears
        the server's suspicion."""
        t = time.monotonic()
        try:
            out = self._call(ep, inputs, deadline)
        except CallFailed as exc:
            self._failed(ep.server, ep.component, exc)
            return exc
        took = time.monotonic() - t
        key = (ep.server, _bucket(inputs))
        recent = self._recent.setdefault(key, deque(maxlen=HEDGE_WINDOW))
        recent.append(took)
        ranked = sorted(recent)
        self._typical[key] = ranked[min(len(ranked) - 1, int(HEDGE_QUANTILE * len(ranked)))]
        if ep.server in self._suspect:
            with self._lock:
                self._suspect.pop(ep.server, None)
        return out

    def _submit(self, ep: Endpoint, inputs: Mapping[str, np.ndarray], deadline: float) -> tuple[Future[Result], float]:
        return self._pool.submit(self._guarded, ep, inputs, deadline), time.monotonic()

    def hedge_delay(self, server: str, batch: int) -> float:
        """Seconds to wait for a call to ``server`` with ``batch`` inputs before passing it over:
        ``hedge_ms``, or HEDGE_FACTOR times the HEDGE_QUANTILE of the server's recent call times for
        batches of that size when that is longer.  A quantile, not a mean: on a busy machine call times
        have a long tail, and a delay at twice their mean passed over 16% of all-up batches of 100 here,
        each answered by one upstream.  Infinite until one call of that size has answered."""
        typical = self._typical.get((server, _bucket_of(batch)))
        return float("inf") if typical is None else max(self.hedge_s, HEDGE_FACTOR * typical)

    def _late(self, st: _RequestState, server: str, now: float) -> None:
        """A call of this request to ``server`` is past the hedge delay: suspect the server (requests
        race a route around it until one of its calls answers; a failure or the heartbeat marks it down)."""
        st.late.add(server)
        if server not in self._suspect:
            self.metrics.hedged.inc()
            with self._lock:
                self._suspect.setdefault(server, now)

    def answer(self, x: np.ndarray, deadline: float) -> Answer:
        """Answer a preprocessed batch through the best route, failing over inside the request.
        Raises ProtocolError(503) when no subset can answer.

        Upstream calls run in parallel.  A call that fails takes its server out of this request's
        routes (and marks it down).  A call still unanswered after the hedge delay makes its server
        suspect: this request answers at once through the best upstream that already replied (or,
        when none has, also asks the route around that server), and requests that come while the
        suspicion lasts ask the best route and the route around the suspect server together, and
        answer through the best one complete.  A SIGKILLed process's sockets close only once the
        kernel has torn down its memory (tens of ms for a torch process), so the hedge,
        not the connection error, bounds the failover time.
        """
        t0 = time.monotonic()
        inputs = {"input": x}
        st = _RequestState(batch=int(x.shape[0]))
        while time.monotonic() < deadline:
            base = self.selector.down | self._pending | st.bad
            primary = self.selector.route_for(base)
            if primary.down:
                break
            cands = [primary]
            around = (st.late | set(self._suspect)) - base
            if around & set(primary.servers):
                alt = self.selector.route_for(base | around)
                if not alt.down:
                    cands.append(alt)
            missing = False
            take_alt = True
            for r in cands:
                if r is not primary and not take_alt:
                    break
                ups = self._ups(r)
                for c, s in ups:
                    if c not in st.have and (c, s) not in st.calls:
                        ep = self._endpoints.get((c, s))
                        if ep is None:
                            st.bad.add(s)
                            missing = True
                        else:
                            st.calls[(c, s)] = self._submit(ep, inputs, deadline)
                if r is primary:  # take the route around only when the best one waits on a late server
                    waiting = {s for c, s in ups if c not in st.have}
                    if r.combiner is not None and not waiting:
                        waiting.add(r.combiner_server or "")
                    take_alt = bool(waiting & around)
                if missing or not all(c in st.have for c, _ in ups):
                    continue
                servers = tuple(dict.fromkeys(st.have[c][2] for c, _ in ups))
                if r.combiner is None:
                    return self._done(st.have[ups[0][0]][0], r.answer or "", servers, t0, st.fallback)
                key = (r.answer or "", r.combiner_server or "")
                if key not in st.combs:
                    cep = self._endpoints.get((r.combiner, r.combiner_server or ""))
                    if cep is None:
                        st.bad.add(key[1])
                        missing = True
                        continue
                    feats = {m: st.have[m][1] for m in key[0].split("+")}
                    st.combs[key] = (*self._submit(cep, feats, deadline), servers + (key[1],))
            if missing:
                continue
            if not st.calls and not st.combs:
                break  # nothing in flight and nothing new: no route can complete
            got = self._wait(st, deadline)
            if got is not None:
                return self._done(got[0], got[1], tuple(dict.fromkeys(got[2])), t0, st.fallback)
            if st.late and st.have:  # past the hedge delay: the best upstream that replied answers now
                break
        if st.have:  # the deadline passed or nothing else is servable: the best upstream that replied
            best = max(st.have, key=lambda u: self.family.accuracy.get(u, 0.0))
            return self._done(st.have[best][0], best, (st.have[best][2],), t0, True)
        raise ProtocolError("no subset of the ensemble can answer: every route's servers are down or late", 503)

    def _ups(self, route: Route) -> list[tuple[str, str]]:
        return [(c, s) for c, s in route.components if c in self._upstreams]

    def _wait(self, st: _RequestState, deadline: float) -> tuple[np.ndarray, str, tuple[str, ...]] | None:
        """Wait for the next call to end, the next hedge point or the deadline, and record what came.
        Returns a combiner's answer (the most accurate when several came), or None: choose again."""
        now = time.monotonic()
        flights = [(f, t, k[1]) for k, (f, t) in st.calls.items()]
        flights += [(f, t, k[1]) for k, (f, t, _) in st.combs.items()]
        if not any(f.done() for f, _, _ in flights):
            points = [p for _, t, srv in flights if (p := t + self.hedge_delay(srv, st.batch)) > now]
            timeout = max(0.0, min([deadline, *points]) - now)
            wait([f for f, _, _ in flights], timeout=timeout, return_when=FIRST_COMPLETED)
        now = time.monotonic()
        for key, (f, t) in list(st.calls.items()):
            if f.done():
                del st.calls[key]
                res = f.result()
                if isinstance(res, CallFailed):
                    st.bad.add(key[1])
                else:
                    st.have[key[0]] = (res["probabilities"], res["features"], key[1])
                    st.late.discard(key[1])
            elif now - t >= self.hedge_delay(key[1], st.batch):
                self._late(st, key[1], now)
        best: tuple[np.ndarray, str, tuple[str, ...]] | None = None
        for ckey, (f, t, servers) in list(st.combs.items()):
            if f.done():
                del st.combs[ckey]
                res = f.result()
                if isinstance(res, CallFailed):
                    st.bad.add(ckey[1])
                elif best is None or self.family.accuracy.get(ckey[0], 0.0) > self.family.accuracy.get(best[1], 0.0):
                    best = (res["probabilities"], ckey[0], servers)
            elif now - t >= self.hedge_delay(ckey[1], st.batch):
                self._late(st, ckey[1], now)
        return best

    def _done(self, probs: np.ndarray, key: str, servers: tuple[str, ...], t0: float, fallback: bool) -> Answer:
        path_s = time.monotonic() - t0
        acc = float(self.family.accuracy.get(key, 0.0))
        degraded = acc < self.selector.route().accuracy_all_up - 1e-9
        if fallback:
            self.metrics.fallbacks.inc()
        self.metrics.path.labels(key).observe(path_s)
        with self._lock:
            self._paths.setdefault(key, deque(maxlen=20000)).append(path_s)
        return Answer(probs, key, servers, acc, degraded, path_s, fallback)

    def _input(self, body: bytes, header_length: str | None) -> tuple[np.ndarray, Any]:
        req = decode_request(body, header_length, [self._spec], outputs=("label", "probabilities"))
        x = req.inputs["input"]
        if x.ndim < 1 or x.shape[0] < 1:
            raise ProtocolError("input 'input' needs a batch of at least one")
        if x.shape[0] > self.max_batch:
            raise ProtocolError(f"batch of {x.shape[0]} is over the gateway's limit of {self.max_batch}")
        dt = req.datatypes["input"]
        shape = tuple(int(d) for d in x.shape)
        model_in = f"{self.model_datatype} [N, {', '.join(map(str, self.input_shape))}]"
        if dt == self.model_datatype and shape[1:] == self.input_shape:
            if dt == "FP32" and not np.isfinite(x).all():
                raise ProtocolError("FP32 input 'input' holds NaN or infinity")
            if dt == "INT64" and (int(x.min()) < 0 or (self._vocab and int(x.max()) >= self._vocab)):
                raise ProtocolError(f"INT64 input 'input' holds token ids outside 0..{self._vocab - 1}")
            return np.ascontiguousarray(x, dtype=np.float32 if dt == "FP32" else np.int64), req
        pp = self.preprocessing
        if pp is None:
            if dt == self.model_datatype:
                raise ProtocolError(f"{dt} input 'input' has shape {list(shape)}; expected {model_in}")
            raise ProtocolError(
                f"family {self.model} records no dataset.preprocessing, so raw {dt} input cannot be served; "
                f"send {model_in}"
            )
        if not pp.accepts(shape, dt):
            raise ProtocolError(f"{dt} input 'input' has shape {list(shape)}; expected {pp.expected()} or {model_in}")
        try:
            return pp.apply(x), req
        except InputError as exc:
            raise ProtocolError(f"input 'input': {exc.message}" + (f"; {exc.fix}" if exc.fix else "")) from None

    # -- OIPApp -----------------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Every placed component loaded and answering, none of their servers down."""
        with self._lock:
            placed = self._placed()
            return all(k in self._ready_now for k in placed) and not (self.selector.down & {s for _, s in placed})

    def server_metadata(self) -> dict[str, Any]:
        from melplan.serve.protocol import package_version

        return {"name": "melplan-gateway", "version": package_version(), "extensions": ["binary_tensor_data"]}

    def _check(self, model: str) -> None:
        if model != self.model:
            raise ProtocolError(f"unknown model '{model}'; this gateway serves '{self.model}'", 404)

    def model_metadata(self, model: str) -> dict[str, Any]:
        self._check(model)
        pp = self.preprocessing
        inputs = [{"name": "input", "datatype": self.model_datatype, "shape": [-1, *self.input_shape]}]
        if pp is not None:
            inputs[:0] = [{"name": "input", "datatype": d, "shape": shp} for d, shp in pp.raw_shapes()]
        r = self.route()
        return {
            "name": self.model,
            "versions": ["1"],
            "platform": "melplan/mel-ensemble",
            "inputs": inputs,
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, self.num_classes]},
            ],
            "parameters": {
                "subset": r.answer or "",
                "servers": ",".join(r.servers),
                "accuracy": r.accuracy,
                "degraded": r.degraded,
                "down": ",".join(sorted(self.selector.down)),
            },
        }

    def model_ready(self, model: str) -> bool:
        self._check(model)
        return self.ready()

    def infer(self, model: str, body: bytes, header_length: str | None) -> tuple[bytes, dict[str, str]]:
        t0 = time.monotonic()
        try:
            self._check(model)
            x, req = self._input(body, header_length)
            timeout = self.timeout_s
            given = req.parameters.get("timeout")  # Triton's request timeout, in microseconds
            if isinstance(given, (int, float)) and not isinstance(given, bool) and given > 0:
                timeout = min(timeout, given / 1e6)
            ans = self.answer(x, t0 + timeout)
        except ProtocolError as exc:
            self.metrics.errors.labels(str(exc.status)).inc()
            raise
        probs = np.asarray(ans.probabilities, dtype=np.float32)
        outputs = {"label": probs.argmax(1).astype(np.int64), "probabilities": probs}
        body_out, headers = encode_response(
            self.model,
            outputs,
            request=req,
            parameters={
                "subset": ans.subset,
                "servers": ",".join(ans.servers),
                "degraded": ans.degraded,
                "accuracy": ans.accuracy,
            },
        )
        total = time.monotonic() - t0
        self.metrics.requests.labels(ans.subset, str(ans.degraded).lower()).inc()
        self.metrics.latency.labels(str(ans.degraded).lower()).observe(total)
        with self._lock:
            self._totals.setdefault(ans.subset, deque(maxlen=20000)).append(total)
        return body_out, headers

    def extra_get(self, path: str) -> tuple[int, str, bytes] | None:
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/melplan/status":
            return 200, "application/json", json.dumps(self.status()).encode()
        return None

    # -- reports ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        r = self.route()
        return {
            "model": self.model,
            "route": r.to_dict(),
            "down": sorted(self.selector.down),
            "pending": sorted(self._pending),
            "placement": {k: list(v) for k, v in self.selector.plan.placement.items()},
            "latency": self.latency_report(),
        }

    def predicted_cpu_ms(self, key: str) -> float | None:
        """The catalog's measured CPU latency of the subset's path: slowest upstream + combiner."""
        try:
            ups = [self.family.upstream(u).latency_ms.get("cpu") for u in key.split("+")]
            if any(v is None for v in ups):
                return None
            t = max(float(v) for v in ups if v is not None)
            if "+" in key:
                combs = self.family.combiners_serving(key)
                cl = [v for v in (c.latency_ms.get("cpu") for c in combs) if v is not None]
                if not cl:
                    return None
                t += min(float(v) for v in cl)
            return t
        except KeyError:
            return None

    def latency_report(self) -> list[dict[str, Any]]:
        """Per answering subset: measured path and gateway latency next to the plan's prediction."""
        rows = []
        with self._lock:
            items = {k: list(v) for k, v in self._paths.items()}
            totals = {k: list(v) for k, v in self._totals.items()}
        for key in sorted(items, key=lambda k: -len(items[k])):
            xs = sorted(items[key])
            ts = sorted(totals.get(key, []))
            rows.append(
                {
                    "subset": key,
                    "requests": len(xs),
                    "path_ms_p50": round(1e3 * statistics.median(xs), 3),
                    "path_ms_p99": round(1e3 * xs[min(len(xs) - 1, int(0.99 * len(xs)))], 3),
                    "gateway_ms_p50": round(1e3 * statistics.median(ts), 3) if ts else None,
                    "plan_predicted_ms": self.selector.plan.latency_ms.get(key),
                    "catalog_cpu_ms": self.predicted_cpu_ms(key),
                }
            )
        return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m melplan.serve.gateway --plan PLAN --component COMPONENT@SERVER=URL ...``: the gateway
    alone (melplan.serve.launcher.gateway_main holds the options; ``melplan serve`` runs the same Gateway)."""
    from melplan.serve.launcher import gateway_main

    return gateway_main(argv)


if __name__ == "__main__":
    sys.exit(main())
