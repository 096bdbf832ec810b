"""Route lookup: what answers for each up/down state of one placement's servers (no torch).

:class:`RouteLookup` precomputes, for one placement, the route of every up/down state of the servers it
depends on (a list of ``2^m`` entries indexed by an up-bit-mask, m <= 16; a memoised scan above that).
The semantics are those of :class:`melplan.core.evaluate.RouteTable` (DESIGN §1): the most accurate
servable subset answers, through the fastest up replica of its combiner; a route never uses a down
server; when the cluster names an ingress, nothing answers while the ingress is down (requests enter
there), so the ingress is one more bit of the mask even when it hosts no component.

Readiness: :meth:`RouteLookup.route_ready` skips answers that need a component which has been asked to
start but has not reported ready (the selector's pending starts).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from melplan.core.catalog import Family, subset_key
from melplan.core.cluster import Cluster
from melplan.core.errors import PlanFileError
from melplan.core.evaluate import RouteTable, used_servers, validate_placement

EAGER_TABLE_MAX_SERVERS = 16  # 2^16 precomputed routes; above that routes are memoised on demand
_EPS = 1e-12


@dataclass(frozen=True)
class Route:
    """What answers for one up/down state of a plan's servers.

    ``answer``: the subset key that answers (None when the service is down); ``servers``: the servers
    on the answering path (upstreams, then the combiner's); ``components``: (component, server)
    pairs on that path; ``ingress``: where requests enter (it must be up too; None without one);
    ``degraded``: accuracy below the plan's all-up accuracy (always true when down);
    ``generation``: which placement (0 for the initial plan, +1 per applied re-plan).
    """

    answer: str | None
    accuracy: float
    servers: tuple[str, ...]
    components: tuple[tuple[str, str], ...] = ()
    combiner: str | None = None
    combiner_server: str | None = None
    latency_ms: float | None = None
    degraded: bool = True
    accuracy_all_up: float = 0.0
    generation: int = field(default=0, compare=False)
    ingress: str | None = None

    @property
    def down(self) -> bool:
        """No subset is servable: the service has no answer."""
        return self.answer is None

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Every server that must be up for this route to answer (the ingress, then the path)."""
        if self.answer is None:
            return ()
        if self.ingress is None or self.ingress in self.servers:
            return self.servers
        return (self.ingress,) + self.servers

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "accuracy": self.accuracy,
            "servers": list(self.servers),
            "components": [{"component": c, "server": s} for c, s in self.components],
            "combiner": self.combiner,
            "combiner_server": self.combiner_server,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 4),
            "ingress": self.ingress,
            "degraded": self.degraded,
            "down": self.down,
            "accuracy_all_up": self.accuracy_all_up,
            "generation": self.generation,
        }


def _check_placement(
    family: Family, placement: Mapping[str, Sequence[str]], cluster: Cluster | None, source: str | None
) -> None:
    if cluster is not None:
        validate_placement(family, placement, cluster, source=source)
        return
    names = set(family.component_names())
    for comp in placement:
        if comp not in names:
            raise PlanFileError(
                f"placement names unknown component '{comp}'",
                file=source,
                field=f"placement.{comp}",
                fix=f"use components of family {family.id}: {', '.join(family.component_names())}",
            )
    for u in family.upstream_names:
        if len(placement.get(u, ())) != 1:
            raise PlanFileError(
                f"upstream '{u}' must be placed on exactly one server",
                file=source,
                field=f"placement.{u}",
                fix="give it a list with one server name",
            )


