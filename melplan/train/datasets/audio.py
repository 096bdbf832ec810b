"""The Free Spoken Digit Dataset as log-mel spectrograms (torch).

``data/fsdd/fsdd-recordings.tar.xz`` (shipped; CC BY-SA 4.0, see ``data/fsdd/CREDIT.md``) holds
3,000 WAVs ``recordings/{digit}_{speaker}_{index}.wav`` at 8 kHz. Splits:

* ``fsdd`` (official): index 0-4 of every digit and speaker is the test set (500), the rest trains (2,500);
* ``fsdd-heldout-<speaker>``: every recording of that speaker is the test set (500), the other five
  speakers train (2,500): can the model understand a voice it never heard?

Features: ``melplan.core.audio.log_mel`` with ``LOGMEL_DEFAULTS`` (1 s clip, 32 ms Hann window,
16 ms hop, 40 mel bands up to 4 kHz), standardised with the training split's mean and standard
deviation, rounded as recorded in the entry so serving computes the identical input.
"""

from __future__ import annotations

import functools
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melplan.core.audio import LOGMEL_DEFAULTS, feature_shape, log_mel, read_wav
from melplan.core.errors import DataError
from melplan.train.data import Dataset, Split
from melplan.train.datasets import display_path

ARCHIVE = "fsdd-recordings.tar.xz"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
_NAME = re.compile(r"(?:.*/)?(\d)_([a-z]+)_(\d+)\.wav$")


def read_recordings(folder: Path) -> list[tuple[int, str, int, np.ndarray]]:
    """(digit, speaker, index, samples) for every WAV in the archive, sorted by (digit, speaker, index).
    Decoded once per process and archive (size and mtime)."""
    path = folder / ARCHIVE
    stat = path.stat() if path.exists() else None
    return _read_recordings(str(path), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1)


@functools.lru_cache(maxsize=2)
def _read_recordings(name: str, size: int, mtime: int) -> list[tuple[int, str, int, np.ndarray]]:
    path = Path(name)
    folder = path.parent
    if not path.exists():
        raise DataError(
            f"{ARCHIVE} not found",
            file=str(folder),
            fix="run from a melplan checkout (it ships data/fsdd/) or pass --data-root DIR holding the archive",
        )
    out = []
    try:
        with tarfile.open(path, "r|xz") as tar:  # streamed in archive order: seeking in xz re-decompresses
            for member in tar:
                m = _NAME.match(member.name)
                if not (m and member.isfile()):
                    continue
                fh = tar.extractfile(member)
                assert fh is not None
                samples, rate = read_wav(fh.read(), what=f"{path}:{member.name}")
                if rate != LOGMEL_DEFAULTS["sample_rate"]:
                    raise DataError(
                        f"{member.name} is sampled at {rate} Hz", file=str(path), fix="use the FSDD 8 kHz files"
                    )
                out.append((int(m[1]), m[2], int(m[3]), samples))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read the archive ({exc})", file=str(path), fix="restore the original file") from None
    out.sort(key=lambda r: (r[0], r[1], r[2]))
    if not out:
        raise DataError("no recordings/{digit}_{speaker}_{index}.wav in the archive", file=str(path), fix="restore it")
    return out


def load_fsdd(folder: Path, *, heldout_speaker: str | None = None, name: str = "fsdd") -> Dataset:
    recs = read_recordings(folder)
    speakers = sorted({r[1] for r in recs})
    if heldout_speaker is not None and heldout_speaker not in speakers:
        raise DataError(
            f"no speaker '{heldout_speaker}' in FSDD",
            field="dataset",
            fix=f"use fsdd-heldout-<speaker> with one of: {', '.join(speakers)}",
        )
    params = dict(LOGMEL_DEFAULTS)
    feats = np.stack([log_mel(r[3], params) for r in recs])[:, None]  # N x 1 x mels x frames
    labels = np.array([r[0] for r in recs], dtype=np.int64)
    split: dict[str, Any]
    if heldout_speaker is None:
        is_test = np.array([r[2] <= 4 for r in recs])
        split = {"kind": "official", "test": "index 0-4 of every digit and speaker"}
    else:
        is_test = np.array([r[1] == heldout_speaker for r in recs])
        split = {
            "kind": "held-out speaker",
            "test_speakers": [heldout_speaker],
            "train_speakers": [s for s in speakers if s != heldout_speaker],
        }
    train = feats[~is_test]
    mean, std = float(np.round(train.mean(), 6)), float(np.round(train.std(), 6))
    norm = ((feats - np.float32(mean)) / np.float32(std)).astype(np.float32)

    def part(mask: np.ndarray) -> Split:
        return Split(torch.from_numpy(norm[mask].copy()), torch.from_numpy(labels[mask]), None)

    prep = {
        "modality": "audio",
        "sample_rate": params["sample_rate"],
        "channels": 1,
        "encoding": "16-bit PCM WAV or samples in [-1, 1)",
        "features": {"kind": "log-mel", **params},
        "feature_code": "melplan.core.audio.log_mel",
        "mean": mean,
        "std": std,
    }
    return Dataset(
        name,
        part(~is_test),
        part(is_test),
        10,
        None,
        (mean,),
        (std,),
        f"{display_path(folder / ARCHIVE)} (Free Spoken Digit Dataset, CC BY-SA 4.0)",
        modality="audio",
        input_shape=(1, *feature_shape(params)),
        preprocessing=prep,
        split=split,
        flip=False,
        classes=tuple(str(d) for d in range(10)),
    )
