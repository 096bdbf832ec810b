"""Is one model really more accurate than another on the same test images? The exact McNemar test.

    python3 scripts/mcnemar.py --catalog catalog/fashion-mnist fmnist-lite0pt-b6-s0 fmnist-lite0pt-b5-s0
    python3 scripts/mcnemar.py --catalog catalog/fashion-mnist FAMILY:u1+u2 OTHER:u1 ...

Each model is a catalog entry with a weights file, optionally ``:subset`` (default: every upstream
up). Every model answers every image of the entry's test split (the official 10,000 for
Fashion-MNIST); for each pair the script counts the images only the first gets right and those only
the second gets right, and prints the two-sided exact (binomial) McNemar p-value: the chance of a
split at least this uneven if both models were equally accurate. Needs torch and the dataset.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys


def exact_mcnemar_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: twice the smaller binomial tail of the discordant pairs."""
    n, k = only_first + only_second, min(only_first, only_second)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, t) for t in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def _hits(catalog: str, model: str):
    import torch

    from melplan.core.catalog import load_catalog
    from melplan.train.data import Batches, load_dataset
    from melplan.train.trainer import load_weights

    fid, _, subset = model.partition(":")
    fam = load_catalog(catalog).get(fid)
    subset = subset or "+".join(fam.upstream_names)
    if subset not in fam.accuracy:
        sys.exit(f"{model}: {fid} has no subset {subset!r}; use one of {sorted(fam.accuracy)}")
    ds = load_dataset(fam.dataset["name"])
    net = load_weights(fam)
    hits = []
    with torch.inference_mode():
        for x, y, _ in Batches(ds, ds.test, batch_size=250, shuffle=False, augment=False):
            out, _ = net(x)
            hits.append(out[subset].argmax(1) == y)
    got = torch.cat(hits)
    return got, float(fam.accuracy[subset])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", required=True, help="catalog directory")
    ap.add_argument("models", nargs="+", metavar="ID[:SUBSET]", help="two or more catalog entries with weights")
    args = ap.parse_args(argv)
    if len(args.models) < 2:
        ap.error("name two or more models")
    import torch

    torch.set_num_threads(1)
    hits = {}
    for m in args.models:
        got, recorded = _hits(args.catalog, m)
        acc = float(got.float().mean())
        note = "" if abs(acc - recorded) < 5e-7 else f"  (the entry records {recorded:.4f})"
        print(f"{m}: {acc:.4f} on {len(got):,} test images{note}")
        hits[m] = got
    print()
    for a, b in itertools.combinations(args.models, 2):
        n01 = int((hits[a] & ~hits[b]).sum())
        n10 = int((~hits[a] & hits[b]).sum())
        p = exact_mcnemar_p(n01, n10)
        print(f"{a} vs {b}: only the first right on {n01}, only the second on {n10}; exact McNemar p = {p:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
