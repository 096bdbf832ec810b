"""Joint MEL training, combiner fine-tuning, and measurement into catalog entries (torch).

Training minimises ``L = sum_S lambda_S * CE(h_S) / sum_S lambda_S`` over every non-empty subset S
(the division only rescales the step size, so that lambda settings share one learning rate); all
subsets are computed from one forward pass of the upstreams.  Optional hierarchical labels add
``coarse_weight * CE`` of a coarse head on every upstream exit.  Then the combiners are fine-tuned
with the upstreams frozen.  The reference model and single-model backups are families with one
upstream and go through the same code and recipe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from melplan.core.catalog import Family, load_catalog, save_family, subset_key
from melplan.core.errors import CatalogError, InputError, TrainingError
from melplan.core.fileio import atomic_write_with
from melplan.train.data import Batches, carve_validation, load_dataset
from melplan.train.measure import accuracy_by_subset, measure_components
from melplan.train.models.mel import COMBINER_KINDS, MELNet, build_mel, subsets_of
from melplan.train.models.registry import base_names, build_base, check_base, effective_output_stride

DATASET_SHORT = {"fashion-mnist": "fmnist", "mnist5k": "mnist5k", "cifar100": "c100"}
BASE_SHORT = {
    "efficientnet_b0": "effb0",
    "efficientnet_lite0": "lite0",
    "mobilenet_v3_small": "mnv3s",
    "resnet18": "r18",
}


_DIGEST_OPTIONAL = ("image_size", "output_stride")


ROLES = ("mel", "reference", "backup", "single")  # a family; the original model; a small single model; any other


@dataclass(frozen=True)
class FamilySpec:
    """Everything that determines a trained family. Same spec and seed, same family."""

    base: str = "efficientnet_b0"
    blocks: tuple[int, ...] = (5, 5)
    combiner: str = "fc"
    lambdas: Mapping[str, float] | None = None  # subset key -> weight; None: every subset 1
    epochs: int = 1
    dataset: str = "mnist5k"
    train_limit: int | None = None
    test_limit: int | None = None
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    augment: bool = True
    hierarchical: bool = False
    coarse_weight: float = 0.5
    seed: int = 0
    finetune_epochs: int = 1
    family_id: str | None = None
    role: str | None = None  # one of ROLES (default: from the shape)
    pretrained: bool = False  # initialise the prefixes from the base's ImageNet weights
    val_fraction: float = 0.1  # carved from the training set, stratified; 0: no selection (last epoch)
    split_seed: int = 0
    patience: int = 2  # epochs without validation improvement before a phase stops; 0: never stop early
    independent: bool = False  # control: upstreams trained alone, combiners only in the fine-tuning phase
    image_size: int | None = None  # side of the network input (default 32; built-in sets: a multiple of 32)
    output_stride: int | None = None  # efficientnet_lite0: 16 keeps 2x2 maps in blocks 7-9 at 32x32 input

    def __post_init__(self) -> None:
        # a stride the upstreams never reach changes nothing: the spec (digest, id) is the plain one
        object.__setattr__(
            self, "output_stride", effective_output_stride(self.base, self.output_stride, self.blocks or (0,))
        )
        if self.image_size == 32:  # the default input: the same network, so the same digest and id
            object.__setattr__(self, "image_size", None)

    def base_args(self) -> dict[str, Any]:
        """Arguments of the base network that the spec decides (the data decides the others)."""
        return {"output_stride": self.output_stride} if self.output_stride else {}

    def names(self) -> list[str]:
        return [f"u{i + 1}" for i in range(len(self.blocks))]

    def resolved_lambdas(self) -> dict[str, float]:
        keys = [subset_key(s) for s in subsets_of(self.names())]
        lam = dict(self.lambdas or {})
        unknown = [k for k in lam if k not in keys]
        if unknown:
            raise InputError(
                f"lambda for unknown subset(s) {unknown}",
                field="lambdas",
                fix=f"use subset keys {keys} or a list of {len(keys)} numbers in that order",
            )
        out = {k: float(lam.get(k, 1.0)) for k in keys}
        if any(v < 0 for v in out.values()) or sum(out.values()) <= 0:
            raise InputError("lambdas must be >= 0 and not all 0", field="lambdas", fix="give non-negative weights")
        return out

    def resolved_role(self, n_base_blocks: int) -> str:
        if self.role:
            return self.role
        if len(self.blocks) > 1:
            return "mel"
        return "reference" if self.blocks[0] == n_base_blocks else "backup"

    def default_id(self, n_base_blocks: int) -> str:
        ds = DATASET_SHORT.get(self.dataset, self.dataset) + (f"-{self.image_size}px" if self.image_size else "")
        base = BASE_SHORT.get(self.base, self.base.replace("_", ""))
        base += (f"os{self.output_stride}" if self.output_stride else "") + ("pt" if self.pretrained else "")
        if len(self.blocks) == 1:
            what = "full" if self.blocks[0] == n_base_blocks else f"b{self.blocks[0]}"
            return f"{ds}-{base}-{what}-s{self.seed}"
        lam = self.resolved_lambdas()
        values = list(lam.values())
        if len(self.blocks) >= 4 and len(set(values)) == 1:  # 15 or 31 equal weights: one number
            values = values[:1]
        label = "-".join(f"{v:g}" for v in values).replace(".", "p")
        blocks = "".join(f"b{b}" for b in self.blocks)
        kind = self.combiner + ("-indep" if self.independent else "") + ("-hier" if self.hierarchical else "")
        return f"{ds}-{base}-u{len(self.blocks)}-{blocks}-{kind}-l{label}-s{self.seed}"

    def digest(self) -> str:
        """A digest of every field that changes the trained family (not the id)."""
        d = asdict(self)
        d.pop("family_id")
        # fields added after the first catalog count only when set (not at their old behaviour's
        # value), so the digests of specs that do not use them stay valid
        for key in _DIGEST_OPTIONAL:
            if d.get(key) is None:
                d.pop(key, None)
        for name, old in (("pretrained", False), ("independent", False)):
            if d[name] == old:
                d.pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def joint_lambdas(self) -> dict[str, float]:
        """Loss weights of the joint phase (``independent``: singles only)."""
        lam = self.resolved_lambdas()
        return {k: (0.0 if self.independent and "+" in k else v) for k, v in lam.items()}

    def finetune_lambdas(self) -> dict[str, float]:
        """Loss weights of the combiner fine-tuning phase: the multi-upstream subsets."""
        return {k: v for k, v in self.resolved_lambdas().items() if "+" in k}


def parse_lambdas(text: str | None, n: int) -> dict[str, float] | None:
    """``"2,2,1"`` (subset order: singles, then pairs, ...) or ``"u1=2,u1+u2=1"``; None for all 1."""
    if not text:
        return None
    keys = [subset_key(s) for s in subsets_of([f"u{i + 1}" for i in range(n)])]
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            lam = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        elif len(parts) != len(keys):
            raise ValueError
        else:
            lam = dict(zip(keys, map(float, parts)))
        if not all(math.isfinite(v) and 0 <= v <= 1e6 for v in lam.values()) or not any(lam.values()):
            raise ValueError
        return lam
    except ValueError:
        raise InputError(
            f"cannot read lambdas {text!r} (finite weights >= 0, not all 0)",
            field="--lambdas",
            fix=f"give {len(keys)} numbers in the order {', '.join(keys)}, or key=value pairs",
        ) from None


def validate_spec(spec: FamilySpec) -> int:
    """Check every field of ``spec`` before anything is trained; returns the base's block count.
    Raises InputError naming the field and the fix."""
    check_base(spec.base, pretrained=spec.pretrained)
    n_base = _n_blocks(spec.base)
    _validate(spec, n_base)
    return n_base


@functools.cache
def _n_blocks(base: str) -> int:
    return len(build_base(base, num_classes=2).blocks)


def _validate(spec: FamilySpec, n_base_blocks: int) -> None:
    if spec.combiner not in COMBINER_KINDS:
        raise InputError(
            f"unknown combiner kind '{spec.combiner}'", field="combiner", fix=f"use one of {COMBINER_KINDS}"
        )
    if not spec.blocks or any(not 1 <= b <= n_base_blocks for b in spec.blocks):
        raise InputError(
            f"blocks {list(spec.blocks)} out of range for {spec.base}",
            field="blocks",
            fix=f"give 1..{n_base_blocks} blocks per upstream",
        )
    if spec.epochs < 1 or spec.finetune_epochs < 0 or spec.batch_size < 1:
        raise InputError(
            "epochs must be >= 1, finetune epochs >= 0, batch size >= 1", field="epochs", fix="pass positive numbers"
        )
    checks = (
        ("lr", spec.lr > 0, "a positive learning rate, e.g. 0.003"),
        ("weight_decay", spec.weight_decay >= 0, "a weight decay >= 0"),
        ("label_smoothing", 0 <= spec.label_smoothing < 1, "a label smoothing in [0, 1)"),
        ("coarse_weight", spec.coarse_weight >= 0, "a coarse-head weight >= 0"),
        ("val_fraction", 0 <= spec.val_fraction <= 0.5, "a validation fraction in [0, 0.5], e.g. 0.1"),
        ("patience", spec.patience >= 0, "patience >= 0 epochs (0: never stop early)"),
        ("train_limit", spec.train_limit is None or spec.train_limit >= 1, "a positive training sample limit"),
        ("test_limit", spec.test_limit is None or spec.test_limit >= 1, "a positive test sample limit"),
    )
    for name, ok, fix in checks:
        if not ok:
            raise InputError(f"invalid {name}: {getattr(spec, name)!r}", field=name, fix=f"give {fix}")
    spec.resolved_lambdas()
    if spec.role is not None and spec.role not in ROLES:
        raise InputError(f"unknown role {spec.role!r}", field="role", fix=f"use one of {', '.join(ROLES)} or drop it")
    if spec.role is not None and (spec.role == "mel") != (len(spec.blocks) > 1):
        raise InputError(
            f"role {spec.role!r} does not fit {len(spec.blocks)} upstream(s)",
            field="role",
            fix="use 'mel' for two or more upstreams and 'reference', 'backup' or 'single' for one, or drop it",
        )
    if spec.independent and len(spec.blocks) < 2:
        raise InputError(
            "independent training needs two or more upstreams", field="independent", fix="drop independent"
        )
    if spec.independent and spec.finetune_epochs < 1:
        raise InputError(
            "an independently trained family learns its combiners only in fine-tuning",
            field="finetune_epochs",
            fix="give finetune_epochs >= 1",
        )
    if len(spec.blocks) > 1 and spec.finetune_epochs > 0 and sum(spec.finetune_lambdas().values()) <= 0:
        raise InputError(
            "combiner fine-tuning needs a positive lambda on some multi-upstream subset",
            field="lambdas",
            fix="give the combined subsets weight, or finetune_epochs 0",
        )


def check_output_entry(spec: FamilySpec, fid: str, catalog_dir: str | Path, *, force: bool = False) -> None:
    """Before the first training step: the id is a plain file name (it cannot leave the catalog or
    checkpoint folder), the catalog folder can be written, and an existing entry of that id is replaced
    only when it was made by the same recipe (same spec digest: a rerun) or with ``force``.
    Raises InputError naming the option."""
    from melplan.core.catalog import FAMILY_ID_RE

    if not FAMILY_ID_RE.match(fid) or len(fid) > 200:
        raise InputError(
            f"invalid family id {fid!r}",
            field="--id",
            fix="use lower-case letters, digits, '.', '_' and '-' only (no '/'), starting with a letter or digit",
        )
    folder = Path(catalog_dir)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(
            "the catalog folder cannot be written", file=str(folder), field="--catalog", fix="choose a writable folder"
        )
    existing = folder / f"{fid}.json"
    if existing.exists() and not force:
        from melplan.core.fileio import load_json_file

        try:
            old = load_json_file(existing)
            digest = old.get("training", {}).get("spec_digest") if isinstance(old, dict) else None
        except InputError:
            digest = None
        if digest != spec.digest():
            raise InputError(
                "an entry with this id exists and was made by a different recipe",
                file=str(existing),
                field="--id",
                fix="give another --id (say what differs, e.g. ...-e1-lr0.1), or pass --force to replace it",
            )


def pick_device(device: str | None = None) -> torch.device:
    """The torch device named (validated: an unknown or absent device is an InputError), else cuda
    when present, else cpu."""
    if device:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise InputError(
                f"unknown torch device {device!r}", field="--device", fix="use cpu, cuda or cuda:N"
            ) from None
        if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
            raise InputError(f"device {device!r} is not available here", field="--device", fix="use --device cpu")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise InputError(f"unsupported device {device!r}", field="--device", fix="use cpu or cuda")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class _Progress:
    enabled: bool
    log: Callable[[str], None] | None = None
    lines: list[str] = field(default_factory=list)

    def say(self, msg: str) -> None:
        self.lines.append(msg)
        if self.log:
            self.log(msg)


def train_family(
    spec: FamilySpec,
    *,
    catalog_dir: str | Path,
    data_root: str | Path | None = None,
    download: bool = False,
    device: str | None = None,
    progress: bool = False,
    save_weights: bool = False,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    latency: bool = True,
    channels_last: bool = True,
    stop_after_epochs: int | None = None,
    force: bool = False,
) -> Family:
    """Train, fine-tune, select on validation, evaluate and measure one family; write
    ``<catalog_dir>/<id>.json`` (and the weights with ``save_weights``).

    Every input (spec, dataset, catalog folder, checkpoint) is checked before the first step.
    ``channels_last`` trains in that memory format (2-3x faster on CPU; same results up to float
    rounding). ``stop_after_epochs`` ends the run (TrainingError) after that many epochs of this call,
    leaving the checkpoint to resume from (used by tests and by short background jobs).
    Raises InputError, DataError or TrainingError."""
    n_base = validate_spec(spec)
    fid = spec.family_id or spec.default_id(n_base)
    catalog_dir = Path(catalog_dir)
    if catalog_dir.exists() and not catalog_dir.is_dir():
        raise InputError("the catalog path is not a folder", file=str(catalog_dir), fix="give a folder path")
    dev = pick_device(device)
    check_output_entry(spec, fid, catalog_dir, force=force)
    out = _Progress(progress, log)
    ds = load_dataset(
        spec.dataset,
        data_root=data_root,
        download=download,
        train_limit=spec.train_limit,
        test_limit=spec.test_limit,
        image_size=spec.image_size,
    )
    base_modality = build_base(spec.base, num_classes=2).modality
    if base_modality != ds.modality:
        raise InputError(
            f"{spec.base} reads {base_modality} input, {spec.dataset} is {ds.modality}",
            field="base",
            fix=f"pick a base for {ds.modality}: "
            + ", ".join(n for n in base_names() if build_base(n, num_classes=2).modality == ds.modality),
        )
    train_split, val_split = ds.train, None
    if spec.val_fraction > 0:
        train_split, val_split = carve_validation(ds.train, spec.val_fraction, spec.split_seed)
        if len(val_split) < 1 or len(train_split) < 1:
            raise InputError(
                f"validation split of {len(val_split)} and training split of {len(train_split)} samples are too small",
                field="val_fraction",
                fix="use more training samples (--train-limit) or val_fraction 0",
            )
    ckpt = Path(checkpoint_dir) / f"{fid}.ckpt.pt" if checkpoint_dir else None
    state = _load_checkpoint(ckpt, spec) if (ckpt and resume) else None

    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    model = build_mel(
        base=spec.base,
        blocks=spec.blocks,
        combiner=spec.combiner,
        num_classes=ds.num_classes,
        num_coarse=ds.num_coarse if spec.hierarchical else None,
        input_shape=ds.input_shape,
        input_dtype=ds.input_dtype,
        base_args={**(ds.base_args or {}), **spec.base_args()},
        pretrained=spec.pretrained,
    ).to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    flip = spec.dataset != "mnist5k" and ds.flip  # digits are not mirror-symmetric
    train_batches = Batches(
        ds, train_split, batch_size=spec.batch_size, shuffle=True, augment=spec.augment, generator=gen, flip=flip
    )
    val_batches = Batches(ds, val_split, batch_size=500, shuffle=False, augment=False) if val_split else None

    t0 = time.perf_counter()
    wall_before = float(state.get("wall_s", 0.0)) if state else 0.0
    budget = [stop_after_epochs]
    phases = [("joint", spec.epochs, list(model.parameters()), spec.joint_lambdas())]
    if model.combiners and spec.finetune_epochs > 0:
        phases.append(("finetune", spec.finetune_epochs, list(model.combiners.parameters()), spec.finetune_lambdas()))
    selection: dict[str, Any] = dict(state["selection"]) if state else {}
    for phase, epochs, params, lambdas in phases:
        if state and state["phase_done"].get(phase):
            model.load_state_dict(state["model"])
            out.say(f"[{fid}] {phase}: restored from checkpoint")
            continue
        opt = torch.optim.AdamW(params, lr=spec.lr if phase == "joint" else spec.lr / 3, weight_decay=spec.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=opt.param_groups[0]["lr"], total_steps=epochs * len(train_batches), pct_start=0.15
        )
        start, best = 0, {"score": -1.0, "epoch": 0, "model": None, "history": []}
        if state and state.get("phase") == phase:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["rng"])
            start, best = state["epoch"], state["best"]
            out.say(f"[{fid}] {phase}: resuming after epoch {start}")
        elif state:
            model.load_state_dict(state["model"])
        stopped = False
        for epoch in range(start, epochs):
            if budget[0] is not None and budget[0] <= 0:
                raise TrainingError(
                    f"stopped after the requested number of epochs ({stop_after_epochs})",
                    file=str(ckpt) if ckpt else None,
                    fix="run the same command again to resume from the checkpoint",
                )
            loss = _run_epoch(
                model, train_batches, opt, sched, lambdas, spec, dev, phase, fid, epoch, epochs, progress, fmt
            )
            score = _val_score(model, val_batches, lambdas, dev) if val_batches else None
            best["history"].append(score)
            if score is None or score > best["score"]:
                best = {**best, "score": -1.0 if score is None else score, "epoch": epoch + 1}
                best["model"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            since = epoch + 1 - best["epoch"]
            stopped = spec.patience > 0 and score is not None and since >= spec.patience and epoch + 1 < epochs
            out.say(
                f"[{fid}] {phase} epoch {epoch + 1}/{epochs}: loss {loss:.4f}"
                + (
                    f", validation {score:.4f} (best {best['score']:.4f} at {best['epoch']})"
                    if score is not None
                    else ""
                )
                + f" ({time.perf_counter() - t0:.0f} s)"
                + (f"; no improvement for {since} epochs, stopping" if stopped else "")
            )
            done = stopped or epoch + 1 == epochs
            if done:
                model.load_state_dict(best["model"])
                selection[phase] = {
                    "epochs_run": epoch + 1,
                    "selected_epoch": best["epoch"],
                    "validation_score": None if score is None else round(best["score"], 6),
                    "history": [None if h is None else round(h, 6) for h in best["history"]],
                }
            if budget[0] is not None:
                budget[0] -= 1
            if ckpt:
                prev = dict(state["phase_done"]) if state else {}
                state = {
                    "spec": spec.digest(),
                    "phase": phase,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "gen": gen.get_state(),
                    "rng": torch.get_rng_state(),
                    "best": best,
                    "selection": selection,
                    "phase_done": {**prev, phase: done},
                    "wall_s": wall_before + time.perf_counter() - t0,
                }
                atomic_write_with(ckpt, lambda p, s=state: torch.save(s, p))
            if done:
                break
    train_s = wall_before + time.perf_counter() - t0
    model = model.to(memory_format=torch.contiguous_format)

    val_acc = accuracy_by_subset(model, val_batches, device=dev)[0] if val_batches else None
    test_batches = Batches(ds, ds.test, batch_size=500, shuffle=False, augment=False)
    coarse_map = None
    if spec.hierarchical and ds.train.coarse is not None:  # fine class -> its coarse class, read off the data
        coarse_map = torch.zeros(ds.num_classes, dtype=torch.long)
        coarse_map[ds.train.labels] = ds.train.coarse
    acc, acc_coarse = accuracy_by_subset(model, test_batches, device=dev, coarse_map=coarse_map)
    meas = measure_components(model, kind=spec.combiner, latency=latency)
    lambdas = spec.resolved_lambdas()
    family = _family(
        spec,
        fid,
        ds,
        model,
        lambdas,
        acc,
        acc_coarse,
        meas,
        train_s,
        n_base,
        catalog_dir,
        dev,
        augmentation=train_batches.augmentation,
    )
    training = dict(family.training)
    training["train_samples"] = len(train_split)
    training["channels_last"] = channels_last
    training["pretrained"] = "imagenet" if spec.pretrained else None
    if spec.output_stride:
        training["output_stride"] = spec.output_stride
    training["independent"] = spec.independent
    training["bn_momentum"] = sorted({m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)})
    training["validation"] = {
        "fraction": spec.val_fraction,
        "samples": len(val_split) if val_split else 0,
        "split_seed": spec.split_seed,
        "score": "lambda-weighted mean accuracy over the phase's subsets",
        "patience": spec.patience,
        "phases": selection,
        "accuracy": {k: round(v, 6) for k, v in val_acc.items()} if val_acc else None,
    }
    family = replace(family, training=training)
    if save_weights:
        weights = catalog_dir / "weights" / f"{fid}.pt"
        config = {**model.config, "pretrained": False}  # the weights file is the whole initialisation
        payload = {"config": config, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}
        atomic_write_with(weights, lambda p: torch.save(payload, p))
        family = replace(family, weights=f"weights/{fid}.pt")
    save_family(family, catalog_dir)
    out.say(f"[{fid}] wrote {catalog_dir / (fid + '.json')}: all-up accuracy {family.accuracy_all_up:.4f}")
    return family


def _val_score(model: MELNet, batches: Batches, lambdas: dict[str, float], dev: torch.device) -> float:
    """The lambda-weighted mean validation accuracy over the subsets with positive weight."""
    keys = [k for k, v in lambdas.items() if v > 0]
    subsets = [tuple(k.split("+")) for k in keys]
    acc = accuracy_by_subset(model, batches, device=dev, subsets=subsets)[0]
    return sum(lambdas[k] * acc[k] for k in keys) / sum(lambdas[k] for k in keys)


def _run_epoch(
    model: MELNet,
    batches: Batches,
    opt,
    sched,
    lambdas: dict[str, float],
    spec: FamilySpec,
    dev: torch.device,
    phase: str,
    fid: str,
    epoch: int,
    epochs: int,
    progress: bool,
    fmt: torch.memory_format = torch.contiguous_format,
) -> float:
    from tqdm import tqdm

    model.train()
    if phase == "finetune":
        model.upstreams.eval()
    lam_total = sum(lambdas.values())
    total, count = 0.0, 0
    bar = tqdm(
        batches,
        desc=f"{fid} {phase} {epoch + 1}/{epochs}",
        disable=not progress,
        leave=False,
        unit="batch",
        dynamic_ncols=True,
    )
    for x, y, yc in bar:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if x.dim() == 4:  # images and spectrograms; token ids stay as they are
            x = x.contiguous(memory_format=fmt)
        if phase == "joint":
            logits, coarse = model(x, [tuple(k.split("+")) for k, v in lambdas.items() if v > 0])
        else:
            with torch.no_grad():
                feats = {n: u(x)[0] for n, u in model.upstreams.items()}
            logits, coarse = model.combine(feats), {}
        loss = (
            sum(
                lambdas[k] * F.cross_entropy(v, y, label_smoothing=spec.label_smoothing)
                for k, v in logits.items()
                if lambdas.get(k, 0) > 0
            )
            / lam_total
        )
        if coarse and yc is not None:
            yc = yc.to(dev)
            loss = loss + spec.coarse_weight * sum(F.cross_entropy(c, yc) for c in coarse.values()) / len(coarse)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} in {phase} epoch {epoch + 1}",
                field="lr",
                fix="lower the learning rate (--lr) or check the data",
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(y)
        count += len(y)
        bar.set_postfix(loss=f"{total / count:.3f}")
    return total / max(count, 1)


def _load_checkpoint(path: Path | None, spec: FamilySpec) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: say so, do not guess
        raise TrainingError(
            f"cannot read checkpoint ({exc.__class__.__name__})", file=str(path), fix="delete it to train from scratch"
        ) from None
    if state.get("spec") != spec.digest():
        raise TrainingError(
            "the checkpoint was written for a different spec",
            file=str(path),
            fix="delete it, or pass the same options as the run that wrote it",
        )
    return state


def _reference_info(catalog_dir: str | Path, spec: FamilySpec, fid: str) -> dict | None:
    try:
        cat = load_catalog(catalog_dir, dataset=spec.dataset)
    except CatalogError:
        return None
    refs = [f for f in cat if f.extra.get("role") == "reference" and f.base == spec.base and f.id != fid]
    if not refs:
        return None
    r = refs[0]
    return {"id": r.id, "accuracy": r.accuracy_all_up, "params": r.params, "macs": r.macs}


def _family(
    spec: FamilySpec,
    fid: str,
    ds,
    model: MELNet,
    lambdas: dict[str, float],
    acc: dict[str, float],
    acc_coarse: dict[str, float],
    meas: dict,
    train_s: float,
    n_base: int,
    catalog_dir,
    dev,
    *,
    augmentation: str = "none",
) -> Family:
    role = spec.resolved_role(n_base)
    training: dict[str, Any] = {
        "lambdas": lambdas,
        "epochs": spec.epochs,
        "finetune_epochs": spec.finetune_epochs,
        "seed": spec.seed,
        "combiner": spec.combiner if len(spec.blocks) > 1 else None,
        "batch_size": spec.batch_size,
        "optimizer": "AdamW",
        "lr": spec.lr,
        "weight_decay": spec.weight_decay,
        "schedule": "one-cycle (cosine)",
        "label_smoothing": spec.label_smoothing,
        "augment": augmentation,
        "hierarchical": spec.hierarchical,
        "train_samples": len(ds.train),
        "wall_s": round(train_s, 1),
        "device": str(dev),
        "torch": torch.__version__,
        "spec_digest": spec.digest(),
    }
    data: dict[str, Any] = {
        "schema": "melplan.family/v1",
        "id": fid,
        "dataset": ds.info,
        "base": spec.base,
        "training": training,
        "upstreams": meas["upstreams"],
        "combiners": meas["combiners"],
        "accuracy": {k: round(acc[k], 6) for k in (subset_key(s) for s in subsets_of(spec.names()))},
        "role": role,
        "measurement": meas["measurement"],
    }
    if acc_coarse:
        data["accuracy_coarse"] = {k: round(v, 6) for k, v in acc_coarse.items()}
    ref = None if role == "reference" else _reference_info(catalog_dir, spec, fid)
    if role == "reference":
        params = sum(u["params"] for u in meas["upstreams"])
        ref = {"id": fid, "accuracy": round(acc["u1"], 6), "params": params, "macs": meas["upstreams"][0]["macs"]}
    if ref:
        data["reference"] = ref
    return Family.from_dict(data, source=str(Path(catalog_dir) / f"{fid}.json"))


def model_inputs(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The network config keys an entry's ``dataset`` block decides: input shape and dtype (for
    audio and text) and the base's arguments (a text base's vocabulary size)."""
    prep = dataset.get("preprocessing") or {}
    out: dict[str, Any] = {}
    if list(dataset.get("input_shape") or [3, 32, 32]) != [3, 32, 32]:
        out["input_shape"] = list(dataset["input_shape"])
    if prep.get("modality") == "text":
        out["input_dtype"] = "int64"
        out["base_args"] = {"vocab_size": len(prep["vocabulary"])}
    return out


