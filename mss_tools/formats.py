"""The files of mss: one typed, versioned definition per format, its reader and its writer.

- Score file, ``format="mss-scores"`` (written by ``mss score``, read by ``mss score`` and
  ``mss compare``): :class:`ScoresFile`, :func:`read_scores`, :func:`write_scores`.
- Predictions manifest ``<predictions>/manifest.json``, ``format="mss-predictions"``
  (written by ``mss separate``, read by ``mss separate``, ``mss score`` and ``mss compare``):
  :class:`PredictionsManifest`, :func:`read_predictions`, :func:`write_predictions`.
- The root attributes of the HDF5 files, stem cache ``format="mss-stems"`` and mix plan
  ``format="mss-plan"``: :class:`StemCacheAttrs`, :class:`MixPlanAttrs`, checked by
  :func:`check_stem_cache_attrs` and :func:`check_plan_attrs` (HDF5 itself is read and
  written in :mod:`mss_tools.cache`, with JSON-valued attributes already decoded).

The structures are ``TypedDict`` classes: documents stay plain dicts, and the classes are
the one description of their keys and types that the readers check. Keys a class does not
declare are kept and not checked, except in :class:`StemScores`, where every undeclared key
is a metric (a number or null).

Every file carries ``format`` and an integer ``format_version``. A reader accepts versions 1
to the current one and stops with one :class:`~mss_tools.errors.BadInput` line
``<file>: <problem>`` on anything else: another format, a missing, unknown or newer
``format_version``, a value of the wrong type (a metric that is not a number, a track whose
stems do not map to metrics), a score file without per-track scores. Readers accept bare
``NaN`` (version-1 score files held it where a value was undefined); writers write strict
JSON, every non-finite number as ``null``, under a temporary name then renamed
(:mod:`mss_tools.outputs`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypedDict, Union

from mss_tools.errors import BadInput, MssError
from mss_tools.outputs import dumps_json, write_json, write_text

STEM_FORMAT = "mss-stems"
STEM_FORMAT_VERSION = 1
PLAN_FORMAT = "mss-plan"
PLAN_FORMAT_VERSION = 1
SCORES_FORMAT = "mss-scores"
SCORES_VERSION = 1
PREDICTIONS_FORMAT = "mss-predictions"
PREDICTIONS_VERSION = 1
MANIFEST_NAME = "manifest.json"
COMPLEMENT_PREFIX = "no_"  # predictions stem "no_<source>": the mixture minus <source> (mss separate --two-stems)
ACCOMPANIMENT = "accompaniment"  # MUSDB's name for everything but vocals


def complement_stem(source: str) -> str:
    """The name of the stem that holds everything but ``source`` (``drums`` -> ``no_drums``)."""
    return COMPLEMENT_PREFIX + source


def complement_sources(stem: str, sources: Sequence[str]) -> list[str] | None:
    """The sources whose sum is the reference of the complement stem ``stem`` (``no_drums``: every source
    but drums; ``accompaniment``: every source but vocals), or ``None`` if ``stem`` is not one of ``sources``'
    complements."""
    left_out = "vocals" if stem == ACCOMPANIMENT else stem[len(COMPLEMENT_PREFIX):] if stem.startswith(
        COMPLEMENT_PREFIX) else None
    if left_out not in sources or len(sources) < 2:
        return None
    return [s for s in sources if s != left_out]


def is_complement_stem(stem: str) -> bool:
    """Whether ``stem`` is the rest of a mixture (``no_<source>``, ``accompaniment``) rather than a source."""
    return stem == ACCOMPANIMENT or stem.startswith(COMPLEMENT_PREFIX)


# --------------------------------------------------------------------------------------
# score file


class StemScores(TypedDict, total=False):
    """One (track, stem): each metric in dB (a framewise metric: its median over frames; null
    when no frame is finite), the framewise values (null for a silent frame) and flags.

    ``silent_reference``: the reference is silent (see
    :data:`mss_tools.metrics.SILENT_REFERENCE_DBFS`); the stem then has no metric and no frames.
    ``ill_conditioned``: isr/sir/sar of the stem's joint BSSEval run are numerically unreliable.
    ``silent_estimate``: the estimate is all zeros; it has usdr/si_sdr but no BSSEval frames (null).
    ``estimate_level_db``: the estimate's energy relative to the reference's (dB; not a metric: the
    collapse check of :func:`mss_tools.metrics.collapse_reasons` reads it).
    """

    usdr: float | None
    si_sdr: float | None
    sdr: float | None
    isr: float | None
    sir: float | None
    sar: float | None
    frames: dict[str, list[float | None]]
    estimate_level_db: float | None
    ill_conditioned: bool
    silent_reference: bool
    silent_estimate: bool


STEM_FLAGS = ("ill_conditioned", "silent_reference", "silent_estimate")
# Per-stem numbers that describe the estimate rather than score it: not metrics of the tables.
STEM_MEASURES = ("estimate_level_db",)


class AggregateValue(TypedDict, total=False):
    """One stem and metric over tracks: median and mean of the per-track values, ``tracks`` finite ones."""

    median: float | None
    mean: float | None
    tracks: int


class ModelFacts(TypedDict, total=False):
    checkpoint: str | None
    arch: str | None
    sources: list[str] | None
    model_sample_rate: int | None


class _ScoresRequired(TypedDict):
    format: str
    format_version: int
    tracks: dict[str, dict[str, StemScores]]


class ScoresFile(_ScoresRequired, total=False):
    """A score file: ``tracks`` ``{track: {stem: StemScores}}`` (every table is computed from
    these); ``aggregate`` ``{stem: {metric: AggregateValue}}`` is a summary for reading, not
    for computing; ``ill_conditioned`` and ``silent_references`` name the flagged
    ``"track/stem"`` pairs; ``stamps`` ``{track: fingerprint of its inputs}`` lets a rerun
    skip unchanged tracks."""

    created_by: dict[str, Any]
    predictions: str
    references: str
    backend: str
    museval: bool
    metrics: list[str]
    window_seconds: float
    hop_seconds: float
    accompaniment_convention: str | None
    joint_evaluation: str
    aggregation: str
    silent_reference_dbfs: float
    aggregate: dict[str, dict[str, AggregateValue]]
    ill_conditioned: list[str]
    silent_references: list[str]
    collapsed: dict[str, list[str]]
    stamps: dict[str, str]
    model: ModelFacts
    sample_rate: int | None


# --------------------------------------------------------------------------------------
# predictions manifest


class _PredictedTrackRequired(TypedDict):
    track: str


class PredictedTrack(_PredictedTrackRequired, total=False):
    """One separated track: its input (``cache`` and ``split``, or ``path``), its estimates
    ``files`` ``{stem: path relative to the predictions folder}`` and how long it took."""

    cache: str
    split: str | None
    path: str
    files: dict[str, str]
    sample_rate: int
    audio_seconds: float
    wall_seconds: float
    timing: dict[str, Any]


class _PredictionsRequired(TypedDict):
    format: str
    format_version: int
    tracks: list[PredictedTrack]


class PredictionsManifest(_PredictionsRequired, total=False):
    """A predictions folder's manifest: the model, the output settings, and one entry per track."""

    checkpoint: str
    checkpoint_stamp: str
    arch: str
    sources: list[str]
    stems: list[str]
    model_sample_rate: int
    sample_rate: int
    segment: float
    overlap: float
    shifts: int
    tta_flip: bool
    seed: int
    audio_format: str
    subtype: str | None
    name_template: str
    two_stems: str | None
    timing: dict[str, Any]


