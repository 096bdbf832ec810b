"""How `melplan plan` scales, measured in one run (numbers and ratios side by side).

1. Scale: a 200-server heterogeneous cluster (``melplan cluster generate --servers 200 --seed 0``)
   and the whole catalog, ``--max-failures 2``, target: a gap of at most 1% within 10 s.
2. Re-plan: a 100-server cluster, one used server lost, the running placement kept where it can
   be (migration weight 0.05 points per MiB); target under 1 s.
3. ILP against brute force on 6-server instances, same objective (exact expected accuracy over
   every up/down state): the brute force enumerates every placement and scores it with
   melplan.core.evaluate; the ILP is timed alone (``build_family_model`` + ``solve`` on all servers, no
   reductions, no starting plan) and inside the planner (reductions, bounds).

0. The issue-12 targets side by side with today's figures (see ``TODAY``): 200 and 1,000 servers,
   ``--time-limit 0.5`` on 2,000 servers, 5,000 servers x 40 synthetic families; each in a child
   process, wall time from the process start (imports and loading the cluster file included), peak
   resident memory of the child.

Usage::

    python benchmarks/plan_scale.py                       # the shipped catalog if present, else a synthetic one
    python benchmarks/plan_scale.py --catalog catalog/fashion-mnist --threads 2

The synthetic catalog (used when no catalog is given and none is shipped) is shaped like
EfficientNet-B0 prefixes on 32x32 inputs; its sizes and accuracies are made up (seeded) and the
output says so.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from melplan.core.catalog import Combiner, Family, Upstream, load_catalog, nonempty_subsets, subset_key  # noqa: E402
from melplan.core.cluster import Cluster, Link, Server, Workload  # noqa: E402
from melplan.core.clustergen import generate_cluster  # noqa: E402
from melplan.planner.ilp import ModelSpec, build_family_model, family_data, read_placement  # noqa: E402
from melplan.planner.planner import PlanOptions, objective_value, plan  # noqa: E402
from melplan.planner.solve import solve  # noqa: E402

# -- a synthetic catalog -----------------------------------------------------------------------


def synthetic_catalog(seed: int = 0, families: int = 22) -> list[Family]:
    """``families`` families (22 by default): a reference and a backup model, MEL families with 2-4
    upstreams, fc (one combiner per subset) and shared combiners, several lambda settings."""
    rng = random.Random(seed)
    ds = {"name": "synthetic-fmnist", "num_classes": 10, "test_samples": 10000, "input_shape": [3, 32, 32]}
    fams = []

    def single(fid, params, macs, acc, role):
        u = Upstream(
            "u1",
            params=params,
            macs=macs,
            weight_bytes=4 * params,
            feature_bytes=5120,
            blocks=16,
            activation_bytes=600_000,
        )
        return Family(fid, ds, "efficientnet_b0", {"seed": seed}, (u,), (), {"u1": acc}, extra={"role": role})

    fams.append(single("syn-reference", 4_020_358, 8_780_000, 0.921, "reference"))
    fams.append(single("syn-backup", 310_000, 1_400_000, 0.884, "backup"))
    k = max(0, families - 2)
    per = {4: k // 5, 2: (k - k // 5) // 2}
    per[3] = k - per[4] - per[2]
    for n in (2, 3, 4):
        for variant in range(per[n]):
            blocks = [rng.choice([3, 4, 5, 6, 8]) for _ in range(n)]
            ups = []
            for i, b in enumerate(blocks):
                params = int(18_000 * b * b * rng.uniform(0.9, 1.1))
                ups.append(
                    Upstream(
                        f"u{i + 1}",
                        params=params,
                        macs=int(650_000 * b),
                        weight_bytes=4 * params,
                        feature_bytes=4 * 40 * b * 4,
                        blocks=b,
                        activation_bytes=150_000 * b,
                    )
                )
            names = [u.name for u in ups]
            shared = variant % 3 == 2 and n >= 3
            subs = [s for s in nonempty_subsets(names) if len(s) >= 2]
            if shared:
                p = 60_000 * n
                combs = (
                    Combiner(
                        tuple(names),
                        params=p,
                        macs=p,
                        weight_bytes=4 * p,
                        serves=tuple(subs),
                        name="shared",
                        kind="shared",
                    ),
                )
            else:
                combs = tuple(
                    Combiner(s, params=25_000 * len(s), macs=25_000 * len(s), weight_bytes=100_000 * len(s), kind="fc")
                    for s in subs
                )
            # as in the MEL paper: each exit alone is a few points below the full model, the
            # ensemble of all upstreams close to it or above
            single_acc = {u.name: min(0.905, 0.845 + 0.007 * u.blocks + rng.uniform(-0.008, 0.008)) for u in ups}
            acc = {}
            for s in nonempty_subsets(names):
                best = max(single_acc[u] for u in s)
                gain = sum(0.022 / (k + 1) for k in range(len(s) - 1)) + rng.uniform(-0.003, 0.004) * (len(s) > 1)
                acc[subset_key(s)] = round(min(0.94, best + gain) if len(s) > 1 else single_acc[s[0]], 4)
            fid = f"syn-u{n}-{'-'.join(map(str, blocks))}-{'shared' if shared else 'fc'}-v{variant}"
            fams.append(
                Family(
                    fid,
                    ds,
                    "efficientnet_b0",
                    {"seed": seed, "lambdas_variant": variant},
                    tuple(ups),
                    combs,
                    acc,
                    extra={"role": "mel"},
                )
            )
    return fams


# -- brute force: the shared independent oracle of the tests (tests/oracle.py) ----------------------

sys.path.insert(0, str(ROOT / "tests"))
import oracle  # noqa: E402


def brute_force(family, cluster, replicas=1):
    """Best exact expected accuracy over every valid placement (and how many were scored)."""
    count = sum(1 for pl in oracle.placements(family, cluster, replicas) if oracle.valid(family, pl, cluster))
    best, _ = oracle.brute_force(family, cluster, replicas=replicas)
    return best, count


def small_cluster(seed: int, m: int = 6) -> Cluster:
    rng = random.Random(seed)
    servers = tuple(
        Server(
            f"s{i}",
            memory_mb=round(rng.choice([1.0, 2.0, 4.0, 8.0, 64.0]) * rng.uniform(0.8, 1.2), 2),
            compute_gmacs=rng.choice([0.6, 4.0, 20.0]),
            failure_prob=round(rng.uniform(0.005, 0.1), 4),
        )
        for i in range(m)
    )
    over = tuple(
        (f"s{i}", f"s{j}", Link(rng.uniform(2, 30), 50.0))
        for i in range(m)
        for j in range(i + 1, m)
        if rng.random() < 0.3
    )
    return Cluster(servers, Workload(50.0, 60.0), Link(1.0, 1000.0), over, "s0")


# -- the runs ----------------------------------------------------------------------------------------


# -- the issue-12 targets, each in a child process (wall from process start, peak RSS) -------------

# Today's figures: measured on the pre-change code (commit f93844b, `melplan plan` on the same
# generated clusters, shipped 9-family catalog, nice -n 19 on this shared 2-core machine), or
# reported by issue 12 where they could not be re-measured in the session.
TODAY = {
    "200": "0.33 s, 59 MB (f93844b, earlier run)",
    "1000": "5.02 s, 283 MB (f93844b, earlier run)",
    "tl2000": "37.6 s, exit 1 no plan (f93844b, earlier)",
    "5000x40": "issue: 426 s, 5.5 GB with 9 families",
}


def cli_run(tree: Path, cluster: Path, catalog: Path, time_limit: float, gap: float, timeout: float) -> dict:
    """``melplan plan`` of the code in ``tree`` as a child process: wall time and peak memory of the
    whole process (imports and loading included), by /usr/bin/time when present."""
    import json
    import shutil
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", "melplan", "plan", "--servers", str(cluster), "--catalog", str(catalog)]
    cmd += ["--max-failures", "2", "--gap", str(gap), "--time-limit", str(time_limit), "--json"]
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if timer:
        cmd = [timer, "-f", "@@ %e %M"] + cmd
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tree, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"still running after {timeout:g} s (stopped)", "wall_s": timeout}
    wall, peak = time.perf_counter() - t, None
    for line in done.stderr.splitlines():
        if line.startswith("@@ "):
            wall, peak = float(line.split()[1]), float(line.split()[2]) / 1024
    if done.returncode != 0:
        last = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("@@")]
        return {"error": (last or ["?"])[-1][:90], "wall_s": wall, "peak_mb": peak}
    try:
        plan_doc = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        return {"error": "no JSON on stdout", "wall_s": wall, "peak_mb": peak}
    sv = plan_doc.get("solver", {})
    return {"wall_s": wall, "peak_mb": peak, "status": sv.get("status"), "gap": sv.get("gap")}


def _fmt(r: dict) -> str:
    mb = "" if r.get("peak_mb") is None else f", {r['peak_mb']:.0f} MB"
    if "error" in r:
        return f"{r['wall_s']:.2f} s{mb}, FAILED: {r['error']}"
    gap = "unknown" if r["gap"] is None else f"{r['gap']:.1e}"
    return f"{r['wall_s']:.2f} s{mb}, {r['status']}, gap {gap}"


def targets(shipped: Path, baseline: Path | None) -> None:
    import tempfile

    from melplan.core.catalog import save_family
    from melplan.core.cluster import dump_cluster_yaml

    tmp = Path(tempfile.mkdtemp(prefix="plan-scale-"))
    syn40 = tmp / "catalog-40"
    for fam in synthetic_catalog(0, 40):
        save_family(fam, syn40)
    rows = [
        ("200", "200 servers, shipped catalog, k=2, gap 1%", 200, shipped, 30.0, None, None),
        ("1000", "1,000 servers, shipped catalog, k=2, gap 1%", 1000, shipped, 30.0, 5.0, None),
        ("tl2000", "2,000 servers, --time-limit 0.5", 2000, shipped, 0.5, 1.5, None),
        ("5000x40", "5,000 servers x 40 synthetic families, k=2", 5000, syn40, 60.0, 30.0, 2048.0),
    ]
    print("\n[0] issue-12 targets: `melplan plan ... --max-failures 2 --gap 0.01 --json` as a child process")
    print("    (wall and peak memory of the whole process: imports and loading included)")
    print(f"    {'run':<44} {'today (f93844b)':<46} {'now':<46} target")
    for key, label, n, catalog, tl, t_max, mb_max in rows:
        path = tmp / f"cluster-{n}.yaml"
        path.write_text(dump_cluster_yaml(generate_cluster(n, seed=0)))
        if baseline is not None and key != "5000x40":
            today = _fmt(cli_run(baseline, path, catalog, tl, 0.01, 600))
        else:
            today = TODAY[key]
        r = cli_run(ROOT, path, catalog, tl, 0.01, 600)
        ok = "error" not in r and (t_max is None or r["wall_s"] <= t_max)
        ok = ok and (mb_max is None or (r.get("peak_mb") or 0) <= mb_max)
        if key == "5000x40":
            ok = ok and r.get("gap") is not None and r["gap"] <= 0.01
        target = "-" if t_max is None else f"<= {t_max:g} s" + ("" if mb_max is None else f", <= {mb_max:g} MB")
        verdict = "" if t_max is None else ("MET" if ok else "MISSED")
        print(f"    {label:<44} {today:<46} {_fmt(r):<46} {target} {verdict}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--catalog",
        default=None,
        help="catalog directory (default: catalog/fashion-mnist when it holds 5+ families, else synthetic)",
    )
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic catalog even when one is shipped")
    ap.add_argument("--servers", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="solver threads (HiGHS)")
    ap.add_argument("--solver", default=None, choices=["highs", "cbc"])
    ap.add_argument("--small-instances", type=int, default=3, help="6-server instances for the brute-force ratio")
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of the pre-change code (git worktree add DIR f93844b) to measure 'today' side by side",
    )
    ap.add_argument("--skip-targets", action="store_true", help="skip [0], the issue-12 target runs")
    args = ap.parse_args()

    shipped = ROOT / "catalog" / "fashion-mnist"
    if args.catalog:
        cat, what = list(load_catalog(args.catalog)), f"catalog {args.catalog}"
    elif not args.synthetic and shipped.is_dir() and len(list(shipped.glob("*.json"))) >= 5:
        cat, what = list(load_catalog(shipped)), f"shipped catalog {shipped.relative_to(ROOT)}"
    else:
        cat, what = synthetic_catalog(args.seed), "SYNTHETIC catalog (seeded, sizes and accuracies made up)"
    print(
        f"melplan plan scale benchmark: {what}, {len(cat)} families; {os.cpu_count()} CPU(s) visible, "
        f"threads={args.threads or 'solver default'}; load average {os.getloadavg()[0]:.2f} at start"
    )
    if not args.skip_targets:
        targets(shipped, args.baseline)

    # 1. scale
    cl = generate_cluster(args.servers, seed=args.seed)
    print(f"\n[1] {args.servers} servers (clustergen seed {args.seed}), --max-failures 2, gap 1%, time limit 10 s")
    for gap in (0.01, 1e-4):
        t = time.perf_counter()
        res = plan(
            cat, cl, PlanOptions(max_failures=2, gap=gap, time_limit_s=10.0, threads=args.threads, solver=args.solver)
        )
        wall = time.perf_counter() - t
        counts: dict[str, int] = {}
        for o in res.considered:
            counts[o.status] = counts.get(o.status, 0) + 1
        cand = res.chosen.reduction
        print(
            f"    gap target {gap:<6g}: {wall:6.2f} s  status {res.plan.solver['status']:<10} proven gap "
            f"{res.gap:.2e}  proven optimal {res.proven_optimal}  families {counts}"
        )
        print(
            f"      chosen {res.plan.family}: expected {res.plan.expected_accuracy:.5f} on "
            f"{len(res.plan.used_servers)} servers; candidates {cand.candidates}/{cand.servers} "
            f"(cannot host {cand.cannot_host}, dominated {cand.dominated}, cut by bound {cand.bounded}, "
            f"restricted {cand.restricted})"
        )
        print(
            f"      target (gap <= 1% within 10 s): {'MET' if res.gap <= 0.01 and wall <= 10 else 'MISSED'}"
            f"  ({wall / 10:.0%} of the time budget)"
        )

    # 2. re-plan
    cl100 = generate_cluster(100, seed=args.seed + 3)
    first = plan(cat, cl100, PlanOptions(max_failures=2, threads=args.threads, solver=args.solver))
    import numpy as np

    lost = next(
        (s for s in first.plan.used_servers if np.isfinite(cl100.without([s])._paths[0]).all()),
        first.plan.used_servers[0],
    )
    times = []
    for _ in range(3):
        t = time.perf_counter()
        re = plan(
            cat,
            cl100.without([lost]),
            PlanOptions(
                max_failures=2,
                current=first.plan.placement,
                current_family=first.plan.family,
                migration_weight=0.05,
                time_limit_s=10,
                threads=args.threads,
                solver=args.solver,
            ),
        )
        times.append(time.perf_counter() - t)
    print(
        f"\n[2] re-plan on 100 servers after losing {lost}: {min(times):.3f} s best of 3 "
        f"(median {sorted(times)[1]:.3f} s), target 1 s: {'MET' if sorted(times)[1] <= 1.0 else 'MISSED'}; "
        f"family {re.plan.family}, moved {re.chosen.moved_mib:.2f} MiB, status {re.plan.solver['status']}"
    )

    # 3. ILP vs brute force on 6 servers
    print(
        "\n[3] ILP vs brute force (tests/oracle.py), 6 servers with an ingress, exact expected accuracy "
        "(every state), R = combiner replicas"
    )
    # a 2-upstream family, a 3-upstream family with a shared combiner, a 3-upstream fc family (4 combiners)
    pick = [
        next((f for f in cat if f.n == 2), None),
        next((f for f in cat if f.n == 3 and len(f.combiners) == 1), None),
    ]  # (a 3-upstream fc family, 4 combiners, has ~290k placements on 6 servers: too many for the oracle)
    fams = [f for f in pick if f is not None] or [f for f in cat if f.n <= 2][:2]
    header = (
        f"    {'instance':<34} {'R':>1} {'placements':>10} {'brute s':>8} {'ILP s':>7} {'planner s':>9} "
        f"{'brute/ILP':>9} {'brute/planner':>13}  same optimum"
    )
    print(header)
    ratios = []
    for k in range(args.small_instances):
        fam = fams[k % len(fams)]
        cl6 = small_cluster(100 + k)
        reps = 2 if len(fam.combiners) <= 1 else 1
        t = time.perf_counter()
        bf, count = brute_force(fam, cl6, reps)
        t_bf = time.perf_counter() - t
        t = time.perf_counter()
        model = build_family_model(family_data(fam, cl6), ModelSpec(combiner_replicas=reps))
        r = solve(model.problem, solver=args.solver or "highs", time_limit_s=120, gap_rel=0.0, threads=args.threads)
        t_ilp = time.perf_counter() - t
        ilp_val = objective_value(fam, read_placement(model), cl6).expected if r.has_solution else math.nan
        t = time.perf_counter()
        pr = plan([fam], cl6, PlanOptions(combiner_replicas=reps, gap=0.0, threads=args.threads, solver=args.solver))
        t_pl = time.perf_counter() - t
        # the same optimum up to the planner's optimality tolerance (relative 1e-7, docs/ilp.md)
        diff = max(abs(ilp_val - bf), abs(pr.plan.expected_accuracy - bf))
        same = diff <= 1e-7 * max(1.0, bf)
        ratios.append(t_bf / t_ilp)
        print(
            f"    {fam.id[:26] + ' seed ' + str(100 + k):<34} {reps:>1} {count:>10,} {t_bf:8.3f} {t_ilp:7.3f} "
            f"{t_pl:9.3f} {t_bf / t_ilp:9.1f} {t_bf / t_pl:13.1f}  {'yes' if same else 'NO'} (max diff {diff:.1e})"
        )
    if ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        print(f"    geometric mean brute/ILP time ratio: {geo:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