def load_weights(family: Family) -> MELNet:
    """Rebuild a family's network from its weights file (``torch.load(weights_only=True)``)."""
    if not family.weights:
        raise CatalogError(
            "the family has no weights file",
            file=family.source,
            field="weights",
            fix="train it again with --save-weights",
        )
    path = Path(family.source or ".").parent / family.weights
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CatalogError(
            "weights file not found",
            file=str(path),
            field="weights",
            fix="restore the file or drop the 'weights' field",
        ) from None
    model = MELNet(payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def sweep_specs(path: str | Path) -> list[tuple[FamilySpec, bool]]:
    """Read a sweep YAML: ``defaults:`` and ``families:`` (overrides of FamilySpec fields, plus
    ``save_weights``). Returns (spec, save_weights) pairs."""
    from melplan.core.fileio import load_yaml_file

    data = load_yaml_file(path, error=InputError, fix="check the path of the sweep file")
    if not isinstance(data, dict) or not isinstance(data.get("families"), list):
        raise InputError(
            "expected 'defaults:' and a 'families:' list",
            file=str(path),
            field="families",
            fix="see sweeps/fashion-mnist.yaml",
        )
    unknown_top = sorted(set(data) - {"catalog", "defaults", "families"})
    if unknown_top:
        raise InputError(
            f"unknown key(s) {unknown_top}",
            file=str(path),
            field=unknown_top[0],
            fix="use 'catalog', 'defaults' and 'families'",
        )
    allowed = set(FamilySpec.__dataclass_fields__) | {"save_weights"}
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InputError(
            f"expected a mapping of option: value, got {defaults!r}"[:200],
            file=str(path),
            field="defaults",
            fix="write defaults as 'key: value' lines (see sweeps/fashion-mnist.yaml)",
        )
    out = []
    seen_ids: dict[str, int] = {}
    for i, item in enumerate(data["families"]):
        if item is not None and not isinstance(item, dict):
            raise InputError(
                f"expected a mapping of option: value, got {item!r}"[:200],
                file=str(path),
                field=f"families[{i}]",
                fix="write each family as '- {blocks: [5, 5], combiner: fc}'",
            )
        merged = {**defaults, **(item or {})}
        unknown = sorted(set(merged) - allowed)
        if unknown:
            raise InputError(
                f"unknown key(s) {unknown}",
                file=str(path),
                field=f"families[{i}]",
                fix=f"use keys from: {', '.join(sorted(allowed))}",
            )
        try:
            spec, save = _sweep_entry(merged)
        except InputError as exc:
            raise InputError(
                exc.message, file=str(path), field=f"families[{i}].{exc.field or ''}".rstrip("."), fix=exc.fix
            ) from None
        if spec.family_id is not None:
            if spec.family_id in seen_ids:
                raise InputError(
                    f"id {spec.family_id!r} is also used by families[{seen_ids[spec.family_id]}]",
                    file=str(path),
                    field=f"families[{i}].family_id",
                    fix="give every entry its own id",
                )
            seen_ids[spec.family_id] = i
        out.append((spec, save))
    return out


_SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "base": (str,),
    "combiner": (str,),
    "dataset": (str,),
    "family_id": (str,),
    "role": (str,),
    "epochs": (int,),
    "finetune_epochs": (int,),
    "batch_size": (int,),
    "seed": (int,),
    "train_limit": (int,),
    "test_limit": (int,),
    "image_size": (int,),
    "output_stride": (int,),
    "lr": (int, float),
    "weight_decay": (int, float),
    "label_smoothing": (int, float),
    "coarse_weight": (int, float),
    "augment": (bool,),
    "hierarchical": (bool,),
    "pretrained": (bool,),
    "independent": (bool,),
    "val_fraction": (int, float),
    "split_seed": (int,),
    "patience": (int,),
}


