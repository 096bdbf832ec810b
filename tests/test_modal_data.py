"""Datasets beyond the built-in images: ImageFolder, FSDD audio, TREC text (torch)."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from melplan.core.audio import LOGMEL_DEFAULTS, audio_input, feature_shape, log_mel, mel_filterbank, read_wav  # noqa: E402
from melplan.core.errors import DataError, InputError  # noqa: E402
from melplan.core.text import build_vocabulary, encode, text_input, tokenize  # noqa: E402
from melplan.train.data import load_dataset  # noqa: E402

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="dataset-fashion-mnist not installed")


def write_fmnist_folder(root: Path, *, per_class: int, classes=(0, 1, 7), layout: str = "flat") -> np.ndarray:
    """PNG files from the first Fashion-MNIST training images of ``classes``; returns their pixels
    in the order the loader sorts them (class folder, then file name)."""
    from PIL import Image

    ds = load_dataset("fashion-mnist")
    picked = []
    for c in classes:
        idx = torch.nonzero(ds.train.labels == c).flatten()[:per_class]
        for j, i in enumerate(idx.tolist()):
            img = ds.train.images[i, 0].numpy()
            sub = root / ("train" if layout == "split" and j % 4 else "test" if layout == "split" else "")
            folder = sub / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(folder / f"{j:04d}.png")
            picked.append(img)
    return np.stack(picked)


@needs_fmnist
def test_imagefolder_seeded_split_keeps_pixels_and_records_preprocessing(tmp_path):
    pixels = write_fmnist_folder(tmp_path, per_class=10)
    ds = load_dataset("imagefolder", data_root=tmp_path, image_size=28)
    assert ds.num_classes == 3 and ds.classes == ("class0", "class1", "class7")
    assert len(ds.train) == 24 and len(ds.test) == 6  # 20% of each class, rounded
    assert torch.bincount(ds.test.labels).tolist() == [2, 2, 2]
    # at the images' own size nothing is resampled: every stored pixel is the PNG's, grey copied to RGB
    stored = torch.cat([ds.train.images, ds.test.images])
    assert torch.equal(stored[:, 0], stored[:, 2])
    found = {img.tobytes() for img in pixels}
    assert all(x[0].numpy().tobytes() in found for x in stored)
    prep = ds.info["preprocessing"]
    assert prep["modality"] == "image" and prep["size"] == prep["raw_size"] == [28, 28]
    assert prep["decode"]["color"] == "RGB" and prep["channels"] == prep["raw_channels"] == 3
    mean = ds.train.images.double().div(255).mean(dim=(0, 2, 3))
    assert prep["mean"] == pytest.approx(mean.tolist(), abs=1e-4)
    assert ds.info["split"] == {"kind": "seeded", "seed": 0, "test_fraction": 0.2, "stratified": True}
    again = load_dataset("imagefolder", data_root=tmp_path, image_size=28)
    assert torch.equal(again.test.images, ds.test.images)  # the split is seeded


@needs_fmnist
def test_imagefolder_train_test_folders_and_resize(tmp_path):
    write_fmnist_folder(tmp_path, per_class=8, layout="split")
    ds = load_dataset("imagefolder", data_root=tmp_path, image_size=16)
    assert (len(ds.train), len(ds.test)) == (18, 6)
    assert ds.train.images.shape[1:] == (3, 16, 16) and ds.input_shape == (3, 16, 16)
    assert ds.info["split"] == {"kind": "folders", "train": "train", "test": "test"}


def test_imagefolder_bad_layouts_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("imagefolder")
    with pytest.raises(DataError, match="no class folders"):
        load_dataset("imagefolder", data_root=tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="holds no images"):
        load_dataset("imagefolder", data_root=tmp_path)
    (tmp_path / "b" / "y.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="too few images|cannot decode"):
        load_dataset("imagefolder", data_root=tmp_path)
    with pytest.raises(DataError, match="--image-size"):
        load_dataset("mnist5k", image_size=48)  # built-in sets are upscaled by whole pixels
    with pytest.raises(DataError, match="--image-size"):
        load_dataset("trec", image_size=64)


def _wav_bytes(samples: np.ndarray, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def test_log_mel_puts_a_tone_in_its_mel_band():
    """Oracle: a pure 1 kHz tone has its energy in the mel filter whose peak is nearest 1 kHz."""
    t = np.arange(8000) / 8000
    x, rate = read_wav(_wav_bytes(0.5 * np.sin(2 * np.pi * 1000 * t)))
    assert rate == 8000 and np.abs(x).max() == pytest.approx(0.5, abs=1e-3)
    feats = log_mel(x, LOGMEL_DEFAULTS)
    assert feats.shape == feature_shape(LOGMEL_DEFAULTS) == (40, 61)
    fb = mel_filterbank(8000, 256, 40, 20.0, 4000.0)
    bin_1k = round(1000 / (8000 / 256))
    assert feats.mean(axis=1).argmax() == fb[:, bin_1k].argmax()


def test_audio_input_refuses_another_sample_rate():
    prep = {"sample_rate": 8000, "features": LOGMEL_DEFAULTS, "mean": 0.0, "std": 1.0}
    assert audio_input(np.zeros(100, np.float32), 8000, prep).shape == (1, 40, 61)
    with pytest.raises(InputError, match="8000 Hz"):
        audio_input(np.zeros(100, np.float32), 16000, prep)
    with pytest.raises(InputError, match="WAV"):
        read_wav(b"RIFF....nonsense")


def test_fsdd_official_and_heldout_splits():
    ds = load_dataset("fsdd")
    assert (len(ds.train), len(ds.test)) == (2700, 300) and ds.input_shape == (1, 40, 61)
    assert torch.bincount(ds.test.labels).tolist() == [30] * 10
    prep = ds.info["preprocessing"]
    assert prep["modality"] == "audio" and prep["sample_rate"] == 8000
    assert abs(float(ds.train.images.mean())) < 1e-3 and float(ds.train.images.std()) == pytest.approx(1, abs=1e-3)
    held = load_dataset("fsdd-heldout-theo")
    assert (len(held.train), len(held.test)) == (2500, 500)
    assert held.info["split"]["test_speakers"] == ["theo"] and "theo" not in held.info["split"]["train_speakers"]
    with pytest.raises(DataError, match="jackson"):
        load_dataset("fsdd-heldout-nobody")


def test_fsdd_training_features_equal_serving_features():
    """What a client's WAV becomes at serving time is exactly the stored training input."""
    import tarfile

    ds = load_dataset("fsdd")
    prep = ds.info["preprocessing"]
    with tarfile.open(ROOT / "data/fsdd/fsdd-recordings.tar.xz", "r|xz") as tar:
        for member in tar:
            if member.name.endswith("/0_george_0.wav"):
                raw = tar.extractfile(member).read()
                break
    samples, rate = read_wav(raw)
    served = audio_input(samples, rate, prep)
    # sorted (digit, speaker, index): 0_george_0 is the first test recording
    assert np.array_equal(served, ds.test.images[0].numpy())


