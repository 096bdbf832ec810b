"""Training MEL families on the user's image folder, spoken digits and sentences (torch; a few dozen samples)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from test_modal_data import FMNIST, ROOT, write_fmnist_folder  # noqa: E402

from melplan.cli import main  # noqa: E402
from melplan.core.catalog import load_catalog  # noqa: E402
from melplan.train.data import Batches, load_dataset  # noqa: E402
from melplan.train.trainer import FamilySpec, load_weights, train_family  # noqa: E402

pytestmark = pytest.mark.torch


def reevaluate(family, ds) -> dict[str, float]:
    """Accuracy of every subset recomputed from the shipped weights alone, sample by sample."""
    model = load_weights(family)
    hits: dict[str, int] = {}
    with torch.inference_mode():
        for x, y, _ in Batches(ds, ds.test, batch_size=7, shuffle=False, augment=False):
            out, _ = model(x)
            for k, v in out.items():
                hits[k] = hits.get(k, 0) + int((v.argmax(1) == y).sum())
    return {k: v / len(ds.test) for k, v in hits.items()}


def check_entry(fam, modality: str) -> None:
    assert fam.dataset["preprocessing"]["modality"] == modality
    model = load_weights(fam)
    for comp, (name, up) in zip(fam.upstreams, model.upstreams.items()):
        assert comp.name == name and comp.params == sum(p.numel() for p in up.parameters()) > 0
        assert comp.macs > 0 and comp.latency_ms["cpu"] > 0
    for comp in fam.combiners:
        assert comp.params > 0 and comp.macs > 0


@pytest.mark.skipif(not FMNIST.exists(), reason="dataset-fashion-mnist not installed")
def test_train_imagefolder_from_the_cli_writes_an_entry(tmp_path):
    data, cat = tmp_path / "images", tmp_path / "cat"
    write_fmnist_folder(data, per_class=15)
    r = CliRunner().invoke(
        main,
        ["train", "--dataset", "imagefolder", "--data-root", str(data), "--base", "resnet18", "--blocks", "1,2"]
        + ["--epochs", "1", "--finetune-epochs", "1", "--batch-size", "8", "--image-size", "24", "--catalog", str(cat)]
        + ["--checkpoint-dir", str(tmp_path / "ck"), "--save-weights", "--quiet", "--threads", "1"],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    fam = load_catalog(cat).families[0]
    assert fam.upstreams[0].extra.get("feature_shape", [0, 0, 0])[1:] == [6, 6]  # measured at 24x24: stem /4
    assert fam.dataset["name"] == "imagefolder" and fam.dataset["input_shape"] == [3, 24, 24]
    assert fam.dataset["classes"] == ["class0", "class1", "class7"]
    prep = fam.dataset["preprocessing"]
    assert (
        prep["size"] == prep["raw_size"] == [24, 24]
        and len(prep["mean"]) == 3
        and fam.dataset["split"]["kind"] == "seeded"
    )
    assert fam.training["augment"] == "random crop (pad 2)"
    check_entry(fam, "image")
    ds = load_dataset("imagefolder", data_root=data, image_size=24)
    assert reevaluate(fam, ds) == pytest.approx(dict(fam.accuracy), abs=1e-6)
    x, _, _ = next(iter(Batches(ds, ds.test, batch_size=4, shuffle=False, augment=False)))
    assert tuple(x.shape[1:]) == (3, 24, 24)


def test_train_imagefolder_wrong_base_for_the_modality_exits_2(tmp_path):
    r = CliRunner().invoke(
        main,
        ["train", "--dataset", "trec", "--base", "resnet18", "--blocks", "1", "--train-limit", "8"]
        + ["--catalog", str(tmp_path), "--quiet"],
    )
    assert r.exit_code == 2 and "textcnn" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize(
    "dataset,base,blocks,combiner,modality",
    [("fsdd", "dscnn", (2, 4, 6), "shared", "audio"), ("trec", "textcnn", (1, 3), "fc", "text")],
)
def test_tiny_audio_and_text_families_reload_to_their_accuracy(tmp_path, dataset, base, blocks, combiner, modality):
    spec = FamilySpec(
        base=base,
        blocks=blocks,
        combiner=combiner,
        dataset=dataset,
        epochs=1,
        train_limit=48,
        test_limit=30,
        batch_size=16,
        seed=0,
    )
    fam = train_family(spec, catalog_dir=tmp_path, save_weights=True)
    again = load_catalog(tmp_path).get(fam.id)
    assert set(again.accuracy) == {"+".join(s) for s in _subsets(len(blocks))}
    check_entry(again, modality)
    full = load_dataset(dataset)
    ds = load_dataset(dataset, train_limit=48, test_limit=30)
    assert torch.equal(ds.test.images, full.test.images[:30])
    assert reevaluate(again, ds) == pytest.approx(dict(again.accuracy), abs=1e-6)
    payload = json.loads((tmp_path / f"{fam.id}.json").read_text())
    assert payload["dataset"]["source"].startswith("data/")  # no machine-specific path in the entry
    assert (ROOT / payload["dataset"]["source"].split(" ")[0]).exists()


def _subsets(n: int):
    import itertools

    names = [f"u{i + 1}" for i in range(n)]
    return [c for r in range(1, n + 1) for c in itertools.combinations(names, r)]


def test_same_seed_same_initialisation_whether_or_not_shapes_were_cached():
    from melplan.train.models import build_mel
    from melplan.train.models.mel import _spatial

    def build():
        torch.manual_seed(0)
        return build_mel(base="dscnn", blocks=(2, 3), combiner="fc", num_classes=10, input_shape=(1, 40, 61))

    _spatial.cache_clear()
    cold = build().state_dict()
    warm = build().state_dict()  # the spatial probes now come from the cache
    assert all(torch.equal(cold[k], warm[k]) for k in cold)
