"""Loader throughput: random 6 s remixed 4-stem stereo segments per second.

Side by side in one run:
  mss      the HDF5 stem cache through mss_tools.training.TrainExamples (cross-track remix,
           augmentations on) with 0, 1 and 2 DataLoader workers;
  (a)      musdb's own chunked reading of .stem.mp4 (what open-unmix's musdb loader does:
           track.chunk_start / chunk_duration, then target.audio, decoded by ffmpeg);
  (b)      soundfile partial reads of MUSDB18-HQ wav files (what Music-Source-Separation-
           Training does: sf.read(path, start, frames) per stem of a random track), with the
           same gain and channel swap and the same output (mixture and stacked stems) as ours.
It also times one training step of the fastest architecture on the same batch shape, so that
you can see whether the loader or the model sets the pace.

    python benchmarks/bench_loader.py --root /tmp/mlike        # made by shared/tools/musdb_like/make.sh
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SOURCES = ("vocals", "drums", "bass", "other")


def rate(fn, count: int) -> float:
    fn()  # warm-up (opens files, caches)
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - start)


def bench_mss(cache_path: str, segment: float, count: int, workers: int) -> float:
    from torch.utils.data import DataLoader

    from mss_tools.mixing import MixSpec
    from mss_tools.training import TrainExamples

    dataset = TrainExamples(cache_path, list(SOURCES), MixSpec(targets=list(SOURCES), segment=segment), seed=0)
    warm = 4 * max(1, workers)
    loader = DataLoader(dataset, batch_sampler=[[i] for i in range(warm + count)], num_workers=workers,
                        persistent_workers=False)
    iterator = iter(loader)
    for _ in range(warm):
        next(iterator)
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count / (time.perf_counter() - start)


def bench_musdb(stems_root: str, segment: float, count: int) -> float:
    import musdb

    tracks = musdb.DB(root=stems_root, subsets="train").tracks
    rng = random.Random(0)

    def one():
        stems = []
        for source in SOURCES:
            track = rng.choice(tracks)
            track.chunk_duration = segment
            track.chunk_start = rng.uniform(0, track.duration - segment)
            stems.append(track.targets[source].audio.T)
        return np.sum(stems, axis=0)

    return rate(one, count)


def bench_soundfile(wav_root: str, segment: float, count: int) -> float:
    folders = sorted(p for p in (Path(wav_root) / "train").iterdir() if p.is_dir())
    frames = {f: sf.info(str(f / "mixture.wav")).frames for f in folders}
    rng = random.Random(0)

    def one():
        stems = []
        for source in SOURCES:
            folder = rng.choice(folders)
            length = int(segment * 44100)
            start = rng.randrange(0, frames[folder] - length)
            stem = sf.read(str(folder / f"{source}.wav"), start=start, frames=length, dtype="float32")[0].T
            stem = stem * rng.uniform(0.5, 2.0)  # the same per-source gain and channel swap as ours
            stems.append(stem[::-1] if rng.random() < 0.5 else stem)
        stems = np.stack(stems)
        return stems.sum(axis=0), stems

    return rate(one, count)


def train_step_seconds(arch: str, segment: float, sample_rate: int, batch: int) -> float:
    from mss_tools.losses import get_loss
    from mss_tools.models import build_model

    model = build_model(arch, list(SOURCES), 2, sample_rate, preset="small")
    optimizer = torch.optim.Adam(model.parameters())
    loss_fn = get_loss(model.DEFAULT_LOSS)
    x = torch.randn(batch, 2, int(segment * sample_rate))
    y = torch.randn(batch, 4, 2, x.shape[-1])

    def step():
        loss = loss_fn(model(x), y, model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(3):
        step()
    return (time.perf_counter() - start) / 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="musdb_like output: holds stems/ (.stem.mp4) and wav/ (HQ)")
    parser.add_argument("--segment", type=float, default=6.0)
    parser.add_argument("--count", type=int, default=40, help="segments timed per loader")
    parser.add_argument("--musdb-count", type=int, default=4, help="segments timed for the (slow) musdb loader")
    parser.add_argument("--cache", default=None, help="existing 44.1 kHz stem cache of the wav set (else made)")
    parser.add_argument("--arch", default="unet_lite", help="architecture whose training step is timed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.root)
    cache = args.cache
    if cache is None:
        from mss_tools.prep import PrepOptions, prep

        cache = str(Path(tempfile.mkdtemp()) / "cache.h5")
        prep(str(root / "wav"), cache, PrepOptions(jobs=2))

    rows = []
    for workers in (0, 1, 2):
        rows.append((f"mss cache, {workers} workers", bench_mss(cache, args.segment, args.count, workers)))
    ours = rows[0][1]
    sf_rate = bench_soundfile(str(root / "wav"), args.segment, args.count)
    musdb_rate = bench_musdb(str(root / "stems"), args.segment, args.musdb_count)
    rows += [("(a) musdb .stem.mp4 chunks", musdb_rate), ("(b) soundfile wav partial reads", sf_rate)]
    print(f"random {args.segment:g} s 4-stem stereo 44.1 kHz segments per second (1 torch thread)")
    for name, value in rows:
        print(f"  {name:34s} {value:10.1f} /s")
    print(f"ratio mss(0 workers) / (a) musdb     : {ours / musdb_rate:8.1f}x   (goal >= 20)")
    print(f"ratio mss(0 workers) / (b) soundfile : {ours / sf_rate:8.2f}x   (goal >= 1)")
    step = train_step_seconds(args.arch, args.segment, 44100, batch=4)
    print(f"training step of {args.arch} (small preset, batch 4 x {args.segment:g} s, 44.1 kHz): {step:.3f} s "
          f"-> needs {4 / step:.1f} segments/s; the loader gives {max(v for _, v in rows[:3]):.1f}/s")


if __name__ == "__main__":
    main()
