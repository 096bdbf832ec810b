"""The accuracy-over-time figure of a simulation (matplotlib, imported only here).

One band per deployable strategy, hours on x, two rows each:

* **accuracy while answering**: per bin, the time-weighted mean accuracy over the time the strategy
  answered (a line) and the range down to the lowest accuracy it answered with (a band).  Time
  without an answer does not enter this row, so "no answer" never looks like low accuracy.  The
  y-axis spans the accuracies that occur (and the floor), so a degradation of 0.005 is visible;
* **no answer**: per bin, the fraction of the bin without an answer, as a bar on a log axis from
  1e-5 to 1: a 10 s gap in a 5 h bin is a bar of 5.6e-4, short but visible, never a full bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from melplan.core.errors import InputError
from melplan.core.fileio import atomic_write_with

if TYPE_CHECKING:  # pragma: no cover
    from melplan.sim.simulate import SimulationReport

GAP_AXIS_MIN = 1e-5


def binned_series(
    series: Sequence[tuple[float, float | None]], horizon_s: float, bins: int
) -> tuple[list[float], list[float | None], list[float | None], list[float]]:
    """Per bin of ``horizon_s / bins``: start time, mean accuracy over the answered time (None when
    the bin has none), lowest accuracy answered with (None likewise), and the seconds without an
    answer (a value of None in ``series``)."""
    width = horizon_s / bins
    starts = [b * width for b in range(bins)]
    acc_t = [0.0] * bins
    ans_t = [0.0] * bins
    low = [math.inf] * bins
    gap = [0.0] * bins
    pts = list(series) + [(horizon_s, series[-1][1] if series else None)]
    for (t0, a), (t1, _) in zip(pts[:-1], pts[1:]):
        if t1 <= t0:
            continue
        b0, b1 = int(t0 // width), min(bins - 1, int(math.ceil(t1 / width)) - 1)
        for b in range(max(0, b0), b1 + 1):
            lo, hi = max(t0, starts[b]), min(t1, starts[b] + width)
            if hi <= lo:
                continue
            if a is None:
                gap[b] += hi - lo
            else:
                acc_t[b] += a * (hi - lo)
                ans_t[b] += hi - lo
                low[b] = min(low[b], a)
    mean = [acc_t[b] / ans_t[b] if ans_t[b] > 0 else None for b in range(bins)]
    lows = [None if math.isinf(x) else x for x in low]
    return starts, mean, lows, gap


def plot_report(report: SimulationReport, path: str, *, title: str | None = None, bins: int = 300) -> str:
    """Write the figure (see the module) as PNG, atomically; returns the path.  Raises
    :class:`InputError` when no strategy is deployable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [s for s in report.strategies if s.deployable]
    if not rows:
        raise InputError("nothing to plot: no strategy is deployable", field="plot", fix="check the notes in the table")
    hours = report.hours
    bins = max(1, min(bins, int(report.horizon_s)))
    accs = [a for s in rows for _, a in s.series if a is not None]
    lo = min(accs + [report.floor]) if accs else 0.0
    hi = max(accs) if accs else 1.0
    pad = max(0.004, 0.08 * (hi - lo))
    y0, y1 = max(0.0, lo - pad), min(1.0, hi + pad)
    height = 2.5 * len(rows) + 1.3
    fig = plt.figure(figsize=(11, height))
    # per strategy: a spacer (its title), the accuracy row, the no-answer row
    grid = fig.add_gridspec(3 * len(rows), 1, height_ratios=[0.55, 3, 1] * len(rows), hspace=0.12)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    first_ax = None
    for n, (s, color) in enumerate(zip(rows, colors)):
        ax = fig.add_subplot(grid[3 * n + 1], sharex=first_ax)
        gx = fig.add_subplot(grid[3 * n + 2], sharex=ax)
        first_ax = first_ax or ax
        starts, mean, low, gap = binned_series(s.series, report.horizon_s, bins)
        xs = [t / 3600 for t in starts] + [hours]
        m = [math.nan if v is None else v for v in mean]
        lw = [math.nan if v is None else v for v in low]
        ax.stairs(m, xs, baseline=None, color=color, lw=1.3)
        ax.stairs(m, xs, baseline=lw, fill=True, color=color, alpha=0.25, lw=0)
        ax.axhline(report.floor, color="gray", ls="--", lw=0.8)
        ax.set_ylim(y0, y1)
        ax.set_ylabel("accuracy\nwhen answering", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelbottom=False, labelsize=8)
        ax.set_title(
            f"{_short(s.label, 80)}\nmean {s.accuracy:.4f} (no answer counts 0),  availability "
            f"{s.availability:.4%},  below floor {s.below_floor_s / 3600:.2f} h,  re-plans/restarts {s.replans}",
            fontsize=8.5,
            loc="left",
        )
        frac = [g / (report.horizon_s / bins) for g in gap]
        gx.bar(
            xs[:-1],
            [f if f > 0 else math.nan for f in frac],
            width=[b - a for a, b in zip(xs[:-1], xs[1:])],
            align="edge",
            color="#d62728",
            lw=0,
        )
        gx.set_yscale("log")
        gx.set_ylim(GAP_AXIS_MIN, 1.0)
        gx.set_yticks([1e-4, 1e-2, 1.0])
        gx.set_ylabel("no answer\n(bin share)", fontsize=8)
        gx.tick_params(labelsize=7, labelbottom=(n == len(rows) - 1))
        gx.grid(alpha=0.3, axis="y")
        total = sum(gap) / 3600
        gx.text(
            0.995, 0.92, f"no answer {total:.2f} h in all", transform=gx.transAxes, ha="right", va="top", fontsize=7
        )
    assert first_ax is not None
    first_ax.set_xlim(0, hours)
    fig.axes[-1].set_xlabel("time (hours)")
    handles = [
        Line2D([], [], color="black", lw=1.3, label=f"mean accuracy while answering, per {hours / bins:.3g} h bin"),
        Patch(color="black", alpha=0.25, label="down to the lowest accuracy answered in the bin"),
        Line2D([], [], color="gray", ls="--", lw=0.8, label=f"floor {report.floor:.3f}"),
        Patch(color="#d62728", label="share of the bin with no answer (log scale)"),
    ]
    fig.suptitle(
        title or f"Delivered accuracy over {hours:g} h ({_short(report.trace_source)})",
        fontsize=10,
        y=1 - 0.06 / height,
        va="top",
    )
    fig.legend(
        handles=handles, loc="upper center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1 - 0.28 / height)
    )
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / height, top=1 - 0.75 / height)
    try:
        atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return str(path)


def _short(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
