"""Local repair: re-place only what a failure displaced, keeping everything else where it runs.

A fast alternative to the ILP for the selector's re-plans (``RuntimeSelector(...,
replanner=repair_replanner())``, ``melplan simulate --replanner repair``).  Given the running
placement and the cluster without the excluded servers:

* every component with a replica on an available server stays there;
* each upstream whose server is gone, and each lost combiner replica, is placed in turn (upstreams
  first, then combiners by the accuracy of the best subset they serve) on the available server
  that maximises the plan's exact expected accuracy (:mod:`melplan.core.evaluate`), among servers with
  the memory and compute left (compute at the workload rate), no other upstream for an upstream,
  and every answering path within the SLO; ties go to the more reliable, then faster server;
* a combiner replica that fits nowhere is dropped (its subsets may still be served elsewhere); an
  upstream that fits nowhere raises :class:`InfeasiblePlanError`.

It moves the minimum (only displaced components start) and is greedy rather than optimal.  After a
recovery, once every server of the selector's original placement (``ReplanRequest.original``: the
plan it started with, optimal for the whole site) is available again and that placement is more
accurate in expectation than the repaired one, it goes back to it (``extra.repair.how`` says which).
Servers that only relay requests (``ReplanRequest.hosts_nothing``: an excluded ingress) host nothing,
nor do servers with no path from the ingress (behind a gateway that is down): what runs there is
displaced too.
Cost: one exact evaluation per (displaced component, candidate server), milliseconds each for plans on a few servers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from melplan.core.catalog import Family, subset_key
from melplan.core.cluster import Cluster
from melplan.core.errors import InfeasiblePlanError
from melplan.core.evaluate import RouteTable, capacity_violations, evaluate_placement, scores
from melplan.core.plan import Plan


def expected_accuracy(family: Family, placement: Mapping[str, Sequence[str]], cluster: Cluster) -> tuple[float, float]:
    """(exact expected accuracy, worst latency in ms over the paths of subsets with accuracy > 0)
    of a placement (melplan.core.evaluate: reachability and failure domains included)."""
    table = RouteTable(family, placement, cluster)
    worst = max((ch.latency_ms or 0.0 for ch in table.choices if ch.accuracy > 0), default=0.0)
    return scores(table).expected, worst


def repair_placement(
    family: Family, placement: Mapping[str, Sequence[str]], cluster: Cluster, *, no_hosts: Sequence[str] = ()
) -> dict[str, tuple[str, ...]]:
    """The repaired placement on ``cluster`` (the available servers, except ``no_hosts``: servers
    that only relay requests, such as an excluded ingress).  Raises InfeasiblePlanError."""
    avail = set(cluster.names) - set(no_hosts)
    if cluster.ingress is not None:  # a server requests cannot reach (its gateway is down) hosts nothing
        avail = {s for s in avail if math.isfinite(cluster.path(cluster.ingress, s).latency_ms)}
    new: dict[str, list[str]] = {c: [s for s in servers if s in avail] for c, servers in placement.items()}
    rate = cluster.workload.rate_rps
    slo = cluster.workload.latency_slo_ms
    mem: dict[str, float] = {s: 0.0 for s in cluster.names}
    gmacs: dict[str, float] = {s: 0.0 for s in cluster.names}
    for comp, servers in new.items():
        c = family.component(comp)
        for s in servers:
            mem[s] += c.memory_bytes
            gmacs[s] += c.macs * rate / 1e9
    slots: list[str] = [u for u in family.upstream_names if not new.get(u)]
    slots.sort(key=lambda u: -family.accuracy[u])
    comb_slots = []
    for c in family.combiners:
        lost = len(placement.get(c.name, ())) - len(new.get(c.name, ()))
        best_served = max(family.accuracy[subset_key(s)] for s in c.serves)
        comb_slots += [(-best_served, c.name)] * lost
    slots += [name for _, name in sorted(comb_slots)]
    order = sorted(
        (s for s in cluster.servers if s.name in avail), key=lambda s: (s.failure_prob, -s.compute_gmacs, s.name)
    )
    for comp in slots:
        c = family.component(comp)
        is_up = comp in family.upstream_names
        hosts = {new[u][0] for u in family.upstream_names if new.get(u)}
        best: tuple[float, str] | None = None
        for srv in order:
            s = srv.name
            if mem[s] + c.memory_bytes > srv.memory_bytes or gmacs[s] + c.macs * rate / 1e9 > srv.compute_gmacs:
                continue
            if (is_up and s in hosts) or s in new.get(comp, ()):
                continue
            trial = {k: tuple(v) for k, v in new.items() if v}
            trial[comp] = tuple(new.get(comp, ())) + (s,)
            score, worst = _score(family, trial, cluster)
            if slo is not None and worst > slo + 1e-9:
                continue
            if best is None or score > best[0] + 1e-12:
                best = (score, s)
        if best is None:
            if is_up:
                raise InfeasiblePlanError(
                    f"no available server can take upstream {comp} of {family.id} "
                    "(memory, compute, anti-affinity or SLO)",
                    field="servers",
                    fix="bring servers back or add capacity; the ILP replanner may find a placement that moves more",
                )
            continue
        s = best[1]
        new.setdefault(comp, []).append(s)
        mem[s] += c.memory_bytes
        gmacs[s] += c.macs * rate / 1e9
    order_names = list(family.upstream_names) + [c.name for c in family.combiners]
    return {k: tuple(new[k]) for k in order_names if new.get(k)}


def _score(family: Family, placement: Mapping[str, Sequence[str]], cluster: Cluster) -> tuple[float, float]:
    """Expected accuracy with upstreams not yet placed treated as never up."""
    missing = [u for u in family.upstream_names if not placement.get(u)]
    if not missing:
        return expected_accuracy(family, placement, cluster)
    # subsets that need a missing upstream score 0 (so their paths are not checked against the SLO);
    # the missing upstreams sit on any server, which changes nothing else
    from dataclasses import replace

    acc = {k: (0.0 if any(u in k.split("+") for u in missing) else v) for k, v in family.accuracy.items()}
    ghost = cluster.servers[0].name
    filled = dict(placement)
    for u in missing:
        filled[u] = (ghost,)
    return expected_accuracy(replace(family, accuracy=acc), filled, cluster)


def repair_replanner():
    """A :data:`melplan.runtime.selector.Replanner` that repairs the running placement (see the module)."""
    from melplan.runtime.selector import ReplanRequest

    def replan(request: ReplanRequest) -> Plan:
        from melplan.runtime.replanners import check_request

        started = time.perf_counter()
        check_request(request)
        family = request.current_family
        placement = repair_placement(family, request.current.placement, request.cluster, no_hosts=request.hosts_nothing)
        how = "repaired"
        home = request.original
        if (
            home is not None
            and request.original_family is not None
            and request.original_family.id == family.id
            and dict(home.placement) != placement
            and {s for v in home.placement.values() for s in v} <= set(request.hosts)
            and not capacity_violations(family, home.placement, request.cluster)
        ):
            mine, _ = expected_accuracy(family, placement, request.cluster)
            theirs, _ = expected_accuracy(family, home.placement, request.cluster)
            if theirs > mine + 1e-12:  # everything the best placement needs is back: go home
                placement = {k: tuple(v) for k, v in home.placement.items()}
                how = "restored the original placement"
        ev = evaluate_placement(family, placement, request.cluster)
        extra = dict(request.current.extra)
        extra["repair"] = {
            "from_generation_of": request.current.family,
            "excluded": list(request.excluded),
            "how": how,
        }
        return Plan(
            family=family.id,
            placement=placement,
            objective=request.current.objective,
            expected_accuracy=round(ev.expected_accuracy, 10),
            accuracy_all_up=ev.accuracy_all_up,
            worst_case_accuracy={k: round(v, 10) for k, v in ev.worst_case_accuracy.items()},
            fallback=tuple(ev.fallback),
            solver={
                "name": "repair",
                "status": "feasible",
                "gap": None,
                "wall_s": round(time.perf_counter() - started, 4),
            },
            servers=ev.servers,
            latency_ms=ev.latency_ms,
            extra=extra,
        )

    return replan
