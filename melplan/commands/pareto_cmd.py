"""``melplan pareto``: the non-dominated families of a catalog, their hypervolume, a plot and a pick."""

from __future__ import annotations

import click

from melplan.commands.common import check_writable, echo_json, force_option, json_option, refuse_overwrite, table
from melplan.core.catalog import Catalog, load_catalog
from melplan.core.errors import InputError
from melplan.pareto.front import DEFAULT_OBJECTIVES, KNOWN_NAMES, ParetoResult, analyse


def load_catalogs(dirs: tuple[str, ...], dataset: str | None) -> Catalog:
    """One catalog from one or more directories (ids must stay unique across them).

    Raises:
        CatalogError: a directory is missing, empty or malformed, or two hold the same id.
    """
    if not dirs:
        return load_catalog(None, dataset=dataset)
    cats = [load_catalog(d, dataset=dataset) for d in dirs]
    seen: dict[str, str] = {}
    for cat in cats:
        for f in cat:
            if f.id in seen:
                raise InputError(
                    f"family id '{f.id}' is in two catalogs ({seen[f.id]} and {f.source})",
                    file=f.source,
                    field="id",
                    fix="pass each catalog directory once",
                )
            seen[f.id] = f.source or ""
    families = tuple(sorted((f for c in cats for f in c), key=lambda f: f.id))
    return Catalog(families, ", ".join(str(d) for d in dirs))


def render(result: ParetoResult) -> str:
    """The ranked table, the hypervolume and the pick, as text."""
    objs = result.objectives
    ref = result.reference
    headers = ["rank", "id", "sizes / λ"] + [o.name for o in objs] + ["note"]
    rows = []
    order = sorted(
        result.rows,
        key=lambda r: (r.rank, -r.values[objs[0].name] if objs[0].maximise else r.values[objs[0].name], r.id),
    )
    for r in order:
        cells: list[object] = ["front" if r.on_front else str(r.rank), r.id, r.label]
        for o in objs:
            v = r.values[o.name]
            if o.kind == "accuracy":
                cells.append(f"{v:.4f}")
            else:
                rv = ref.value(o)
                cells.append(f"{v / 1e6:.3f}M" + (f" ({v / rv:.0%})" if rv else ""))
        note = []
        if r.role in ("reference", "backup"):
            note.append(r.role)
        if r.same_as:
            note.append(f"same point as {r.same_as}")
        if result.pick and result.pick.id == r.id:
            note.append("<- pick")
        cells.append(", ".join(note))
        rows.append(cells)
    lines = [table(rows, headers, align="llr" + "r" * len(objs) + "l")]
    n_front = len(result.front)
    lines.append("")
    lines.append(
        f"{n_front} of {len(result.rows)} families on the front of "
        f"({', '.join(f'{o.name} {o.sense}' for o in objs)}); rank k = dominated by rank < k only."
    )
    for fid, why in result.excluded:
        lines.append(f"not ranked: {fid}: {why}")
    refpt = ", ".join(f"{o.name} {result.normalisation.reference_point(o):.4g}" for o in objs)
    hv = f"hypervolume {result.hypervolume:.4f} (normalised; reference point: {refpt})"
    if result.normalisation.note:
        hv += f"; {result.normalisation.note}"
    lines.append(hv)
    if ref.id:
        lines.append(
            f"reference model: {ref.id} ({'in the catalog' if ref.source == 'catalog' else 'from the entries'})"
        )
    if result.pick:
        lines += ["", result.pick.reason]
    return "\n".join(lines)


@click.command("pareto")
@click.option(
    "--catalog",
    "catalog_dirs",
    multiple=True,
    type=click.Path(file_okay=True, dir_okay=True),
    help="Catalog directory of family JSON files; repeat to merge several "
    "(default: $MELPLAN_CATALOG, ./catalog, or the shipped one).",
)
@click.option("--dataset", default=None, help="Only this dataset's families (needed when the catalog mixes datasets).")
@click.option(
    "--objectives",
    default=",".join(DEFAULT_OBJECTIVES),
    show_default=True,
    help=f"Comma-separated objectives, from: {', '.join(KNOWN_NAMES)} (P = failure probability of "
    f"each upstream server, e.g. expected@0.05).",
)
@json_option
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG of the front (2-D projections) here.",
)
@force_option
@click.option("--label-all", is_flag=True, help="In the plot, label dominated families too.")
@click.option(
    "--pick",
    default=None,
    help="Constraints of the family to deploy, comma-separated, e.g. "
    '"params<=0.4*reference, acc_weakest_single>=0.85".',
)
@click.option(
    "--prefer",
    default=None,
    help="Objective to optimise among the families that pass --pick (default: the first objective).",
)
@click.option(
    "--weights",
    default=None,
    help="Instead of --prefer: maximise a weighted sum, e.g. "
    "acc_all_up=1,params=-0.2 (costs as fractions of the reference).",
)
def pareto(
    catalog_dirs: tuple[str, ...],
    dataset: str | None,
    objectives: str,
    as_json: bool,
    plot_path: str | None,
    force: bool,
    label_all: bool,
    pick: str | None,
    prefer: str | None,
    weights: str | None,
) -> None:
    """Non-dominated families of a catalog, the hypervolume of the front, a plot, and which family
    to deploy.

    \b
    Examples:
      melplan pareto --catalog catalog/fashion-mnist --plot front.png
      melplan pareto --objectives acc_all_up,expected@0.05,params --json
      melplan pareto --pick "params<=0.4*reference, acc_weakest_single>=0.85" --prefer acc_all_up
    """
    refuse_overwrite(plot_path, force, "--plot")
    check_writable(plot_path, "--plot")
    catalog = load_catalogs(catalog_dirs, dataset)
    result = analyse(catalog, objectives, dataset=dataset, pick=pick, prefer=prefer, weights=weights)
    written = None
    if plot_path:
        from melplan.pareto.plot import plot_front

        written = plot_front(result, plot_path, label_all=label_all)
    if as_json:
        out = result.to_dict()
        if written:
            out["plot"] = written
        echo_json(out)
        return
    click.echo(render(result))
    if written:
        click.echo(f"wrote {written}")
