"""`melplan cluster generate|check`: make large test clusters and validate cluster files."""

from __future__ import annotations

import click

from melplan.commands.common import check_writable, echo_json, force_option, json_option, refuse_overwrite, seed_option


class SloType(click.ParamType):
    """Milliseconds > 0, or 'none' for no latency SLO."""

    name = "MS|none"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() == "none":
            return None
        try:
            v = float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number of milliseconds or 'none'", param, ctx)
        if not v > 0:
            self.fail(f"{v:g} must be > 0 (or 'none')", param, ctx)
        return v


@click.group()
def cluster() -> None:
    """Generate heterogeneous clusters, and check cluster files."""


@cluster.command("generate")
@click.option("--servers", "n_servers", type=click.IntRange(1, 5000), required=True, help="Number of servers.")
@seed_option
@click.option(
    "--zones",
    type=click.IntRange(min=1),
    default=None,
    help="Number of sites (default: about one per 25 servers, at most 12).",
)
@click.option(
    "--rate",
    "rate_rps",
    type=click.FloatRange(min=0.0, min_open=True),
    default=50.0,
    show_default=True,
    help="Workload in requests per second.",
)
@click.option("--slo", "slo_ms", type=SloType(), default="80", show_default=True, help="Latency SLO in ms, or 'none'.")
@click.option(
    "--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the YAML here (default: print it)."
)
@force_option
def generate(n_servers, seed, zones, rate_rps, slo_ms, out_file, force):
    """A seeded heterogeneous cluster: hardware classes, sites with fast LANs and slow WAN links."""
    refuse_overwrite(out_file, force, "--out")
    check_writable(out_file, "--out")
    from melplan.core.clustergen import cluster_yaml, generate_cluster
    from melplan.core.fileio import atomic_write_text

    c = generate_cluster(n_servers, seed=seed, zones=zones, rate_rps=rate_rps, latency_slo_ms=slo_ms)
    text = cluster_yaml(c, servers=n_servers, seed=seed)
    if out_file:
        atomic_write_text(out_file, text)
        zones_n = len({s.labels.get("zone") for s in c.servers})
        click.echo(f"Wrote {out_file}: {len(c.servers)} servers in {zones_n} zones, ingress {c.ingress}, seed {seed}")
    else:
        click.echo(text, nl=False)


@cluster.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
def check(file, as_json):
    """Validate a cluster file and summarise it (exit 2 with the file, field and fix when it is wrong)."""
    from melplan.core.cluster import load_cluster

    c = load_cluster(file)
    summary = summarize(c)
    if as_json:
        echo_json({"file": file, "valid": True, **summary})
        return
    click.echo(f"{file}: valid")
    click.echo(
        f"  servers: {summary['servers']}"
        + (f" in {len(summary['zones'])} zones ({', '.join(summary['zones'])})" if summary["zones"] else "")
    )
    for key, label, unit in (
        ("memory_mb", "memory", " MiB"),
        ("compute_gmacs", "compute", " GMAC/s"),
        ("failure_prob", "p(down)", ""),
    ):
        lo, hi = summary[key]
        click.echo(f"  {label}: {lo:g} to {hi:g}{unit}")
    link = summary["default_link"]
    click.echo(
        "  links: "
        + (
            "default none (only listed links; multi-hop paths)"
            if link is None
            else f"default {link['latency_ms']:g} ms, {link['bandwidth_mbps']:g} Mbit/s"
        )
        + f", {summary['overrides']} override(s); worst path {summary['max_path_latency_ms']:.2f} ms"
        + ("" if summary["max_path_latency_scope"] == "all pairs" else f" ({summary['max_path_latency_scope']})")
    )
    click.echo(f"  ingress: {summary['ingress'] or '(none: network time not counted)'}")
    w = summary["workload"]
    click.echo(
        f"  workload: {w['rate_rps']:g} requests/s"
        + (f", SLO {w['latency_slo_ms']:g} ms" if w.get("latency_slo_ms") is not None else ", no SLO")
    )


ALL_PAIRS_MAX = 500


def summarize(c) -> dict:
    """Plain numbers about a cluster (for `cluster check`)."""
    import numpy as np

    # every pair for clusters of up to ALL_PAIRS_MAX servers; beyond, from the ingress (or the first
    # server) only, so that checking a 5,000-server cluster takes seconds, not minutes
    if len(c.servers) <= ALL_PAIRS_MAX:
        lat, _ = c._paths
        scope = "all pairs"
    else:
        lat, _ = c.paths_from(c.ingress or c.servers[0].name)
        scope = f"from {c.ingress or c.servers[0].name}"
    zones = sorted({s.labels["zone"] for s in c.servers if "zone" in s.labels})
    w = {"rate_rps": c.workload.rate_rps}
    if c.workload.latency_slo_ms is not None:
        w["latency_slo_ms"] = c.workload.latency_slo_ms
    return {
        "servers": len(c.servers),
        "zones": zones,
        "memory_mb": [min(s.memory_mb for s in c.servers), max(s.memory_mb for s in c.servers)],
        "compute_gmacs": [min(s.compute_gmacs for s in c.servers), max(s.compute_gmacs for s in c.servers)],
        "failure_prob": [min(s.failure_prob for s in c.servers), max(s.failure_prob for s in c.servers)],
        "default_link": None
        if c.default_link is None
        else {"latency_ms": c.default_link.latency_ms, "bandwidth_mbps": c.default_link.bandwidth_mbps},
        "overrides": len(c.overrides),
        "max_path_latency_ms": float(np.max(lat)) if len(c.servers) else 0.0,
        "max_path_latency_scope": scope,
        "ingress": c.ingress,
        "workload": w,
    }