def _sweep_entry(merged: dict[str, Any]) -> tuple[FamilySpec, bool]:
    """One sweep entry (defaults merged) as a FamilySpec, every field type- and range-checked;
    raises InputError naming the field."""
    import math

    save = merged.pop("save_weights", False)
    if not isinstance(save, bool):
        raise InputError(f"expected true or false, got {save!r}", field="save_weights", fix="write true or false")
    blocks = merged.get("blocks", (5, 5))
    if (
        not isinstance(blocks, (list, tuple))
        or not 1 <= len(blocks) <= 8
        or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 64 for b in blocks)
    ):
        raise InputError(
            f"expected a list of block counts, one per upstream, got {blocks!r}"[:200],
            field="blocks",
            fix="write e.g. 'blocks: [5, 5]' (a single model: [8])",
        )
    merged["blocks"] = tuple(blocks)
    for key, types in _SPEC_TYPES.items():
        v = merged.get(key)
        if v is None:
            continue
        wrong = not isinstance(v, types) or (bool not in types and isinstance(v, bool))
        if not wrong and isinstance(v, (int, float)) and not isinstance(v, bool):
            wrong = (
                not math.isfinite(v)
                or v < 0
                or v > 1e9
                or (key in ("epochs", "batch_size", "train_limit", "test_limit", "image_size") and v < 1)
            )
        if wrong:
            kind = {str: "a string", int: "a whole number", bool: "true or false", float: "a number"}[types[-1]]
            raise InputError(f"expected {kind}, got {v!r}"[:200], field=key, fix=f"set '{key}' to {kind}")
    lam = merged.get("lambdas")
    if isinstance(lam, (list, str)):
        merged["lambdas"] = parse_lambdas(",".join(map(str, lam)) if isinstance(lam, list) else lam, len(blocks))
    elif lam is not None and not isinstance(lam, dict):
        raise InputError(f"expected a list of numbers, got {lam!r}"[:200], field="lambdas", fix="write e.g. [1, 1, 1]")
    return FamilySpec(**merged), save


