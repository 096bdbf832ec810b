"""Pareto fronts over a catalog of families: non-dominated sort, hypervolume, the table and the analysis.

The objectives live in :mod:`melplan.pareto.objectives`, the choice of the family to deploy
(``--pick``, ``--prefer``, ``--weights``) in :mod:`melplan.pareto.pick`; their public names are also
importable from here, as before the split.

Every family becomes a point in objective space (see :data:`OBJECTIVES`); pymoo's
``NonDominatedSorting`` ranks the points after identical points are merged, so duplicates share a
rank.  Everything is minimised internally (accuracies are negated); reports show natural values.

Hypervolume (pymoo's ``HV``) is measured in a *normalised* space fixed by the dataset and the
reference model, not by the catalog, so two catalogs of one dataset compare with one number:

* an accuracy ``a`` (maximised) maps to ``(1 - a) / (1 - 1/C)`` with ``C`` classes: 0 is a perfect
  model, 1 is chance level;
* a cost ``c`` (params, MACs, weight bytes; minimised) maps to ``c / c_ref``, the fraction of the
  reference (full) model's cost;
* the reference point is ``(1, ..., 1)``: chance accuracy and the full model's cost.  The
  hypervolume is the fraction of the box between the ideal point and that reference point that the
  front dominates (0 to 1); families costlier than the reference model add nothing.

When the reference model's cost is unknown the largest cost in the table is used instead and the
result says that it is not comparable across catalogs.

Nothing here imports torch, matplotlib or pandas; numpy and pymoo are imported when used.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from melplan.core.catalog import Catalog, Family, lambda_label
from melplan.core.errors import InputError, NoFamilyMatchesError, ObjectiveError, PickError
from melplan.pareto.objectives import (
    DEFAULT_OBJECTIVES,
    KNOWN_NAMES,
    OBJECTIVES,
    PARAMETRIC,
    Objective,
    expected_accuracy,
    get_objective,
    parse_objectives,
)

# Re-exported for callers of the module before the split (the names of pick come through __getattr__).
__all__ = [
    "DEFAULT_OBJECTIVES",
    "KNOWN_NAMES",
    "OBJECTIVES",
    "PARAMETRIC",
    "InputError",
    "NoFamilyMatchesError",
    "Normalisation",
    "Objective",
    "ObjectiveError",
    "ParetoResult",
    "Pick",
    "PickError",
    "Reference",
    "Row",
    "analyse",
    "dominates",
    "expected_accuracy",
    "family_label",
    "find_reference",
    "get_objective",
    "hypervolume",
    "make_normalisation",
    "non_dominated_ranks",
    "parse_objectives",
    "pareto_table",
    "single_dataset",
]
_FROM_PICK = {
    "PICK_GRAMMAR",
    "Constraint",
    "Preference",
    "choose",
    "parse_constraint",
    "parse_constraints",
    "parse_preference",
}


def __getattr__(name: str) -> Any:
    """The names of :mod:`melplan.pareto.pick`, importable from here (loaded on first use: pick imports this)."""
    if name in _FROM_PICK:
        from melplan.pareto import pick

        return getattr(pick, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- non-dominated sort ----------------------------------------------------------------------


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` (all minimised): no worse everywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated_ranks(F) -> tuple[list[int], list[int]]:
    """Pareto rank of every row of ``F`` (minimised; rank 0 is the front) and, per row, the index of
    the first identical row (itself when unique).

    Identical rows are merged before pymoo's ``NonDominatedSorting`` runs and get the same rank.
    """
    import numpy as np
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = np.asarray(F, dtype=float)
    if F.ndim != 2 or len(F) == 0:
        return [], []
    first_of: dict[tuple[float, ...], int] = {}
    first = [first_of.setdefault(tuple(row), i) for i, row in enumerate(F.tolist())]
    unique = sorted(set(first))
    pos = {u: k for k, u in enumerate(unique)}
    _, rank = NonDominatedSorting().do(F[unique], return_rank=True)
    return [int(rank[pos[first[i]]]) for i in range(len(F))], first


# -- reference model and normalisation -------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The full model every family is measured against: its id, where it came from, and values."""

    id: str | None
    source: str  # "catalog" (a family with role 'reference'), "entry" or "none"
    family: Family | None = None
    info: Mapping[str, object] = field(default_factory=dict)

    def value(self, obj: Objective) -> float | None:
        """The reference model's value of ``obj``, or None when unknown."""
        if self.family is not None:
            return obj.value(self.family)
        if obj.kind == "cost":
            v = self.info.get(obj.name)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        acc = self.info.get("accuracy")
        if not isinstance(acc, (int, float)) or obj.name == "acc_worst_pair":
            return None
        if obj.name.startswith("expected@"):
            return (1.0 - float(obj.name.partition("@")[2])) * float(acc)
        return float(acc)


