"""`melplan plan`: choose a family and place it on a cluster (a thin layer over melplan.planner.planner)."""

from __future__ import annotations

import click

from melplan.commands.common import (
    FiniteFloat,
    catalog_option,
    check_writable,
    echo_json,
    force_option,
    json_option,
    quiet_option,
    refuse_overwrite,
    save_or_rescue,
    servers_option,
    table,
    verbose_option,
)


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
@servers_option(required=False, help="Cluster file (YAML, see docs/cluster.md). Required unless --services is given.")
@click.option(
    "--services",
    "services_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Services file (YAML, see docs/multi-service.md): plan several services on one site jointly.",
)
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
    type=FiniteFloat(0.0, 1.0),
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
    type=FiniteFloat(min=0.0, min_open=True, max=7 * 86400.0),
    default=30.0,
    show_default=True,
    help="Seconds for the whole planning run; the status says when it stopped the search.",
)
@click.option(
    "--gap",
    type=FiniteFloat(0.0, 1.0, max_open=True),
    default=None,
    help="Relative optimality gap at which the search may stop [default: 0.0001; 0.01 with --services].",
)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the plan (JSON) here.")
@quiet_option
@force_option
@json_option
@verbose_option
def plan(
    cluster_path,
    services_file,
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
    quiet,
    force,
    as_json,
):
    """Choose the family and placement that keep the service most accurate through server failures.

    Every family of the catalog (MEL ensembles and single models alike) is placed by its own ILP
    on the servers that can matter; the best wins.  The accuracy numbers printed and written
    are computed exactly from the placement, not taken from the solver.
    """
    import sys
    import time

    started = time.perf_counter()  # --time-limit counts loading too
    from melplan.core.catalog import load_catalog
    from melplan.core.cluster import load_cluster
    from melplan.core.errors import CatalogError, InputError
    from melplan.planner.planner import PlanOptions
    from melplan.planner.planner import plan as run_plan

    refuse_overwrite(out_file, force, "--out")
    check_writable(out_file, "--out")
    if services_file is not None:
        given = [
            opt
            for opt, v in (
                ("--servers", cluster_path),
                ("--catalog", catalog_dir),
                ("--dataset", dataset),
                ("--family", family_id),
                ("--min-accuracy-under-failure", min_accuracy_under_failure),
            )
            if v is not None
        ]
        if given:
            raise InputError(
                f"{', '.join(given)} cannot be combined with --services",
                field=given[0],
                fix="name the cluster, catalogs, families and floors in the services file",
            )
        _plan_site(
            services_file, objective, max_failures, combiner_replicas, solver, time_limit, gap, out_file, as_json
        )
        return
    if cluster_path is None:
        raise InputError("missing", field="--servers", fix="give --servers cluster.yaml (or --services services.yaml)")
    gap = 1e-4 if gap is None else gap
    cluster = load_cluster(cluster_path)
    if isinstance(max_failures, int) and max_failures > len(cluster.servers):
        raise InputError(
            f"{max_failures} is more than the cluster's {len(cluster.servers)} servers",
            file=cluster_path,
            field="--max-failures",
            fix=f"give at most {len(cluster.servers)}, or 'all'",
        )
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
        started=started,
        progress=None if quiet else (lambda line: print(line, file=sys.stderr, flush=True)),
    )
    result = run_plan(catalog, cluster, options)
    if out_file:
        out_file = save_or_rescue(result.plan.save, out_file, "--out", "plan")
    if as_json:
        echo_json(result.plan.to_dict())
        return
    click.echo(render(result, cluster, catalog, cluster_path))
    if out_file:
        click.echo(f"\nWrote {out_file}")


def _plan_site(services_file, objective, max_failures, combiner_replicas, solver, time_limit, gap, out_file, as_json):
    from melplan.core.services import load_site
    from melplan.planner.site import SiteOptions, plan_site

    site = load_site(services_file)
    options = SiteOptions(
        objective=objective,
        max_failures=None if max_failures in (None, "all") else max_failures,
        combiner_replicas=combiner_replicas,
        solver=solver,
        time_limit_s=time_limit,
        gap=0.01 if gap is None else gap,
    )
    result = plan_site(site, options)
    if out_file:
        out_file = save_or_rescue(result.save, out_file, "--out", "plan")
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(render_site(result))
    if out_file:
        click.echo(f"\nWrote {out_file} (per service: --service NAME with select, export, simulate, serve)")