# --------------------------------------------------------------------------------------
# HDF5 root attributes: stem cache and mix plan


class _StemCacheRequired(TypedDict):
    format: str
    format_version: int
    sample_rate: int
    sources: list[str]


class StemCacheAttrs(_StemCacheRequired, total=False):
    """A stem cache's root attributes (see :mod:`mss_tools.cache` for the layout below them)."""

    channels: int
    fingerprint: str
    layout: str
    origin: str
    created_by: dict[str, Any]
    skipped: list[dict[str, Any]]
    chunk_frames: int
    rms_hop: float


class _PlanRequired(TypedDict):
    format: str
    format_version: int
    cache_fingerprint: str
    sources: list[str]
    targets: list[str]
    split: str
    segment_frames: int
    sample_rate: int


class MixPlanAttrs(_PlanRequired, total=False):
    """A mix plan's root attributes: the cache it draws from and how its examples were drawn."""

    cache: str
    channels: int
    seed: int
    stage: int
    segment: float
    active_sources: int
    aligned_prob: float
    silent_keep: float
    augment: dict[str, Any]
    created_by: dict[str, Any]


def check_stem_cache_attrs(attrs: Any, path: str | os.PathLike) -> StemCacheAttrs:
    """Root attributes of the stem cache ``path`` checked against :class:`StemCacheAttrs`; ``BadInput`` otherwise."""
    try:
        _check_header(attrs, STEM_FORMAT, STEM_FORMAT_VERSION, "mss stem cache")
        _check(attrs, StemCacheAttrs, "")
        if attrs["sample_rate"] < 1 or not attrs["sources"] or attrs.get("channels", 2) not in (1, 2):
            raise _Invalid(f"impossible sample_rate {attrs['sample_rate']}, sources {attrs['sources']} or "
                           f"channels {attrs.get('channels')}")
    except _Invalid as exc:
        raise BadInput(f"{path}: {exc}") from None
    return attrs


