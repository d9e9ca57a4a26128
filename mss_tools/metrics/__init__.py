"""Separation metrics, named by what they are (see the metrics contract in the README).

- ``usdr``: utterance-level SDR, 10·log10(‖ref‖² / ‖ref − est‖²) over the whole track
  (the MDX challenge's "SDR");
- ``si_sdr``: scale-invariant SDR over the whole track;
- ``sdr``/``isr``/``sir``/``sar``: BSSEval v4 framewise metrics (:mod:`mss_tools.metrics.bsseval`).
"""

from __future__ import annotations

import numpy as np

USDR_DELTA = 1e-7
# BSSEval metrics that depend on the distortion filters, hence on the conditioning of the
# references' Gram matrix; above this condition number museval's values are not reproducible
# (see mss_tools.metrics.bsseval.ill_conditioned) and the tools leave them out.
FILTER_METRICS = ("isr", "sir", "sar")
CONDITION_LIMIT = 1e12
# A reference whose RMS over the whole track (all channels; full scale = 1.0) is below this is
# silent: its SDRs measure only the estimate's energy (an all-zero reference has usdr
# 10·log10(δ / (‖ŝ‖² + δ)), e.g. -97 dB) and it makes the joint BSSEval run singular.
# ``mss score`` gives such a (track, stem) no metric values, evaluates the track's other
# stems jointly without it and leaves it out of every aggregate. -80 dBFS is far below any
# audible stem and above 16-bit dither (about -96 dBFS).
SILENT_REFERENCE_DBFS = -80.0
# The collapse check: a model that "separates" by outputting (near) silence scores about 0 dB
# framewise sdr, above the mixture's -5 dB, so sdr alone cannot catch it. A (model, source) is
# flagged when, over tracks, its median estimate level is this far below the reference's ...
COLLAPSE_LEVEL_DB = -20.0
# ... or its median si_sdr lies this far below its median sdr (a scaled-down or unrelated estimate:
# sdr forgives a gain error through its distortion filter, si_sdr does not).
COLLAPSE_SI_SDR_GAP_DB = 10.0


def usdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Utterance SDR in dB of one stem, ``(channels, time)`` arrays (MDX definition, delta 1e-7)."""
    reference = np.asarray(reference, dtype=np.float64)
    error = reference - np.asarray(estimate, dtype=np.float64)
    return float(10 * np.log10((np.sum(reference ** 2) + USDR_DELTA) / (np.sum(error ** 2) + USDR_DELTA)))


def si_sdr(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-12) -> float:
    """Scale-invariant SDR in dB; channels are concatenated into one signal (no mean removal)."""
    reference = np.asarray(reference, dtype=np.float64).ravel()
    estimate = np.asarray(estimate, dtype=np.float64).ravel()
    alpha = np.dot(estimate, reference) / (np.dot(reference, reference) + eps)
    target = alpha * reference
    return float(10 * np.log10((np.sum(target ** 2) + eps) / (np.sum((estimate - target) ** 2) + eps)))


def estimate_level_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """The estimate's energy relative to the reference's, in dB (0: as loud; an all-zero estimate
    gives about -100 dB rather than -inf, so that it can be aggregated and flagged)."""
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    floor = 1e-10 * (np.sum(reference ** 2) + USDR_DELTA)
    return float(10 * np.log10((np.sum(estimate ** 2) + floor) / (np.sum(reference ** 2) + USDR_DELTA)))


def collapse_reasons(level_db: float, sdr: float, si_sdr: float) -> list[str]:
    """Why a (model, source) with these medians over tracks looks collapsed; empty if it does not.
    NaN medians (no value) never flag."""
    reasons = []
    if level_db < COLLAPSE_LEVEL_DB:
        reasons.append(f"estimates {-level_db:.0f} dB below the references (near-silent)")
    if sdr - si_sdr > COLLAPSE_SI_SDR_GAP_DB:
        reasons.append(f"si_sdr {sdr - si_sdr:.1f} dB below sdr")
    return reasons


def rms_dbfs(signal: np.ndarray) -> float:
    """RMS level in dB relative to full scale (1.0) of an array of any shape; ``-inf`` for all zeros."""
    power = float(np.mean(np.square(np.asarray(signal, dtype=np.float64)))) if np.size(signal) else 0.0
    return float(10 * np.log10(power)) if power > 0 else float("-inf")


def is_silent(reference: np.ndarray) -> bool:
    """Whether a reference ``(channels, time)`` is silent: RMS below :data:`SILENT_REFERENCE_DBFS`."""
    return rms_dbfs(reference) < SILENT_REFERENCE_DBFS


def nanmedian(values) -> float:
    """Median ignoring NaN (a silent frame), as museval aggregates: ±inf stay (+inf is a frame
    estimated perfectly); NaN when nothing is left (no warning). ``None`` counts as NaN."""
    array = _without_nan(values)
    return float(np.median(array)) if array.size else float("nan")


def nanmean(values) -> float:
    """Mean ignoring NaN (``None`` counts as NaN); NaN when nothing is left."""
    array = _without_nan(values)
    return float(np.mean(array)) if array.size else float("nan")


def count_values(values) -> int:
    """How many values are not NaN/``None`` (what :func:`nanmedian` and :func:`nanmean` use)."""
    return int(_without_nan(values).size)


def _without_nan(values) -> np.ndarray:
    array = np.array([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))],
                     dtype=np.float64)
    return array[~np.isnan(array)]
