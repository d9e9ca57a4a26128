import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mss_tools import audio
from mss_tools.cache import StemCache
from mss_tools.cli.main import main
from mss_tools.prep import PrepOptions, prep
from tests.conftest import SHARED, ffmpeg_available, run_mss, tone_stems, write_stem_folder


def invoke(*args):
    return CliRunner().invoke(main, ["prep", *map(str, args)])


def test_folder_of_stems_round_trip_at_native_rate(stem_folder, tmp_path):
    root, written, rate = stem_folder
    out = tmp_path / "c.h5"
    result = invoke(root, out, "--valid-tracks", "song3")
    assert result.exit_code == 0, result.output
    cache = StemCache(out)
    assert cache.sources == ["drums", "bass", "piano"]  # MUSDB names in MUSDB order, then others
    assert cache.sample_rate == rate
    assert cache.tracks("train") == ["song0", "song1", "song2"]
    assert cache.tracks("valid") == ["song3"]
    assert cache.tracks("test") == ["song0", "song1"]
    for key, stems in written.items():
        split, track = key.split("/")
        split = "valid" if track == "song3" and split == "train" else split
        stored = cache.read(split, track)
        for i, name in enumerate(cache.sources):
            expected = stems.get(name, np.zeros_like(next(iter(stems.values()))))
            np.testing.assert_array_equal(stored[i], expected)
        np.testing.assert_array_equal(cache.read_mixture(split, track),
                                      sf.read(root / key / "mixture.wav", dtype="float32")[0].T)
    attrs = cache.track_attrs("train", "song1")
    assert attrs["missing"] == ["piano"]
    assert attrs["length"] == 16100
    assert cache.rms_db("train", "song1", "piano").max() == -120.0
    assert cache.rms_db("train", "song0", "piano").max() > -30


def test_resampled_cache_matches_audio_resample(stem_folder, tmp_path):
    root, written, rate = stem_folder
    out = tmp_path / "c.h5"
    prep(str(root), out, PrepOptions(sample_rate=16000, valid_fraction=0.25, sources=["piano", "bass"]))
    cache = StemCache(out)
    assert cache.sources == ["piano", "bass"] and cache.sample_rate == 16000
    stored = cache.read("test", "song1")
    expected = audio.resample(written["test/song1"]["piano"], rate, 16000)
    assert stored.shape == (2, 2, expected.shape[-1])
    assert expected.shape[-1] == 2 * 16100
    np.testing.assert_array_equal(stored[0], expected)
    assert len(cache.tracks("valid")) == 1 and len(cache.tracks("train")) == 3


def test_rerun_is_skipped_and_force_rebuilds(stem_folder, tmp_path):
    root, _, _ = stem_folder
    out = tmp_path / "c.h5"
    assert invoke(root, out).exit_code == 0
    first = os.stat(out).st_mtime_ns
    result = invoke(root, out)
    assert result.exit_code == 0 and os.stat(out).st_mtime_ns == first
    assert "up to date" in result.output
    assert invoke(root, out, "--force").exit_code == 0
    assert os.stat(out).st_mtime_ns != first


def _assert_bad(root, out, needle):
    result = invoke(root, out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("mss prep: error:")]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    return lines[0]


