"""NSGA-II search: candidates, state and resume with an injected evaluator; one slow real search."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from factories import make_family

from melplan.cli import main
from melplan.core.catalog import Combiner, Family, Upstream, load_catalog, nonempty_subsets, save_family, subset_key
from melplan.core.errors import InputError, TrainingError
from melplan.pareto import search as S

REF_PARAMS = 1_000_000
BLOCK_PARAMS = {1: 900, 2: 2_400, 3: 19_000, 4: 66_000, 5: 150_000, 6: 260_000, 7: 400_000}


def synthetic_family(c: S.Candidate, settings: S.SearchSettings) -> Family:
    """A deterministic stand-in for training: bigger prefixes are more accurate, combiners add a
    little, cnn a bit more, λ_exit far from 2 costs a little."""
    names = [f"u{i + 1}" for i in range(c.n)]
    ups = tuple(
        Upstream(
            name=n,
            blocks=b,
            params=BLOCK_PARAMS[b],
            macs=BLOCK_PARAMS[b] * 25,
            weight_bytes=4 * BLOCK_PARAMS[b],
            feature_bytes=256,
        )
        for n, b in zip(names, c.blocks)
    )
    boost = {"fc": 0.01, "cnn": 0.02, "shared": 0.015}[c.combiner]
    cp = {"fc": 2_000, "cnn": 40_000, "shared": 20_000}[c.combiner]
    subsets = [s for s in nonempty_subsets(names) if len(s) > 1]
    if c.combiner == "shared":
        combs = (
            (
                Combiner(
                    subset=tuple(names),
                    serves=tuple(subsets),
                    name="shared",
                    kind="shared",
                    params=cp,
                    macs=cp,
                    weight_bytes=4 * cp,
                ),
            )
            if subsets
            else ()
        )
    else:
        combs = tuple(Combiner(subset=s, kind=c.combiner, params=cp, macs=cp, weight_bytes=4 * cp) for s in subsets)
    acc = {}
    for s in nonempty_subsets(names):
        b = max(c.blocks[names.index(n)] for n in s)
        a = 0.55 + 0.05 * b + boost * (len(s) - 1) - 0.005 * abs(c.lambda_exit - 2)
        if c.lambda_subsets is not None and 1 < len(s) < c.n:
            a += 0.002 * c.lambda_subsets
        acc[subset_key(s)] = round(min(a, 0.99), 4)
    return Family(
        id=settings.family_id(c),
        dataset={"name": settings.dataset, "num_classes": 10},
        base="efficientnet_b0",
        training={"lambdas": c.lambdas(), "epochs": settings.epochs},
        upstreams=ups,
        combiners=combs,
        accuracy=acc,
        reference={"id": "ref-full", "accuracy": 0.93, "params": REF_PARAMS, "macs": REF_PARAMS * 25},
        extra={"role": "mel"},
    )


class Recorder:
    """Counts calls; optionally interrupts (KeyboardInterrupt) or fails (TrainingError) on chosen calls."""

    def __init__(
        self, settings: S.SearchSettings, *, interrupt_after: int | None = None, fail_keys: set[str] = frozenset()
    ) -> None:
        self.settings = settings
        self.calls: list[str] = []
        self.interrupt_after = interrupt_after
        self.fail_keys = fail_keys

    def __call__(self, c: S.Candidate) -> Family:
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(c.key)
        if c.key in self.fail_keys:
            raise TrainingError("the loss became nan", field="lr", fix="lower it")
        return synthetic_family(c, self.settings)


def settings(**kw) -> S.SearchSettings:
    base = dict(dataset="test", pop_size=4, space=S.SearchSpace(max_upstreams=3, min_blocks=2, max_blocks=6))
    base.update(kw)
    return S.SearchSettings(**base)


@pytest.fixture
def hand_made(tmp_path):
    root = tmp_path / "hand"
    for n, seed in [(2, 1), (2, 2), (3, 3), (1, 4)]:
        save_family(make_family(n, seed=seed, fid=f"hand-n{n}-s{seed}"), root)
    ref = make_family(1, seed=9, fid="ref-full")
    save_family(
        replace(
            ref,
            accuracy={"u1": 0.93},
            extra={"role": "reference"},
            reference={"id": "ref-full", "accuracy": 0.93, "params": REF_PARAMS, "macs": ref.macs},
        ),
        root,
    )
    return root


def state_keys(out: Path) -> list[str]:
    return [e["key"] for e in json.loads((out / S.STATE_FILE).read_text())["evaluations"]]


# -- candidates and space --------------------------------------------------------------------


def test_decode_canonicalises_and_drops_unused_variables():
    sp = S.SearchSpace(max_upstreams=4)
    x = {
        "n_upstreams": 2,
        "blocks_u1": 3,
        "blocks_u2": 6,
        "blocks_u3": 5,
        "blocks_u4": 2,
        "combiner": "cnn",
        "lambda_exit": 2.0,
        "lambda_subsets": 0.5,
    }
    c = sp.decode(x)
    assert c == S.Candidate((6, 3), "cnn", 2.0, None)
    assert sp.decode({**x, "blocks_u1": 6, "blocks_u2": 3, "blocks_u4": 7, "lambda_subsets": 2.0}) == c
    assert c.lambdas() == {"u1": 2.0, "u2": 2.0, "u1+u2": 1.0}
    c3 = sp.decode({**x, "n_upstreams": 3})
    assert c3.blocks == (6, 5, 3) and c3.lambda_subsets == 0.5
    assert c3.lambdas() == {"u1": 2.0, "u2": 2.0, "u3": 2.0, "u1+u2": 0.5, "u1+u3": 0.5, "u2+u3": 0.5, "u1+u2+u3": 1.0}
    assert S.Candidate.from_dict(c3.to_dict()) == c3


def test_space_size_matches_enumeration():
    sp = S.SearchSpace(
        max_upstreams=3,
        min_blocks=2,
        max_blocks=4,
        combiners=("fc", "shared"),
        exit_weights=(1.0, 2.0),
        subset_weights=(0.5, 1.0),
    )
    distinct = set()
    for n, b1, b2, b3, comb, le, ls in itertools.product(
        (2, 3), range(2, 5), range(2, 5), range(2, 5), sp.combiners, sp.exit_weights, sp.subset_weights
    ):
        distinct.add(
            sp.decode(
                {
                    "n_upstreams": n,
                    "blocks_u1": b1,
                    "blocks_u2": b2,
                    "blocks_u3": b3,
                    "combiner": comb,
                    "lambda_exit": le,
                    "lambda_subsets": ls,
                }
            ).key
        )
    assert sp.size() == len(distinct)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"max_upstreams": 5}, "--max-upstreams"),
        ({"min_blocks": 5, "max_blocks": 3}, "--blocks"),
        ({"combiners": ("fc", "mlp")}, "--combiners"),
        ({"exit_weights": (0.0, 1.0)}, "exit_weights"),
    ],
)
def test_bad_space_is_input_error_at_construction(kwargs, field):
    with pytest.raises(InputError) as exc:
        S.SearchSpace(**kwargs)
    assert exc.value.field == field
    good = S.SearchSpace()
    with pytest.raises(InputError) as exc:  # replace() builds a new object: validated too
        replace(good, **kwargs)
    assert exc.value.field == field


def test_family_id_names_the_budget():
    s = settings(epochs=3, train_limit=500, seed=7)
    c = S.Candidate((5, 4), "fc", 0.5)
    assert s.family_id(c) == "srch-test-effb0-u2-b5b4-fc-x0p5-e3-t500-s7"
    assert (
        replace(s, batch_size=32, test_limit=100, finetune_epochs=2).family_id(c)
        == "srch-test-effb0-u2-b5b4-fc-x0p5-e3f2-t500-v100-bs32-s7"
    )


def test_missing_hand_made_catalog_is_an_error_but_other_datasets_are_not(tmp_path, hand_made):
    st = settings()
    with pytest.raises(InputError, match="does not exist"):
        S.run_search(
            st, budget=1, out_dir=tmp_path / "a", catalog_dir=tmp_path / "nope", evaluate=Recorder(st), plot=False
        )
    res = S.run_search(
        replace(st, dataset="other"),
        budget=1,
        out_dir=tmp_path / "b",
        catalog_dir=hand_made,
        evaluate=Recorder(replace(st, dataset="other")),
        plot=False,
    )
    assert res.before is None and res.hv_before == 0.0


# -- running, budget and resume --------------------------------------------------------------


def test_search_evaluates_budget_distinct_candidates_and_writes_entries(tmp_path, hand_made):
    st = settings()
    rec = Recorder(st)
    out = tmp_path / "run"
    res = S.run_search(st, budget=9, out_dir=out, catalog_dir=hand_made, evaluate=rec, plot=False)
    assert len(rec.calls) == 9 == len(set(rec.calls)) == len(res.evaluations)
    assert "budget" in res.stop_reason
    cat = load_catalog(out / "catalog")
    assert sorted(cat.ids()) == sorted(res.searched_ids) and len(cat) == 9
    assert res.before is not None and {r.id for r in res.before.rows} >= {"hand-n2-s1", "ref-full"}
    assert res.hv_after >= res.hv_before > 0
    # front after = non-dominated among hand-made + searched, on one normalisation
    assert res.after.normalisation == res.before.normalisation
    data = json.loads((out / S.RESULT_FILE).read_text())
    assert data["hypervolume"]["gain"] == pytest.approx(res.hv_after - res.hv_before)
    assert len(data["evaluations"]) == 9


def test_interrupted_search_resumes_without_reevaluating(tmp_path):
    st = settings(seed=3)
    straight = tmp_path / "straight"
    S.run_search(st, budget=12, out_dir=straight, evaluate=Recorder(st), plot=False)

    out = tmp_path / "resumed"
    first = Recorder(st, interrupt_after=5)
    with pytest.raises(KeyboardInterrupt):
        S.run_search(st, budget=12, out_dir=out, evaluate=first, plot=False)
    assert state_keys(out) == first.calls and len(first.calls) == 5  # every finished point persisted

    second = Recorder(st)
    res = S.run_search(st, budget=12, out_dir=out, evaluate=second, plot=False)
    assert not set(second.calls) & set(first.calls)  # nothing evaluated twice
    assert len(second.calls) == 7 and res.trained == 7 and res.reused >= 5
    assert state_keys(out) == state_keys(straight)  # same search as without the stop

    third = Recorder(st)
    again = S.run_search(st, budget=12, out_dir=out, evaluate=third, plot=False)
    assert third.calls == [] and again.trained == 0 and len(again.evaluations) == 12


def test_budget_counts_across_runs(tmp_path):
    st = settings(seed=1)
    out = tmp_path / "r"
    S.run_search(st, budget=4, out_dir=out, evaluate=Recorder(st), plot=False)
    rec = Recorder(st)
    res = S.run_search(st, budget=10, out_dir=out, evaluate=rec, plot=False)
    assert len(rec.calls) == 6 and len(res.evaluations) == 10


def test_failed_training_is_kept_as_infeasible_and_not_retried(tmp_path):
    st = settings(seed=2)
    probe = Recorder(st)
    S.run_search(st, budget=3, out_dir=tmp_path / "probe", evaluate=probe, plot=False)
    bad = probe.calls[1]
    rec = Recorder(st, fail_keys={bad})
    out = tmp_path / "r"
    res = S.run_search(st, budget=8, out_dir=out, evaluate=rec, plot=False)
    failed = [e for e in res.evaluations if not e.ok]
    assert [e.key for e in failed] == [bad] and "nan" in failed[0].error
    assert bad not in {r.id for r in res.after.rows} and len(res.after.rows) == 7
    again = Recorder(st)
    S.run_search(st, budget=8, out_dir=out, evaluate=again, plot=False)
    assert again.calls == []


def test_state_from_other_settings_is_refused(tmp_path):
    st = settings()
    S.run_search(st, budget=2, out_dir=tmp_path, evaluate=Recorder(st), plot=False)
    with pytest.raises(S.SearchStateError) as exc:
        S.run_search(replace(st, epochs=2), budget=2, out_dir=tmp_path, evaluate=Recorder(st), plot=False)
    assert exc.value.field == "settings.epochs" and exc.value.exit_code == 2
    (tmp_path / S.STATE_FILE).write_text("{not json")
    with pytest.raises(S.SearchStateError, match="not valid JSON"):
        S.run_search(st, budget=2, out_dir=tmp_path, evaluate=Recorder(st), plot=False)


def test_missing_catalog_entry_is_restored_from_the_state(tmp_path):
    st = settings()
    res = S.run_search(st, budget=3, out_dir=tmp_path, evaluate=Recorder(st), plot=False)
    victim = tmp_path / "catalog" / f"{res.searched_ids[0]}.json"
    victim.unlink()
    S.run_search(st, budget=3, out_dir=tmp_path, evaluate=Recorder(st), plot=False)
    assert victim.exists()


def test_small_space_is_exhausted_then_stops(tmp_path):
    sp = S.SearchSpace(max_upstreams=2, min_blocks=3, max_blocks=3, exit_weights=(1.0,))
    st = settings(space=sp)
    rec = Recorder(st)
    res = S.run_search(st, budget=50, out_dir=tmp_path, evaluate=rec, plot=False)
    assert sp.size() == 3 and sorted(rec.calls) == ["u2-b3b3-cnn-x1", "u2-b3b3-fc-x1", "u2-b3b3-shared-x1"]
    assert res.stop_reason == "every one of the 3 candidates of the space is evaluated"


def test_search_that_proposes_nothing_new_stops(tmp_path):
    """NSGA-II's integer operators rarely leave a 2..3 range's corner: the search must stop, not spin."""
    sp = S.SearchSpace(max_upstreams=2, min_blocks=2, max_blocks=3, combiners=("fc",), exit_weights=(1.0,))
    st = settings(space=sp)
    rec = Recorder(st)
    res = S.run_search(st, budget=50, out_dir=tmp_path, evaluate=rec, plot=False, max_stale_generations=4)
    assert len(rec.calls) == len(set(rec.calls)) <= 3
    assert "every one" in res.stop_reason or "4 generations in a row" in res.stop_reason


def test_plot_of_searched_against_hand_made(tmp_path, hand_made):
    st = settings()
    res = S.run_search(st, budget=6, out_dir=tmp_path, catalog_dir=hand_made, evaluate=Recorder(st))
    png = Path(res.plot_path)
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000


# -- CLI -------------------------------------------------------------------------------------


def test_cli_search_with_a_stand_in_evaluator(tmp_path, hand_made, monkeypatch):
    made = []

    def fake_train_evaluator(st, **kw):
        made.append(kw["add_to"])
        return Recorder(st)

    monkeypatch.setattr(S, "train_evaluator", fake_train_evaluator)
    args = [
        "search",
        "--budget",
        "5",
        "--seed",
        "0",
        "--dataset",
        "mnist5k",
        "--catalog",
        str(hand_made),
        "--out-dir",
        str(tmp_path / "o"),
        "--no-plot",
        "--pop-size",
        "4",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "hypervolume" in r.output and "gain" in r.output and "[5/5]" in r.output
    assert made == [tmp_path / "o" / "catalog"]
    r = CliRunner().invoke(main, args + ["--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{") :])
    assert data["trained_this_run"] == 0 and len(data["evaluations"]) == 5


def test_cli_interrupt_says_how_to_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "train_evaluator", lambda st, **kw: Recorder(st, interrupt_after=2))
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["search", "--budget", "5", "--out-dir", str(out), "--no-plot"])
    assert r.exit_code == 130, r.output
    assert "interrupted: 2 evaluation(s) are saved" in r.output and "Traceback" not in r.output
    assert len(state_keys(out)) == 2


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--blocks", "6-2"], "--blocks"),
        (["--blocks", "two"], "--blocks"),
        (["--combiners", "fc,mlp"], "--combiners"),
        (["--budget", "0"], "--budget"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, extra, needle):
    args = ["search", "--budget", "3", "--out-dir", str(tmp_path), "--no-plot", *extra]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_subprocess_refuses_bad_space_quickly(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "melplan", "search", "--budget", "2", "--blocks", "9-2", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 2 and "--blocks" in out.stderr and "Traceback" not in out.stderr


# -- recipe ----------------------------------------------------------------------------------

ROOT = Path(__file__).parent.parent
SWEEP = ROOT / "sweeps" / "fashion-mnist.yaml"


def test_recipe_is_part_of_the_state_and_the_ids(tmp_path):
    st = settings(recipe={"lr": 0.003, "pretrained": True})
    res = S.run_search(st, budget=2, out_dir=tmp_path, evaluate=Recorder(st), plot=False)
    state = json.loads((tmp_path / S.STATE_FILE).read_text())
    assert state["settings"]["recipe"] == {"lr": 0.003, "pretrained": True}
    assert all(i.endswith(f"-r{st.recipe_digest()}-s0") for i in res.searched_ids)
    other = replace(st, recipe={"lr": 0.001, "pretrained": True})
    assert other.family_id(S.Candidate((5, 4), "fc", 1.0)) != st.family_id(S.Candidate((5, 4), "fc", 1.0))
    with pytest.raises(S.SearchStateError) as exc:  # a changed recipe trains other candidates: refused
        S.run_search(other, budget=3, out_dir=tmp_path, evaluate=Recorder(other), plot=False)
    assert exc.value.field == "settings.recipe" and "0.001" in str(exc.value)
    plain = replace(st, recipe={})  # without the recipe: refused too (the state has one, this run none)
    with pytest.raises(S.SearchStateError) as exc:
        S.run_search(plain, budget=3, out_dir=tmp_path, evaluate=Recorder(plain), plot=False)
    assert exc.value.field == "settings.recipe"
    assert "recipe" not in plain.to_dict()  # states written before recipes existed still resume
    again = Recorder(st)
    S.run_search(st, budget=3, out_dir=tmp_path, evaluate=again, plot=False)
    assert len(again.calls) == 1  # the same recipe resumes


def test_recipe_may_not_set_what_the_search_decides():
    for key in ("blocks", "combiner", "lambdas", "epochs", "base"):
        with pytest.raises(InputError) as exc:
            settings(recipe={key: 1})
        assert exc.value.field == f"recipe.{key}"


@pytest.mark.torch
def test_recipe_from_the_sweep_file_reaches_the_family_spec(tmp_path, hand_made, monkeypatch):
    """`--recipe sweeps/fashion-mnist.yaml` trains every candidate with the sweep's defaults, except the
    options given on the command line; checked on the specs the training engine receives."""
    import yaml

    import melplan.train.trainer as T

    seen = []

    def recording_train_family(spec, **kw):
        seen.append(spec)
        c = S.Candidate(spec.blocks, spec.combiner, spec.lambdas["u1"], None)
        fam = synthetic_family(c, S.SearchSettings(dataset=spec.dataset, epochs=spec.epochs))
        fam = replace(fam, id=spec.family_id)
        save_family(fam, kw["catalog_dir"])
        return fam

    monkeypatch.setattr(T, "train_family", recording_train_family)
    out = tmp_path / "o"
    args = ["search", "--recipe", str(SWEEP), "--epochs", "2", "--train-limit", "1200", "--budget", "3"]
    args += ["--max-upstreams", "2", "--blocks", "4-7", "--pop-size", "4", "--out-dir", str(out), "--no-plot"]
    args += ["--catalog", str(hand_made)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    defaults = yaml.safe_load(SWEEP.read_text())["defaults"]  # the oracle: the file itself
    assert len(seen) == 3
    for spec in seen:
        assert spec.epochs == 2 and spec.train_limit == 1200  # given on the command line
        for key in ("dataset", "base", "pretrained", "lr", "val_fraction", "split_seed", "patience", "seed"):
            assert getattr(spec, key) == defaults[key], key
        assert spec.batch_size == defaults["batch_size"] and spec.finetune_epochs == defaults["finetune_epochs"]
        # output stride 16 reaches the spec; it changes (and is recorded for) only upstreams of 7+ blocks
        assert spec.output_stride == (16 if max(spec.blocks) >= 7 else None)
    state = json.loads((out / S.STATE_FILE).read_text())["settings"]
    assert state["epochs"] == 2 and state["dataset"] == "fashion-mnist" and state["base"] == "efficientnet_lite0"
    assert state["recipe"]["output_stride"] == 16 and state["recipe"]["pretrained"] is True
    assert json.loads((out / S.RESULT_FILE).read_text())["recipe_file"] == str(SWEEP)
    # a resume with another recipe setting (here: more epochs) is refused, exit 2, nothing trained
    r = CliRunner().invoke(main, [*args[:4], "3", *args[5:]])
    assert r.exit_code == 2 and "settings.epochs" in r.output and len(seen) == 3, r.output


@pytest.mark.torch
@pytest.mark.parametrize(
    "text,field",
    [
        (None, None),  # no such file
        ("families: []\n", "defaults"),
        ("defaults: {lr: 0.003, blocks: [5, 5]}\nfamilies: []\n", "defaults.blocks"),
        ("defaults: {pretrained: 'yes'}\nfamilies: []\n", "defaults.pretrained"),
        ("defaults: {val_fraction: 0.7}\nfamilies: []\n", "defaults.val_fraction"),
        ("defaults: {lr: 0}\nfamilies: []\n", "defaults.lr"),
        ("defaults: {output_stride: 8, base: efficientnet_lite0}\nfamilies: []\n", "defaults.output_stride"),
        ("defaults: {learning_rate: 0.1}\nfamilies: []\n", "defaults.learning_rate"),
        ("defaults: {lr: 0.003}\nfamilies: [{blocks: many}]\n", "families[0].blocks"),
    ],
)
def test_bad_recipe_file_is_one_paragraph_exit_2(tmp_path, text, field):
    path = tmp_path / "recipe.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError) as exc:
        S.load_recipe(path)
    assert exc.value.file == str(path) and (field is None or exc.value.field == field), exc.value
    r = CliRunner().invoke(main, ["search", "--recipe", str(path), "--budget", "2", "--out-dir", str(tmp_path / "o")])
    assert r.exit_code == 2 and str(path) in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.torch
def test_space_the_recipe_base_cannot_build_is_refused_before_training(tmp_path, monkeypatch):
    import melplan.train.trainer as T

    monkeypatch.setattr(T, "train_family", lambda spec, **kw: pytest.fail("trained"))
    r = CliRunner().invoke(
        main, ["search", "--recipe", str(SWEEP), "--blocks", "2-12", "--budget", "2", "--out-dir", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "blocks" in r.output and "1..9" in r.output, r.output
    assert not (tmp_path / "o" / S.STATE_FILE).exists()


# -- the real thing --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.torch
def test_real_search_trains_writes_entries_and_resumes(tmp_path, monkeypatch):
    """Tiny budget on a tiny MNIST-5k subset: trains with melplan.train.trainer, writes catalog entries,
    and a rerun with a larger budget trains only the new candidates."""
    import melplan.train.trainer as T

    calls = []
    real = T.train_family

    def counting(spec, **kw):
        calls.append(spec.family_id)
        return real(spec, **kw)

    monkeypatch.setattr(T, "train_family", counting)
    st = S.SearchSettings(
        dataset="mnist5k",
        epochs=1,
        finetune_epochs=1,
        train_limit=256,
        test_limit=128,
        batch_size=64,
        pop_size=2,
        seed=0,
        space=S.SearchSpace(max_upstreams=2, min_blocks=2, max_blocks=3, combiners=("fc",)),
    )
    out = tmp_path / "search"
    first = S.run_search(st, budget=2, out_dir=out, device="cpu", plot=False)
    assert len(calls) == 2 and first.trained == 2
    entries = load_catalog(out / "catalog")
    assert sorted(entries.ids()) == sorted(first.searched_ids)
    for f in entries:
        assert f.dataset["name"] == "mnist5k" and f.training["epochs"] == 1 and 0.0 <= f.accuracy_all_up <= 1.0
    second = S.run_search(st, budget=3, out_dir=out, device="cpu")
    assert len(calls) == 3 and second.trained == 1 and len(second.evaluations) == 3
    assert len(load_catalog(out / "catalog")) == 3
    assert Path(second.plot_path).stat().st_size > 0