def render_site(result) -> str:
    """The terminal report of a joint plan: choices, what each gave up, baselines, server totals."""
    site = result.site
    sv = result.solver
    what = "expected accuracies" if sv.get("objective") == "expected" else "worst-case accuracies"
    lines = [
        f"Site plan for {site.source}: {len(site.services)} services on {len(site.cluster.servers)} servers "
        f"({site.cluster_path})",
        f"Objective: weighted sum of exact {what}"
        f" = {result.value:.5f} (bound {result.bound:.5f}, gap {result.gap:.3%}, {sv.get('status')})",
        f"  solver: {sv.get('method')}; {sv.get('rounds')} rounds, {sv.get('columns')} columns, "
        f"{sv.get('wall_s', 0):.2f} s (limit {sv.get('time_limit_s'):g} s)",
        "",
        "Services (value = exact expected accuracy; alone = its best plan with the site to itself)",
    ]
    rows = []
    for o in result.outcomes:
        rows.append(
            [
                o.name,
                f"{o.weight:g}",
                o.chosen.family.id,
                f"{o.chosen.value:.4f}",
                "-" if o.alone is None else f"{o.alone.value:.4f}",
                "-" if o.gave_up is None else f"{100 * o.gave_up:+.2f}",
                "-" if o.sequential is None else f"{o.sequential.value:.4f}",
                ", ".join(sorted({s for v in o.chosen.placement.values() for s in v})),
            ]
        )
    lines.append(
        table(
            rows,
            ["service", "weight", "family", "joint", "alone", "gave up (pts)", "sequential", "servers"],
            align="lrlrrrrl",
        )
    )
    lines.append("")
    b = result.baselines
    lines.append("Against the usual ways (weighted sums)")
    lines.append(f"  joint plan:             {result.value:.5f}")
    if "alone" in b:
        a = b["alone"]
        over = a["overflows"]
        txt = (
            "fits"
            if a["fits"]
            else "does NOT fit: "
            + "; ".join(
                f"{o['server']} {o['memory_mb']:.2f}/{o['memory_capacity']:g} MiB, "
                f"{o['compute_gmacs']:.2f}/{o['compute_capacity']:g} GMAC/s"
                for o in over[:4]
            )
            + (f" (+{len(over) - 4} more)" if len(over) > 4 else "")
        )
        lines.append(f"  each planned alone:     {a['value']:.5f} ({txt})")
    if "sequential" in b:
        s = b["sequential"]
        extra = f", unplaced: {', '.join(s['unplaced'])}" if s["unplaced"] else ""
        gain = s.get("gain_of_joint")
        lines.append(
            f"  one after another by weight: {s['value']:.5f}{extra}"
            + ("" if gain is None else f" (joint gains {100 * gain:+.3f} points)")
        )
    lines.append("")
    lines.append("Servers (all services)")
    rows = []
    for name, u in result.servers.items():
        srv = site.cluster.server(name)
        rows.append(
            [
                name,
                ", ".join(u["components"]),
                f"{u['memory_mb']:.2f}/{srv.memory_mb:g}",
                _pct(u["memory_util"]),
                _pct(u["compute_util"]),
                f"{srv.failure_prob:.4f}",
            ]
        )
    lines.append(table(rows, ["server", "components", "memory MiB", "memory", "compute", "p(down)"], align="llrrrr"))
    if result.notes:
        lines.append("")
        lines.append("Notes")
        lines.extend(f"  - {n}" for n in result.notes)
    return "\n".join(lines)


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
    net = plan.extra.get("network") or {}
    if net.get("ingress"):
        lines.append(
            f"  ingress {net['ingress']}: down {100 * net['ingress_down_probability']:.2f}% of the time, costing "
            f"{net['ingress_share']:.4f} expected accuracy (the worst case counts failures of the other servers)"
        )
    if net.get("relays"):
        lines.append(f"  relays on its paths: {', '.join(net['relays'])} (their failures are counted)")
    if net.get("accuracy_by_domain_down"):
        doms = ", ".join(f"{k} {v:.4f}" for k, v in net["accuracy_by_domain_down"].items())
        lines.append(f"  accuracy with a whole failure domain down: {doms}")
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
