"""Bad input: one line on stderr naming the option or the file and the problem, exit code 2, no output."""

import json
import os
import pickle

import click
import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from mss_tools.cache import StemCache
from mss_tools.cli.main import SUBCOMMANDS, main
from tests.conftest import run_mss, tone_stems, write_stem_folder

MUSDB_STEMS = ["vocals", "drums", "bass", "other"]

# (subcommand, bad option and value, the option name the error must show)
BAD_OPTIONS = [
    ("prep", ["--sr", "-8000"], "--sr"),
    ("prep", ["--sr", "0"], "--sr"),
    ("prep", ["--sr", "1"], "--sr"),
    ("prep", ["--sr", "fast"], "--sr"),
    ("prep", ["-j", "0"], "--jobs"),
    ("prep", ["-j", "-3"], "--jobs"),
    ("prep", ["--valid-fraction", "0"], "--valid-fraction"),
    ("prep", ["--valid-fraction", "1"], "--valid-fraction"),
    ("prep", ["--seed", "-1"], "--seed"),
    ("prep", ["--demo-tracks", "2"], "--demo-tracks"),
    ("prep", ["--demo-duration", "0.5"], "--demo-duration"),
    ("remix", ["--segment", "0"], "--segment"),
    ("remix", ["--examples", "0"], "--examples"),
    ("remix", ["--seed", "-5"], "--seed"),
    ("remix", ["--stage", "4"], "--stage"),
    ("remix", ["--sources", "0"], "--sources"),
    ("remix", ["--aligned-prob", "1.5"], "--aligned-prob"),
    ("remix", ["--silent-keep", "-0.1"], "--silent-keep"),
    ("remix", ["--gain-db", "-1"], "--gain-db"),
    ("remix", ["--gain-prob", "inf"], "--gain-prob"),
    ("remix", ["--swap-prob", "2"], "--swap-prob"),
    ("remix", ["--flip-prob", "-1"], "--flip-prob"),
    ("remix", ["--shift", "-0.5"], "--shift"),
    ("remix", ["--pitch-prob", "1.1"], "--pitch-prob"),
    ("remix", ["--pitch-semitones", "13"], "--pitch-semitones"),
    ("remix", ["--stretch-prob", "nan"], "--stretch-prob"),
    ("remix", ["--stretch-range", "0.6"], "--stretch-range"),
    ("train", ["--segment", "-1"], "--segment"),
    ("train", ["--segment", "0"], "--segment"),
    ("train", ["--batch-size", "0"], "--batch-size"),
    ("train", ["--accum-steps", "0"], "--accum-steps"),
    ("train", ["--epochs", "0"], "--epochs"),
    ("train", ["--steps-per-epoch", "0"], "--steps-per-epoch"),
    ("train", ["--lr", "-1"], "--lr"),
    ("train", ["--lr", "0"], "--lr"),
    ("train", ["--lr", "nan"], "--lr"),
    ("train", ["--weight-decay", "-0.1"], "--weight-decay"),
    ("train", ["--grad-clip", "-1"], "--grad-clip"),
    ("train", ["--warmup-steps", "-1"], "--warmup-steps"),
    ("train", ["--min-lr", "-1"], "--min-lr"),
    ("train", ["--schedule", "cosine", "--lr", "0.001", "--min-lr", "0.01"], "--min-lr"),
    ("train", ["--plateau-patience", "-1"], "--plateau-patience"),
    ("train", ["--patience", "-1"], "--patience"),
    ("train", ["--ema", "1"], "--ema"),
    ("train", ["--ema", "-0.5"], "--ema"),
    ("train", ["--valid-seconds", "0"], "--valid-seconds"),
    ("train", ["--checkpoint-every", "-1"], "--checkpoint-every"),
    ("train", ["--max-bad-steps", "0"], "--max-bad-steps"),
    ("train", ["-j", "-2"], "--jobs"),
    ("train", ["--nproc", "0"], "--nproc"),
    ("train", ["--seed", "-1"], "--seed"),
    ("train", ["--stage", "0"], "--stage"),
    ("train", ["--sources", "-1"], "--sources"),
    ("train", ["--stretch-range", "-0.1"], "--stretch-range"),
    ("separate", ["--segment", "0"], "--segment"),
    ("separate", ["--overlap", "1"], "--overlap"),
    ("separate", ["--overlap", "-0.1"], "--overlap"),
    ("separate", ["--batch-size", "0"], "--batch-size"),
    ("separate", ["--shifts", "-1"], "--shifts"),
    ("separate", ["--seed", "-1"], "--seed"),
    ("score", ["-j", "0"], "--jobs"),
    ("score", ["-j", "-3"], "--jobs"),
    ("compare", ["--excerpt-seconds", "nan"], "--excerpt-seconds"),
    ("compare", ["--excerpts", "0"], "--excerpts"),
    ("compare", ["--bootstrap", "-1"], "--bootstrap"),
    ("compare", ["--seed", "-1"], "--seed"),
]


