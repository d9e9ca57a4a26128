"""Paired per-track statistics between models.

For models A and B, a source and a metric, the *paired differences* are ``A - B`` (dB) on
the tracks where both have a finite value. Reported: their number ``n``, median and mean,
the Wilcoxon signed-rank test's two-sided p-value (zero differences dropped, as scipy's
default ``zero_method="wilcox"``), and a percentile-bootstrap 95% confidence interval of
the mean difference (tracks resampled with replacement).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Sequence

import numpy as np

from mss_tools.report.runs import Run
from mss_tools.report.tables import sources_of

PAIRED_METRICS = ("sdr", "usdr")
MIN_WILCOXON = 6  # below, even the most extreme sign pattern has two-sided p > 0.05 (1/16 at n = 5)
BOOTSTRAP_CHUNK = 1 << 22  # indices drawn per vectorised step (bounds memory for large track counts)
PAIRS_COLUMNS = ["source", "metric", "model_a", "model_b", "n", "median_diff", "mean_diff", "ci_low", "ci_high",
                 "wilcoxon_p", "a_better", "b_better", "note"]


@dataclass
class PairedComparison:
    """A − B on the common tracks of one source and metric; differences in dB, NaN where undefined."""

    source: str
    metric: str
    model_a: str
    model_b: str
    n: int
    median_diff: float
    mean_diff: float
    ci_low: float
    ci_high: float
    wilcoxon_p: float
    a_better: int
    b_better: int
    note: str = ""


def paired_differences(a: dict[str, float], b: dict[str, float]) -> tuple[list[str], np.ndarray]:
    """(tracks, ``a - b`` per track ``(n,)``) over the tracks where both values are finite."""
    tracks = sorted(t for t in a.keys() & b.keys() if math.isfinite(a[t]) and math.isfinite(b[t]))
    return tracks, np.array([a[t] - b[t] for t in tracks], dtype=np.float64)


def wilcoxon_p(differences: np.ndarray) -> tuple[float, str]:
    """(two-sided Wilcoxon signed-rank p-value, note); NaN and ``"n too small"`` below 6 non-zero differences."""
    nonzero = int(np.count_nonzero(differences))
    if nonzero < MIN_WILCOXON:
        what = "all differences zero" if differences.size and not nonzero else f"{nonzero} non-zero differences"
        return math.nan, f"n too small for Wilcoxon ({what})"
    from scipy.stats import wilcoxon

    return float(wilcoxon(differences).pvalue), ""


def bootstrap_ci(differences: np.ndarray, resamples: int = 10000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``differences`` ``(n,)``.

    ``resamples`` means of ``n`` values drawn with replacement, from ``numpy.random.default_rng(seed)``;
    the same data and seed always give the same interval. NaNs for no data or no resamples.
    """
    from scipy.stats import bootstrap

    n = differences.size
    if n == 0 or resamples <= 0:
        return math.nan, math.nan
    if n == 1:  # every resample is the one value (scipy wants two)
        return float(differences[0]), float(differences[0])
    result = bootstrap((differences,), np.mean, n_resamples=resamples, batch=max(1, BOOTSTRAP_CHUNK // n),
                       method="percentile", confidence_level=confidence, rng=np.random.default_rng(seed),
                       vectorized=True, axis=-1)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare_pair(a: Run, b: Run, source: str, metric: str, resamples: int = 10000,
                 seed: int = 0) -> PairedComparison:
    """Paired statistics of ``a - b`` for one source and metric."""
    _, diff = paired_differences(a.track_values(source, metric), b.track_values(source, metric))
    if not diff.size:
        return PairedComparison(source, metric, a.label, b.label, 0, math.nan, math.nan, math.nan, math.nan,
                                math.nan, 0, 0, "no paired tracks")
    p, note = wilcoxon_p(diff)
    low, high = bootstrap_ci(diff, resamples, seed)
    return PairedComparison(source, metric, a.label, b.label, int(diff.size), float(np.median(diff)),
                            float(np.mean(diff)), low, high, p, int((diff > 0).sum()), int((diff < 0).sum()), note)


def all_pairs(runs: Sequence[Run], resamples: int = 10000, seed: int = 0,
              metrics: Sequence[str] = PAIRED_METRICS) -> list[PairedComparison]:
    """Every pair of runs (in the given order, A before B), source and metric both runs have."""
    out = []
    for metric in metrics:
        for source in sources_of(runs):
            for a, b in combinations(runs, 2):
                if metric in a.metrics(source) and metric in b.metrics(source):
                    out.append(compare_pair(a, b, source, metric, resamples, seed))
    return out


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n too small"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_pair_p(comparison: PairedComparison) -> str:
    """The Wilcoxon column of a pair: its p-value, or why there is none."""
    return "no paired tracks" if comparison.n == 0 else fmt_p(comparison.wilcoxon_p)


def fmt_signed(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:+.2f}"


def fmt_ci(low: float, high: float) -> str:
    return "" if math.isnan(low) else f"[{fmt_signed(low)}, {fmt_signed(high)}]"


def markdown(comparisons: Sequence[PairedComparison], resamples: int, seed: int) -> str:
    """One Markdown table per metric: a row per (source, pair)."""
    if not comparisons:
        return "Paired statistics need at least two score files with common sources.\n"
    out = []
    for metric in dict.fromkeys(c.metric for c in comparisons):
        out.append(f"### Paired differences: {metric} (A − B, dB)\n")
        out.append("| source | A | B | n | median Δ | mean Δ | 95% CI of mean Δ | Wilcoxon p "
                   "| A better / B better |")
        out.append("|---|---|---|---:|---:|---:|---|---:|---:|")
        for c in (c for c in comparisons if c.metric == metric):
            out.append(f"| {c.source} | {c.model_a} | {c.model_b} | {c.n} | {fmt_signed(c.median_diff)} | "
                       f"{fmt_signed(c.mean_diff)} | {fmt_ci(c.ci_low, c.ci_high)} | {fmt_pair_p(c)} | "
                       f"{c.a_better} / {c.b_better} |")
        out.append("")
    out.append(explanation(resamples, seed))
    return "\n".join(out) + "\n"


def explanation(resamples: int, seed: int) -> str:
    return (f"Per-track differences A − B on the n tracks both models scored (a track's sdr is its median over "
            f"frames). Wilcoxon: two-sided signed-rank test, zero differences dropped, not computed below "
            f"{MIN_WILCOXON} non-zero differences (n too small); p-values are not corrected for multiple "
            f"comparisons. CI: percentile bootstrap over tracks, {resamples} resamples, seed {seed} (rough below "
            f"about 10 tracks). No paired tracks: the metric is undefined on every track for one of the two, as "
            f"BSSEval's sdr, sir and sar are for a silent estimate; compare with silence on usdr and si_sdr.")


def csv_text(comparisons: Sequence[PairedComparison]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PAIRS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for c in comparisons:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(c).items()})
    return buffer.getvalue()
