"""The self-contained HTML report (``index.html``): inline CSS, figures and audio as data URIs.

The page loads nothing from anywhere: no scripts, fonts or style sheets from a network; the
only links are relative ones to the SVG versions of the figures next to it.
"""

from __future__ import annotations

import base64
import math
from html import escape
from typing import Any, Sequence

from mss_tools import __version__
from mss_tools.report import stats as stats_module
from mss_tools.report.excerpts import CATEGORIES
from mss_tools.report.listening import DB_RANGE, Listening
from mss_tools.report.plots import QUALITY_PLOT, Plot
from mss_tools.report.questions import Answer
from mss_tools.report.runs import Run
from mss_tools.report.tables import fmt_db, fmt_speed, grid

CSS = """
:root { --ink:#1d2330; --muted:#5b6475; --line:#d9dde5; --band:#f4f6f9; --accent:#2b7bba; --warm:#e07b39; }
* { box-sizing:border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:#fff; }
main { max-width:1320px; margin:0 auto; padding:24px 28px 64px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:20px; margin:36px 0 10px; padding-bottom:4px; border-bottom:2px solid var(--line); }
h3 { font-size:16px; margin:22px 0 8px; }
p.meta, p.note, figcaption, .reason, .caption { color:var(--muted); font-size:13px; }
nav a { margin-right:14px; color:var(--accent); text-decoration:none; font-size:14px; }
table { border-collapse:collapse; margin:6px 0 10px; font-size:13.5px; }
th, td { padding:4px 10px; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; }
th { background:var(--band); font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.best { font-weight:700; }
td.pos { color:var(--accent); } td.neg { color:var(--warm); }
td.sig { font-weight:700; }
.scroll { overflow-x:auto; }
figure { margin:14px 0 24px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); }
.notes { background:#fff8e6; border-left:4px solid #f0c04a; padding:6px 12px; font-size:13px; }
.notes p { margin:4px 0; }
article.excerpt { border:1px solid var(--line); border-radius:6px; padding:10px 14px 14px; margin:14px 0; }
article.excerpt h4 { margin:0 0 2px; font-size:15px; }
.clips { display:grid; grid-template-columns:repeat(auto-fill, minmax(200px, 1fr)); gap:12px; margin-top:10px; }
.clip { background:var(--band); border-radius:5px; padding:8px; }
.clip .name { font-weight:600; font-size:13.5px; margin-bottom:4px; overflow-wrap:anywhere; }
.clip img { display:block; width:100%; height:130px; border-radius:3px; }
.clip audio { display:block; width:100%; margin-top:6px; }
.caption { min-height:1.2em; margin-top:2px; }
"""


