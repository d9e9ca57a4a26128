"""Summary tables: per source and model, each metric's median and mean over tracks (SiSEC).

A track's value of a framewise metric is already its median over frames (written by
``mss score``); here it is reduced over tracks: median (the SiSEC figure) and mean, NaN
tracks ignored, ``tracks`` counting the finite ones. A silent reference has no value, so it
is not counted. The ``aggregate`` stored in a score file is never used.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

import numpy as np

from mss_tools.formats import is_complement_stem
from mss_tools.metrics import collapse_reasons
from mss_tools.report.runs import ModelInfo, Run, metric_sort_key

RESULTS_COLUMNS = ["source", "model", "metric", "median", "mean", "tracks"]
MODELS_COLUMNS = ["model", "arch", "num_parameters", "loss", "speed_x_realtime", "device", "train_steps",
                  "train_examples", "train_seconds", "checkpoint", "scores"]


def summarize(values: Sequence[float]) -> tuple[float, float, int]:
    """(median, mean, count) of the finite ``values``; NaNs when none is finite."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if not array.size:
        return math.nan, math.nan, 0
    return float(np.median(array)), float(np.mean(array)), int(array.size)


def sources_of(runs: Sequence[Run]) -> list[str]:
    """Every stem of every run, in first-seen order."""
    stems: list[str] = []
    for run in runs:
        stems += [s for s in run.stems if s not in stems]
    return stems


