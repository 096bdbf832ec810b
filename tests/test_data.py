from pathlib import Path

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from melplan.core.errors import DataError  # noqa: E402
from melplan.train.data import Batches, load_dataset  # noqa: E402


def test_mnist5k_split_is_stratified_and_fixed():
    ds = load_dataset("mnist5k")
    assert (len(ds.train), len(ds.test)) == (4000, 1000)
    assert torch.bincount(ds.test.labels).tolist() == [100] * 10
    assert torch.equal(load_dataset("mnist5k").test.labels, ds.test.labels)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").exists(), reason="dataset-fashion-mnist not installed"
)
def test_fashion_mnist_official_split():
    ds = load_dataset("fashion-mnist")
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    x, y, coarse = next(iter(Batches(ds, ds.test, batch_size=8, shuffle=False, augment=False)))
    assert x.shape == (8, 3, 32, 32) and coarse.max() <= 4


def test_missing_data_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_root=tmp_path)
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar100", data_root=tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")


def test_augmented_batches_are_seeded():
    ds = load_dataset("mnist5k", train_limit=64)

    def first(seed):
        g = torch.Generator().manual_seed(seed)
        return next(iter(Batches(ds, ds.train, batch_size=16, shuffle=True, augment=True, generator=g)))[0]

    assert torch.equal(first(1), first(1)) and not torch.equal(first(1), first(2))


def test_cifar100_binary_records_are_parsed(tmp_path):
    import numpy as np

    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train.bin", 6), ("test.bin", 4)):
        rec = np.zeros((n, 2 + 3072), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 20, n)  # coarse label first, then fine, then 3x32x32 pixels
        rec[:, 1] = rng.integers(0, 100, n)
        rec[:, 2:] = rng.integers(0, 256, (n, 3072))
        rec.tofile(folder / name)
        if name == "test.bin":
            expected = rec
    ds = load_dataset("cifar100", data_root=tmp_path)
    assert (len(ds.train), len(ds.test), ds.num_classes, ds.num_coarse) == (6, 4, 100, 20)
    assert ds.test.labels.tolist() == expected[:, 1].tolist()
    assert ds.test.coarse.tolist() == expected[:, 0].tolist()
    assert torch.equal(ds.test.images[2], torch.from_numpy(expected[2, 2:].reshape(3, 32, 32)))
