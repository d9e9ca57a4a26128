"""Data set readers: discover tracks in a source and load one track at a time.

Layouts:

- ``musdb``: MUSDB18, ``<root>/{train,test}/<track>.stem.mp4`` (streams: mixture, drums,
  bass, other, vocals);
- ``musdb-hq``: MUSDB18-HQ, ``<root>/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav``;
- ``folder``: any folder of stems, ``<root>/<split>/<track>/<stem>.(wav|flac|...)`` with
  stem names of the user's choosing and an optional ``mixture`` file;
- ``demo``: the built-in synthetic corpus (no files).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mss_tools.errors import BadInput
from mss_tools.progress import log

MUSDB_SOURCES = ("vocals", "drums", "bass", "other")
LAYOUTS = ("auto", "musdb", "musdb-hq", "folder", "demo")


@dataclass
class TrackRef:
    """One track to load: where it lives and which split it goes to."""

    split: str
    name: str
    layout: str
    files: dict[str, str] = field(default_factory=dict)   # stem (or "mixture"/"stem.mp4") -> path
    demo_index: int = -1
    problem: str | None = None   # found at discovery; raised when the track is loaded

    def input_signature(self) -> str:
        """Size and modification time of every input file (or the demo index)."""
        items = [f"{self.layout}|{self.split}|{self.name}|{self.demo_index}"]
        for key in sorted(self.files):
            try:
                stat = Path(self.files[key]).stat()
            except OSError:
                items.append(f"{key}={self.files[key]}|missing")
                continue
            items.append(f"{key}={self.files[key]}|{stat.st_size}|{stat.st_mtime_ns}")
        return "\n".join(items)


@dataclass
class Dataset:
    layout: str
    root: str
    sources: list[str]
    tracks: list[TrackRef]
    has_mixture: bool
    native_rate: int | None = None

    def fingerprint(self, extra: str = "") -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.layout}|{','.join(self.sources)}|{extra}".encode())
        for track in self.tracks:
            digest.update(track.input_signature().encode())
        return digest.hexdigest()[:16]


@dataclass
class LoadedTrack:
    """A decoded track: stems ``{name: (channels, time)}`` float32 at ``sample_rate``."""

    stems: dict[str, np.ndarray]
    mixture: np.ndarray
    sample_rate: int
    origin: str
    missing: list[str]


def order_sources(names: Sequence[str]) -> list[str]:
    """MUSDB names first in MUSDB order, then the others alphabetically."""
    names = set(names)
    return [s for s in MUSDB_SOURCES if s in names] + sorted(names - set(MUSDB_SOURCES))


def assign_validation(tracks: list[TrackRef], valid_tracks: Sequence[str] | None, valid_fraction: float | None,
                      seed: int, default_names: Sequence[str] = ()) -> None:
    """Move training tracks to the ``valid`` split: named ones, else a seeded fraction, else ``default_names``."""
    if any(t.split == "valid" for t in tracks):
        if valid_tracks or valid_fraction:
            raise BadInput("the data set has a valid/ folder already; drop --valid-tracks/--valid-fraction")
        return
    train = [t for t in tracks if t.split == "train"]
    if valid_tracks:
        names = set(valid_tracks)
        unknown = names - {t.name for t in train}
        if unknown:
            raise BadInput(f"--valid-tracks names tracks not in train: {', '.join(sorted(unknown))}")
    elif valid_fraction:
        if not 0 < valid_fraction < 1:
            raise BadInput(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
        count = max(1, round(valid_fraction * len(train))) if len(train) > 1 else 0
        names = set(random.Random(seed).sample(sorted(t.name for t in train), count))
    else:
        names = set(default_names)
    for track in train:
        if track.name in names:
            track.split = "valid"


def discover(source: str, layout: str = "auto", sources: Sequence[str] | None = None,
             valid_tracks: Sequence[str] | None = None, valid_fraction: float | None = None, seed: int = 0,
             demo_tracks: int = 20, demo_duration: float = 12.0, demo_test_tracks: int | None = None) -> Dataset:
    """Find every track of ``source`` and decide its split."""
    if layout not in LAYOUTS:
        raise BadInput(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "demo" or (layout == "auto" and source == "demo" and not Path(source).exists()):
        from mss_tools.datasets.demo import DEMO_SOURCES, demo_track_names

        held_out = max(1, min(3, demo_tracks // 5))
        n_test = held_out if demo_test_tracks is None else demo_test_tracks
        refs = [TrackRef(split, name, "demo", demo_index=i)
                for i, (split, name) in enumerate(demo_track_names(demo_tracks, held_out, n_test))]
        dataset = Dataset("demo", "demo", list(DEMO_SOURCES), refs, has_mixture=False)
    else:
        from mss_tools.datasets import folder, musdb

        root = Path(source)
        if not root.is_dir():
            raise BadInput(f"{source}: no such folder (or use 'demo' for the built-in corpus)")
        if layout == "musdb" or (layout == "auto" and musdb.looks_like_musdb(root)):
            dataset = musdb.discover_stem_mp4(root)
        else:
            dataset = folder.discover_folder(root, layout)  # "auto" tells MUSDB18-HQ from other folders
        default_valid = musdb.VALIDATION_TRACKS if dataset.layout in ("musdb", "musdb-hq") else ()
        chosen = valid_tracks or valid_fraction or any(t.split == "valid" for t in dataset.tracks)
        if not chosen and default_valid and not any(t.name in default_valid for t in dataset.tracks
                                                     if t.split == "train"):
            log.info("%s: none of MUSDB's %d validation tracks is among the training tracks; holding out "
                     "--valid-fraction 0.1 instead", source, len(default_valid))
            default_valid = ()
        if not chosen and not default_valid:
            valid_fraction = 0.1
        assign_validation(dataset.tracks, valid_tracks, valid_fraction, seed, default_valid)
    if sources:
        unknown = [s for s in sources if s not in dataset.sources]
        if unknown:
            raise BadInput(f"{source}: no stem named {', '.join(unknown)}; the data set has {', '.join(dataset.sources)}")
        if "mixture" in sources:
            raise BadInput("'mixture' is reserved and cannot be a source")
        dataset.sources = list(sources)
    return dataset


def load_track(ref: TrackRef, dataset: Dataset, demo_seed: int = 0, demo_duration: float = 12.0,
               demo_rate: int = 44100) -> LoadedTrack:
    """Decode and validate one track (native sample rate)."""
    if ref.problem:
        raise BadInput(ref.problem)
    if ref.layout == "demo":
        from mss_tools.datasets.demo import synthesize_track

        stems = synthesize_track(ref.demo_index, seed=demo_seed, duration=demo_duration, sample_rate=demo_rate)
        stems = {k: v for k, v in stems.items() if k in dataset.sources}
        mixture = np.sum(list(stems.values()), axis=0).astype(np.float32)
        return LoadedTrack(stems, mixture, demo_rate, f"demo:{ref.demo_index}", [])
    if ref.layout == "musdb":
        from mss_tools.datasets.musdb import load_stem_mp4

        return load_stem_mp4(ref, dataset.sources)
    from mss_tools.datasets.folder import load_folder_track

    return load_folder_track(ref, dataset.sources, dataset.has_mixture)
