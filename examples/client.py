"""Send real Fashion-MNIST test images to a running `melplan serve` with the official Open Inference
Protocol client (tritonclient[http]) and show who answered each batch.

    melplan serve --plan plan.json                 # in another terminal
    python examples/client.py                      # 100 test images, 10 per request
    python examples/client.py --images 1000 --batch 50 --run-dir melplan-run

The gateway's address and model name come from RUN_DIR/deployment.json (what `melplan serve` writes),
or from --url and --model.  Each request sends raw pixels (UINT8 [N, 28, 28]); the gateway applies the
catalog's preprocessing.  Per request it prints the answering subset, its servers, `degraded`, and the
catalog's accuracy for that subset (response parameters); at the end, the accuracy on these images
against their true labels.  Exit status 1 when a request failed.  Only the gateway's URL is contacted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def test_images(n: int):
    """The first ``n`` Fashion-MNIST test images (uint8 [n, 28, 28]) and labels, through melplan's
    reader (the Debian package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist)."""
    from melplan.train.data import load_dataset

    ds = load_dataset("fashion-mnist", test_limit=n)
    return ds.test.images.numpy()[:, 0], ds.test.labels.numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="melplan-run", help="where `melplan serve` wrote deployment.json")
    ap.add_argument("--url", help="gateway address, e.g. 127.0.0.1:8000 (default: from deployment.json)")
    ap.add_argument("--model", help="model name = the plan's family id (default: from deployment.json)")
    ap.add_argument("--images", type=int, default=100, help="how many test images (1..10000)")
    ap.add_argument("--batch", type=int, default=10, help="images per request (1..256)")
    ap.add_argument("--json-tensors", action="store_true", help="JSON tensors instead of the binary extension")
    args = ap.parse_args(argv)
    if not 1 <= args.images <= 10000 or not 1 <= args.batch <= 256:
        ap.error("--images must be in 1..10000 and --batch in 1..256")

    url, model = args.url, args.model
    if url is None or model is None:
        dep_file = Path(args.run_dir) / "deployment.json"
        try:
            dep = json.loads(dep_file.read_text())
            url = url or str(dep["gateway"]["url"])
            model = model or str(dep["model"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"cannot read {dep_file} ({exc!r}); start `melplan serve` or pass --url and --model", file=sys.stderr)
            return 2
    url = url.split("//", 1)[-1]

    import tritonclient.http as httpclient

    images, labels = test_images(args.images)
    client = httpclient.InferenceServerClient(url, connection_timeout=10.0, network_timeout=30.0)
    binary = not args.json_tensors
    right, failed, by_subset = 0, 0, Counter()
    for start in range(0, len(images), args.batch):
        x = images[start : start + args.batch]
        inp = httpclient.InferInput("input", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x, binary_data=binary)
        t0 = time.perf_counter()
        try:
            res = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput("label", binary_data=binary)])
        except Exception as exc:  # noqa: BLE001 - any failure of a request is what we report
            failed += 1
            print(f"images {start}-{start + len(x) - 1}: FAILED ({type(exc).__name__}: {exc})")
            continue
        ms = (time.perf_counter() - t0) * 1e3
        p = res.get_response()["parameters"]
        ok = int((res.as_numpy("label") == labels[start : start + len(x)]).sum())
        right += ok
        by_subset[p["subset"]] += len(x)
        print(
            f"images {start}-{start + len(x) - 1}: {ok}/{len(x)} right, answered by {p['subset']} on {p['servers']}"
            f" (catalog accuracy {p['accuracy']:.4f}), degraded {str(p['degraded']).lower()}, {ms:.1f} ms"
        )
    answered = sum(by_subset.values())
    subsets = ", ".join(f"{k} {v}" for k, v in by_subset.most_common())
    print(
        f"{answered} of {len(images)} images answered, {failed} request(s) failed; "
        f"accuracy {right / max(answered, 1):.4f} on these images; answered by: {subsets or 'nobody'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
