"""`melplan plan`: choose a family and place it on a cluster (a thin layer over melplan.planner.planner)."""

from __future__ import annotations

import click

from melplan.commands.common import catalog_option, echo_json, json_option, servers_option, table, verbose_option


class FailuresType(click.ParamType):
    """A whole number >= 0, or 'all'."""

    name = "K|all"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return "all"
        try:
            k = int(text)
        except ValueError:
            self.fail(f"{value!r} is not a whole number or 'all' (e.g. --max-failures 2)", param, ctx)
        if k < 0:
            self.fail(f"{k} is negative; give 0 or more, or 'all'", param, ctx)
        return k


@click.command("plan")
@servers_option(required=True, help="Cluster file (YAML, see docs/cluster.md).")
@catalog_option
@click.option(
    "--dataset", default=None, help="Plan with the families of this dataset (needed when the catalog has several)."
)
@click.option(
    "--objective",
    type=click.Choice(["expected", "worst-case"]),
    default="expected",
    show_default=True,
    help="Maximise the expected accuracy under independent failures, or the accuracy left in the worst case.",
)
@click.option(
    "--max-failures",
    type=FailuresType(),
    default=None,
    help="Failure scenarios modeled: K servers down at most, or 'all' (the default for 'expected'; "
    "'worst-case' defaults to 1).",
)
@click.option(
    "--min-accuracy-under-failure",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Only plans that keep at least this accuracy whichever K servers (1 with 'all') fail.",
)
@click.option(
    "--combiner-replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Up to R replicas of each combiner.",
)
@click.option("--family", "family_id", default=None, help="Plan this family only.")
@click.option(
    "--solver",
    type=click.Choice(["highs", "cbc"]),
    default=None,
    help="MILP solver (default: HiGHS when installed, else CBC).",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0.0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds for the whole planning run; the status says when it stopped the search.",
)
@click.option(
    "--gap",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=1e-4,
    show_default=True,
    help="Relative optimality gap at which the search may stop.",
)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the plan (JSON) here.")
@json_option
@verbose_option
def plan(
    cluster_path,
    catalog_dir,
    dataset,
    objective,
    max_failures,
    min_accuracy_under_failure,
    combiner_replicas,
    family_id,
    solver,
    time_limit,
    gap,
    out_file,
    as_json,
):
    """Choose the family and placement that keep the service most accurate through server failures.

    Every family of the catalog (MEL ensembles and single models alike) is placed by its own ILP
    on the servers that can matter; the best wins.  The accuracy numbers printed and written
    are computed exactly from the placement, not taken from the solver.
    """
    from melplan.core.catalog import load_catalog
    from melplan.core.cluster import load_cluster
    from melplan.core.errors import CatalogError
    from melplan.planner.planner import PlanOptions
    from melplan.planner.planner import plan as run_plan

    cluster = load_cluster(cluster_path)
    catalog = load_catalog(catalog_dir, dataset=dataset)
    datasets = sorted({str(f.dataset.get("name")) for f in catalog})
    if len(datasets) > 1:
        raise CatalogError(
            f"the catalog holds families of several datasets ({', '.join(datasets)})",
            file=catalog.root,
            field="--dataset",
            fix=f"pick one with --dataset (e.g. --dataset {datasets[0]})",
        )
    options = PlanOptions(
        objective=objective,
        max_failures=None if max_failures in (None, "all") else max_failures,
        min_accuracy_under_failure=min_accuracy_under_failure,
        combiner_replicas=combiner_replicas,
        solver=solver,
        time_limit_s=time_limit,
        gap=gap,
        family=family_id,
    )
    result = run_plan(catalog, cluster, options)
    if out_file:
        result.plan.save(out_file)
    if as_json:
        echo_json(result.plan.to_dict())
        return
    click.echo(render(result, cluster, catalog, cluster_path))
    if out_file:
        click.echo(f"\nWrote {out_file}")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def render(result, cluster, catalog, servers_file: str) -> str:
    """The terminal report: the choice and why, the families considered, placement, fallbacks."""
    plan = result.plan
    chosen = result.chosen
    fam = next(f for f in catalog if f.id == plan.family)
    opts_planner = plan.extra.get("planner", {})
    objective = plan.objective
    k_label = opts_planner.get("max_failures", "all")
    lines = []
    slo = cluster.workload.latency_slo_ms
    lines.append(
        f"Plan for {servers_file}: {len(cluster.servers)} servers, {cluster.workload.rate_rps:g} requests/s"
        + (f", SLO {slo:g} ms" if slo is not None else "")
        + (f", ingress {cluster.ingress}" if cluster.ingress else "")
    )
    lines.append(
        f"Catalog {catalog.root}: {len(catalog)} famil{'y' if len(catalog) == 1 else 'ies'}"
        + (f" of {plan.extra.get('dataset')}" if plan.extra.get("dataset") else "")
    )
    lines.append("")
    kind = f"MEL, {fam.n} upstreams" if fam.n > 1 else "single model"
    role = fam.extra.get("role")
    if role and role not in ("mel",):
        kind += f", {role}"
    lines.append(f"Chosen: {plan.family} ({kind})")
    wc = plan.worst_case_accuracy
    worst_txt = ", ".join(f"{k} down {v:.4f}" for k, v in list(wc.items())[:2]) or "-"
    lines.append(
        f"  expected accuracy {plan.expected_accuracy:.5f} (exact), all up {plan.accuracy_all_up:.4f}, "
        f"worst with {worst_txt}"
    )
    counts: dict[str, int] = {}
    for o in result.considered:
        counts[o.status] = counts.get(o.status, 0) + 1
    k_worst = k_label if k_label != "all" else "1"
    what = (
        "expected accuracy"
        if objective == "expected"
        else f"accuracy left with {k_worst} server{'' if k_worst == '1' else 's'} down"
    )
    summary = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
    nf = len(result.considered)
    why = f"  why: highest {what} of {nf} famil{'y' if nf == 1 else 'ies'} ({summary})"
    lines.append(why)
    others = [o for o in result.considered if o.family != plan.family and o.value is not None]
    if others:
        ru = max(others, key=lambda o: o.value)
        lines.append(f"  runner-up: {ru.family} at {ru.value:.5f} ({100 * (ru.value - chosen.value):+.2f} points)")
    pruned = [o for o in result.considered if o.status == "pruned"]
    if pruned:
        top = max(pruned, key=lambda o: o.bound)
        lines.append(
            f"  {len(pruned)} more could not win: the best of them ({top.family}) is bounded by {top.bound:.5f}"
        )
    if result.best_single is not None and result.best_single.family != plan.family:
        bs = result.best_single
        where = ", ".join(sorted({s for v in (bs.placement or {}).values() for s in v}))
        lines.append(
            f"  vs best single model: {bs.family} on {where}: {bs.value:.5f}; "
            f"this plan gains {100 * (chosen.value - bs.value):+.2f} points"
        )
    elif result.best_single is not None:
        lines.append("  the best plan is itself a single model")
    else:
        lines.append("  no single-model family in the catalog fits this cluster")
    sv = plan.solver
    lines.append(
        f"  solver: {sv.get('name')}, {sv.get('status')}, gap {_pct(sv.get('gap'))}, "
        f"{sv.get('wall_s', 0):.2f} s (limit {sv.get('time_limit_s'):g} s)"
    )
    lines.append("")

    lines.append(
        "Families considered (value = "
        + ("exact expected accuracy" if objective == "expected" else "worst-case accuracy")
        + " of its best plan)"
    )
    rows = []
    for o in result.considered:
        mark = "*" if o.family == plan.family else ""
        rows.append(
            [
                mark + o.family,
                o.n,
                o.role,
                o.status.replace("_", " "),
                "-" if o.value is None else f"{o.value:.4f}",
                "-" if o.bound is None else f"{o.bound:.4f}",
                "-" if o.expected_accuracy is None else f"{o.expected_accuracy:.4f}",
                "-" if o.reduction is None else f"{o.reduction.candidates}/{o.reduction.servers}",
                _short(o.reason),
            ]
        )
    lines.append(
        table(
            rows,
            ["family", "n", "role", "status", "value", "bound", "expected", "candidates", "note"],
            align="lrllrrrrl",
        )
    )
    lines.append("")

    lines.append("Placement")
    rows = []
    for s, use in plan.servers.items():
        srv = cluster.server(s)
        rows.append(
            [
                s,
                ", ".join(use["components"]),
                f"{use['memory_mb']:.2f}/{srv.memory_mb:g}",
                _pct(use["memory_util"]),
                _pct(use["compute_util"]),
                f"{srv.failure_prob:.4f}",
            ]
        )
    lines.append(table(rows, ["server", "components", "memory MiB", "memory", "compute", "p(down)"], align="llrrrr"))
    lines.append("")

    lines.append("Fallback: what answers when servers are down")
    au = opts_planner.get("all_up") or {}
    rows = [["(none)", au.get("answer") or "-", f"{plan.accuracy_all_up:.4f}", ", ".join(au.get("servers", []))]]
    for f in plan.fallback:
        if len(f["down"]) != 1:
            continue
        rows.append(
            [
                ", ".join(f["down"]),
                f["answer"] or "(nothing: service down)",
                f"{f['accuracy']:.4f}",
                ", ".join(f.get("servers", [])),
            ]
        )
    lines.append(table(rows, ["down", "answer", "accuracy", "via"], align="llrl"))
    if plan.latency_ms:
        lat = ", ".join(f"{k} {v:.1f} ms" for k, v in plan.latency_ms.items())
        lines.append(f"Path latency: {lat}")
    notes = opts_planner.get("notes") or []
    if notes:
        lines.append("")
        lines.append("Notes")
        lines.extend(f"  - {n}" for n in notes)
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 3] + "..."
