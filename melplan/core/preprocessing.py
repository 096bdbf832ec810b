"""Turn raw client input into a model's input, as the catalog entry records it (numpy, no torch).

A family's entry carries ``dataset.preprocessing``, written by training
(:func:`melplan.train.data.image_preprocessing` and the loaders in ``melplan.train.datasets``) from the
same numbers it used, so serving applies exactly what training did.  For images
(``"modality": "image"``)::

    {"modality": "image", "channels": 1, "size": [28, 28], "resize": null, "scale": 0.00392156862745098,
     "mean": [0.286], "std": [0.353], "pad": 2, "replicate_to": 3}

Raw ``UINT8`` pixels ``[N, H, W]`` (one channel) or ``[N, channels, H, W]`` with ``H x W = size``
become ``FP32 [N, replicate_to, H + 2 pad, W + 2 pad]``: ``x * scale``, then ``(x - mean) / std`` per
channel, then ``pad`` pixels on every side with the value of a black pixel (normalised the same
way), then grey images repeated to ``replicate_to`` channels.  ``resize`` (imagefolder entries)
happened when the images were stored: clients send pixels already at ``size``.  This is
:func:`melplan.train.data.to_input` without torch; a test checks the two agree bit for bit.
Other modalities (audio, text) are added here by their owners.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from melplan.core.errors import CatalogError, InputError

MODALITIES = ("image",)


@dataclass(frozen=True)
class ImagePreprocessing:
    channels: int
    size: tuple[int, int]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    replicate_to: int
    resize: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": "image",
            "channels": self.channels,
            "size": list(self.size),
            "resize": self.resize,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "pad": self.pad,
            "replicate_to": self.replicate_to,
        }

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.replicate_to, self.size[0] + 2 * self.pad, self.size[1] + 2 * self.pad)

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether raw pixels of this shape (batch first) can be turned into model input."""
        if len(shape) == 3:
            hw, c = shape[1:], 1
        elif len(shape) == 4:
            hw, c = shape[2:], shape[1]
        else:
            return False
        return c == self.channels and tuple(hw) == self.size

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """UINT8 ``[N, H, W]`` or ``[N, C, H, W]`` -> FP32 ``[N, *input_shape]``.

        Raises InputError for a shape it does not accept (the caller says which input)."""
        shape = tuple(int(d) for d in pixels.shape)
        if not self.accepts(shape):
            h, w = self.size
            one = f"[N, {h}, {w}] or " if self.channels == 1 else ""
            raise InputError(
                f"raw pixels of shape {list(shape)} do not fit this model",
                field="input",
                fix=f"send {one}[N, {self.channels}, {h}, {w}]",
            )
        x = pixels.astype(np.float32)
        if x.ndim == 3:
            x = x[:, None]
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        x = (x / np.float32(1.0 / self.scale) - mean) / std  # as training: pixels / 255
        if self.pad:
            p = self.pad
            n, c, h, w = x.shape
            out = np.empty((n, c, h + 2 * p, w + 2 * p), dtype=np.float32)
            out[...] = ((np.float32(0.0) - mean) / std).astype(np.float32)
            out[:, :, p : p + h, p : p + w] = x
            x = out
        if x.shape[1] != self.replicate_to:
            x = np.repeat(x, self.replicate_to // x.shape[1], axis=1)
        return np.ascontiguousarray(x, dtype=np.float32)


def from_record(record: Any, *, source: str | None = None) -> ImagePreprocessing:
    """Parse a ``dataset.preprocessing`` record. Raises CatalogError naming the field and the fix."""

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
        raise fail("modality", f"raw {modality!r} input cannot be served by this version (send FP32 input)")
    try:
        size = tuple(int(v) for v in record["size"])
        rec = ImagePreprocessing(
            int(record["channels"]),
            (size[0], size[1]),
            float(record.get("scale", 1 / 255)),
            tuple(float(v) for v in record["mean"]),
            tuple(float(v) for v in record["std"]),
            int(record.get("pad") or 0),
            int(record.get("replicate_to") or record["channels"]),
            record.get("resize"),
        )
    except KeyError as exc:
        raise fail(str(exc.args[0]), "missing") from None
    except (TypeError, ValueError, IndexError) as exc:
        raise fail("", f"malformed ({exc})") from None
    if len(size) != 2:
        raise fail("size", "size must be [height, width]")
    if len(rec.mean) != rec.channels or len(rec.std) != rec.channels or min(rec.std) <= 0:
        raise fail("std", "mean and std need one value per channel, std > 0")
    if rec.replicate_to % rec.channels or rec.scale <= 0 or rec.pad < 0:
        raise fail("replicate_to", "replicate_to must be a multiple of channels, scale > 0, pad >= 0")
    return rec
