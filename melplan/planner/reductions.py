"""Exact server reductions (docs/ilp.md, "Making it small", steps 1-2): capability and dominance,
with the network interchange classes and link dominance that need no all-pairs paths."""

from __future__ import annotations

import numpy as np

from melplan.core.catalog import Family
from melplan.core.cluster import Cluster
from melplan.core.evaluate import (
    MAX_EXACT_SERVERS,
)
from melplan.planner.ilp import (
    FamilyData,
)

MAX_PACKING_COMBINERS = 10  # beyond this, capability is compared on raw memory and compute
MAX_LINK_DOMINANCE = 300  # complete graphs with overrides: exact link comparison up to this many servers


# -- server reduction -------------------------------------------------------------------------


def max_servers_per_plan(family: Family, replicas: int) -> int:
    return min(family.n + replicas * len(family.combiners), MAX_EXACT_SERVERS)


def _capability(data: FamilyData, with_upstream: bool) -> np.ndarray:
    """sup[s, t]: every set of components of the role (one upstream with any combiners, or
    combiners only) that fits on t also fits on s."""
    n, nc = data.n, data.n_comb
    comps = range(n + nc) if with_upstream else range(n, n + nc)
    if nc > MAX_PACKING_COMBINERS:
        # sufficient, if coarser: more memory, more compute, and every component that fits on t fits on s
        sup = (data.mem_mib[:, None] >= data.mem_mib[None, :]) & (data.gmacs[:, None] >= data.gmacs[None, :])
        for c in comps:
            sup &= data.fits[c][:, None] | ~data.fits[c][None, :]
        return sup
    masks = np.arange(1 << nc, dtype=np.int64)
    bits = ((masks[:, None] >> np.arange(nc)) & 1).astype(float) if nc else np.zeros((1, 0))
    cmem = bits @ data.comp_mib[n:] if nc else np.zeros(1)
    cgm = bits @ data.comp_gmacs[n:] if nc else np.zeros(1)
    cfit = np.ones((len(masks), len(data.servers)), dtype=bool)
    for k in range(nc):
        cfit &= ~(bits[:, k : k + 1] > 0) | data.fits[n + k][None, :]
    rows = []
    for i in range(n) if with_upstream else [None]:
        mem = cmem + (0.0 if i is None else data.comp_mib[i])
        gm = cgm + (0.0 if i is None else data.comp_gmacs[i])
        ok = (mem[:, None] <= data.mem_mib[None, :]) & (gm[:, None] <= data.gmacs[None, :]) & cfit
        if i is not None:
            ok &= data.fits[i][None, :]
        rows.append(ok)
    return _superset(np.concatenate(rows, axis=0).T)


def _superset(feas: np.ndarray, block: int = 16) -> np.ndarray:
    """sup[s, t]: every packing feasible on t (a row of ``feas``) is feasible on s."""
    uniq, inv = np.unique(feas, axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    u = len(uniq)
    sup = np.zeros((u, u), dtype=bool)
    for a in range(0, u, block):
        sup[a : a + block] = ~((~uniq[a : a + block, None, :]) & uniq[None, :, :]).any(axis=2)
    return sup[inv[:, None], inv[None, :]]


def link_dominance(cluster: Cluster) -> np.ndarray | None:
    """ok[s, t] over all servers: s is no further (latency) and no narrower (bandwidth) than t from
    every other server, established without all-pairs paths:

    * sparse graph: s and t are leaves on the same neighbour g and the link s-g is no slower and no
      narrower than t-g (every path of a leaf goes through g);
    * complete graph: neither s nor t has a link override (the two are interchangeable), or, up
      to ``MAX_LINK_DOMINANCE`` servers, the exact comparison of their path rows.

    Other pairs are not compared (never a wrong cut, only fewer).  The ingress is never dominated."""
    m = len(cluster.servers)
    out = np.zeros((m, m), dtype=bool)
    np.fill_diagonal(out, True)
    if cluster.complete:
        touched = np.zeros(m, dtype=bool)
        for a, b, _ in cluster.overrides:
            touched[cluster.index[a]] = touched[cluster.index[b]] = True
        plain = ~touched
        out |= plain[:, None] & plain[None, :]
        special = np.flatnonzero(touched)
        if len(special) and m <= MAX_LINK_DOMINANCE:
            lat, bw = cluster._paths
            for s in range(m):
                for t in special:
                    if s == t:
                        continue
                    cols = np.ones(m, dtype=bool)
                    cols[np.array([s, t])] = False
                    out[s, t] = bool(
                        (lat[s, cols] <= lat[t, cols] + 1e-12).all()
                        and (bw[s, cols] >= bw[t, cols] * (1 - 1e-12)).all()
                    )
                    if touched[s]:
                        out[t, s] = bool(
                            (lat[t, cols] <= lat[s, cols] + 1e-12).all()
                            and (bw[t, cols] >= bw[s, cols] * (1 - 1e-12)).all()
                        )
    else:
        _, nbrs = cluster._adjacency
        groups: dict[int, list[int]] = {}
        for i in range(m):
            if len(nbrs.get(i, {})) == 1:
                groups.setdefault(next(iter(nbrs[i])), []).append(i)
        for g, members in groups.items():
            idx = np.array(members)
            lat = np.array([nbrs[i][g].latency_ms for i in members])
            bw = np.array([nbrs[i][g].bandwidth_mbps for i in members])
            out[np.ix_(idx, idx)] = (lat[:, None] <= lat[None, :] + 1e-12) & (bw[:, None] >= bw[None, :] * (1 - 1e-12))
    if cluster.ingress is not None:
        ing = cluster.index[cluster.ingress]
        out[:, ing] = False  # nothing stands in for the ingress
        out[ing, ing] = True
    return out


def _dominated(
    data: FamilyData, capable: np.ndarray, links: np.ndarray | None, eligible: np.ndarray, threshold: int
) -> np.ndarray:
    """drop[t]: t has at least ``threshold`` strict dominators among the eligible servers
    (``capable[s, t]``: s can hold whatever t can)."""
    m = len(data.servers)
    weak = capable & (data.p[:, None] <= data.p[None, :])
    if data.dom_class is not None:  # same domains, same place in the graph (reachability)
        weak &= data.dom_class[:, None] == data.dom_class[None, :]
    if data.slo_ms is not None:
        weak &= data.gmacs[:, None] >= data.gmacs[None, :]
        if links is None:  # links not compared (too many servers): drop nothing
            return np.zeros(m, dtype=bool)
        weak &= links
    weak &= eligible[:, None] & eligible[None, :]
    idx = np.arange(m)
    dom = (weak & ~weak.T) | (weak & weak.T & (idx[:, None] < idx[None, :]))
    np.fill_diagonal(dom, False)
    return eligible & (dom.sum(axis=0) >= threshold)
