"""Shared fixtures: every data set here is synthesized by the tests themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def tone_stems(rng: np.random.Generator, names, length: int, rate: int) -> dict[str, np.ndarray]:
    """Distinct stereo test signals ``{name: (2, length)}`` (sines plus a little noise)."""
    t = np.arange(length) / rate
    stems = {}
    for i, name in enumerate(names):
        freq = 110.0 * (i + 1) * rng.uniform(0.9, 1.1)
        mono = 0.2 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(length)
        stems[name] = np.stack([mono, np.roll(mono, i + 1) * 0.8]).astype(np.float32)
    return stems


def write_stem_folder(root: Path, tracks: dict[str, dict], rate: int = 8000, subtype: str = "FLOAT",
                      mixture: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Write ``<root>/<split>/<track>/<stem>.wav``; ``tracks``: "split/track" -> {stem: (2, T) array}."""
    written = {}
    for key, stems in tracks.items():
        folder = root / key
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in stems.items():
            sf.write(folder / f"{name}.wav", data.T, rate, subtype=subtype)
        if mixture:
            sf.write(folder / "mixture.wav", np.sum(list(stems.values()), axis=0).T, rate, subtype=subtype)
        written[key] = stems
    return written


@pytest.fixture
def stem_folder(tmp_path):
    """A custom stem folder: stems piano, bass, drums; one train track lacks piano."""
    rng = np.random.default_rng(0)
    rate, length = 8000, 8000 * 2
    tracks = {}
    for split, count in (("train", 4), ("test", 2)):
        for i in range(count):
            names = ["piano", "bass", "drums"] if not (split == "train" and i == 1) else ["bass", "drums"]
            tracks[f"{split}/song{i}"] = tone_stems(rng, names, length + 100 * i, rate)
    root = tmp_path / "stems"
    return root, write_stem_folder(root, tracks, rate), rate


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """A small demo-corpus cache at 8 kHz (10 tracks of 4 s: 4 train, 3 valid, 3 test)."""
    from mss_tools.prep import PrepOptions, prep

    path = tmp_path_factory.mktemp("demo") / "demo.h5"
    prep("demo", path, PrepOptions(sample_rate=8000, demo_tracks=10, demo_duration=4.0))
    return path


@pytest.fixture(scope="session")
def trained_unet(demo_cache, tmp_path_factory):
    """A tiny U-Net trained for a few steps on the demo cache; returns its experiment folder."""
    from mss_tools.training import TrainConfig, train

    folder = tmp_path_factory.mktemp("exp") / "unet"
    config = TrainConfig(arch="unet", preset="small", arch_options={"depth": 3, "channels": 8}, epochs=2,
                         steps_per_epoch=3, batch_size=4, segment=1.0, valid_seconds=2.0, seed=1)
    train(str(demo_cache), folder, config)
    return folder


def run_mss(*args, cwd=None, check=False, env=None):
    """``python -m mss_tools ARGS`` in a subprocess; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run([sys.executable, "-m", "mss_tools", *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(f"mss {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def ffmpeg_available() -> bool:
    from mss_tools.audio import ffmpeg_available as available

    return available()


def assert_same_gradients(ours: torch.nn.Module, reference_parameters) -> None:
    """Each of ``ours``' parameter gradients equals the reference's in the same position, to 1e-4
    relative and 1e-5 of the reference gradient's largest value."""
    for (name, mine), theirs in zip(ours.named_parameters(), reference_parameters, strict=True):
        scale = theirs.grad.abs().max().item()
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-5 * scale + 1e-12,
                                   msg=lambda message, name=name: f"{name}: {message}")
