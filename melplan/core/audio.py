"""Audio preprocessing in numpy only: WAV decoding and log-mel features (no torch).

Training (``melplan.train.datasets.audio``) and serving (``melplan.core.preprocessing``) call the
same functions with the parameters recorded in a catalog entry's ``dataset.preprocessing``, so a
client's raw recording is turned into exactly the features the network was trained on.

The recipe (``LOGMEL_DEFAULTS``): 16-bit PCM mono at the entry's sample rate, scaled to [-1, 1);
padded with zeros or cut to ``clip_s`` seconds; a Hann-windowed STFT (``win`` samples, ``hop``
samples, ``n_fft`` points); power spectrum through a triangular mel filterbank (HTK mel scale,
``n_mels`` bands from ``fmin`` to ``fmax``); ``log(mel + 1e-6)``; then standardised with the
training split's mean and standard deviation (one scalar each, recorded in the entry).
"""

from __future__ import annotations

import io
import wave
from collections.abc import Mapping
from typing import Any

import numpy as np

from melplan.core.errors import InputError

LOGMEL_DEFAULTS: dict[str, Any] = {
    "sample_rate": 8000,
    "clip_s": 1.0,
    "n_fft": 256,
    "win": 256,
    "hop": 128,
    "n_mels": 40,
    "fmin": 20.0,
    "fmax": 4000.0,
    "log_offset": 1e-6,
}


def read_wav(data: bytes, *, what: str = "WAV data") -> tuple[np.ndarray, int]:
    """Decode 16-bit PCM WAV bytes to float32 samples in [-1, 1) (channels averaged) and the rate.

    Raises InputError naming ``what`` when the bytes are not 16-bit PCM WAV."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            width, channels, rate, n = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise InputError(f"not a readable WAV file ({exc})", file=what, fix="send 16-bit PCM mono WAV") from None
    if width != 2:
        raise InputError(
            f"WAV sample width is {8 * width} bits",
            file=what,
            fix="send 16-bit PCM WAV (e.g. sox in.wav -b 16 out.wav)",
        )
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        x = x[: len(x) - len(x) % channels].reshape(-1, channels).mean(axis=1)
    return x, rate


def fix_length(x: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad at the end or cut to exactly ``n`` samples."""
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), HTK mel scale, peak 1."""
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def log_mel(samples: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Log-mel features of one clip, float32 of shape (n_mels, frames), not yet standardised."""
    p = {**LOGMEL_DEFAULTS, **params}
    n = int(round(p["clip_s"] * p["sample_rate"]))
    x = fix_length(np.asarray(samples, dtype=np.float32), n)
    win, hop, n_fft = int(p["win"]), int(p["hop"]), int(p["n_fft"])
    frames = 1 + (n - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(frames)[:, None]
    window = np.hanning(win + 1)[:-1].astype(np.float32)  # periodic Hann
    spec = np.abs(np.fft.rfft(x[idx] * window, n=n_fft, axis=1)) ** 2  # frames x bins
    fb = mel_filterbank(int(p["sample_rate"]), n_fft, int(p["n_mels"]), float(p["fmin"]), float(p["fmax"]))
    return np.log(fb @ spec.T.astype(np.float32) + np.float32(p["log_offset"])).astype(np.float32)


def feature_shape(params: Mapping[str, Any]) -> tuple[int, int]:
    """(n_mels, frames) that ``log_mel`` returns for these parameters."""
    p = {**LOGMEL_DEFAULTS, **params}
    n = int(round(p["clip_s"] * p["sample_rate"]))
    return int(p["n_mels"]), 1 + (n - int(p["win"])) // int(p["hop"])


def audio_input(samples: np.ndarray, sample_rate: int, prep: Mapping[str, Any], *, what: str = "input") -> np.ndarray:
    """Raw samples -> the network input (1, n_mels, frames), standardised as the entry records.

    Raises InputError when the sample rate differs from the entry's (no resampling is done)."""
    want = int(prep["sample_rate"])
    if int(sample_rate) != want:
        raise InputError(
            f"audio sampled at {sample_rate} Hz, the model expects {want} Hz",
            file=what,
            fix=f"resample to {want} Hz mono before sending (e.g. sox in.wav -r {want} -c 1 out.wav)",
        )
    feats = log_mel(samples, prep["features"])
    return ((feats - np.float32(prep["mean"])) / np.float32(prep["std"]))[None].astype(np.float32)


def audio_batch(samples: np.ndarray, prep: Mapping[str, Any], *, what: str = "input") -> np.ndarray:
    """A batch of raw clips at the entry's sample rate -> FP32 ``[N, 1, n_mels, frames]``.

    ``samples``: ``INT16 [N, S]`` (16-bit PCM) or ``FP32 [N, S]`` in [-1, 1); clips are cut or
    zero-padded to the entry's clip length. Raises InputError for another shape or dtype."""
    arr = np.asarray(samples)
    if arr.ndim != 2 or arr.shape[1] == 0 or arr.dtype not in (np.int16, np.float32, np.float64):
        raise InputError(
            f"audio of shape {list(arr.shape)} and type {arr.dtype}",
            file=what,
            fix=f"send INT16 [N, samples] (16-bit PCM, mono, {int(prep['sample_rate'])} Hz) or FP32 in [-1, 1)",
        )
    x = arr.astype(np.float32) / 32768.0 if arr.dtype == np.int16 else arr.astype(np.float32)
    rate = int(prep["sample_rate"])
    return np.stack([audio_input(row, rate, prep, what=what) for row in x])
