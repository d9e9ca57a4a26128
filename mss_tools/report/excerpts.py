"""Choosing short excerpts worth listening to, automatically.

Three categories, each ranked over sliding windows of ``seconds`` length on every track that
the stem cache holds and every model has estimates of:

- ``transients``: onset-dense passages. Onsets are peaks of the spectral flux of the drums
  reference (the mixture when the cache has no drums); a window's score is its number of
  onsets, ties going to the window whose onsets are most centred.
- ``repetition``: loud, bar-periodic drum passages (long repetitive structure). Score: mean
  power of the drums reference (the mixture without drums) times ``0.5 + 0.5 * p``, ``p`` the
  onset envelope's highest autocorrelation at bar-length lags (1.5-4 s).
- ``disagreement``: the 1 s score frames where the models' framewise ``sdr`` spreads the most
  (max - min over models, of one stem, values below -20 dB counted as -20 dB so that frames
  every model fails, such as a near-silent reference, do not win), with the window centred
  on that frame. Needs two models.

Windows of one category never overlap; each category first takes at most one window per
track, and avoids the windows other categories took unless the corpus is too short for that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mss_tools.cache import StemCache
from mss_tools.formats import complement_sources
from mss_tools.report.runs import Run
from mss_tools.report.signal import onset_envelope, periodicity, pick_onsets

CATEGORIES = {
    "transients": "Transient attacks: the most onset-dense passages",
    "repetition": "Long repetitive structure: loud, bar-periodic drum passages",
    "disagreement": "Largest disagreement: where the models' framewise sdr differs most",
}
SELECTION_ORDER = ("disagreement", "transients", "repetition")
SDR_FLOOR = -20.0  # dB; below, a frame is a failure either way (e.g. a near-silent reference)


@dataclass
class Excerpt:
    """``[start, stop)`` seconds of ``track`` (in ``split`` of the stem cache), listened to on ``stem``."""

    category: str
    track: str
    split: str
    stem: str
    start: float
    stop: float
    score: float
    reason: str

    def overlaps(self, other: "Excerpt") -> bool:
        return self.track == other.track and self.start < other.stop and other.start < self.stop


@dataclass
class Candidate:
    score: float
    track: str
    stem: str
    start: float
    reason: str


def track_splits(cache: StemCache, tracks: Sequence[str]) -> dict[str, str]:
    """``{track: split}`` for the tracks the cache holds (first split that has it)."""
    found = {}
    for split in cache.splits():
        names = set(cache.tracks(split))
        for track in tracks:
            if track in names and track not in found:
                found[track] = split
    return found


def reference(cache: StemCache, split: str, track: str, stem: str, start: int = 0,
              stop: int | None = None) -> np.ndarray:
    """A stem's reference ``(channels, time)``: the cache's stem, the mixture, or a complement (accompaniment,
    no_<source>: the sum of the other sources)."""
    if stem == "mixture":
        return np.asarray(cache.read_mixture(split, track, start, stop), dtype=np.float32)
    if stem in cache.sources:
        return cache.read(split, track, start, stop, sources=[stem])[0]
    others = complement_sources(stem, cache.sources)
    if others:
        return cache.read(split, track, start, stop, sources=others).sum(axis=0)
    raise KeyError(stem)


def has_reference(cache: StemCache, stem: str) -> bool:
    return stem in cache.sources or complement_sources(stem, cache.sources) is not None


def percussive_stem(sources: Sequence[str]) -> str | None:
    """``drums``, else the first source named like drums or percussion, else ``None``."""
    if "drums" in sources:
        return "drums"
    return next((s for s in sources if "drum" in s.lower() or "perc" in s.lower()), None)


def window_starts(duration: float, seconds: float) -> np.ndarray:
    """Start times (s) of the candidate windows: a grid of ``min(0.5, seconds / 4)`` s steps."""
    if duration <= seconds:
        return np.zeros(1)
    step = min(0.5, seconds / 4)
    return np.append(np.arange(0.0, duration - seconds, step), duration - seconds)


def rhythm_candidates(signal: np.ndarray, sample_rate: int, seconds: float, track: str, stem: str,
                      source_name: str) -> tuple[list[Candidate], list[Candidate]]:
    """(transients, repetition) candidates of one track from its analysis signal ``(time,)`` (mono)."""
    duration = signal.size / sample_rate
    envelope, frame_rate = onset_envelope(signal, sample_rate)
    onset_times = pick_onsets(envelope, frame_rate) / frame_rate
    block = max(1, int(round(0.05 * sample_rate)))
    powers = np.add.reduceat(np.asarray(signal, dtype=np.float64) ** 2, np.arange(0, signal.size, block))
    cumulative_power = np.concatenate([[0.0], np.cumsum(powers)])
    transients, repetition = [], []
    for start in window_starts(duration, seconds):
        stop = min(duration, start + seconds)
        first, last = np.searchsorted(onset_times, [start, stop])
        count = int(last - first)
        if count:
            off_centre = abs(float(onset_times[first:last].mean()) - (start + stop) / 2) / max(stop - start, 1e-9)
            transients.append(Candidate(count - off_centre, track, stem, float(start),
                                        f"{count} onsets in {stop - start:.0f} s of the {source_name}"))
        first_block = int(start * sample_rate) // block
        last_block = min(powers.size, max(first_block + 1, math.ceil(stop * sample_rate / block)))
        power = (cumulative_power[last_block] - cumulative_power[first_block]) / ((last_block - first_block) * block)
        if power <= 0:
            continue
        e0, e1 = int(start * frame_rate), int(stop * frame_rate)
        p = periodicity(envelope[e0:e1], frame_rate)
        rms_db = 10 * math.log10(power)
        repetition.append(Candidate(power * (0.5 + 0.5 * p), track, stem, float(start),
                                    f"{source_name} at {rms_db:.1f} dBFS RMS, bar-lag autocorrelation {p:.2f}"))
    return transients, repetition


def disagreement_candidates(runs: Sequence[Run], track: str, stem: str, duration: float,
                            seconds: float) -> list[Candidate]:
    """One candidate per score frame of ``track``/``stem`` where at least two models have a finite ``sdr``."""
    frames = [run.frames(stem, "sdr").get(track) for run in runs]
    if any(f is None for f in frames):
        return []
    length = min(f.size for f in frames)
    stacked = np.stack([f[:length] for f in frames])  # (models, frames)
    finite = np.isfinite(stacked)
    usable = finite.sum(axis=0) >= 2
    out = []
    hop, window = runs[0].hop_seconds, runs[0].window_seconds
    for index in np.flatnonzero(usable):
        values = stacked[:, index]
        floored = np.maximum(values, SDR_FLOOR)
        spread = float(np.nanmax(floored) - np.nanmin(floored))
        if spread <= 0:
            continue
        centre = index * hop + window / 2
        start = float(np.clip(centre - seconds / 2, 0.0, max(0.0, duration - seconds)))
        detail = ", ".join(f"{run.label} {v:.1f}" for run, v in zip(runs, values) if np.isfinite(v))
        raw_spread = float(np.nanmax(values) - np.nanmin(values))
        out.append(Candidate(spread, track, stem, start, f"{stem} sdr spread {raw_spread:.1f} dB at "
                             f"{index * hop:.0f}-{index * hop + window:.0f} s ({detail} dB)"))
    return out


def select(candidates: list[Candidate], count: int, seconds: float, durations: dict[str, float],
           splits: dict[str, str], category: str, taken: list[Excerpt]) -> list[Excerpt]:
    """The ``count`` best candidates as excerpts, and appends them to ``taken`` (other categories' choices).

    Passes, until ``count`` are found: one per track, clear of every excerpt taken; any track, still
    clear; any track, clear of this category's own excerpts only (short corpora).
    """
    ranked = sorted(candidates, key=lambda c: (-c.score, c.track, c.start))
    others = list(taken)
    chosen: list[Excerpt] = []
    for one_per_track, avoid_others in ((True, True), (False, True), (False, False)):
        for c in ranked:
            if len(chosen) >= count:
                break
            if one_per_track and any(e.track == c.track for e in chosen):
                continue
            excerpt = Excerpt(category, c.track, splits[c.track], c.stem, c.start,
                              min(durations[c.track], c.start + seconds), c.score, c.reason)
            if any(excerpt.overlaps(e) for e in chosen + (others if avoid_others else [])):
                continue
            chosen.append(excerpt)
    taken.extend(chosen)
    return chosen


def choose_excerpts(runs: Sequence[Run], cache: StemCache, has_estimate: Callable[[Run, str, str], bool],
                    seconds: float = 8.0, per_category: int = 2) -> tuple[list[Excerpt], list[str]]:
    """Excerpts in category order (transients, repetition, disagreement) and notes on what was left out.

    ``has_estimate(run, track, stem)`` says whether a model's estimate audio exists.
    """
    tracks = list(dict.fromkeys(t for run in runs for t in run.tracks))
    splits = track_splits(cache, tracks)
    notes = []
    if len(splits) < len(tracks):
        notes.append(f"{len(tracks) - len(splits)} scored tracks are not in the reference cache {cache.path}.")
    stems = [s for s in dict.fromkeys(s for run in runs for s in run.stems) if has_reference(cache, s)]

    def complete(track: str, stem: str) -> bool:
        return all(has_estimate(run, track, stem) for run in runs)

    durations = {t: cache.length(split, t) / cache.sample_rate for t, split in splits.items()}
    candidates: dict[str, list[Candidate]] = {c: [] for c in CATEGORIES}
    drums = percussive_stem(cache.sources)
    listen = drums if drums in stems else next(iter(stems), None)
    for track, split in splits.items():
        if listen is not None and complete(track, listen):
            analysed = reference(cache, split, track, drums or "mixture")
            transients, repetition = rhythm_candidates(analysed.mean(axis=0), cache.sample_rate, seconds, track,
                                                       listen, f"{drums} reference" if drums else "mixture")
            candidates["transients"] += transients
            candidates["repetition"] += repetition
        if len(runs) >= 2:
            for stem in stems:
                if complete(track, stem):
                    candidates["disagreement"] += disagreement_candidates(runs, track, stem, durations[track],
                                                                          seconds)
    if len(runs) < 2:
        notes.append("Largest disagreement needs at least two models.")
    taken: list[Excerpt] = []
    chosen = {category: select(candidates[category], per_category, seconds, durations, splits, category, taken)
              for category in SELECTION_ORDER}
    for category, excerpts in chosen.items():
        if not excerpts and not (category == "disagreement" and len(runs) < 2):
            notes.append(f"No excerpt for '{category}': no track has every model's estimate and a usable "
                         "reference there.")
    return [e for category in CATEGORIES for e in chosen[category]], notes
