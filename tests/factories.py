"""Seeded builders of valid families and clusters for tests (no torch)."""

from __future__ import annotations

import random

from melplan.core.catalog import Combiner, Family, Upstream, nonempty_subsets, subset_key
from melplan.core.cluster import Cluster, Link, Server, Workload


def make_family(
    n: int = 2,
    *,
    seed: int = 0,
    fid: str | None = None,
    kind: str = "fc",
    shared: bool = False,
    params_scale: int = 100_000,
) -> Family:
    """A family with ``n`` upstreams and random but consistent sizes and accuracies.

    Accuracy grows with the number of upstreams in a subset, plus noise, so that larger subsets
    are usually (not always) better, as in real families.
    """
    rng = random.Random(seed)
    names = [f"u{i + 1}" for i in range(n)]
    ups = []
    for name in names:
        p = rng.randint(params_scale // 2, params_scale * 2)
        ups.append(
            Upstream(
                name=name,
                blocks=rng.randint(2, 6),
                params=p,
                macs=p * rng.randint(20, 60),
                weight_bytes=4 * p,
                feature_bytes=rng.choice([320, 640, 1280, 2560]),
                activation_bytes=rng.randint(10_000, 200_000),
                latency_ms={"cpu": rng.uniform(0.5, 3)},
            )
        )
    combs = []
    subsets = [s for s in nonempty_subsets(names) if len(s) >= 2]
    if shared and subsets:
        p = rng.randint(20_000, 80_000)
        combs.append(
            Combiner(
                subset=tuple(names),
                serves=tuple(subsets),
                name="shared",
                kind="shared",
                params=p,
                macs=p,
                weight_bytes=4 * p,
            )
        )
    else:
        for s in subsets:
            p = rng.randint(5_000, 60_000) * len(s)
            combs.append(Combiner(subset=s, kind=kind, params=p, macs=p, weight_bytes=4 * p))
    acc = {}
    for s in nonempty_subsets(names):
        acc[subset_key(s)] = round(min(0.99, 0.70 + 0.06 * len(s) + rng.uniform(-0.05, 0.05)), 4)
    return Family(
        id=fid or f"rand-n{n}-s{seed}",
        dataset={"name": "test", "num_classes": 10, "input_shape": [3, 32, 32]},
        base="efficientnet_b0",
        training={"seed": seed},
        upstreams=tuple(ups),
        combiners=tuple(combs),
        accuracy=acc,
        reference={"id": "ref", "accuracy": 0.9, "params": params_scale * 10},
    )


def make_cluster(
    m: int = 4,
    *,
    seed: int = 0,
    rate: float = 10.0,
    slo: float | None = None,
    memory: tuple[float, float] = (0.5, 8.0),
    ingress: bool = True,
) -> Cluster:
    rng = random.Random(seed)
    servers = tuple(
        Server(
            name=f"s{i}",
            memory_mb=round(rng.uniform(*memory), 3),
            compute_gmacs=round(rng.uniform(0.5, 20.0), 3),
            failure_prob=round(rng.uniform(0.0, 0.3), 3),
        )
        for i in range(m)
    )
    overrides = []
    for i in range(m):
        for j in range(i + 1, m):
            if rng.random() < 0.3:
                overrides.append((f"s{i}", f"s{j}", Link(rng.uniform(1, 20), rng.choice([10.0, 100.0, 1000.0]))))
    return Cluster(servers, Workload(rate, slo), Link(1.0, 1000.0), tuple(overrides), "s0" if ingress else None)


def make_single(fid: str, *, params: int, accuracy: float, role: str, dataset: dict | None = None) -> Family:
    """A single-model family (n = 1, no combiner): the reference or a backup of the baselines."""
    return Family(
        id=fid,
        dataset=dataset or {"name": "test", "num_classes": 10, "input_shape": [3, 32, 32]},
        base="efficientnet_b0",
        training={},
        upstreams=(Upstream("u1", params, 10 * params, 4 * params, 0),),
        combiners=(),
        accuracy={"u1": accuracy},
        extra={"role": role},
    )


def make_site(
    m: int = 6,
    *,
    seed: int = 0,
    rate: float = 10.0,
    slo: float | None = None,
    memory: tuple[float, float] = (0.5, 8.0),
    domains: bool = True,
    ingress: bool = True,
) -> Cluster:
    """A sparse site (``links.default: null``): two zones, each a star around its gateway (s0 and
    s1, linked to each other), so traffic from zone b to the ingress s0 is relayed by s1; with
    ``domains`` each zone is a failure domain."""
    from melplan.core.cluster import FailureDomain

    rng = random.Random(seed)
    servers = tuple(
        Server(
            name=f"s{i}",
            memory_mb=round(rng.uniform(*memory), 3),
            compute_gmacs=round(rng.uniform(0.5, 20.0), 3),
            failure_prob=round(rng.uniform(0.0, 0.25), 3),
            labels={"zone": "a" if i % 2 == 0 else "b"},
        )
        for i in range(m)
    )
    links = [("s0", "s1", Link(rng.uniform(2, 10), 100.0))]
    for i in range(2, m):
        links.append((f"s{i % 2}", f"s{i}", Link(rng.uniform(0.2, 2), 1000.0)))
    if m > 4 and rng.random() < 0.5:  # sometimes a second path inside zone a
        links.append(("s2", "s4", Link(1.0, 1000.0)))
    doms = (
        (FailureDomain("zone", "a", round(rng.uniform(0.005, 0.08), 3)), FailureDomain("zone", "b", 0.05))
        if domains
        else ()
    )
    return Cluster(servers, Workload(rate, slo), None, tuple(links), "s0" if ingress else None, None, doms)