def table_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per (source, model, metric): ``median``, ``mean`` over tracks and ``tracks`` (the count),
    computed from the per-track values (never from a score file's stored ``aggregate``)."""
    rows = []
    for stem in sources_of(runs):
        for run in runs:
            for metric in run.metrics(stem):
                median, mean, count = summarize(list(run.track_values(stem, metric).values()))
                rows.append({"source": stem, "model": run.label, "metric": metric, "median": median,
                             "mean": mean, "tracks": count})
    return rows


def fmt_db(value: float | None) -> str:
    """A dB value with two decimals; ``nan`` for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.2f}"


def fmt_parameters(count: int | None) -> str:
    """``84,968`` -> ``85.0 k``; ``''`` when unknown."""
    if count is None:
        return ""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.{1 if count < 100 * scale else 0}f} {unit}"
    return str(count)


def fmt_speed(speed: float | None) -> str:
    """Audio seconds per wall second as ``12.3x RT``; ``''`` when unknown."""
    if speed is None:
        return ""
    return f"{speed:.3g}x RT"


def grid(rows: list[dict[str, Any]], stem: str) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """(metrics, models, {(model, metric): row}) of one source's rows; a metric no model has a
    track for (e.g. isr/sir/sar when every track is ill-conditioned) is left out."""
    stem_rows = [r for r in rows if r["source"] == stem]
    kept = [r["metric"] for r in stem_rows
            if r["tracks"] or (isinstance(r["median"], (int, float)) and math.isfinite(r["median"]))]
    metrics = sorted(dict.fromkeys(kept), key=metric_sort_key)
    models = list(dict.fromkeys(r["model"] for r in stem_rows))
    return metrics, models, {(r["model"], r["metric"]): r for r in stem_rows}


def markdown_tables(rows: list[dict[str, Any]], infos: dict[str, ModelInfo] | None = None) -> str:
    """A Markdown table per source: a row per model (parameters, speed, then ``metric median | mean``)."""
    infos = infos or {}
    out = []
    for stem in dict.fromkeys(r["source"] for r in rows):
        metrics, models, cell = grid(rows, stem)
        out.append(f"### {stem}\n")
        out.append("| model | params | speed | " + " | ".join(f"{m} median | {m} mean" for m in metrics)
                   + " | tracks |")
        out.append("|---|---:|---:|" + "---:|" * (2 * len(metrics)) + "---:|")
        for model in models:
            info = infos.get(model, ModelInfo())
            cells, tracks = [], 0
            for metric in metrics:
                row = cell.get((model, metric))
                cells += [fmt_db(row["median"]), fmt_db(row["mean"])] if row else ["", ""]
                tracks = max(tracks, row["tracks"] if row else 0)
            out.append(f"| {model} | {fmt_parameters(info.num_parameters)} | {fmt_speed(info.speed)} | "
                       + " | ".join(cells) + f" | {tracks} |")
        out.append("")
    out.append("Values in dB: median over frames per track, then median (SiSEC) or mean over tracks. "
               "params: from the checkpoint's provenance.json; speed: seconds of audio separated per "
               "wall-clock second (median over tracks), from the predictions' manifest.json (empty when "
               "unknown).")
    return "\n".join(out) + "\n"


def ill_conditioned_note(runs: Sequence[Run]) -> str | None:
    """A sentence naming how many tracks' isr/sir/sar were left out as ill-conditioned, or ``None``."""
    counts = {}
    for run in runs:
        pairs = sum(len(run.ill_conditioned(stem)) for stem in run.stems)
        if pairs:
            counts[run.label] = pairs
    if not counts:
        return None
    listed = ", ".join(f"{label} {n}" for label, n in counts.items())
    return ("isr/sir/sar leave out the (track, source) pairs whose references mss score flagged as "
            f"ill-conditioned ({listed}): museval's filter-based metrics are numerically unstable there "
            "(see the metrics contract); sdr and the other metrics keep every track. A metric with no "
            "track left is not shown.")


def silent_reference_note(runs: Sequence[Run], listed: int = 10) -> str | None:
    """A sentence naming the (track, source) pairs whose reference mss score found silent, or ``None``."""
    named = []
    for run in runs:
        pairs = sorted(f"{track}/{stem}" for stem in run.stems for track in run.silent_references(stem))
        if pairs:
            more = f" and {len(pairs) - listed} more" if len(pairs) > listed else ""
            named.append(f"{run.label} {len(pairs)}: {', '.join(pairs[:listed])}{more}")
    if not named:
        return None
    threshold = next((run.document["silent_reference_dbfs"] for run in runs
                      if "silent_reference_dbfs" in run.document), None)
    level = f"RMS below {threshold:g} dBFS" if threshold is not None else "flagged by mss score"
    return (f"Silent references ({level}) are left out of every metric, table and paired statistic: "
            f"{'; '.join(named)}. The SDR of a silent reference measures only the estimate's energy; "
            "mss score gave these (track, source) pairs no values and evaluated the other sources of "
            "their tracks without them.")


def collapse_note(runs: Sequence[Run]) -> str | None:
    """A sentence naming every (model, source) whose medians over tracks fail the collapse check, or ``None``."""
    flagged = []
    for run in runs:
        for stem in run.stems:
            def median(metric: str) -> float:
                return summarize(list(run.track_values(stem, metric).values()))[0]

            reasons = collapse_reasons(median("estimate_level_db"), median("sdr"), median("si_sdr"))
            if reasons:
                flagged.append(f"{run.label}/{stem} ({'; '.join(reasons)})")
    if not flagged:
        return None
    return (f"Collapse check: {', '.join(flagged)}. A near-silent estimate scores about 0 dB framewise sdr, "
            f"above the mixture; these rows do not separate, whatever their sdr says.")


def loss_note(runs: Sequence[Run]) -> str | None:
    """A sentence naming the loss each trained model used (from config.json beside its checkpoint), or ``None``."""
    losses = {run.label: run.info.loss for run in runs if run.info.loss}
    if not losses:
        return None
    if len(set(losses.values())) == 1:
        return f"Every trained model used the same loss, {next(iter(losses.values()))} (a common-loss comparison)."
    named = ", ".join(f"{label} {loss}" for label, loss in losses.items())
    return (f"Losses: {named}. Each architecture trained with its own paper's loss, so differences between "
            "architectures are also differences of loss; `run_all.sh --loss NAME` trains every one with the same.")


def track_set_warning(runs: Sequence[Run]) -> str | None:
    """A sentence when the runs were scored on different track sets, else ``None``."""
    sets = {run.label: set(run.tracks) for run in runs}
    if len({frozenset(s) for s in sets.values()}) <= 1:
        return None
    common = set.intersection(*sets.values())
    sizes = ", ".join(f"{label} {len(s)}" for label, s in sets.items())
    return (f"The score files cover different tracks ({sizes}; {len(common)} in common): the tables use "
            "each model's own tracks, the paired statistics only the common ones.")


def csv_text(rows: list[dict[str, Any]], columns: Sequence[str] = RESULTS_COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def model_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per model: what is known about it (``None`` where unknown)."""
    return [{"model": run.label, "arch": run.info.arch, "num_parameters": run.info.num_parameters,
             "loss": run.info.loss, "speed_x_realtime": run.info.speed, "device": run.info.device,
             "train_steps": run.info.budget.steps if run.info.budget else None,
             "train_examples": run.info.budget.examples if run.info.budget else None,
             "train_seconds": round(run.info.budget.train_seconds, 1) if run.info.budget else None,
             "checkpoint": run.info.checkpoint, "scores": str(run.path)} for run in runs]


def target_quality(run: Run, metric: str = "sdr") -> tuple[float, list[str]]:
    """A run's quality in one number: per track the mean of ``metric`` over the sources it separates (not
    the complements no_<source>/accompaniment; tracks missing one are left out), then the median over
    tracks; with the sources used. NaN when no track has them all."""
    sources = [s for s in run.stems if not is_complement_stem(s) and metric in run.metrics(s)]
    values = [run.track_values(s, metric) for s in sources]
    per_track = [np.mean([v[t] for v in values]) for t in (set.intersection(*(set(v) for v in values)) if values
                                                          else set())]
    per_track = [v for v in per_track if math.isfinite(v)]
    return (float(np.median(per_track)) if per_track else math.nan), sources


def quality_cost_markdown(runs: Sequence[Run]) -> str:
    """The quality-against-cost table (Q4): one row per trained model, sorted by parameters."""
    rows = [(run, *target_quality(run)) for run in runs if run.info.num_parameters]
    if not rows:
        return ""
    rows.sort(key=lambda r: r[0].info.num_parameters)
    lines = ["## Quality against cost", "",
             "| model | params | speed | sdr | steps | examples | train time | sources |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for run, quality, sources in rows:
        budget = run.info.budget
        spent = (f"{budget.steps} | {budget.examples} ({budget.audio_seconds / 60:.0f} min) | "
                 f"{budget.train_seconds:.0f} s" if budget else " |  | ")
        lines.append(f"| {run.label} | {fmt_parameters(run.info.num_parameters)} | {fmt_speed(run.info.speed)} | "
                     f"{fmt_db(quality)} | {spent} | {', '.join(sources)} |")
    lines += ["", "sdr: per track the mean over the model's target sources of the median framewise sdr, then the "
              "median over tracks (silence scores 0 dB). speed: seconds of audio separated per wall-clock second "
              "on the separation device. The budget of each model is summed over its warm starts (the curriculum's "
              "stages): optimizer steps, examples seen (and their audio), training wall time with validation; a "
              "model of several seeds shows its first seed's. The figure quality_cost plots sdr against size and "
              "speed.", ""]
    return "\n".join(lines) + "\n"
