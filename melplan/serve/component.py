"""A component server: one placed MEL component (an upstream or a combiner) behind the Open
Inference Protocol (torch).

Run it as ``python -m melplan.serve.component --family-file ENTRY.json --component u1 --server edge-a``.

* An **upstream** takes ``input`` (``FP32 [N, 3, H, W]``, already preprocessed) and returns
  ``probabilities`` (``FP32 [N, classes]``, its exit's softmax) and ``features`` (what its combiners
  read: the pooled vector ``[N, C]`` for ``fc`` combiners, the feature map ``[N, C, h, w]`` for
  ``cnn`` and ``shared`` ones, exactly the ``feature_bytes`` the catalog counts).
* A **combiner** takes one tensor per upstream of the subset, named by the upstream (``u1``,
  ``u3``), and returns ``probabilities``.  A ``shared`` combiner answers any subset of two or more.

:class:`Component` is the model side (load, predict, ready; no HTTP, as KServe's ``Model``);
:class:`ComponentApp` puts it behind :class:`~melplan.serve.httpserver.OIPServer`.  The process binds
first (``/v2/health/live`` answers during loading), prints one JSON line
``{"event": "listening", "port": ...}`` on stdout, loads the weights with
``torch.load(weights_only=True)``, runs one warm-up inference, then reports ready: its load time,
first-inference time and resident memory go to stderr, stdout (``{"event": "ready", ...}``) and
the model metadata's ``parameters``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from melplan.core.catalog import Family, load_family
from melplan.core.errors import CatalogError, InputError, MelplanError
from melplan.core.preprocessing import model_datatype
from melplan.serve.httpserver import DEFAULT_MAX_BODY_BYTES, OIPServer
from melplan.serve.protocol import ProtocolError, TensorSpec, decode_request, encode_response

DEFAULT_MAX_BATCH = 256


def resident_bytes() -> int:
    """Resident set size of this process now (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_path(family: Family, override: str | os.PathLike | None = None) -> Path:
    """Where a family's weights file is: ``override`` or the entry's ``weights`` next to its file.
    Raises CatalogError when the entry names none."""
    if override:
        return Path(override)
    if not family.weights:
        raise CatalogError(
            "the family has no weights file, so it cannot be served",
            file=family.source,
            field="weights",
            fix="plan with a family that ships weights, or train it with --save-weights",
        )
    return Path(family.source or ".").parent / family.weights


class Component:
    """One component of a family: its tensors, ``load()``, ``predict()`` and a ``ready`` flag."""

    def __init__(
        self,
        family: Family,
        name: str,
        *,
        weights: str | os.PathLike | None = None,
        sha256: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if name not in family.component_names():
            raise InputError(
                f"family {family.id} has no component '{name}'",
                field="--component",
                fix=f"use one of: {', '.join(family.component_names())}",
            )
        self.family = family
        self.name = name
        self.is_upstream = name in family.upstream_names
        self.kind = family.combiner_kind or str(family.training.get("combiner") or "fc")
        self.weights = weights_path(family, weights)
        self.sha256 = sha256
        self.max_batch = max_batch
        self.ready = False
        self.load_s: float | None = None
        self.first_inference_ms: float | None = None
        self.rss_bytes: int | None = None
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[str, ...] = ("probabilities", "features") if self.is_upstream else ("probabilities",)
        self._module: Any = None
        self._members: tuple[str, ...] = ()
        self._ids = model_datatype(family.dataset) == "INT64"  # text: the network reads token ids
        self._vocab = 0  # text upstreams: the size of the embedding table, set by load()
        self._pool = "avg"  # how fc features are pooled (the base's pooling), set by load()
        self._lock = threading.Lock()

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the weights (``weights_only=True``), keep this component's module, warm it up.
        Raises CatalogError for a missing file or a checksum that does not match."""
        import torch

        from melplan.train.models.mel import MELNet

        t0 = time.perf_counter()
        if not self.weights.exists():
            raise CatalogError(
                "weights file not found", file=str(self.weights), field="weights", fix="restore the file or fetch it"
            )
        if self.sha256 and sha256_of(self.weights) != self.sha256.lower():
            raise CatalogError(
                "the weights file's sha256 does not match",
                file=str(self.weights),
                field="sha256",
                fix="fetch the weights again (the file is corrupt or from another family)",
            )
        payload = torch.load(self.weights, map_location="cpu", weights_only=True)
        model = MELNet(payload["config"])
        model.load_state_dict(payload["state_dict"])
        model.eval()
        shape = [int(x) for x in self.family.dataset.get("input_shape", [3, 32, 32])]
        x = torch.zeros(1, *shape, dtype=torch.long if self._ids else torch.float32)
        with torch.inference_mode():
            feats = {n: u(x)[0] for n, u in model.upstreams.items()}
        # fc combiners pool each map as the base does (text bases: max); the upstream sends that vector
        self._pool = str(getattr(next(iter(model.upstreams.values())), "pool", "avg"))
        if self.is_upstream:
            self._module = model.upstreams[self.name]
            if self._ids:
                emb = [m for m in self._module.modules() if isinstance(m, torch.nn.Embedding)]
                self._vocab = min(int(m.num_embeddings) for m in emb) if emb else 0
            self.inputs = (TensorSpec("input", (model_datatype(self.family.dataset),), (-1, *shape)),)
            warm = {"input": x.numpy()}
        else:
            comb = self.family.combiner(self.name)
            if self.kind == "shared":
                self._module = model.combiners["shared"]
                self._members = tuple(model.names)
            else:
                self._module = model.combiners[self.name]
                self._members = tuple(comb.subset)
            optional = self.kind == "shared"
            specs = []
            for n in self._members:
                f = feats[n]
                fshape = (-1, int(f.shape[1])) if self.kind == "fc" else (-1, *map(int, f.shape[1:]))
                specs.append(TensorSpec(n, ("FP32",), fshape, optional=optional))
            self.inputs = tuple(specs)
            first = tuple(comb.serves[0]) if comb.serves else self._members
            warm = {n: self._wire_features(feats[n]).numpy() for n in first}
        del model
        self.load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.predict(warm)
        self.first_inference_ms = (time.perf_counter() - t1) * 1e3
        self.rss_bytes = resident_bytes()
        self.ready = True

    def _wire_features(self, f):
        """Features as they travel: pooled vectors for fc combiners, maps otherwise."""
        import torch.nn.functional as F

        if self.kind != "fc":
            return f
        pool = F.adaptive_max_pool2d if self._pool == "max" else F.adaptive_avg_pool2d
        return pool(f, 1).flatten(1)

    # -- inference ------------------------------------------------------------------------------
    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the component on checked inputs (see :attr:`inputs`). Raises ProtocolError (400) for a
        batch over ``max_batch``, mismatched batch sizes or a subset the combiner cannot answer."""
        import torch

        sizes = {int(a.shape[0]) for a in inputs.values()}
        if len(sizes) != 1:
            raise ProtocolError(f"inputs have different batch sizes {sorted(sizes)}")
        n = sizes.pop()
        if n > self.max_batch:
            raise ProtocolError(f"batch of {n} is over this server's limit of {self.max_batch}")
        with self._lock, torch.inference_mode():
            if self.is_upstream:
                x = torch.from_numpy(np.array(inputs["input"], dtype=np.int64 if self._ids else np.float32))
                if self._ids and x.numel() and (int(x.min()) < 0 or int(x.max()) >= self._vocab):
                    raise ProtocolError(f"token ids must be in 0..{self._vocab - 1}")
                f, logits, _ = self._module(x)
                return {
                    "probabilities": torch.softmax(logits, 1).numpy(),
                    "features": self._wire_features(f).contiguous().numpy(),
                }
            members = [m for m in self._members if m in inputs]
            if len(members) < 2:
                raise ProtocolError(f"a combiner needs the features of two or more of {', '.join(self._members)}")
            maps = []
            for m in members:
                t = torch.from_numpy(np.array(inputs[m], dtype=np.float32))
                maps.append(t.view(t.shape[0], t.shape[1], 1, 1) if t.dim() == 2 else t)
            if self.kind == "shared":
                logits = self._module.forward_subset(dict(zip(members, maps)))
            else:
                logits = self._module(*maps)
            return {"probabilities": torch.softmax(logits, 1).numpy()}

    def stats(self) -> dict[str, Any]:
        return {
            "load_s": None if self.load_s is None else round(self.load_s, 4),
            "first_inference_ms": None if self.first_inference_ms is None else round(self.first_inference_ms, 3),
            "rss_bytes": self.rss_bytes,
        }


class ComponentApp:
    """The Open Inference Protocol face of one :class:`Component` (model name = component name)."""

    def __init__(self, component: Component, server: str = "") -> None:
        self.component = component
        self.server = server
        self.error: str | None = None

    def live(self) -> bool:
        return self.error is None

    def ready(self) -> bool:
        return self.component.ready

    def server_metadata(self) -> dict[str, Any]:
        from melplan.serve.protocol import package_version

        return {"name": "melplan-component", "version": package_version(), "extensions": ["binary_tensor_data"]}

    def _check(self, model: str) -> None:
        if model != self.component.name:
            raise ProtocolError(f"unknown model '{model}'; this server serves '{self.component.name}'", 404)

    def model_metadata(self, model: str) -> dict[str, Any]:
        self._check(model)
        c = self.component
        outs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, int(c.family.dataset["num_classes"])]}]
        if c.is_upstream and c.ready:
            outs.append({"name": "features", "datatype": "FP32", "shape": [-1, "..."]})
        return {
            "name": c.name,
            "versions": ["1"],
            "platform": "melplan/pytorch",
            "inputs": [s.metadata() for s in c.inputs],
            "outputs": outs,
            "parameters": {
                "family": c.family.id,
                "server": self.server,
                "role": "upstream" if c.is_upstream else "combiner",
                "ready": c.ready,
                **c.stats(),
            },
        }

    def model_ready(self, model: str) -> bool:
        self._check(model)
        return self.component.ready

    def infer(self, model: str, body: bytes, header_length: str | None) -> tuple[bytes, dict[str, str]]:
        self._check(model)
        c = self.component
        if not c.ready:
            raise ProtocolError(f"component '{c.name}' is still loading", 503)
        req = decode_request(body, header_length, c.inputs, outputs=c.outputs)
        t = time.perf_counter()
        out = c.predict(req.inputs)
        ms = (time.perf_counter() - t) * 1e3
        return encode_response(c.name, out, request=req, parameters={"compute_ms": round(ms, 4)})

    def extra_get(self, path: str) -> tuple[int, str, bytes] | None:
        return None


