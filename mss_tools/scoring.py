"""``mss score``: metrics of a predictions folder against its references.

Score file (``format="mss-scores"``, defined in :mod:`mss_tools.formats`, which reads and
writes it)::

    {"format": "mss-scores", "format_version": 1, "predictions": ..., "references": ...,
     "sample_rate": ..., "backend": "mss" | "museval", "museval": bool, "metrics": [...],
     "silent_reference_dbfs": -80.0,
     "tracks": {track: {stem: {"usdr": x, "si_sdr": x, "sdr": median, ..., "frames": {"sdr": [...]}}}},
     "aggregate": {stem: {metric: {"median": ..., "mean": ..., "tracks": n}}},
     "ill_conditioned": ["track/stem", ...], "silent_references": ["track/stem", ...]}

The file is strict JSON: every undefined or non-finite value (a silent frame, a track with
no finite frame, an aggregate over no track) is ``null``, never a bare ``NaN``. It is
written under a temporary name and renamed, as are the per-track results kept in
``<output>.parts/`` while scoring.

A reference stem below :data:`~mss_tools.metrics.SILENT_REFERENCE_DBFS` RMS is silent: its
(track, stem) has no metric values and no frames, only ``"silent_reference": true``; it is
named in ``silent_references``, left out of ``aggregate`` (whose ``tracks`` counts the
tracks that are in) and a warning names it. The track's other stems are evaluated jointly
without it (a silent reference would make every joint frame undefined and the joint
BSSEval problem singular).

With ``--museval`` a stem whose joint BSSEval run has an ill-conditioned Gram matrix
(condition number above :data:`CONDITION_LIMIT`) also gets ``"ill_conditioned": true``: its
isr/sir/sar are numerically unstable (in museval too); ``mss compare`` leaves them out.

Aggregation follows SiSEC: a framewise metric is reduced to its median over frames per
track (NaN frames ignored), then to the median over tracks; ``mean`` is the mean over
tracks of the same per-track values.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mss_tools import __version__, audio, formats
from mss_tools.cache import StemCache, is_stem_cache, remove_tree
from mss_tools.datasets import discover, load_track
from mss_tools.errors import BadInput, MssError
from mss_tools.formats import ACCOMPANIMENT, complement_sources
from mss_tools.metrics import (CONDITION_LIMIT, FILTER_METRICS, SILENT_REFERENCE_DBFS, collapse_reasons, count_values,
                               estimate_level_db, is_silent, nanmean, nanmedian,
                               si_sdr, usdr)
from mss_tools.metrics.bsseval import evaluate_track, frame_bounds, framewise_sdr
from mss_tools.outputs import OutputLock, check_replaceable, remove_stale_temps, sweep_temps, write_json
from mss_tools.progress import log, progress_bar
from mss_tools.runner import TrackFailure, failure_summary, run_tracks

FRAMEWISE = ("sdr", "isr", "sir", "sar")
MAX_LENGTH_MISMATCH = 1.0  # seconds; estimates within this are zero-padded/trimmed to the reference


@dataclass
class ReferenceSource:
    """Where references come from: a stem cache, or a data set root (MUSDB18, HQ, stem folder)."""

    path: str

    def __post_init__(self):
        self.is_cache = is_stem_cache(Path(self.path))
        self._dataset = None

    def load(self, track: str, stems: list[str], split: str | None = None) -> tuple[dict[str, np.ndarray], int]:
        """References ``{stem: (channels, time)}`` for ``stems`` (``accompaniment``: everything but vocals;
        ``no_<source>``: everything but ``<source>``)."""
        if self.is_cache:
            cache = StemCache(self.path)
            splits = [split] if split else cache.splits()
            for candidate in splits:
                if track in cache.tracks(candidate):
                    return _pick(dict(zip(cache.sources, cache.read(candidate, track))), stems, track), cache.sample_rate
            raise BadInput(f"{self.path}: no track {track!r} among the references")
        if self._dataset is None:
            self._dataset = discover(self.path)
        refs = [t for t in self._dataset.tracks if t.name == track]
        if not refs:
            raise BadInput(f"{self.path}: no track {track!r} among the references")
        loaded = load_track(refs[0], self._dataset)
        return _pick(loaded.stems, stems, track), loaded.sample_rate


def _pick(available: dict[str, np.ndarray], stems: list[str], track: str) -> dict[str, np.ndarray]:
    out = {}
    for stem in stems:
        if stem in available:
            out[stem] = available[stem]
        elif others := complement_sources(stem, list(available)):
            out[stem] = np.sum([available[k] for k in others], axis=0)
        else:
            raise BadInput(f"{track}: no reference for estimate {stem!r} (references have {', '.join(available)})")
    return out


def read_estimates(folder: Path) -> tuple[dict[str, np.ndarray], int]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in audio.AUDIO_EXTENSIONS)
    if not files:
        raise BadInput(f"{folder}: no estimate files")
    estimates, rates = {}, set()
    for path in files:
        data, rate = audio.read_audio(path)
        estimates[path.stem] = data
        rates.add(rate)
    if len(rates) > 1:
        raise BadInput(f"{folder}: estimates have different sample rates {sorted(rates)}")
    return estimates, rates.pop()


def spectral_condition(reference: np.ndarray, filter_length: int = 512) -> float:
    """A cheap estimate of the condition number of BSSEval's Gram matrix for one reference ``(channels, time)``.

    The Gram matrix of ``filter_length`` delayed copies of a signal is Toeplitz, and its
    eigenvalues follow the signal's power spectrum at that resolution, so ``max/min`` of a
    Welch spectrum (frames of ``2 * filter_length``, summed over channels) approximates its
    condition number; identical channels (mono content) make the stereo block singular.
    Band-limited or mono references exceed :data:`CONDITION_LIMIT`: museval's isr/sir/sar
    are unstable there (its ``sdr`` is not affected).
    """
    from scipy.signal import welch  # about a second to import; only the museval backend needs it

    reference = np.asarray(reference, dtype=np.float64)
    if reference.shape[0] > 1 and np.array_equal(reference[0], reference[1]):
        return float("inf")
    frame = 2 * filter_length
    if reference.shape[-1] < frame:
        return float("inf")
    _, power = welch(reference, window="hann", nperseg=frame, noverlap=0, detrend=False, axis=-1)
    power = power.min(axis=0)
    peak = power.max()
    return float("inf") if peak == 0 else float(peak / max(power.min(), peak * 1e-300))


def evaluation_runs(stems: list[str]) -> list[list[str]]:
    """The groups of stems evaluated jointly, as museval's ``eval_mus_track`` forms them.

    With ``vocals`` and ``accompaniment`` both present, ``accompaniment`` is left out of the
    joint run of the other stems and ``vocals``/``accompaniment`` are evaluated as a second,
    2-source run (museval's regression case).
    """
    if "vocals" in stems and ACCOMPANIMENT in stems:
        rest = [s for s in stems if s != ACCOMPANIMENT]
        return ([rest] if len(rest) >= 2 else []) + [["vocals", ACCOMPANIMENT]]
    return [stems]


def score_track(folder: Path, references: ReferenceSource, split: str | None, with_museval: bool,
                backend: str, convention: str = "museval") -> dict[str, Any]:
    """Scores of one track folder: ``{stem: {metric: value, "frames": {...}}}``; a stem whose
    reference is silent gets ``{"silent_reference": True}`` and is left out of the joint runs. An
    estimate that is all zeros (the ``silence`` baseline, a collapsed model) is left out of the joint
    BSSEval runs too and flagged ``silent_estimate``: museval gives every frame of it NaN (and refuses
    the whole track), here its framewise metrics are null and usdr/si_sdr/estimate_level_db say
    what it is."""
    estimates, rate = read_estimates(folder)
    refs, ref_rate = references.load(folder.name, list(estimates), split)
    if rate != ref_rate:
        raise BadInput(f"{folder}: estimates at {rate} Hz but references at {ref_rate} Hz")
    length = next(iter(refs.values())).shape[-1]
    for stem, estimate in estimates.items():
        if abs(estimate.shape[-1] - length) > MAX_LENGTH_MISMATCH * rate:
            raise BadInput(f"{folder / stem}.wav: {estimate.shape[-1]} samples but the reference has {length}")
        if estimate.shape[0] != refs[stem].shape[0]:
            raise BadInput(f"{folder / stem}.wav: {estimate.shape[0]} channels but the reference has "
                           f"{refs[stem].shape[0]}")
        fitted = np.zeros_like(refs[stem])
        fitted[:, : min(length, estimate.shape[-1])] = estimate[:, :length]
        estimates[stem] = fitted
    silent = {s for s in estimates if is_silent(refs[s])}
    stems = [s for s in estimates if s not in silent]
    result: dict[str, Any] = {s: {"silent_reference": True} for s in silent}
    result.update({s: {"usdr": usdr(refs[s], estimates[s]), "si_sdr": si_sdr(refs[s], estimates[s]),
                       "estimate_level_db": estimate_level_db(refs[s], estimates[s])} for s in stems})
    frames: dict[str, dict[str, list[float]]] = {}
    if with_museval:
        quiet = {s for s in stems if not np.any(estimates[s])}
        for stem in quiet:
            result[stem]["silent_estimate"] = True
            frames[stem] = {metric: [None] * len(frame_bounds(length, rate, rate)) for metric in FRAMEWISE}
        runs = [[s for s in run if s not in silent | quiet] for run in evaluation_runs(list(estimates))]
        for run in filter(None, runs):
            scores, conditions = _bsseval(refs, estimates, run, rate, backend)
            for stem, values in scores.items():
                # museval: the vocals/accompaniment run overwrites vocals; "separate": the first run's vocals stay
                if stem not in frames or convention == "museval":
                    frames[stem] = values
            # sir/sar of every stem of a run come from the run's joint projection
            if any(conditions[stem] > CONDITION_LIMIT for stem in run):
                for stem in run:
                    result[stem]["ill_conditioned"] = True
    elif stems:
        sdr = framewise_sdr(np.stack([refs[s] for s in stems]), np.stack([estimates[s] for s in stems]), rate)
        frames = {s: {"sdr": sdr[i].tolist()} for i, s in enumerate(stems)}
    for stem in stems:
        result[stem]["frames"] = {m: [None if v is None or not np.isfinite(v) else float(v) for v in values]
                                  for m, values in frames[stem].items()}
        for metric, values in frames[stem].items():
            result[stem][metric] = nanmedian(values)  # +inf frames (perfect) count, as in museval
        if result[stem].get("ill_conditioned"):
            log.warning("%s/%s: a reference of its joint evaluation is ill-conditioned (band-limited, mono or "
                        "near-silent); isr/sir/sar are unstable there, in museval too: trust sdr", folder.name, stem)
    return {stem: result[stem] for stem in estimates}


def _bsseval(refs, estimates, stems, rate, backend) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Frame scores of one joint run and, per stem, the condition number of the Gram matrices
    behind its isr/sir/sar: exact (from the factorisations) with our backend, the cheap
    :func:`spectral_condition` estimate with museval's."""
    if backend == "museval":
        import museval.metrics

        ref = np.stack([refs[s].T for s in stems]).astype(np.float64)
        est = np.stack([estimates[s].T for s in stems]).astype(np.float64)
        try:
            sdr, isr, sir, sar, _ = museval.metrics.bss_eval(ref, est, compute_permutation=False, window=rate, hop=rate,
                                                             framewise_filters=False, bsseval_sources_version=False)
        except Exception as exc:
            raise MssError(f"museval failed: {exc}") from None
        values = {"sdr": sdr, "isr": isr, "sir": sir, "sar": sar}
        return ({s: {m: v[i].tolist() for m, v in values.items()} for i, s in enumerate(stems)},
                {s: spectral_condition(refs[s]) for s in stems})
    scores = evaluate_track({s: refs[s] for s in stems}, {s: estimates[s] for s in stems}, rate, condition=True)
    return scores, {s: scores[s].pop("condition") for s in stems}


def aggregate(tracks: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """SiSEC aggregation: per-track value (already the median over frames), then median and mean over tracks
    (isr/sir/sar without the tracks flagged ``ill_conditioned``; a silent reference has no values at all)."""
    stems: dict[str, dict[str, list[float]]] = {}
    for scores in tracks.values():
        for stem, metrics in scores.items():
            for metric, value in metrics.items():
                if metric == "frames" or metric in formats.STEM_FLAGS:
                    continue
                if metric in FILTER_METRICS and metrics.get("ill_conditioned"):
                    value = None  # numerically unreliable: left out of the aggregate, as in mss compare
                stems.setdefault(stem, {}).setdefault(metric, []).append(value)
    return {stem: {metric: {"median": nanmedian(v), "mean": nanmean(v), "tracks": count_values(v)}
                   for metric, v in metrics.items()} for stem, metrics in stems.items()}


def _folder_stamp(folder: Path, with_museval: bool, backend: str) -> str:
    # the silence threshold is part of the scoring rules: a change rescores every track
    items = [f"{with_museval}|{backend}|{__version__}|silent<{SILENT_REFERENCE_DBFS}"]
    for path in sorted(folder.iterdir()):
        stat = path.stat()
        items.append(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def score(predictions: str | os.PathLike, output: str | os.PathLike | None, references: str | None = None,
          with_museval: bool = False, backend: str = "mss", jobs: int = 1,
          convention: str = "museval", force: bool = False) -> formats.ScoresFile:
    """Score every track folder of ``predictions``; resumable through ``<output>.parts/``.

    One writer per score file; an existing ``output`` is replaced only if it is a score file of
    the same predictions (or with ``force``). Returns the score document as written
    (non-finite values as ``None``)."""
    predictions = Path(predictions)
    if not predictions.is_dir():
        raise BadInput(f"{predictions}: no such predictions folder")
    manifest_path = predictions / formats.MANIFEST_NAME
    manifest = formats.read_predictions(manifest_path) if manifest_path.exists() else None
    splits: dict[str, str | None] = {}
    if references is None:
        if manifest is None:
            raise BadInput(f"{manifest_path}: no predictions manifest (name the references with --ref)")
        caches = {e.get("cache") for e in manifest["tracks"] if e.get("cache")}
        if not caches:
            raise BadInput(f"{manifest_path}: inputs were audio files; name the references with --ref")
        if len(caches) > 1:
            raise BadInput(f"{manifest_path}: tracks come from several caches; name one with --ref")
        references = caches.pop()
        splits = {e["track"]: e.get("split") for e in manifest["tracks"]}
    folders = sorted(p for p in predictions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise BadInput(f"{predictions}: no track folders")
    scorer = _TrackScorer(ReferenceSource(references), splits, with_museval, backend, convention)
    if not output:
        return _score_folders(folders, scorer, predictions, references, manifest, None, jobs)
    output = Path(output)
    with OutputLock(output, "score"):
        check_replaceable(output, lambda path: _predictions_of(path) == str(predictions.resolve()),
                          f"a score file of {predictions}", force)
        remove_stale_temps(output)
        sweep_temps(output.with_name(output.name + ".parts"))
        return _score_folders(folders, scorer, predictions, references, manifest, output, jobs)


@dataclass
class _TrackScorer:
    """Scores one track folder (picklable, for ``-j`` workers)."""

    references: ReferenceSource
    splits: dict[str, str | None]
    with_museval: bool
    backend: str
    convention: str

    def __call__(self, folder: Path) -> dict[str, Any]:
        try:
            return score_track(folder, self.references, self.splits.get(folder.name), self.with_museval,
                               self.backend, self.convention)
        except MssError as exc:
            raise type(exc)(f"{folder}: {exc}" if str(folder) not in str(exc) else str(exc)) from None


def _score_folders(folders: list[Path], scorer: _TrackScorer, predictions: Path, references: str,
                   manifest: formats.PredictionsManifest | None, output: Path | None, jobs: int) -> formats.ScoresFile:
    with_museval, backend, convention = scorer.with_museval, scorer.backend, scorer.convention
    parts = output.with_name(output.name + ".parts") if output else None
    results: dict[str, Any] = {}
    stamps: dict[str, str] = {}
    previous = _previous(output)
    todo, part_of = [], {}
    for folder in folders:
        stamp = stamps[folder.name] = _folder_stamp(folder, with_museval, f"{backend}|{convention}")
        if previous.get("stamps", {}).get(folder.name) == stamp and folder.name in previous["tracks"]:
            results[folder.name] = previous["tracks"][folder.name]
            continue
        part = parts / f"{hashlib.sha256(folder.name.encode()).hexdigest()[:16]}.json" if parts else None
        saved = _read_part(part, stamp, folder.name) if part is not None else None
        if saved is not None:
            results[folder.name] = saved
            continue
        todo.append(folder)
        part_of[folder.name] = part
    if parts:
        parts.mkdir(parents=True, exist_ok=True)
    failures = []
    with progress_bar(len(folders), "score") as bar:
        bar.advance(len(folders) - len(todo))
        for folder, outcome in run_tracks(scorer, todo, jobs):
            if isinstance(outcome, TrackFailure):
                failures.append(outcome)
                log.error("%s", outcome)
            else:
                results[folder.name] = outcome
                if part_of[folder.name] is not None:
                    write_json(part_of[folder.name], formats.json_values(
                        {"stamp": stamps[folder.name], "scores": outcome}), indent=None)
            bar.advance()
    if failures:
        raise BadInput(failure_summary(failures, len(folders)))
    document = {
        "format": formats.SCORES_FORMAT, "format_version": formats.SCORES_VERSION,
        "created_by": {"tool": "mss score", "version": __version__},
        "predictions": str(predictions.resolve()), "references": str(Path(references).resolve()),
        "backend": backend if with_museval else "mss", "museval": with_museval,
        "metrics": ["usdr", "si_sdr"] + (list(FRAMEWISE) if with_museval else ["sdr"]),
        "window_seconds": 1.0, "hop_seconds": 1.0,
        "accompaniment_convention": (convention if with_museval else None),
        "joint_evaluation": "the estimates present are evaluated jointly; with vocals and accompaniment both "
                            "present, vocals/accompaniment is a separate 2-source run and "
                            + ("its vocals scores replace the joint run's (museval, sigsep-mus-eval #65)"
                               if convention == "museval" else "the joint run's vocals scores are kept")
                            + "; a stem whose reference is silent is left out of the joint runs",
        "aggregation": "median over frames per track, then median (and mean) over tracks; silent references "
                       "have no values and are left out",
        "silent_reference_dbfs": SILENT_REFERENCE_DBFS,
        "tracks": {name: results[name] for name in sorted(results)},
    }
    document["aggregate"] = aggregate(document["tracks"])
    document["ill_conditioned"] = _flagged(document["tracks"], "ill_conditioned")
    document["silent_references"] = _flagged(document["tracks"], "silent_reference")
    document["collapsed"] = collapsed(document["aggregate"])
    for stem, reasons in document["collapsed"].items():
        log.warning("%s looks collapsed: %s", stem, "; ".join(reasons))
    document["stamps"] = {name: stamps[name] for name in sorted(results)}
    if manifest is not None:
        document["model"] = {k: manifest.get(k) for k in ("checkpoint", "arch", "sources", "model_sample_rate")}
        document["sample_rate"] = manifest.get("sample_rate")
    if document["silent_references"]:
        silent = document["silent_references"]
        log.warning("%d (track, stem) pairs have a silent reference (RMS below %g dBFS) and no scores; they are "
                    "left out of the aggregate: %s", len(silent), SILENT_REFERENCE_DBFS, ", ".join(silent))
    document = formats.json_values(document)
    if output:
        formats.write_scores(output, document)
        remove_tree(parts)
    return document


def collapsed(aggregate: dict[str, dict[str, dict[str, float]]]) -> dict[str, list[str]]:
    """``{stem: reasons}`` for the stems whose medians over tracks fail the collapse check."""
    out = {}
    for stem, metrics in aggregate.items():
        def median(name: str) -> float:
            value = metrics.get(name, {}).get("median")
            return float("nan") if value is None else float(value)

        reasons = collapse_reasons(median("estimate_level_db"), median("sdr"), median("si_sdr"))
        if reasons:
            out[stem] = reasons
    return out


def _flagged(tracks: dict[str, dict[str, Any]], flag: str) -> list[str]:
    """``"track/stem"`` of every stem carrying ``flag``, sorted."""
    return sorted(f"{track}/{stem}" for track, stems in tracks.items() for stem, values in stems.items()
                  if values.get(flag))


def _predictions_of(path: Path) -> str | None:
    """The predictions folder a score file at ``path`` scored (None for any other file)."""
    try:
        return formats.read_scores(path).get("predictions")
    except BadInput:
        return None


def _previous(output) -> dict:
    """An earlier score file at ``output`` (its per-track results are reused when the inputs are unchanged);
    ``{}`` when there is none or it cannot be read."""
    if not output or not Path(output).exists():
        return {}
    try:
        return formats.read_scores(output)
    except BadInput:
        return {}


def _read_part(part: Path, stamp: str, track: str) -> dict[str, Any] | None:
    """The scores of ``track`` kept in ``part`` by an interrupted run, if made from the same inputs (``stamp``)."""
    try:
        saved = json.loads(part.read_text())
        if not isinstance(saved, dict) or saved.get("stamp") != stamp:
            return None
        return formats.check_track_scores(saved.get("scores"), track)
    except (OSError, ValueError, BadInput):
        return None
