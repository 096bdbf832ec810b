"""Cold start of one component process: spawn, import torch, build, load weights, first inference.

The simulator's default load times (melplan/sim/loadtime.py) come from this script.  For each case the
parent writes the component's weights (from the shipped Fashion-MNIST catalog: the backup's upstream
and the largest shipped upstream, from their weights in catalog/fashion-mnist/weights; the reference,
whose weights are not shipped, with fresh weights of the same shapes: loading time depends on the
bytes, not the values),
then starts ``python -c CHILD`` with one thread and times, from just before the spawn to the child's
"ready" line: interpreter start + ``import torch`` + building the module + ``torch.load(weights_only=True)``
+ ``load_state_dict`` + the first inference on one input.  Each case runs ``--repeats`` times; the
median is printed, with the child's own split.

    nice -n 19 python benchmarks/component_load.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import sys, time, json
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
t1 = time.perf_counter()
from melplan.train.models.mel import Upstream
m = Upstream(sys.argv[3], int(sys.argv[2]), 10).eval()
t2 = time.perf_counter()
m.load_state_dict(torch.load(sys.argv[1], map_location="cpu", weights_only=True))
t3 = time.perf_counter()
with torch.no_grad():
    m(torch.zeros(1, 3, 32, 32))
t4 = time.perf_counter()
print(json.dumps({"import_torch_s": t1 - t0, "build_s": t2 - t1, "load_s": t3 - t2, "first_inference_s": t4 - t3}))
print("ready", flush=True)
"""


def write_cases(tmp: Path) -> list[tuple[str, int, str, Path, int]]:
    import torch

    from melplan.core.catalog import load_catalog
    from melplan.train.models.mel import Upstream
    from melplan.train.trainer import load_weights

    catalog = load_catalog(ROOT / "catalog" / "fashion-mnist")
    shipped = [f for f in catalog if f.weights]
    cases = []
    backup = next(f for f in shipped if f.extra.get("role") == "backup")
    net = load_weights(backup)
    p = tmp / "backup.pt"
    torch.save(net.upstreams["u1"].state_dict(), p)
    cases.append((f"{backup.id} ({backup.upstreams[0].blocks} blocks, shipped weights)", backup.upstreams[0], p))
    fam, up = max(((f, u) for f in shipped for u in f.upstreams), key=lambda fu: fu[1].weight_bytes)
    net = load_weights(fam)
    p = tmp / "largest.pt"
    torch.save(net.upstreams[up.name].state_dict(), p)
    cases.append((f"{fam.id} {up.name} ({up.blocks} blocks, shipped weights)", up, p))
    full = next(f for f in catalog if f.extra.get("role") == "reference")
    p = tmp / "full.pt"
    torch.save(Upstream(full.base, full.upstreams[0].blocks, 10).state_dict(), p)
    cases.append(
        (f"{full.id} ({full.upstreams[0].blocks} blocks, fresh weights of the catalog's size)", full.upstreams[0], p)
    )
    base = full.base  # one base per catalog
    return [(label, u.blocks, base, p, u.weight_bytes) for label, u, p in cases]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = []
    with tempfile.TemporaryDirectory() as td:
        for label, blocks, base, path, nbytes in write_cases(Path(td)):
            walls, splits = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), str(blocks), base],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=True,
                )
                walls.append(time.perf_counter() - t0)
                splits.append(json.loads(proc.stdout.splitlines()[0]))
            med = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
            row = {
                "case": label,
                "weight_bytes": nbytes,
                "file_bytes": path.stat().st_size,
                "median_s": round(statistics.median(walls), 3),
                "min_s": round(min(walls), 3),
                "max_s": round(max(walls), 3),
                **{k: round(v, 4) for k, v in med.items()},
            }
            out.append(row)
            print(json.dumps(row), flush=True)
    print(f"# python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}, repeats {args.repeats}")


if __name__ == "__main__":
    main()
