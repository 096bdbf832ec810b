"""Pareto fronts over a catalog of families: objectives, non-dominated sort, hypervolume, pick.

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

``--pick`` constraints are parsed by a small tokenizer and parser (never ``eval``), see
:func:`parse_constraints`.

Nothing here imports torch, matplotlib or pandas; numpy and pymoo are imported when used.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from melplan.core.catalog import Catalog, Family, family_row
from melplan.core.errors import InfeasiblePlanError, InputError

DEFAULT_OBJECTIVES = ("acc_all_up", "acc_weakest_single", "params")
PICK_GRAMMAR = (
    "NAME OP VALUE[, ...] where OP is <=, >=, < or >, and VALUE is a number (suffix %, k, M or G "
    "allowed), 'reference', or NUMBER*reference; e.g. \"params<=0.4*reference, acc_weakest_single>=0.85\""
)


class PickError(InputError):
    """A ``--pick``, ``--prefer`` or ``--weights`` expression cannot be parsed or names no objective."""


class ObjectiveError(InputError):
    """An objective name is unknown, repeated, or misses its parameter."""


class NoFamilyMatchesError(InfeasiblePlanError):
    """No family of the catalog satisfies every ``--pick`` constraint."""


# -- objectives ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """One axis of the front.

    ``fn`` returns the natural value (accuracy as a fraction, a cost as a count) or ``None`` when the
    objective does not apply to a family (for example the worst pair of a single model).
    """

    name: str
    label: str
    sense: str  # "max" or "min"
    kind: str  # "accuracy" or "cost"
    fn: Callable[[Family], float | None] = field(compare=False, repr=False)
    unit: str = ""

    @property
    def maximise(self) -> bool:
        return self.sense == "max"

    def value(self, family: Family) -> float | None:
        v = self.fn(family)
        return None if v is None else float(v)

    def minimised(self, value: float) -> float:
        """The value pymoo sees: accuracies negated, costs as they are."""
        return -value if self.maximise else value


def expected_accuracy(family: Family, p: float) -> float:
    """Expected accuracy when each upstream server is down independently with probability ``p``.

    Combiners are assumed co-available: whenever a set A of upstreams is up, every combiner of a
    subset of A is up too (replicated, or co-located with an upstream), so the answer is
    ``max{acc(S) : S non-empty, S ⊆ A}`` and 0 when A is empty.  This isolates what the family
    itself offers; ``melplan plan`` evaluates real placements with combiner servers that fail.
    """
    names = family.upstream_names
    n = len(names)
    best_by_mask = [0.0] * (1 << n)
    for mask in range(1, 1 << n):
        members = [names[i] for i in range(n) if mask >> i & 1]
        own = family.accuracy[family.key(members)]
        best = own
        for i in range(n):  # best of every subset = max(own, best of each one-smaller subset)
            if mask >> i & 1 and mask != 1 << i:
                best = max(best, best_by_mask[mask & ~(1 << i)])
        best_by_mask[mask] = best
    total = 0.0
    for mask in range(1, 1 << n):
        up = bin(mask).count("1")
        total += (1 - p) ** up * p ** (n - up) * best_by_mask[mask]
    return total


def _worst_pair(f: Family) -> float | None:
    if f.n < 2:
        return None
    names = f.upstream_names
    return min(f.accuracy[f.key((a, b))] for i, a in enumerate(names) for b in names[i + 1 :])


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("acc_all_up", "accuracy, all upstreams up", "max", "accuracy", lambda f: f.accuracy_all_up),
        Objective(
            "acc_weakest_single",
            "accuracy of the weakest single upstream",
            "max",
            "accuracy",
            lambda f: f.weakest_single,
        ),
        Objective(
            "acc_best_single",
            "accuracy of the best single upstream",
            "max",
            "accuracy",
            lambda f: max(f.accuracy[u] for u in f.upstream_names),
        ),
        Objective("acc_worst_pair", "accuracy of the worst pair of upstreams", "max", "accuracy", _worst_pair),
        Objective("params", "parameters", "min", "cost", lambda f: f.params),
        Objective("macs", "MACs per sample (all up)", "min", "cost", lambda f: f.macs),
        Objective("weight_bytes", "weight bytes", "min", "cost", lambda f: f.weight_bytes, "B"),
    )
}
PARAMETRIC = {"expected": "expected accuracy, each upstream down with p="}
KNOWN_NAMES = tuple(OBJECTIVES) + ("expected@P",)


def get_objective(name: str, *, field_: str = "--objectives") -> Objective:
    """The objective called ``name`` (``expected@0.05`` for the parametric one).

    Raises:
        ObjectiveError: unknown name, or a bad failure probability.
    """
    name = name.strip()
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    base, _, arg = name.partition("@")
    if base == "expected":
        try:
            p = float(arg)
        except ValueError:
            raise ObjectiveError(
                f"'{name}' needs a failure probability after '@'",
                field=field_,
                fix="write it as expected@0.05 (each upstream down with probability 0.05)",
            ) from None
        if not 0.0 <= p < 1.0:
            raise ObjectiveError(
                f"failure probability {p:g} in '{name}' is outside [0, 1)",
                field=field_,
                fix="use a probability such as expected@0.05",
            )
        return Objective(
            f"expected@{p:g}",
            f"{PARAMETRIC['expected']}{p:g}",
            "max",
            "accuracy",
            lambda f, p=p: expected_accuracy(f, p),
        )
    raise ObjectiveError(f"unknown objective '{name}'", field=field_, fix=f"use names from: {', '.join(KNOWN_NAMES)}")


def parse_objectives(spec: str | Sequence[str | Objective] | None) -> tuple[Objective, ...]:
    """``"acc_all_up,params"`` (or a sequence of names or objectives) to objectives; None gives
    the defaults.

    Raises:
        ObjectiveError: unknown or repeated names, or fewer than two objectives.
    """
    if spec is None:
        names: Sequence[str | Objective] = DEFAULT_OBJECTIVES
    elif isinstance(spec, str):
        names = [s for s in (x.strip() for x in spec.split(",")) if s]
    else:
        names = list(spec)
    objs = tuple(n if isinstance(n, Objective) else get_objective(n) for n in names)
    dup = [n for n, c in Counter(o.name for o in objs).items() if c > 1]
    if dup:
        raise ObjectiveError(f"objective(s) {dup} listed twice", field="--objectives", fix="list each objective once")
    if len(objs) < 2:
        raise ObjectiveError(
            f"a front needs at least two objectives, got {len(objs)}",
            field="--objectives",
            fix=f"add one, e.g. --objectives {','.join(DEFAULT_OBJECTIVES)}",
        )
    return objs


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
    upstreams whose weights are equal within each subset size, one weight per size is shown
    instead (``λ2:2:1 by size``: singles, pairs, all).
    """
    role = f.extra.get("role")
    blocks = "/".join(f"b{u.blocks}" if u.blocks is not None else "b?" for u in f.upstreams)
    if role == "reference":
        return f"reference {blocks}"
    text = blocks
    lam = family_row(f)["lambdas"]
    if f.n > 1 and lam != "-":
        text += f" λ{_lambda_by_size(f) if compact and f.n > 2 else lam}"
    kind = f.combiner_kind
    if kind and kind != "fc":
        text += f" {kind}"
    if role == "backup":
        text += " (backup)"
    return text


