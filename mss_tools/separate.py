"""``mss separate``: run a checkpoint over audio files, folders or a cache split.

Writes ``<output>/<track>/<stem>.wav`` (the layout museval reads) and
``<output>/manifest.json`` naming the checkpoint, every input and the sample rate.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from mss_tools import audio
from mss_tools.apply import chunk_count, default_segment, separate_tensor
from mss_tools.cache import StemCache
from mss_tools.checkpoint import load_model
from mss_tools.errors import BadInput, MssError
from mss_tools.progress import log, progress_bar

PREDICTIONS_FORMAT = "mss-predictions"


@dataclass
class InputTrack:
    name: str
    path: str | None = None          # an audio file
    cache: StemCache | None = None   # or a track of a stem cache split
    split: str | None = None

    def describe(self) -> dict:
        if self.cache is not None:
            return {"track": self.name, "cache": str(Path(self.cache.path).resolve()), "split": self.split}
        return {"track": self.name, "path": str(Path(self.path).resolve())}

    def load(self) -> tuple[np.ndarray, int]:
        """``(channels, time)`` float32 and its sample rate."""
        if self.cache is not None:
            return self.cache.read_mixture(self.split, self.name), self.cache.sample_rate
        return audio.read_audio(self.path)


def is_stem_cache(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89HDF\r\n\x1a\n"


def collect_inputs(inputs: Sequence[str], split: str | None) -> list[InputTrack]:
    """Expand files, folders (audio files inside, recursively) and caches (``split``) into tracks."""
    tracks: list[InputTrack] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise BadInput(f"{item}: no such file or folder")
        if is_stem_cache(path):
            cache = StemCache(path)
            chosen = split or "test"
            tracks += [InputTrack(t, cache=cache, split=chosen) for t in cache.tracks(chosen)]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in audio.AUDIO_EXTENSIONS)
            if not files:
                raise BadInput(f"{item}: folder holds no audio files")
            tracks += [InputTrack(_track_name(p, path), path=str(p)) for p in files]
        else:
            tracks.append(InputTrack(path.stem, path=str(path)))
    names = [t.name for t in tracks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BadInput(f"several inputs map to the same track name: {', '.join(duplicates)}")
    return tracks


def _track_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root).with_suffix("")
    return "__".join(relative.parts)


def separate(checkpoint: str, inputs: Sequence[str], output: str | os.PathLike, split: str | None = None,
             segment: float | None = None, overlap: float = 0.25, batch_size: int = 4, device: str = "auto",
             subtype: str = "FLOAT", force: bool = False) -> int:
    """Separate every input track; returns the number of tracks that failed."""
    from mss_tools.training import resolve_device

    output = Path(output)
    model = load_model(checkpoint).to(resolve_device(device))
    tracks = collect_inputs(inputs, split)
    stamp = _checkpoint_stamp(checkpoint)
    manifest_path = output / "manifest.json"
    manifest = _read_manifest(manifest_path)
    if manifest.get("checkpoint_stamp") != stamp:
        manifest = {}
    done = {entry["track"] for entry in manifest.get("tracks", [])}
    output.mkdir(parents=True, exist_ok=True)
    manifest.update({
        "format": PREDICTIONS_FORMAT, "format_version": 1, "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_stamp": stamp, "arch": model.arch, "sources": model.sources,
        "model_sample_rate": model.sample_rate, "segment": default_segment(model, segment), "overlap": overlap,
    })
    manifest.setdefault("tracks", [])
    failures = 0
    for track in tracks:
        if not force and track.name in done and _stems_present(output / track.name, model.sources):
            log.info("%s: already separated", track.name)
            continue
        try:
            rate = separate_track(model, track, output / track.name, segment, overlap, batch_size, subtype)
        except (MssError, OSError, RuntimeError) as exc:
            failures += 1
            log.error("%s: %s", track.path or track.name, exc)
            continue
        entry = track.describe() | {"sample_rate": rate}
        manifest["tracks"] = [e for e in manifest["tracks"] if e["track"] != track.name] + [entry]
        manifest["sample_rate"] = rate
        _write_manifest(manifest_path, manifest)
    if failures:
        log.error("%d of %d tracks failed", failures, len(tracks))
    return failures


def separate_track(model, track: InputTrack, folder: Path, segment: float | None, overlap: float,
                   batch_size: int, subtype: str) -> int:
    """Separate one track at its own rate and channel count; returns the rate written."""
    mixture, rate = track.load()
    channels = mixture.shape[0]
    if channels > 2:
        raise BadInput(f"{track.path or track.name}: {channels} channels; mss separates mono and stereo")
    model_input = audio.resample(audio.to_channels(mixture, model.audio_channels), rate, model.sample_rate)
    device = next(model.parameters()).device
    chunk = int(round(default_segment(model, segment) * model.sample_rate))
    with progress_bar(chunk_count(model_input.shape[-1], chunk, overlap), track.name) as bar:
        stems = separate_tensor(model, torch.from_numpy(model_input), segment, overlap, batch_size, device, bar)
    stems = audio.resample(stems.numpy(), model.sample_rate, rate)[..., : mixture.shape[-1]]
    for name, stem in zip(model.sources, stems):
        audio.write_audio(folder / f"{name}.wav", audio.to_channels(stem, channels), rate, subtype)
    return rate


def _stems_present(folder: Path, sources: Sequence[str]) -> bool:
    return all((folder / f"{s}.wav").exists() for s in sources)


def _checkpoint_stamp(path: str) -> str:
    stat = Path(path).stat()
    return f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_manifest(path: Path, manifest: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a predictions folder; raises BadInput if absent."""
    path = Path(folder) / "manifest.json"
    manifest = _read_manifest(path)
    if manifest.get("format") != PREDICTIONS_FORMAT:
        raise BadInput(f"{path}: no predictions manifest (name the references with --ref)")
    return manifest
