"""Acceptance checks of a catalog against the MEL paper's claims (no torch).

``melplan catalog report`` prints these; docs/results.md quotes its output.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from melplan.core.catalog import Catalog, Family, subset_key

HEADLINE_PARAMS = 0.40  # ensemble at most 40% of the reference's parameters ...
HEADLINE_GAP = 0.010  # ... within 1.0 point of the reference's accuracy ...
HEADLINE_KEEP = 0.956  # ... and its weaker single upstream keeps 95.6% of ensemble accuracy
PAIR_KEEP = 0.98  # 3 upstreams: every pair keeps 98% of all-up accuracy


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    family: str | None
    detail: str


def references(cat: Catalog) -> list[Family]:
    """Every family with role 'reference', by id (a catalog may hold one per base network)."""
    return sorted((f for f in cat if f.extra.get("role") == "reference"), key=lambda f: f.id)


def _reference(cat: Catalog, reference_id: str | None = None) -> Family | None:
    if reference_id is not None:
        return cat.get(reference_id)
    refs = references(cat)
    return refs[0] if refs else None


def _same_base(f: Family, ref: Family) -> bool:
    return f.base == ref.base and f.dataset.get("name") == ref.dataset.get("name")


PLATEAU_GAIN = 0.001  # a last epoch that raised validation accuracy by less than this: the run had stopped rising


def _not_converged_advice(ref: Family) -> str:
    """What to do about a reference that a smaller model beats, from its recorded validation history
    (``training.validation.phases.joint.history``): train longer while it was still rising; otherwise
    more epochs will not help and the reference itself (base, input size) is the question."""
    validation = ref.training.get("validation")
    phases = validation.get("phases") if isinstance(validation, dict) else None
    joint = phases.get("joint") if isinstance(phases, dict) else None
    history = joint.get("history") if isinstance(joint, dict) else None
    if not isinstance(history, list) or len(history) < 2 or not all(isinstance(h, (int, float)) for h in history):
        return "it is under-trained or not the right reference for this input; train it longer, then judge the headline"
    gain = float(history[-1]) - float(history[-2])
    if gain >= PLATEAU_GAIN:
        return (
            f"its validation accuracy was still rising (+{gain:.4f} in its last epoch of {len(history)}); "
            "train it longer before judging the headline"
        )
    return (
        f"its validation accuracy had stopped rising (+{gain:.4f} in its last epoch of {len(history)}, best "
        f"{max(history):.4f}), so more epochs will not fix it: at this input the smaller model is the better single "
        "model; choose a reference that beats it (another base or input size) before judging the headline"
    )


@dataclass(frozen=True)
class SingleModel:
    """A model that answers alone: a single-model family, or one upstream of a family with its exit."""

    label: str  # the family id, or "<family id> u2"
    params: int
    accuracy: float


def single_models(cat: Catalog, dataset: str | None) -> list[SingleModel]:
    """Every single model of ``dataset`` in the catalog: single-model families whole, and every
    upstream of a multi-upstream family alone (its prefix with its own exit, as it answers when the
    others have failed)."""
    out = []
    for f in cat:
        if f.dataset.get("name") != dataset:
            continue
        if f.n == 1:
            out.append(SingleModel(f.id, f.params, f.accuracy_all_up))
            continue
        for u in f.upstreams:
            if u.name in f.accuracy:
                out.append(SingleModel(f"{f.id} {u.name}", u.params, f.accuracy[u.name]))
    return out


def convergence(cat: Catalog, reference_id: str | None = None) -> Check:
    """The reference must be more accurate than every smaller single model of the catalog (any base,
    same dataset; the upstreams of families alone count too); otherwise no comparison against it
    means anything (see _not_converged_advice)."""
    ref = _reference(cat, reference_id)
    if ref is None:
        return Check("converged", False, None, "no reference family (role: reference) in the catalog")
    smaller = [g for g in single_models(cat, ref.dataset.get("name")) if g.label != ref.id and g.params < ref.params]
    beaten = [g for g in smaller if g.accuracy >= ref.accuracy_all_up]
    if beaten:
        worst = max(beaten, key=lambda g: g.accuracy)
        return Check(
            "converged",
            False,
            ref.id,
            f"reference {ref.accuracy_all_up:.4f} is not more accurate than {len(beaten)} smaller single model(s), "
            f"e.g. {worst.label} ({worst.accuracy:.4f}, {worst.params:,} params vs {ref.params:,}): "
            f"{_not_converged_advice(ref)}",
        )
    best = max(smaller, key=lambda g: g.accuracy, default=None)
    # single-model entries larger than the reference (a full network the reference is a prefix of)
    larger = [f for f in cat if f.n == 1 and f.dataset.get("name") == ref.dataset.get("name") and f.params > ref.params]
    return Check(
        "converged",
        True,
        ref.id,
        f"reference {ref.accuracy_all_up:.4f} ({ref.params:,} params) beats all {len(smaller)} smaller single "
        f"model(s), upstreams of families alone included"
        + (f"; the best is {best.label} at {best.accuracy:.4f} ({best.params:,} params)" if best else "")
        + "".join(
            f"; the larger {f.id} scores {f.accuracy_all_up:.4f} ({f.params:,} params)"
            for f in sorted(larger, key=lambda f: (-f.accuracy_all_up, f.id))
        ),
    )


def headline(cat: Catalog, reference_id: str | None = None) -> Check:
    """The best 2-upstream family of the reference's base against the paper's headline;
    ``reference_id`` picks the reference (default: the first family with role 'reference').
    Not judged (fails) when the reference is not converged (see ``convergence``)."""
    ref = _reference(cat, reference_id)
    if ref is None:
        return Check("headline", False, None, "no reference family (role: reference) in the catalog")
    conv = convergence(cat, ref.id)
    if not conv.passed:
        return Check("headline", False, None, f"not judged against {ref.id}: {conv.detail}")
    best = None
    for f in cat:
        if f.n != 2 or not _same_base(f, ref) or f.training.get("independent"):
            continue
        ratio = f.params / ref.params
        gap = ref.accuracy_all_up - f.accuracy_all_up
        keep = f.weakest_single / f.accuracy_all_up
        ok = ratio <= HEADLINE_PARAMS and gap <= HEADLINE_GAP and keep >= HEADLINE_KEEP
        row = (ok, -gap, f, ratio, gap, keep)
        if best is None or row[:2] > best[:2]:
            best = row
    if best is None:
        return Check("headline", False, None, f"no jointly trained 2-upstream family of base {ref.base}")
    ok, _, f, ratio, gap, keep = best
    return Check(
        "headline",
        ok,
        f.id,
        f"reference {ref.id}; params {f.params:,} = {ratio:.1%} of reference "
        f"({ref.params:,}; needs <= {HEADLINE_PARAMS:.0%}); "
        f"ensemble {f.accuracy_all_up:.4f} vs reference {ref.accuracy_all_up:.4f} "
        f"(gap {gap * 100:+.2f} points; needs <= {HEADLINE_GAP * 100:.1f}); weaker single "
        f"{f.weakest_single:.4f} = {keep:.1%} of ensemble (needs >= {HEADLINE_KEEP:.1%})",
    )


def pairs(cat: Catalog) -> Check:
    best = None
    for f in cat:
        if f.n != 3:
            continue
        worst = min(f.accuracy[subset_key(p)] for p in itertools.combinations(f.upstream_names, 2))
        keep = worst / f.accuracy_all_up
        if best is None or keep > best[0]:
            best = (keep, f, worst)
    if best is None:
        return Check("pairs", False, None, "no 3-upstream family")
    keep, f, worst = best
    return Check(
        "pairs",
        keep >= PAIR_KEEP,
        f.id,
        f"worst pair {worst:.4f} = {keep:.1%} of all-up {f.accuracy_all_up:.4f} (needs >= {PAIR_KEEP:.0%})",
    )


def shared_vs_per_subset(cat: Catalog) -> list[str]:
    """Rows comparing each shared-combiner family with per-subset families of the same upstreams."""
    rows = []
    for s in (f for f in cat if f.combiner_kind == "shared"):
        shape = tuple(u.blocks for u in s.upstreams)
        for p in cat:
            if (
                p.combiner_kind in ("fc", "cnn")
                and tuple(u.blocks for u in p.upstreams) == shape
                and p.dataset.get("name") == s.dataset.get("name")
                and p.base == s.base
                and bool(p.training.get("independent")) == bool(s.training.get("independent"))
            ):
                cb_s = sum(c.weight_bytes for c in s.combiners)
                cb_p = sum(c.weight_bytes for c in p.combiners)
                multi = [k for k in s.accuracy if "+" in k]
                mean_s = sum(s.accuracy[k] for k in multi) / len(multi)
                mean_p = sum(p.accuracy[k] for k in multi) / len(multi)
                rows.append(
                    f"{s.id} vs {p.id}: {len(s.combiners)} vs {len(p.combiners)} combiner(s), "
                    f"bytes {cb_s:,} vs {cb_p:,} ({cb_s / cb_p:.2f}x); "
                    f"all-up accuracy {s.accuracy_all_up:.4f} vs {p.accuracy_all_up:.4f}; mean over the "
                    f"{len(multi)} multi-upstream subsets {mean_s:.4f} vs {mean_p:.4f}"
                )
    return rows


def control_vs_joint(cat: Catalog) -> list[str]:
    """Rows comparing each independently trained family (upstreams alone, combiners afterwards) with
    its jointly trained twin: same base, shapes, combiner, loss weights and seed."""

    def key(f: Family) -> tuple:
        t = f.training
        return (
            f.base,
            f.dataset.get("name"),
            tuple(u.blocks for u in f.upstreams),
            f.combiner_kind,
            tuple(sorted((t.get("lambdas") or {}).items())),
            t.get("seed"),
            t.get("pretrained"),
            t.get("epochs"),
        )

    twins = {key(f): f for f in cat if f.n > 1 and not f.training.get("independent")}
    rows = []
    for c in sorted((f for f in cat if f.training.get("independent")), key=lambda f: f.id):
        j = twins.get(key(c))
        if j is None:
            rows.append(f"{c.id}: no jointly trained twin in this catalog")
            continue
        cells = ", ".join(f"{k} {c.accuracy[k]:.4f} vs {j.accuracy[k]:.4f}" for k in c.accuracy)
        rows.append(
            f"{c.id} (independent) vs {j.id} (joint): {cells}; weaker single keeps "
            f"{c.weakest_single / c.accuracy_all_up:.1%} vs {j.weakest_single / j.accuracy_all_up:.1%} of all-up"
        )
    return rows
