"""``mss prep``: decode a data set one track at a time into an HDF5 stem cache.

Each track becomes a part file under ``<output>.parts/`` (named by a hash of its inputs
and the prep options, so a changed input is redone and an unchanged one is reused after
an interruption); when every track is done the parts are assembled, in split and name
order, into the cache, which is written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


from mss_tools import __version__, audio, cache, formats
from mss_tools.datasets import Dataset, TrackRef, discover, load_track
from mss_tools.datasets.demo import DEMO_CORPUS_VERSION
from mss_tools.errors import BadInput
from mss_tools.outputs import OutputLock, check_replaceable, remove_stale_temps, sweep_temps, write_json
from mss_tools.progress import log, progress_bar
from mss_tools.runner import TrackFailure, run_tracks

PREP_VERSION = 1


@dataclass
class PrepOptions:
    sample_rate: int | None = None
    layout: str = "auto"
    sources: Sequence[str] | None = None
    valid_tracks: Sequence[str] | None = None
    valid_fraction: float | None = None
    seed: int = 0
    skip_bad: bool = False
    jobs: int = 1
    force: bool = False
    demo_tracks: int = 20
    demo_duration: float = 12.0
    demo_test_tracks: int | None = None


def prep(source: str, output: str | os.PathLike, options: PrepOptions, argv: Sequence[str] = ()) -> Path:
    """Build the stem cache ``output`` from ``source``; returns its path. Skips work already done.

    One writer per output (a second prep of the same output fails at once); an existing file
    is replaced only if it is a cache prep made from the same source (or with ``force``).
    """
    output = Path(output)
    dataset = discover(source, options.layout, options.sources, options.valid_tracks, options.valid_fraction,
                       options.seed, options.demo_tracks, options.demo_duration, options.demo_test_tracks)
    rate = options.sample_rate or dataset.native_rate or _native_rate(dataset)
    settings = {"prep_version": PREP_VERSION, "sample_rate": rate, "sources": dataset.sources,
                "demo": ([options.seed, options.demo_duration, DEMO_CORPUS_VERSION] if dataset.layout == "demo"
                         else None)}
    fingerprint = dataset.fingerprint(json.dumps(settings, sort_keys=True))
    origin = str(Path(source).resolve()) if dataset.layout != "demo" else "demo"
    with OutputLock(output, "prep"):
        existing = _prep_cache_attrs(output)
        check_replaceable(output, lambda path: existing.get("origin") == origin,
                          f"a stem cache made by mss prep from {source}", options.force)
        remove_stale_temps(output)
        if not options.force and existing.get("fingerprint") == fingerprint:
            log.info("%s is up to date (fingerprint %s); nothing to do", output, fingerprint)
            return output
        _build(dataset, source, output, options, rate, settings, fingerprint, origin, argv)
    return output


def _build(dataset: Dataset, source: str, output: Path, options: PrepOptions, rate: int, settings: dict,
           fingerprint: str, origin: str, argv: Sequence[str]) -> None:
    log.info("prep %s (%s layout, %d tracks, sources %s) -> %s at %d Hz", source, dataset.layout,
             len(dataset.tracks), ",".join(dataset.sources), output, rate)
    parts_dir = output.with_name(output.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    sweep_temps(parts_dir)
    track_key = {id(t): _track_key(t, settings) for t in dataset.tracks}
    part_of = {id(t): parts_dir / f"{track_key[id(t)]}.h5" for t in dataset.tracks}
    todo = [t for t in dataset.tracks if not _part_ok(part_of[id(t)])]
    if len(todo) < len(dataset.tracks):
        log.info("resuming: %d of %d tracks already prepared", len(dataset.tracks) - len(todo), len(dataset.tracks))

    skipped = _load_skipped(parts_dir)
    skipped = {k: v for k, v in skipped.items() if k in track_key.values()}
    todo = [t for t in todo if track_key[id(t)] not in skipped or not options.skip_bad]
    job = _TrackJob(dataset, rate, options.seed, options.demo_duration,
                    {(t.split, t.name): part_of[id(t)] for t in todo})
    with progress_bar(len(dataset.tracks), "prep") as bar:
        bar.advance(len(dataset.tracks) - len(todo))
        for ref, outcome in run_tracks(job, todo, options.jobs):
            if isinstance(outcome, TrackFailure):
                if not options.skip_bad:
                    if not any(parts_dir.glob("*.h5")):
                        cache.remove_tree(parts_dir)
                    raise BadInput(f"{outcome}; --skip-bad leaves bad tracks out")
                log.warning("skipping %s/%s: %s", ref.split, ref.name, outcome)
                skipped[track_key[id(ref)]] = {"split": ref.split, "track": ref.name, "reason": str(outcome)}
                write_json(parts_dir / "skipped.json", skipped)
            bar.advance()

    kept = [t for t in dataset.tracks if track_key[id(t)] not in skipped]
    if not kept:
        raise BadInput(f"{source}: no usable tracks")
    order = {split: i for i, split in enumerate(cache.SPLITS)}
    kept.sort(key=lambda t: (order[t.split], t.name))
    root_attrs = {
        "format": formats.STEM_FORMAT, "format_version": formats.STEM_FORMAT_VERSION, "sample_rate": rate,
        "sources": list(dataset.sources), "channels": 2, "layout": dataset.layout, "origin": origin,
        "created_by": {"tool": "mss prep", "version": __version__, "argv": list(argv)},
        "skipped": sorted(skipped.values(), key=lambda s: (s["split"], s["track"])),
        "chunk_frames": cache.CHUNK_FRAMES, "rms_hop": cache.RMS_HOP, "fingerprint": fingerprint,
    }
    cache.assemble_cache(output, [part_of[id(t)] for t in kept], root_attrs)
    cache.remove_tree(parts_dir)
    counts = {s: sum(t.split == s for t in kept) for s in cache.SPLITS}
    log.info("wrote %s: %s; %d skipped", output, ", ".join(f"{n} {s}" for s, n in counts.items()), len(skipped))


@dataclass
class _TrackJob:
    dataset: Dataset
    rate: int
    seed: int
    demo_duration: float
    part_of: dict[tuple[str, str], Path]   # (split, track) -> part file

    def __call__(self, ref: TrackRef) -> None:
        """Decode, resample and write one track to its part file (``BadInput`` for bad data)."""
        track = load_track(ref, self.dataset, self.seed, self.demo_duration, self.rate)
        stems = {k: audio.resample(v, track.sample_rate, self.rate) for k, v in track.stems.items()}
        mixture = audio.resample(track.mixture, track.sample_rate, self.rate)
        attrs = {"name": ref.name, "origin": track.origin, "length": int(mixture.shape[-1]),
                 "source_sample_rate": int(track.sample_rate), "missing": track.missing}
        cache.write_track_part(self.part_of[(ref.split, ref.name)], ref.split, ref.name, stems, mixture, self.rate,
                               attrs)


def _track_key(ref: TrackRef, settings: dict) -> str:
    digest = hashlib.sha256((ref.input_signature() + json.dumps(settings, sort_keys=True)).encode())
    return f"{ref.split}-{digest.hexdigest()[:20]}"


def _part_ok(path: Path) -> bool:
    """Whether a part left by an earlier run is complete and intact (a bad one is removed)."""
    if not path.exists():
        return False
    try:
        cache.verify_part(path)
        return True
    except BadInput as exc:
        log.warning("redoing a damaged part: %s", exc)
        path.unlink(missing_ok=True)
        return False


def _load_skipped(parts_dir: Path) -> dict:
    path = parts_dir / "skipped.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _prep_cache_attrs(path: Path) -> dict:
    """The root attributes of a stem cache ``mss prep`` wrote at ``path`` (its ``origin``, ``fingerprint``);
    ``{}`` for anything else, or nothing."""
    attrs = cache.read_root_attrs(path) or {}
    created_by = attrs.get("created_by")
    if attrs.get("format") != formats.STEM_FORMAT or not (isinstance(created_by, str) and '"mss prep"' in created_by):
        return {}
    return attrs


def _native_rate(dataset: Dataset) -> int:
    """The sample rate of the first readable track (folder layouts); demo defaults to 44.1 kHz."""
    if dataset.layout == "demo":
        return 44100
    for ref in dataset.tracks:
        for path in ref.files.values():
            try:
                return audio.audio_info(path)[0]
            except BadInput:
                continue
    raise BadInput(f"{dataset.root}: no readable audio file found")