def find_reference(families: Sequence[Family]) -> Reference:
    """A family with ``extra.role == 'reference'`` (the one most entries name, if several), else the
    ``reference`` block most entries carry, else none."""
    named = Counter(f.reference.get("id") for f in families if f.reference and f.reference.get("id"))
    refs = [f for f in families if f.extra.get("role") == "reference"]
    if refs:
        refs.sort(key=lambda f: (-named.get(f.id, 0), f.id))
        return Reference(refs[0].id, "catalog", refs[0], {})
    blocks = [f.reference for f in families if f.reference]
    if blocks:
        top = named.most_common(1)[0][0] if named else None
        info = next((b for b in blocks if b.get("id") == top), blocks[0])
        return Reference(info.get("id"), "entry", None, dict(info))
    return Reference(None, "none")


@dataclass(frozen=True)
class Normalisation:
    """Maps natural values to the hypervolume space where (1, ..., 1) is the reference point."""

    num_classes: int
    scale: Mapping[str, float]  # cost objective -> the cost that maps to 1
    comparable: bool  # False when some cost scale came from the table, not the reference
    note: str = ""

    def forward(self, obj: Objective, value: float) -> float:
        if obj.kind == "accuracy":
            chance = 1.0 / self.num_classes
            return (1.0 - value) / (1.0 - chance)
        return value / self.scale[obj.name]

    def reference_point(self, obj: Objective) -> float:
        """The natural value that maps to 1 (chance accuracy, or the reference cost)."""
        return 1.0 / self.num_classes if obj.kind == "accuracy" else self.scale[obj.name]

    def to_dict(self, objectives: Sequence[Objective]) -> dict:
        return {
            "reference_point": {o.name: self.reference_point(o) for o in objectives},
            "num_classes": self.num_classes,
            "comparable": self.comparable,
            "note": self.note,
            "rule": "accuracy a -> (1-a)/(1-1/classes); cost c -> c/c_reference; reference point (1,...,1)",
        }


def make_normalisation(
    objectives: Sequence[Objective], families: Sequence[Family], reference: Reference
) -> Normalisation:
    """Normalisation from the dataset's class count and the reference model's costs."""
    classes = Counter(int(f.dataset.get("num_classes", 10)) for f in families).most_common(1)
    num_classes = max(2, classes[0][0]) if classes else 10
    scale, missing = {}, []
    for o in objectives:
        if o.kind != "cost":
            continue
        v = reference.value(o)
        if v is None or v <= 0:
            missing.append(o.name)
            vals = [o.value(f) for f in families]
            v = max([x for x in vals if x] or [1.0])
        scale[o.name] = float(v)
    note = ""
    if missing:
        note = (
            f"the reference model's {', '.join(missing)} is unknown, so the table's largest value is used: "
            f"this hypervolume is not comparable with another catalog's"
        )
    return Normalisation(num_classes, scale, not missing, note)