def check_plan_attrs(attrs: Any, path: str | os.PathLike) -> MixPlanAttrs:
    """Root attributes of the mix plan ``path`` checked against :class:`MixPlanAttrs`; ``BadInput`` otherwise."""
    try:
        _check_header(attrs, PLAN_FORMAT, PLAN_FORMAT_VERSION, "mss mix plan")
        _check(attrs, MixPlanAttrs, "")
        unknown = [t for t in attrs["targets"] if t not in attrs["sources"]]
        if unknown or attrs["segment_frames"] < 1:
            raise _Invalid(f"targets {unknown} are not among its sources, or segment_frames {attrs['segment_frames']}")
    except _Invalid as exc:
        raise BadInput(f"{path}: {exc}") from None
    return attrs


# --------------------------------------------------------------------------------------
# readers and writers


def read_scores(path: str | os.PathLike) -> ScoresFile:
    """The score file at ``path``, checked against :class:`ScoresFile`; ``BadInput`` naming the file otherwise."""
    document = _load(path, "score file")
    try:
        return check_scores(document)
    except _Invalid as exc:
        raise BadInput(f"{path}: {exc}") from None


def check_scores(document: Any) -> ScoresFile:
    """``document`` as a :class:`ScoresFile`; raises :class:`_Invalid` (a ``BadInput``) with the problem."""
    _check_header(document, SCORES_FORMAT, SCORES_VERSION, "mss score file")
    if "tracks" not in document:
        raise _Invalid("no 'tracks': a score file without per-track scores cannot be compared")
    if not isinstance(document["tracks"], dict):
        raise _Invalid(f"'tracks' is {_show(document['tracks'])}, not an object")
    if not document["tracks"]:
        raise _Invalid("'tracks' is empty")
    for track, stems in document["tracks"].items():
        check_track_scores(stems, track)
    _check_record(document, ScoresFile, "", skip=("tracks",))
    return document


def check_track_scores(stems: Any, track: str) -> dict[str, StemScores]:
    """One track's ``{stem: StemScores}``; raises :class:`_Invalid` naming ``track`` when it is not one."""
    if not isinstance(stems, dict) or not stems or not all(isinstance(v, dict) for v in stems.values()):
        raise _Invalid(f"track {track!r} does not map stems to metrics")
    for stem, scores in stems.items():
        _check(scores, StemScores, f"tracks[{track!r}][{stem!r}]")
        if scores.get("silent_reference") and any(key not in STEM_FLAGS for key in scores):
            raise _Invalid(f"tracks[{track!r}][{stem!r}] has a silent reference but also metric values")
    return stems


def dumps_scores(document: ScoresFile) -> str:
    """A score document as strict JSON text (non-finite numbers as null), checked first."""
    document = json_values(document)
    try:
        check_scores(document)
    except _Invalid as exc:
        raise MssError(f"internal error: refusing to write an invalid score file ({exc})") from None
    return dumps_json(document)


def write_scores(path: str | os.PathLike, document: ScoresFile) -> None:
    """Write a score document atomically as strict JSON."""
    write_text(path, dumps_scores(document))


def read_predictions(path: str | os.PathLike) -> PredictionsManifest:
    """The predictions manifest at ``path`` (the file), checked; ``BadInput`` naming the file otherwise."""
    document = _load(path, "predictions manifest")
    try:
        _check_header(document, PREDICTIONS_FORMAT, PREDICTIONS_VERSION, "mss predictions manifest")
        _check(document, PredictionsManifest, "")
        names = [entry["track"] for entry in document["tracks"]]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise _Invalid(f"track {twice[0]!r} is listed twice")
    except _Invalid as exc:
        raise BadInput(f"{path}: {exc}") from None
    return document


