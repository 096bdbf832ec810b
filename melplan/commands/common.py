"""Options and rendering helpers shared by several commands: each shared option is defined here once.

Machine output: :func:`echo_json` prints exactly one strict JSON document on stdout (non-finite
numbers become ``null``, see :func:`melplan.core.fileio.strict_json`).  Solver logs appear only with
``--verbose``, and then on stderr.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from melplan.core.fileio import dumps_strict

catalog_option = click.option(
    "--catalog",
    "catalog_dir",
    type=click.Path(file_okay=True, dir_okay=True),
    default=None,
    help="Catalog directory of family JSON files (default: $MELPLAN_CATALOG, ./catalog, or the shipped one).",
)
plan_catalog_option = click.option(
    "--catalog",
    "catalog_dir",
    type=click.Path(file_okay=True, dir_okay=True),
    default=None,
    help="Catalog directory: only needed for a v1 plan (a v2 plan embeds its family); when given, its entry "
    "for the plan's family must agree with the embedded one.",
)
plan_option = click.option(
    "--plan",
    "plan_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Plan file written by `melplan plan --out` (a v2 plan embeds its family and cluster).",
)
service_option = click.option(
    "--service",
    "service",
    default=None,
    metavar="NAME",
    help="For a site plan (`melplan plan --services`): the service to use.",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one strict JSON document on stdout instead of tables."
)
seed_option = click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every random source."
)
force_option = click.option("--force", is_flag=True, help="Overwrite existing output files.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress output (no progress bar).")


class FiniteFloat(click.ParamType):
    """A finite number (no nan/inf) within bounds, checked when the command line is parsed."""

    name = "NUMBER"

    def __init__(
        self, min: float | None = None, max: float | None = None, *, min_open: bool = False, max_open: bool = False
    ) -> None:
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None:
            return None
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (v <= self.min if self.min_open else v < self.min):
            self.fail(f"{value} must be {'>' if self.min_open else '>='} {self.min:g}", param, ctx)
        if self.max is not None and (v >= self.max if self.max_open else v > self.max):
            self.fail(f"{value} must be {'<' if self.max_open else '<='} {self.max:g}", param, ctx)
        return v


class IntList(click.ParamType):
    """Comma-separated whole numbers >= ``min`` (e.g. ``--blocks 4,4,3``), as a tuple."""

    name = "N,N,..."

    def __init__(self, min: int = 1) -> None:
        self.min = min

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(x) for x in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of whole numbers (e.g. 4,4,3)", param, ctx)
        if any(x < self.min for x in out):
            self.fail(f"{value!r}: every number must be >= {self.min}", param, ctx)
        return out


class Shard(click.ParamType):
    """``K/N`` with 0 <= K < N, as a tuple ``(K, N)``."""

    name = "K/N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        parts = str(value).split("/")
        try:
            k, n = (int(x) for x in parts)
        except ValueError:
            self.fail(f"{value!r}: expected K/N with whole numbers, e.g. 0/2", param, ctx)
        if not 0 <= k < n:
            self.fail(f"{value!r}: expected K/N with 0 <= K < N, e.g. 1/2", param, ctx)
        return (k, n)


def servers_option(*, required: bool, help: str) -> Callable:
    """``--servers FILE``: a cluster file (required by `plan`; optional where the plan embeds one)."""
    return click.option("--servers", "cluster_path", required=required, type=click.Path(dir_okay=False), help=help)


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        from melplan.planner.solve import set_solver_log

        set_solver_log(True)
    return value


verbose_option = click.option(
    "--verbose",
    "-v",
    is_flag=True,
    callback=_verbose,
    expose_value=False,
    is_eager=True,
    help="Show the MILP solver's log (on stderr).",
)


def refuse_overwrite(path: str | None, force: bool, option: str) -> None:
    """Raise :class:`InputError` when ``path`` exists and ``--force`` was not given (checked before any work)."""
    from pathlib import Path

    from melplan.core.errors import InputError

    if path and not force and Path(path).exists():
        raise InputError(
            "the file exists and would be overwritten",
            file=str(path),
            field=option,
            fix="pass --force to overwrite it, or choose another path",
        )


def check_writable(path: str | None, option: str, *, directory: bool = False) -> None:
    """Before any work: raise :class:`InputError` when ``path`` (a file, or with ``directory`` a
    folder that will be created) cannot be written: an ancestor is a file, or the nearest existing
    folder is not writable."""
    import os
    from pathlib import Path

    from melplan.core.errors import InputError

    if not path:
        return
    p = Path(path).absolute()
    if p.exists():
        if directory and not p.is_dir():
            raise InputError("exists and is not a directory", file=str(path), field=option, fix="choose a folder path")
        if not directory and p.is_dir():
            raise InputError("is a directory", file=str(path), field=option, fix="give a file path")
        target = p if directory else p.parent
        if not os.access(target, os.W_OK | os.X_OK) or (not directory and not os.access(p, os.W_OK)):
            raise InputError("is not writable", file=str(path), field=option, fix="choose a path you can write to")
        return
    ancestor = p.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(
            f"cannot be created: {ancestor} is a file, not a folder",
            file=str(path),
            field=option,
            fix="choose a path under a folder",
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot be created: the folder {ancestor} is not writable",
            file=str(path),
            field=option,
            fix="choose a path you can write to",
        )


def save_or_rescue(save: Callable[[str], Any], path: str, option: str, what: str) -> str:
    """``save(path)``; when that fails (the disk filled up, permissions changed after the check), save
    to a file in the temporary folder instead and say so on stderr, so a result is never lost.
    Returns the path written."""
    import os
    import tempfile
    from pathlib import Path

    try:
        save(path)
        return path
    except OSError as exc:
        fd, rescue = tempfile.mkstemp(prefix=f"melplan-{what}-", suffix=Path(path).suffix or ".out")
        os.close(fd)
        save(rescue)
        click.echo(
            f"Error: {path}: cannot write {option} ({exc.strerror or exc}); the {what} was saved to {rescue} instead.",
            err=True,
        )
        return rescue


def echo_json(obj: Any) -> None:
    """Print ``obj`` as one strict JSON document on stdout (NaN and infinities become null)."""
    click.echo(dumps_strict(obj))


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
