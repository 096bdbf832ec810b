"""Before and after reachability and failure domains, on the shipped examples (docs/results.md).

For each example cluster:

* the plan melplan made before (commit f93844b, ``melplan plan --servers examples/<x>.yaml``:
  placement and reported expected accuracy copied from that run's output below), and what that
  placement delivers under the exact semantics now (requests enter at the ingress, relays count;
  with and without the example's failure domains);
* the plan made now, with the failure domains in the cluster file, and the plan made now on the
  same cluster with the domains stripped, both scored on the cluster with its domains;
* the accuracy each plan keeps while a whole zone is down (a zone outage).

Usage: ``python scripts/examples_network.py`` (about a second per example, on the old Fashion-MNIST
catalog frozen in tests/data/fmnist-effb0).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from melplan.core.catalog import load_catalog  # noqa: E402
from melplan.core.cluster import load_cluster  # noqa: E402
from melplan.core.evaluate import evaluate_placement  # noqa: E402
from melplan.planner.planner import PlanOptions, plan  # noqa: E402

# The catalog these plans were made on: the old Fashion-MNIST catalog, frozen in tests/data (the
# shipped one was rebuilt after this comparison was made).
OLD_CATALOG = ROOT / "tests" / "data" / "fmnist-effb0"
FAMILY = "fmnist-effb0-u3-b4b4b4-shared-l2-2-2-1-1-1-1-s0"
# `git worktree add /tmp/old f93844b && cd /tmp/old && melplan plan --servers examples/<x>.yaml --out old.json`
BEFORE = {
    "cluster-4": (
        {"u1": ("edge-a",), "u2": ("edge-b",), "u3": ("edge-c",), "shared": ("edge-c",)},
        0.8945763143819607,
    ),
    "edge-site-12": (
        {"u1": ("east-gw",), "u2": ("east-gpu-1",), "u3": ("north-gw",), "shared": ("north-gw",)},
        0.8947279721215999,
    ),
}


def main() -> int:
    catalog = load_catalog(OLD_CATALOG)
    family = catalog.get(FAMILY)
    for name, (old_pl, old_reported) in BEFORE.items():
        cl = load_cluster(ROOT / "examples" / f"{name}.yaml")
        bare = replace(cl, failure_domains=())
        zones = [d.name for d in cl.failure_domains]
        print(f"\n{name}: ingress {cl.ingress}, failure domains {', '.join(zones) or 'none'}")
        now = plan(catalog, cl, PlanOptions())
        blind = plan(catalog, bare, PlanOptions())
        rows = [
            ("before (f93844b) reported", None, old_reported),
            ("before, delivered (reachability, no domains)", evaluate_placement(family, old_pl, bare), None),
            ("before, delivered (reachability + domains)", evaluate_placement(family, old_pl, cl), None),
            (
                "now, planned without domains, delivered",
                evaluate_placement(catalog.get(blind.plan.family), blind.plan.placement, cl),
                None,
            ),
            (
                "now, planned with domains (reported = delivered)",
                evaluate_placement(catalog.get(now.plan.family), now.plan.placement, cl),
                None,
            ),
        ]
        print(f"  {'plan':<50} {'expected':>9} {'available':>9}  " + "  ".join(f"{z + ' down':>13}" for z in zones))
        for label, ev, value in rows:
            if ev is None:
                print(f"  {label:<50} {value:>9.4f} {'':>9}")
                continue
            acc = ev.domain_worst if ev.domain_worst else {}
            cells = "  ".join(f"{acc.get(z, ev.accuracy_all_up):>13.4f}" for z in zones)
            print(f"  {label:<50} {ev.expected_accuracy:>9.4f} {ev.availability:>9.4f}  {cells}")
        print(f"  now, with domains: {now.plan.family} on {dict(now.plan.placement)}")
        print(f"  now, without domains: {blind.plan.family} on {dict(blind.plan.placement)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
