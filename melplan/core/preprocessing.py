"""Turn raw client input into a model's input, as the catalog entry records it (numpy, no torch).

A family's entry carries ``dataset.preprocessing``, written by training from the same numbers it
used, so serving applies exactly what training did.  For images (``"modality": "image"``)::

    {"modality": "image", "raw_channels": 1, "raw_size": [28, 28], "scale": 255.0,
     "mean": [0.286], "std": [0.353], "size": [32, 32], "pad_value": 0, "channels": 3}

Raw ``UINT8`` pixels ``[N, H, W]`` or ``[N, raw_channels, H, W]`` become ``FP32 [N, channels, size * upscale]``:
``x / scale``, then ``(x - mean) / std`` per channel, then a centred pad to ``size`` with the raw
pixel value ``pad_value`` (normalised the same way), then each pixel repeated ``upscale`` times along
height and width (nearest-neighbour; the record omits ``upscale`` when it is 1), then grey images
repeated to ``channels``.
This is :func:`melplan.train.data.to_input` without torch; a test checks the two agree bit for bit.

Audio (``"modality": "audio"``, :class:`AudioPreprocessing`): raw clips ``INT16 [N, samples]`` (16-bit
PCM) or ``FP32 [N, samples]`` in [-1, 1) at the entry's sample rate become log-mel features ``FP32 [N, 1,
n_mels, frames]`` through :func:`melplan.core.audio.audio_batch`.  Text (``"modality": "text"``,
:class:`TextPreprocessing`): sentences (``BYTES [N]``, UTF-8) become token ids ``INT64 [N, max_len]``
through :func:`melplan.core.text.text_batch`.  Those are the functions training calls, so there is one
place for each recipe.  Every kind answers ``raw_datatypes``, ``raw_shapes``, ``accepts``, ``apply``
and ``input_shape``; :func:`from_record` builds the one an entry records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from melplan.core.errors import CatalogError, InputError

MODALITIES = ("image", "audio", "text")


@dataclass(frozen=True)
class ImagePreprocessing:
    raw_channels: int
    raw_size: tuple[int, int]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int]
    pad_value: float
    channels: int
    upscale: int = 1  # each padded pixel becomes upscale x upscale pixels (a larger network input)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": "image",
            "raw_channels": self.raw_channels,
            "raw_size": list(self.raw_size),
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "size": list(self.size),
            "pad_value": self.pad_value,
            "channels": self.channels,
        } | ({"upscale": self.upscale} if self.upscale != 1 else {})

    raw_datatypes = ("UINT8",)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size[0] * self.upscale, self.size[1] * self.upscale)

    def raw_shapes(self) -> list[tuple[str, list[int]]]:
        """(datatype, shape) of the raw inputs accepted, -1 for any size (model metadata)."""
        return [("UINT8", [-1, self.raw_channels, *self.raw_size])]

    def expected(self) -> str:
        """The raw input accepted, in words (for error messages)."""
        h, w = self.raw_size
        return (
            f"UINT8 [N, {h}, {w}] or " if self.raw_channels == 1 else "UINT8 "
        ) + f"[N, {self.raw_channels}, {h}, {w}]"

    def accepts(self, shape: tuple[int, ...], datatype: str = "UINT8") -> bool:
        """Whether raw pixels of this shape (batch first) can be turned into model input."""
        if datatype != "UINT8":
            return False
        if len(shape) == 3:
            hw, c = shape[1:], 1
        elif len(shape) == 4:
            hw, c = shape[2:], shape[1]
        else:
            return False
        return c == self.raw_channels and tuple(hw) in (self.raw_size, self.size)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """UINT8 ``[N, H, W]`` or ``[N, C, H, W]`` -> FP32 ``[N, channels, *size]``.

        Raises InputError for a shape it does not accept (the caller says which input)."""
        shape = tuple(int(d) for d in pixels.shape)
        if not self.accepts(shape):
            raise InputError(
                f"raw pixels of shape {list(shape)} do not fit this model",
                field="input",
                fix=f"send [N, {self.raw_size[0]}, {self.raw_size[1]}] or [N, {self.raw_channels}, H, W] "
                f"with H x W = {self.raw_size[0]}x{self.raw_size[1]} or {self.size[0]}x{self.size[1]}",
            )
        x = pixels.astype(np.float32)
        if x.ndim == 3:
            x = x[:, None]
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        x = (x / np.float32(self.scale) - mean) / std
        h, w = x.shape[2:]
        th, tw = self.size
        if (h, w) != (th, tw):
            pad = ((np.float32(self.pad_value) / np.float32(self.scale) - mean) / std).astype(np.float32)
            out = np.empty((x.shape[0], x.shape[1], th, tw), dtype=np.float32)
            out[...] = pad
            top, left = (th - h) // 2, (tw - w) // 2
            out[:, :, top : top + h, left : left + w] = x
            x = out
        if self.upscale != 1:
            x = x.repeat(self.upscale, axis=2).repeat(self.upscale, axis=3)
        if x.shape[1] != self.channels:
            x = np.repeat(x, self.channels // x.shape[1], axis=1)
        return np.ascontiguousarray(x, dtype=np.float32)


@dataclass(frozen=True)
class AudioPreprocessing:
    """Raw clips -> log-mel features, as :func:`melplan.core.audio.audio_batch` computes them."""

    record: Mapping[str, Any]  # the entry's dataset.preprocessing (sample_rate, features, mean, std)

    raw_datatypes = ("INT16", "FP32")

    @property
    def sample_rate(self) -> int:
        return int(self.record["sample_rate"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        from melplan.core.audio import feature_shape

        return (1, *feature_shape(self.record["features"]))

    def raw_shapes(self) -> list[tuple[str, list[int]]]:
        return [("INT16", [-1, -1]), ("FP32", [-1, -1])]

    def expected(self) -> str:
        return f"INT16 or FP32 [N, samples] (mono, {self.sample_rate} Hz; FP32 in [-1, 1))"

    def accepts(self, shape: tuple[int, ...], datatype: str) -> bool:
        return datatype in self.raw_datatypes and len(shape) == 2 and shape[1] > 0

    def apply(self, samples: np.ndarray) -> np.ndarray:
        """``INT16``/``FP32 [N, samples]`` -> ``FP32 [N, 1, n_mels, frames]``; InputError otherwise."""
        from melplan.core.audio import audio_batch

        return np.ascontiguousarray(audio_batch(samples, self.record, what="input"), dtype=np.float32)


@dataclass(frozen=True)
class TextPreprocessing:
    """Sentences -> token ids, as :func:`melplan.core.text.text_batch` encodes them."""

    record: Mapping[str, Any]  # tokenizer, vocabulary, max_len

    raw_datatypes = ("BYTES",)

    @property
    def input_shape(self) -> tuple[int]:
        return (int(self.record["max_len"]),)

    def raw_shapes(self) -> list[tuple[str, list[int]]]:
        return [("BYTES", [-1])]

    def expected(self) -> str:
        return "BYTES [N] (one UTF-8 sentence each)"

    def accepts(self, shape: tuple[int, ...], datatype: str) -> bool:
        return datatype == "BYTES" and len(shape) == 1

    def apply(self, texts: np.ndarray) -> np.ndarray:
        """``BYTES [N]`` (bytes or str) -> ``INT64 [N, max_len]``; InputError otherwise."""
        from melplan.core.text import text_batch

        return np.ascontiguousarray(text_batch(list(np.asarray(texts).reshape(-1)), self.record, what="input"))


Preprocessing = ImagePreprocessing | AudioPreprocessing | TextPreprocessing


def model_datatype(dataset: Mapping[str, Any]) -> str:
    """The Open Inference Protocol datatype of a family's network input: ``INT64`` token ids for text,
    ``FP32`` otherwise (``dataset`` is the entry's ``dataset`` block)."""
    rec = dataset.get("preprocessing")
    return "INT64" if isinstance(rec, Mapping) and rec.get("modality") == "text" else "FP32"


def image_record(
    *, raw_channels: int, raw_size: tuple[int, int], mean, std, size=(32, 32), channels: int = 3, upscale: int = 1
) -> dict[str, Any]:
    """The ``dataset.preprocessing`` record training writes for an image dataset."""
    return ImagePreprocessing(
        int(raw_channels),
        (int(raw_size[0]), int(raw_size[1])),
        255.0,
        tuple(round(float(m), 6) for m in mean),
        tuple(round(float(s), 6) for s in std),
        (int(size[0]), int(size[1])),
        0.0,
        int(channels),
        int(upscale),
    ).to_dict()


def from_record(record: Any, *, source: str | None = None) -> Preprocessing:
    """Parse a ``dataset.preprocessing`` record into the kind its ``modality`` names.
    Raises CatalogError naming the field and the fix."""

    def fail(fld: str, msg: str) -> CatalogError:
        return CatalogError(
            msg,
            file=source,
            field=f"dataset.preprocessing.{fld}" if fld else "dataset.preprocessing",
            fix="see docs/catalog.md (dataset.preprocessing); `melplan train` writes it",
        )

    if not isinstance(record, Mapping):
        raise fail("", "the entry records no preprocessing, so raw input cannot be served (send FP32 input)")
    modality = record.get("modality")
    if modality not in MODALITIES:
        raise fail("modality", f"unsupported modality {modality!r}; this version knows {', '.join(MODALITIES)}")
    if modality == "audio":
        return _audio(record, fail)
    if modality == "text":
        return _text(record, fail)
    try:
        rec = ImagePreprocessing(
            int(record["raw_channels"]),
            tuple(int(v) for v in record["raw_size"]),  # type: ignore[arg-type]
            float(record.get("scale", 255.0)),
            tuple(float(v) for v in record["mean"]),
            tuple(float(v) for v in record["std"]),
            tuple(int(v) for v in record["size"]),  # type: ignore[arg-type]
            float(record.get("pad_value", 0.0)),
            int(record["channels"]),
            int(record.get("upscale", 1)),
        )
    except KeyError as exc:
        raise fail(str(exc.args[0]), "missing") from None
    except (TypeError, ValueError) as exc:
        raise fail("", f"malformed ({exc})") from None
    if len(rec.raw_size) != 2 or len(rec.size) != 2:
        raise fail("size", "raw_size and size must be [height, width]")
    if len(rec.mean) != rec.raw_channels or len(rec.std) != rec.raw_channels or min(rec.std) <= 0:
        raise fail("std", "mean and std need one value per raw channel, std > 0")
    if rec.channels % rec.raw_channels or rec.scale <= 0:
        raise fail("channels", "channels must be a multiple of raw_channels, scale > 0")
    if rec.size[0] < rec.raw_size[0] or rec.size[1] < rec.raw_size[1]:
        raise fail("size", "size must be at least raw_size (images are padded, never cropped)")
    if not 1 <= rec.upscale <= 16:
        raise fail("upscale", "upscale must be an integer from 1 to 16 (each pixel becomes upscale x upscale)")
    return rec


def _audio(record: Mapping[str, Any], fail: Any) -> AudioPreprocessing:
    from melplan.core.audio import feature_shape

    for key in ("sample_rate", "features", "mean", "std"):
        if key not in record:
            raise fail(key, "missing")
    try:
        rate, std = int(record["sample_rate"]), float(record["std"])
        float(record["mean"])
        if not isinstance(record["features"], Mapping):
            raise TypeError("features must be a mapping")
        mels, frames = feature_shape(record["features"])
    except (TypeError, ValueError, KeyError) as exc:
        raise fail("", f"malformed ({exc})") from None
    if rate <= 0 or std <= 0 or mels <= 0 or frames <= 0:
        raise fail("std", "sample_rate, std and the feature shape must be positive")
    return AudioPreprocessing(dict(record))


def _text(record: Mapping[str, Any], fail: Any) -> TextPreprocessing:
    from melplan.core.text import TOKENIZER

    for key in ("tokenizer", "vocabulary", "max_len"):
        if key not in record:
            raise fail(key, "missing")
    if record["tokenizer"] != TOKENIZER:
        raise fail("tokenizer", f"unknown tokenizer {record['tokenizer']!r}; this version knows {TOKENIZER!r}")
    vocab = record["vocabulary"]
    if not isinstance(vocab, list) or len(vocab) < 2 or not all(isinstance(w, str) for w in vocab):
        raise fail("vocabulary", "must be a list of at least two tokens (padding and unknown first)")
    max_len = record["max_len"]
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len <= 0:
        raise fail("max_len", "must be a whole number > 0")
    return TextPreprocessing(dict(record))
