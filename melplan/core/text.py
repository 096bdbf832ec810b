"""Text preprocessing in numpy only: tokenizer, vocabulary and encoding (no torch).

Training (``melplan.train.datasets.text``) and serving (``melplan.core.preprocessing``) use the
same functions with the vocabulary recorded in a catalog entry's ``dataset.preprocessing``:

* tokenizer ``"lower-alnum-punct"``: lower-case, then runs of letters/digits are tokens and every
  other non-space character is a token of its own (``"What's up?"`` -> ``what ' s up ?``);
* vocabulary: id 0 is padding, id 1 stands for any unknown token, then the training split's tokens
  seen at least ``min_count`` times, most frequent first (ties alphabetical);
* encoding: the first ``max_len`` token ids, padded with 0 to ``max_len``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from melplan.core.errors import InputError

TOKENIZER = "lower-alnum-punct"
PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[0-9a-z]+|[^\s0-9a-z]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def build_vocabulary(texts: Iterable[str], *, min_count: int = 2, max_size: int | None = None) -> list[str]:
    """The id -> token list: ``[PAD, UNK]`` then tokens with at least ``min_count`` occurrences."""
    counts = Counter(tok for t in texts for tok in tokenize(t))
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
        kept = kept[: max(0, max_size - 2)]
    return [PAD, UNK, *kept]


def encode(texts: Sequence[str], vocabulary: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids, int64 of shape (len(texts), max_len)."""
    index = {w: i for i, w in enumerate(vocabulary)}
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for row, t in enumerate(texts):
        ids = [index.get(tok, 1) for tok in tokenize(t)][:max_len]
        out[row, : len(ids)] = ids
    return out


def text_input(text: Any, prep: Mapping[str, Any], *, what: str = "input") -> np.ndarray:
    """One sentence -> the network input (max_len,) int64, as the entry's preprocessing records.

    Raises InputError when ``text`` is not a non-empty string or the tokenizer is unknown."""
    if prep.get("tokenizer") != TOKENIZER:
        raise InputError(
            f"unknown tokenizer {prep.get('tokenizer')!r}",
            file=what,
            field="dataset.preprocessing.tokenizer",
            fix=f"this melplan knows {TOKENIZER!r}",
        )
    if not isinstance(text, str) or not text.strip():
        raise InputError("expected a non-empty sentence (a JSON string)", file=what, fix='send {"text": "..."}')
    return encode([text], prep["vocabulary"], int(prep["max_len"]))[0]


def text_batch(texts: Sequence[Any], prep: Mapping[str, Any], *, what: str = "input") -> np.ndarray:
    """Sentences (``str`` or UTF-8 ``bytes``, as an Open Inference Protocol ``BYTES`` tensor carries
    them) -> INT64 ``[N, max_len]``. Raises InputError for an empty batch or undecodable bytes."""
    if len(texts) == 0:
        raise InputError("no sentences", file=what, fix="send BYTES [N] with N >= 1 UTF-8 sentences")
    out = []
    for t in texts:
        if isinstance(t, (bytes, bytearray)):
            try:
                t = bytes(t).decode("utf-8")
            except UnicodeDecodeError:
                raise InputError("a sentence is not valid UTF-8", file=what, fix="encode text as UTF-8") from None
        out.append(text_input(t, prep, what=what))
    return np.stack(out)
