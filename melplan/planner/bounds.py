"""Upper bounds of a family (docs/ilp.md, "Making it small", step 3): the upstream-tuple relaxation of
the expected objective (valid with reachability and failure domains) and the worst-case bound."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from melplan.core.catalog import Family, subset_key
from melplan.planner.ilp import (
    FamilyData,
)

MAX_HOST_BOUND_TUPLES = 1000  # per-host relaxation bounds only for families with few upstreams


# -- bounds ---------------------------------------------------------------------------------------


def best_without(family: Family, exclude: frozenset[str] = frozenset()) -> dict[frozenset, float]:
    """A(-W): the best accuracy of a subset avoiding the upstreams in W (and not in ``exclude``)."""
    acc = family.accuracy
    names = family.upstream_names
    out = {}
    for r in range(len(names) + 1):
        for W in itertools.combinations(names, r):
            rest = [s for s in family.subsets() if not set(s) & set(W) and subset_key(s) not in exclude]
            out[frozenset(W)] = max((acc[subset_key(s)] for s in rest), default=0.0)
    return out


def exclusive_subsets(family: Family) -> list[frozenset[str]]:
    """For each combiner, the subset keys that no other combiner serves."""
    out = []
    for c in family.combiners:
        keys = set()
        for s in c.serves:
            key = subset_key(s)
            if len(family.combiners_serving(key)) == 1:
                keys.add(key)
        out.append(frozenset(keys))
    return out


def relaxed_value(family: Family, p_of: np.ndarray, aw: Mapping[frozenset, float]) -> np.ndarray:
    """``sum_W P(exactly W down) * A(-W)`` for rows of upstream down-probabilities ``p_of`` (T, n)."""
    names = family.upstream_names
    n = len(names)
    p_of = np.atleast_2d(p_of)
    total = np.zeros(p_of.shape[0])
    for mask in range(1 << n):
        W = frozenset(names[i] for i in range(n) if mask >> i & 1)
        pr = np.ones(p_of.shape[0])
        for i in range(n):
            pr *= p_of[:, i] if mask >> i & 1 else 1.0 - p_of[:, i]
        total += pr * aw[W]
    return total


@dataclass(frozen=True)
class Relaxation:
    """The upstream-tuple relaxation of one family (expected objective)."""

    bound: float  # over every placement of the family
    tuple_: tuple[int, ...]  # best upstream servers (indices into the data's servers)
    host_bound: np.ndarray  # (n, servers): bound for plans with upstream i on server j
    without: tuple[float, ...]  # per combiner: the bound when its exclusive subsets never answer


def relaxation(family: Family, data: FamilyData) -> Relaxation | None:
    """Bounds from the relaxation where combiners are free and always up (None if a host is missing).

    The value only falls as an upstream's server gets less reliable, so an optimal tuple puts each
    upstream on one of its n most reliable hosts: at most n-1 of those are taken by the others.
    """
    n = family.n
    aw = best_without(family)
    hosts = [np.flatnonzero(data.fits[i]) for i in range(n)]
    if any(len(h) == 0 for h in hosts):
        return None
    # Valid with reachability and failure domains: E <= P(ingress up) * E[best | ingress up, every
    # domain up], which only grows with more servers up (monotone), and given the ingress and the
    # domains up the upstream servers fail independently with their own p (the ingress's is 0).
    p, scale = relaxation_probabilities(data)
    top = [h[np.argsort(p[h], kind="stable")][:n] for h in hosts]
    tuples = [t for t in itertools.product(*top) if len(set(t)) == n]
    if not tuples:
        return None
    P = p[np.array(tuples)]
    vals = scale * relaxed_value(family, P, aw)
    best = int(np.argmax(vals))
    best_v, best_t = float(vals[best]), tuples[best]
    without = tuple(
        float(scale * relaxed_value(family, P, best_without(family, ex)).max()) if ex else best_v
        for ex in exclusive_subsets(family)
    )
    m = len(data.servers)
    host_bound = np.full((n, m), np.inf)  # no per-host bound: nothing is cut
    if n ** (n - 1) > MAX_HOST_BOUND_TUPLES:
        return Relaxation(best_v, tuple(int(j) for j in best_t), host_bound, without)
    host_bound[:] = -np.inf
    for i in range(n):
        others = [k for k in range(n) if k != i]
        cols = hosts[i]
        vals = np.full(len(cols), -np.inf)
        # the others on their best hosts (distinct among themselves; sharing i's server only
        # loosens the bound), i on each of its hosts
        for combo in itertools.product(*[top[k] for k in others]):
            if len(set(combo)) < len(combo):
                continue
            P = np.empty((len(cols), n))
            P[:, i] = p[cols]
            for k, j in zip(others, combo):
                P[:, k] = p[j]
            vals = np.maximum(vals, scale * relaxed_value(family, P, aw))
        host_bound[i, cols] = vals
    return Relaxation(best_v, tuple(int(j) for j in best_t), host_bound, without)


def relaxation_probabilities(data: FamilyData) -> tuple[np.ndarray, float]:
    """(own down probabilities with the ingress's set to 0, P(the ingress and its domains are up))."""
    p = data.p.copy()
    cluster = data.cluster
    if cluster is None or cluster.ingress is None:
        return p, 1.0
    if cluster.ingress in data.servers:
        p[data.servers.index(cluster.ingress)] = 0.0
    return p, cluster.up_probability(cluster.ingress)


def worst_upper_bound(family: Family, failures: int, ingress: bool = False) -> float:
    """The worst case cannot beat: for the worst F upstreams down, the best subset of the others.

    With an ingress (which the worst case never fails) one upstream may sit there, immune: the
    best choice of that upstream, then the worst F of the others."""
    aw = best_without(family)
    names = family.upstream_names
    if not ingress:
        F = min(failures, family.n)
        return min(aw[frozenset(W)] for W in itertools.combinations(names, F))
    best = 0.0
    for safe in names:
        rest = [u for u in names if u != safe]
        F = min(failures, len(rest))
        best = max(best, min(aw[frozenset(W)] for W in itertools.combinations(rest, F)))
    return best
