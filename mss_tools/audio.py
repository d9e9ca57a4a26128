"""The only place that reads, writes and resamples audio.

Arrays are ``float32`` and channels-first: ``(channels, time)``; a stem stack is
``(stems, channels, time)``. torchaudio is used here and nowhere else (for resampling),
so that it can be swapped.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from mss_tools.errors import BadInput
from mss_tools.outputs import atomic_path, fsync_file, temp_path
from mss_tools.progress import log

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")
SUBTYPES = {"PCM_16": "PCM_16", "PCM_24": "PCM_24", "FLOAT": "FLOAT", "16": "PCM_16", "24": "PCM_24",
            "float": "FLOAT", "float32": "FLOAT"}


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) of an audio file without decoding it."""
    try:
        with _decoder_messages_to_debug_log(path):
            info = sf.info(str(path))
    except Exception as exc:  # soundfile raises RuntimeError/LibsndfileError/TypeError
        raise _unreadable(path, exc, "not a readable audio file") from None
    return info.samplerate, info.channels, info.frames


def read_audio(path: str | os.PathLike, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Decode ``path`` to ``(channels, time)`` float32 and its sample rate."""
    try:
        with _decoder_messages_to_debug_log(path):
            data, rate = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:
        raise _unreadable(path, exc, "cannot decode audio") from None
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
    with atomic_path(path) as tmp:
        try:
            sf.write(str(tmp), data, int(sample_rate), subtype=subtype, format=fmt)
        except Exception:
            raise _write_failure(path) from None


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited (windowed-sinc) resampling along the last axis; float32 in and out."""
    if int(orig_rate) == int(new_rate):
        return np.asarray(audio, dtype=np.float32)
    import torch
    import torchaudio.functional as AF

    tensor = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    out = AF.resample(tensor, int(orig_rate), int(new_rate))
    return out.numpy()


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
    """The last line of an exception's message, whole (libsndfile's own reason when there is one)."""
    reason = getattr(exc, "error_string", None)  # soundfile.LibsndfileError, without "Error opening <path>:"
    text = [line.strip() for line in str(reason or exc).splitlines() if line.strip()]
    return text[-1] if text else type(exc).__name__


def _unreadable(path: str | os.PathLike, exc: Exception, problem: str) -> BadInput:
    """The error for an audio file that libsndfile cannot open or decode."""
    location = Path(path)
    if location.is_symlink() and not location.exists():
        return BadInput(f"{path}: {problem} (a broken symbolic link: its target does not exist or loops)")
    if not location.exists():
        return BadInput(f"{path}: {problem} (no such file)")
    if location.is_dir():
        return BadInput(f"{path}: {problem} (a folder, not a file)")
    reason = _short(exc)
    if reason.startswith("File does not exist or is not a regular file"):
        # libsndfile's answer when its MP3 decoder rejects the data; the file does exist
        reason = f"the file exists but cannot be decoded: corrupt, or not {location.suffix.lstrip('.') or 'audio'} data"
    return BadInput(f"{path}: {problem} ({reason})")


@contextmanager
def _decoder_messages_to_debug_log(path: str | os.PathLike):
    """While an MP3 is opened or read, send what libmpg123 (libsndfile's MP3 decoder) prints straight to
    file descriptor 2 to the debug log (``-v``) instead of the terminal; other formats are left alone.

    Descriptor 2 is process-wide: whatever another thread writes to stderr meanwhile goes to the
    debug log as well (mss reads audio in one thread; only a progress bar refresh can be caught).
    """
    if not str(path).lower().endswith(".mp3"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no stderr, or no descriptor 2 to save
        yield
        return
    try:
        sink = tempfile.TemporaryFile()
    except OSError:
        os.close(saved)
        yield
        return
    with sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            messages = [line.strip() for line in sink.read().decode(errors="replace").splitlines() if line.strip()]
            if messages:
                log.debug("%s: decoder messages: %s", path, " | ".join(messages))


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


# --------------------------------------------------------------------------------------
# streaming: blockwise decoding, resampling and writing (memory bounded by the block)


class AudioReader:
    """Blockwise decoding of an audio file to ``(channels, n)`` float32.

    ``sample_rate``, ``channels`` and ``frames`` come from the header; ``read`` seeks, and
    ``blocks`` yields the file in order. A short read (a truncated file), a decoding error
    or a non-finite sample raises :class:`BadInput` naming the file. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            with _decoder_messages_to_debug_log(self.path):
                self._file = sf.SoundFile(self.path)
        except Exception as exc:
            raise _unreadable(path, exc, "not a readable audio file") from None
        self.sample_rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.frames = int(self._file.frames)
        if self.frames <= 0:
            self.close()
            raise BadInput(f"{path}: audio file holds no samples")

    def read(self, start: int, frames: int) -> np.ndarray:
        """``(channels, frames)`` from sample ``start`` (fewer at the end of the file)."""
        frames = min(frames, self.frames - start)
        try:
            with _decoder_messages_to_debug_log(self.path):
                if self._file.tell() != start:
                    self._file.seek(start)
                data = self._file.read(frames, dtype="float32", always_2d=True)
        except Exception as exc:
            raise BadInput(f"{self.path}: cannot decode audio at sample {start} ({_short(exc)})") from None
        if data.shape[0] != frames:
            raise BadInput(f"{self.path}: file ends after {start + data.shape[0]} of {self.frames} samples")
        if not np.isfinite(data).all():
            raise BadInput(f"{self.path}: audio holds NaN or infinite samples")
        return np.ascontiguousarray(data.T)

    def blocks(self, block_frames: int, start: int = 0):
        """Yield ``(channels, block_frames)`` blocks (the last one shorter) from ``start`` to the end."""
        for first in range(start, self.frames, block_frames):
            yield self.read(first, block_frames)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AudioWriter:
    """Write an audio file block by block under a temporary name, renamed into place on success.

    ``file_format`` is ``"wav"`` or ``"flac"`` (default: from the extension); ``subtype`` as in
    :func:`write_audio`. Blocks are ``(channels, n)``; PCM output is clipped to [-1, 1]. Used as
    a context manager: a clean exit renames the file (``commit``), an exception removes it.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int, channels: int, subtype: str = "PCM_16",
                 file_format: str | None = None):
        self.path = Path(path)
        self.subtype = SUBTYPES.get(str(subtype), str(subtype))
        fmt = (file_format or self.path.suffix.lstrip(".") or "wav").upper()
        if fmt not in ("WAV", "FLAC"):
            raise BadInput(f"{path}: cannot write {fmt.lower()}; choose wav or flac")
        if fmt == "FLAC" and self.subtype == "FLOAT":
            raise BadInput(f"{path}: FLAC cannot hold float samples; use 16 or 24 bit")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path(self.path)
        open(self._tmp, "wb").close()  # a read-only or full folder fails here, as an OSError naming it
        self.channels = int(channels)
        self.frames = 0
        try:
            self._file = sf.SoundFile(str(self._tmp), "w", int(sample_rate), self.channels, self.subtype, format=fmt)
        except Exception:
            self._tmp.unlink(missing_ok=True)
            raise _write_failure(self.path) from None

    def write(self, block: np.ndarray) -> None:
        if block.shape[-1] == 0:
            return
        if block.shape[0] != self.channels:
            raise ValueError(f"{self.path}: block has {block.shape[0]} channels, the file {self.channels}")
        data = np.asarray(block, dtype=np.float32).T
        if self.subtype != "FLOAT":
            data = np.clip(data, -1.0, 1.0)
        try:
            self._file.write(data)
        except Exception:  # libsndfile reports a failed write as a short count (AssertionError) or RuntimeError
            raise _write_failure(self.path) from None
        self.frames += data.shape[0]

    def commit(self) -> None:
        try:
            self._file.close()
        except Exception:
            self._tmp.unlink(missing_ok=True)
            raise _write_failure(self.path) from None
        try:
            fsync_file(self._tmp)
            os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AudioWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def _write_failure(path: Path) -> OSError:
    """The filesystem error behind a failed libsndfile write, which does not report errno."""
    try:
        stats = os.statvfs(path.parent)
        full = stats.f_bavail * stats.f_frsize < (1 << 20)
    except OSError as exc:
        return exc
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if not os.access(path.parent, os.W_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return OSError(errno.EIO, "the audio file could not be written", str(path))


def resampled_length(length: int, orig_rate: int, new_rate: int) -> int:
    """Samples that :func:`resample` makes of ``length`` samples: ``ceil(length * new / orig)``."""
    g = math.gcd(int(orig_rate), int(new_rate))
    return -(-length * (int(new_rate) // g) // (int(orig_rate) // g))


class StreamResampler:
    """Resample a signal that arrives in blocks; the output equals :func:`resample` of the whole.

    ``push`` takes ``(..., n)`` float32 blocks (e.g. ``(channels, n)``) and returns the output
    samples whose whole filter support has arrived; ``finish`` returns the rest (in all,
    :func:`resampled_length` samples). The windowed-sinc filter maps each period of ``p``
    input samples to ``q`` output samples (``p/q`` the reduced rate ratio) from input
    ``[m·p - width, (m+1)·p + width)``, so every call resamples a slice that starts on a
    period boundary with enough context on both sides and keeps only the periods it fully
    covers. Equal rates pass blocks through untouched.
    """

    def __init__(self, orig_rate: int, new_rate: int):
        self.identity = int(orig_rate) == int(new_rate)
        self._received = 0
        self._shape: tuple[int, ...] = ()
        if self.identity:
            return
        import torchaudio.transforms

        self._filter = torchaudio.transforms.Resample(int(orig_rate), int(new_rate))
        g = math.gcd(int(orig_rate), int(new_rate))
        self._p, self._q = int(orig_rate) // g, int(new_rate) // g
        self._width = int(self._filter.width)
        self._context = -(-self._width // self._p)   # periods of left context
        self._buffer = None                           # input from sample self._start on
        self._start = 0                               # a multiple of p
        self._next = 0                                # first period not yet returned

    def push(self, block: np.ndarray) -> np.ndarray:
        self._received += block.shape[-1]
        self._shape = block.shape[:-1]
        if self.identity:
            return block
        block = np.asarray(block, dtype=np.float32)
        self._buffer = block if self._buffer is None else np.concatenate([self._buffer, block], axis=-1)
        return self._emit(max(0, (self._received - self._width) // self._p), final=False)

    def finish(self) -> np.ndarray:
        if self.identity or self._buffer is None:
            return np.zeros(self._shape + (0,), dtype=np.float32)
        return self._emit(-(-self._received // self._p), final=True)

    def _emit(self, end: int, final: bool) -> np.ndarray:
        """Output of periods ``[self._next, end)``."""
        if end <= self._next:
            return np.zeros(self._shape + (0,), dtype=np.float32)
        import torch

        first = max(0, self._next - self._context)
        stop = self._received if final else min(self._received, end * self._p + self._width)
        piece = self._buffer[..., first * self._p - self._start: stop - self._start]
        out = self._filter(torch.from_numpy(np.ascontiguousarray(piece))).numpy()
        lo = (self._next - first) * self._q
        out = out[..., lo:] if final else out[..., lo: (end - first) * self._q]
        self._next = end
        keep = max(0, self._next - self._context) * self._p
        self._buffer = self._buffer[..., keep - self._start:]
        self._start = keep
        return out