def _command_line(name: str, tmp_path) -> tuple[list[str], object]:
    """Arguments that would run ``name`` (inputs need not exist: options are checked first) and its output."""
    if name == "prep":
        return ["demo", str(tmp_path / "out.h5")], tmp_path / "out.h5"
    if name == "remix":
        return [str(tmp_path / "cache.h5"), str(tmp_path / "plan.h5")], tmp_path / "plan.h5"
    if name == "train":
        return [str(tmp_path / "cache.h5"), "-o", str(tmp_path / "exp")], tmp_path / "exp"
    if name == "separate":
        return ["mixture", str(tmp_path / "song.wav"), "-o", str(tmp_path / "preds")], tmp_path / "preds"
    if name == "score":
        return [str(tmp_path / "preds"), "-o", str(tmp_path / "scores.json")], tmp_path / "scores.json"
    return [str(tmp_path / "a.json"), "-o", str(tmp_path / "report")], tmp_path / "report"


def _one_error_line(stderr: str, name: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"mss {name}: error: "), stderr
    assert "Traceback" not in stderr and "Usage:" not in stderr
    return lines[0]


@pytest.mark.parametrize("name, bad, option", BAD_OPTIONS, ids=[f"{n} {' '.join(b)}" for n, b, _ in BAD_OPTIONS])
def test_bad_numeric_option_is_one_line_and_exit_2(name, bad, option, tmp_path):
    args, output = _command_line(name, tmp_path)
    result = CliRunner().invoke(main, [name, *bad, *args])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.stderr, name)
    assert option in line and bad[-1] in line
    assert result.stdout == ""
    assert not output.exists()


def test_every_numeric_option_has_a_range_that_holds_its_default():
    for name in SUBCOMMANDS:
        command = main.get_command(None, name)
        context = click.Context(command)
        for param in command.params:
            if not isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)):
                continue
            assert isinstance(param.type, click.types._NumberRangeBase), f"mss {name} {param.opts}: no range"
            default = param.get_default(context)
            if isinstance(default, (int, float)):
                param.type_cast_value(context, default)  # raises if the default is out of range


def test_bad_option_in_a_subprocess(tmp_path):
    result = run_mss("prep", "--sr", "-8000", "demo", tmp_path / "out.h5")
    assert result.returncode == 2
    assert "--sr" in _one_error_line(result.stderr, "prep")
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("config, key", [({"lr": -1}, "lr"), ({"batch-size": 0}, "batch-size"),
                                         ({"ema": 1.0}, "ema"), ({"epochs": "ten"}, "epochs"),
                                         ({"aligned-prob": 2}, "aligned-prob"), ({"jobs": -1}, "jobs")])
def test_config_file_values_are_range_checked(config, key, tmp_path):
    path = tmp_path / "conf.json"
    path.write_text(json.dumps({"arch": "unet", **config}))
    result = CliRunner().invoke(main, ["train", "--config", str(path), str(tmp_path / "c.h5"),
                                       "-o", str(tmp_path / "exp")])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.stderr, "train")
    assert "conf.json" in line and repr(key) in line
    assert not (tmp_path / "exp").exists()


def test_click_checks_default_map_values_as_well(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path / "c.h5")], default_map={"train": {"lr": -1.0}})
    assert result.exit_code == 2
    assert "'--lr'" in _one_error_line(result.stderr, "train")