def test_tokenizer_vocabulary_and_encoding():
    assert tokenize("What's the capital of France?") == ["what", "'", "s", "the", "capital", "of", "france", "?"]
    vocab = build_vocabulary(["a b b c", "b c d"], min_count=2)
    assert vocab == ["<pad>", "<unk>", "b", "c"]
    assert encode(["b zz c", ""], vocab, 4).tolist() == [[2, 1, 3, 0], [0, 0, 0, 0]]
    prep = {"tokenizer": "lower-alnum-punct", "vocabulary": vocab, "max_len": 4}
    assert text_input("C b", prep).tolist() == [3, 2, 0, 0]
    with pytest.raises(InputError, match="non-empty"):
        text_input("  ", prep)


def test_trec_vocabulary_comes_from_the_training_split_only():
    ds = load_dataset("trec")
    assert (len(ds.train), len(ds.test), ds.num_classes) == (5452, 500, 6)
    prep = ds.info["preprocessing"]
    vocab = prep["vocabulary"]
    train_text = (ROOT / "data/trec/TREC.train.all").read_text(errors="replace").splitlines()
    counts: dict[str, int] = {}
    for line in train_text:
        for tok in tokenize(line.partition(" ")[2]):
            counts[tok] = counts.get(tok, 0) + 1
    assert set(vocab[2:]) == {w for w, c in counts.items() if c >= 2}
    assert ds.base_args == {"vocab_size": len(vocab)}
    first = (ROOT / "data/trec/TREC.test.all").read_text(errors="replace").splitlines()[0].partition(" ")[2]
    assert text_input(first, prep).tolist() == ds.test.images[0].tolist()


def test_batches_of_raw_audio_and_text():
    from melplan.core.audio import audio_batch
    from melplan.core.text import text_batch

    prep = {"sample_rate": 8000, "features": LOGMEL_DEFAULTS, "mean": -10.0, "std": 5.0}
    pcm = (np.random.default_rng(0).standard_normal((2, 4000)) * 3000).astype(np.int16)
    out = audio_batch(pcm, prep)
    assert out.shape == (2, 1, 40, 61) and out.dtype == np.float32
    assert np.array_equal(out[1], audio_input(pcm[1].astype(np.float32) / 32768.0, 8000, prep))
    with pytest.raises(InputError, match="INT16"):
        audio_batch(np.zeros(10, np.int16), prep)
    vocab = ["<pad>", "<unk>", "who", "?"]
    tprep = {"tokenizer": "lower-alnum-punct", "vocabulary": vocab, "max_len": 3}
    assert text_batch([b"Who?", "who who who who"], tprep).tolist() == [[2, 3, 0], [2, 2, 2]]
    with pytest.raises(InputError, match="UTF-8"):
        text_batch([b"\xff\xfe"], tprep)