def _announce(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _watch_parent(pid: int) -> None:
    """Exit when the launcher that started this process is gone (even after a SIGKILL of it)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != pid:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m melplan.serve.component", description=__doc__.split("\n\n")[0])
    p.add_argument("--family-file", required=True, help="catalog entry (JSON) of the family")
    p.add_argument("--component", required=True, help="component name: u1, u2, ..., u1+u2, shared")
    p.add_argument("--server", default="", help="the plan's server this process stands for (a label)")
    p.add_argument("--weights", default=None, help="weights file (default: the entry's 'weights', beside it)")
    p.add_argument("--weights-sha256", default=None, help="refuse weights whose sha256 differs")
    p.add_argument("--host", default=os.environ.get("MELPLAN_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("MELPLAN_PORT", "0")))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone (local launcher)")
    args = p.parse_args(argv)
    label = f"{args.component}@{args.server}" if args.server else args.component
    try:
        family = load_family(args.family_file)
        component = Component(
            family, args.component, weights=args.weights, sha256=args.weights_sha256, max_batch=args.max_batch
        )
    except MelplanError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    app = ComponentApp(component, args.server)
    try:
        server = OIPServer(app, args.host, args.port, max_body_bytes=args.max_body_bytes)
    except OSError as exc:
        print(f"Error: cannot listen on {args.host}:{args.port} ({exc.strerror})", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_on_signal)
    server.start_background()
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()
    _announce("listening", component=args.component, server=args.server, port=server.port, pid=os.getpid())
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        component.load()
    except MelplanError as exc:
        app.error = str(exc)
        print(f"Error: {exc}", file=sys.stderr)
        server.shutdown()
        return exc.exit_code
    s = component.stats()
    print(
        f"melplan component {label}: loaded in {s['load_s']:.3f} s, first inference {s['first_inference_ms']:.1f} ms, "
        f"resident {s['rss_bytes'] / 2**20:.1f} MiB, listening on http://{args.host}:{server.port}",
        file=sys.stderr,
        flush=True,
    )
    _announce("ready", component=args.component, server=args.server, port=server.port, pid=os.getpid(), **s)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown: with torch loaded it costs about 1 s of CPU per process
    (0.8 s measured for one component; 4.2 s for the four of the shipped plan stopping together on 2
    cores), and nothing is left to flush but stdio."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