def test_bad_inputs_exit_2_with_one_line_and_no_cache(stem_folder, tmp_path):
    root, _, rate = stem_folder
    out = tmp_path / "c.h5"
    corrupt = root / "train/song2/bass.wav"
    original = corrupt.read_bytes()
    corrupt.write_bytes(b"RIFF" + os.urandom(200))
    line = _assert_bad(root, out, "song2/bass.wav")
    assert "audio" in line
    corrupt.write_bytes(original[: len(original) // 2])  # truncated: libsndfile reads what is there
    assert "bass.wav 8094 samples" in _assert_bad(root, out, "song2: stems of unequal length")
    corrupt.write_bytes(original)

    sf.write(root / "train/song0/drums.wav", np.zeros((100, 2), np.float32), rate)
    line = _assert_bad(root, out, "song0: stems of unequal length")
    assert "drums.wav 100 samples" in line and "bass.wav 16000 samples" in line

    tracks = {"train/song0": tone_stems(np.random.default_rng(1), ["piano", "bass"], 800, rate)}
    other = tmp_path / "other"
    write_stem_folder(other, tracks, rate)
    write_stem_folder(other, {"train/song1": tracks["train/song0"]}, rate, mixture=False)
    assert "missing mixture" in _assert_bad(other, out, "song1")

    (tmp_path / "empty").mkdir()
    assert "train/" in _assert_bad(tmp_path / "empty", out, "empty")

    (other / "train/song1/mixture.wav").write_bytes((other / "train/song0/mixture.wav").read_bytes())
    (other / "train/song1/notes.txt").write_text("not audio")
    assert "not an audio file" in _assert_bad(other, out, "notes.txt")


def test_skip_bad_records_skipped_tracks(stem_folder, tmp_path):
    root, _, _ = stem_folder
    (root / "train/song2/bass.wav").write_bytes(b"garbage")
    out = tmp_path / "c.h5"
    result = invoke(root, out, "--skip-bad")
    assert result.exit_code == 0, result.output
    cache = StemCache(out)
    assert "song2" not in cache.tracks("train") + cache.tracks("valid")
    assert len(cache.skipped) == 1 and cache.skipped[0]["track"] == "song2"
    assert "song2/bass.wav" in cache.skipped[0]["reason"]
    assert "skipping" in result.output


def test_demo_corpus_is_deterministic(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    options = PrepOptions(sample_rate=8000, demo_tracks=6, demo_duration=2.0)
    prep("demo", a, options)
    prep("demo", b, PrepOptions(sample_rate=8000, demo_tracks=6, demo_duration=2.0, jobs=2))
    ca, cb = StemCache(a), StemCache(b)
    assert ca.sources == ["vocals", "drums", "bass", "other"]
    assert [len(ca.tracks(s)) for s in ("train", "valid", "test")] == [4, 1, 1]
    for split in ca.splits():
        for track in ca.tracks(split):
            np.testing.assert_array_equal(ca.read(split, track), cb.read(split, track))
            np.testing.assert_allclose(ca.read_mixture(split, track), ca.read(split, track).sum(0), atol=1e-6)
    assert ca.fingerprint == cb.fingerprint


def _cache_content(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
        out["attrs"] = {k: v for k, v in f.attrs.items() if k != "created_by"}
    return out


def test_prep_killed_midway_resumes_to_the_same_cache(tmp_path):
    args = ["prep", "--sr", "8000", "--demo-tracks", "12", "--demo-duration", "6", "demo"]
    reference = tmp_path / "ref.h5"
    run_mss(*args, reference, check=True)
    out = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-m", "mss_tools", *args, str(out)], stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed.h5.parts"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(parts.glob("*.h5"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():
        pytest.skip("prep finished before it could be killed")
    done = len(list(parts.glob("*.h5")))
    assert done >= 1
    result = run_mss(*args, out, check=True)
    assert f"resuming: {done}" in result.stderr or "resuming:" in result.stderr
    a, b = _cache_content(reference), _cache_content(out)
    assert a.keys() == b.keys()
    for key in a:
        if key == "attrs":
            assert json.dumps({k: str(v) for k, v in a[key].items()}) == json.dumps({k: str(v) for k, v in b[key].items()})
        else:
            np.testing.assert_array_equal(a[key], b[key])
    assert not parts.exists()


musdb_fixture = SHARED / "fixtures" / "musdb18-7s"


@pytest.mark.skipif(not musdb_fixture.exists(), reason="../shared/fixtures is absent")
@pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed")
def test_musdb_stem_mp4_matches_what_musdb_reads(tmp_path):
    import musdb

    out = tmp_path / "m.h5"
    assert invoke(musdb_fixture, out).exit_code == 0
    cache = StemCache(out)
    db = musdb.DB(root=str(musdb_fixture), subsets="train")
    track = db.tracks[0]
    stored = cache.read("train", track.name)
    for i, name in enumerate(cache.sources):
        np.testing.assert_array_equal(stored[i], track.targets[name].audio.T.astype(np.float32))
    np.testing.assert_array_equal(cache.read_mixture("train", track.name), track.audio.T.astype(np.float32))
    out22 = tmp_path / "m22.h5"
    assert invoke(musdb_fixture, out22, "--sr", "22050").exit_code == 0
    resampled = StemCache(out22).read("train", track.name)
    expected = audio.resample(track.targets["vocals"].audio.T.astype(np.float32), 44100, 22050)
    np.testing.assert_allclose(resampled[0], expected, atol=1e-6)


@pytest.mark.skipif(not musdb_fixture.exists(), reason="../shared/fixtures is absent")
@pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed")
def test_truncated_stem_mp4_is_bad_input(tmp_path):
    root = tmp_path / "musdb"
    (root / "train").mkdir(parents=True)
    data = (musdb_fixture / "train" / "Music Delta - 80s Rock.stem.mp4").read_bytes()
    (root / "train" / "Broken.stem.mp4").write_bytes(data[: len(data) // 3])
    result = invoke(root, tmp_path / "m.h5")
    assert result.exit_code == 2, result.output
    assert "Broken.stem.mp4" in result.output


def test_demo_test_tracks_sets_the_size_of_the_test_split(tmp_path):
    result = CliRunner().invoke(main, ["prep", "--sr", "8000", "--demo-tracks", "12", "--demo-test-tracks", "6",
                                       "--demo-duration", "1", "demo", str(tmp_path / "c.h5")])
    assert result.exit_code == 0, result.output
    cache = StemCache(tmp_path / "c.h5")
    assert [len(cache.tracks(split)) for split in ("train", "valid", "test")] == [4, 2, 6]
    assert CliRunner().invoke(main, ["prep", "--demo-tracks", "12", "--demo-test-tracks", "11", "demo",
                                     str(tmp_path / "d.h5")]).exit_code == 2
