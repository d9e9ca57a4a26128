"""Several training seeds of one model, compared as one.

Score files labelled ``<model>.seed<k>`` (the recipes' ``--seeds N`` writes them) are one model:
its per-track value of each metric is the mean over its seeds (so the paired statistics pair
tracks, with the seeds' noise averaged), and the spread between seeds is reported apart, as the
standard deviation over seeds of each seed's median over tracks.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import replace
from typing import Sequence

import numpy as np

from mss_tools import formats
from mss_tools.metrics import nanmedian
from mss_tools.report.runs import Run

SEED_LABEL = re.compile(r"^(?P<model>.+)\.seed(?P<seed>\d+)$")


def merge_seeds(runs: Sequence[Run]) -> list[Run]:
    """``runs`` with each group of ``<model>.seed<k>`` runs replaced by one run ``<model>`` (in the
    place of its first seed); a run without a seed suffix is kept as it is."""
    groups: dict[str, list[Run]] = defaultdict(list)
    order: list[str] = []
    for run in runs:
        match = SEED_LABEL.match(run.label)
        key = match.group("model") if match else run.label
        if key not in groups:
            order.append(key)
        groups[key].append(run)
    out = []
    for key in order:
        members = groups[key]
        if len(members) == 1 and not SEED_LABEL.match(members[0].label):
            out.append(members[0])
        else:
            out.append(_merged(key, members))
    return out


def _merged(label: str, members: list[Run]) -> Run:
    """One run whose per-track values are the means over ``members`` (tracks and stems all of them have)."""
    tracks = set.intersection(*(set(run.tracks) for run in members))
    merged: dict[str, dict[str, dict]] = {}
    for track in sorted(tracks):
        stems = set.intersection(*(set(run.tracks[track]) for run in members))
        for stem in sorted(stems):
            values = [run.tracks[track][stem] for run in members]
            entry = {flag: True for flag in formats.STEM_FLAGS if any(v.get(flag) for v in values)}
            for metric in set.intersection(*(set(v) for v in values)) - {"frames", *formats.STEM_FLAGS}:
                numbers = [v[metric] for v in values if isinstance(v[metric], (int, float))
                           and math.isfinite(v[metric])]
                entry[metric] = float(np.mean(numbers)) if numbers else None
            merged.setdefault(track, {})[stem] = entry
    first = members[0]
    document = {key: first.document[key] for key in ("predictions", "references", "window_seconds", "hop_seconds",
                                                     "model", "sample_rate") if key in first.document}
    document.update({"format": formats.SCORES_FORMAT, "format_version": formats.SCORES_VERSION, "tracks": merged,
                     "seeds": [run.label for run in members]})
    spread = {}
    for stem in {s for stems in merged.values() for s in stems}:
        for metric in ("sdr", "usdr"):
            medians = [nanmedian(list(run.track_values(stem, metric).values())) for run in members]
            medians = [m for m in medians if math.isfinite(m)]
            if len(medians) > 1:
                spread.setdefault(stem, {})[metric] = float(np.std(medians, ddof=1))
    return replace(first, label=label, document=document, seeds=len(members), seed_spread=spread)


def seeds_note(runs: Sequence[Run]) -> str | None:
    """A sentence giving, per model of several seeds, their number and the spread between them."""
    parts = []
    for run in runs:
        if run.seeds > 1:
            spread = ", ".join(f"{stem} {values['sdr']:.2f}" for stem, values in sorted(run.seed_spread.items())
                               if "sdr" in values)
            parts.append(f"{run.label} {run.seeds} seeds" + (f" (sd of the median sdr between seeds, dB: {spread})"
                                                              if spread else ""))
    if not parts:
        return None
    return ("Seeds: " + "; ".join(parts) + ". A model's per-track values are the means over its seeds; the paired "
            "statistics pair those means, so their n counts tracks.")
