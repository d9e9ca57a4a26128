"""The listening section: aligned excerpts of mixture, reference and every model's estimate.

Each clip is embedded in the page as a data URI: mono downmix, resampled to at most
``MAX_RATE`` Hz, 16-bit FLAC, and a spectrogram picture (JPEG). All clips of one excerpt
share one gain (attenuation only, so that the loudest peak fits) and one dB colour scale,
so that levels and spectra compare across players. Spectrograms have a mel-spaced frequency axis.
"""

from __future__ import annotations

import base64
import io
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mss_tools.errors import MssError
from mss_tools.report.excerpts import Excerpt, choose_excerpts, reference
from mss_tools.report.runs import Run
from mss_tools.report.signal import mel_rows, spectrogram_db

MAX_RATE = 22050
DB_RANGE = 80.0
SPECTROGRAM_COLUMNS = 600  # about this many STFT frames per picture
PEAK = 0.99


@dataclass
class Clip:
    """One player: ``name`` (mixture, reference or a model label), its audio and spectrogram as data URIs."""

    name: str
    audio_uri: str
    image_uri: str
    caption: str = ""


@dataclass
class ListeningItem:
    excerpt: Excerpt
    clips: list[Clip]


@dataclass
class Listening:
    """What the page shows: the items, notes on what was left out, and how the audio was encoded."""

    items: list[ListeningItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sample_rate: int | None = None


def reference_cache(runs: Sequence[Run]):
    """The stem cache named by the first run whose ``references`` is a readable stem cache, or ``None``."""
    from mss_tools.cache import StemCache

    for run in runs:
        if run.references is not None and run.references.is_file():
            try:
                return StemCache(run.references)
            except MssError:
                continue
    return None


def build(runs: Sequence[Run], seconds: float = 8.0, per_category: int = 2) -> Listening:
    """Choose excerpts and render their clips; a ``Listening`` with only notes when there is no audio."""
    result = Listening()
    audible = [run for run in runs if run.predictions is not None and run.predictions.is_dir()]
    if not audible:
        result.notes.append("No listening section: none of the score files' predictions folders exists "
                            "(scores only).")
        return result
    for run in runs:
        if all(run is not other for other in audible):
            result.notes.append(f"{run.label}: predictions folder {run.predictions} not found; left out here.")
    cache = reference_cache(audible)
    if cache is None:
        result.notes.append("No listening section: the score files' references are not a readable stem cache.")
        return result
    result.sample_rate = min(cache.sample_rate, MAX_RATE)
    try:
        excerpts, notes = choose_excerpts(audible, cache, lambda run, track, stem: run.estimate_path(track, stem)
                                          is not None, seconds, per_category)
        result.notes += notes
        with tempfile.TemporaryDirectory(prefix="mss-compare-") as scratch:
            for excerpt in excerpts:
                try:
                    result.items.append(render_item(excerpt, audible, cache, result.sample_rate, Path(scratch)))
                except MssError as exc:
                    result.notes.append(f"Excerpt {excerpt.track} {excerpt.start:.1f}-{excerpt.stop:.1f} s left out: "
                                        f"{exc}")
    finally:
        cache.close()
    return result


def render_item(excerpt: Excerpt, runs: Sequence[Run], cache, rate: int, scratch: Path) -> ListeningItem:
    """Read, align, level and encode the clips of one excerpt (mixture, reference, then each model)."""
    from mss_tools import audio

    start = int(round(excerpt.start * cache.sample_rate))
    stop = int(round(excerpt.stop * cache.sample_rate))
    names = ["mixture", f"reference ({excerpt.stem})"]
    signals = [reference(cache, excerpt.split, excerpt.track, "mixture", start, stop),
               reference(cache, excerpt.split, excerpt.track, excerpt.stem, start, stop)]
    for run in runs:
        path = run.estimate_path(excerpt.track, excerpt.stem)
        file_rate, _, frames = audio.audio_info(path)
        first = int(round(excerpt.start * file_rate))
        count = max(0, min(frames, int(round(excerpt.stop * file_rate))) - first)
        data, _ = audio.read_audio(path, first, count)
        names.append(run.label)
        signals.append(audio.resample(data, file_rate, cache.sample_rate))
    mono = []  # (time,) at ``rate``, aligned and of equal length
    for data in signals:
        fitted = np.zeros(stop - start, dtype=np.float32)
        downmix = np.asarray(data, dtype=np.float32).mean(axis=0)[: stop - start]
        fitted[: downmix.size] = downmix
        mono.append(audio.resample(fitted, cache.sample_rate, rate))
    peak = max(float(np.abs(x).max()) for x in mono)
    gain = min(1.0, PEAK / peak) if peak > 0 else 1.0
    pictures = [mel_rows(spectrogram_db(x * gain, *_stft_size(rate, x.size)), rate) for x in mono]
    top = max(float(p.max()) for p in pictures)
    scores = excerpt_scores(runs, excerpt)
    captions = ["", ""] + [scores.get(run.label, "") for run in runs]
    clips = [Clip(name, audio_uri(x * gain, rate, scratch / "clip.flac"), image_uri(picture, top - DB_RANGE, top),
                  caption) for name, x, picture, caption in zip(names, mono, pictures, captions)]
    if gain < 1.0:
        clips[0].caption = f"all players attenuated by {-20 * math.log10(gain):.1f} dB"
    return ListeningItem(excerpt, clips)


def excerpt_scores(runs: Sequence[Run], excerpt: Excerpt) -> dict[str, str]:
    """``{label: "sdr x dB here"}``: each model's median framewise sdr over the frames inside the excerpt."""
    out = {}
    for run in runs:
        frames = run.frames(excerpt.stem, "sdr").get(excerpt.track)
        if frames is None:
            continue
        starts = np.arange(frames.size) * run.hop_seconds
        inside = (starts >= excerpt.start - 1e-6) & (starts + run.window_seconds <= excerpt.stop + 1e-6)
        values = frames[inside & np.isfinite(frames)]
        if values.size:
            out[run.label] = f"sdr {np.median(values):.1f} dB here ({values.size} frames)"
    return out


def _stft_size(rate: int, length: int) -> tuple[int, int]:
    n_fft = 1024 if rate >= 16000 else 512
    return n_fft, int(min(n_fft, max(n_fft // 8, math.ceil(length / SPECTROGRAM_COLUMNS))))


def audio_uri(signal: np.ndarray, rate: int, scratch: Path) -> str:
    """A ``data:audio/flac`` URI of mono ``(time,)`` audio as 16-bit FLAC (written through mss_tools.audio)."""
    from mss_tools import audio

    audio.write_audio(scratch, signal[None, :], rate, "PCM_16")
    return "data:audio/flac;base64," + base64.b64encode(scratch.read_bytes()).decode("ascii")


def image_uri(spectrogram: np.ndarray, vmin: float, vmax: float) -> str:
    """A ``data:image/jpeg`` URI of a ``(freq, frames)`` dB spectrogram, low frequencies at the bottom."""
    from matplotlib import image

    buffer = io.BytesIO()
    image.imsave(buffer, spectrogram, vmin=vmin, vmax=vmax, cmap="magma", origin="lower", format="jpeg",
                 pil_kwargs={"quality": 85})
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
