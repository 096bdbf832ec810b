"""``melplan simulate``: replay failures against a plan and the usual baselines."""

from __future__ import annotations

import click

from melplan.commands.common import (
    FiniteFloat,
    check_writable,
    echo_json,
    force_option,
    json_option,
    plan_option,
    refuse_overwrite,
    servers_option,
    service_option,
    table,
    verbose_option,
)


def _pairs(items: tuple[str, ...], option: str) -> dict[str, float]:
    from melplan.core.errors import InputError

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(
                f"expected NAME=SECONDS, got {item!r}", field=option, fix=f"write e.g. {option} cloud=2"
            ) from None
        if not sep or not name.strip():
            raise InputError(f"expected NAME=SECONDS, got {item!r}", field=option, fix=f"write e.g. {option} cloud=2")
    return out


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.command("simulate")
@plan_option
@servers_option(
    required=False,
    help="Cluster file: only for a v1 plan (a v2 plan embeds the cluster it was made for, with MTBF/MTTR or "
    "failure_prob per server).  When given, it must agree with the embedded one.",
)
@click.option(
    "--catalog",
    "catalog_dir",
    type=click.Path(file_okay=True, dir_okay=True),
    default=None,
    help="Catalog of the baselines (and of the family, for a v1 plan) [default: the catalog the plan was made "
    "from, when it still exists].  Its entry for the plan's family must agree with the embedded one.",
)
@click.option(
    "--trace",
    "trace_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Failure trace: a CSV with columns time_s,server,state (down/up), or a real record (--trace-format).",
)
@click.option(
    "--trace-format",
    type=click.Choice(["csv", "lanl", "fta"]),
    default="csv",
    show_default=True,
    help="csv: melplan's trace; lanl: the LANL failure record (.csv/.csv.xz); fta: a Failure Trace Archive "
    "event_trace.tab(.xz) such as Grid'5000. Real records are mapped onto the servers with --seed.",
)
@click.option(
    "--trace-nodes",
    default=None,
    metavar="SEL",
    help="Real records: lanl, the system number [default: 2]; fta, a node-name prefix such as G1/site1/c1 "
    "[default: every node].",
)
@click.option(
    "--hours",
    type=FiniteFloat(0.0, min_open=True),
    default=None,
    help="Horizon in hours: generate failures (with --seed), or cut a --trace.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Seed of the generated trace, or of the mapping of a real record's nodes onto servers [default: 0].",
)
@click.option(
    "--default-mttr",
    "default_mttr_h",
    type=FiniteFloat(0.0, min_open=True),
    default=None,
    help="Mean repair time (h) for servers given only failure_prob [default: 1].",
)
@click.option(
    "--floor",
    type=FiniteFloat(0.0, 1.0),
    default=None,
    help="Accuracy floor for 'time below floor' [default: 0.9 x the reference model's accuracy].",
)
@click.option(
    "--policy",
    type=click.Choice(["failover-only", "replan-after", "eager"]),
    default="replan-after",
    show_default=True,
    help="Re-plan policy of the runtime selector.",
)
@click.option(
    "--grace",
    "grace_s",
    type=FiniteFloat(0.0),
    default=None,
    help="replan-after: seconds a failure must last before re-planning [default: 300].",
)
@click.option(
    "--hold-down",
    "hold_down_s",
    type=FiniteFloat(0.0),
    default=None,
    help="Seconds a server must stay up before it counts as recovered [default: 600; eager: 0].",
)
@click.option(
    "--replanner",
    type=click.Choice(["planner", "repair"]),
    default="planner",
    show_default=True,
    help="planner: the placement ILP with a migration cost; repair: re-place only what failed (fast).",
)
@click.option(
    "--replan-time-limit",
    "replan_time_limit_s",
    type=FiniteFloat(0.0, min_open=True),
    default=None,
    help="Time limit of each ILP re-plan in seconds [default: 10].",
)
@click.option(
    "--any-family",
    is_flag=True,
    help="Let re-plans switch to another family of the catalog (default: keep the plan's family).",
)
@click.option(
    "--detection",
    "detection_s",
    type=FiniteFloat(0.0),
    default=None,
    help="Heartbeat detection delay in seconds, for every strategy [default: 10, an assumption].",
)
@click.option(
    "--detection-for",
    "detection_for",
    multiple=True,
    metavar="STRATEGY=S",
    help="Detection delay of one strategy (plan, cold-restart, backup, cloud); repeatable.",
)
@click.option(
    "--load",
    "load_s",
    type=FiniteFloat(0.0),
    default=None,
    help="Seconds to start any component or model (re-plan, cold restart) [default: measured, by size: "
    "benchmarks/component_load.py].",
)
@click.option(
    "--load-for",
    "load_for",
    multiple=True,
    metavar="NAME=S",
    help="Load time of one component (u1, u1+u2) or strategy (plan, cold-restart); repeatable.",
)
@click.option(
    "--wan-ms",
    "wan_rtt_ms",
    type=FiniteFloat(0.0),
    default=None,
    help="Cloud failover: WAN round trip in ms [default: 40, an assumption; see docs/results.md].",
)
@click.option(
    "--wan-mbps",
    type=FiniteFloat(0.0, min_open=True),
    default=None,
    help="Cloud failover: upload bandwidth [default: 50].",
)
@click.option(
    "--plot",
    "plot_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write a PNG of accuracy over time for the plan and the baselines.",
)
@click.option(
    "--write-trace",
    "write_trace_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the trace used (generated or read) as CSV, to replay it later.",
)
@force_option
@service_option
@json_option
@verbose_option
def simulate(
    plan_path: str,
    cluster_path: str | None,
    catalog_dir: str | None,
    trace_path: str | None,
    trace_format: str,
    trace_nodes: str | None,
    hours: float | None,
    seed: int | None,
    default_mttr_h: float | None,
    floor: float | None,
    policy: str,
    grace_s: float | None,
    hold_down_s: float | None,
    replanner: str,
    replan_time_limit_s: float | None,
    any_family: bool,
    detection_s: float | None,
    detection_for: tuple[str, ...],
    load_s: float | None,
    load_for: tuple[str, ...],
    wan_rtt_ms: float | None,
    wan_mbps: float | None,
    plot_path: str | None,
    write_trace_path: str | None,
    force: bool,
    service: str | None,
    as_json: bool,
) -> None:
    """Replay server failures against PLAN and against the usual alternatives (full model with cold
    restart, full model with a compressed backup, cloud failover) on the same trace, and report
    time-weighted accuracy, availability, time below the floor, re-plans and bytes moved.

    \b
    Examples:
      melplan simulate --plan plan.json --hours 720 --seed 1 --plot sim.png
      melplan simulate --plan plan.json --trace outages.csv --policy eager --json
    """
    from melplan.runtime.reconcile import Policy
    from melplan.sim.simulate import (
        DEFAULT_DETECTION_S,
        DEFAULT_WAN_MBPS,
        DEFAULT_WAN_RTT_MS,
        SimOptions,
        simulate_files,
    )

    refuse_overwrite(plot_path, force, "--plot")
    refuse_overwrite(write_trace_path, force, "--write-trace")
    check_writable(plot_path, "--plot")
    check_writable(write_trace_path, "--write-trace")
    options = SimOptions(
        policy=Policy.named(policy, grace_s=grace_s, hold_down_s=hold_down_s),
        detection_s=DEFAULT_DETECTION_S if detection_s is None else detection_s,
        load_s=load_s,
        detection_by=_pairs(detection_for, "--detection-for"),
        load_by=_pairs(load_for, "--load-for"),
        wan_rtt_ms=DEFAULT_WAN_RTT_MS if wan_rtt_ms is None else wan_rtt_ms,
        wan_mbps=DEFAULT_WAN_MBPS if wan_mbps is None else wan_mbps,
        floor=floor,
        any_family=any_family,
    )
    run = simulate_files(
        plan_path,
        cluster_path,
        service=service,
        catalog_dir=catalog_dir,
        trace_path=trace_path,
        trace_format=trace_format,
        trace_nodes=trace_nodes,
        hours=hours,
        seed=seed,
        default_mttr_h=default_mttr_h,
        options=options,
        plot_path=plot_path,
        write_trace_path=write_trace_path,
        replanner=replanner,
        replan_time_limit_s=replan_time_limit_s,
    )
    rep = run.report
    if as_json:
        d = rep.to_dict()
        d["plot"] = run.plot
        d["trace_written"] = run.trace_out
        echo_json(d)
        return
    dropped = f"; {rep.dropped_after_horizon} row(s) after the horizon ignored" if rep.dropped_after_horizon else ""
    click.echo(f"Simulated {rep.hours:g} h, {rep.events} failure/recovery events ({rep.trace_source}{dropped}).")
    click.echo(f"Baselines: {rep.baselines}.")
    click.echo(
        f"Plan {rep.plan_family}: exact expected accuracy under independent failures "
        f"{rep.expected_accuracy:.4f}; floor {rep.floor:.4f} ({rep.floor_source})."
    )
    rows = []
    for s in rep.strategies:
        if s.deployable:
            rows.append(
                [
                    s.label,
                    f"{s.accuracy:.4f}",
                    f"{s.availability:.4%}",
                    f"{s.below_floor_s / 3600:.2f}",
                    s.replans,
                    _bytes(s.bytes_moved),
                    s.note,
                ]
            )
        else:
            rows.append([s.label, "-", "-", "-", "-", "-", f"not deployable: {s.note}"])
    click.echo(
        table(
            rows,
            ["strategy", "accuracy", "availability", "below floor (h)", "re-plans", "moved", "note"],
            align="lrrrrrl",
        )
    )
    plan_row = rep.strategy("plan")
    if plan_row.failed_replans:
        click.echo(f"Failed re-plans ({plan_row.failed_replans}), by reason:")
        for reason, n in plan_row.failure_reasons:
            click.echo(f"  {n:>5} x replan-failed: {reason}")
    o = rep.options
    loads = sorted(set(round(v, 3) for _, v in rep.load_times))
    load_txt = (
        f"{o.load_s:g} s"
        if o.load_s is not None
        else ("measured by size: " + ", ".join(f"{v:g} s" for v in loads) if loads else "measured by size")
    )
    det = ", ".join(f"{k} {v:g} s" for k, v in sorted(o.detection_by.items()))
    click.echo(
        f"Assumptions: policy {o.policy.name} (grace {o.policy.grace_s:g} s, hold-down {o.policy.hold_down_s:g} s, "
        f"replanner {replanner}), "
        f"detection {o.detection_s:g} s{f' ({det})' if det else ''}, load {load_txt}, "
        f"WAN {o.wan_rtt_ms:g} ms / {o.wan_mbps:g} Mbit/s. "
        "Re-plans column: re-plans applied for the plan (failed ones are listed above), restarts for cold restart."
    )
    if run.plot:
        click.echo(f"Wrote {run.plot}.")
    if run.trace_out:
        click.echo(f"Wrote {run.trace_out}.")
