"""Which family to deploy: ``--pick`` constraints, ``--prefer``/``--weights`` preferences, and the choice.

Constraints are read by a small tokenizer and parser (never ``eval``): ``NAME OP VALUE`` where VALUE
is a number (suffix ``%``, ``k``, ``M``, ``G``), ``reference`` or ``NUMBER*reference`` (see
:data:`PICK_GRAMMAR`).  :func:`choose` keeps the families that satisfy every constraint, then the
non-dominated ones among them, and maximises the preference; the reason names the runner-up.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from melplan.core.catalog import Family
from melplan.core.errors import NoFamilyMatchesError, ObjectiveError, PickError
from melplan.pareto.front import ParetoResult, Pick, Reference, family_label, non_dominated_ranks
from melplan.pareto.objectives import Objective, get_objective

PICK_GRAMMAR = (
    "NAME OP VALUE[, ...] where OP is <=, >=, < or >, and VALUE is a number (suffix %, k, M or G "
    "allowed), 'reference', or NUMBER*reference; e.g. \"params<=0.4*reference, acc_weakest_single>=0.85\""
)


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


def _holds(c: Constraint, value: float | None, ref: Reference) -> bool:
    return value is not None and c.holds(value, ref)


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
    feasible: list[tuple[Family, list[Constraint]]] = []
    misses: list[tuple[Family, list[Constraint]]] = []
    for f in families:
        v = values[f.id]
        if any(v[o.name] is None for o in objs):
            continue
        failed = [c for c in constraints if not _holds(c, v[c.objective.name], ref)]
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
    # every value a feasible family needs is known (a missing one fails its objective or constraint)
    known = {f.id: {k: v for k, v in values[f.id].items() if v is not None} for f in fam}
    F = [[o.minimised(known[f.id][o.name]) for o in objs] for f in fam]
    ranks, _ = non_dominated_ranks(F)
    cands = [f for f, r in zip(fam, ranks) if r == 0]

    def natural(o: Objective, v: float) -> float:
        if o.kind == "cost":
            scale = ref.value(o) or max(known[f.id][o.name] or 1.0 for f in fam)
            return v / scale
        return v

    def score(f: Family) -> float:
        return sum(w * natural(get_objective(n), known[f.id][n]) for n, w in preference.weights.items())

    ranked = sorted(cands, key=lambda f: (-score(f), f.params, f.id))
    best = ranked[0]
    pref_names = list(preference.weights)
    shown = ", ".join(
        f"{n} = {_fmt(get_objective(n), known[best.id][n], ref.value(get_objective(n)))}" for n in pref_names
    )
    if len(preference.weights) > 1 or preference.text.startswith("largest weighted"):
        shown += f"; score {score(best):.4f}"
    parts = [f"deploy {best.id} ({family_label(best)}): {preference.text} ({shown})"]
    if constraints:
        met = ", ".join(
            f"{c.text}: {_fmt(c.objective, known[best.id][c.objective.name], ref.value(c.objective))}"
            for c in constraints
        )
        parts.append(f"among the {len(feasible)} of {len(families)} families that satisfy every constraint ({met})")
    else:
        parts.append(f"among all {len(feasible)} families")
    if len(ranked) > 1:
        nxt = ranked[1]
        parts.append(
            f"runner-up {nxt.id} ("
            + ", ".join(f"{n} = {_fmt(get_objective(n), known[nxt.id][n])}" for n in pref_names)
            + ")"
        )
    cons = tuple(c.text for c in constraints)
    return Pick(best.id, "; ".join(parts) + ".", cons, preference.text, tuple(f.id for f in fam), score(best))
