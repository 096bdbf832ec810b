"""``melplan select``: the route that answers when some servers are down."""

from __future__ import annotations

import click

from melplan.commands.common import (
    echo_json,
    json_option,
    plan_catalog_option,
    plan_option,
    servers_option,
    service_option,
)


@click.command("select")
@plan_option
@click.option(
    "--down",
    "down",
    default="",
    show_default=False,
    metavar="SERVERS",
    help="Comma-separated servers that are down, e.g. edge-a,edge-c (default: none).",
)
@servers_option(
    required=False,
    help="Cluster file: only for a v1 plan (a v2 plan embeds its cluster); it adds path latencies and lets "
    "--down name servers the plan does not use.  When given, it must agree with the embedded one.",
)
@plan_catalog_option
@service_option
@click.option(
    "--replan",
    type=click.Choice(["planner", "repair"]),
    default=None,
    help="Also re-plan once without the --down servers with this re-planner and show the actions, or why "
    "the re-plan failed.",
)
@json_option
def select(
    plan_path: str,
    down: str,
    cluster_path: str | None,
    catalog_dir: str | None,
    service: str | None,
    replan: str | None,
    as_json: bool,
) -> None:
    """Show which subset of the plan's family answers when the --down servers are down, on which
    servers, and with what accuracy (the same choice the runtime selector makes).

    \b
    Examples:
      melplan select --plan plan.json --down edge-a
      melplan select --plan plan.json --down edge-a,edge-c --json
      melplan select --plan site-plan.json --service sorter --down edge-a
    """
    from melplan.runtime.selector import select_route

    replanner = None
    if replan is not None:
        from melplan.sim.simulate import make_replanner

        replanner = make_replanner(replan)
    names = [s.strip() for s in down.split(",") if s.strip()]
    sel = select_route(
        plan_path, names, catalog_dir=catalog_dir, cluster_path=cluster_path, service=service, replanner=replanner
    )
    if as_json:
        echo_json(sel.to_dict())
        return
    r = sel.route
    what = f"with {', '.join(sel.down)} down" if sel.down else "with every server up"
    if r.down:
        click.echo(f"Family {sel.family} {what}: no subset is servable, the service is DOWN.")
    else:
        state = "degraded" if r.degraded else "full accuracy"
        click.echo(
            f"Family {sel.family} {what}: {r.answer} answers with accuracy {r.accuracy:.4f} "
            f"({state}; all up {r.accuracy_all_up:.4f})."
        )
        click.echo(
            "Path: "
            + ", ".join(f"{c} on {s}" for c, s in r.components)
            + ("" if r.latency_ms is None else f"  ({r.latency_ms:.2f} ms)")
        )
    if sel.ignored:
        click.echo(f"Not used by the plan (no effect on the route): {', '.join(sel.ignored)}.")
    rp = sel.replan
    if rp is not None:
        if rp["kind"] == "replan":
            acts = ", ".join(a["action"] for a in rp["actions"]) or "nothing to move"
            click.echo(f"Re-plan ({replan}): {acts}; the started components serve once ready.")
        elif rp["kind"] == "replan-failed":
            click.echo(f"Re-plan ({replan}): replan-failed: {rp['failure']} (wanted because: {rp['reason']}).")
        else:
            click.echo(f"Re-plan ({replan}): none ({rp['reason']}).")
