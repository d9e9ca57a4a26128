"""The JSON file formats (mss_tools.formats), silent references and strict JSON in mss score, and
mss compare refusing score files it cannot trust; on synthesized data.

The fixture builds a stem cache (8 kHz, 3 s, stems vocals/drums/bass) and a predictions folder
(estimate = reference + 0.01 noise) with four tracks: ``full``; ``quiet``, whose drums reference
is all zeros; ``faint``, whose bass reference is noise at -100 dBFS RMS; and ``mute``, whose
vocals estimate is all zeros (so every frame is undefined: its per-track sdr is null).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mss_tools import formats
from mss_tools.cache import assemble_cache, write_track_part
from mss_tools.cli.main import main
from mss_tools.errors import BadInput, MssError
from mss_tools.metrics import SILENT_REFERENCE_DBFS, is_silent, rms_dbfs, usdr
from tests.conftest import run_mss

RATE = 8000
SECONDS = 3
STEMS = ["vocals", "drums", "bass"]
TRACKS = ["faint", "full", "mute", "quiet"]
SILENT = ["faint/bass", "quiet/drums"]


def strict_json(text: str):
    """``json.loads`` that fails on NaN/Infinity, which are not JSON."""
    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON text")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """``{"root", "cache", "preds", "scores", "result", "refs", "estimates"}`` after
    ``mss score preds -o scores/model.json``."""
    root = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(4)
    t = np.arange(RATE * SECONDS) / RATE
    parts, refs, estimates = [], {}, {}
    for index, track in enumerate(TRACKS):
        stems = {"vocals": 0.2 * np.sin(2 * np.pi * (200 + 30 * index) * t) * np.array([[1.0], [0.8]])
                 + 0.02 * rng.standard_normal((2, t.size)),
                 "drums": 0.1 * rng.standard_normal((2, t.size)),
                 "bass": 0.3 * np.sin(2 * np.pi * 55 * t) * np.array([[1.0], [0.7]])
                 + 0.01 * rng.standard_normal((2, t.size))}
        if track == "quiet":
            stems["drums"] = np.zeros((2, t.size))
        if track == "faint":
            stems["bass"] = 1e-5 * rng.standard_normal((2, t.size))
        refs[track] = {k: v.astype(np.float32) for k, v in stems.items()}
        estimates[track] = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32)
                            for k, v in refs[track].items()}
        if track == "mute":
            estimates[track]["vocals"] = np.zeros_like(refs[track]["vocals"])
        part = root / "parts" / f"{track}.h5"
        write_track_part(part, "test", track, refs[track], sum(refs[track].values()), RATE,
                         {"name": track, "length": t.size})
        parts.append(part)
    cache = root / "cache.h5"
    assemble_cache(cache, parts, {"format": "mss-stems", "format_version": 1, "sample_rate": RATE, "sources": STEMS,
                                  "channels": 2, "rms_hop": 0.5, "fingerprint": "test"})
    preds = root / "preds"
    for track in TRACKS:
        (preds / track).mkdir(parents=True)
        for stem, data in estimates[track].items():
            sf.write(preds / track / f"{stem}.wav", data.T, RATE, subtype="FLOAT")
    formats.write_predictions(preds / "manifest.json", {
        "arch": "handmade", "sources": STEMS, "sample_rate": RATE,
        "tracks": [{"track": track, "cache": str(cache), "split": "test"} for track in TRACKS]})
    scores = root / "scores" / "model.json"
    result = CliRunner().invoke(main, ["score", str(preds), "-o", str(scores)])
    return {"root": root, "cache": cache, "preds": preds, "scores": scores, "result": result, "refs": refs,
            "estimates": estimates}


def test_silence_threshold():
    assert SILENT_REFERENCE_DBFS == -80.0
    assert rms_dbfs(np.zeros((2, 100))) == -math.inf and is_silent(np.zeros((2, 100)))
    assert rms_dbfs(np.full((2, 100), 0.1)) == pytest.approx(-20.0)
    assert is_silent(np.full((2, 100), 10 ** (-81 / 20))) and not is_silent(np.full((2, 100), 10 ** (-79 / 20)))


def test_silent_references_have_no_scores_and_stay_out_of_the_aggregate(scored):
    result = scored["result"]
    assert result.exit_code == 0, result.output
    assert "silent reference" in result.stderr and "faint/bass, quiet/drums" in result.stderr
    assert "| model |" in result.stderr  # the summary mss score prints is labelled by the score file
    text = scored["scores"].read_text()
    document = strict_json(text)
    assert document["silent_references"] == SILENT and document["silent_reference_dbfs"] == -80.0
    assert document["tracks"]["quiet"]["drums"] == {"silent_reference": True}
    assert document["tracks"]["faint"]["bass"] == {"silent_reference": True}
    for track in TRACKS:
        for stem in STEMS:
            if f"{track}/{stem}" in SILENT:
                continue
            values = document["tracks"][track][stem]
            assert values["usdr"] == pytest.approx(usdr(scored["refs"][track][stem], scored["estimates"][track][stem]))
            assert "silent_reference" not in values
    # the other stems of a track with a silent reference are evaluated without it: their frames are defined
    from mss_tools.metrics.bsseval import framewise_sdr

    kept = ["bass", "vocals"]
    expected = framewise_sdr(np.stack([scored["refs"]["quiet"][s] for s in kept]),
                             np.stack([scored["estimates"]["quiet"][s] for s in kept]), RATE)
    for i, stem in enumerate(kept):
        assert document["tracks"]["quiet"][stem]["frames"]["sdr"] == pytest.approx(expected[i].tolist())
        assert document["tracks"]["quiet"][stem]["sdr"] == pytest.approx(float(np.median(expected[i])))
        assert np.isfinite(document["tracks"]["quiet"][stem]["sdr"])
    # the aggregate leaves the silent pairs out, and says how many tracks are in
    drums = [document["tracks"][t]["drums"]["usdr"] for t in TRACKS if t != "quiet"]
    assert document["aggregate"]["drums"]["usdr"] == {"median": pytest.approx(float(np.median(drums))),
                                                      "mean": pytest.approx(float(np.mean(drums))), "tracks": 3}
    assert document["aggregate"]["bass"]["si_sdr"]["tracks"] == 3
    assert document["aggregate"]["vocals"]["usdr"]["tracks"] == 4


def test_score_file_is_strict_json_with_null_for_undefined_values(scored):
    document = strict_json(scored["scores"].read_text())
    mute = document["tracks"]["mute"]
    for stem in STEMS:  # a silent estimate makes every joint frame undefined
        assert mute[stem]["sdr"] is None and set(mute[stem]["frames"]["sdr"]) == {None}
        assert np.isfinite(mute[stem]["usdr"])
    assert document["aggregate"]["drums"]["sdr"]["tracks"] == 2  # full, faint: quiet is silent, mute undefined
    assert not (scored["scores"].parent / "model.json.parts").exists()
    written = formats.dumps_scores({"format": "mss-scores", "format_version": 1,
                                    "tracks": {"t": {"v": {"usdr": float("nan"), "sdr": math.inf}}},
                                    "aggregate": {"v": {"usdr": {"median": float("nan"), "mean": -math.inf,
                                                                 "tracks": 0}}}})
    assert strict_json(written)["aggregate"]["v"]["usdr"] == {"median": None, "mean": None, "tracks": 0}
    assert strict_json(written)["tracks"]["t"]["v"] == {"usdr": None, "sdr": None}
    stdout = CliRunner().invoke(main, ["score", str(scored["preds"])])
    assert stdout.exit_code == 0 and strict_json(stdout.stdout)["silent_references"] == SILENT


def test_museval_joint_runs_leave_the_silent_stem_out(scored):
    from mss_tools.metrics.bsseval import evaluate_track
    from mss_tools.scoring import ReferenceSource, score_track

    result = score_track(scored["preds"] / "quiet", ReferenceSource(str(scored["cache"])), "test", True, "mss")
    assert result["drums"] == {"silent_reference": True}
    expected = evaluate_track({s: scored["refs"]["quiet"][s] for s in ("bass", "vocals")},
                              {s: scored["estimates"]["quiet"][s] for s in ("bass", "vocals")}, RATE)
    for stem in ("bass", "vocals"):
        for metric in ("sdr", "isr", "sir", "sar"):
            assert result[stem]["frames"][metric] == pytest.approx(expected[stem][metric])
            assert np.isfinite(result[stem][metric])


def test_compare_states_silent_references_and_leaves_them_out(scored, tmp_path):
    document = strict_json(scored["scores"].read_text())
    for stems in document["tracks"].values():  # a second model, 1 dB worse on every scored value
        for values in stems.values():
            for metric in ("usdr", "si_sdr", "sdr"):
                if values.get(metric) is not None:
                    values[metric] -= 1.0
    other = tmp_path / "worse.json"
    formats.write_scores(other, document)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["compare", str(scored["scores"]), str(other), "-o", str(out),
                                       "--no-listening", "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    note = "Silent references (RMS below -80 dBFS) are left out"
    for text in (result.stdout, (out / "RESULTS.md").read_text(), (out / "index.html").read_text()):
        assert note in text and "model 2: faint/bass, quiet/drums" in text and "worse 2:" in text
    rows = {(r["source"], r["model"], r["metric"]): r for r in _csv(out / "results.csv")}
    assert rows["drums", "model", "usdr"]["tracks"] == "3" and rows["bass", "model", "usdr"]["tracks"] == "3"
    assert rows["vocals", "model", "usdr"]["tracks"] == "4"
    pairs = {(r["source"], r["metric"]): r for r in _csv(out / "pairs.csv")}
    assert pairs["drums", "usdr"]["n"] == "3" and float(pairs["drums", "usdr"]["mean_diff"]) == pytest.approx(1.0)


def _csv(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def minimal_scores() -> dict:
    return {"format": "mss-scores", "format_version": 1, "metrics": ["usdr", "sdr"],
            "tracks": {f"song{i}": {"vocals": {"usdr": 5.0 + i, "sdr": 4.0 + i, "frames": {"sdr": [None, 4.0 + i]}},
                                    "drums": {"usdr": 3.0 - i, "sdr": 2.0 - i}} for i in range(5)},
            "aggregate": {"vocals": {"usdr": {"median": 99.0, "mean": 99.0, "tracks": 5}}}}


def _without_tracks(document):
    del document["tracks"]


def _set(path, value):
    def change(document):
        *keys, last = path
        target = document
        for key in keys:
            target = target[key]
        target[last] = value

    return change


BAD_SCORES = {
    "version 99": (_set(["format_version"], 99), "format_version 99 is newer than this mss reads (1)"),
    "no version": (lambda d: d.pop("format_version"), "no format_version"),
    "version as text": (_set(["format_version"], "1"), 'unknown format_version "1"'),
    "metric as text": (_set(["tracks", "song2", "drums", "usdr"], "1.5"),
                       "tracks['song2']['drums']['usdr'] is \"1.5\", not a number"),
    "frame as text": (_set(["tracks", "song0", "vocals", "frames", "sdr", 1], "x"),
                      "tracks['song0']['vocals']['frames']['sdr'][1] is \"x\", not a number"),
    "tracks deleted": (_without_tracks, "no 'tracks'"),
    "no tracks": (_set(["tracks"], {}), "'tracks' is empty"),
    "stems not metrics": (_set(["tracks", "song1"], [1.0, 2.0]), "track 'song1' does not map stems to metrics"),
    "silent with values": (_set(["tracks", "song1", "drums", "silent_reference"], True),
                           "has a silent reference but also metric values"),
    "bad aggregate": (_set(["aggregate", "vocals", "usdr", "tracks"], "five"),
                      "aggregate['vocals']['usdr']['tracks'] is \"five\", not an integer"),
}


@pytest.mark.parametrize("case", list(BAD_SCORES))
def test_compare_refuses_untrustworthy_score_files_with_one_line(case, tmp_path):
    change, problem = BAD_SCORES[case]
    document = minimal_scores()
    change(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    result = CliRunner().invoke(main, ["compare", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"mss compare: error: {path}: ") and problem in result.stderr


def test_version_99_is_refused_in_a_subprocess(tmp_path):
    path = tmp_path / "future.json"
    path.write_text(json.dumps({**minimal_scores(), "format_version": 99}))
    process = run_mss("compare", path)
    assert process.returncode == 2 and process.stdout == ""
    assert process.stderr.count("\n") == 1 and f"{path}: format_version 99 is newer" in process.stderr


def test_table_comes_from_the_tracks_not_the_stored_aggregate(tmp_path):
    path = tmp_path / "lying.json"
    document = minimal_scores()
    path.write_text(json.dumps(document))
    result = CliRunner().invoke(main, ["compare", str(path), "-o", str(tmp_path / "report"), "--no-listening"])
    assert result.exit_code == 0, result.output
    rows = {(r["source"], r["metric"]): r for r in _csv(tmp_path / "report" / "results.csv")}
    for stem in ("vocals", "drums"):
        for metric in ("usdr", "sdr"):
            values = [document["tracks"][t][stem][metric] for t in document["tracks"]]
            assert float(rows[stem, metric]["median"]) == pytest.approx(np.median(values))
            assert float(rows[stem, metric]["mean"]) == pytest.approx(np.mean(values))
            assert rows[stem, metric]["tracks"] == "5"
    assert "99.00" not in result.stdout and f"{np.median([5.0 + i for i in range(5)]):.2f}" in result.stdout


def test_compare_reads_score_files_without_torch(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(minimal_scores()))
    code = ("import sys; from click.testing import CliRunner; from mss_tools.cli.main import main; "
            f"r = CliRunner().invoke(main, ['compare', {str(path)!r}]); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_version_1_file_with_bare_nan_still_loads(tmp_path):
    """mss score used to write bare NaN where a value was undefined; such files are version 1 and still read."""
    document = minimal_scores()
    document["tracks"]["song4"]["vocals"]["sdr"] = "NAN_HERE"
    path = tmp_path / "old.json"
    path.write_text(json.dumps(document).replace('"NAN_HERE"', "NaN"))
    result = CliRunner().invoke(main, ["compare", str(path), "-o", str(tmp_path / "report"), "--no-listening"])
    assert result.exit_code == 0, result.output
    rows = {(r["source"], r["metric"]): r for r in _csv(tmp_path / "report" / "results.csv")}
    assert rows["vocals", "sdr"]["tracks"] == "4"
    assert float(rows["vocals", "sdr"]["median"]) == pytest.approx(np.median([4.0, 5.0, 6.0, 7.0]))


def test_predictions_manifest_reader_and_writer(tmp_path):
    path = tmp_path / "manifest.json"
    formats.write_predictions(path, {"arch": "x", "segment": 2.0, "timing": {"wall_seconds": float("nan")},
                                     "tracks": [{"track": "a", "files": {"vocals": "a/vocals.wav"}}]})
    text = path.read_text()
    assert list(strict_json(text))[:2] == ["format", "format_version"]
    manifest = formats.read_predictions(path)
    assert manifest["format_version"] == formats.PREDICTIONS_VERSION and manifest["timing"] == {"wall_seconds": None}
    with pytest.raises(MssError, match="segment is null, not a number"):
        formats.write_predictions(tmp_path / "never.json", {"segment": float("nan"), "tracks": []})
    assert not (tmp_path / "never.json").exists()
    assert manifest["tracks"] == [{"track": "a", "files": {"vocals": "a/vocals.wav"}}]
    bad = {"version 99": ({"format_version": 99}, "format_version 99 is newer"),
           "no version": ({"format_version": ...}, "no format_version"),
           "null version": ({"format_version": None}, "unknown format_version null"),
           "files not paths": ({"tracks": [{"track": "a", "files": {"vocals": 3}}]},
                               "tracks[0]['files']['vocals'] is 3, not a string"),
           "no track name": ({"tracks": [{"split": "test"}]}, "tracks[0] has no 'track'"),
           "twice": ({"tracks": [{"track": "a"}, {"track": "a"}]}, "track 'a' is listed twice"),
           "other format": ({"format": "mss-scores"}, "not an mss predictions manifest")}
    for case, (change, problem) in bad.items():
        changed = {**strict_json(text), **change}
        path.write_text(json.dumps({key: value for key, value in changed.items() if value is not ...}))
        with pytest.raises(BadInput) as error:
            formats.read_predictions(path)
        assert str(error.value).startswith(f"{path}: ") and problem in str(error.value), case
        assert "\n" not in str(error.value)


def test_score_refuses_a_newer_manifest(scored, tmp_path):
    preds = tmp_path / "preds"
    shutil.copytree(scored["preds"], preds)
    manifest = strict_json((preds / "manifest.json").read_text())
    (preds / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    result = CliRunner().invoke(main, ["score", str(preds)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"{preds / 'manifest.json'}: format_version 99 is newer" in result.stderr


def test_compare_leaves_out_a_manifest_it_cannot_read(scored, tmp_path):
    preds = tmp_path / "preds"
    shutil.copytree(scored["preds"], preds)
    manifest = strict_json((preds / "manifest.json").read_text())
    (preds / "manifest.json").write_text(json.dumps({**manifest, "sample_rate": "8 kHz"}))
    document = strict_json(scored["scores"].read_text())
    path = tmp_path / "moved.json"
    formats.write_scores(path, {**document, "predictions": str(preds)})
    result = CliRunner().invoke(main, ["compare", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{preds / 'manifest.json'}: sample_rate is \"8 kHz\", not an integer" in result.stderr
    assert "| moved |" in result.stdout


def test_separate_writes_a_valid_manifest_and_redoes_work_over_a_bad_one(scored, tmp_path):
    out = tmp_path / "mixture"
    args = ["separate", "mixture", str(scored["cache"]), "--split", "test", "-o", str(out)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    manifest = formats.read_predictions(out / "manifest.json")
    assert sorted(e["track"] for e in manifest["tracks"]) == TRACKS and manifest["arch"] == "mixture"
    strict_json((out / "manifest.json").read_text())
    written = (out / "full" / "vocals.wav").stat().st_mtime_ns
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "format_version 99 is newer" in again.stderr and "separating every track again" in again.stderr
    assert (out / "full" / "vocals.wav").stat().st_mtime_ns != written
    assert formats.read_predictions(out / "manifest.json")["format_version"] == 1


# -- the HDF5 formats: stem cache and mix plan root attributes --------------------------------------


def _copy_with(src, dst, edit):
    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


@pytest.mark.parametrize("edit, problem", [
    (lambda f: f.attrs.__setitem__("format_version", 99), "newer than this mss reads"),
    (lambda f: f.attrs.__delitem__("format_version"), "no format_version"),
    (lambda f: f.attrs.__delitem__("sources"), "has no 'sources'"),
    (lambda f: f.attrs.__setitem__("sample_rate", "fast"), "sample_rate is \"fast\", not an integer"),
    (lambda f: f.attrs.__setitem__("channels", 7), "impossible"),
    (lambda f: f.attrs.__setitem__("format", "something-else"), "not an mss stem cache"),
])
def test_a_stem_cache_that_does_not_validate_is_refused_in_one_line(demo_cache, tmp_path, edit, problem):
    from mss_tools.cli.main import main

    bad = _copy_with(demo_cache, tmp_path / "bad.h5", edit)
    result = CliRunner().invoke(main, ["remix", str(bad), str(tmp_path / "plan.h5"), "--examples", "2",
                                       "--segment", "1"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and problem in lines[0], result.output
    assert not (tmp_path / "plan.h5").exists()


@pytest.mark.parametrize("edit, problem", [
    (lambda f: f.attrs.__setitem__("format_version", 2), "newer than this mss reads"),
    (lambda f: f.attrs.__delitem__("segment_frames"), "has no 'segment_frames'"),
    (lambda f: (f.__delitem__("gain"), f.create_dataset("gain", data=np.zeros((3, 1), np.float32))), "fields"),
    (lambda f: f["track"].__setitem__((0, 0), 99), "outside its"),
    (lambda f: f.__delitem__("flip"), "lacks its 'flip' field"),
])
def test_a_mix_plan_that_does_not_validate_is_refused_in_one_line(demo_cache, tmp_path, edit, problem):
    from mss_tools.cli.main import main

    runner = CliRunner()
    plan = tmp_path / "plan.h5"
    assert runner.invoke(main, ["remix", str(demo_cache), str(plan), "--examples", "3", "--segment", "1"]).exit_code == 0
    bad = _copy_with(plan, tmp_path / "bad.h5", edit)
    result = runner.invoke(main, ["train", "--arch", "unet", "--plan", str(bad), str(demo_cache),
                                  "-o", str(tmp_path / "exp")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and problem in lines[0], result.output
    assert not (tmp_path / "exp").exists()