def run_sweep(
    path: str | Path,
    *,
    catalog_dir: str | Path | None = None,
    shard: tuple[int, int] = (0, 1),
    only: Sequence[str] = (),
    skip_existing: bool = True,
    log: Callable[[str], None] | None = None,
    **kwargs: Any,
):
    """Train the families of a sweep file (this shard's share), yielding each as it is written.

    A family whose entry exists with the same spec digest is skipped; afterwards every MEL family
    in the catalog gets the reference entry's numbers (``attach_reference``).
    """
    from melplan.core.fileio import load_yaml_file

    specs, options = sweep_specs(path), load_yaml_file(path, error=InputError)
    catalog_dir = Path(catalog_dir or options.get("catalog") or "catalog")
    ids = []
    for i, (spec, _) in enumerate(specs):  # every family checked before the first one trains
        try:
            ids.append(spec.family_id or spec.default_id(validate_spec(spec)))
        except InputError as e:
            if e.file:  # already names its own file (a dataset folder, the base's weights)
                raise
            field = f"families[{i}]" + (f".{e.field}" if e.field else "")
            raise type(e)(e.message, file=str(path), field=field, fix=e.fix) from None
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InputError(
            f"two families of the sweep have the same id {dupes}",
            file=str(path),
            field="families",
            fix="give one of them a family_id",
        )
    unknown = sorted(set(only) - set(ids))
    if unknown:
        raise InputError(
            f"--only names unknown family id(s) {unknown}",
            file=str(path),
            field="families",
            fix=f"use ids from: {', '.join(ids)}",
        )
    for i, ((spec, save), fid) in enumerate(zip(specs, ids)):
        if i % shard[1] != shard[0] or (only and fid not in only):
            continue
        existing = catalog_dir / f"{fid}.json"
        if skip_existing and existing.exists():
            try:
                old = json.loads(existing.read_text())
                if old.get("training", {}).get("spec_digest") == spec.digest():
                    if log:
                        log(f"[{fid}] up to date, skipped")
                    continue
            except (OSError, json.JSONDecodeError):
                pass
        # a sweep reproduces its catalog: an entry of another recipe under the same id is replaced
        yield train_family(spec, catalog_dir=catalog_dir, save_weights=save, log=log, **{"force": True, **kwargs})
    attach_reference(catalog_dir)