def hypervolume(points: Sequence[Sequence[float]], objectives: Sequence[Objective], norm: Normalisation) -> float:
    """pymoo HV of natural-valued ``points`` in the normalised space (reference point all ones)."""
    import numpy as np
    from pymoo.indicators.hv import HV

    if not points:
        return 0.0
    F = np.array([[norm.forward(o, v) for o, v in zip(objectives, p)] for p in points], dtype=float)
    F = F[np.all(F < 1.0, axis=1)]
    if len(F) == 0:
        return 0.0
    return float(HV(ref_point=np.ones(len(objectives)))(F))


# -- the table and the front -----------------------------------------------------------------


def family_label(f: Family, *, compact: bool = False) -> str:
    """Short label for plots and tables: ``b4/b4 λ2:2:1`` (+ combiner kind unless fc, + role).

    λ lists one weight per subset in catalog order (u1:u2:u1+u2 ...).  With ``compact`` and 3+
    upstreams, or always from 4 upstreams (15 or more subsets), weights that are equal within each
    subset size are shown as one weight per size instead (``λ2:2:1 by size``: singles, pairs, all).
    """
    role = f.extra.get("role")
    blocks = "/".join(f"b{u.blocks}" if u.blocks is not None else "b?" for u in f.upstreams)
    if role == "reference":
        return f"reference {blocks}"
    text = blocks
    lam = lambda_label(f, by_size=(compact and f.n > 2) or f.n >= 4)
    if f.n > 1 and lam != "-":
        text += f" λ{lam}"
    kind = f.combiner_kind
    if kind and kind != "fc":
        text += f" {kind}"
    if role == "backup":
        text += " (backup)"
    return text


