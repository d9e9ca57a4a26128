"""The only place that reads, writes and resamples audio.

Arrays are ``float32`` and channels-first: ``(channels, time)``; a stem stack is
``(stems, channels, time)``. torchaudio is used here and nowhere else (for resampling),
so that it can be swapped.
"""

from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from mss_tools.errors import BadInput

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")
SUBTYPES = {"PCM_16": "PCM_16", "PCM_24": "PCM_24", "FLOAT": "FLOAT", "16": "PCM_16", "24": "PCM_24",
            "float": "FLOAT", "float32": "FLOAT"}


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) of an audio file without decoding it."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises RuntimeError/LibsndfileError/TypeError
        raise BadInput(f"{path}: not a readable audio file ({_short(exc)})") from None
    return info.samplerate, info.channels, info.frames


def read_audio(path: str | os.PathLike, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Decode ``path`` to ``(channels, time)`` float32 and its sample rate."""
    try:
        data, rate = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:
        raise BadInput(f"{path}: cannot decode audio ({_short(exc)})") from None
    if data.shape[0] == 0 and frames != 0:
        raise BadInput(f"{path}: audio file holds no samples")
    if not np.isfinite(data).all():
        raise BadInput(f"{path}: audio holds NaN or infinite samples")
    return np.ascontiguousarray(data.T), rate


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write ``(channels, time)`` audio atomically (temporary name, then rename).

    The format follows the extension (``.wav`` or ``.flac``); ``subtype`` is
    ``PCM_16``, ``PCM_24`` or ``FLOAT`` (``FLOAT`` only for wav).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = SUBTYPES.get(str(subtype), str(subtype))
    fmt = "FLAC" if path.suffix.lower() == ".flac" else "WAV"
    if fmt == "FLAC" and subtype == "FLOAT":
        raise BadInput(f"{path}: FLAC cannot hold float samples; use 16 or 24 bit")
    data = np.asarray(audio, dtype=np.float32).T
    if subtype != "FLOAT":
        data = np.clip(data, -1.0, 1.0)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sf.write(str(tmp), data, int(sample_rate), subtype=subtype, format=fmt)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited (windowed-sinc) resampling along the last axis; float32 in and out."""
    if int(orig_rate) == int(new_rate):
        return np.asarray(audio, dtype=np.float32)
    import torch
    import torchaudio.functional as AF

    tensor = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    out = AF.resample(tensor, int(orig_rate), int(new_rate))
    return out.numpy()


def resample_tensor(audio, orig_rate: int, new_rate: int):
    """Resample a torch tensor ``(..., time)``; stays on its device."""
    if int(orig_rate) == int(new_rate):
        return audio
    import torchaudio.functional as AF

    return AF.resample(audio, int(orig_rate), int(new_rate))


def to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Make ``(c, time)`` audio ``(channels, time)``: mono is duplicated, stereo is averaged to mono."""
    have = audio.shape[0]
    if have == channels:
        return audio
    if have == 1:
        return np.repeat(audio, channels, axis=0)
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    raise BadInput(f"cannot map {have} channels to {channels}")


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


@lru_cache(maxsize=None)
def _stempeg():
    if not ffmpeg_available():
        raise BadInput("reading .stem.mp4 needs ffmpeg and ffprobe on PATH (Debian: apt-get install ffmpeg)")
    import stempeg

    return stempeg


def stem_mp4_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(number of streams, sample rate, channels) of a native-instruments ``.stem.mp4``."""
    stempeg = _stempeg()
    try:
        info = stempeg.Info(str(path))
        return info.nb_audio_streams, int(info.sample_rate(0)), int(info.channels(0))
    except Exception as exc:
        raise BadInput(f"{path}: not a readable .stem.mp4 ({_short(exc)})") from None


def read_stem_mp4(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode every stream of a ``.stem.mp4`` to ``(streams, channels, time)`` float32.

    Decoded the way musdb decodes it (stempeg through ffmpeg as 16-bit PCM), so that the
    samples are identical to ``musdb.DB(...).tracks[i].stems``.
    """
    stempeg = _stempeg()
    try:
        info = stempeg.Info(str(path))
        stems, rate = stempeg.read_stems(str(path), info=info, dtype=np.float32, ffmpeg_format="s16le")
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"{path}: cannot decode .stem.mp4 ({_short(exc)})") from None
    stems = np.asarray(stems, dtype=np.float32)
    if stems.ndim != 3 or stems.shape[1] == 0:
        raise BadInput(f"{path}: .stem.mp4 decoded to no audio")
    return np.ascontiguousarray(stems.transpose(0, 2, 1)), int(rate)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__


def time_stretch(audio: np.ndarray, rate: float, n_fft: int = 1024) -> np.ndarray:
    """Phase-vocoder time stretch of ``(channels, time)``: ``rate`` > 1 is faster (shorter output)."""
    if rate == 1.0:
        return np.asarray(audio, dtype=np.float32)
    import torch
    import torchaudio.functional as AF

    from mss_tools.dsp import STFT

    stft = STFT(n_fft, n_fft // 4)
    spec = stft(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)))
    advance = torch.linspace(0, np.pi * stft.hop_length, stft.n_freq)[:, None]
    stretched = AF.phase_vocoder(spec, rate, advance)
    length = int(round(audio.shape[-1] / rate))
    return stft.inverse(stretched, length).numpy()


def pitch_shift(audio: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Shift pitch by ``semitones`` keeping the duration (time stretch, then resample)."""
    if semitones == 0:
        return np.asarray(audio, dtype=np.float32)
    factor = 2.0 ** (semitones / 12.0)
    stretched = time_stretch(audio, 1.0 / factor)
    step = 100
    shifted = resample(stretched, int(round(sample_rate * factor / step)) * step, sample_rate)
    out = np.zeros_like(audio, dtype=np.float32)
    n = min(out.shape[-1], shifted.shape[-1])
    out[:, :n] = shifted[:, :n]
    return out
