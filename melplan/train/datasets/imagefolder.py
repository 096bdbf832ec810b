"""The user's own images in the torchvision ImageFolder layout (torch, PIL).

``DIR/<class>/<image>`` (then a seeded, stratified split: 20% of each class is the test set,
seed 0, recorded in the entry), or ``DIR/train/<class>/...`` with ``DIR/val/<class>/...`` or
``DIR/test/<class>/...`` as the test set. Classes are the sorted folder names (as torchvision
does). Every image is decoded with PIL, converted to RGB and resized to ``size`` x ``size``
(bilinear); the per-channel mean and standard deviation of the training split normalise it. The
entry records all of it under ``dataset.preprocessing`` so serving applies the same steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from melplan.core.errors import DataError
from melplan.train.data import Dataset, Split

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = [d.name for d in _class_dirs(root)]
    if not classes:
        raise DataError(
            "no class folders", file=str(root), fix="put each class's images in a sub-folder named after it"
        )
    items = []
    for i, name in enumerate(classes):
        files = _images(root / name)
        if not files:
            raise DataError(
                f"class folder '{name}' holds no images",
                file=str(root / name),
                fix=f"add images ({', '.join(EXTENSIONS)}) or remove the folder",
            )
        items += [(f, i) for f in files]
    return classes, items


def _decode(items: list[tuple[Path, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    x = np.empty((len(items), 3, size, size), dtype=np.uint8)
    for row, (path, _) in enumerate(items):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                x[row] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(
                f"cannot decode the image ({exc.__class__.__name__})", file=str(path), fix="remove or replace it"
            ) from None
    return x, np.array([c for _, c in items], dtype=np.int64)


def load_imagefolder(root, *, image_size: int = 32) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a folder", file=str(root), fix="pass --data-root DIR in the ImageFolder layout")
    if not 8 <= image_size <= 512:
        raise DataError(f"image size {image_size} out of range", field="--image-size", fix="use 8..512 (default 32)")
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes, train_items = _scan(root / "train")
        test_classes, test_items = _scan(test_dir)
        if test_classes != classes:
            raise DataError(
                f"{test_dir.name}/ has classes {test_classes}, train/ has {classes}",
                file=str(test_dir),
                fix="give train/ and the test folder the same class folders",
            )
        split = {"kind": "folders", "train": "train", "test": test_dir.name}
    elif (root / "train").is_dir():
        raise DataError(
            "train/ without val/ or test/",
            file=str(root),
            fix="add val/ or test/, or put the class folders directly in DIR",
        )
    else:
        classes, items = _scan(root)
        labels = np.array([c for _, c in items])
        rng = np.random.default_rng(SPLIT_SEED)
        test_idx = []
        for c in range(len(classes)):
            idx = rng.permutation(np.flatnonzero(labels == c))
            test_idx += list(idx[: int(round(TEST_FRACTION * len(idx)))])
        is_test = np.zeros(len(items), dtype=bool)
        is_test[test_idx] = True
        train_items = [it for it, t in zip(items, is_test) if not t]
        test_items = [it for it, t in zip(items, is_test) if t]
        if not test_items:
            raise DataError(
                "too few images for a test split", file=str(root), fix="add images (20% of each class is held out)"
            )
        split = {"kind": "seeded", "seed": SPLIT_SEED, "test_fraction": TEST_FRACTION, "stratified": True}
    if len(classes) < 2:
        raise DataError("one class only", file=str(root), fix="give at least two class folders")
    xtr, ytr = _decode(train_items, image_size)
    xte, yte = _decode(test_items, image_size)
    pixels = xtr.astype(np.float64) / 255.0
    mean = tuple(round(float(v), 4) for v in pixels.mean(axis=(0, 2, 3)))
    std = tuple(round(max(float(v), 1e-3), 4) for v in pixels.std(axis=(0, 2, 3)))
    prep = {  # the serving record of melplan.core.preprocessing, plus how files become raw pixels
        "modality": "image",
        "raw_channels": 3,
        "raw_size": [image_size, image_size],
        "scale": 255.0,
        "mean": list(mean),
        "std": list(std),
        "size": [image_size, image_size],
        "pad_value": 0.0,
        "channels": 3,
        "decode": {"color": "RGB", "resize": [image_size, image_size], "method": "bilinear (PIL)"},
    }
    return Dataset(
        "imagefolder",
        Split(torch.from_numpy(xtr), torch.from_numpy(ytr), None),
        Split(torch.from_numpy(xte), torch.from_numpy(yte), None),
        len(classes),
        None,
        mean,
        std,
        str(root.resolve()),
        input_shape=(3, image_size, image_size),
        preprocessing=prep,
        split=split,
        flip=False,
        classes=tuple(classes),
    )
