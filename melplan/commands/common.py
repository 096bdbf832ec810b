"""Options and rendering helpers shared by several commands."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import click

catalog_option = click.option(
    "--catalog",
    "catalog_dir",
    type=click.Path(file_okay=True, dir_okay=True),
    default=None,
    help="Catalog directory of family JSON files (default: $MELPLAN_CATALOG, ./catalog, or the shipped one).",
)
service_option = click.option(
    "--service",
    "service",
    default=None,
    metavar="NAME",
    help="For a site plan (`melplan plan --services`): the service to use.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random source.")


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, align: str | None = None) -> str:
    """A plain aligned text table ('l'/'r' per column in ``align``; numbers right-aligned by default)."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(headers)))

    def line(vals: Iterable[str]) -> str:
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(vals, widths, align)).rstrip()

    out = [line(headers), line("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)
