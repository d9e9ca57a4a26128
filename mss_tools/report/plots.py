"""Figures of a comparison, each saved as PNG and SVG (matplotlib, Agg; imported only when plotting).

- ``sdr_boxplots``: SiSEC-style boxplots of framewise ``sdr`` (every frame of every track, NaN
  frames dropped), one panel per source, one box per model.
- ``quality_cost_plot``: quality against cost (Q4), one point per trained model: sdr (mean over its
  target sources) against parameters and against separation speed, the baselines as lines.
- ``paired_difference_plots``: per pair of models, per source, the per-track difference of
  ``sdr`` (the track's median over frames; ``usdr`` where there is no ``sdr``) as sorted bars
  around a zero line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from mss_tools.outputs import atomic_path
from mss_tools.report.runs import Run
from mss_tools.report.stats import paired_differences
from mss_tools.report.tables import sources_of, target_quality

PANEL_WIDTH = 3.6  # inches per source panel
MAX_TRACK_LABELS = 60
MAX_PAIR_PLOTS = 15  # above this many pairs only the curriculum/control and baseline pairs are plotted
CONTROL_SUFFIX = "_nocurriculum"  # the recipes' label of an architecture's no-curriculum control
WHISKER_MARGIN = 0.25  # the axis spans the whiskers plus this fraction of their range on each side
POSITIVE, NEGATIVE = "#2b7bba", "#e07b39"
QUALITY_PLOT = "quality_cost"  # file name of the quality-against-cost figure


@dataclass
class Plot:
    """A figure written as ``png`` and ``svg`` (paths), with a title and a caption for the report."""

    title: str
    png: Path
    svg: Path
    caption: str

    @property
    def name(self) -> str:
        return self.png.stem


def _colors(count: int) -> list:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(count)]


def safe_name(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def save(figure, folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``figure`` as ``<folder>/<name>.png`` and ``.svg`` (each under a temporary name, then renamed)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.draw_without_rendering()  # run the constrained layout once, then keep it for both formats
    figure.set_layout_engine("none")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "mss-compare", "svg.fonttype": "none"}):
        for extension, metadata in (("png", {"Software": None}), ("svg", {"Date": None})):
            path = folder / f"{name}.{extension}"
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format=extension, dpi=110, metadata=metadata)
            paths.append(path)
    return paths[0], paths[1]


def sdr_boxplots(runs: Sequence[Run], folder: Path) -> Plot | None:
    """Boxplots of every finite framewise ``sdr`` per source (panel) and model (box); ``None`` without frames."""
    from matplotlib.figure import Figure

    sources = [s for s in sources_of(runs) if any(run.frames(s, "sdr") for run in runs)]
    if not sources:
        return None
    colors = _colors(len(runs))
    figure = Figure(figsize=(PANEL_WIDTH * len(sources) + 1.2, 0.45 * len(runs) + 1.6), layout="constrained")
    axes = figure.subplots(1, len(sources), sharey=True, squeeze=False)[0]
    clipped = False
    for ax, source in zip(axes, sources):
        data, positions, facecolors = [], [], []
        for index, run in enumerate(runs):
            frames = run.frames(source, "sdr")
            values = np.concatenate(list(frames.values())) if frames else np.zeros(0)
            values = values[np.isfinite(values)]
            if values.size:
                data.append(values)
                positions.append(len(runs) - index)
                facecolors.append(colors[index])
        if data:
            boxes = ax.boxplot(data, positions=positions, orientation="horizontal", widths=0.6, patch_artist=True,
                               whis=1.5, flierprops={"marker": ".", "markersize": 2, "alpha": 0.4},
                               medianprops={"color": "black"})
            for patch, color in zip(boxes["boxes"], facecolors):
                patch.set_facecolor((*color[:3], 0.55))
            ends = np.concatenate([line.get_xdata() for line in boxes["whiskers"]])
            margin = WHISKER_MARGIN * max(float(ends.max() - ends.min()), 1.0)
            low, high = float(ends.min()) - margin, float(ends.max()) + margin
            every = np.concatenate(data)
            hidden = int((every < low).sum() + (every > high).sum())
            if hidden:
                clipped = True
                ax.text(0.01, 0.01, f"{hidden} frame{'s' if hidden > 1 else ''} beyond the axis",
                        transform=ax.transAxes, fontsize=7, color="0.35", va="bottom")
            ax.set_xlim(low, high)
        ax.axvline(0.0, color="0.6", linewidth=0.8, zorder=0)
        ax.set_title(source)
        ax.set_xlabel("sdr per frame (dB)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(runs), 0, -1), [run.label for run in runs])
    axes[0].set_ylim(0.4, len(runs) + 0.6)
    png, svg = save(figure, folder, "sdr_boxplot")
    caption = ("Framewise sdr (BSSEval v4, 1 s frames) of every frame of every track; NaN frames dropped. "
               "Boxes: quartiles and median; whiskers: 1.5 IQR; dots: frames beyond.")
    if clipped:
        caption += " The axis spans the whiskers with some room; frames beyond it are counted in the panel."
    return Plot("Framewise sdr per source and model", png, svg, caption)


def quality_cost_plot(runs: Sequence[Run], folder: Path) -> Plot | None:
    """sdr against parameters (left) and against separation speed (right), one labelled point per trained
    model; models without weights (the baselines) are horizontal lines. ``None`` without a trained model."""
    from matplotlib.figure import Figure

    trained = [(run, target_quality(run)[0]) for run in runs if run.info.num_parameters]
    trained = [(run, q) for run, q in trained if np.isfinite(q)]
    if not trained:
        return None
    baselines = [(run, target_quality(run)[0]) for run in runs if not run.info.num_parameters]
    colors = _colors(len(trained))
    figure = Figure(figsize=(2 * PANEL_WIDTH + 2.4, 4.0), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, axis_name, value in ((axes[0], "parameters", lambda r: r.info.num_parameters),
                                 (axes[1], "separation speed (x real time)", lambda r: r.info.speed)):
        for (run, quality), color in zip(trained, colors):
            x = value(run)
            if x:
                ax.scatter([x], [quality], color=color, s=36, zorder=3)
                ax.annotate(run.label, (x, quality), textcoords="offset points", xytext=(4, 3), fontsize=7)
        for run, quality in baselines:
            if np.isfinite(quality):
                ax.axhline(quality, color="0.5", linewidth=0.8, linestyle="--")
                ax.text(0.01, quality, f" {run.label}", transform=ax.get_yaxis_transform(), fontsize=7,
                        color="0.35", va="bottom")
        ax.axhline(0.0, color="0.75", linewidth=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_xlabel(axis_name)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("sdr (dB, median over tracks)")
    png, svg = save(figure, folder, QUALITY_PLOT)
    return Plot("Quality against cost", png, svg,
                "One point per trained model: per track the mean over its target sources of the median framewise "
                "sdr, then the median over tracks, against its parameter count (left) and its separation speed, "
                "seconds of audio per wall-clock second (right; both axes logarithmic). Dashed: the baselines; "
                "silence scores 0 dB.")


def pair_metric(a: Run, b: Run, source: str) -> str | None:
    """``sdr`` when both runs have it for ``source``, else ``usdr``, else ``None``."""
    for metric in ("sdr", "usdr"):
        if metric in a.metrics(source) and metric in b.metrics(source):
            return metric
    return None


def plotted_pairs(runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """Every pair when there are at most :data:`MAX_PAIR_PLOTS`; else the pairs a study asks about
    first: each model against its ``<model>_nocurriculum`` control, and each model against the
    first score file (the baseline), up to the limit. Tables and ``pairs.csv`` keep every pair."""
    pairs = list(combinations(runs, 2))
    if len(pairs) <= MAX_PAIR_PLOTS:
        return pairs
    labels = {run.label: run for run in runs}
    chosen = [(run, labels[run.label + CONTROL_SUFFIX]) for run in runs if run.label + CONTROL_SUFFIX in labels]
    chosen += [(runs[0], run) for run in runs[1:] if not run.label.endswith(CONTROL_SUFFIX)]
    return chosen[:MAX_PAIR_PLOTS]


def paired_difference_plots(runs: Sequence[Run], folder: Path) -> list[Plot]:
    """One figure per pair of models (see :func:`plotted_pairs`): per source, sorted per-track
    differences ``A - B`` (dB)."""
    from matplotlib.figure import Figure

    plots = []
    for number, (a, b) in enumerate(plotted_pairs(runs), start=1):
        panels = []
        for source in sources_of(runs):
            metric = pair_metric(a, b, source)
            if metric is None:
                continue
            tracks, diff = paired_differences(a.track_values(source, metric), b.track_values(source, metric))
            if diff.size:
                panels.append((source, metric, tracks, diff))
        if not panels:
            continue
        most = max(p[3].size for p in panels)
        figure = Figure(figsize=(PANEL_WIDTH * len(panels) + 1.5, max(2.6, 0.2 * most + 1.4)), layout="constrained")
        axes = figure.subplots(1, len(panels), squeeze=False)[0]
        for ax, (source, metric, tracks, diff) in zip(axes, panels):
            order = np.argsort(diff, kind="stable")
            values = diff[order]
            rows = np.arange(values.size)
            ax.barh(rows, values, color=[POSITIVE if v > 0 else NEGATIVE for v in values], height=0.75)
            ax.axvline(0.0, color="black", linewidth=0.9)
            if values.size <= MAX_TRACK_LABELS:
                ax.set_yticks(rows, [_short(tracks[i]) for i in order], fontsize=7)
            else:
                ax.set_yticks([])
            ax.set_ylim(-0.7, max(values.size, 1) - 0.3)
            ax.set_title(f"{source}: n={values.size}, median {np.median(values):+.2f} dB", fontsize=10)
            ax.set_xlabel(f"{metric} {a.label} − {b.label} (dB)")
            ax.grid(axis="x", alpha=0.3)
        figure.suptitle(f"{a.label} − {b.label}, per track (right of zero: {a.label} better)")
        png, svg = save(figure, folder, f"diff_{number:02d}_{safe_name(a.label)}_vs_{safe_name(b.label)}")
        plots.append(Plot(f"Per-track differences: {a.label} − {b.label}", png, svg,
                          f"Per-track difference of the track's median framewise sdr (usdr where a model has no "
                          f"sdr), sorted; blue: {a.label} better, orange: {b.label} better."))
    return plots


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
