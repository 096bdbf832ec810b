"""Measure the components of a trained MEL network for its catalog entry (torch, fvcore).

Per component: params, MACs per sample (fvcore counts one multiply-add as one "flop"; we call the
unit MACs and record the ops fvcore skipped), weight bytes (parameters and buffers), feature bytes
sent to a combiner, peak activation bytes at batch 1 (layer-wise, from forward hooks), and CPU
latency at batch 1 (median of repeated runs after warm-up, with the thread count recorded).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from melplan.train.models.mel import MELNet

LATENCY_REPEATS = 30
LATENCY_THREADS = 1


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weight_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers()
    )


def count_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int, dict[str, int]]:
    """MACs per sample by fvcore, and {op: count} of the ops it skipped."""
    from fvcore.nn import FlopCountAnalysis

    for name in ("fvcore.nn.jit_analysis", "fvcore"):
        logging.getLogger(name).setLevel(logging.ERROR)
    fca = FlopCountAnalysis(module, inputs)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    total = int(fca.total())
    return total // inputs[0].shape[0], dict(fca.unsupported_ops())


def peak_activation_bytes(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Peak working set of activations in one forward pass at batch 1, measured layer by layer.

    Forward hooks on every leaf module record the bytes of its inputs and outputs; a residual
    block also holds its own input while its body runs.  The peak is the largest such sum.  It
    excludes weights (counted in ``weight_bytes``) and allocator overhead.
    """
    held: list[int] = [0]
    peak = [0]

    def nbytes(t) -> int:
        if isinstance(t, torch.Tensor):
            return t.numel() * t.element_size()
        if isinstance(t, (tuple, list)):
            return sum(nbytes(x) for x in t)
        return 0

    def leaf_hook(mod, inp, out) -> None:
        peak[0] = max(peak[0], held[0] + nbytes(inp) + nbytes(out))

    def enter(mod, inp) -> None:
        held[0] += nbytes(inp)

    def leave(mod, inp, out) -> None:
        held[0] -= nbytes(inp)

    hooks = []
    for m in module.modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(leaf_hook))
        elif getattr(m, "use_res_connect", False) or type(m).__name__ in ("BasicBlock", "Bottleneck"):
            hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return int(peak[0])


@contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def latency_ms(module: nn.Module, inputs: tuple[torch.Tensor, ...], *, repeats: int = LATENCY_REPEATS) -> float:
    """Median wall time of ``module(*inputs)`` at batch 1 on CPU with LATENCY_THREADS threads."""
    with torch.inference_mode(), _threads(LATENCY_THREADS):
        for _ in range(5):
            module(*inputs)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            module(*inputs)
            times.append((time.perf_counter() - t) * 1e3)
    return round(statistics.median(times), 4)


def measure_components(model: MELNet, *, kind: str, latency: bool = True) -> dict[str, Any]:
    """Catalog fields for every upstream and combiner of ``model`` (moved to CPU, eval mode)."""
    model = model.to("cpu").eval()
    x = model.example_input(1, seed=0)  # 3x32x32 images, 1 x mels x frames audio, token ids for text
    skipped: dict[str, int] = {}
    ups, feats = [], {}
    with torch.inference_mode():
        for name, u in model.upstreams.items():
            f, _, _ = u(x)
            feats[name] = f
    for name, u in model.upstreams.items():
        macs, sk = count_macs(_Logits(u), (x,))
        _merge(skipped, sk)
        f = feats[name]
        fb = f.shape[1] * 4 if kind == "fc" else f[0].numel() * 4
        entry: dict[str, Any] = {
            "name": name,
            "blocks": u.blocks,
            "params": count_params(u),
            "macs": macs,
            "weight_bytes": weight_bytes(u),
            "feature_bytes": int(fb),
            "activation_bytes": peak_activation_bytes(_Logits(u), (x,)),
            "latency_ms": {"cpu": latency_ms(_Logits(u), (x,))} if latency else {},
            "feature_shape": list(f.shape[1:]),
        }
        ups.append(entry)
    combs = []
    if model.kind == "shared" and "shared" in model.combiners:
        shared = model.combiners["shared"]
        full = tuple(model.names)
        view = model.combiner_for(full)
        inputs = tuple(feats[n].clone() for n in full)
        macs, sk = count_macs(view, inputs)
        _merge(skipped, sk)
        combs.append(
            {
                "subset": list(full),
                "name": "shared",
                "kind": "shared",
                "serves": [list(s) for s in model.subsets if len(s) >= 2],
                "params": count_params(shared),
                "macs": macs,
                "weight_bytes": weight_bytes(shared),
                "activation_bytes": peak_activation_bytes(view, inputs),
                "latency_ms": {"cpu": latency_ms(view, inputs)} if latency else {},
            }
        )
    else:
        for s in model.subsets:
            if len(s) < 2:
                continue
            comb = model.combiner_for(s)
            inputs = tuple(feats[n].clone() for n in s)
            macs, sk = count_macs(comb, inputs)
            _merge(skipped, sk)
            combs.append(
                {
                    "subset": list(s),
                    "kind": kind,
                    "params": count_params(comb),
                    "macs": macs,
                    "weight_bytes": weight_bytes(comb),
                    "activation_bytes": peak_activation_bytes(comb, inputs),
                    "latency_ms": {"cpu": latency_ms(comb, inputs)} if latency else {},
                }
            )
    return {
        "upstreams": ups,
        "combiners": combs,
        "measurement": {
            "macs_counter": "fvcore",
            "macs_unit": "multiply-adds per sample",
            "fvcore_skipped_ops": skipped,
            "latency": f"median of {LATENCY_REPEATS} runs, batch 1, "
            f"{LATENCY_THREADS} CPU thread(s), torch {torch.__version__}",
            "activation_bytes": "peak over layers of input + output (+ held residual input) bytes at batch 1",
        },
    }


class _Logits(nn.Module):
    """An upstream seen as input -> logits (what runs on its server; the features are a by-product)."""

    def __init__(self, upstream: nn.Module) -> None:
        super().__init__()
        self.upstream = upstream

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, logits, _ = self.upstream(x)
        return f, logits


def _merge(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + int(v)


def accuracy_by_subset(
    model: MELNet,
    batches,
    *,
    device: torch.device,
    coarse_map: torch.Tensor | None = None,
    subsets: Sequence[tuple[str, ...]] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Test accuracy of every subset; with ``coarse_map`` also coarse accuracy (fine prediction mapped
    to its coarse class). Exit heads with a coarse head report that head's accuracy under '<u>:head'."""
    model.eval()
    correct: dict[str, int] = {}
    coarse_correct: dict[str, int] = {}
    total = 0
    with torch.inference_mode():
        for x, y, yc in batches:
            x, y = x.to(device), y.to(device)
            out, coarse = model(x, subsets)
            total += len(y)
            for k, logits in out.items():
                pred = logits.argmax(1)
                correct[k] = correct.get(k, 0) + int((pred == y).sum())
                if coarse_map is not None and yc is not None:
                    yc_d = yc.to(device)
                    cm = coarse_map.to(device)
                    coarse_correct[k] = coarse_correct.get(k, 0) + int((cm[pred] == yc_d).sum())
            if yc is not None:
                for k, logits in coarse.items():
                    key = f"{k}:head"
                    coarse_correct[key] = coarse_correct.get(key, 0) + int((logits.argmax(1) == yc.to(device)).sum())
    return ({k: v / total for k, v in correct.items()}, {k: v / total for k, v in coarse_correct.items()})