def test_valid_config_still_supplies_defaults(tmp_path):
    path = tmp_path / "conf.json"
    path.write_text(json.dumps({"arch": "unet", "preset": "small", "arch-opt": {"depth": 3}, "epochs": 2}))
    result = CliRunner().invoke(main, ["train", "--config", str(path), "--print-config", "x.h5"])
    assert result.exit_code == 0, result.output
    assert '"depth": 3' in result.stdout


# ---------------------------------------------------------------------------------------- stem folders


def _prep(*args):
    return CliRunner().invoke(main, ["prep", *map(str, args)])


@pytest.mark.parametrize("kind", ["dangling", "looping"])
def test_broken_stem_symlink_is_bad_input(kind, stem_folder, tmp_path):
    root, _, _ = stem_folder
    link = root / "train/song0/piano.wav"
    link.unlink()
    os.symlink("nowhere.wav" if kind == "dangling" else "piano.wav", link)
    out = tmp_path / "c.h5"
    result = _prep("-q", root, out)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.stderr, "prep")
    assert "song0/piano.wav" in line
    assert ("broken symbolic link" if kind == "dangling" else "loops") in line
    assert not out.exists()

    skipped = _prep(root, out, "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    cache = StemCache(out)
    assert [s["track"] for s in cache.skipped] == ["song0"]
    assert "song0/piano.wav" in cache.skipped[0]["reason"]
    assert "song0" not in cache.tracks("train") + cache.tracks("valid")


def test_absent_stem_is_still_missing_not_an_error(stem_folder, tmp_path):
    root, _, _ = stem_folder
    out = tmp_path / "c.h5"
    assert _prep(root, out, "--valid-tracks", "song3").exit_code == 0
    assert StemCache(out).track_attrs("train", "song1")["missing"] == ["piano"]


def _musdb_hq_shaped(root, names=("song0", "song1", "song2", "song3")):
    rng = np.random.default_rng(3)
    tracks = {f"train/{name}": tone_stems(rng, MUSDB_STEMS, 4000, 8000) for name in names}
    tracks["test/song9"] = tone_stems(rng, MUSDB_STEMS, 4000, 8000)
    write_stem_folder(root, tracks, 8000)
    return root


def test_layout_option_is_obeyed(tmp_path):
    root = _musdb_hq_shaped(tmp_path / "hq")
    folder, detected = tmp_path / "folder.h5", tmp_path / "auto.h5"
    assert _prep("--layout", "folder", root, folder).exit_code == 0
    assert StemCache(folder).attrs["layout"] == "folder"
    assert _prep(root, detected).exit_code == 0
    assert StemCache(detected).attrs["layout"] == "musdb-hq"


def test_musdb_hq_layout_on_other_stems_is_bad_input(stem_folder, tmp_path):
    root, _, _ = stem_folder
    result = _prep("--layout", "musdb-hq", root, tmp_path / "c.h5")
    assert result.exit_code == 2
    line = _one_error_line(result.stderr, "prep")
    assert "not laid out as MUSDB18-HQ" in line and "--layout folder" in line
    assert not (tmp_path / "c.h5").exists()


def test_musdb_hq_set_without_musdb_validation_tracks_holds_out_a_fraction(tmp_path):
    root = _musdb_hq_shaped(tmp_path / "hq", [f"song{i}" for i in range(10)])
    out = tmp_path / "c.h5"
    result = _prep(root, out)
    assert result.exit_code == 0, result.output
    assert "none of MUSDB's 14 validation tracks" in result.stderr
    cache = StemCache(out)
    assert len(cache.tracks("valid")) == 1 and len(cache.tracks("train")) == 9


def test_musdb_validation_tracks_are_still_held_out_when_present(tmp_path):
    root = _musdb_hq_shaped(tmp_path / "hq", ["song0", "song1", "Leaf - Summerghost"])
    out = tmp_path / "c.h5"
    result = _prep(root, out)
    assert result.exit_code == 0, result.output
    assert "none of MUSDB's" not in result.stderr
    assert StemCache(out).tracks("valid") == ["Leaf - Summerghost"]


def test_a_valid_folder_is_used_as_it_is(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "stems"
    write_stem_folder(root, {k: tone_stems(rng, ["piano", "bass"], 2000, 8000)
                             for k in ("train/a", "train/b", "valid/c", "test/d")})
    out = tmp_path / "c.h5"
    result = _prep(root, out)
    assert result.exit_code == 0, result.output
    assert StemCache(out).tracks("valid") == ["c"]


# ---------------------------------------------------------------------------------------- audio files


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile without MP3")
def test_corrupt_mp3_says_it_cannot_be_decoded_without_decoder_noise(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "stems"
    write_stem_folder(root, {k: tone_stems(rng, ["piano", "bass"], 2000, 8000) for k in ("train/a", "test/b")},
                      mixture=False)
    (root / "train/a/bass.wav").unlink()
    (root / "train/a/bass.mp3").write_bytes(b"ID3" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    result = run_mss("prep", "-q", root, tmp_path / "c.h5")
    assert result.returncode == 2
    line = _one_error_line(result.stderr, "prep")
    assert "train/a/bass.mp3" in line and "cannot be decoded" in line
    assert "does not exist" not in line
    verbose = run_mss("prep", "-v", root, tmp_path / "c.h5")
    assert "decoder messages" in verbose.stderr  # libmpg123's messages are in the debug log
    assert not (tmp_path / "c.h5").exists()


def test_duplicate_track_names_name_the_files(tmp_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    audio = np.zeros((800, 2), np.float32)
    sf.write(songs / "song.wav", audio, 8000)
    sf.write(songs / "song.flac", audio, 8000)
    result = CliRunner().invoke(main, ["separate", "mixture", str(songs), "-o", str(tmp_path / "preds")])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.stderr, "separate")
    assert "'song'" in line and "song.wav" in line and "song.flac" in line
    assert not (tmp_path / "preds").exists()


# ---------------------------------------------------------------------------------------- checkpoints


def test_plain_pickle_checkpoint_is_one_line_without_torch_warnings(tmp_path):
    checkpoint = tmp_path / "model.pkl"
    with open(checkpoint, "wb") as handle:
        pickle.dump({"weights": [1.0, 2.0]}, handle, protocol=4)
    sf.write(tmp_path / "song.wav", np.zeros((800, 2), np.float32), 8000)
    result = run_mss("separate", checkpoint, tmp_path / "song.wav", "-o", tmp_path / "preds")
    assert result.returncode == 2
    line = _one_error_line(result.stderr, "separate")
    assert "model.pkl: not a readable checkpoint" in line and line.endswith(")")
    assert "Warning" not in result.stderr
    assert not (tmp_path / "preds").exists()


def test_truncated_checkpoint_message_is_whole_sentences(tmp_path):
    from mss_tools.checkpoint import read_checkpoint
    from mss_tools.errors import BadInput

    path = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(10000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(BadInput) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert message.endswith("failed finding central directory.)"), message
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(BadInput, match=r"empty.pt: not a readable checkpoint \(empty file\)$"):
        read_checkpoint(empty)


def test_first_sentence_keeps_whole_sentences():
    from mss_tools.errors import first_sentence

    long_sentence = "a" * 500 + " failed."
    assert first_sentence(f"\n  {long_sentence} Second sentence.\nmore") == long_sentence
    assert first_sentence("") == ""


# ---------------------------------------------------------------------------------------- training


def test_training_without_validation_warns(tmp_path):
    rng = np.random.default_rng(6)
    root = tmp_path / "stems"
    write_stem_folder(root, {k: tone_stems(rng, ["piano", "bass"], 16000, 8000) for k in ("train/a", "test/b")})
    cache = tmp_path / "c.h5"
    assert _prep(root, cache).exit_code == 0
    assert StemCache(cache).splits() == ["train", "test"]
    result = CliRunner().invoke(main, ["train", "--arch", "unet", "--preset", "small", "--arch-opt", "depth=3",
                                       "--arch-opt", "channels=8", "--epochs", "1", "--steps-per-epoch", "1",
                                       "--batch-size", "1", "--segment", "1", str(cache), "-o", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line and "no valid tracks" in line]
    assert len(warnings) == 1, result.stderr
    assert "best.pt is chosen by training loss" in warnings[0] and "--valid-fraction" in warnings[0]
    assert (tmp_path / "exp" / "best.pt").exists()
