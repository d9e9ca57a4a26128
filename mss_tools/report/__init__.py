"""``mss compare``: tables over score files (one per model)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from mss_tools.errors import BadInput

METRIC_ORDER = ("sdr", "usdr", "si_sdr", "isr", "sir", "sar")


def load_scores(path: str | os.PathLike) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: no such score file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: not a readable score file ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != "mss-scores":
        raise BadInput(f"{path}: not an mss score file")
    return document


def label_of(path: str | os.PathLike) -> str:
    return Path(path).stem


def table_rows(documents: Sequence[dict], labels: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (source, model, metric): median of track values, mean, number of tracks."""
    rows = []
    stems = []
    for document in documents:
        stems += [s for s in document["aggregate"] if s not in stems]
    for stem in stems:
        for document, label in zip(documents, labels):
            metrics = document["aggregate"].get(stem, {})
            for metric in sorted(metrics, key=lambda m: METRIC_ORDER.index(m) if m in METRIC_ORDER else 99):
                values = metrics[metric]
                rows.append({"source": stem, "model": label, "metric": metric, "median": values["median"],
                             "mean": values["mean"], "tracks": values["tracks"]})
    return rows


def _fmt(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """A Markdown table per source: models as rows, ``metric median / mean`` as columns (dB)."""
    out = []
    for stem in dict.fromkeys(r["source"] for r in rows):
        stem_rows = [r for r in rows if r["source"] == stem]
        metrics = list(dict.fromkeys(r["metric"] for r in stem_rows))
        models = list(dict.fromkeys(r["model"] for r in stem_rows))
        out.append(f"### {stem}\n")
        out.append("| model | " + " | ".join(f"{m} median | {m} mean" for m in metrics) + " | tracks |")
        out.append("|---|" + "---:|" * (2 * len(metrics)) + "---:|")
        for model in models:
            cells, tracks = [], 0
            for metric in metrics:
                match = [r for r in stem_rows if r["model"] == model and r["metric"] == metric]
                cells += [_fmt(match[0]["median"]), _fmt(match[0]["mean"])] if match else ["", ""]
                tracks = max([tracks] + [r["tracks"] for r in match])
            out.append(f"| {model} | " + " | ".join(cells) + f" | {tracks} |")
        out.append("")
    out.append("Values in dB: median over frames per track, then median (SiSEC) or mean over tracks.")
    return "\n".join(out) + "\n"


def csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["source", "model", "metric", "median", "mean", "tracks"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def markdown_summary(documents: Sequence[dict], paths: Sequence[str]) -> str:
    return markdown_tables(table_rows(documents, [label_of(p) for p in paths]))


def compare(paths: Sequence[str], output: str | os.PathLike | None = None) -> str:
    """Markdown tables of the score files ``paths``; with ``output`` (a folder) also CSV and Markdown files."""
    if not paths:
        raise BadInput("no score files given")
    labels = [label_of(p) for p in paths]
    if len(set(labels)) != len(labels):
        raise BadInput("score files must have distinct names (the file name labels the model)")
    rows = table_rows([load_scores(p) for p in paths], labels)
    text = markdown_tables(rows)
    if output is not None:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / "results.csv", csv_text(rows))
        _atomic_write(folder / "RESULTS.md", "# Results\n\n" + text)
    return text


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