@dataclass(frozen=True)
class Row:
    """One family of the table: its natural objective values, rank and duplicate link."""

    id: str
    family: Family = field(repr=False, compare=False)
    values: Mapping[str, float]
    rank: int
    same_as: str | None = None  # id of the first family with identical values
    role: str | None = None
    label: str = ""

    @property
    def on_front(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Pick:
    """The one family to deploy under the user's constraints and preference, with the reason."""

    id: str
    reason: str
    constraints: tuple[str, ...]
    preference: str
    feasible: tuple[str, ...]
    score: float


@dataclass(frozen=True)
class ParetoResult:
    dataset: str | None
    objectives: tuple[Objective, ...]
    rows: tuple[Row, ...]
    excluded: tuple[tuple[str, str], ...]  # (id, why) of families an objective does not apply to
    reference: Reference
    normalisation: Normalisation
    hypervolume: float
    pick: Pick | None = None

    @property
    def front(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.on_front)

    @property
    def front_ids(self) -> list[str]:
        return [r.id for r in self.front]

    def row(self, family_id: str) -> Row:
        for r in self.rows:
            if r.id == family_id:
                return r
        raise KeyError(family_id)

    def to_dict(self) -> dict:
        def vals(r: Row) -> dict:
            return {o.name: r.values[o.name] for o in self.objectives}

        return {
            "schema": "melplan.pareto/v1",
            "dataset": self.dataset,
            "objectives": [{"name": o.name, "sense": o.sense, "label": o.label} for o in self.objectives],
            "front": [
                {
                    "id": r.id,
                    "label": r.label,
                    "role": r.role,
                    "values": vals(r),
                    **({"same_as": r.same_as} if r.same_as else {}),
                }
                for r in self.front
            ],
            "ranks": {r.id: r.rank for r in self.rows},
            "n_families": len(self.rows),
            "excluded": [{"id": i, "why": w} for i, w in self.excluded],
            "reference": {
                "id": self.reference.id,
                "source": self.reference.source,
                "values": {o.name: self.reference.value(o) for o in self.objectives},
            },
            "hypervolume": {"value": self.hypervolume, **self.normalisation.to_dict(self.objectives)},
            "pick": None
            if self.pick is None
            else {
                "id": self.pick.id,
                "reason": self.pick.reason,
                "constraints": list(self.pick.constraints),
                "preference": self.pick.preference,
                "feasible": list(self.pick.feasible),
                "score": self.pick.score,
            },
        }


def single_dataset(
    families: Sequence[Family], dataset: str | None, source: str | None
) -> tuple[list[Family], str | None]:
    """Keep ``dataset``'s families; refuse a mix of datasets, whose front would mean nothing.

    Raises:
        InputError: several datasets and no ``dataset`` given, or none of that name.
    """
    names = sorted({str(f.dataset.get("name")) for f in families})
    if dataset is not None:
        kept = [f for f in families if f.dataset.get("name") == dataset]
        if not kept:
            raise InputError(
                f"no family of dataset '{dataset}' in the catalog",
                file=source,
                field="--dataset",
                fix=f"use one of: {', '.join(names)}",
            )
        return kept, dataset
    if len(names) > 1:
        raise InputError(
            f"the catalog mixes datasets {names}; a front across datasets means nothing",
            file=source,
            field="--dataset",
            fix=f"pass --dataset with one of: {', '.join(names)}",
        )
    return list(families), (names[0] if names else None)


def pareto_table(
    families: Sequence[Family],
    objectives: Sequence[Objective],
    *,
    reference: Reference | None = None,
    normalisation: Normalisation | None = None,
    dataset: str | None = None,
) -> ParetoResult:
    """Rank ``families`` (one dataset) on ``objectives`` and measure the front's hypervolume.

    ``reference`` and ``normalisation`` default to those found in ``families``; pass them to
    compare two tables on one scale (``melplan search`` does, before vs after).
    """
    objectives = tuple(objectives)
    reference = reference or find_reference(families)
    norm = normalisation or make_normalisation(objectives, families, reference)
    kept: list[Family] = []
    values: list[dict[str, float]] = []
    excluded: list[tuple[str, str]] = []
    for f in families:
        raw = {o.name: o.value(f) for o in objectives}
        v = {k: x for k, x in raw.items() if x is not None and not math.isnan(x)}
        missing = [k for k in raw if k not in v]
        if missing:
            excluded.append((f.id, f"{', '.join(missing)} does not apply to a family with {f.n} upstream(s)"))
            continue
        kept.append(f)
        values.append(v)
    F = [[o.minimised(v[o.name]) for o in objectives] for v in values]
    ranks, first = non_dominated_ranks(F)
    rows = tuple(
        Row(f.id, f, v, ranks[i], kept[first[i]].id if first[i] != i else None, f.extra.get("role"), family_label(f))
        for i, (f, v) in enumerate(zip(kept, values))
    )
    front_points = [[r.values[o.name] for o in objectives] for r in rows if r.on_front]
    hv = hypervolume(front_points, objectives, norm)
    return ParetoResult(dataset, objectives, rows, tuple(excluded), reference, norm, hv)


def analyse(
    catalog: Catalog | Sequence[Family],
    objectives: Sequence[Objective] | str | None = None,
    *,
    dataset: str | None = None,
    pick: str | None = None,
    prefer: str | None = None,
    weights: str | None = None,
) -> ParetoResult:
    """The front of a catalog (one dataset), its hypervolume, and the pick when one is asked for.

    Raises:
        ObjectiveError: bad objective names.
        InputError: several datasets without ``dataset``.
        PickError: a bad ``pick``, ``prefer`` or ``weights`` expression.
        NoFamilyMatchesError: no family satisfies the constraints.
    """
    objs = parse_objectives(objectives)
    source = catalog.root if isinstance(catalog, Catalog) else None
    families, ds = single_dataset(list(catalog), dataset, source)
    result = pareto_table(families, objs, dataset=ds)
    if pick is not None or prefer is not None or weights is not None:
        from melplan.pareto.pick import choose, parse_constraints, parse_preference

        chosen = choose(
            result,
            families,
            constraints=parse_constraints(pick or ""),
            preference=parse_preference(prefer, weights, objs),
        )
        result = ParetoResult(
            result.dataset,
            result.objectives,
            result.rows,
            result.excluded,
            result.reference,
            result.normalisation,
            result.hypervolume,
            chosen,
        )
    return result