def write_predictions(path: str | os.PathLike, manifest: PredictionsManifest) -> None:
    """Write a predictions manifest atomically as strict JSON, stamped with the current format and version."""
    header = {"format": PREDICTIONS_FORMAT, "format_version": PREDICTIONS_VERSION}
    manifest = json_values({**header, **{k: v for k, v in manifest.items() if k not in header}})
    try:
        _check(manifest, PredictionsManifest, "")
    except _Invalid as exc:
        raise MssError(f"internal error: refusing to write an invalid manifest {path} ({exc})") from None
    write_json(path, manifest, indent=2)


def json_values(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``, tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_values(item) for item in value]
    return value


# --------------------------------------------------------------------------------------
# checking a document against a TypedDict


class _Invalid(BadInput):
    """The problem with a document, without the file name (the readers add it)."""


# Keys a structure does not declare, and the type they must have (None: not checked).
_UNDECLARED = {StemScores: float | None}


def _load(path: str | os.PathLike, what: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a folder, not a {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not a readable {what} ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not a readable {what} ({exc})") from None


def _check_header(document: Any, name: str, version: int, what: str) -> None:
    if not isinstance(document, dict) or document.get("format") != name:
        raise _Invalid(f"not an {what} (no format={name!r})")
    if "format_version" not in document:
        raise _Invalid("no format_version")
    found = document["format_version"]
    if not _is_scalar(found, int) or found < 1:
        raise _Invalid(f"unknown format_version {_show(found)}")
    if found > version:
        raise _Invalid(f"format_version {found} is newer than this mss reads ({version}); upgrade mss")


@functools.lru_cache(maxsize=None)
def _fields(structure: type) -> dict[str, Any]:
    return typing.get_type_hints(structure)


def _check(value: Any, hint: Any, where: str) -> None:
    """Raise :class:`_Invalid` unless ``value`` (parsed JSON) has type ``hint``: a TypedDict,
    ``list[T]``, ``dict[str, T]``, a union, ``str``/``int``/``float``/``bool``/``None`` or ``Any``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if typing.is_typeddict(hint) and isinstance(value, dict):
        _check_record(value, hint, where)
    elif origin is list and isinstance(value, list):
        for index, item in enumerate(value):
            if not _is_scalar(item, args[0]):
                _check(item, args[0], f"{where}[{index}]")
    elif origin is dict and isinstance(value, dict):
        for key, item in value.items():
            if not _is_scalar(item, args[1]):
                _check(item, args[1], _at(where, key))
    elif origin in (Union, types.UnionType) and value is not None and len(args) == 2 and type(None) in args:
        _check(value, next(option for option in args if option is not type(None)), where)  # the precise message
    elif not _is_scalar(value, hint) and not (origin in (Union, types.UnionType)
                                              and any(_fits(value, option) for option in args)):
        raise _Invalid(f"{where or 'the file'} is {_show(value)}, not {_describe(hint)}")


def _check_record(value: dict, structure: type, where: str, skip: tuple[str, ...] = ()) -> None:
    """Check ``value`` against the TypedDict ``structure``, leaving out the keys ``skip``."""
    missing = [key for key in structure.__required_keys__ if key not in value]
    if missing:
        raise _Invalid(f"{where or 'the file'} has no {missing[0]!r}")
    fields = _fields(structure)
    for key, item in value.items():
        hint = fields.get(key, _UNDECLARED.get(structure))
        if hint is not None and key not in skip and not _is_scalar(item, hint):
            _check(item, hint, _at(where, key))


def _fits(value: Any, hint: Any) -> bool:
    try:
        _check(value, hint, "")
    except _Invalid:
        return False
    return True


def _is_scalar(value: Any, hint: Any) -> bool:
    """Whether ``value`` is a JSON scalar of type ``hint``, a scalar or a union of scalars
    (``float`` takes integers too, ``int`` no booleans); ``False`` for anything else."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str or hint is bool:
        return isinstance(value, hint)
    if typing.get_origin(hint) in (Union, types.UnionType):
        return any(_is_scalar(value, option) for option in typing.get_args(hint))
    return False


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null",
             None: "null", list: "a list", dict: "an object"}
    return names.get(hint) or names.get(typing.get_origin(hint)) or "an object"


def _at(where: str, key: str) -> str:
    return f"{where}[{key!r}]" if where else key


def _show(value: Any, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
