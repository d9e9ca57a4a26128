"""``mss compare``: tables, paired statistics, plots and a listening page over score files (one per model).

Modules, one concern each: :mod:`~mss_tools.report.runs` (score files and model facts),
:mod:`~mss_tools.report.tables` (per-source summaries), :mod:`~mss_tools.report.stats`
(paired tests), :mod:`~mss_tools.report.plots` (figures), :mod:`~mss_tools.report.excerpts`
(choosing passages), :mod:`~mss_tools.report.listening` (clips), :mod:`~mss_tools.report.html`
(the page). Only ``compare`` with an output folder imports matplotlib; nothing here imports torch
unless a listening clip must be resampled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from mss_tools.errors import BadInput
from mss_tools.outputs import OutputLock, is_temp_name, sweep_temps, write_text
from mss_tools.progress import log
from mss_tools.report import html, plots, questions, stats
from mss_tools.report import listening as listening_module
from mss_tools.report.runs import Run, label_of, load_runs, load_scores, run_of
from mss_tools.report.seeds import merge_seeds, seeds_note
from mss_tools.report.tables import (MODELS_COLUMNS, collapse_note, csv_text, ill_conditioned_note, loss_note,
                                     markdown_tables, model_rows, quality_cost_markdown, silent_reference_note,
                                     table_rows, track_set_warning)

__all__ = ["compare", "markdown_summary", "load_runs", "load_scores", "label_of", "table_rows", "markdown_tables",
           "csv_text", "Run"]

MAX_EXCERPTS = 3


def compare(paths: Sequence[str | os.PathLike], output: str | os.PathLike | None = None, listening: bool = True,
            excerpt_seconds: float = 8.0, excerpts: int = 2, bootstrap: int = 10000, seed: int = 0,
            force: bool = False) -> str:
    """Compare the score files ``paths``; returns the Markdown (tables and paired statistics) for stdout.

    With ``output`` (a folder) also writes ``RESULTS.md``, ``results.csv``, ``models.csv``, ``pairs.csv``,
    ``plots/*.png|svg`` and ``index.html`` (with a listening section of ``excerpts`` excerpts per
    category of ``excerpt_seconds`` each, unless ``listening`` is false). One writer per report folder;
    a folder of other files is refused unless ``force``.
    """
    if excerpt_seconds <= 0:
        raise BadInput(f"--excerpt-seconds must be positive, not {excerpt_seconds}")
    if not 1 <= excerpts <= MAX_EXCERPTS:
        raise BadInput(f"--excerpts must be between 1 and {MAX_EXCERPTS}, not {excerpts}")
    if bootstrap < 0:
        raise BadInput(f"--bootstrap must be 0 or more, not {bootstrap}")
    runs = merge_seeds(load_runs(paths))
    rows = table_rows(runs)
    notes = [n for n in (collapse_note(runs), seeds_note(runs), loss_note(runs), track_set_warning(runs),
                         silent_reference_note(runs), ill_conditioned_note(runs)) if n]
    comparisons = stats.all_pairs(runs, bootstrap, seed) if len(runs) > 1 else []
    found = questions.answers(runs, bootstrap, seed)
    head = questions.markdown(found) + quality_cost_markdown(runs)  # the quality figure goes right after it
    rest = markdown_tables(rows, {run.label: run.info for run in runs})
    if notes:
        rest += "\n" + "\n\n".join(notes) + "\n"
    if len(runs) > 1:
        rest += "\n## Paired statistics\n\n" + stats.markdown(comparisons, bootstrap, seed)
    text = head + rest
    if output is None:
        return text

    with OutputLock(Path(output), "compare"):
        _check_report_folder(Path(output), force)
        sweep_temps(output)
        _write_report(Path(output), runs, rows, notes, comparisons, found, head, rest, listening, excerpt_seconds,
                      excerpts, bootstrap, seed)
    return text


REPORT_FILES = ("RESULTS.md", "results.csv", "models.csv", "pairs.csv", "index.html", "plots")


def _check_report_folder(folder: Path, force: bool) -> None:
    """Refuse a file, or a non-empty folder holding none of a report's files (unless ``force``)."""
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{folder}: is a file; -o names the report folder")
    if force or not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir() if not is_temp_name(p.name)}
    if names and not names & set(REPORT_FILES):
        raise BadInput(f"{folder}: a folder with other files in it, not an mss report; choose another -o "
                       f"(or --force to write into it)")


def _write_report(folder: Path, runs, rows, notes, comparisons, found, head: str, rest: str, listening: bool,
                  excerpt_seconds: float, excerpts: int, bootstrap: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "results.csv", csv_text(rows))
    write_text(folder / "models.csv", csv_text(model_rows(runs), MODELS_COLUMNS))
    write_text(folder / "pairs.csv", stats.csv_text(comparisons))
    log.info("plotting")
    quality_figure = plots.quality_cost_plot(runs, folder / "plots")
    figures = [p for p in [quality_figure, plots.sdr_boxplots(runs, folder / "plots")] if p is not None]
    figures += plots.paired_difference_plots(runs, folder / "plots")

    def link(plot) -> str:
        return f"\n![{plot.title}]({plot.png.relative_to(folder).as_posix()})\n\n{plot.caption}\n"

    figure_links = "".join(link(p) for p in figures if p is not quality_figure)
    text = head + (link(quality_figure) if quality_figure is not None else "") + rest
    write_text(folder / "RESULTS.md", "# Results\n\n" + text + ("\n## Plots\n" + figure_links if figures else ""))
    clips = None
    if listening:
        log.info("choosing and rendering listening excerpts")
        clips = listening_module.build(runs, excerpt_seconds, excerpts)
    page = html.render(runs, rows, notes, comparisons, bootstrap, seed, figures, folder, clips, excerpt_seconds,
                       found)
    write_text(folder / "index.html", page)
    log.info("wrote %s", folder / "index.html")


def markdown_summary(documents: Sequence[dict], paths: Sequence[str | os.PathLike]) -> str:
    """The per-source Markdown tables of score documents already in memory (labelled by ``paths``)."""
    runs = [run_of(document, path) for document, path in zip(documents, paths)]
    return markdown_tables(table_rows(runs), {run.label: run.info for run in runs})
