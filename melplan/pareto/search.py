"""NSGA-II search over MEL families that have not been trained yet (pymoo, mixed variables).

Decision variables (see :class:`SearchSpace`):

* ``n_upstreams`` in ``min_upstreams..max_upstreams`` (categorical);
* ``blocks_u1 .. blocks_uN``: blocks of the base network per upstream (integers); the blocks of a
  candidate are sorted largest first, so permutations of one family are one candidate;
* ``combiner``: ``fc``, ``cnn`` or ``shared``;
* ``lambda_exit``: the loss weight of every upstream's own exit, with the all-upstream combiner at
  weight 1; ``lambda_subsets``: the weight of the combiners of proper subsets (3+ upstreams only).

Each evaluation trains the candidate with the training engine (``melplan.train.trainer``) at the stated
budget (epochs, samples), writes its catalog entry, and scores it on the same objectives as
``melplan pareto``.  Everything is minimised; failures of training (``TrainingError``) are kept as
infeasible points (constraint ``G = 1``) so NSGA-II moves away from them.

Resume: every finished evaluation is written at once (atomically) to ``search-state.json`` in the
output folder, with the settings that produced it.  A rerun with the same settings replays NSGA-II
from the same seed; the algorithm's random stream is its own (pymoo's ``random_state``), so it asks
the same candidates in the same order, and those already in the state are answered from disk.  Only
candidates never evaluated are trained; ``--budget`` counts evaluations across all runs.

Recipe: ``load_recipe`` takes the ``defaults:`` of a sweep file (``sweeps/fashion-mnist.yaml``), so the
candidates train under the same recipe as the hand-made catalog (base, pretrained prefixes, output
stride, learning rate, validation split, patience ...).  The fields the settings hold (dataset, base,
epochs, ...) come from it unless given explicitly; every other field is kept in ``SearchSettings.recipe``
and passed to each candidate's ``FamilySpec``.  Both are part of the settings a state is resumed with.

The evaluation function is injectable (:func:`run_search` ``evaluate=``), which is how the fast
tests run a deterministic search without training.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from melplan.core.catalog import Family, load_catalog, nonempty_subsets, save_family, subset_key
from melplan.core.errors import EmptyCatalogError, InputError, SearchStateError, TrainingError
from melplan.core.fileio import atomic_write_json
from melplan.pareto.front import (
    DEFAULT_OBJECTIVES,
    ParetoResult,
    find_reference,
    make_normalisation,
    pareto_table,
    parse_objectives,
)

STATE_SCHEMA = "melplan.search-state/v1"
RESULT_SCHEMA = "melplan.search/v1"
STATE_FILE = "search-state.json"
RESULT_FILE = "search-result.json"
PLOT_FILE = "front.png"
BASE_SHORT = {
    "efficientnet_b0": "effb0",
    "efficientnet_lite0": "lite0",
    "mobilenet_v3_small": "mnv3s",
    "resnet18": "r18",
}
COMBINER_KINDS = ("fc", "cnn", "shared")
# FamilySpec fields a recipe may not set: the search decides them per candidate
CANDIDATE_FIELDS = ("blocks", "combiner", "lambdas", "family_id", "role")
# FamilySpec fields held by SearchSettings itself (a recipe sets them unless an option is given)
SETTINGS_FIELDS = ("dataset", "base", "epochs", "finetune_epochs", "train_limit", "test_limit", "batch_size", "seed")


# -- the space -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """The mixed-variable space NSGA-II explores."""

    min_upstreams: int = 2
    max_upstreams: int = 3
    min_blocks: int = 2
    max_blocks: int = 6
    combiners: tuple[str, ...] = COMBINER_KINDS
    exit_weights: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    subset_weights: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises InputError naming the option to fix."""
        if not 2 <= self.min_upstreams <= self.max_upstreams <= 4:
            raise InputError(
                f"upstreams {self.min_upstreams}..{self.max_upstreams} is not within 2..4",
                field="--max-upstreams",
                fix="search 2 to 4 upstreams, e.g. --max-upstreams 3",
            )
        if not 1 <= self.min_blocks <= self.max_blocks:
            raise InputError(
                f"blocks {self.min_blocks}..{self.max_blocks} is not a range of at least 1",
                field="--blocks",
                fix="give MIN-MAX with 1 <= MIN <= MAX, e.g. --blocks 2-6",
            )
        bad = [c for c in self.combiners if c not in COMBINER_KINDS]
        if bad or not self.combiners or len(set(self.combiners)) != len(self.combiners):
            raise InputError(
                f"combiner kinds {list(self.combiners)} are not distinct kinds from {COMBINER_KINDS}",
                field="--combiners",
                fix="list some of fc, cnn, shared, e.g. --combiners fc,cnn",
            )
        for name, ws in (("exit_weights", self.exit_weights), ("subset_weights", self.subset_weights)):
            if not ws or any(not (w > 0 and math.isfinite(w)) for w in ws):
                raise InputError(f"{name} {list(ws)} must be positive numbers", field=name, fix="use weights > 0")

    def variables(self) -> dict[str, Any]:
        """pymoo variables, by name."""
        from pymoo.core.variable import Choice, Integer

        def ints(lo: int, hi: int):
            return Integer(bounds=(lo, hi)) if hi > lo else Choice(options=[lo])

        out: dict[str, Any] = {"n_upstreams": Choice(options=list(range(self.min_upstreams, self.max_upstreams + 1)))}
        for i in range(self.max_upstreams):
            out[f"blocks_u{i + 1}"] = ints(self.min_blocks, self.max_blocks)
        out["combiner"] = Choice(options=list(self.combiners))
        out["lambda_exit"] = Choice(options=list(self.exit_weights))
        if self.max_upstreams >= 3:
            out["lambda_subsets"] = Choice(options=list(self.subset_weights))
        return out

    def decode(self, x: Mapping[str, Any]) -> Candidate:
        """A point of the space to its canonical candidate (blocks sorted largest first, unused
        variables dropped)."""
        n = int(x["n_upstreams"])
        blocks = tuple(sorted((int(x[f"blocks_u{i + 1}"]) for i in range(n)), reverse=True))
        sub = float(x["lambda_subsets"]) if n >= 3 else None
        return Candidate(blocks, str(x["combiner"]), float(x["lambda_exit"]), sub)

    def size(self) -> int:
        """How many distinct candidates the space holds (after canonicalisation)."""
        blocks = self.max_blocks - self.min_blocks + 1
        total = 0
        for n in range(self.min_upstreams, self.max_upstreams + 1):
            multisets = math.comb(blocks + n - 1, n)
            total += (
                multisets * len(self.combiners) * len(self.exit_weights) * (len(self.subset_weights) if n >= 3 else 1)
            )
        return total

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Candidate:
    """One family to train: sizes, combiner kind and loss weights."""

    blocks: tuple[int, ...]
    combiner: str
    lambda_exit: float
    lambda_subsets: float | None = None

    @property
    def n(self) -> int:
        return len(self.blocks)

    def lambdas(self) -> dict[str, float]:
        """Loss weight per subset key: exits ``lambda_exit``, proper subsets ``lambda_subsets``, all 1."""
        names = [f"u{i + 1}" for i in range(self.n)]
        out = {}
        for s in nonempty_subsets(names):
            if len(s) == 1:
                out[subset_key(s)] = self.lambda_exit
            elif len(s) == self.n:
                out[subset_key(s)] = 1.0
            else:
                out[subset_key(s)] = float(self.lambda_subsets if self.lambda_subsets is not None else 1.0)
        return out

    @property
    def key(self) -> str:
        """Stable name of the candidate, the cache key of the search state."""
        text = f"u{self.n}-{''.join(f'b{b}' for b in self.blocks)}-{self.combiner}-x{_num(self.lambda_exit)}"
        if self.lambda_subsets is not None:
            text += f"-p{_num(self.lambda_subsets)}"
        return text

    def label(self) -> str:
        lam = f"λexit {self.lambda_exit:g}" + (
            f", subsets {self.lambda_subsets:g}" if self.lambda_subsets is not None else ""
        )
        return f"{'/'.join(f'b{b}' for b in self.blocks)} {self.combiner} ({lam})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": list(self.blocks),
            "combiner": self.combiner,
            "lambda_exit": self.lambda_exit,
            "lambda_subsets": self.lambda_subsets,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(
            tuple(int(b) for b in d["blocks"]),
            str(d["combiner"]),
            float(d["lambda_exit"]),
            None if d.get("lambda_subsets") is None else float(d["lambda_subsets"]),
        )


