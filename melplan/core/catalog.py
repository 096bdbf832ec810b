"""Catalog of trained MEL families: dataclasses, validation, loading and saving (no torch).

One JSON file per family (``catalog/<dataset>/<family-id>.json``), schema ``melplan.family/v1``
(see docs/catalog.md).  Subsets of upstreams are named by *subset keys*: upstream names joined by
``+`` in upstream order, for example ``u1+u3``.

A combiner either serves one subset (``fc`` and ``cnn`` kinds: ``subset`` is what it serves) or,
for the ``shared`` kind, serves several subsets through one network (optional ``serves`` list).
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melplan.core.errors import CatalogError, EmptyCatalogError
from melplan.core.fileio import atomic_write_json

SCHEMA = "melplan.family/v1"
FAMILY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
MIB = 1 << 20


def subset_key(names: Iterable[str]) -> str:
    """``("u1", "u3") -> "u1+u3"`` (callers pass names in upstream order)."""
    return "+".join(names)


def nonempty_subsets(names: Iterable[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names``, by size then in upstream order."""
    names = tuple(names)
    return [c for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]


def shipped_catalog_dir() -> Path:
    """The catalog that ships with melplan: ``melplan/catalog`` inside an installed wheel (package data
    copied from the repository's ``catalog/`` by setup.py), else ``catalog/`` of the source checkout."""
    packaged = Path(__file__).resolve().parents[1] / "catalog"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "catalog"


DEFAULT_DATASET = "fashion-mnist"  # what the default catalog plans when it holds several datasets


def default_catalog_dir() -> Path:
    """``$MELPLAN_CATALOG``, else ``./catalog`` when it exists, else the shipped catalog
    (:func:`shipped_catalog_dir`), whatever the working directory."""
    env = os.environ.get("MELPLAN_CATALOG")
    if env:
        return Path(env)
    local = Path("catalog")
    if local.is_dir():
        return local
    return shipped_catalog_dir()


@dataclass(frozen=True)
class Upstream:
    """A prefix of a base network with its own exit head, placed on one server."""

    name: str
    params: int
    macs: int
    weight_bytes: int
    feature_bytes: int
    blocks: int | None = None
    activation_bytes: int = 0
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> int:
        """Weights plus peak activations at batch 1: what the component needs resident."""
        return self.weight_bytes + self.activation_bytes

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.blocks is not None:
            d["blocks"] = self.blocks
        d.update(
            params=self.params,
            macs=self.macs,
            weight_bytes=self.weight_bytes,
            feature_bytes=self.feature_bytes,
            activation_bytes=self.activation_bytes,
            latency_ms=dict(self.latency_ms),
        )
        d.update(self.extra)
        return d


@dataclass(frozen=True)
class Combiner:
    """A network that answers for one or more subsets of upstreams from their features."""

    subset: tuple[str, ...]
    params: int
    macs: int
    weight_bytes: int
    serves: tuple[tuple[str, ...], ...] = ()
    name: str = ""
    kind: str | None = None
    activation_bytes: int = 0
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.serves:
            object.__setattr__(self, "serves", (self.subset,))
        if not self.name:
            object.__setattr__(self, "name", subset_key(self.subset))

    @property
    def memory_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"subset": list(self.subset)}
        if self.name != subset_key(self.subset):
            d["name"] = self.name
        if self.serves != (self.subset,):
            d["serves"] = [list(s) for s in self.serves]
        if self.kind is not None:
            d["kind"] = self.kind
        d.update(
            params=self.params,
            macs=self.macs,
            weight_bytes=self.weight_bytes,
            activation_bytes=self.activation_bytes,
            latency_ms=dict(self.latency_ms),
        )
        d.update(self.extra)
        return d