def _lambda_by_size(f: Family) -> str:
    lam = f.training.get("lambdas") if isinstance(f.training, Mapping) else None
    if not isinstance(lam, Mapping):
        return family_row(f)["lambdas"]
    by_size: dict[int, set[float]] = {}
    for s in f.subsets():
        key = f.key(s)
        if key not in lam:
            return family_row(f)["lambdas"]
        by_size.setdefault(len(s), set()).add(float(lam[key]))
    if any(len(v) != 1 for v in by_size.values()):
        return family_row(f)["lambdas"]
    return ":".join(f"{next(iter(by_size[k])):g}" for k in sorted(by_size)) + " by size"


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
    kept, values, excluded = [], [], []
    for f in families:
        v = {o.name: o.value(f) for o in objectives}
        missing = [k for k, x in v.items() if x is None or math.isnan(x)]
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


# -- --pick: a tiny tokenizer and parser -----------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<op><=|>=|<|>|==|=)|(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    r"(?P<suffix>%|[kKMG](?![A-Za-z_]))?|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:@[0-9.eE+-]+)?)|(?P<star>\*))"
)
_REFERENCE_WORDS = ("reference", "ref")
_SUFFIX = {None: 1.0, "%": 0.01, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


@dataclass(frozen=True)
class Constraint:
    """``objective OP factor * reference`` (``relative``) or ``objective OP value``."""

    objective: Objective
    op: str
    value: float
    relative: bool
    text: str

    def bound(self, reference: Reference) -> float:
        """The natural-valued bound; raises PickError when it needs an unknown reference value."""
        if not self.relative:
            return self.value
        ref = reference.value(self.objective)
        if ref is None:
            raise PickError(
                f"'{self.text}' needs the reference model's {self.objective.name}, which the catalog does not give",
                field="--pick",
                fix="add the reference model to the catalog (role 'reference') or use an absolute bound",
            )
        return self.value * ref

    def holds(self, value: float, reference: Reference) -> bool:
        b = self.bound(reference)
        eps = 1e-12 * max(1.0, abs(b))
        return {"<=": value <= b + eps, ">=": value >= b - eps, "<": value < b - eps, ">": value > b + eps}[self.op]


def _tokens(text: str, field_: str) -> list[tuple[str, str, str | None]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise PickError(
                f"cannot read '{text[pos:].strip()}' in \"{text}\" (at character {pos + 1})",
                field=field_,
                fix=f"write {PICK_GRAMMAR}",
            )
        if m.group("num") is not None:
            out.append(("num", m.group("num"), m.group("suffix")))
        else:
            kind = next(k for k in ("op", "name", "star") if m.group(k) is not None)
            out.append((kind, m.group(kind), None))
        pos = m.end()
    return out


def parse_constraint(text: str, *, field_: str = "--pick") -> Constraint:
    """Parse one ``NAME OP VALUE`` constraint (see :data:`PICK_GRAMMAR`).

    Raises:
        PickError: anything else, naming what could not be read.
    """
    toks = _tokens(text, field_)
    shape = [t[0] for t in toks]
    bad = PickError(f'"{text.strip()}" is not a constraint', field=field_, fix=f"write {PICK_GRAMMAR}")
    if len(toks) < 3 or shape[0] != "name" or shape[1] != "op":
        raise bad
    if toks[1][1] in ("=", "=="):
        raise PickError(
            f'"{text.strip()}": equality is not a useful constraint on measured values',
            field=field_,
            fix="use <=, >=, < or >",
        )
    try:
        obj = get_objective(toks[0][1], field_=field_)
    except ObjectiveError as exc:
        raise PickError(exc.message, field=field_, fix=exc.fix) from None
    rest = toks[2:]
    kinds = [t[0] for t in rest]

    def number(t: tuple[str, str, str | None]) -> float:
        return float(t[1]) * _SUFFIX[t[2]]

    if kinds == ["num"]:
        value, relative = number(rest[0]), False
    elif kinds == ["name"] and rest[0][1] in _REFERENCE_WORDS:
        value, relative = 1.0, True
    elif kinds == ["num", "star", "name"] and rest[2][1] in _REFERENCE_WORDS:
        value, relative = number(rest[0]), True
    elif kinds == ["name", "star", "num"] and rest[0][1] in _REFERENCE_WORDS:
        value, relative = number(rest[2]), True
    else:
        raise bad
    if obj.kind == "accuracy" and not relative and rest[0][2] is None and value > 1.0:
        raise PickError(
            f'"{text.strip()}": accuracy is a fraction in [0, 1], got {value:g}',
            field=field_,
            fix=f"write {value / 100:g} or {value:g}%",
        )
    if obj.kind == "accuracy" and not relative and rest[0][2] in ("k", "K", "M", "G"):
        raise bad
    return Constraint(obj, toks[1][1], value, relative, " ".join(text.split()))


def parse_constraints(text: str) -> tuple[Constraint, ...]:
    """Comma-separated constraints; an empty string gives none."""
    parts = [p for p in text.split(",")]
    if text.strip() and any(not p.strip() for p in parts):
        raise PickError(f'empty constraint in "{text}"', field="--pick", fix="separate constraints with single commas")
    return tuple(parse_constraint(p) for p in parts if p.strip())


@dataclass(frozen=True)
class Preference:
    """Maximise ``sum(w * natural value)`` where accuracies are fractions and costs are fractions of the
    reference model's cost; ``--prefer NAME`` is weight +1 on a maximised objective, -1 on a cost."""

    weights: Mapping[str, float]
    objectives: tuple[Objective, ...]
    text: str


def parse_preference(prefer: str | None, weights: str | None, objectives: Sequence[Objective]) -> Preference:
    """``--prefer NAME`` or ``--weights a=1,params=-0.2``; neither gives ``--prefer <first objective>``.

    Raises:
        PickError: both given, a bad weight, or an unknown name.
    """
    if prefer and weights:
        raise PickError("--prefer and --weights both given", field="--prefer", fix="give one of them")

    def obj(name: str, fld: str) -> Objective:
        try:
            return get_objective(name, field_=fld)
        except ObjectiveError as exc:
            raise PickError(exc.message, field=fld, fix=exc.fix) from None

    if weights:
        ws: dict[str, float] = {}
        objs = []
        for part in weights.split(","):
            name, eq, num = part.partition("=")
            if not eq or not name.strip():
                raise PickError(
                    f"'{part.strip()}' is not NAME=WEIGHT",
                    field="--weights",
                    fix="write e.g. --weights acc_all_up=1,params=-0.2",
                )
            o = obj(name, "--weights")
            try:
                w = float(num)
            except ValueError:
                raise PickError(
                    f"weight '{num.strip()}' of {o.name} is not a number",
                    field="--weights",
                    fix="write e.g. --weights acc_all_up=1,params=-0.2",
                ) from None
            if not math.isfinite(w):
                raise PickError(f"weight of {o.name} is not finite", field="--weights", fix="use a finite number")
            if o.name in ws:
                raise PickError(f"{o.name} weighted twice", field="--weights", fix="give each objective one weight")
            ws[o.name] = w
            objs.append(o)
        if not any(ws.values()):
            raise PickError("every weight is zero", field="--weights", fix="give at least one non-zero weight")
        terms = " + ".join(
            f"{v:g}·{k}" + (" (as a fraction of the reference)" if get_objective(k).kind == "cost" else "")
            for k, v in ws.items()
        )
        return Preference(ws, tuple(objs), f"largest weighted sum {terms}")
    o = obj(prefer, "--prefer") if prefer else objectives[0]
    return Preference(
        {o.name: 1.0 if o.maximise else -1.0},
        (o,),
        f"{'highest' if o.maximise else 'lowest'} {o.name}" + ("" if prefer else " (default: the first objective)"),
    )


def _fmt(obj: Objective, v: float, ref: float | None = None) -> str:
    if obj.kind == "accuracy":
        return f"{v:.4f}"
    text = f"{v / 1e6:.3g}M" if v >= 1e5 else f"{v:,.0f}"
    if ref:
        text += f" ({v / ref:.0%} of reference)"
    return text


def _fmt_or_na(obj: Objective, v: float | None) -> str:
    return "not applicable" if v is None else f"{obj.name} = {_fmt(obj, v)}"


def choose(
    result: ParetoResult, families: Sequence[Family], *, constraints: Sequence[Constraint], preference: Preference
) -> Pick:
    """The family to deploy: satisfies every constraint, then maximises the preference.

    Only families that no other feasible family dominates (on the front's objectives plus the
    preference's) are candidates; ties go to fewer parameters, then to the id.

    Raises:
        NoFamilyMatchesError: nothing satisfies the constraints (the message names the closest miss).
        PickError: a constraint needs an unknown reference value.
    """
    ref = result.reference
    objs = list(result.objectives) + [
        o for o in preference.objectives if o.name not in {x.name for x in result.objectives}
    ]
    needed = objs + [c.objective for c in constraints if c.objective.name not in {o.name for o in objs}]
    for c in constraints:
        c.bound(ref)  # fail early on an unknown reference value
    values = {f.id: {o.name: o.value(f) for o in needed} for f in families}
    feasible, misses = [], []
    for f in families:
        v = values[f.id]
        if any(v[o.name] is None for o in objs):
            continue
        failed = [c for c in constraints if v[c.objective.name] is None or not c.holds(v[c.objective.name], ref)]
        (misses if failed else feasible).append((f, failed))
    if not feasible:
        worst = min(misses, key=lambda m: len(m[1]), default=None)
        detail = ""
        if worst is not None:
            f, failed = worst
            detail = f"; closest is {f.id}, which fails " + ", ".join(
                f"{c.text} ({_fmt_or_na(c.objective, values[f.id][c.objective.name])})" for c in failed
            )
        raise NoFamilyMatchesError(
            f"no family satisfies {', '.join(c.text for c in constraints)}{detail}",
            field="--pick",
            fix="relax a constraint or train more families (`melplan search`)",
        )
    fam = [f for f, _ in feasible]
    F = [[o.minimised(values[f.id][o.name]) for o in objs] for f in fam]  # type: ignore[arg-type]
    ranks, _ = non_dominated_ranks(F)
    cands = [f for f, r in zip(fam, ranks) if r == 0]

    def natural(o: Objective, v: float) -> float:
        if o.kind == "cost":
            scale = ref.value(o) or max(values[f.id][o.name] or 1.0 for f in fam)
            return v / scale
        return v

    def score(f: Family) -> float:
        return sum(w * natural(get_objective(n), values[f.id][n]) for n, w in preference.weights.items())  # type: ignore[arg-type]

    ranked = sorted(cands, key=lambda f: (-score(f), f.params, f.id))
    best = ranked[0]
    pref_names = list(preference.weights)
    shown = ", ".join(
        f"{n} = {_fmt(get_objective(n), values[best.id][n], ref.value(get_objective(n)))}"  # type: ignore[arg-type]
        for n in pref_names
    )
    if len(preference.weights) > 1 or preference.text.startswith("largest weighted"):
        shown += f"; score {score(best):.4f}"
    parts = [f"deploy {best.id} ({family_label(best)}): {preference.text} ({shown})"]
    if constraints:
        met = ", ".join(
            f"{c.text}: {_fmt(c.objective, values[best.id][c.objective.name], ref.value(c.objective))}"  # type: ignore[arg-type]
            for c in constraints
        )
        parts.append(f"among the {len(feasible)} of {len(families)} families that satisfy every constraint ({met})")
    else:
        parts.append(f"among all {len(feasible)} families")
    if len(ranked) > 1:
        nxt = ranked[1]
        parts.append(
            f"runner-up {nxt.id} ("
            + ", ".join(f"{n} = {_fmt(get_objective(n), values[nxt.id][n])}" for n in pref_names)
            + ")"
        )  # type: ignore[arg-type]
    cons = tuple(c.text for c in constraints)
    return Pick(best.id, "; ".join(parts) + ".", cons, preference.text, tuple(f.id for f in fam), score(best))
