"""MUSDB18 (``.stem.mp4``) discovery and decoding, and MUSDB's standard validation split."""

from __future__ import annotations

from pathlib import Path

from mss_tools import audio
from mss_tools.datasets import MUSDB_SOURCES, Dataset, LoadedTrack, TrackRef
from mss_tools.errors import BadInput

# musdb's stream order inside a .stem.mp4
STREAM_ORDER = ("mixture", "drums", "bass", "other", "vocals")

# The 14 training tracks that musdb (and every MUSDB18 paper) holds out for validation.
VALIDATION_TRACKS = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)


def looks_like_musdb(root: Path) -> bool:
    return any(root.glob("*/*.stem.mp4")) or any(root.glob("*.stem.mp4"))


def discover_stem_mp4(root: Path) -> Dataset:
    tracks = []
    for split in ("train", "valid", "test"):
        for path in sorted((root / split).glob("*.stem.mp4")):
            tracks.append(TrackRef(split, path.name[: -len(".stem.mp4")], "musdb", {"stem.mp4": str(path)}))
    if not tracks:
        loose = sorted(root.glob("*.stem.mp4"))
        if loose:
            raise BadInput(f"{root}: .stem.mp4 files must sit in train/ and test/ subfolders (MUSDB18 layout)")
        raise BadInput(f"{root}: no .stem.mp4 files in train/ or test/")
    return Dataset("musdb", str(root), list(MUSDB_SOURCES), tracks, has_mixture=True, native_rate=44100)


def load_stem_mp4(ref: TrackRef, sources: list[str]) -> LoadedTrack:
    path = ref.files["stem.mp4"]
    streams, rate = audio.read_stem_mp4(path)
    if streams.shape[0] != len(STREAM_ORDER):
        raise BadInput(f"{path}: expected {len(STREAM_ORDER)} audio streams "
                       f"({', '.join(STREAM_ORDER)}), found {streams.shape[0]}")
    if streams.shape[1] != 2:
        raise BadInput(f"{path}: expected stereo streams, found {streams.shape[1]} channels")
    by_name = dict(zip(STREAM_ORDER, streams))
    stems = {name: by_name[name] for name in sources}
    return LoadedTrack(stems, by_name["mixture"], rate, path, [])
