"""The project's research questions as planned comparisons, and their answers.

Each question names the pair of models that answers it (by score-file label, as the recipes
write them) and the sources it is about; a question whose models are not among the compared
runs is left out. For every (question, pair) the *answer* is the paired per-track difference
A − B of framewise ``sdr`` (a track's median over frames), averaged over the question's sources
per track; it is reported with its 95 % bootstrap CI, the Wilcoxon p-value corrected with Holm's
method over the whole family of planned comparisons, the effect size d_z = mean / sd of the
paired differences, and n (tracks × seeds: a model of several seeds is compared by its per-track
means over seeds, :mod:`mss_tools.report.seeds`). A CI that
contains 0 is "inconclusive".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mss_tools.formats import is_complement_stem
from mss_tools.report.runs import Run
from mss_tools.report.stats import MIN_WILCOXON, bootstrap_ci, fmt_p, fmt_signed, paired_differences, wilcoxon_p
from mss_tools.report.tables import sources_of

METRIC = "sdr"
CURRICULUM_ARCHS = ("unet", "unet_lite", "demucs_lstm", "demucs_attn", "bsrnn", "bsrnn_se")


@dataclass(frozen=True)
class Question:
    key: str
    text: str
    pairs: tuple[tuple[str, str], ...]     # (A, B): does A beat B?
    sources: tuple[str, ...] | None = None  # None: every source both models separate (not no_<source>, accompaniment)


QUESTIONS = (
    Question("Q1", "Does a waveform model (Demucs) beat the spectrogram U-Net mask baseline?",
             (("demucs_lstm", "unet"),)),
    Question("Q2", "Does a Transformer bottleneck beat a BiLSTM one, on repetitive drums?",
             (("demucs_attn", "demucs_lstm"),), ("drums",)),
    Question("Q3", "Does Squeeze-and-Excitation improve Band-Split RNN?", (("bsrnn_se", "bsrnn"),)),
    Question("Q4", "What does the lightweight U-Net give up for its size?", (("unet_lite", "unet"),)),
    Question("Q5", "Does the curriculum beat training on full mixtures with the same budget?",
             tuple((arch, f"{arch}_nocurriculum") for arch in CURRICULUM_ARCHS)),
)


@dataclass
class Answer:
    question: Question
    model_a: str
    model_b: str
    sources: tuple[str, ...]
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float = math.nan
    effect_size: float = math.nan
    seeds: int = 1

    @property
    def sample(self) -> str:
        return f"{self.n} tracks × {self.seeds} seed{'s' if self.seeds != 1 else ''}"

    def statement(self) -> str:
        """The answer in one plain-text sentence, without the verdict (the renderers emphasise that)."""
        q = self.question
        where = ", ".join(self.sources) if q.sources else f"mean over {', '.join(self.sources)}"
        return (f"{q.text} {self.model_a} − {self.model_b} ({where}): {fmt_signed(self.mean_diff)} dB {METRIC}, "
                f"95% CI [{fmt_signed(self.ci_low)}, {fmt_signed(self.ci_high)}], Holm p {fmt_p(self.p_holm)}, "
                f"d_z {fmt_signed(self.effect_size)}, n = {self.sample}")

    @property
    def verdict(self) -> str:
        if self.n == 0 or math.isnan(self.ci_low):
            return "no paired tracks"
        if self.n < MIN_WILCOXON:
            return f"too few tracks to tell (n < {MIN_WILCOXON})"
        if self.ci_low <= 0 <= self.ci_high:
            return "inconclusive (the CI includes 0)"
        return f"{self.model_a if self.mean_diff > 0 else self.model_b} better"


def answers(runs: Sequence[Run], resamples: int = 10000, seed: int = 0) -> list[Answer]:
    """Every planned comparison the runs allow, Holm-corrected over the family."""
    by_label = {run.label: run for run in runs}
    out = []
    for question in QUESTIONS:
        for label_a, label_b in question.pairs:
            if label_a in by_label and label_b in by_label:
                out.append(_answer(question, by_label[label_a], by_label[label_b], resamples, seed))
    for answer, corrected in zip(out, holm([a.p for a in out])):
        answer.p_holm = corrected
    return out


def _answer(question: Question, a: Run, b: Run, resamples: int, seed: int) -> Answer:
    shared = [s for s in sources_of([a]) if s in sources_of([b]) and METRIC in a.metrics(s) and METRIC in b.metrics(s)
              and not is_complement_stem(s)]
    sources = tuple(s for s in (question.sources or shared) if s in shared)
    per_track: dict[str, list[float]] = {}
    for source in sources:
        tracks, diff = paired_differences(a.track_values(source, METRIC), b.track_values(source, METRIC))
        for track, value in zip(tracks, diff):
            per_track.setdefault(track, []).append(float(value))
    diffs = np.array([np.mean(v) for t, v in sorted(per_track.items()) if len(v) == len(sources)], dtype=np.float64)
    if not diffs.size:
        return Answer(question, a.label, b.label, sources, 0, math.nan, math.nan, math.nan, math.nan)
    low, high = bootstrap_ci(diffs, resamples, seed)
    p, _ = wilcoxon_p(diffs)
    spread = float(np.std(diffs, ddof=1)) if diffs.size > 1 else math.nan
    effect = float(np.mean(diffs)) / spread if spread and not math.isnan(spread) else math.nan
    return Answer(question, a.label, b.label, sources, int(diffs.size), float(np.mean(diffs)), low, high, p,
                  effect_size=effect, seeds=min(a.seeds, b.seeds))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def markdown(found: Sequence[Answer]) -> str:
    """One line per planned comparison, the answers first in a report."""
    if not found:
        return ""
    lines = ["## Answers", ""]
    for answer in found:
        lines.append(f"- **{answer.question.key}** {answer.statement()}: **{answer.verdict}**.")
    lines += ["", f"Planned comparisons of the project's questions: per track the {METRIC} difference A − B "
              f"(mean over the question's sources), its percentile-bootstrap 95% CI, the two-sided Wilcoxon "
              f"signed-rank p corrected with Holm's method over these {len(found)} comparisons (\"n too small\" "
              f"below 6 non-zero differences), and d_z = mean / sd of the differences.", ""]
    return "\n".join(lines) + "\n"
