"""One MEL joint training step against the reference model's step on the same batch, and the
inference latency of every answering path against the full model, measured side by side.

    python benchmarks/train_step.py [--blocks 5,5] [--combiner fc] [--batch 64] [--repeats 10] [--threads 2]

Prints medians and ratios (MEL / reference); nothing is trained, so it runs in about a minute.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from melplan.train.measure import latency_ms
from melplan.train.models import build_mel


def step_time(model, x, y, repeats: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for i in range(repeats + 2):
        t = time.perf_counter()
        out, _ = model(x)
        loss = sum(F.cross_entropy(v, y) for v in out.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", default="5,5")
    ap.add_argument("--combiner", default="fc", choices=["fc", "cnn", "shared"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    blocks = tuple(int(b) for b in a.blocks.split(","))
    mel = build_mel(base="efficientnet_b0", blocks=blocks, combiner=a.combiner, num_classes=10)
    ref = build_mel(base="efficientnet_b0", blocks=(9,), combiner="fc", num_classes=10)
    g = torch.Generator().manual_seed(a.seed)
    x, y = torch.randn(a.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (a.batch,), generator=g)

    print(
        f"torch {torch.__version__}, {a.threads} thread(s), batch {a.batch}, seed {a.seed}, "
        f"MEL blocks {blocks} ({a.combiner}) vs EfficientNet-B0\n"
    )
    t_mel, t_ref = step_time(mel, x, y, a.repeats), step_time(ref, x, y, a.repeats)
    print("training step (forward of every subset, joint loss, backward, AdamW), median of", a.repeats)
    print(f"  MEL joint step   {t_mel:8.1f} ms")
    print(f"  reference step   {t_ref:8.1f} ms")
    print(f"  ratio MEL/ref    {t_mel / t_ref:8.2f}\n")

    mel.eval()
    ref.eval()
    x1 = x[:1]
    full = latency_ms(ref.upstreams["u1"], (x1,))
    print("inference at batch 1 (median of 30 runs, 1 thread); a path's upstreams run in parallel on their servers,")
    print("so its latency is its slowest upstream plus its combiner (network not included)")
    print(f"  {'path':12s} {'ms':>8s} {'vs full':>8s}")
    ups = {n: latency_ms(u, (x1,)) for n, u in mel.upstreams.items()}
    with torch.inference_mode():
        feats = {n: u(x1)[0] for n, u in mel.upstreams.items()}
    for s in mel.subsets:
        t = max(ups[n] for n in s)
        if len(s) > 1:
            t += latency_ms(mel.combiner_for(s), tuple(feats[n] for n in s))
        print(f"  {'+'.join(s):12s} {t:8.3f} {t / full:8.2f}")
    print(f"  {'full model':12s} {full:8.3f} {1.0:8.2f}")


if __name__ == "__main__":
    main()
