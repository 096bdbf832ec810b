"""``melplan serve``: run a plan for real on this machine (DESIGN §8)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import click

from melplan.commands.common import (
    force_option,
    plan_catalog_option,
    plan_option,
    servers_option,
    service_option,
    table,
)
from melplan.serve.defaults import DEFAULT_HEARTBEAT_MS, DEFAULT_HEDGE_MS, DEFAULT_TIMEOUT_MS


@click.command("serve")
@plan_option
@click.option("--port", type=int, default=8000, show_default=True, help="Gateway port (0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway address (0.0.0.0 to expose it).")
@click.option(
    "--run-dir",
    default="melplan-run",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for deployment.json, the family entry and component logs.",
)
@servers_option(
    required=False, help="Cluster file (a v1 plan needs it for latencies and re-plans; a v2 plan embeds it)."
)
@click.option(
    "--policy",
    type=click.Choice(["failover-only", "replan-after", "eager"]),
    default=None,
    help="Selector policy (default: replan-after with a cluster, else failover-only).",
)
@click.option(
    "--timeout-ms", type=float, default=DEFAULT_TIMEOUT_MS, show_default=True, help="Deadline of one request."
)
@click.option(
    "--heartbeat-ms", type=float, default=DEFAULT_HEARTBEAT_MS, show_default=True, help="Readiness check interval."
)
@click.option(
    "--hedge-ms",
    type=float,
    default=DEFAULT_HEDGE_MS,
    show_default=True,
    help="Wait this long for a component before also asking the route around its server.",
)
@click.option("--restart/--no-restart", default=True, show_default=True, help="Start a component again when it dies.")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads per component.")
@click.option("--ready-timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for readiness.")
@force_option
@plan_catalog_option
@service_option
def serve(
    plan_path: str,
    port: int,
    host: str,
    run_dir: str,
    cluster_path: str | None,
    policy: str | None,
    timeout_ms: float,
    heartbeat_ms: float,
    hedge_ms: float,
    restart: bool,
    threads: int,
    ready_timeout: float,
    force: bool,
    catalog_dir: str | None,
    service: str | None,
) -> None:
    """Serve a plan: one process per placed component replica (standing for its server) and a
    gateway speaking the Open Inference Protocol (KServe v2 / Triton REST) on 127.0.0.1:PORT.
    The model name is the plan's family id; send raw UINT8 pixels or preprocessed FP32 as `input`.
    Writes RUN_DIR/deployment.json; Ctrl-C or SIGTERM stops every process it started.

    \b
    Examples:
      melplan serve --plan plan.json
      curl localhost:8000/v2/health/ready
      melplan serve --plan plan.json --port 8100 --run-dir /tmp/run --no-restart
      melplan serve --plan site-plan.json --service sorter   # one service of a site plan
    """
    from melplan.core.errors import InputError
    from melplan.serve.launcher import LocalDeployment, load_for_serving

    for name, value in (
        ("--timeout-ms", timeout_ms),
        ("--heartbeat-ms", heartbeat_ms),
        ("--hedge-ms", hedge_ms),
        ("--threads", threads),
    ):
        if not value > 0:
            raise InputError(f"{name} must be > 0, got {value}", field=name, fix=f"pass a positive {name}")
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is not a port", field="--port", fix="use 0..65535")
    inputs = load_for_serving(plan_path, catalog_dir=catalog_dir, cluster_path=cluster_path, service=service)
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    dep = LocalDeployment(
        inputs,
        run_dir=run_dir,
        host=host,
        port=port,
        policy=policy,
        timeout_ms=timeout_ms,
        heartbeat_ms=heartbeat_ms,
        hedge_ms=hedge_ms,
        restart=restart,
        threads=threads,
        ready_timeout_s=ready_timeout,
        force=force,
        log=lambda msg: click.echo(msg, err=True),
    )
    n = sum(len(v) for v in inputs.plan.placement.values())
    click.echo(f"Starting {n} component process(es) of {inputs.family.id} ...", err=True)
    try:
        dep.start()
        d = dep.deployment()
        click.echo(f"Serving {d['model']} at {d['gateway']['url']} (model name = family id)")
        for c in d["components"]:
            click.echo(f"  {c['component']:<8} on {c['server']:<10} pid {c['pid']:<7} {c['url']}")
        click.echo(f"Wrote {dep.deployment_file}; metrics at {d['gateway']['url']}/metrics. Ctrl-C stops everything.")
        while not stop.wait(0.5):
            pass
        click.echo("Stopping ...", err=True)
        if dep.gateway is not None:
            click.echo(format_latency_report(dep.gateway.latency_report()), err=True)
    finally:
        dep.stop()
        for s, h in old.items():
            signal.signal(s, h)
    click.echo("Stopped every process this deployment started.", err=True)


def format_latency_report(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "No requests answered."
    head = (
        "Path latency, predicted vs measured (data path: through the gateway hub; the planner's model assumes\n"
        "features go from each upstream straight to the combiner; on 127.0.0.1 every link is loopback)"
    )
    return (
        head
        + "\n"
        + table(
            [
                [
                    r["subset"],
                    r["requests"],
                    r["plan_predicted_ms"],
                    r["catalog_cpu_ms"],
                    r["path_ms_p50"],
                    r["path_ms_p99"],
                    r["gateway_ms_p50"],
                ]
                for r in rows
            ],
            ["subset", "requests", "plan ms", "catalog cpu ms", "path p50 ms", "path p99 ms", "gateway p50 ms"],
            align="lrrrrrr",
        )
    )
