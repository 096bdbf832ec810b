"""Training speed of one MEL joint step against the sum of its parts and against the reference
step, each with and without channels_last, measured side by side in one run; then the inference
latency of every answering path against the full model.

    python benchmarks/train_step.py [--base efficientnet_lite0] [--blocks 5,6] [--combiner fc]
                                    [--output-stride 16] [--batch 128] [--repeats 7] [--threads 1]

* joint step: one forward of every upstream and combiner, the lambda-free sum of every subset's
  loss, one backward, one AdamW step (what ``melplan train`` does per batch);
* sum of parts: each upstream's own step on its own loss, plus each combiner's step on detached
  features (what training them separately would cost per batch);
* reference step: the full base model's step.
``--output-stride`` builds every network at that output stride where it changes it (as the training
recipe's ``output_stride`` does: efficientnet_lite0 at 16 changes only networks with 7+ blocks, so
the reference, not a 5+6 pair).
The configurations are timed round-robin (one step of each per round) so that load from other
processes hits them alike; medians are printed with ratios. Nothing is trained to convergence.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from melplan.train.measure import latency_ms
from melplan.train.models import build_mel


def _stepper(params, body):
    opt = torch.optim.AdamW(params, lr=1e-3)

    def step():
        loss = body()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def joint_step(model, x, y):
    return _stepper(model.parameters(), lambda: sum(F.cross_entropy(v, y) for v in model(x)[0].values()))


def part_steps(model, x, y):
    """One step per upstream (own loss) and per combiner (on detached features)."""
    steps = []
    for u in model.upstreams.values():
        steps.append(_stepper(u.parameters(), lambda u=u: F.cross_entropy(u(x)[1], y)))
    with torch.no_grad():
        feats = {n: u(x)[0].detach() for n, u in model.upstreams.items()}
    for s in model.subsets:
        if len(s) > 1:
            comb = model.combiner_for(s)
            steps.append(_stepper(comb.parameters(), lambda c=comb, s=s: F.cross_entropy(c(*[feats[n] for n in s]), y)))
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="efficientnet_lite0")
    ap.add_argument("--blocks", default="5,6")
    ap.add_argument("--combiner", default="fc", choices=["fc", "cnn", "shared"])
    ap.add_argument("--output-stride", type=int, default=None, help="e.g. 16 (the shipped recipe's reference)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    blocks = tuple(int(b) for b in a.blocks.split(","))
    g = torch.Generator().manual_seed(a.seed)
    x0, y = torch.randn(a.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (a.batch,), generator=g)
    from melplan.core.errors import InputError
    from melplan.train.models.registry import build_base, effective_output_stride

    n_full = len(build_base(a.base, num_classes=10).blocks)
    try:
        strides = {b: effective_output_stride(a.base, a.output_stride, b) for b in (blocks, (n_full,))}
    except InputError as exc:
        ap.error(f"--output-stride {a.output_stride}: {exc.message}; {exc.fix}")

    def stride_text(bl):
        return str(strides[bl]) if strides[bl] else "the base's own"

    def build(bl, comb):
        os_ = strides[bl]
        return build_mel(
            base=a.base, blocks=bl, combiner=comb, num_classes=10, base_args={"output_stride": os_} if os_ else None
        )

    configs = {}  # name -> list of step functions timed together
    for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = x0.contiguous(memory_format=fmt)
        mel = build(blocks, a.combiner).to(memory_format=fmt)
        ref = build((n_full,), "fc").to(memory_format=fmt)
        mel.train()
        ref.train()
        configs[("joint", fmt_name)] = [joint_step(mel, x, y)]
        configs[("parts", fmt_name)] = part_steps(mel, x, y)
        configs[("reference", fmt_name)] = [joint_step(ref, x, y)]
    times: dict = {k: [] for k in configs}
    for r in range(a.repeats + 1):  # round 0 warms up
        for k, steps in configs.items():
            t = time.perf_counter()
            for s in steps:
                s()
            if r:
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    print(
        f"torch {torch.__version__}, {a.threads} thread(s), batch {a.batch}, seed {a.seed}, {a.repeats} rounds; "
        f"MEL {a.base} blocks {blocks} ({a.combiner}, output stride {stride_text(blocks)}) vs the full "
        f"{a.base} (output stride {stride_text((n_full,))})\n"
    )
    print("training step, median ms (per sample in brackets)")
    print(f"  {'':12s} {'contiguous':>18s} {'channels_last':>18s} {'speed-up':>9s}")
    for what in ("joint", "parts", "reference"):
        c, cl = med[(what, "contiguous")], med[(what, "channels_last")]
        print(f"  {what:12s} {c:9.1f} ({c / a.batch:5.2f}) {cl:9.1f} ({cl / a.batch:5.2f}) {c / cl:8.2f}x")
    print("\nratios")
    for fmt in ("contiguous", "channels_last"):
        j, p, r = med[("joint", fmt)], med[("parts", fmt)], med[("reference", fmt)]
        print(
            f"  {fmt:14s} joint / sum of parts {j / p:5.2f}   joint / reference {j / r:5.2f}"
            f"   parts / reference {p / r:5.2f}"
        )

    mel = build(blocks, a.combiner).eval()
    ref = build((n_full,), "fc").eval()
    x1 = x0[:1]
    full = latency_ms(ref.upstreams["u1"], (x1,))
    print("\ninference at batch 1 (median of 30 runs, 1 thread); a path's upstreams run in parallel on their servers,")
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
