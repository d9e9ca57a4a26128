"""Score files as model runs: per-track values, framewise values, and what is known about the model.

A *run* is one score file (``format="mss-scores"``, read and checked by
:func:`mss_tools.formats.read_scores`); its file name (without ``.json``) labels the model.
Every figure is computed from its per-track values, never from the ``aggregate`` it stores.
Besides the scores, a run knows, when the files are still where the score file says:

- the parameter count, from ``provenance.json`` next to the checkpoint named in ``model.checkpoint``
  (written by ``mss train``);
- the separation speed, from the predictions folder's ``manifest.json``: the median over the
  ``tracks`` entries of ``audio_seconds / wall_seconds`` (directly or under their own
  ``timing``; a median, so that one track stalled by the machine does not set the figure),
  else the top-level ``timing``, or a real-time factor under ``seconds_per_second`` /
  ``real_time_factor`` / ``rtf`` (wall seconds per second of audio);
- where each estimate is: the manifest's per-track ``files`` (``{stem: path relative to the
  folder}``), else ``<predictions>/<track>/<stem>.<ext>``.

A manifest that :func:`mss_tools.formats.read_predictions` refuses is left out with a warning
(the report then has no speed and looks for estimates at the default place).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mss_tools import formats
from mss_tools.errors import BadInput
from mss_tools.metrics import FILTER_METRICS
from mss_tools.progress import log

METRIC_ORDER = ("sdr", "usdr", "si_sdr", "isr", "sir", "sar")
RTF_KEYS = ("seconds_per_second", "real_time_factor", "rtf")


def metric_sort_key(metric: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER), metric)


def load_scores(path: str | os.PathLike) -> formats.ScoresFile:
    """The checked document of a score file; ``BadInput`` naming the file when it is missing or malformed."""
    return formats.read_scores(path)


def label_of(path: str | os.PathLike) -> str:
    """The model label of a score file: its name without the extension."""
    return Path(path).stem


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


@dataclass
class ModelInfo:
    """What is known about the model behind a run; ``None`` where unknown.

    ``speed``: seconds of audio separated per wall-clock second (``x`` real time).
    """

    arch: str | None = None
    checkpoint: str | None = None
    num_parameters: int | None = None
    loss: str | None = None
    speed: float | None = None
    device: str | None = None
    budget: "TrainingBudget | None" = None


@dataclass
class TrainingBudget:
    """What training a checkpoint cost, summed over its chain of warm starts (``--init``, e.g. the
    curriculum's stages): optimizer ``steps``, ``examples`` seen, their audio in ``seconds`` and the
    training wall time ``train_seconds`` (the epochs' time, validation included)."""

    steps: int
    examples: int
    audio_seconds: float
    train_seconds: float
    stages: int


@dataclass
class Run:
    """One score file: ``label`` (the model), ``path`` and its ``document``."""

    label: str
    path: Path
    document: dict[str, Any]
    info: ModelInfo = field(default_factory=ModelInfo)
    manifest: dict[str, Any] = field(default_factory=dict)
    seeds: int = 1                      # training seeds averaged into this run (mss_tools.report.seeds)
    seed_spread: dict[str, dict[str, float]] = field(default_factory=dict)  # stem -> metric -> sd between seeds

    @property
    def tracks(self) -> dict[str, dict[str, Any]]:
        return self.document.get("tracks") or {}

    @property
    def stems(self) -> list[str]:
        names: list[str] = []
        for stems in self.tracks.values():
            names += [s for s in stems if s not in names]
        return names

    def metrics(self, stem: str) -> list[str]:
        """Metrics with a per-track value for ``stem``, in the report's order."""
        found = {m for stems in self.tracks.values() for m in stems.get(stem, {})
                 if m != "frames" and m not in formats.STEM_FLAGS and m not in formats.STEM_MEASURES}
        return sorted(found, key=metric_sort_key)

    def track_values(self, stem: str, metric: str) -> dict[str, float]:
        """``{track: value}`` (dB; NaN when the score file holds null) of one stem and metric;
        isr/sir/sar leave out the tracks flagged ill-conditioned for ``stem``."""
        skip = self.ill_conditioned(stem) if metric in FILTER_METRICS else set()
        return {track: _number(stems[stem][metric]) for track, stems in self.tracks.items()
                if stem in stems and metric in stems[stem] and track not in skip}

    def ill_conditioned(self, stem: str) -> set[str]:
        """Tracks whose isr/sir/sar of ``stem`` ``mss score`` flagged as numerically unreliable."""
        return {track for track, stems in self.tracks.items() if (stems.get(stem) or {}).get("ill_conditioned")}

    def silent_references(self, stem: str) -> set[str]:
        """Tracks whose reference of ``stem`` ``mss score`` found silent (they have no values for it)."""
        return {track for track, stems in self.tracks.items() if (stems.get(stem) or {}).get("silent_reference")}

    def frames(self, stem: str, metric: str = "sdr") -> dict[str, np.ndarray]:
        """``{track: (frames,) float64}`` framewise values (NaN where the score file holds null)."""
        out = {}
        skip = self.ill_conditioned(stem) if metric in FILTER_METRICS else set()
        for track, stems in self.tracks.items():
            if track in skip:
                continue
            values = (stems.get(stem, {}).get("frames") or {}).get(metric)
            if values is not None:
                out[track] = np.array([_number(v) for v in values], dtype=np.float64)
        return out

    @property
    def hop_seconds(self) -> float:
        return float(self.document.get("hop_seconds") or 1.0)

    @property
    def window_seconds(self) -> float:
        return float(self.document.get("window_seconds") or self.hop_seconds)

    @property
    def predictions(self) -> Path | None:
        folder = self.document.get("predictions")
        return Path(folder) if folder else None

    @property
    def references(self) -> Path | None:
        path = self.document.get("references")
        return Path(path) if path else None

    def estimate_path(self, track: str, stem: str) -> Path | None:
        """The audio file of this model's estimate of ``stem`` in ``track``, or ``None`` when it does not exist."""
        folder = self.predictions
        if folder is None:
            return None
        for entry in self.manifest.get("tracks") or []:
            if isinstance(entry, dict) and entry.get("track") == track and isinstance(entry.get("files"), dict):
                named = entry["files"].get(stem)
                if named and (folder / named).is_file():
                    return folder / named
        from mss_tools.audio import AUDIO_EXTENSIONS

        for extension in AUDIO_EXTENSIONS:
            path = folder / track / f"{stem}{extension}"
            if path.is_file():
                return path
        return None


def load_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    """Load every score file; ``BadInput`` for none, a bad file, or two files with the same label."""
    if not paths:
        raise BadInput("no score files given")
    labels = [label_of(p) for p in paths]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        clashing = ", ".join(str(p) for p, label in zip(paths, labels) if label in duplicates)
        raise BadInput(f"score files must have distinct names (the file name labels the model): {clashing}")
    return [run_of(load_scores(path), path, label) for label, path in zip(labels, paths)]


def run_of(document: dict[str, Any], path: str | os.PathLike, label: str | None = None) -> Run:
    """A run of a loaded score document, with its predictions manifest and model facts where present."""
    manifest = {}
    if document.get("predictions"):
        manifest_path = Path(document["predictions"]) / formats.MANIFEST_NAME
        try:
            manifest = formats.read_predictions(manifest_path) if manifest_path.is_file() else {}
        except BadInput as exc:
            log.warning("%s; left out (no speed, estimates looked for at <track>/<stem>)", exc)
    return Run(label or label_of(path), Path(path), document, model_info(document, manifest), manifest)


def model_info(document: dict[str, Any], manifest: dict[str, Any]) -> ModelInfo:
    """Arch, checkpoint, parameter count and speed of the model behind a score document, where known."""
    model = document.get("model") if isinstance(document.get("model"), dict) else {}
    info = ModelInfo(arch=model.get("arch") or manifest.get("arch"),
                     checkpoint=model.get("checkpoint") or manifest.get("checkpoint"))
    if info.checkpoint:
        provenance = _read_json(Path(info.checkpoint).parent / "provenance.json")
        count = provenance.get("num_parameters")
        if isinstance(count, (int, float)) and not isinstance(count, bool) and count >= 0:
            info.num_parameters = int(count)
        loss = _read_json(Path(info.checkpoint).parent / "config.json").get("loss")
        info.loss = loss if isinstance(loss, str) else None
        info.budget = training_budget(Path(info.checkpoint).parent)
    info.speed, info.device = separation_speed(manifest)
    return info


def separation_speed(manifest: dict[str, Any]) -> tuple[float | None, str | None]:
    """(audio seconds per wall second, device) from a predictions manifest; ``(None, None)`` if untimed."""
    timing = manifest.get("timing") if isinstance(manifest.get("timing"), dict) else {}
    device = timing.get("device") or manifest.get("device")
    entries = [e.get("timing") if isinstance(e.get("timing"), dict) else e
               for e in manifest.get("tracks") or [] if isinstance(e, dict)]
    speeds = [_number(e.get("audio_seconds")) / _number(e.get("wall_seconds")) for e in entries
              if _number(e.get("audio_seconds")) > 0 and _number(e.get("wall_seconds")) > 0]
    if speeds:
        return float(np.median(speeds)), str(device) if device else None
    audio_seconds = _number(timing.get("audio_seconds"))
    wall_seconds = _number(timing.get("wall_seconds"))
    if audio_seconds > 0 and wall_seconds > 0:
        return audio_seconds / wall_seconds, str(device) if device else None
    for source in (timing, manifest):
        for key in RTF_KEYS:
            rtf = _number(source.get(key))
            if rtf > 0:
                return 1.0 / rtf, str(device) if device else None
    return None, None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return document if isinstance(document, dict) else {}


def training_budget(experiment: Path, chain_limit: int = 20) -> TrainingBudget | None:
    """The :class:`TrainingBudget` of the experiment folder ``experiment`` (its ``config.json`` and
    ``metrics.jsonl``) plus those of the checkpoints it was warm-started from; ``None`` if unknown."""
    steps = examples = stages = 0
    audio_seconds = train_seconds = 0.0
    folder: Path | None = experiment
    while folder is not None and stages < chain_limit:
        config = _read_json(folder / "config.json")
        try:
            records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
            epochs = [r for r in records if isinstance(r, dict) and "step" in r]
            run_steps = int(epochs[-1]["step"])
            per_step = int(config["batch_size"]) * int(config.get("accum_steps") or 1)
            audio_seconds += run_steps * per_step * float(config["segment"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None
        steps += run_steps
        examples += run_steps * per_step
        train_seconds += sum(_number(r.get("epoch_seconds")) for r in epochs if r.get("epoch_seconds") is not None)
        stages += 1
        folder = _init_folder(folder, config.get("init"))
    return TrainingBudget(steps, examples, audio_seconds, train_seconds, stages)


def _init_folder(experiment: Path, init: Any) -> Path | None:
    """The experiment folder of the checkpoint ``init`` that ``experiment`` was warm-started from. ``mss
    train`` keeps ``--init`` as given, relative to where it ran: tried from the current folder, then from
    each folder above ``experiment``."""
    if not isinstance(init, str) or not init:
        return None
    path = Path(init)
    candidates = [path] if path.is_absolute() else [path, *(a / path for a in experiment.resolve().parents)]
    return next((c.parent for c in candidates if (c.parent / "config.json").is_file()), None)