class RouteLookup:
    """Every route of one placement, indexed by an up-mask over ``tracked`` (bit i = ``tracked[i]`` up).

    ``used`` are the servers the placement runs on; ``tracked`` is ``used`` plus the cluster's ingress
    when it hosts nothing.  With a cluster the subset order and replica order are exactly those of
    :class:`melplan.core.evaluate.RouteTable` (replicas fastest first, latency filled in).  Without one
    (``melplan select`` with no ``--servers``) replicas are tried in placement order, ``latency_ms``
    is None and there is no ingress.  Raises :class:`PlanFileError` for a placement that does not fit
    the family (or the cluster).
    """

    def __init__(
        self,
        family: Family,
        placement: Mapping[str, Sequence[str]],
        cluster: Cluster | None = None,
        *,
        generation: int = 0,
        source: str | None = None,
        eager_max_servers: int = EAGER_TABLE_MAX_SERVERS,
    ) -> None:
        self.family = family
        self.placement = {k: tuple(v) for k, v in placement.items()}
        self.cluster = cluster
        self.generation = generation
        _check_placement(family, self.placement, cluster, source)
        self.ingress: str | None = None
        Rep = tuple[float | None, str | None, str | None]  # (latency, combiner, its server)
        options: list[tuple[str, float, tuple[str, ...], list[Rep]]]
        if cluster is not None:
            rt = RouteTable(family, self.placement, cluster)
            options = [
                (key, acc, ups, [(lat, comb, srv) for lat, comb, srv in reps]) for key, acc, ups, reps in rt.options
            ]
            self.used: tuple[str, ...] = tuple(rt.used)
            self.ingress = cluster.ingress
        else:
            self.used = used_servers(self.placement)
            options = []
            upstream_server = {u: self.placement[u][0] for u in family.upstream_names}
            for sub in sorted(family.subsets(), key=lambda s: (-family.accuracy[subset_key(s)], len(s))):
                key = subset_key(sub)
                ups = tuple(upstream_server[u] for u in sub)
                reps: list[Rep]
                if len(sub) == 1:
                    reps = [(None, None, None)]
                else:
                    reps = [
                        (None, c.name, srv)
                        for c in family.combiners_serving(key)
                        for srv in self.placement.get(c.name, ())
                    ]
                if reps:
                    options.append((key, family.accuracy[key], ups, reps))
        extra: tuple[str, ...] = () if self.ingress is None or self.ingress in self.used else (self.ingress,)
        self.tracked: tuple[str, ...] = self.used + extra
        self.bit: dict[str, int] = {s: 1 << i for i, s in enumerate(self.tracked)}
        self.full_mask = (1 << len(self.tracked)) - 1
        ingress_bit = 0 if self.ingress is None else self.bit[self.ingress]
        upstream_server = {u: self.placement[u][0] for u in family.upstream_names}
        # compiled: (need_mask, [(replica_bit, proto), ...]) in answer order
        compiled = []
        protos = []
        for key, acc, ups, reps in options:
            need = ingress_bit
            for s in ups:
                need |= self.bit[s]
            alts = []
            for lat, comb, srv in reps:
                servers = ups if srv is None else tuple(dict.fromkeys(ups + (srv,)))
                comps = tuple((u, upstream_server[u]) for u in key.split("+"))
                if comb is not None and srv is not None:
                    comps += ((comb, srv),)
                protos.append((key, acc, servers, comps, comb, srv, lat))
                alts.append((0 if srv is None else self.bit[srv], len(protos) - 1))
            compiled.append((need, alts))
        self._compiled = compiled
        all_up = self._scan_index(self.full_mask)
        self.accuracy_all_up = 0.0 if all_up < 0 else protos[all_up][1]
        self.routes: tuple[Route, ...] = tuple(
            Route(
                key,
                acc,
                servers,
                comps,
                comb,
                srv,
                lat,
                acc < self.accuracy_all_up - _EPS,
                self.accuracy_all_up,
                generation,
                self.ingress,
            )
            for key, acc, servers, comps, comb, srv, lat in protos
        )
        self.down_route = Route(
            None, 0.0, (), (), None, None, None, True, self.accuracy_all_up, generation, self.ingress
        )
        m = len(self.tracked)
        if m <= eager_max_servers:
            self.table: list[Route] | None = self._build_table()
            self.route_mask: Callable[[int], Route] = self.table.__getitem__
        else:
            self.table = None
            self._memo: dict[int, Route] = {}
            self.route_mask = self._route_memo

    @property
    def all_up(self) -> Route:
        return self.route_mask(self.full_mask)

    def _scan_index(self, mask: int, skip: Collection[tuple[str, str]] = ()) -> int:
        for need, alts in self._compiled:
            if mask & need != need:
                continue
            for rbit, idx in alts:
                if (rbit == 0 or mask & rbit) and not (skip and any(c in skip for c in self.routes[idx].components)):
                    return idx
        return -1

    def _route_memo(self, mask: int) -> Route:
        r = self._memo.get(mask)
        if r is None:
            i = self._scan_index(mask)
            r = self.down_route if i < 0 else self.routes[i]
            self._memo[mask] = r
        return r

    def _build_table(self) -> list[Route]:
        import numpy as np

        states = np.arange(1 << len(self.tracked), dtype=np.int64)
        idx = np.full(states.shape, -1, dtype=np.int64)
        for need, alts in self._compiled:
            ok = (states & need) == need
            for rbit, i in alts:
                cond = ok & (idx < 0)
                if rbit:
                    cond &= (states & rbit) != 0
                idx[cond] = i
        pool = list(self.routes) + [self.down_route]  # index -1 -> down
        return [pool[i] for i in idx.tolist()]

    def mask_of(self, down: Iterable[str]) -> int:
        """The up-mask with the given servers down (servers this lookup does not track are ignored)."""
        mask = self.full_mask
        for s in down:
            mask &= ~self.bit.get(s, 0)
        return mask

    def route(self, down: Iterable[str] = ()) -> Route:
        """The route with ``down`` servers down (names outside the placement are ignored)."""
        return self.route_mask(self.mask_of(down))

    def route_ready(self, mask: int, pending: Collection[tuple[str, str]]) -> Route:
        """The route for ``mask`` using no (component, server) pair in ``pending`` (started, not ready
        yet): the most accurate servable subset whose path is ready.  A scan; only while starts are
        pending."""
        if not pending:
            return self.route_mask(mask)
        i = self._scan_index(mask, frozenset(pending))
        return self.down_route if i < 0 else self.routes[i]