def attach_reference(catalog_dir: str | Path) -> int:
    """Write the reference family's id, accuracy, params and MACs into every other family of the
    same dataset and base in ``catalog_dir``; returns how many files changed."""
    try:
        cat = load_catalog(catalog_dir)
    except CatalogError:
        return 0
    refs = {(f.dataset.get("name"), f.base): f for f in cat if f.extra.get("role") == "reference"}
    changed = 0
    for f in cat:
        r = refs.get((f.dataset.get("name"), f.base))
        if r is None or f.id == r.id:
            continue
        info = {"id": r.id, "accuracy": r.accuracy_all_up, "params": r.params, "macs": r.macs}
        if dict(f.reference or {}) != info:
            save_family(replace(f, reference=info), Path(f.source).parent if f.source else catalog_dir)
            changed += 1
    return changed


def weights_from_checkpoint(family: Family, checkpoint: str | Path) -> Family:
    """Write ``weights/<id>.pt`` for a family trained without ``--save-weights`` from its final
    checkpoint, and record it in the entry. The checkpoint must hold the same spec (digest) with every
    phase finished; raises TrainingError otherwise."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("spec") != family.training.get("spec_digest") or not all(state.get("phase_done", {}).values()):
        raise TrainingError(
            "the checkpoint is not the finished run of this family",
            file=str(checkpoint),
            fix="use the checkpoint written by the run that produced the entry",
        )
    config = {
        "base": family.base,
        "blocks": [u.blocks for u in family.upstreams],
        "combiner": family.training.get("combiner") or "fc",
        "num_classes": int(family.dataset["num_classes"]),
        "num_coarse": None,
    }
    config.update(model_inputs(family.dataset))
    if family.training.get("output_stride"):
        config["base_args"] = {**config.get("base_args", {}), "output_stride": family.training["output_stride"]}
    model = MELNet(config)
    model.load_state_dict(state["model"])  # strict: the shapes must match the entry
    root = Path(family.source).parent
    payload = {"config": model.config, "state_dict": model.state_dict()}
    atomic_write_with(root / "weights" / f"{family.id}.pt", lambda p: torch.save(payload, p))
    updated = replace(family, weights=f"weights/{family.id}.pt")
    save_family(updated, root)
    return updated