@dataclass(frozen=True)
class Family:
    """One trained ensemble (or a single model when it has one upstream and no combiner)."""

    id: str
    dataset: Mapping[str, Any]
    base: str
    training: Mapping[str, Any]
    upstreams: tuple[Upstream, ...]
    combiners: tuple[Combiner, ...]
    accuracy: Mapping[str, float]
    reference: Mapping[str, Any] | None = None
    weights: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)

    # -- structure ---------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.upstreams)

    @property
    def upstream_names(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.upstreams)

    @property
    def all_key(self) -> str:
        return subset_key(self.upstream_names)

    def subsets(self) -> list[tuple[str, ...]]:
        return nonempty_subsets(self.upstream_names)

    def key(self, subset: Iterable[str]) -> str:
        """Subset key in upstream order, whatever order ``subset`` comes in."""
        chosen = set(subset)
        return subset_key(n for n in self.upstream_names if n in chosen)

    def upstream(self, name: str) -> Upstream:
        for u in self.upstreams:
            if u.name == name:
                return u
        raise KeyError(name)

    def combiner(self, name: str) -> Combiner:
        for c in self.combiners:
            if c.name == name:
                return c
        raise KeyError(name)

    def component_names(self) -> tuple[str, ...]:
        return self.upstream_names + tuple(c.name for c in self.combiners)

    def component(self, name: str) -> Upstream | Combiner:
        try:
            return self.upstream(name)
        except KeyError:
            return self.combiner(name)

    def combiners_serving(self, key: str) -> list[Combiner]:
        return [c for c in self.combiners if any(subset_key(s) == key for s in c.serves)]

    # -- totals ------------------------------------------------------------------------------
    @property
    def params(self) -> int:
        return sum(u.params for u in self.upstreams) + sum(c.params for c in self.combiners)

    @property
    def macs(self) -> int:
        """MACs per sample with every upstream up: all upstreams plus the all-up combiner."""
        top = self.combiners_serving(self.all_key)
        return sum(u.macs for u in self.upstreams) + (min(c.macs for c in top) if top else 0)

    @property
    def weight_bytes(self) -> int:
        return sum(u.weight_bytes for u in self.upstreams) + sum(c.weight_bytes for c in self.combiners)

    @property
    def accuracy_all_up(self) -> float:
        return self.accuracy[self.all_key]

    @property
    def weakest_single(self) -> float:
        return min(self.accuracy[u] for u in self.upstream_names)

    @property
    def combiner_kind(self) -> str | None:
        kinds = {c.kind for c in self.combiners if c.kind}
        return kinds.pop() if len(kinds) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": SCHEMA,
            "id": self.id,
            "dataset": dict(self.dataset),
            "base": self.base,
            "training": dict(self.training),
            "upstreams": [u.to_dict() for u in self.upstreams],
            "combiners": [c.to_dict() for c in self.combiners],
            "accuracy": {k: self.accuracy[k] for k in map(subset_key, self.subsets())},
        }
        if self.reference is not None:
            d["reference"] = dict(self.reference)
        if self.weights is not None:
            d["weights"] = self.weights
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Family:
        """Validate and build; raises :class:`CatalogError` naming the file and field."""
        return _parse_family(data, source)


@dataclass(frozen=True)
class Catalog:
    """The families of one catalog directory, in a stable order (by id)."""

    families: tuple[Family, ...]
    root: str | None = None

    def __iter__(self) -> Iterator[Family]:
        return iter(self.families)

    def __len__(self) -> int:
        return len(self.families)

    def ids(self) -> list[str]:
        return [f.id for f in self.families]

    def get(self, family_id: str) -> Family:
        for f in self.families:
            if f.id == family_id:
                return f
        known = ", ".join(self.ids()[:8]) + (" ..." if len(self.families) > 8 else "")
        raise CatalogError(
            f"no family with id '{family_id}'",
            file=self.root,
            field="id",
            fix=f"use one of: {known} (see `melplan catalog list`)",
        )

    def for_dataset(self, name: str) -> Catalog:
        return Catalog(tuple(f for f in self.families if f.dataset.get("name") == name), self.root)

    def to_frame(self):
        """A pandas DataFrame, one row per family (pandas is imported here, not at module load)."""
        import pandas as pd

        return pd.DataFrame([family_row(f) for f in self.families])


