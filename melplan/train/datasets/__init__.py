"""Datasets beyond the built-in images: the user's own image folder, spoken digits, sentences (torch).

Each loader returns a ``melplan.train.data.Dataset`` whose ``preprocessing`` records, as data, how a
raw input becomes the network input; the same torch-free functions (``melplan.core.audio``,
``melplan.core.text``) compute it for training here and for serving.

Shipped data lives in the repository's ``data/`` folder (with its licence and credit); ``--data-root``
points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from melplan.core.errors import DataError

DATA_DIR = Path(__file__).resolve().parents[3] / "data"


def shipped(sub: str, data_root: str | os.PathLike | None) -> Path:
    """The folder to read a shipped dataset from: ``data_root`` if given, else ``data/<sub>``."""
    return Path(data_root) if data_root else DATA_DIR / sub


def display_path(path: Path) -> str:
    """``data/...`` for the shipped data (so entries do not name this machine's checkout), else the path."""
    try:
        return str(Path("data") / Path(path).resolve().relative_to(DATA_DIR))
    except ValueError:
        return str(path)


def load_modal(name: str, *, data_root=None, image_size: int | None = None):
    """Load ``imagefolder``, ``fsdd``, ``fsdd-heldout-<speaker>`` or ``trec``; raises DataError."""
    if name == "imagefolder":
        from melplan.train.datasets.imagefolder import load_imagefolder

        if data_root is None:
            raise DataError(
                "imagefolder needs the folder of images",
                field="--data-root",
                fix="pass --data-root DIR with one sub-folder per class (or train/ and val/ or test/ inside)",
            )
        return load_imagefolder(data_root, image_size=image_size or 32)
    if name == "fsdd" or name.startswith("fsdd-heldout-"):
        from melplan.train.datasets.audio import load_fsdd

        speaker = name[len("fsdd-heldout-") :] if name != "fsdd" else None
        return load_fsdd(shipped("fsdd", data_root), heldout_speaker=speaker, name=name)
    if name == "trec":
        from melplan.train.datasets.text import load_trec

        return load_trec(shipped("trec", data_root))
    raise DataError(
        f"unknown dataset '{name}'", field="dataset", fix="use imagefolder, fsdd, fsdd-heldout-<speaker> or trec"
    )
