"""Nothing lost, nothing overwritten, nothing crashes: one writer per output, no foreign file
replaced, leftovers of killed runs removed, filesystem faults as one line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mss_tools import cache as cache_module
from mss_tools.cli.main import main
from mss_tools.outputs import OutputLock
from tests.conftest import run_mss


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def all_checksums_verify(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        for split in f:
            for track in f[split]:
                for name, dataset in f[f"{split}/{track}"].items():
                    if cache_module.checksum(dataset[()]) != int(dataset.attrs["crc32"]):
                        return False
    return True


# -- one writer per output ---------------------------------------------------------------------

def test_a_second_prep_of_the_same_output_is_refused_while_the_first_runs(stem_folder, tmp_path):
    root, _, _ = stem_folder
    output = tmp_path / "cache.h5"
    with OutputLock(output, "prep"):
        result = run_mss("prep", root, output)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert str(output) in line and "another process is writing it" in line and f"pid {os.getpid()}" in line
    assert not output.exists() and not output.with_name("cache.h5.parts").exists()
    run_mss("prep", root, output, check=True)  # the lock went with its holder
    assert all_checksums_verify(output)


def test_concurrent_preps_never_leave_a_corrupt_cache(tmp_path):
    output = tmp_path / "race.h5"
    args = [sys.executable, "-m", "mss_tools", "prep", "--sr", "8000", "--demo-tracks", "6", "--demo-duration", "2",
            "demo", str(output)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    second = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    codes = sorted([first.wait(), second.wait()])
    first.stderr.close()
    second.stderr.close()
    assert codes in ([0, 0], [0, 2])  # the loser is refused, or finds the winner's cache up to date
    assert all_checksums_verify(output)
    reference = tmp_path / "serial.h5"
    run_mss(*args[3:-1], reference, check=True)
    with h5py.File(output, "r") as a, h5py.File(reference, "r") as b:
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
        for track in b["test"]:
            assert np.array_equal(a[f"test/{track}/vocals"][()], b[f"test/{track}/vocals"][()])


@pytest.fixture(scope="module")
def scored(demo_cache, trained_unet, tmp_path_factory):
    """Predictions of the trained U-Net on the test split and their score file."""
    folder = tmp_path_factory.mktemp("scored")
    assert invoke("separate", trained_unet / "best.pt", demo_cache, "--split", "test",
                  "-o", folder / "preds").exit_code == 0
    assert invoke("score", folder / "preds", "-o", folder / "unet.json").exit_code == 0
    return folder / "preds", folder / "unet.json"


@pytest.mark.parametrize("tool", ["remix", "train", "separate", "score", "compare"])
def test_every_writer_takes_the_output_lock(tool, demo_cache, trained_unet, scored, tmp_path):
    output = {"remix": tmp_path / "plan.h5", "train": tmp_path / "exp", "separate": tmp_path / "preds",
              "score": tmp_path / "scores.json", "compare": tmp_path / "report"}[tool]
    args = {"remix": ["remix", demo_cache, output, "--examples", "2", "--segment", "1"],
            "train": ["train", "--arch", "unet", "--arch-opt", "depth=2", "--epochs", "1", "--steps-per-epoch", "1",
                      "--batch-size", "2", "--segment", "1", demo_cache, "-o", output],
            "separate": ["separate", trained_unet / "best.pt", demo_cache, "--split", "test", "-o", output],
            "score": ["score", scored[0], "-o", output],
            "compare": ["compare", scored[1], "-o", output, "--no-listening"]}[tool]
    with OutputLock(output, tool):
        result = invoke(*args)
    assert result.exit_code == 2
    assert "another process is writing it" in one_error_line(result.output)
    assert not output.exists()


# -- no user file replaced -----------------------------------------------------------------------

def test_prep_refuses_to_replace_a_file_that_is_not_its_cache(stem_folder, tmp_path):
    root, _, _ = stem_folder
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    result = invoke("prep", root, notes)
    assert result.exit_code == 2 and "notes.txt" in one_error_line(result.output)
    assert notes.read_text() == "my notes\n"
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.arange(3)
    assert invoke("prep", root, other).exit_code == 2
    with h5py.File(other, "r") as f:
        assert list(f["data"][()]) == [0, 1, 2]
    assert invoke("prep", "--force", root, notes).exit_code == 0
    assert cache_module.StemCache(notes).sources == ["drums", "bass", "piano"]


def test_prep_replaces_its_own_cache_of_the_same_source_but_not_of_another(stem_folder, tmp_path):
    root, _, _ = stem_folder
    output = tmp_path / "cache.h5"
    assert invoke("prep", root, output).exit_code == 0
    assert invoke("prep", "--sr", "4000", root, output).exit_code == 0  # same source, new settings: rebuilt
    assert cache_module.StemCache(output).sample_rate == 4000
    demo = invoke("prep", "--demo-tracks", "5", "--demo-duration", "1", "demo", output)
    assert demo.exit_code == 2 and "not a stem cache made by mss prep from demo" in one_error_line(demo.output)
    assert cache_module.StemCache(output).sample_rate == 4000


def test_remix_refuses_to_replace_a_foreign_file(demo_cache, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    result = invoke("remix", demo_cache, notes, "--examples", "2", "--segment", "1")
    assert result.exit_code == 2 and "notes.txt" in one_error_line(result.output)
    assert notes.read_text() == "keep me"
    plan = tmp_path / "plan.h5"
    assert invoke("remix", demo_cache, plan, "--examples", "2", "--segment", "1").exit_code == 0
    assert invoke("remix", demo_cache, plan, "--examples", "3", "--segment", "1").exit_code == 0  # its own plan
    render = invoke("remix", demo_cache, plan, "--examples", "2", "--segment", "1", "--render", notes)
    assert render.exit_code == 2 and notes.read_text() == "keep me"


def test_train_separate_and_compare_refuse_a_folder_of_other_files(demo_cache, trained_unet, scored, tmp_path):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "config.yaml").write_text("mine")
    train = invoke("train", "--arch", "unet", "--epochs", "1", "--steps-per-epoch", "1", demo_cache, "-o", folder)
    assert train.exit_code == 2 and "not an mss experiment" in one_error_line(train.output)
    separate = invoke("separate", trained_unet / "best.pt", demo_cache, "--split", "test", "-o", folder)
    assert separate.exit_code == 2 and "no predictions manifest" in one_error_line(separate.output)
    compare = invoke("compare", scored[1], "-o", folder, "--no-listening")
    assert compare.exit_code == 2 and "not an mss report" in one_error_line(compare.output)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]
    assert invoke("compare", scored[1], "-o", folder, "--no-listening", "--force").exit_code == 0
    assert (folder / "config.yaml").read_text() == "mine" and (folder / "RESULTS.md").exists()


def test_score_refuses_to_replace_a_file_that_is_not_its_score_file(scored, tmp_path):
    predictions, _ = scored
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    result = invoke("score", predictions, "-o", notes)
    assert result.exit_code == 2 and "not a score file of" in one_error_line(result.output)
    assert notes.read_text() == '{"mine": true}\n'
    own = tmp_path / "own.json"
    assert invoke("score", predictions, "-o", own).exit_code == 0
    assert invoke("score", predictions, "-o", own).exit_code == 0  # its own: rescored (here: reused)
    assert invoke("score", predictions, "-o", notes, "--force").exit_code == 0
    assert json.loads(notes.read_text())["format"] == "mss-scores"


# -- leftovers -------------------------------------------------------------------------------------

def test_separate_removes_what_a_killed_run_left(demo_cache, trained_unet, tmp_path):
    output = tmp_path / "preds"
    track = cache_module.StemCache(demo_cache).tracks("test")[0]
    leftover = output / track / ".vocals.wav.4242.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"\0" * 1000)
    assert invoke("separate", "--force", trained_unet / "best.pt", demo_cache, "--split", "test",
                  "-o", output).exit_code == 0
    assert not leftover.exists() and not list(output.rglob("*.tmp"))
    assert (output / track / "vocals.wav").exists()


def test_prep_removes_stale_temporaries_of_its_output(stem_folder, tmp_path):
    root, _, _ = stem_folder
    output = tmp_path / "cache.h5"
    stale = output.with_name(".cache.h5.999999.tmp")
    stale.write_bytes(b"half a cache")
    other = tmp_path / ".another.h5.999999.tmp"  # another output's: not ours to remove
    other.write_bytes(b"x")
    assert invoke("prep", root, output).exit_code == 0
    assert not stale.exists() and other.exists()


def test_a_part_damaged_after_a_kill_is_redone_not_trusted(stem_folder, tmp_path):
    root, _, _ = stem_folder
    output = tmp_path / "cache.h5"
    assert invoke("prep", root, output).exit_code == 0
    reference = {t: cache_module.StemCache(output).read("train", t) for t in ("song0", "song2")}
    output.unlink()
    # a resumable state: every part done, one of them damaged on disk (zeros where samples were)
    parts = output.with_name("cache.h5.parts")
    from mss_tools.prep import PrepOptions, prep

    real_assemble = cache_module.assemble_cache
    try:
        cache_module.assemble_cache = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            prep(str(root), output, PrepOptions())
    finally:
        cache_module.assemble_cache = real_assemble
    victim = next(p for p in sorted(parts.glob("train-*.h5")))
    with h5py.File(victim, "r+") as f:
        group = f[f"train/{next(iter(f['train']))}"]
        group["drums"][...] = 0.0
    result = run_mss("prep", root, output, check=True)
    assert "redoing a damaged part" in result.stderr
    assert all_checksums_verify(output)
    for track, stems in reference.items():
        assert np.array_equal(cache_module.StemCache(output).read("train", track), stems)


def test_a_train_that_fails_before_its_first_checkpoint_leaves_nothing(demo_cache, tmp_path, monkeypatch):
    import mss_tools.training as training

    def exploding_loss(name):
        def loss(estimate, reference, model):
            return (estimate * float("nan")).sum()
        return loss

    monkeypatch.setattr(training, "get_loss", exploding_loss)
    output = tmp_path / "exp"
    result = invoke("train", "--arch", "unet", "--arch-opt", "depth=2", "--epochs", "1", "--steps-per-epoch", "3",
                    "--batch-size", "2", "--segment", "1", "--max-bad-steps", "1", demo_cache, "-o", output)
    assert result.exit_code == 1 and "diverged" in one_error_line(result.output)
    assert not output.exists()


# -- filesystem faults -----------------------------------------------------------------------------

class _FullDisk:
    """Injects ENOSPC into every HDF5 file write after ``budget`` bytes."""

    def __init__(self, monkeypatch, budget: int):
        original = cache_module._ErrorRecordingFile.__init__
        outer = self

        self.budget = budget

        class RawThatFills:
            def __init__(self, raw):
                self._raw, self._written = raw, 0

            def write(self, data):
                size = memoryview(data).nbytes
                if self._written + size > outer.budget:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self._written += size
                return self._raw.write(data)

            def __getattr__(self, name):
                return getattr(self._raw, name)

        def init(recorder, raw):
            original(recorder, RawThatFills(raw))

        monkeypatch.setattr(cache_module._ErrorRecordingFile, "__init__", init)


def test_a_full_disk_during_prep_is_one_line_and_the_rerun_resumes(stem_folder, tmp_path, monkeypatch):
    root, _, _ = stem_folder
    output = tmp_path / "cache.h5"
    reference = tmp_path / "reference.h5"
    assert invoke("prep", root, reference).exit_code == 0
    full = _FullDisk(monkeypatch, budget=300_000)  # room for a few parts, never the whole cache
    result = invoke("prep", root, output)
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert "No space left on device" in line and str(tmp_path) in line
    assert not output.exists() and not list(tmp_path.rglob("*.tmp"))
    full.budget = 10**12  # space freed
    assert invoke("prep", root, output).exit_code == 0
    with h5py.File(output, "r") as a, h5py.File(reference, "r") as b:
        for split in b:
            for track in b[split]:
                for name in b[f"{split}/{track}"]:
                    assert np.array_equal(a[f"{split}/{track}/{name}"][()], b[f"{split}/{track}/{name}"][()])


def test_read_only_filesystems_are_one_line_for_every_tool(demo_cache, trained_unet, scored, tmp_path, monkeypatch):
    """os.replace is where every atomic write lands; a read-only filesystem refuses it."""
    import mss_tools.outputs as outputs

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(outputs.os, "replace", read_only)
    cases = {
        "prep": ["prep", "--sr", "8000", "--demo-tracks", "5", "--demo-duration", "1", "demo", tmp_path / "c.h5"],
        "remix": ["remix", demo_cache, tmp_path / "p.h5", "--examples", "2", "--segment", "1"],
        "train": ["train", "--arch", "unet", "--arch-opt", "depth=2", "--epochs", "1", "--steps-per-epoch", "1",
                  "--batch-size", "2", "--segment", "1", demo_cache, "-o", tmp_path / "exp"],
        "separate": ["separate", trained_unet / "best.pt", demo_cache, "--split", "test", "-o", tmp_path / "preds"],
        "score": ["score", scored[0], "-o", tmp_path / "scores.json"],
        "compare": ["compare", scored[1], "-o", tmp_path / "report", "--no-listening"],
    }
    for tool, args in cases.items():
        result = invoke(*args)
        assert result.exit_code == 1, (tool, result.output)
        assert "Read-only file system" in one_error_line(result.output), tool
        assert not list(tmp_path.rglob("*.tmp")), tool
    assert not any((tmp_path / name).exists() for name in ("c.h5", "p.h5", "scores.json", "report/RESULTS.md"))


def _can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path("/tmp") / f"mss-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], capture_output=True)
    probe.rmdir()
    return ok


@pytest.fixture
def small_tmpfs(tmp_path):
    if not _can_mount():
        pytest.skip("mounting a tmpfs needs root in a machine that allows it")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_real_full_disk_is_one_line_not_a_crash(small_tmpfs):
    output = small_tmpfs / "demo.h5"
    result = run_mss("prep", "--sr", "16000", "--demo-tracks", "5", "--demo-duration", "6", "demo", output)
    assert result.returncode == 1, result.stderr
    assert "No space left" in one_error_line(result.stderr)
    assert not output.exists() and not list(small_tmpfs.rglob("*.tmp"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    read_only = run_mss("prep", "--sr", "8000", "--demo-tracks", "5", "--demo-duration", "1", "demo",
                        small_tmpfs / "other.h5")
    assert read_only.returncode == 1 and "Read-only file system" in one_error_line(read_only.stderr)
