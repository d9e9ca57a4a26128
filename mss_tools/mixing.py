"""Random remixing, the source-count curriculum and per-source augmentations.

A *mix example* is, for every source slot of the cache (``sources``), a track, an offset,
a gain, augmentation flags and whether the slot is active. :class:`ExampleSampler` draws
examples (from a seeded generator, rejecting silent targets at a chosen rate);
:func:`render_example` turns one into audio; a *mix plan* file stores many examples so that
training data and listening material are fixed, shareable and reproducible.

Curriculum stages: stage 1 = target + 1 distractor, stage 2 = target + 2 distractors,
stage 3 = the full mixture. Inactive slots are silent in the mixture and in the targets.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mss_tools import __version__, audio
from mss_tools.cache import (CHUNK_FRAMES, PLAN_FIELDS, RMS_HOP, SILENCE_DB, StemCache, assemble_cache, read_plan,
                             read_root_attrs, remove_tree, write_plan, write_track_part)
from mss_tools.errors import BadInput
from mss_tools.formats import PLAN_FORMAT, PLAN_FORMAT_VERSION, STEM_FORMAT, STEM_FORMAT_VERSION
from mss_tools.options import NON_NEGATIVE_FLOAT, PROBABILITY, FiniteFloatRange, IntegerRange, option
from mss_tools.outputs import OutputLock, check_replaceable, remove_stale_temps
from mss_tools.progress import log

STAGE_SOURCES = {1: 2, 2: 3, 3: None}
MAX_REDRAWS = 20


@dataclass
class Augmentation:
    """Per-source augmentation probabilities and ranges (see data/README.md)."""

    gain_db: float = option(6.0, type=NON_NEGATIVE_FLOAT,  # uniform in [-gain_db, +gain_db]
                            help="Random gain range per source (± dB).")
    gain_prob: float = option(1.0, type=PROBABILITY, help="Probability of the random gain.")
    swap_prob: float = option(0.5, type=PROBABILITY, help="Left/right swap probability per source.")
    flip_prob: float = option(0.5, type=PROBABILITY, help="Polarity inversion probability per source.")
    shift: float = option(0.0, type=NON_NEGATIVE_FLOAT,  # per-source time shift within the track
                          help="Max time shift per source in aligned examples (s).")
    pitch_prob: float = option(0.0, type=PROBABILITY,  # phase vocoder + resampling: slow, off by default
                               help="Pitch shift probability per source (slow).")
    pitch_semitones: float = option(2.0, type=FiniteFloatRange(0.0, 12.0),
                                    help="Pitch shift range (± semitones; at most an octave).")
    stretch_prob: float = option(0.0, type=PROBABILITY,  # phase vocoder: slow, off by default
                                 help="Time stretch probability per source (slow).")
    stretch_range: float = option(0.1, type=FiniteFloatRange(0.0, 0.5),  # rate uniform in [1 - range, 1 + range]
                                  help="Time stretch rate range (1 ± range; at most 0.5, half or one and a half "
                                       "times the speed).")

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(gain_db=0.0, gain_prob=0.0, swap_prob=0.0, flip_prob=0.0)


@dataclass
class MixSpec:
    """How examples are drawn. ``active_sources``: slots active per example (None = all);
    ``stage``: the curriculum stage that count stands for (:func:`parse_active_sources`).

    The fields with an option are the command-line options that ``mss remix`` and ``mss
    train`` share (``--sources`` and ``--stage`` resolved together by :func:`parse_active_sources`).
    """

    targets: list[str]
    segment: float
    active_sources: int | None = option(None, names=("--sources",),
                                        help="Active sources per example: 2, 3, ... or 'all' (default all).")
    stage: int = option(3, type=IntegerRange(1, 3), cli_default=None,
                        help="Curriculum stage: 1 = target + 1 distractor, 2 = target + 2, 3 = full mixture.")
    aligned_prob: float = option(0.0, type=PROBABILITY, help="Probability that all sources of an example come "
                                 "from one track (else cross-track remix).")
    silent_keep: float = option(0.1, type=PROBABILITY, help="Probability of keeping an example whose target is "
                                "silent (else it is redrawn).")
    split: str = "train"
    augment: Augmentation = option(default_factory=Augmentation, names=("--no-augment",), dest="no_augment",
                                   is_flag=True, help="Turn every augmentation off.",
                                   convert=lambda off, augment: Augmentation.none() if off else augment)

    def to_attrs(self) -> dict[str, Any]:
        attrs = dataclasses.asdict(self)
        attrs["active_sources"] = -1 if self.active_sources is None else self.active_sources
        return attrs


def parse_active_sources(sources: str | None, stage: int | None) -> tuple[int | None, int]:
    """``--sources 2|3|all`` or ``--stage 1|2|3`` -> (active sources or None for all, stage)."""
    if stage is not None:
        if stage not in STAGE_SOURCES:
            raise BadInput(f"--stage must be 1, 2 or 3, got {stage}")
        if sources is not None and str(STAGE_SOURCES[stage] or "all") != sources:
            raise BadInput(f"--stage {stage} and --sources {sources} disagree")
        return STAGE_SOURCES[stage], stage
    if sources is None or sources == "all":
        return None, 3
    try:
        count = int(sources)
    except ValueError:
        raise BadInput(f"--sources must be a number or 'all', got {sources!r}") from None
    if count < 1:
        raise BadInput(f"--sources must be at least 1, got {count}")
    return count, {2: 1, 3: 2}.get(count, 0)


class ExampleSampler:
    """Draws mix examples from one split of a stem cache."""

    def __init__(self, cache: StemCache, spec: MixSpec):
        self.cache = cache
        self.spec = spec
        self.sources = cache.sources
        unknown = [t for t in spec.targets if t not in self.sources]
        if unknown:
            raise BadInput(f"{cache.path}: no source {', '.join(unknown)}; the cache has {', '.join(self.sources)}")
        self.tracks = cache.tracks(spec.split)
        if not self.tracks:
            raise BadInput(f"{cache.path}: split {spec.split!r} has no tracks")
        self.lengths = np.array([cache.length(spec.split, t) for t in self.tracks])
        self.frames = int(round(spec.segment * cache.sample_rate))
        self.rms_hop = int(round(float(cache.attrs.get("rms_hop", 0.5)) * cache.sample_rate))
        self.rms = [{s: cache.rms_db(spec.split, t, s) for s in spec.targets} for t in self.tracks]
        self.target_slots = [self.sources.index(t) for t in spec.targets]
        n = len(self.sources)
        if spec.active_sources is not None and not 1 <= spec.active_sources <= n:
            raise BadInput(f"cannot make {spec.active_sources}-source examples from {n} sources")

    def _active(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.sources)
        active = np.ones(n, dtype=bool)
        count = self.spec.active_sources
        if count is None or count >= n:
            return active
        active[:] = False
        if len(self.target_slots) == 1:
            target = self.target_slots[0]
            others = [s for s in range(n) if s != target]
            active[target] = True
            active[rng.choice(others, size=count - 1, replace=False)] = True
        else:
            while not active[self.target_slots].any():
                active[:] = False
                active[rng.choice(n, size=count, replace=False)] = True
        return active

    def _silent(self, track: int, source: str, offset: int, frames: int) -> bool:
        rms = self.rms[track][source]
        first, last = offset // self.rms_hop, -(-(offset + frames) // self.rms_hop)
        window = rms[first:max(last, first + 1)]
        return window.size == 0 or float(window.max()) < SILENCE_DB

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One example: a dict of ``PLAN_FIELDS`` arrays of shape ``(slots,)``."""
        for _ in range(MAX_REDRAWS):
            example = self._draw_once(rng)
            silent = any(example["active"][slot] and self._silent(int(example["track"][slot]), source,
                                                                  int(example["offset"][slot]), self.frames)
                         for slot, source in zip(self.target_slots, self.spec.targets))
            if not silent or rng.random() < self.spec.silent_keep:
                return example
        return example

    def _draw_once(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n, aug, frames = len(self.sources), self.spec.augment, self.frames
        out = {name: np.zeros(n, dtype=dtype) for name, dtype in PLAN_FIELDS.items()}
        out["active"] = self._active(rng)
        out["stretch"][:] = 1.0
        aligned = rng.random() < self.spec.aligned_prob
        shared_track = int(rng.integers(len(self.tracks)))
        shared_offset = int(rng.integers(max(1, self.lengths[shared_track] - frames + 1)))
        max_shift = int(round(aug.shift * self.cache.sample_rate))
        for s in range(n):
            if rng.random() < aug.stretch_prob:
                out["stretch"][s] = rng.uniform(1 - aug.stretch_range, 1 + aug.stretch_range)
            need = int(round(frames * out["stretch"][s]))
            if aligned:
                track = shared_track
                shift = int(rng.integers(-max_shift, max_shift + 1)) if max_shift else 0
                offset = int(np.clip(shared_offset + shift, 0, max(0, self.lengths[track] - need)))
                out["shift"][s] = offset - shared_offset
            else:
                track = int(rng.integers(len(self.tracks)))
                offset = int(rng.integers(max(1, self.lengths[track] - need + 1)))
            out["track"][s], out["offset"][s] = track, offset
            out["gain"][s] = 10 ** (rng.uniform(-aug.gain_db, aug.gain_db) / 20) if rng.random() < aug.gain_prob else 1.0
            out["swap"][s] = rng.random() < aug.swap_prob
            out["flip"][s] = rng.random() < aug.flip_prob
            if rng.random() < aug.pitch_prob:
                out["pitch"][s] = rng.uniform(-aug.pitch_semitones, aug.pitch_semitones)
        return out


def render_example(cache: StemCache, split: str, tracks: Sequence[str], example: dict[str, np.ndarray],
                   frames: int) -> np.ndarray:
    """Audio of one example: stems ``(slots, channels, frames)`` (inactive slots silent); the mixture is their sum."""
    stems = np.zeros((len(cache.sources), cache.channels, frames), dtype=np.float32)
    for s, source in enumerate(cache.sources):
        if not example["active"][s]:
            continue
        track = tracks[int(example["track"][s])]
        stretch = float(example["stretch"][s])
        if stretch == 1.0 and example["pitch"][s] == 0:
            cache.read_into(stems[s], split, track, source, int(example["offset"][s]))
        else:
            chunk = np.zeros((cache.channels, int(round(frames * stretch))), dtype=np.float32)
            cache.read_into(chunk, split, track, source, int(example["offset"][s]))
            if stretch != 1.0:
                chunk = audio.time_stretch(chunk, stretch)
            if example["pitch"][s] != 0:
                chunk = audio.pitch_shift(chunk, cache.sample_rate, float(example["pitch"][s]))
            n = min(frames, chunk.shape[-1])
            stems[s, :, :n] = chunk[:, :n]
        if example["swap"][s]:
            stems[s] = stems[s, ::-1].copy()
        stems[s] *= (-1.0 if example["flip"][s] else 1.0) * float(example["gain"][s])
    return stems


def make_plan(cache_path: str, output: str, spec: MixSpec, examples: int, seed: int,
              argv: Sequence[str] = (), force: bool = False) -> None:
    """Draw ``examples`` examples (example ``i`` from generator ``(seed, i)``) and write the plan.

    An existing ``output`` is replaced only if it is a mix plan of the same cache (or with
    ``force``); one drawn from the same cache with the same spec, seed and number of examples
    is kept as it is ("up to date": it would be drawn again identically), unless ``force``.
    """
    if examples < 1:
        raise BadInput(f"--examples must be at least 1, got {examples}")
    cache = StemCache(cache_path)
    attrs = _plan_attrs(cache, cache_path, spec, seed, argv)
    with OutputLock(output, "remix"):
        check_replaceable(output, lambda path: _plan_cache_fingerprint(path) == cache.fingerprint,
                          f"a mix plan of {cache_path}", force)
        remove_stale_temps(output)
        if not force and _plan_is_current(output, attrs, examples):
            log.info("%s is up to date (drawn from the same cache with the same options); nothing to do", output)
            return
        sampler = ExampleSampler(cache, spec)
        drawn = [sampler.draw(np.random.default_rng([seed, i])) for i in range(examples)]
        write_plan(output, {name: np.stack([d[name] for d in drawn]) for name in PLAN_FIELDS}, sampler.tracks, attrs)


def _plan_cache_fingerprint(path) -> str | None:
    attrs = read_root_attrs(path)
    return attrs.get("cache_fingerprint") if attrs and attrs.get("format") == PLAN_FORMAT else None


def _plan_attrs(cache: StemCache, cache_path: str, spec: MixSpec, seed: int, argv: Sequence[str]) -> dict[str, Any]:
    return spec.to_attrs() | {
        "cache": str(cache_path), "cache_fingerprint": cache.fingerprint, "sources": list(cache.sources),
        "sample_rate": cache.sample_rate, "channels": cache.channels, "seed": seed,
        "segment_frames": int(round(spec.segment * cache.sample_rate)),
        "created_by": {"tool": "mss remix", "version": __version__, "argv": list(argv)},
    }


# Plan attributes that do not change the examples: where the cache was named from, and the command.
_NOT_DRAWING = ("cache", "created_by")


def _plan_is_current(path, attrs: dict[str, Any], examples: int) -> bool:
    """Whether ``path`` is a plan of ``examples`` examples drawn with these attributes (the same cache
    fingerprint, spec, seed and segment; plan format version)."""
    try:
        fields, _, existing = read_plan(path)
    except BadInput:
        return False
    wanted = {k: v for k, v in attrs.items() if k not in _NOT_DRAWING} | {"format_version": PLAN_FORMAT_VERSION}
    canonical = lambda value: json.dumps(value, sort_keys=True, default=lambda v: v.item())  # noqa: E731
    return len(fields["track"]) == examples and all(canonical(existing.get(k)) == canonical(v)
                                                    for k, v in wanted.items())


class MixPlan:
    """A plan file opened for rendering: ``len(plan)`` examples, ``plan.render(i)`` -> stems."""

    def __init__(self, path: str, cache_path: str | None = None):
        self.path = path
        self.fields, self.tracks, self.attrs = read_plan(path)
        self.cache = StemCache(cache_path or self.attrs["cache"])
        if self.cache.fingerprint != self.attrs.get("cache_fingerprint"):
            raise BadInput(f"{path}: made from a different stem cache than {self.cache.path} (fingerprints differ)")
        self.split = str(self.attrs["split"])
        self.frames = int(self.attrs["segment_frames"])
        self.targets = list(self.attrs["targets"])

    def __len__(self) -> int:
        return len(self.fields["track"])

    def example(self, index: int) -> dict[str, np.ndarray]:
        return {name: values[index] for name, values in self.fields.items()}

    def render(self, index: int) -> np.ndarray:
        return render_example(self.cache, self.split, self.tracks, self.example(index), self.frames)


def render_plan(plan_path: str, output: str, cache_path: str | None = None, force: bool = False) -> None:
    """Materialize every example of a plan as a track of a stem cache (``ex-000000``...).

    An existing ``output`` is replaced only if it is a rendering of the same plan (or with ``force``).
    """
    plan = MixPlan(plan_path, cache_path)
    origin = str(Path(plan_path).resolve())
    with OutputLock(output, "remix"):
        check_replaceable(output, lambda path: (read_root_attrs(path) or {}).get("origin") == origin,
                          f"a rendering of {plan_path}", force)
        remove_stale_temps(output)
        parts_dir = Path(output).with_name(Path(output).name + ".parts")
        remove_tree(parts_dir)
        parts_dir.mkdir(parents=True)
        width = max(6, len(str(len(plan) - 1)))
        parts = []
        for i in range(len(plan)):
            stems = plan.render(i)
            name = f"ex-{i:0{width}d}"
            part = parts_dir / f"{name}.h5"
            write_track_part(part, plan.split, name, dict(zip(plan.cache.sources, stems)), stems.sum(axis=0),
                             plan.cache.sample_rate, {"name": name, "origin": f"{plan_path}#{i}", "length": plan.frames,
                                                      "source_sample_rate": plan.cache.sample_rate, "missing": []})
            parts.append(part)
        assemble_cache(output, parts, {
            "format": STEM_FORMAT, "format_version": STEM_FORMAT_VERSION, "sample_rate": plan.cache.sample_rate,
            "sources": plan.cache.sources, "channels": plan.cache.channels, "layout": "plan",
            "fingerprint": f"plan:{plan.attrs.get('cache_fingerprint')}:{plan.attrs.get('seed')}:{len(plan)}",
            "origin": origin, "created_by": {"tool": "mss remix --render", "version": __version__},
            "skipped": [], "chunk_frames": CHUNK_FRAMES, "rms_hop": RMS_HOP,
        })
        remove_tree(parts_dir)