def family_row(f: Family) -> dict[str, Any]:
    """The flat summary of one family used by tables and DataFrames."""
    ref = f.reference or {}
    ref_params = ref.get("params")
    return {
        "id": f.id,
        "dataset": f.dataset.get("name"),
        "base": f.base,
        "n_upstreams": f.n,
        "blocks": "/".join(str(u.blocks) for u in f.upstreams),
        "combiner": f.combiner_kind or ("-" if not f.combiners else "mixed"),
        "lambdas": lambda_label(f),
        "epochs": _epochs(f),
        "params": f.params,
        "params_vs_ref": (f.params / ref_params) if ref_params else math.nan,
        "macs": f.macs,
        "weight_mib": f.weight_bytes / MIB,
        "acc_all_up": f.accuracy_all_up,
        "acc_weakest_single": f.weakest_single,
        "acc_reference": ref.get("accuracy", math.nan),
        "weights": f.weights or "",
    }


def _epochs(f: Family) -> int | None:
    """The length of the family's training schedule (``training.epochs``), None when not recorded."""
    n = f.training.get("epochs") if isinstance(f.training, Mapping) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def lambda_label(f: Family, *, by_size: bool = False) -> str:
    """A family's loss weights, one per subset in catalog order (``2:2:1`` for u1:u2:u1+u2); "-" when
    the entry records none.  With ``by_size``, weights that are equal within each subset size are
    shown one per size instead (``1:1:1:1 by size``: singles, pairs, triples, all), which keeps 15 or
    31 weights readable; otherwise the full list."""
    lam = f.training.get("lambdas") if isinstance(f.training, Mapping) else None
    if not isinstance(lam, Mapping) or not lam:
        return "-"
    full = ":".join(f"{float(lam[k]):g}" for k in map(subset_key, f.subsets()) if k in lam)
    if not by_size:
        return full
    sizes: dict[int, set[float]] = {}
    for s in f.subsets():
        if subset_key(s) not in lam:
            return full
        sizes.setdefault(len(s), set()).add(float(lam[subset_key(s)]))
    if any(len(v) != 1 for v in sizes.values()):
        return full
    return ":".join(f"{next(iter(sizes[k])):g}" for k in sorted(sizes)) + " by size"


# -- loading and saving ----------------------------------------------------------------------


def load_family(path: str | os.PathLike) -> Family:
    """Read and validate one family JSON file (bounded, strict UTF-8 JSON: see
    :func:`melplan.core.fileio.parse_json_text`); raises CatalogError naming file, field and fix."""
    from melplan.core.fileio import load_json_file

    path = Path(path)
    data = load_json_file(path, error=CatalogError, fix="check the path and its permissions")
    return _parse_family(data, str(path))


def load_catalog(root: str | os.PathLike | None = None, *, dataset: str | None = None) -> Catalog:
    """Load every ``*.json`` family under ``root`` (recursively). Raises CatalogError when empty.

    Without ``root`` (the default catalog, which ships several datasets: catalog/fashion-mnist beside
    catalog/fsdd and catalog/trec) and without ``dataset``, only ``DEFAULT_DATASET``'s families are
    kept, so ``melplan plan --servers ...`` plans Fashion-MNIST as it always did; pass ``--catalog
    catalog/fsdd`` or ``--dataset`` for the others."""
    default = root is None
    root = Path(root) if root is not None else default_catalog_dir()
    if not root.exists():
        raise CatalogError(
            "the catalog directory does not exist",
            file=str(root),
            fix="pass --catalog with a directory of family JSON files, or train one with `melplan train`",
        )
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if not p.name.startswith("."))
    families = [load_family(p) for p in files]
    seen: dict[str, str] = {}
    for f in families:
        if f.id in seen:
            raise CatalogError(
                f"family id '{f.id}' appears twice (also in {seen[f.id]})",
                file=f.source,
                field="id",
                fix="give each family a unique id",
            )
        seen[f.id] = f.source or ""
    if dataset is not None:
        families = [f for f in families if f.dataset.get("name") == dataset]
    elif default and len({f.dataset.get("name") for f in families}) > 1:
        if any(f.dataset.get("name") == DEFAULT_DATASET for f in families):
            families = [f for f in families if f.dataset.get("name") == DEFAULT_DATASET]
    if not families:
        what = f" for dataset '{dataset}'" if dataset else ""
        raise EmptyCatalogError(
            f"the catalog holds no family{what}",
            file=str(root),
            fix="point --catalog at a directory with family JSON files (schema melplan.family/v1)",
        )
    return Catalog(tuple(sorted(families, key=lambda f: f.id)), str(root))