def _num(v: float) -> str:
    return f"{v:g}".replace(".", "p").replace("-", "m")


# -- settings, evaluations, state ------------------------------------------------------------


@dataclass(frozen=True)
class SearchSettings:
    """Everything that decides which candidates are asked and how each one is trained.

    A state file is only resumed with equal settings (the budget may differ).
    """

    dataset: str = "mnist5k"
    base: str = "efficientnet_b0"
    epochs: int = 1
    finetune_epochs: int = 1
    train_limit: int | None = None
    test_limit: int | None = None
    batch_size: int = 128
    seed: int = 0
    pop_size: int = 8
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    space: SearchSpace = field(default_factory=SearchSpace)
    # the other FamilySpec fields every candidate is trained with (lr, pretrained, output_stride,
    # val_fraction, split_seed, patience, ...); empty: FamilySpec's defaults
    recipe: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises InputError (bad numbers, space or objectives)."""
        self.space.validate()
        parse_objectives(list(self.objectives))
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(
                    f"{name} must be >= 1", field=f"--{name.replace('_', '-')}", fix="pass a positive number"
                )
        if self.finetune_epochs < 0:
            raise InputError("finetune epochs must be >= 0", field="--finetune-epochs", fix="pass 0 or more")
        for name in ("train_limit", "test_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(
                    f"{name} must be >= 1", field=f"--{name.replace('_', '-')}", fix="pass a positive number"
                )
        if self.pop_size < 2:
            raise InputError(
                "the population needs at least 2 members", field="--pop-size", fix="pass --pop-size 2 or more"
            )
        taken = sorted(set(self.recipe) & set(CANDIDATE_FIELDS + SETTINGS_FIELDS))
        if taken:
            raise InputError(
                f"recipe field(s) {taken} are decided by the search or its own settings",
                field=f"recipe.{taken[0]}",
                fix="leave them out of the recipe (sizes, combiner and lambdas are what the search explores)",
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objectives"] = list(self.objectives)
        d["space"] = self.space.to_dict()
        if self.recipe:
            d["recipe"] = dict(sorted(self.recipe.items()))
        else:
            d.pop("recipe")  # states written before recipes existed stay resumable
        return d

    def recipe_digest(self) -> str:
        """Short digest of the recipe (empty string without one): names it in the family ids."""
        if not self.recipe:
            return ""
        text = json.dumps(dict(self.recipe), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSettings:
        space = d.get("space", {})
        sp = SearchSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in space.items()})
        rest = {k: v for k, v in d.items() if k != "space"}
        rest["objectives"] = tuple(rest.get("objectives", DEFAULT_OBJECTIVES))
        return cls(space=sp, **rest)

    def family_id(self, c: Candidate) -> str:
        """Catalog id of a searched family: names the search, the candidate and the training budget
        (epochs, fine-tuning epochs, train and test samples, batch size when not the default, the
        recipe's digest when there is one, seed)."""
        base = BASE_SHORT.get(self.base, self.base.replace("_", ""))
        text = f"srch-{self.dataset}-{base}-{c.key}-e{self.epochs}"
        if self.finetune_epochs != 1:
            text += f"f{self.finetune_epochs}"
        if self.train_limit is not None:
            text += f"-t{self.train_limit}"
        if self.test_limit is not None:
            text += f"-v{self.test_limit}"
        if self.batch_size != 128:
            text += f"-bs{self.batch_size}"
        if self.recipe:
            text += f"-r{self.recipe_digest()}"
        return f"{text}-s{self.seed}"


@dataclass(frozen=True)
class Evaluation:
    """One finished evaluation, as persisted in the state file."""

    index: int
    key: str
    candidate: Candidate
    status: str  # "ok" or "failed"
    values: Mapping[str, float] | None  # natural objective values (ok only)
    family_id: str | None
    family: Mapping[str, Any] | None = field(default=None, repr=False)  # the catalog entry (ok only)
    error: str | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "key": self.key,
            "candidate": self.candidate.to_dict(),
            "status": self.status,
            "values": dict(self.values) if self.values is not None else None,
            "family_id": self.family_id,
            "error": self.error,
            "wall_s": round(self.wall_s, 3),
            "family": self.family,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evaluation:
        return cls(
            int(d["index"]),
            str(d["key"]),
            Candidate.from_dict(d["candidate"]),
            str(d["status"]),
            None if d.get("values") is None else {k: float(v) for k, v in d["values"].items()},
            d.get("family_id"),
            d.get("family"),
            d.get("error"),
            float(d.get("wall_s", 0.0)),
        )


def save_state(path: str | Path, settings: SearchSettings, evaluations: Sequence[Evaluation]) -> Path:
    """Write the state atomically (a reader sees the previous or the new state, never a torn one)."""
    return atomic_write_json(
        path,
        {"schema": STATE_SCHEMA, "settings": settings.to_dict(), "evaluations": [e.to_dict() for e in evaluations]},
    )


def load_state(path: str | Path, settings: SearchSettings) -> list[Evaluation]:
    """Evaluations of an earlier run with the same settings ([] when there is no state file).

    Raises:
        SearchStateError: unreadable file, other schema, or other settings (names the field).
    """
    path = Path(path)
    if not path.exists():
        return []
    fix = "rerun with the options of the run that wrote it, or pass another --out-dir to start afresh"
    from melplan.core.fileio import load_json_file

    data = load_json_file(
        path, error=SearchStateError, fix="delete it to start afresh (its evaluations' catalog entries stay)"
    )
    if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
        raise SearchStateError(f"not a {STATE_SCHEMA} file", file=str(path), field="schema", fix=fix)
    theirs, ours = data.get("settings", {}), settings.to_dict()
    if not isinstance(theirs, dict):
        raise SearchStateError("settings is not a mapping", file=str(path), field="settings", fix=fix)
    for key in [*ours, *sorted(set(theirs) - set(ours))]:
        if theirs.get(key) != ours.get(key):
            raise SearchStateError(
                f"the state was written with {key} = {theirs.get(key)!r}, this run has {ours.get(key)!r}",
                file=str(path),
                field=f"settings.{key}",
                fix=fix,
            )
    try:
        evals = [Evaluation.from_dict(e) for e in data.get("evaluations", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise SearchStateError(
            f"malformed evaluation ({exc})", file=str(path), field="evaluations", fix="delete the file to start afresh"
        ) from None
    return evals


# -- recipe ----------------------------------------------------------------------------------


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The ``defaults:`` of a sweep file as a recipe: FamilySpec fields, type- and range-checked by the
    sweep reader (``melplan.train.trainer.sweep_specs`` reads the whole file, then its entry check
    reads the defaults alone).  Fields the search decides (blocks, combiner, lambdas, id, role) are
    refused; the values are checked as the training engine checks a family's.  Imports torch.

    Raises:
        InputError: unreadable file, not a sweep file, or a bad default (names the file and field).
    """
    from melplan.core.fileio import load_yaml_file
    from melplan.train.trainer import FamilySpec, _sweep_entry, sweep_specs, validate_spec

    sweep_specs(path)  # the file is a well-formed sweep file (every family checked too)
    data = load_yaml_file(path, error=InputError, fix="check the path of the sweep file")
    defaults = dict(data.get("defaults") or {})
    if not defaults:
        raise InputError(
            "the sweep file has no 'defaults:' to take the recipe from",
            file=str(path),
            field="defaults",
            fix="give a sweep file whose defaults hold the recipe (see sweeps/fashion-mnist.yaml)",
        )
    unknown = sorted(set(defaults) - set(FamilySpec.__dataclass_fields__) - {"save_weights"})
    if unknown:
        raise InputError(
            f"unknown key(s) {unknown} in the defaults",
            file=str(path),
            field=f"defaults.{unknown[0]}",
            fix=f"use keys from: {', '.join(sorted(FamilySpec.__dataclass_fields__))}",
        )
    taken = sorted(set(defaults) & set(CANDIDATE_FIELDS))
    if taken:
        raise InputError(
            f"the defaults set {taken}, which the search decides for each candidate",
            file=str(path),
            field=f"defaults.{taken[0]}",
            fix="drop them from the defaults (put them on the families instead)",
        )
    if "save_weights" in defaults:
        defaults.pop("save_weights")  # a sweep's output choice, not part of how a model is trained
    try:
        spec, _ = _sweep_entry({**defaults, "blocks": [1]})
        validate_spec(spec)  # ranges the entry check leaves to the engine (lr > 0, val_fraction <= 0.5, ...)
    except InputError as exc:
        raise InputError(
            exc.message, file=str(path), field=f"defaults.{exc.field}" if exc.field else "defaults", fix=exc.fix
        ) from None
    return defaults


def settings_with_recipe(recipe: Mapping[str, Any], explicit: Mapping[str, Any], **rest: Any) -> SearchSettings:
    """Settings from a recipe (``load_recipe``) with ``explicit`` options overriding it: the settings'
    own fields (dataset, base, epochs, ...) are taken from the recipe unless given explicitly, the
    others are kept as ``recipe``."""
    own = {k: v for k, v in recipe.items() if k in SETTINGS_FIELDS}
    other = {k: v for k, v in recipe.items() if k not in SETTINGS_FIELDS}
    return SearchSettings(**{**rest, **own, **explicit}, recipe=other)


def candidate_spec_fields(settings: SearchSettings, c: Candidate) -> dict[str, Any]:
    """The FamilySpec fields a candidate is trained with (recipe first, then the settings and the
    candidate, which it may not set)."""
    return {
        **dict(settings.recipe),
        "base": settings.base,
        "blocks": c.blocks,
        "combiner": c.combiner,
        "lambdas": c.lambdas(),
        "epochs": settings.epochs,
        "dataset": settings.dataset,
        "train_limit": settings.train_limit,
        "test_limit": settings.test_limit,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "finetune_epochs": settings.finetune_epochs,
        "family_id": settings.family_id(c),
    }


# -- evaluators ------------------------------------------------------------------------------

Evaluator = Callable[[Candidate], Family]


def train_evaluator(
    settings: SearchSettings,
    *,
    add_to: str | Path,
    data_root: str | Path | None = None,
    device: str | None = None,
    reference: Mapping[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Evaluator:
    """An evaluator that trains each candidate with ``melplan.train.trainer.train_family`` into ``add_to``.

    When the entry comes back without a ``reference`` block (``add_to`` holds no reference model)
    ``reference`` is filled in, so the entry compares with the hand-made catalog.

    The largest candidate of the space is checked (``validate_spec``) here, before anything trains,
    so a recipe or space the training engine refuses stops the search at once (InputError).
    """
    # torch is imported here, not at module load
    from melplan.train.trainer import FamilySpec, train_family, validate_spec

    sp = settings.space
    largest = Candidate(
        (sp.max_blocks,) * sp.max_upstreams, sp.combiners[0], 1.0, 1.0 if sp.max_upstreams >= 3 else None
    )
    try:
        validate_spec(FamilySpec(**candidate_spec_fields(settings, largest)))
    except InputError as exc:
        if exc.field != "blocks":
            raise
        raise InputError(
            f"the space reaches {sp.max_blocks} blocks per upstream: {exc.message}", field="--blocks", fix=exc.fix
        ) from None

    accepted = set(inspect.signature(train_family).parameters)
    extra: dict[str, Any] = {}
    if checkpoint_dir is not None and "checkpoint_dir" in accepted:
        extra["checkpoint_dir"] = str(checkpoint_dir)
    if log is not None and "log" in accepted:
        extra["log"] = log

    def evaluate(c: Candidate) -> Family:
        spec = FamilySpec(**candidate_spec_fields(settings, c))
        fam = train_family(
            spec, catalog_dir=add_to, data_root=data_root, device=device, progress=False, save_weights=False, **extra
        )
        if fam.reference is None and reference:
            fam = replace(fam, reference=dict(reference))
            save_family(fam, add_to)
        return fam

    return evaluate


# -- the search ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchResult:
    settings: SearchSettings
    budget: int
    evaluations: tuple[Evaluation, ...]
    trained: int  # evaluations run by this call
    reused: int  # candidates answered from the state by this call
    stop_reason: str
    before: ParetoResult | None  # hand-made families alone (None when there are none)
    after: ParetoResult  # hand-made + searched
    searched_ids: tuple[str, ...]
    state_path: str
    plot_path: str | None = None
    result_path: str | None = None
    recipe_file: str | None = None  # where settings.recipe was read from (provenance; the content counts)

    @property
    def hv_before(self) -> float:
        return self.before.hypervolume if self.before is not None else 0.0

    @property
    def hv_after(self) -> float:
        return self.after.hypervolume

    def to_dict(self) -> dict[str, Any]:
        front = self.after.front_ids
        return {
            "schema": RESULT_SCHEMA,
            "settings": self.settings.to_dict(),
            "recipe_file": self.recipe_file,
            "budget": self.budget,
            "stop_reason": self.stop_reason,
            "trained_this_run": self.trained,
            "reused_this_run": self.reused,
            "evaluations": [
                {k: v for k, v in e.to_dict().items() if k != "family"} | {"on_front": e.family_id in front}
                for e in self.evaluations
            ],
            "hypervolume": {
                "before": self.hv_before,
                "after": self.hv_after,
                "gain": self.hv_after - self.hv_before,
                **self.after.normalisation.to_dict(self.after.objectives),
            },
            "front": front,
            "searched_on_front": [i for i in front if i in set(self.searched_ids)],
            "hand_made": [] if self.before is None else [r.id for r in self.before.rows],
            "state": self.state_path,
            "plot": self.plot_path,
        }


def _make_problem(space: SearchSpace, n_obj: int, lookup: Callable[[Mapping[str, Any]], tuple[list[float], float]]):
    """The pymoo problem: objectives and the 'training succeeded' constraint come from ``lookup``
    (already evaluated candidates), so pymoo's own evaluator never trains anything."""
    import numpy as np
    from pymoo.core.problem import Problem

    class SearchProblem(Problem):
        def __init__(self) -> None:
            super().__init__(vars=space.variables(), n_obj=n_obj, n_ieq_constr=1)

        def _evaluate(self, X, out, *args, **kwargs):
            res = [lookup(x) for x in X]
            out["F"] = np.array([r[0] for r in res], dtype=float)
            out["G"] = np.array([[r[1]] for r in res], dtype=float)

    return SearchProblem()


def _hand_made(catalog_dir: str | Path | None, dataset: str, exclude: set[str]) -> list[Family]:
    if catalog_dir is None:
        return []
    try:
        cat = load_catalog(catalog_dir, dataset=dataset)
    except EmptyCatalogError:
        if Path(catalog_dir).is_dir():
            return []  # a catalog of other datasets: nothing to compare with
        raise
    return [f for f in cat if f.id not in exclude]


def run_search(
    settings: SearchSettings,
    *,
    budget: int,
    out_dir: str | Path,
    catalog_dir: str | Path | None = None,
    add_to: str | Path | None = None,
    evaluate: Evaluator | None = None,
    data_root: str | Path | None = None,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
    plot: bool = True,
    max_stale_generations: int = 10,
    recipe_file: str | Path | None = None,
) -> SearchResult:
    """Run (or resume) an NSGA-II search and return the fronts before and after.

    ``catalog_dir`` holds the hand-made families compared against (only ``settings.dataset``'s);
    trained entries go to ``add_to`` (default ``<out_dir>/catalog``).  ``evaluate`` replaces
    training (tests).  The search stops after ``budget`` evaluations in total (this and earlier
    runs), or after ``max_stale_generations`` generations that ask nothing new.

    Raises:
        InputError: bad settings or budget; SearchStateError: a state from other settings.
        DataError, TrainingError (other than per-candidate failures): from the training engine.
        KeyboardInterrupt: passes through; every finished evaluation is already in the state.
    """
    settings.validate()
    if budget < 1:
        raise InputError(f"budget must be >= 1, got {budget}", field="--budget", fix="pass the number of evaluations")
    out_dir = Path(out_dir)
    add_to = Path(add_to) if add_to is not None else out_dir / "catalog"
    state_path = out_dir / STATE_FILE
    say = progress or (lambda _msg: None)
    objectives = parse_objectives(list(settings.objectives))

    evaluations = load_state(state_path, settings)
    done = {e.key: e for e in evaluations}
    if evaluations:
        say(f"resuming: {len(evaluations)} evaluation(s) in {state_path}")
        _restore_entries(evaluations, add_to, say)
    searched = {e.family_id for e in evaluations if e.family_id}
    hand = _hand_made(catalog_dir, settings.dataset, searched | _searched_ids_in(add_to))
    ref = find_reference(hand)
    ref_block = (
        (
            dict(ref.family.reference or {})
            or {
                "id": ref.family.id,
                "accuracy": ref.family.accuracy_all_up,
                "params": ref.family.params,
                "macs": ref.family.macs,
            }
        )
        if ref.family is not None
        else (dict(ref.info) or None)
    )

    if evaluate is None:
        evaluate = train_evaluator(
            settings,
            add_to=add_to,
            data_root=data_root,
            device=device,
            reference=ref_block,
            checkpoint_dir=out_dir / "checkpoints",
            log=progress,  # the engine's per-epoch lines (validation accuracy, time)
        )

    worst = [1e9] * len(objectives)

    def lookup(x: Mapping[str, Any]) -> tuple[list[float], float]:
        e = done[settings.space.decode(x).key]
        if not e.ok or e.values is None:
            return worst, 1.0
        return [o.minimised(e.values[o.name]) for o in objectives], 0.0

    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.mixed import MixedVariableDuplicateElimination, MixedVariableMating, MixedVariableSampling
    from pymoo.termination.max_gen import MaximumGenerationTermination

    problem = _make_problem(settings.space, len(objectives), lookup)
    algorithm = NSGA2(
        pop_size=settings.pop_size,
        sampling=MixedVariableSampling(),
        mating=MixedVariableMating(eliminate_duplicates=MixedVariableDuplicateElimination()),
        eliminate_duplicates=MixedVariableDuplicateElimination(),
    )
    max_gen = 10_000
    algorithm.setup(problem, termination=MaximumGenerationTermination(max_gen), seed=settings.seed, verbose=False)
    space_size = settings.space.size()
    say(
        f"search space: {space_size} distinct candidates; budget {budget} evaluation(s), population "
        f"{settings.pop_size}, seed {settings.seed}"
    )

    trained = reused = stale = gen = 0
    stop_reason = ""
    while not stop_reason:
        gen += 1
        pop = algorithm.ask()
        if pop is None or len(pop) == 0:  # mating found no offspring that is not in the population
            stale += 1
            if stale >= max_stale_generations:
                stop_reason = f"{stale} generations in a row proposed no candidate that is not evaluated yet"
            continue
        new_here = 0
        for ind in pop:
            cand = settings.space.decode(ind.X)
            if cand.key in done:
                reused += 1
                continue
            if len(evaluations) >= budget:
                stop_reason = f"budget of {budget} evaluation(s) reached"
                break
            e = _evaluate_one(evaluate, cand, settings, objectives, len(evaluations))
            evaluations.append(e)
            done[cand.key] = e
            save_state(state_path, settings, evaluations)
            if e.ok and e.family is not None and not (add_to / f"{e.family_id}.json").exists():
                save_family(Family.from_dict(e.family), add_to)  # an injected evaluator may not write it
            trained += 1
            new_here += 1
            say(_progress_line(e, budget, objectives))
        if stop_reason:
            break
        algorithm.evaluator.eval(problem, pop)
        algorithm.tell(infills=pop)
        stale = 0 if new_here else stale + 1
        if len(done) >= space_size:
            stop_reason = f"every one of the {space_size} candidates of the space is evaluated"
        elif stale >= max_stale_generations:
            stop_reason = f"{stale} generations in a row proposed no candidate that is not evaluated yet"
        elif gen >= max_gen:
            stop_reason = f"{max_gen} generations"
    say(f"stopped: {stop_reason} ({trained} trained now, {reused} answered from the state)")

    result = _summarise(settings, budget, evaluations, trained, reused, stop_reason, hand, objectives, state_path)
    if plot and result.after.rows:
        from melplan.pareto.plot import plot_front

        groups = {r.id: ("searched" if r.id in set(result.searched_ids) else "hand-made") for r in result.after.rows}
        train_on = f" of {settings.train_limit:,} samples" if settings.train_limit else ""
        title = (
            f"NSGA-II search on {settings.dataset} (seed {settings.seed}, {len(evaluations)} evaluations, "
            f"{settings.epochs} epoch(s){train_on}): hypervolume {result.hv_before:.4f} -> {result.hv_after:.4f}"
        )
        path = plot_front(result.after, out_dir / PLOT_FILE, title=title, groups=groups, baseline=result.before)
        result = replace(result, plot_path=path)
    result = replace(
        result, result_path=str(out_dir / RESULT_FILE), recipe_file=None if recipe_file is None else str(recipe_file)
    )
    atomic_write_json(out_dir / RESULT_FILE, result.to_dict())
    return result


def _evaluate_one(evaluate: Evaluator, cand: Candidate, settings: SearchSettings, objectives, index: int) -> Evaluation:
    t0 = time.perf_counter()
    try:
        fam = evaluate(cand)
    except TrainingError as exc:
        return Evaluation(
            index, cand.key, cand, "failed", None, settings.family_id(cand), None, str(exc), time.perf_counter() - t0
        )
    values = {}
    for o in objectives:
        v = o.value(fam)
        if v is None or not math.isfinite(v):
            raise TrainingError(
                f"objective {o.name} is undefined for family {fam.id}",
                field="objectives",
                fix="search objectives that apply to families of 2+ upstreams",
            )
        values[o.name] = float(v)
    return Evaluation(index, cand.key, cand, "ok", values, fam.id, fam.to_dict(), None, time.perf_counter() - t0)


def _progress_line(e: Evaluation, budget: int, objectives) -> str:
    head = f"[{e.index + 1}/{budget}] {e.candidate.label()}"
    if not e.ok:
        return f"{head}: FAILED ({e.error}) after {e.wall_s:.1f} s"
    vals = ", ".join(
        f"{o.name} {e.values[o.name]:.4f}" if o.kind == "accuracy" else f"{o.name} {e.values[o.name]:,.0f}"
        for o in objectives
    )
    return f"{head}: {vals} ({e.wall_s:.1f} s) -> {e.family_id}"


def _restore_entries(evaluations: Sequence[Evaluation], add_to: Path, say: Callable[[str], None]) -> None:
    """Write back catalog entries of evaluated families whose file went missing."""
    for e in evaluations:
        if e.ok and e.family is not None and e.family_id and not (add_to / f"{e.family_id}.json").exists():
            save_family(Family.from_dict(e.family), add_to)
            say(f"restored the catalog entry of {e.family_id} from the state")


def _searched_ids_in(add_to: Path) -> set[str]:
    return {p.stem for p in add_to.glob("srch-*.json")} if add_to.exists() else set()


def _summarise(
    settings: SearchSettings,
    budget: int,
    evaluations: list[Evaluation],
    trained: int,
    reused: int,
    stop_reason: str,
    hand: list[Family],
    objectives,
    state_path: Path,
) -> SearchResult:
    searched = [Family.from_dict(e.family) for e in evaluations if e.ok and e.family is not None]
    union = list({f.id: f for f in hand + searched}.values())
    reference = find_reference(hand) if hand else find_reference(union)
    norm = make_normalisation(objectives, union or hand, reference)
    after = pareto_table(union, objectives, reference=reference, normalisation=norm, dataset=settings.dataset)
    before = (
        pareto_table(hand, objectives, reference=reference, normalisation=norm, dataset=settings.dataset)
        if hand
        else None
    )
    return SearchResult(
        settings,
        budget,
        tuple(evaluations),
        trained,
        reused,
        stop_reason,
        before,
        after,
        tuple(f.id for f in searched),
        str(state_path),
    )
