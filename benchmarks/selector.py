"""Benchmark of the runtime selector.

1. Fast path: the time of one failover decision (``mark_down`` / ``mark_up`` returning the new
   route, lock, health update, table lookup and the event record included) against a plain dict
   lookup, both timed call by call with ``perf_counter_ns`` in interleaved blocks of the same run,
   so they see the same machine.  Reports median and p99, the timer's own overhead, and the ratio of
   medians.  Target: median under 20 us.
2. Slow path (``--replan``): wall time of one re-plan after a failure on a generated 100-server
   cluster, with the ILP planner (``melplan.planner.planner``) and with the local repair replanner.
   Target: under 1 s.

Run:  python benchmarks/selector.py [--events 200000] [--replan] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from melplan.core.catalog import Catalog, Combiner, Family, Upstream, nonempty_subsets  # noqa: E402
from melplan.core.cluster import Cluster, Link, Server, Workload  # noqa: E402
from melplan.core.plan import Plan  # noqa: E402
from melplan.runtime.selector import RuntimeSelector  # noqa: E402


def bench_family(n: int, seed: int = 0) -> Family:
    rng = random.Random(seed)
    names = [f"u{i + 1}" for i in range(n)]
    ups = tuple(
        Upstream(u, params=150_000, macs=9_000_000, weight_bytes=600_000, feature_bytes=1280, activation_bytes=200_000)
        for u in names
    )
    subsets = [s for s in nonempty_subsets(names) if len(s) >= 2]
    combs = tuple(
        Combiner(subset=s, params=30_000 * len(s), macs=30_000 * len(s), weight_bytes=120_000 * len(s)) for s in subsets
    )
    acc = {"+".join(s): round(0.80 + 0.03 * len(s) + rng.uniform(-0.01, 0.01), 4) for s in nonempty_subsets(names)}
    return Family(
        id=f"bench-u{n}",
        dataset={"name": "bench", "num_classes": 10, "input_shape": [3, 32, 32]},
        base="efficientnet_b0",
        training={},
        upstreams=ups,
        combiners=combs,
        accuracy=acc,
    )


def bench_cluster(m: int, seed: int = 0) -> Cluster:
    rng = random.Random(seed)
    servers = tuple(
        Server(
            f"edge-{i:03d}",
            memory_mb=rng.choice([4.0, 8.0, 16.0]),
            compute_gmacs=rng.choice([5.0, 10.0, 20.0, 40.0]),
            failure_prob=rng.choice([0.01, 0.02, 0.05, 0.1]),
        )
        for i in range(m)
    )
    return Cluster(servers, Workload(50.0, None), Link(1.0, 1000.0), (), None)


def pct(xs: list[int], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def fast_path(events: int, seed: int) -> dict:
    """4 upstreams on 4 servers, 11 combiners with 2 replicas each on 8 more: m = 12 servers, a
    4096-entry table."""
    family = bench_family(4, seed)
    cluster = bench_cluster(16, seed)
    rng = random.Random(seed)
    names = cluster.names
    placement = {u: (names[i],) for i, u in enumerate(family.upstream_names)}
    for k, c in enumerate(family.combiners):
        placement[c.name] = (names[4 + k % 8], names[4 + (k + 3) % 8])
    plan = Plan(family.id, placement, "expected", 0.0, 0.0, {})
    sel = RuntimeSelector(plan, family, cluster, policy="failover-only", history_limit=1000)
    used = list(sel.lookup.used)
    ops = []
    down: set[str] = set()
    for _ in range(events):
        s = rng.choice(used)
        ops.append((s, s not in down))
        (down.add if s not in down else down.discard)(s)
    table = {i: f"v{i}" for i in range(4096)}
    keys = [rng.randrange(4096) for _ in range(events)]
    now = time.perf_counter_ns
    mark_down, mark_up = sel.mark_down, sel.mark_up
    dec, dic, empty, changed = [], [], [], []
    block = 1000
    for start in range(0, events, block):  # interleave: decisions, dict lookups, empty timings
        for s, goes_down in ops[start : start + block]:
            before = sel.route()
            if goes_down:
                t0 = now()
                r = mark_down(s, 0.0)
                t1 = now()
            else:
                t0 = now()
                r = mark_up(s, 0.0)
                t1 = now()
            dec.append(t1 - t0)
            if r is not before:
                changed.append(t1 - t0)
        for k in keys[start : start + block]:
            t0 = now()
            table[k]
            t1 = now()
            dic.append(t1 - t0)
        for _ in range(block):
            t0 = now()
            t1 = now()
            empty.append(t1 - t0)
    over = statistics.median(empty)
    md, mdict = statistics.median(dec), statistics.median(dic)
    return {
        "servers_in_table": len(used),
        "table_entries": 1 << len(used),
        "events": events,
        "decision_us": {"median": md / 1e3, "p99": pct(dec, 0.99) / 1e3},
        "route_changing_decision_us": {
            "median": statistics.median(changed) / 1e3,
            "p99": pct(changed, 0.99) / 1e3,
            "count": len(changed),
        },
        "dict_lookup_us": {"median": mdict / 1e3, "p99": pct(dic, 0.99) / 1e3},
        "timer_overhead_us": over / 1e3,
        "ratio_of_medians": md / mdict,
        "ratio_of_medians_minus_timer": (md - over) / max(mdict - over, 1.0),
    }


def slow_path(seed: int, time_limit_s: float) -> dict:
    from melplan.planner.planner import PlanOptions, plan
    from melplan.runtime.repair import repair_replanner
    from melplan.runtime.selector import planner_replanner

    family = bench_family(3, seed)
    cluster = bench_cluster(100, seed)
    t0 = time.perf_counter()
    first = plan(Catalog((family,)), cluster, PlanOptions(max_failures=2, time_limit_s=60.0)).plan
    plan_s = time.perf_counter() - t0
    out = {
        "servers": 100,
        "family": family.id,
        "initial_plan_s": round(plan_s, 3),
        "initial_solver": dict(first.solver),
    }
    for name, replanner in (("planner", planner_replanner(time_limit_s=time_limit_s)), ("repair", repair_replanner())):
        sel = RuntimeSelector(first, family, cluster, policy="replan-after", replanner=replanner)
        victim = sel.route().servers[0]
        sel.mark_down(victim, now=0.0)
        t0 = time.perf_counter()
        res = sel.tick(now=1e4)
        wall = time.perf_counter() - t0
        if res is None:
            out[name] = {"failed": sel.history[-1].detail, "wall_s": round(wall, 3)}
            continue
        out[name] = {
            "wall_s": round(wall, 3),
            "down": victim,
            "actions": [str(a) for a in res.actions],
            "bytes_moved": res.bytes_moved,
            "expected_accuracy": res.new_plan.expected_accuracy,
            "solver": dict(res.new_plan.solver),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replan", action="store_true", help="also time one re-plan on a 100-server cluster")
    ap.add_argument("--replan-time-limit", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seed": args.seed,
        "fast_path": fast_path(args.events, args.seed),
    }
    if args.replan:
        res["replan"] = slow_path(args.seed, args.replan_time_limit)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    f = res["fast_path"]
    print(
        f"Fast path: {f['events']:,} events on a plan using {f['servers_in_table']} servers "
        f"({f['table_entries']:,}-entry table), seed {args.seed}"
    )
    print(f"  failover decision  median {f['decision_us']['median']:.2f} us   p99 {f['decision_us']['p99']:.2f} us")
    c = f["route_changing_decision_us"]
    print(f"  ... route changed  median {c['median']:.2f} us   p99 {c['p99']:.2f} us   ({c['count']:,} events)")
    print(
        f"  dict lookup        median {f['dict_lookup_us']['median']:.2f} us   p99 {f['dict_lookup_us']['p99']:.2f} us"
    )
    print(f"  timer overhead     median {f['timer_overhead_us']:.2f} us")
    print(
        f"  ratio of medians {f['ratio_of_medians']:.1f}x  ({f['ratio_of_medians_minus_timer']:.1f}x without the timer)"
    )
    if "replan" in res:
        r = res["replan"]
        print(f"Re-plan on {r['servers']} servers ({r['family']}); initial plan {r['initial_plan_s']} s")
        for name in ("planner", "repair"):
            x = r[name]
            if "failed" in x:
                print(f"  {name:8s} failed after {x['wall_s']} s: {x['failed']}")
            else:
                print(
                    f"  {name:8s} {x['wall_s']:.3f} s  {len(x['actions'])} actions, {x['bytes_moved']:,} bytes, "
                    f"expected accuracy {x['expected_accuracy']:.4f}, solver {x['solver'].get('status')}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
