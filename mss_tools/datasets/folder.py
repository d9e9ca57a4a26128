"""Folders of stems: MUSDB18-HQ and any ``<split>/<track>/<stem>.<ext>`` layout."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from mss_tools import audio
from mss_tools.datasets import MUSDB_SOURCES, Dataset, LoadedTrack, TrackRef, order_sources
from mss_tools.errors import BadInput

SPLIT_FOLDERS = ("train", "valid", "test")
MIXTURE_NAMES = ("mixture", "mix")


def discover_folder(root: Path, layout: str) -> Dataset:
    """Tracks are the folders ``<root>/<split>/<track>/`` holding audio files named by stem."""
    splits = [s for s in SPLIT_FOLDERS if (root / s).is_dir()]
    if not splits:
        raise BadInput(f"{root}: expected train/, valid/ or test/ subfolders holding one folder per track")
    tracks: list[TrackRef] = []
    names: set[str] = set()
    for split in splits:
        for track_dir in sorted(p for p in (root / split).iterdir() if p.is_dir() and not p.name.startswith(".")):
            files, problem = {}, None
            for path in sorted(track_dir.iterdir()):
                if path.name.startswith("."):
                    continue
                if path.is_symlink() and not path.exists():
                    problem = problem or _broken_link(path)
                elif not path.is_file():
                    continue
                if path.suffix.lower() not in audio.AUDIO_EXTENSIONS:
                    problem = problem or (f"{path}: not an audio file "
                                          f"(expected one of {', '.join(audio.AUDIO_EXTENSIONS)})")
                    continue
                key = "mixture" if path.stem.lower() in MIXTURE_NAMES else path.stem
                if key in files:
                    problem = problem or f"{path}: a second file for stem {key!r} in {track_dir}"
                files[key] = str(path)
            if not files:
                problem = problem or f"{track_dir}: track folder holds no audio files"
            names.update(k for k in files if k != "mixture")
            tracks.append(TrackRef(split, track_dir.name, "", files, problem=problem))
    if not tracks:
        raise BadInput(f"{root}: no track folders found under {', '.join(splits)}")
    has_mixture = any("mixture" in t.files for t in tracks)
    musdb_hq_shaped = names == set(MUSDB_SOURCES) and has_mixture
    if layout == "auto":
        layout = "musdb-hq" if musdb_hq_shaped else "folder"
    elif layout == "musdb-hq" and not musdb_hq_shaped:
        raise BadInput(f"{root}: not laid out as MUSDB18-HQ (stems {', '.join(order_sources(names)) or 'none'}"
                       f"{'' if has_mixture else ', no mixture files'}; MUSDB18-HQ has "
                       f"{', '.join(MUSDB_SOURCES)} and mixture); use --layout folder")
    for track in tracks:
        track.layout = layout
    if not names:
        raise BadInput(f"{root}: tracks hold only mixtures, no stems")
    return Dataset(layout, str(root), order_sources(names), tracks, has_mixture)


def _broken_link(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path}: a symbolic link that loops (it leads back to itself)"
    return f"{path}: a broken symbolic link (its target {os.readlink(path)} does not exist)"


def load_folder_track(ref: TrackRef, sources: list[str], has_mixture: bool) -> LoadedTrack:
    """Decode every stem file; stems must share sample rate and length; mono becomes stereo."""
    folder = Path(ref.files[next(iter(ref.files))]).parent
    if has_mixture and "mixture" not in ref.files:
        raise BadInput(f"{folder}: missing mixture file (other tracks of this data set have one)")
    present = [s for s in sources if s in ref.files]
    if not present:
        raise BadInput(f"{folder}: track holds none of the stems {', '.join(sources)}")
    keys = present + (["mixture"] if has_mixture else [])
    infos = {key: audio.audio_info(ref.files[key]) for key in keys}
    def listing(index: int, unit: str) -> str:
        return ", ".join(f"{Path(ref.files[k]).name} {infos[k][index]}{unit}" for k in keys)

    if len({infos[k][0] for k in keys}) > 1:
        raise BadInput(f"{folder}: stems of different sample rates ({listing(0, ' Hz')})")
    if len({infos[k][2] for k in keys}) > 1:
        raise BadInput(f"{folder}: stems of unequal length ({listing(2, ' samples')})")
    for key in keys:
        if infos[key][1] > 2:
            raise BadInput(f"{ref.files[key]}: {infos[key][1]} channels; mss handles mono and stereo")
    rate, _, length = infos[keys[0]]
    decoded = {}
    for key in keys:
        data, _ = audio.read_audio(ref.files[key])
        if data.shape[1] != length:
            raise BadInput(f"{ref.files[key]}: decoded {data.shape[1]} of {length} samples (truncated file)")
        decoded[key] = audio.to_channels(data, 2)
    stems = {s: decoded[s] for s in present}
    mixture = decoded["mixture"] if has_mixture else np.sum(list(stems.values()), axis=0).astype(np.float32)
    missing = [s for s in sources if s not in present]
    return LoadedTrack(stems, mixture, rate, str(folder), missing)
