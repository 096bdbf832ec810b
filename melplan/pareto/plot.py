"""Plots of a Pareto front (matplotlib, imported when a plot is drawn).

One panel per 2-D projection: with a cost objective (params, MACs, weight bytes) on the x axis and
each other objective on the y axis, e.g. params vs all-up accuracy and params vs weakest-single
accuracy for the default objectives.  In every panel:

* every family is a point (marker shape = number of upstreams), dominated ones in grey;
* families on the front (all objectives at once) are coloured and labelled with their sizes and λ;
* the front of the projection itself is drawn as a staircase, so the best accuracy for each size
  budget reads off the line;
* the reference (full) model is a star, also when it is known only from the entries' ``reference``
  block; costs are in millions with a secondary axis in % of the reference model.

``plot_front`` can overlay a *baseline* result (``melplan search``: hand-made families before the
search) and colour families by group.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from melplan.core.fileio import atomic_write_with
from melplan.pareto.front import Objective, ParetoResult, Row, family_label

MARKERS = {1: "s", 2: "o", 3: "^", 4: "D"}
FRONT_COLOR = "#d62728"
GROUP_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
DOMINATED_COLOR = "#9a9a9a"
DPI = 130  # labels are placed at the resolution the file is written at


def panels(objectives: Sequence[Objective]) -> list[tuple[Objective, Objective]]:
    """(x, y) pairs to draw: the first cost objective against every other one, else the first
    objective against the others (at most three panels)."""
    costs = [o for o in objectives if o.kind == "cost"]
    x = costs[0] if costs else objectives[0]
    return [(x, y) for y in objectives if y is not x][:3]


def _scale(obj: Objective) -> tuple[float, str]:
    if obj.kind == "accuracy":
        return 100.0, f"{obj.label} (%)"
    if obj.name == "weight_bytes":
        return 1.0 / (1 << 20), f"{obj.label} (MiB)"
    return 1e-6, f"{obj.label} (millions)"


def _front_2d(points: list[tuple[float, float]], x: Objective, y: Objective) -> list[tuple[float, float]]:
    """Non-dominated points of one projection, sorted along x (for the staircase)."""
    sx, sy = (1 if x.maximise else -1), (1 if y.maximise else -1)
    best: list[tuple[float, float]] = []
    for px, py in sorted(set(points), key=lambda p: (-sx * p[0], -sy * p[1])):
        if not best or sy * py > sy * best[-1][1]:
            best.append((px, py))
    return sorted(best)


def _place_labels(ax, items: list[tuple[float, float, str, str, bool]], fig) -> None:
    """Greedy label placement: for each point try offsets around it and keep the one whose box
    overlaps least with points and labels already placed (matplotlib has no automatic placement).

    The figure must have been drawn (for the renderer and final axes positions).  Items are
    ``(x, y, text, color, required)``; required ones are placed first and always shown,
    optional ones only where they fit without overlap.
    """
    renderer = fig.canvas.get_renderer()
    trans = ax.transData
    taken = []
    for x, y, *_ in items:
        px, py = trans.transform((x, y))
        taken.append((px - 8, py - 8, px + 8, py + 8))
    axbox = ax.get_window_extent(renderer).padded(-4)
    offsets = [
        (round(r * math.cos(a)), round(r * math.sin(a) - 4))
        for r in (9, 20, 32, 46)
        for a in (math.radians(d) for d in (30, -30, 150, -150, 90, -90, 0, 180))
    ]
    scale = fig.dpi / 72.0
    for x, y, text, color, required in sorted(items, key=lambda it: not it[4]):
        px, py = trans.transform((x, y))
        size = 7.5 if required else 6.5
        probe = ax.text(0, 0, text, fontsize=size)  # measured once, then boxes are arithmetic
        bb = probe.get_window_extent(renderer)
        w, h = bb.width, bb.height
        probe.remove()
        best = None
        for dx, dy in offsets:
            ox, oy = px + dx * scale, py + dy * scale
            x0 = ox if dx > 0 else (ox - w if dx < 0 else ox - w / 2)
            box = (x0, oy, x0 + w, oy + h)
            overlap = sum(
                max(0.0, min(box[2], t[2]) - max(box[0], t[0])) * max(0.0, min(box[3], t[3]) - max(box[1], t[1]))
                for t in taken
            )
            outside = (
                max(0.0, axbox.x0 - box[0])
                + max(0.0, box[2] - axbox.x1)
                + max(0.0, axbox.y0 - box[1])
                + max(0.0, box[3] - axbox.y1)
            ) * 500
            cost = overlap + outside + 0.01 * (abs(dx) + abs(dy))
            if best is None or cost < best[0]:
                best = (cost, dx, dy, box, overlap + outside)
            if overlap == 0 and outside == 0:
                break
        assert best is not None
        _, dx, dy, box, clash = best
        if not required and clash > 0:
            continue
        ax.annotate(
            text,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=size,
            ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
            va="bottom",
            color=color,
            alpha=1.0 if required else 0.75,
            arrowprops=dict(arrowstyle="-", color=color, lw=0.5, alpha=0.6, shrinkA=0, shrinkB=3),
        )
        taken.append(box)


def plot_front(
    result: ParetoResult,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    groups: Mapping[str, str] | None = None,
    baseline: ParetoResult | None = None,
    label_all: bool = False,
) -> str:
    """Draw ``result`` to ``path`` (PNG, written atomically) and return the path.

    ``groups`` maps family id -> group name (e.g. "hand-made", "searched") to colour points by
    group; ``baseline`` draws that result's front staircase dashed ("before").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    objs = result.objectives
    pairs = panels(objs)
    ref = result.reference
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.6 * len(pairs), 6.0), squeeze=False, dpi=DPI)
    group_names = sorted(set(groups.values())) if groups else []
    gcolor = {g: GROUP_COLORS[i % len(GROUP_COLORS)] for i, g in enumerate(group_names)}

    for ax, (xo, yo) in zip(axes[0], pairs):
        kx, xlabel = _scale(xo)
        ky, ylabel = _scale(yo)
        rows = list(result.rows)

        def xy(r: Row) -> tuple[float, float]:
            return r.values[xo.name] * kx, r.values[yo.name] * ky  # noqa: B023 (called inside this iteration)

        # staircase of the projection's own front (and the baseline's, dashed)
        for res, style, lab in ((baseline, "--", "front before search"), (result, "-", "front of this projection")):
            if res is None:
                continue
            pts = _front_2d([(r.values[xo.name] * kx, r.values[yo.name] * ky) for r in res.rows], xo, yo)
            if pts:
                xs, ys = zip(*pts)
                ax.step(
                    xs,
                    ys,
                    where="pre" if xo.maximise else "post",
                    ls=style,
                    color=FRONT_COLOR if res is result else "#555555",
                    lw=1.2,
                    alpha=0.7,
                    zorder=1,
                    label=lab,
                )
        for r in rows:
            if r.role == "reference":
                continue
            x, y = xy(r)
            mk = MARKERS.get(r.family.n, "P")
            if groups:
                c = gcolor.get(groups.get(r.id, ""), DOMINATED_COLOR)
                ax.scatter(
                    x,
                    y,
                    marker=mk,
                    s=70 if r.on_front else 34,
                    facecolor=c if r.on_front else "white",
                    edgecolor=c,
                    linewidth=1.3,
                    zorder=3 if r.on_front else 2,
                    alpha=1 if r.on_front else 0.8,
                )
            elif r.on_front:
                ax.scatter(x, y, marker=mk, s=70, color=FRONT_COLOR, edgecolor="black", linewidth=0.6, zorder=3)
            else:
                ax.scatter(x, y, marker=mk, s=34, color=DOMINATED_COLOR, alpha=0.8, zorder=2, linewidth=0)
        # the reference model: a catalog family, or only the entries' reference block
        rx, ry = ref.value(xo), ref.value(yo)
        if rx is not None and ry is not None:
            ax.scatter(rx * kx, ry * ky, marker="*", s=260, color="gold", edgecolor="black", linewidth=0.8, zorder=4)
        xs_all = [r.values[xo.name] * kx for r in rows] + ([rx * kx] if rx else [])
        if xo.kind == "cost" and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20:
            from matplotlib.ticker import FuncFormatter, LogLocator

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            xlabel += ", log scale"
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.1, y=0.16)
        xref = ref.value(xo)
        if xo.kind == "cost" and xref:
            sec = ax.secondary_xaxis(
                "top", functions=(lambda v, s=xref * kx: v / s * 100, lambda v, s=xref * kx: v * s / 100)
            )
            sec.set_xlabel(f"% of the reference model's {xo.name}", fontsize=8)
            sec.tick_params(labelsize=8)
            if ax.get_xscale() == "log":
                from matplotlib.ticker import FuncFormatter, LogLocator

                sec.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                sec.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(f"{yo.label} vs {xo.name}", fontsize=10)

    handles = [
        Line2D([], [], marker=MARKERS[n], ls="", color="#444444", label=f"{n} upstream{'s' if n > 1 else ''}")
        for n in sorted({r.family.n for r in result.rows if r.role != "reference"})
        if n in MARKERS
    ]
    if groups:
        handles += [
            Line2D([], [], marker="o", ls="", color=gcolor[g], label=f"{g} (filled: on the front)") for g in group_names
        ]
    else:
        handles += [
            Line2D(
                [],
                [],
                marker="o",
                ls="",
                color=FRONT_COLOR,
                markeredgecolor="black",
                label=f"on the front ({', '.join(o.name for o in objs)})",
            ),
            Line2D([], [], marker="o", ls="", color=DOMINATED_COLOR, label="dominated"),
        ]
    handles.append(Line2D([], [], color=FRONT_COLOR, label="front of each 2-D projection"))
    if baseline is not None:
        handles.append(Line2D([], [], color="#555555", ls="--", label="same, before the search"))
    if ref.value(pairs[0][0]) is not None:
        handles.append(
            Line2D(
                [],
                [],
                marker="*",
                ls="",
                color="gold",
                markeredgecolor="black",
                markersize=12,
                label="reference (full model)",
            )
        )
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8.5, frameon=False)
    n_front = len(result.front)
    head = title or (
        f"Pareto front, {result.dataset or 'catalog'}: {n_front} of {len(result.rows)} families "
        f"non-dominated; hypervolume {result.hypervolume:.4f}"
    )
    fig.suptitle(
        head + "\nlabels: blocks per upstream, loss weights λ per subset (u1:u2:u1+u2 ...), combiner kind if not fc",
        fontsize=10.5,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.canvas.draw()  # after tight_layout, so label boxes are where they end up
    for ax, (xo, yo) in zip(axes[0], pairs):
        _place_labels(ax, _labels(result, xo, yo, groups, gcolor, label_all), fig)
    try:
        return str(atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png")))
    finally:
        plt.close(fig)


def _labels(
    result: ParetoResult,
    xo: Objective,
    yo: Objective,
    groups: Mapping[str, str] | None,
    gcolor: Mapping[str, str],
    label_all: bool,
) -> list[tuple[float, float, str, str, bool]]:
    """Labels of one panel: the panel's own front and the reference always, other families on the
    (full) front where they fit, dominated ones only with ``label_all``."""
    kx, _ = _scale(xo)
    ky, _ = _scale(yo)
    stair = set(_front_2d([(r.values[xo.name] * kx, r.values[yo.name] * ky) for r in result.rows], xo, yo))
    out = []
    for r in result.rows:
        if r.role == "reference" or not (r.on_front or label_all):
            continue
        x, y = r.values[xo.name] * kx, r.values[yo.name] * ky
        color = gcolor.get(groups.get(r.id, ""), "black") if groups else "black"
        out.append((x, y, family_label(r.family, compact=True), color, (x, y) in stair and r.on_front))
    rx, ry = result.reference.value(xo), result.reference.value(yo)
    if rx is not None and ry is not None:
        in_catalog = any(r.role == "reference" for r in result.rows)
        out.insert(
            0,
            (
                rx * kx,
                ry * ky,
                f"reference{'' if in_catalog else ' (from entries)'}: {result.reference.id or 'full model'}",
                "#7a5c00",
                True,
            ),
        )
    return out
