"""Seeded generator of large heterogeneous edge clusters (no torch).

``generate_cluster(servers, seed=...)`` draws a fleet spread over sites (zones).  Each server is
one of a few hardware classes (microcontroller-class boards, single-board computers, GPU boards,
edge servers), with the memory budget and throughput of a variant of that class and its own
failure probability.  Sites are wired as a star around a gateway (the site's largest server)
with a fast LAN; gateways are meshed with slow WAN links whose latency grows with distance, so
traffic between sites is slow and narrow.  Requests arrive at the gateway of site 1.

The same seed always gives the same cluster; the file it writes names the seed and the
generator's version in a comment.  See docs/cluster.md.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from melplan.core.cluster import Cluster, Link, Server, Workload, dump_cluster_yaml, parse_cluster
from melplan.core.errors import InputError

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class HardwareClass:
    name: str
    share: float  # fraction of the fleet
    variants: tuple[tuple[float, float], ...]  # (memory_mb, compute_gmacs) choices
    failure: tuple[float, float]  # median down probability and its log-spread


CLASSES = (
    HardwareClass("mcu", 0.25, ((0.5, 0.2), (1.0, 0.4), (2.0, 0.6)), (0.06, 0.5)),
    HardwareClass("sbc", 0.40, ((8.0, 4.0), (16.0, 8.0), (32.0, 12.0)), (0.03, 0.5)),
    HardwareClass("gpu", 0.22, ((64.0, 150.0), (128.0, 300.0)), (0.015, 0.6)),
    HardwareClass("srv", 0.13, ((512.0, 800.0), (1024.0, 1500.0)), (0.005, 0.7)),
)
LAN = Link(0.2, 1000.0)


def generate_cluster(
    servers: int,
    *,
    seed: int = 0,
    zones: int | None = None,
    rate_rps: float = 50.0,
    latency_slo_ms: float | None = 80.0,
) -> Cluster:
    """A heterogeneous cluster of ``servers`` servers in ``zones`` sites (default about one per 25).

    Raises InputError when a parameter is out of range.
    """
    if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
        raise InputError(f"must be a whole number >= 1, got {servers!r}", field="--servers", fix="give e.g. 200")
    if servers > 5000:
        raise InputError(f"at most 5000 servers, got {servers}", field="--servers", fix="give 5000 or fewer")
    if zones is None:
        zones = max(1, min(12, round(servers / 25)))
    if isinstance(zones, bool) or not isinstance(zones, int) or not 1 <= zones <= servers:
        raise InputError(
            f"must be between 1 and the number of servers, got {zones!r}",
            field="--zones",
            fix="give fewer zones than servers",
        )
    if not rate_rps > 0:
        raise InputError(f"must be > 0, got {rate_rps!r}", field="--rate", fix="give requests per second, e.g. 50")
    if latency_slo_ms is not None and not latency_slo_ms > 0:
        raise InputError(f"must be > 0, got {latency_slo_ms!r}", field="--slo", fix="give milliseconds, e.g. 80")
    rng = random.Random(seed)

    # how many servers of each class: largest remainders of the shares, at least one edge server
    raw = [c.share * servers for c in CLASSES]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(CLASSES)), key=lambda i: raw[i] - counts[i], reverse=True)[: servers - sum(counts)]:
        counts[i] += 1
    if counts[-1] == 0 and servers >= 2:
        big = max(range(len(counts)), key=counts.__getitem__)
        counts[big] -= 1
        counts[-1] += 1
    kinds = [c for c, k in zip(CLASSES, counts) for _ in range(k)]
    rng.shuffle(kinds)
    zone_of = [i % zones for i in range(servers)]
    rng.shuffle(zone_of)

    made: list[Server] = []
    seq = {z: 0 for z in range(zones)}
    for kind, z in zip(kinds, zone_of):
        seq[z] += 1
        mem, gm = rng.choice(kind.variants)
        median, spread = kind.failure
        p = min(0.4, max(0.0005, median * math.exp(rng.gauss(0.0, spread))))
        made.append(
            Server(
                name=f"z{z + 1}-{kind.name}-{seq[z]:03d}",
                memory_mb=mem,
                compute_gmacs=gm,
                failure_prob=round(p, 4),
                labels={"zone": f"z{z + 1}", "class": kind.name},
            )
        )
    made.sort(key=lambda s: s.name)

    # each zone: a star around its gateway (largest memory, then compute, then name)
    gateways = {}
    for z in range(zones):
        members = [s for s in made if s.labels["zone"] == f"z{z + 1}"]
        if members:
            gateways[z] = max(members, key=lambda s: (s.memory_mb, s.compute_gmacs, s.name)).name
    overrides: list[tuple[str, str, Link]] = []
    for s in made:
        z = int(s.labels["zone"][1:]) - 1
        if s.name != gateways[z]:
            overrides.append((gateways[z], s.name, LAN))
    # sites on a ring-ish map: WAN latency grows with distance, bandwidth shrinks
    pos = [(rng.uniform(0, 100), rng.uniform(0, 100)) for _ in range(zones)]
    for a in range(zones):
        for b in range(a + 1, zones):
            if a not in gateways or b not in gateways:
                continue
            d = math.dist(pos[a], pos[b])
            overrides.append((gateways[a], gateways[b], Link(round(2.0 + 0.3 * d, 2), rng.choice([20.0, 50.0, 100.0]))))
    ingress = gateways[0]
    cluster = Cluster(tuple(made), Workload(rate_rps, latency_slo_ms), None, tuple(overrides), ingress)
    # round-trip through the validator: what we write is what load_cluster accepts
    return parse_cluster(cluster.to_dict(), source=f"<generated servers={servers} seed={seed}>")


def cluster_yaml(cluster: Cluster, *, servers: int, seed: int) -> str:
    """The YAML text of a generated cluster, with a header that says how to regenerate it."""
    head = (
        f"# generated by melplan.core.clustergen v{GENERATOR_VERSION}: "
        f"melplan cluster generate --servers {servers} --seed {seed}\n"
    )
    return head + dump_cluster_yaml(cluster)
