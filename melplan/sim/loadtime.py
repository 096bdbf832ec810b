"""Default load and detection times of the simulator, each with its source (no torch).

**Load** (a component, or a single model, that starts on a server and must load before it answers):
the wall time from spawning its process to the end of its first inference: interpreter start,
``import torch``, building the module, ``torch.load(weights_only=True)``, ``load_state_dict`` and one
inference.  Measured here with ``benchmarks/component_load.py --repeats 5`` (the command's output is
quoted in docs/results.md); the default for a component of ``weight_bytes`` is
``LOAD_FIXED_S + LOAD_PER_MIB_S x MiB``: the slope fitted to the part that grows with the size (loading
the weights and the first inference, 0.02-0.14 s), the fixed part the median of the rest.  Almost all
of it is starting Python and torch, which does not depend on the component's size.

**Detection**: :data:`DEFAULT_DETECTION_S` is an assumption, not a measurement: a heartbeat monitor
that declares a server down after a few missed beats of a few seconds each.  The MEL authors' demo
(umassos/iobt25-demo) beats every 20 ms, so it would detect in well under a second; docs/results.md
has a sensitivity row.
"""

from __future__ import annotations

# Measured on the old EfficientNet-B0 entries (catalog/fashion-mnist until commit ebe146c; the catalog
# is now the rebuilt Lite0 one, and the benchmark loads its entries): load time follows the bytes.
# benchmarks/component_load.py --repeats 5, 2026-12-03, this machine: 2 cores shared by eight engineers
# (load average 5 to 8 during the run), Python 3.11.7, torch CPU, one thread.
# (what, weight bytes, median wall seconds from spawn to ready, median seconds of torch.load +
#  load_state_dict + first inference inside the process)
MEASURED_LOADS: tuple[tuple[str, int, float, float], ...] = (
    ("fmnist-effb0-b4-s0 (4 blocks, shipped weights)", 309296, 8.351, 0.0247),
    ("fmnist-effb0-u2-b5b5-fc-l1-1-1-s0 u1 (5 blocks, shipped weights)", 1387968, 10.963, 0.0606),
    ("fmnist-effb0-full-s0 (9 blocks, fresh weights of its size)", 16249888, 9.152, 0.1437),
)
LOAD_SOURCE = (
    "benchmarks/component_load.py --repeats 5 (spawn + import torch + build + torch.load + first inference, "
    "medians 8.4-11.0 s on 2 shared cores)"
)
DEFAULT_DETECTION_S = 10.0
DETECTION_SOURCE = "assumption: a heartbeat monitor missing a few beats (see melplan/sim/loadtime.py)"


def _fit() -> tuple[float, float]:
    """The per-MiB slope from the in-process load + first inference (the part that grows with the
    size), and the fixed part as the median of what the wall time leaves."""
    pts = [(b / (1 << 20), inner) for _, b, _, inner in MEASURED_LOADS]
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = max(0.0, sum((x - mx) * (y - my) for x, y in pts) / sxx) if sxx else 0.0
    rest = sorted(wall - slope * b / (1 << 20) for _, b, wall, _ in MEASURED_LOADS)
    return rest[len(rest) // 2], slope


LOAD_FIXED_S, LOAD_PER_MIB_S = _fit()


def default_load_s(weight_bytes: int) -> float:
    """The measured default load time of a component or model of ``weight_bytes`` (see the module)."""
    return round(LOAD_FIXED_S + LOAD_PER_MIB_S * weight_bytes / (1 << 20), 3)
