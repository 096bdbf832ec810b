"""Route lookup: what answers for each up/down state of one placement's servers (no torch).

:class:`RouteLookup` precomputes, for one placement, the route of every up/down state of the servers it
depends on (a list of ``2^m`` entries indexed by an up-bit-mask, m <= 16; a memoised scan above that).
The semantics are those of :class:`melplan.core.evaluate.RouteTable` (DESIGN §1, the one evaluator):
the most accurate servable subset answers, through the fastest up replica of its combiner; a route
never uses a down server; when the cluster names an ingress, nothing answers while the ingress is down
or cannot reach the path (relays included), so the ingress and relays are bits of the mask.

Readiness: :meth:`RouteLookup.route_ready` skips answers that need a component which has been asked to
start but has not reported ready (the selector's pending starts).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from melplan.core.catalog import Family
from melplan.core.cluster import Cluster
from melplan.core.errors import PlanFileError
from melplan.core.evaluate import RouteTable

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


class RouteLookup:
    """Every route of one placement, indexed by an up-mask over ``relevant`` (bit i = ``relevant[i]``
    up): the used servers, then the ingress and the relays on the placement's paths.

    Routes, their order and reachability are those of :class:`melplan.core.evaluate.RouteTable`
    (the one evaluator; replicas fastest first, latency filled in).  Without a cluster (``melplan
    select`` with no ``--servers``) replicas are tried in placement order, ``latency_ms`` is None
    and there is no reachability.  Raises :class:`PlanFileError` for a placement that does not fit
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
        try:
            rt = RouteTable(family, self.placement, cluster)
        except PlanFileError as exc:
            raise PlanFileError(exc.message, file=source, field=exc.field, fix=exc.fix) from None
        self._rt = rt
        self.used: tuple[str, ...] = tuple(rt.used)
        self.ingress: str | None = rt.ingress
        # the servers whose state matters: used, then the ingress and relays (bits of the up-mask)
        self.relevant: tuple[str, ...] = tuple(rt.relevant)
        self.bit: dict[str, int] = dict(rt.bit)
        self.full_mask = rt.full_mask
        upstream_server = rt.upstream_server
        protos = []
        for ch in rt.choices:
            comps = tuple((u, upstream_server[u]) for u in ch.key.split("+"))
            if ch.combiner is not None and ch.combiner_server is not None:
                comps += ((ch.combiner, ch.combiner_server),)
            protos.append((ch.key, ch.accuracy, ch.servers, comps, ch.combiner, ch.combiner_server, ch.latency_ms))
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
        self._index = {id(r): i for i, r in enumerate(self.routes)}
        self.down_route = Route(
            None, 0.0, (), (), None, None, None, True, self.accuracy_all_up, generation, self.ingress
        )
        m = len(self.relevant)
        if m <= eager_max_servers:
            self.table: list[Route] | None = self._build_table()
            self.route_mask: Callable[[int], Route] = self.table.__getitem__
        else:
            self.table = None
            self._memo: dict[int, Route] = {}
            self.route_mask = self._route_memo

    @property
    def tracked(self) -> tuple[str, ...]:
        """Old name of :attr:`relevant`."""
        return self.relevant

    @property
    def all_up(self) -> Route:
        return self.route_mask(self.full_mask)

    def _scan_index(self, mask: int) -> int:
        return self._rt.choice_index(mask)

    def _route_memo(self, mask: int) -> Route:
        r = self._memo.get(mask)
        if r is None:
            i = self._scan_index(mask)
            r = self.down_route if i < 0 else self.routes[i]
            self._memo[mask] = r
        return r

    def _build_table(self) -> list[Route]:
        idx = self._rt.choice_by_mask()
        pool = list(self.routes) + [self.down_route]  # index -1 -> down
        return [pool[i] for i in idx.tolist()]

    def mask_of(self, down: Iterable[str]) -> int:
        """The up-mask with the given servers down (servers that do not matter are ignored)."""
        mask = self.full_mask
        for s in down:
            mask &= ~self.bit.get(s, 0)
        return mask

    def route(self, down: Iterable[str] = ()) -> Route:
        """The route with ``down`` servers down (servers that do not matter are ignored)."""
        return self.route_mask(self.mask_of(down))

    def route_ready(self, mask: int, pending: Collection[tuple[str, str]]) -> Route:
        """The route for ``mask`` using no (component, server) pair in ``pending`` (started, not ready
        yet): the first choice in route order whose path is ready and reachable.  A scan; only while
        starts are pending."""
        if not pending:
            return self.route_mask(mask)
        skip = frozenset(pending)
        for i, r in enumerate(self.routes):
            if any(c in skip for c in r.components):
                continue
            if self._rt.choice_ok(i, mask):
                return r
        return self.down_route

    def owns(self, route: Route) -> bool:
        """Whether ``route`` is one of this lookup's routes (the very object)."""
        return id(route) in self._index

    def answers(self, route: Route, down: Iterable[str]) -> bool:
        """Whether ``route`` (one of this lookup's) still answers with the servers in ``down`` down:
        its path is up and reachable from the ingress (relays included)."""
        i = self._index.get(id(route))
        if i is None:
            return False
        return self._rt.choice_ok(i, self.mask_of(down))
