"""The objectives of a Pareto front over a catalog: what each axis measures, by name (no torch).

Every objective reads one number off a catalog :class:`~melplan.core.catalog.Family`: an accuracy
(maximised) or a cost (minimised).  ``expected@P`` is the parametric one: the expected accuracy when
each upstream server is down independently with probability ``P``.  :func:`parse_objectives` turns
``--objectives`` text into objectives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from melplan.core.catalog import Family
from melplan.core.errors import ObjectiveError

DEFAULT_OBJECTIVES = ("acc_all_up", "acc_weakest_single", "params")


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
            partial(expected_accuracy, p=p),
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