def data_uri(path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table(header: Sequence[tuple[str, bool]], body: Sequence[Sequence[tuple[str, str]]]) -> str:
    """``header``: (text, numeric); ``body``: rows of (text, css class). Text is escaped here."""
    head = "".join(f'<th class="num">{escape(h)}</th>' if numeric else f"<th>{escape(h)}</th>"
                   for h, numeric in header)
    rows = "".join("<tr>" + "".join(f'<td class="{c}">{escape(t)}</td>' if c else f"<td>{escape(t)}</td>"
                                    for t, c in row) + "</tr>" for row in body)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def answers_section(found: Sequence[Answer]) -> str:
    """The research questions' answers, first on the page (see :mod:`mss_tools.report.questions`)."""
    if not found:
        return ""
    items = [f"<li><b>{escape(answer.question.key)}</b> {escape(answer.statement())}: "
             f"<b>{escape(answer.verdict)}</b></li>" for answer in found]
    return ('<h2 id="answers">Answers</h2><ul class="answers">' + "".join(items) + "</ul>"
            '<p class="note">Planned comparisons: per-track sdr differences (mean over the sources named), '
            "percentile-bootstrap CI, Wilcoxon p with Holm's correction over these comparisons.</p>")


def models_section(runs: Sequence[Run]) -> str:
    header = [("model", False), ("arch", False), ("parameters", True), ("speed", True), ("device", False),
              ("steps", True), ("examples", True), ("train time", True), ("tracks", True), ("metrics", False),
              ("score file", False)]
    body = []
    for run in runs:
        info, budget = run.info, run.info.budget
        body.append([(run.label, ""), (info.arch or "", ""),
                     (f"{info.num_parameters:,}" if info.num_parameters is not None else "", "num"),
                     (fmt_speed(info.speed), "num"), (info.device or "", ""),
                     (f"{budget.steps:,}" if budget else "", "num"), (f"{budget.examples:,}" if budget else "", "num"),
                     (f"{budget.train_seconds:.0f} s" if budget else "", "num"), (str(len(run.tracks)), "num"),
                     (_backend(run.document), ""), (run.path.name, "")])
    return ("<h2 id=\"models\">Models</h2>" + _table(header, body)
            + '<p class="note">Parameters: from <code>provenance.json</code> next to the checkpoint; speed: '
              "seconds of audio separated per wall-clock second (x real time), from the predictions' "
              "<code>manifest.json</code>; the training budget (optimizer steps, examples, wall time with "
              "validation) summed over the checkpoint's warm starts, from each stage's <code>config.json</code> and "
              "<code>metrics.jsonl</code> (a model of several seeds: its first seed's); empty when unknown.</p>")


def _backend(document: dict[str, Any]) -> str:
    metrics = ", ".join(document.get("metrics") or [])
    backend = document.get("backend")
    return f"{metrics} ({backend})" if backend else metrics


def results_section(rows: list[dict[str, Any]], notes: Sequence[str]) -> str:
    parts = ['<h2 id="results">Results</h2>',
             '<p class="note">dB; per track the median over frames, then the median over tracks (SiSEC) and the '
             "mean. Bold: the best model per column.</p>"]
    if notes:
        parts.append('<div class="notes">' + "".join(f"<p>{escape(note)}</p>" for note in notes) + "</div>")
    for stem in dict.fromkeys(r["source"] for r in rows):
        metrics, models, cell = grid(rows, stem)
        header = [("model", False)] + [(f"{m} {kind}", True) for m in metrics for kind in ("median", "mean")] \
            + [("tracks", True)]
        best = {}
        for metric in metrics:
            for kind in ("median", "mean"):
                values = [cell[(m, metric)][kind] for m in models if (m, metric) in cell]
                finite = [v for v in values if v is not None and math.isfinite(v)]
                best[(metric, kind)] = max(finite) if len(finite) > 1 else None
        body = []
        for model in models:
            row, tracks = [(model, "")], 0
            for metric in metrics:
                entry = cell.get((model, metric))
                for kind in ("median", "mean"):
                    value = entry[kind] if entry else None
                    is_best = value is not None and value == best[(metric, kind)]
                    row.append((fmt_db(value) if entry else "", "num best" if is_best else "num"))
                tracks = max(tracks, entry["tracks"] if entry else 0)
            body.append(row + [(str(tracks), "num")])
        parts.append(f"<h3>{escape(stem)}</h3>" + _table(header, body))
    return "".join(parts)


def statistics_section(comparisons: Sequence[stats_module.PairedComparison], resamples: int, seed: int) -> str:
    parts = ['<h2 id="statistics">Paired statistics</h2>']
    if not comparisons:
        return parts[0] + '<p class="note">Paired statistics need at least two score files with common sources.</p>'
    header = [("source", False), ("A", False), ("B", False), ("n", True), ("median Δ", True), ("mean Δ", True),
              ("95% CI of mean Δ", True), ("Wilcoxon p", True), ("A better / B better", True)]
    for metric in dict.fromkeys(c.metric for c in comparisons):
        body = []
        for c in (c for c in comparisons if c.metric == metric):
            sign = "pos" if c.mean_diff > 0 else "neg" if c.mean_diff < 0 else ""
            excludes_zero = not math.isnan(c.ci_low) and (c.ci_low > 0 or c.ci_high < 0)
            significant = not math.isnan(c.wilcoxon_p) and c.wilcoxon_p < 0.05
            body.append([(c.source, ""), (c.model_a, ""), (c.model_b, ""), (str(c.n), "num"),
                         (stats_module.fmt_signed(c.median_diff), f"num {sign}"),
                         (stats_module.fmt_signed(c.mean_diff), f"num {sign}"),
                         (stats_module.fmt_ci(c.ci_low, c.ci_high), "num sig" if excludes_zero else "num"),
                         (stats_module.fmt_pair_p(c), "num sig" if significant else "num"),
                         (f"{c.a_better} / {c.b_better}", "num")])
        parts.append(f"<h3>{escape(metric)}: A − B (dB)</h3>" + _table(header, body))
    parts.append(f'<p class="note">{escape(stats_module.explanation(resamples, seed))} Bold: p &lt; 0.05, or a '
                 "CI that excludes zero.</p>")
    return "".join(parts)


def quality_section(plots: Sequence[Plot], base) -> str:
    """The quality-against-cost figure (Q4), right after the answers."""
    return "".join(f'<h2 id="quality">{escape(plot.title)}</h2>' + _figure(plot, base, heading=False) for plot in plots)


def _figure(plot: Plot, base, heading: bool = True) -> str:
    svg = plot.svg.relative_to(base).as_posix()
    return (f"<figure>{f'<h3>{escape(plot.title)}</h3>' if heading else ''}"
            f'<img src="{data_uri(plot.png, "image/png")}" alt="{escape(plot.title)}">'
            f'<figcaption>{escape(plot.caption)} <a href="{escape(svg)}">SVG</a></figcaption></figure>')


def plots_section(plots: Sequence[Plot], base) -> str:
    parts = ['<h2 id="plots">Plots</h2>']
    if not plots:
        return parts[0] + '<p class="note">No plots: the score files hold no framewise or per-track values.</p>'
    parts += [_figure(plot, base) for plot in plots]
    return "".join(parts)


def listening_section(listening: Listening | None, seconds: float) -> str:
    parts = ['<h2 id="listening">Listening</h2>']
    if listening is None:
        return parts[0] + '<p class="note">Skipped (<code>--no-listening</code>).</p>'
    if listening.notes:
        parts.append('<div class="notes">' + "".join(f"<p>{escape(n)}</p>" for n in listening.notes) + "</div>")
    if not listening.items:
        return "".join(parts)
    parts.append(f'<p class="note">Aligned excerpts of up to {seconds:g} s, chosen automatically. Audio: mono '
                 f"downmix at {listening.sample_rate} Hz, 16-bit FLAC; players of one excerpt share one gain and "
                 f"one colour scale ({DB_RANGE:g} dB range). Spectrograms: mel-spaced frequency, 0 to "
                 f"{listening.sample_rate / 2000:g} kHz bottom to top, time left to right.</p>")
    for category, title in CATEGORIES.items():
        items = [item for item in listening.items if item.excerpt.category == category]
        if not items:
            continue
        parts.append(f"<h3>{escape(title)}</h3>")
        for item in items:
            e = item.excerpt
            clips = "".join(
                f'<div class="clip"><div class="name">{escape(clip.name)}</div>'
                f'<img src="{clip.image_uri}" alt="spectrogram of {escape(clip.name)}">'
                f'<audio controls preload="metadata" src="{clip.audio_uri}"></audio>'
                f'<div class="caption">{escape(clip.caption)}</div></div>' for clip in item.clips)
            parts.append(f'<article class="excerpt"><h4>{escape(e.track)} · {escape(e.stem)} · '
                         f"{e.start:.1f}–{e.stop:.1f} s</h4><div class=\"reason\">{escape(e.reason)}</div>"
                         f'<div class="clips">{clips}</div></article>')
    return "".join(parts)


def render(runs: Sequence[Run], rows: list[dict[str, Any]], notes: Sequence[str],
           comparisons: Sequence[stats_module.PairedComparison], resamples: int, seed: int,
           plots: Sequence[Plot], base, listening: Listening | None, seconds: float,
           found: Sequence[Answer] = ()) -> str:
    """The whole page as one string; ``base``: the folder the page is written to (for relative SVG links)."""
    labels = ", ".join(run.label for run in runs)
    nav = "".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in
                  (("answers", "Answers"), ("quality", "Quality vs cost"), ("models", "Models"), ("results", "Results"),
                   ("statistics", "Statistics"), ("plots", "Plots"), ("listening", "Listening")))
    body = "".join([
        f"<h1>Model comparison</h1><p class=\"meta\">{len(runs)} models: {escape(labels)} · mss compare "
        f"{escape(__version__)}</p><nav>{nav}</nav>",
        answers_section(found), quality_section([p for p in plots if p.name == QUALITY_PLOT], base),
        models_section(runs), results_section(rows, notes), statistics_section(comparisons, resamples, seed),
        plots_section([p for p in plots if p.name != QUALITY_PLOT], base), listening_section(listening, seconds),
    ])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>mss compare: {escape(labels)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")
