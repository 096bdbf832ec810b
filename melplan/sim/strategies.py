"""What the simulator compares: the plan (through a RuntimeSelector) and the single-model baselines
(no torch).

Baseline models (fair by construction: the catalog's best-trained single models, DESIGN §7):

* **primary**: the most accurate single model (``n = 1``) of the plan's dataset that fits a server
  (memory, compute at the workload rate, SLO from the ingress); the catalog's ``reference`` only when
  it is the more accurate one.  Without any single model, the plan family's ``reference`` block;
* **backup**: the most accurate other single model no larger than the primary that fits a second
  server; without one, a hot replica of the primary;
* **cloud**: the most accurate single model of the dataset, whatever its size (the cloud has room).

Servers are ranked by failure probability, then compute (faster first), then name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from melplan.core.catalog import Catalog, Family, Upstream
from melplan.core.cluster import Cluster
from melplan.core.evaluate import path_latency_ms
from melplan.core.plan import Plan
from melplan.runtime.reconcile import Policy
from melplan.runtime.selector import Record, Replanner, RuntimeSelector

# -- baseline models and servers ----------------------------------------------------------------


@dataclass(frozen=True)
class BaselineModels:
    """The single models the baselines run, and how they were chosen (``how``)."""

    primary: Family | None
    backup: Family | None
    cloud: Family | None
    how: str
    primary_servers: tuple[str, ...] = ()
    backup_server: str | None = None
    why_not: str = ""


def singles_of(catalog: Catalog | None, family: Family) -> list[Family]:
    """Single-model families of the plan's dataset (the plan family's reference block when none)."""
    dataset = family.dataset.get("name")
    singles = [f for f in (catalog or ()) if f.n == 1 and f.dataset.get("name") == dataset]
    if not singles:
        ref = _reference_from_block(family)
        singles = [ref] if ref is not None else []
    return singles


def _rank(f: Family) -> tuple:
    return (f.accuracy_all_up, -f.weight_bytes, f.id)


def choose_baselines(catalog: Catalog | None, family: Family, cluster: Cluster) -> BaselineModels:
    """The primary, backup and cloud models (see the module) and the servers they run on."""
    singles = singles_of(catalog, family)
    if not singles:
        return BaselineModels(
            None,
            None,
            None,
            "no single model of the dataset in the catalog and no reference block in the plan's family",
        )
    cloud = max(singles, key=_rank)
    fits = {f.id: fitting_servers(f, cluster) for f in singles}
    placeable = [f for f in singles if fits[f.id][0]]
    how = [f"cloud {cloud.id} ({cloud.accuracy_all_up:.4f}, the most accurate single model)"]
    if not placeable:
        best = max(singles, key=_rank)
        return BaselineModels(None, None, cloud, "; ".join(how), why_not=_why_none(best, fits[best.id][1]))
    primary = max(placeable, key=_rank)
    servers = tuple(fits[primary.id][0])
    role = primary.extra.get("role")
    how.insert(
        0,
        f"primary {primary.id} ({primary.accuracy_all_up:.4f}, the most accurate single model that fits"
        + (f"; role {role}" if role else "")
        + ")",
    )
    backup, bserver = None, None
    others = sorted(
        (f for f in placeable if f.id != primary.id and f.weight_bytes <= primary.weight_bytes), key=_rank, reverse=True
    )
    for f in others:
        ok = [s for s in fits[f.id][0] if s != servers[0]]
        if ok:
            backup, bserver = f, ok[0]
            how.append(f"backup {f.id} ({f.accuracy_all_up:.4f}, the most accurate smaller single model)")
            break
    if backup is None:
        rest = [s for s in servers if s != servers[0]]
        if rest:
            backup, bserver = primary, rest[0]
            how.append(f"backup: a hot replica of {primary.id} (no smaller single model fits a second server)")
        else:
            how.append("no backup: no second server fits a single model")
    return BaselineModels(primary, backup, cloud, "; ".join(how), servers, bserver)


def _reference_from_block(family: Family) -> Family | None:
    ref = family.reference or {}
    if "accuracy" not in ref or "params" not in ref:
        return None
    params = int(ref["params"])
    up = Upstream(name="u1", params=params, macs=int(ref.get("macs", 0)), weight_bytes=4 * params, feature_bytes=0)
    return Family(
        id=str(ref.get("id", f"{family.id}-reference")),
        dataset=dict(family.dataset),
        base=family.base,
        training={},
        upstreams=(up,),
        combiners=(),
        accuracy={"u1": float(ref["accuracy"])},
        extra={"role": "reference", "derived_from": family.id},
    )


def fitting_servers(single: Family, cluster: Cluster) -> tuple[list[str], dict[str, str]]:
    """Servers that can run a single model (memory, compute at the workload rate, SLO), most
    reliable first; plus why each other server cannot."""
    up = single.upstreams[0]
    rate = cluster.workload.rate_rps
    slo = cluster.workload.latency_slo_ms
    ok, why = [], {}
    for s in sorted(cluster.servers, key=lambda s: (s.failure_prob, -s.compute_gmacs, s.name)):
        if up.memory_bytes > s.memory_bytes:
            why[s.name] = f"needs {up.memory_bytes / (1 << 20):.1f} MiB, has {s.memory_mb:g}"
            continue
        if up.macs * rate > s.compute_gmacs * 1e9:
            why[s.name] = f"needs {up.macs * rate / 1e9:.2f} GMAC/s, has {s.compute_gmacs:g}"
            continue
        if slo is not None:
            lat = path_latency_ms(single, cluster, single.all_key, {up.name: s.name}, None, None)
            if lat > slo:
                why[s.name] = f"latency {lat:.1f} ms > SLO {slo:g} ms"
                continue
        ok.append(s.name)
    return ok, why


def _why_none(model: Family, why: dict[str, str]) -> str:
    sample = "; ".join(f"{k}: {v}" for k, v in list(why.items())[:3])
    return f"no server can run {model.id} ({sample})"


# -- strategies ---------------------------------------------------------------------------------


class Strategy:
    """One deployment replayed over the trace.  ``observe`` gets what the monitor sees;
    ``delivered`` returns the accuracy delivered at t given the true down servers (-1: no answer)."""

    key = ""
    label = ""
    servers: tuple[str, ...] = ()
    replans = 0
    bytes_moved = 0
    note = ""
    detection_s = 0.0

    def observe(self, t: float, server: str, state: str) -> None:
        raise NotImplementedError

    def due(self, t: float) -> float | None:
        return None

    def wake(self, t: float) -> None:
        pass

    def delivered(self, t: float, true_down: set[str]) -> float:
        raise NotImplementedError

    def details(self) -> tuple[dict, ...]:
        return ()


class PlanStrategy(Strategy):
    """The plan, routed by a :class:`RuntimeSelector`.  A re-plan's started components report ready
    ``load_of(component)`` seconds after the start (after their server is seen up again, when it is
    down): until then the selector keeps them out of routes and the old placement serves."""

    key = "plan"

    def __init__(
        self,
        plan: Plan,
        family: Family,
        cluster: Cluster,
        catalog: Catalog | None,
        policy: Policy,
        replanner: Replanner | None,
        migration_weight: float | None,
        load_of: Callable[[Family, str], float],
        detection_s: float,
    ) -> None:
        self._t = 0.0
        self._events: list[dict] = []
        self.sel = RuntimeSelector(
            plan,
            family,
            cluster,
            catalog=catalog,
            policy=policy,
            replanner=replanner,
            migration_weight=migration_weight,
            clock=lambda: self._t,
            on_replan_failed=self._failed,
        )
        self.load_of = load_of
        self.detection_s = detection_s
        self.label = f"plan: {family.id} ({policy.name})"
        self.servers = tuple(self.sel.lookup.used)
        self._ready_at: dict[tuple[str, str], float] = {}
        self.failed = 0
        self.reasons: dict[str, int] = {}

    def _failed(self, rec: Record) -> None:
        self.failed += 1
        self.reasons[rec.failure] = self.reasons.get(rec.failure, 0) + 1
        self._events.append({"time_s": rec.time, "kind": "replan-failed", "reason": rec.detail, "failure": rec.failure})

    def observe(self, t: float, server: str, state: str) -> None:
        self._t = t
        (self.sel.mark_down if state == "down" else self.sel.mark_up)(server, now=t)
        if state == "up":  # a start that was cut off by its server's failure starts over
            for pair, at in list(self._ready_at.items()):
                if pair[1] == server and math.isinf(at):
                    self._ready_at[pair] = t + self.load_of(self.sel.family, pair[0])

    def due(self, t: float) -> float | None:
        due = self.sel.next_due(now=t)
        finite = [at for at in self._ready_at.values() if not math.isinf(at)]
        if finite and (due is None or min(finite) < due):
            due = min(finite)
        return due

    def wake(self, t: float) -> None:
        self._t = t
        down = self.sel.down
        for pair, at in sorted(self._ready_at.items(), key=lambda kv: kv[1]):
            if at <= t:
                if pair[1] in down:  # its server is down: the start resumes once it is back
                    self._ready_at[pair] = math.inf
                    continue
                del self._ready_at[pair]
                if pair in self.sel.pending:
                    self.sel.mark_ready(*pair, now=t)
        result = self.sel.tick(now=t)
        if result is None:
            return
        self.replans += 1
        self.bytes_moved += result.bytes_moved
        self._ready_at = {p: at for p, at in self._ready_at.items() if p in self.sel.pending}
        for pair in result.pending:
            if pair not in self._ready_at:
                self._ready_at[pair] = t + self.load_of(self.sel.family, pair[0])
        self._events.append(
            {
                "time_s": t,
                "kind": "replan",
                "reason": result.reason,
                "family": result.new_plan.family,
                "actions": [str(a) for a in result.actions],
                "bytes_moved": result.bytes_moved,
                "pending": [f"{c} on {s}" for c, s in result.pending],
            }
        )

    def delivered(self, t: float, true_down: set[str]) -> float:
        route = self.sel.route()
        if route.answer is None or not self.sel.answers(true_down):  # path down or cut off from the ingress
            return -1.0
        return route.accuracy

    def details(self) -> tuple[dict, ...]:
        return tuple(self._events)


class ColdRestart(Strategy):
    key = "cold-restart"

    def __init__(self, model: Family, candidates: Sequence[str], load_s: float, detection_s: float) -> None:
        self.label = f"single model, cold restart ({model.id})"
        self.acc = model.accuracy_all_up
        self.weight = model.weight_bytes
        self.candidates = list(candidates)
        self.load_s = load_s
        self.detection_s = detection_s
        self.cur: str | None = self.candidates[0]
        self.ready_at = 0.0
        self.seen_down: set[str] = set()
        self.servers = (self.cur,)
        self.note = (
            f"restarts on the next of {', '.join(self.candidates[:4])}{' ...' if len(self.candidates) > 4 else ''}"
        )

    def _restart(self, t: float) -> None:
        nxt = next((s for s in self.candidates if s not in self.seen_down), None)
        self.cur = nxt
        if nxt is not None:
            self.ready_at = t + self.load_s
            self.replans += 1
            self.bytes_moved += self.weight

    def observe(self, t: float, server: str, state: str) -> None:
        if state == "down":
            self.seen_down.add(server)
            if server == self.cur:
                self._restart(t)
        else:
            self.seen_down.discard(server)
            if self.cur is None:
                self._restart(t)

    def due(self, t: float) -> float | None:
        return self.ready_at if self.ready_at > t else None

    def delivered(self, t: float, true_down: set[str]) -> float:
        if self.cur is None or t < self.ready_at or self.cur in true_down:
            return -1.0
        return self.acc


class Backup(Strategy):
    key = "backup"

    def __init__(self, model: Family, backup: Family, primary: str, second: str, detection_s: float) -> None:
        what = "hot replica" if backup.id == model.id else "smaller backup"
        self.label = f"single model + {what} ({model.id} + {backup.id})"
        self.acc, self.acc_b = model.accuracy_all_up, backup.accuracy_all_up
        self.primary, self.second = primary, second
        self.servers = (primary, second)
        self.detection_s = detection_s
        self.seen_down: set[str] = set()

    def observe(self, t: float, server: str, state: str) -> None:
        (self.seen_down.add if state == "down" else self.seen_down.discard)(server)

    def delivered(self, t: float, true_down: set[str]) -> float:
        for srv, acc in ((self.primary, self.acc), (self.second, self.acc_b)):
            if srv not in self.seen_down:
                return -1.0 if srv in true_down else acc
        return -1.0


class Cloud(Strategy):
    key = "cloud"

    def __init__(
        self,
        model: Family,
        cloud_model: Family,
        primary: str,
        cloud_ms: float,
        slo: float | None,
        wan_rtt_ms: float,
        detection_s: float,
    ) -> None:
        self.label = f"cloud failover ({model.id}; cloud {cloud_model.id})"
        self.acc = model.accuracy_all_up
        self.acc_cloud = cloud_model.accuracy_all_up
        self.primary = primary
        self.servers = (primary,)
        self.detection_s = detection_s
        self.cloud_ok = slo is None or cloud_ms <= slo
        slo_txt = "no SLO" if slo is None else f"SLO {slo:g} ms"
        self.note = f"cloud path {cloud_ms:.1f} ms ({wan_rtt_ms:g} ms WAN), {slo_txt}: " + (
            "cloud answers count" if self.cloud_ok else "cloud answers are late and count as missed"
        )
        self.seen_down = False

    def observe(self, t: float, server: str, state: str) -> None:
        if server == self.primary:
            self.seen_down = state == "down"

    def delivered(self, t: float, true_down: set[str]) -> float:
        if not self.seen_down:
            return -1.0 if self.primary in true_down else self.acc
        return self.acc_cloud if self.cloud_ok else -1.0
