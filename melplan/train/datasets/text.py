"""TREC question classification as token ids (torch).

``data/trec/TREC.{train,test}.all`` (shipped; see ``data/trec/CREDIT.md``): 5,452 / 500 questions,
label first (0 description, 1 entity, 2 abbreviation, 3 human, 4 location, 5 numeric), then the
text. The vocabulary is built from the training split only (``melplan.core.text``) and recorded in
the entry, so serving tokenizes a client's sentence exactly as training did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from melplan.core.errors import DataError
from melplan.core.text import TOKENIZER, build_vocabulary, encode
from melplan.train.data import Dataset, Split
from melplan.train.datasets import display_path

TREC_CLASSES = ("description", "entity", "abbreviation", "human", "location", "numeric")
MAX_LEN = 40
MIN_COUNT = 2


def read_labelled(path: Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Lines ``<label> <text>``; raises DataError naming the file and line of a bad one."""
    if not path.exists():
        raise DataError(
            f"{path.name} not found",
            file=str(path.parent),
            fix="run from a melplan checkout (it ships data/trec/) or pass --data-root DIR holding the files",
        )
    texts, labels = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        if not label.isdigit() or not 0 <= int(label) < num_classes:
            raise DataError(
                f"line {i}: label {label!r} is not 0..{num_classes - 1}", file=str(path), fix="restore the file"
            )
        texts.append(text.strip())
        labels.append(int(label))
    return texts, np.array(labels, dtype=np.int64)


def load_trec(folder: Path) -> Dataset:
    train_x, train_y = read_labelled(folder / "TREC.train.all", len(TREC_CLASSES))
    test_x, test_y = read_labelled(folder / "TREC.test.all", len(TREC_CLASSES))
    vocab = build_vocabulary(train_x, min_count=MIN_COUNT)

    def part(texts: list[str], y: np.ndarray) -> Split:
        return Split(torch.from_numpy(encode(texts, vocab, MAX_LEN)), torch.from_numpy(y), None)

    prep = {
        "modality": "text",
        "tokenizer": TOKENIZER,
        "max_len": MAX_LEN,
        "min_count": MIN_COUNT,
        "pad_id": 0,
        "unk_id": 1,
        "vocabulary_from": "training split",
        "vocabulary": vocab,
    }
    return Dataset(
        "trec",
        part(train_x, train_y),
        part(test_x, test_y),
        len(TREC_CLASSES),
        None,
        (0.0,),
        (1.0,),
        f"{display_path(folder)} (TREC question classification, Li and Roth 2002)",
        modality="text",
        input_shape=(MAX_LEN,),
        input_dtype="int64",
        preprocessing=prep,
        base_args={"vocab_size": len(vocab)},
        flip=False,
        classes=TREC_CLASSES,
    )