def save_family(family: Family, root: str | os.PathLike) -> Path:
    """Write ``<root>/<family.id>.json`` atomically and return its path."""
    return atomic_write_json(Path(root) / f"{family.id}.json", family.to_dict())


# -- validation ------------------------------------------------------------------------------


MAX_COUNT = 1e15  # parameters, MACs, bytes, latencies: nothing real is larger


class _Checker:
    def __init__(self, source: str | None) -> None:
        self.source = source

    def fail(self, field_: str, message: str, fix: str) -> None:
        raise CatalogError(message, file=self.source, field=field_, fix=fix)

    def mapping(self, value: Any, field_: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(field_, f"expected an object, got {type(value).__name__}", "write it as a JSON object {...}")
        return value

    def number(
        self,
        obj: Mapping[str, Any],
        key: str,
        where: str,
        *,
        integer: bool = False,
        required: bool = True,
        default: Any = None,
        low: float = 0.0,
    ) -> Any:
        fld = f"{where}.{key}"
        if key not in obj:
            if required:
                self.fail(fld, "missing", f"add '{key}' (a {'whole' if integer else ''} number >= {low:g})")
            return default
        v = obj[key]
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or abs(v) > MAX_COUNT or (isinstance(v, float) and not math.isfinite(v)):
            shown = f"an integer of {len(str(abs(v)))} digits" if isinstance(v, int) and abs(v) > 1e18 else repr(v)
            self.fail(
                fld,
                f"expected a finite {'whole ' if integer else ''}number of at most {MAX_COUNT:g}, got {shown}",
                f"set '{key}' to a number >= {low:g}",
            )
        if v < low:
            self.fail(fld, f"must be >= {low:g}, got {v!r}", f"set '{key}' to a number >= {low:g}")
        return v

    def latency(self, obj: Mapping[str, Any], where: str) -> dict[str, float]:
        lat = obj.get("latency_ms", {})
        self.mapping(lat, f"{where}.latency_ms")
        for k in lat:
            self.number(lat, k, f"{where}.latency_ms")
        return dict(lat)


_UPSTREAM_KEYS = {"name", "blocks", "params", "macs", "weight_bytes", "feature_bytes", "activation_bytes", "latency_ms"}
_COMBINER_KEYS = {
    "subset",
    "name",
    "serves",
    "kind",
    "params",
    "macs",
    "weight_bytes",
    "activation_bytes",
    "latency_ms",
}
_FAMILY_KEYS = {
    "schema",
    "id",
    "dataset",
    "base",
    "training",
    "upstreams",
    "combiners",
    "accuracy",
    "reference",
    "weights",
}


def _parse_family(data: Any, source: str | None) -> Family:
    ck = _Checker(source)
    ck.mapping(data, "(top level)")
    for key in ("schema", "id", "dataset", "base", "upstreams", "accuracy"):
        if key not in data:
            ck.fail(key, "missing", f"add '{key}' as described in docs/catalog.md")
    if data["schema"] != SCHEMA:
        ck.fail("schema", f"unsupported schema {data['schema']!r}", f'set it to "{SCHEMA}"')
    fid = data["id"]
    if not isinstance(fid, str) or not FAMILY_ID_RE.match(fid):
        ck.fail("id", f"invalid id {fid!r}", "use lower-case letters, digits, '.', '_' and '-' only")
    dataset = ck.mapping(data["dataset"], "dataset")
    if not isinstance(dataset.get("name"), str):
        ck.fail("dataset.name", "missing or not a string", 'name the dataset, e.g. "fashion-mnist"')
    if "num_classes" in dataset:
        nc = dataset["num_classes"]
        if isinstance(nc, bool) or not isinstance(nc, int) or not 2 <= nc <= 1_000_000:
            ck.fail("dataset.num_classes", f"expected a whole number in [2, 1000000], got {nc!r}", "e.g. 10")
    if "input_shape" in dataset:
        shape = dataset["input_shape"]
        if (
            not isinstance(shape, list)
            or not 1 <= len(shape) <= 4
            or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 100_000 for x in shape)
        ):
            ck.fail(
                "dataset.input_shape",
                f"expected a list of 1 to 4 positive whole numbers, got {shape!r}"[:200],
                "e.g. [3, 32, 32] (channels, height, width)",
            )
    if "role" in data and data["role"] is not None and not isinstance(data["role"], str):
        ck.fail(
            "role", f"expected a string, got {data['role']!r}"[:200], 'use "reference", "backup", "single" or drop it'
        )
    if not isinstance(data["base"], str):
        ck.fail("base", "expected a string", 'name the base network, e.g. "efficientnet_b0"')
    training = ck.mapping(data.get("training", {}), "training")
    lambdas = training.get("lambdas")
    if lambdas is not None:
        ck.mapping(lambdas, "training.lambdas")
        for k, v in lambdas.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1e6:
                ck.fail(
                    f"training.lambdas.{k}",
                    f"expected a finite weight >= 0, got {v!r}"[:200],
                    'write lambdas as an object of subset -> number, e.g. {"u1": 1.0, "u1+u2": 1.0}',
                )

    ups_raw = data["upstreams"]
    if not isinstance(ups_raw, list) or not ups_raw:
        ck.fail("upstreams", "expected a non-empty list", "list at least one upstream")
    upstreams = []
    for i, u in enumerate(ups_raw):
        where = f"upstreams[{i}]"
        ck.mapping(u, where)
        name = u.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            ck.fail(
                f"{where}.name",
                f"invalid upstream name {name!r}",
                "use lower-case letters, digits, '_' and '-' (no '+')",
            )
        blocks = ck.number(u, "blocks", where, integer=True, required=False, low=1)
        upstreams.append(
            Upstream(
                name=name,
                blocks=blocks,
                params=ck.number(u, "params", where, integer=True),
                macs=ck.number(u, "macs", where, integer=True),
                weight_bytes=ck.number(u, "weight_bytes", where, integer=True),
                feature_bytes=ck.number(u, "feature_bytes", where, integer=True, required=False, default=0),
                activation_bytes=ck.number(u, "activation_bytes", where, integer=True, required=False, default=0),
                latency_ms=ck.latency(u, where),
                extra={k: v for k, v in u.items() if k not in _UPSTREAM_KEYS},
            )
        )
    names = [u.name for u in upstreams]
    if len(set(names)) != len(names):
        ck.fail("upstreams", f"duplicate upstream names in {names}", "give each upstream a unique name")
    order = {n: i for i, n in enumerate(names)}

    def subset_of(value: Any, fld: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
            ck.fail(fld, f"expected a non-empty list of upstream names, got {value!r}", f"list names from {names}")
        unknown = [x for x in value if x not in order]
        if unknown:
            ck.fail(fld, f"unknown upstream(s) {unknown}", f"use names from {names}")
        if len(set(value)) != len(value):
            ck.fail(fld, f"repeated upstream in {value}", "list each upstream once")
        return tuple(sorted(value, key=order.__getitem__))

    combiners = []
    comb_raw = data.get("combiners", [])
    if not isinstance(comb_raw, list):
        ck.fail("combiners", "expected a list", "list the combiners, or [] for a single model")
    for i, c in enumerate(comb_raw):
        where = f"combiners[{i}]"
        ck.mapping(c, where)
        subset = subset_of(c.get("subset"), f"{where}.subset")
        serves = tuple(subset_of(s, f"{where}.serves") for s in c.get("serves", [list(subset)]))
        for s in serves:
            if len(s) < 2 or not set(s) <= set(subset):
                ck.fail(
                    f"{where}.serves",
                    f"{subset_key(s)} is not a subset of {subset_key(subset)} with 2+ upstreams",
                    "list only subsets of 'subset' with at least two upstreams",
                )
        name = c.get("name", "")
        if name and (not isinstance(name, str) or not re.match(r"^[a-z0-9][a-z0-9_+-]*$", name)):
            ck.fail(
                f"{where}.name", f"invalid combiner name {name!r}", "use lower-case letters, digits, '_', '+' and '-'"
            )
        kind = c.get("kind")
        if kind is not None and not isinstance(kind, str):
            ck.fail(f"{where}.kind", f"expected a string, got {kind!r}"[:200], 'name the combiner kind, e.g. "fc"')
        combiners.append(
            Combiner(
                subset=subset,
                serves=serves,
                name=name,
                kind=c.get("kind"),
                params=ck.number(c, "params", where, integer=True),
                macs=ck.number(c, "macs", where, integer=True),
                weight_bytes=ck.number(c, "weight_bytes", where, integer=True),
                activation_bytes=ck.number(c, "activation_bytes", where, integer=True, required=False, default=0),
                latency_ms=ck.latency(c, where),
                extra={k: v for k, v in c.items() if k not in _COMBINER_KEYS},
            )
        )
    cnames = [c.name for c in combiners]
    if len(set(cnames)) != len(cnames) or set(cnames) & set(names):
        ck.fail(
            "combiners",
            f"combiner names {cnames} repeat or clash with upstream names",
            "give each combiner a unique name",
        )

    acc = ck.mapping(data["accuracy"], "accuracy")
    keys = [subset_key(s) for s in nonempty_subsets(names)]
    missing = [k for k in keys if k not in acc]
    if missing:
        ck.fail(
            "accuracy",
            f"no accuracy for subset(s) {missing}",
            "give the measured test accuracy of every non-empty subset",
        )
    extra_keys = [k for k in acc if k not in keys]
    if extra_keys:
        ck.fail(
            "accuracy",
            f"unknown subset key(s) {extra_keys}",
            f"use keys from {keys} (names joined by '+' in upstream order)",
        )
    accuracy = {}
    for k in keys:
        v = acc[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            ck.fail(
                f"accuracy.{k}", f"expected a fraction in [0, 1], got {v!r}", "write accuracy as a fraction, e.g. 0.912"
            )
        accuracy[k] = float(v)
    served = {subset_key(s) for c in combiners for s in c.serves}
    unserved = [k for k in keys if "+" in k and k not in served]
    if unserved:
        ck.fail(
            "combiners",
            f"no combiner serves subset(s) {unserved}",
            "add a combiner for every subset of two or more upstreams",
        )

    reference = data.get("reference")
    if reference is not None:
        ck.mapping(reference, "reference")
        if "accuracy" in reference:
            v = reference["accuracy"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                ck.fail(
                    "reference.accuracy", f"expected a fraction in [0, 1], got {v!r}", "write accuracy as a fraction"
                )
        if "params" in reference:
            ck.number(reference, "params", "reference", integer=True)
        if reference.get("id") is not None and not isinstance(reference.get("id"), str):
            ck.fail(
                "reference.id", f"expected a family id, got {reference.get('id')!r}"[:200], "give the id as a string"
            )
    weights = data.get("weights")
    if weights is not None and not isinstance(weights, str):
        ck.fail("weights", "expected a file name", "give the weights file relative to the JSON file, or drop the field")
    if isinstance(weights, str):
        from pathlib import PurePosixPath, PureWindowsPath

        parts = PurePosixPath(weights).parts
        if (
            not weights
            or PurePosixPath(weights).is_absolute()
            or PureWindowsPath(weights).is_absolute()
            or weights.startswith("~")
            or ".." in parts
            or "\\" in weights
            or "\x00" in weights
        ):
            ck.fail(
                "weights",
                f"the weights path {weights[:100]!r} leaves the catalog folder",
                "give a path inside the catalog folder, relative to the JSON file (e.g. weights/<id>.pt)",
            )

    return Family(
        id=fid,
        dataset=dict(dataset),
        base=data["base"],
        training=dict(training),
        upstreams=tuple(upstreams),
        combiners=tuple(combiners),
        accuracy=accuracy,
        reference=None if reference is None else dict(reference),
        weights=weights,
        extra={k: v for k, v in data.items() if k not in _FAMILY_KEYS},
        source=source,
    )
