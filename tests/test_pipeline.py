"""train -> separate -> score -> compare on a tiny demo cache, through the library, click and subprocesses."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from mss_tools.cache import StemCache
from mss_tools.checkpoint import CHECKPOINT_FORMAT, load_model
from mss_tools.cli.main import main
from tests.conftest import run_mss

CHECKPOINT_KEYS = {"format", "format_version", "arch", "config", "sources", "sample_rate", "audio_channels",
                   "state_dict", "meta"}


def test_training_writes_a_self_describing_experiment(trained_unet, demo_cache):
    for name in ("best.pt", "last.pt", "config.json", "metrics.jsonl", "provenance.json"):
        assert (trained_unet / name).exists(), name
    best = torch.load(trained_unet / "best.pt", weights_only=True)
    assert CHECKPOINT_KEYS <= set(best) and best["format"] == CHECKPOINT_FORMAT
    assert best["arch"] == "unet" and best["sources"] == ["vocals", "drums", "bass", "other"]
    assert best["sample_rate"] == 8000 and best["config"]["depth"] == 3
    last = torch.load(trained_unet / "last.pt", weights_only=True)
    assert last["training"]["step"] == 6 and last["training"]["data_position"] == 6
    lines = [json.loads(line) for line in (trained_unet / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(set(line["valid"]) == set(best["sources"]) for line in lines)
    assert all(np.isfinite(line["valid_usdr"]) for line in lines)
    provenance = json.loads((trained_unet / "provenance.json").read_text())
    assert provenance["num_parameters"] == load_model(trained_unet / "best.pt").num_parameters


def test_rerun_of_finished_training_does_nothing(trained_unet, demo_cache):
    before = (trained_unet / "last.pt").stat().st_mtime_ns
    result = CliRunner().invoke(main, ["train", "--arch", "unet", "--preset", "small", "--arch-opt", "depth=3",
                                       "--arch-opt", "channels=8", "--epochs", "2", "--steps-per-epoch", "3",
                                       "--batch-size", "4", "--segment", "1", "--valid-seconds", "2", "--seed", "1",
                                       "-o", str(trained_unet), str(demo_cache)])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output
    assert (trained_unet / "last.pt").stat().st_mtime_ns == before
    changed = CliRunner().invoke(main, ["train", "--arch", "unet", "--preset", "small", "--epochs", "2",
                                        "-o", str(trained_unet), str(demo_cache)])
    assert changed.exit_code == 2 and "different config" in changed.output


def test_resumed_training_equals_uninterrupted(demo_cache, tmp_path):
    from mss_tools.training import TrainConfig, train

    config = dict(arch="unet", preset="small", arch_options={"depth": 2, "channels": 4}, steps_per_epoch=2,
                  batch_size=2, segment=0.5, valid_seconds=1.0, seed=3)
    train(str(demo_cache), tmp_path / "full", TrainConfig(epochs=2, **config))
    train(str(demo_cache), tmp_path / "split", TrainConfig(epochs=1, **config))
    train(str(demo_cache), tmp_path / "split", TrainConfig(epochs=2, **config))
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_separate_score_compare(trained_unet, demo_cache, tmp_path):
    preds = tmp_path / "preds"
    result = CliRunner().invoke(main, ["separate", str(trained_unet / "best.pt"), str(demo_cache), "--split", "test",
                                       "-o", str(preds)])
    assert result.exit_code == 0, result.output
    cache = StemCache(demo_cache)
    manifest = json.loads((preds / "manifest.json").read_text())
    assert manifest["sample_rate"] == 8000 and manifest["arch"] == "unet"
    assert sorted(e["track"] for e in manifest["tracks"]) == cache.tracks("test")
    for track in cache.tracks("test"):
        for stem in cache.sources:
            data, rate = sf.read(preds / track / f"{stem}.wav", dtype="float32")
            assert rate == 8000 and data.shape == (cache.length("test", track), 2)

    scores = tmp_path / "scores" / "unet.json"
    result = run_mss("score", preds, "-o", scores)
    assert result.returncode == 0, result.stderr
    document = json.loads(scores.read_text())
    assert set(document["tracks"]) == set(cache.tracks("test"))
    for track, per_stem in document["tracks"].items():
        refs = cache.read("test", track)
        for i, stem in enumerate(cache.sources):
            estimate = sf.read(preds / track / f"{stem}.wav", dtype="float32")[0].T
            err = refs[i] - estimate
            assert per_stem[stem]["usdr"] == pytest.approx(
                10 * np.log10(((refs[i].astype(float) ** 2).sum() + 1e-7) / ((err.astype(float) ** 2).sum() + 1e-7)),
                abs=1e-4)
            assert len(per_stem[stem]["frames"]["sdr"]) == cache.length("test", track) // 8000
    for stem in cache.sources:
        values = [document["tracks"][t][stem]["sdr"] for t in cache.tracks("test")]
        assert document["aggregate"][stem]["sdr"]["median"] == pytest.approx(float(np.nanmedian(values)))

    # the oracle (references copied as estimates) and the mixture as a baseline
    oracle = tmp_path / "oracle"
    shutil.copytree(preds, oracle)
    for track in cache.tracks("test"):
        for i, stem in enumerate(cache.sources):
            sf.write(oracle / track / f"{stem}.wav", cache.read("test", track)[i].T, 8000, subtype="FLOAT")
    oracle_scores = tmp_path / "scores" / "oracle.json"
    assert run_mss("score", oracle, "-o", oracle_scores).returncode == 0
    assert json.loads(oracle_scores.read_text())["aggregate"]["vocals"]["usdr"]["median"] > 60

    result = CliRunner().invoke(main, ["compare", str(scores), str(oracle_scores), "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "### vocals" in result.output and "| oracle |" in result.output and "| unet |" in result.output
    csv_text = (tmp_path / "report" / "results.csv").read_text().splitlines()
    assert csv_text[0] == "source,model,metric,median,mean,tracks"
    assert len(csv_text) == 1 + 4 * 2 * 3  # sources x models x (sdr, usdr, si_sdr)

    rerun = run_mss("score", preds, "-o", scores)
    assert rerun.returncode == 0 and json.loads(scores.read_text())["tracks"] == document["tracks"]


def test_separate_audio_files_at_another_rate_and_mono(trained_unet, tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "song.wav", 0.1 * rng.standard_normal((22050 + 3, 1)), 22050)
    sf.write(tmp_path / "bad.wav", np.zeros((10, 2)), 8000)
    (tmp_path / "bad.wav").write_bytes(b"junk")
    result = CliRunner().invoke(main, ["separate", str(trained_unet / "best.pt"), str(tmp_path / "song.wav"),
                                       str(tmp_path / "bad.wav"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "bad.wav" in result.output
    data, rate = sf.read(tmp_path / "out" / "song" / "vocals.wav")
    assert rate == 22050 and data.shape == (22050 + 3,)


def test_score_errors_are_one_line(trained_unet, demo_cache, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["score", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such predictions folder" in result.output
    folder = tmp_path / "p" / "demo-000"
    folder.mkdir(parents=True)
    sf.write(folder / "vocals.wav", np.zeros((100, 2)), 8000)
    result = runner.invoke(main, ["score", str(tmp_path / "p"), "--ref", str(demo_cache)])
    assert result.exit_code == 2
    assert "demo-000" in result.output and "Traceback" not in result.output


def test_mixture_baseline_is_a_checkpoint_name(demo_cache, tmp_path):
    preds = tmp_path / "mixture"
    result = CliRunner().invoke(main, ["separate", "mixture", str(demo_cache), "--split", "test", "-o", str(preds)])
    assert result.exit_code == 0, result.output
    cache = StemCache(demo_cache)
    track = cache.tracks("test")[0]
    for stem in cache.sources:
        data, rate = sf.read(preds / track / f"{stem}.wav", dtype="float32")
        np.testing.assert_allclose(data.T, cache.read_mixture("test", track), atol=1e-6)
    assert json.loads((preds / "manifest.json").read_text())["arch"] == "mixture"


def test_silence_baseline_scores_0_db_usdr_and_undefined_frame_sdr(demo_cache, tmp_path):
    """Every estimate is zeros: usdr and si_sdr are 0 dB, and BSSEval's frame sdr is NaN (null) in every
    frame, as museval leaves out a window where an estimate is silent."""
    preds = tmp_path / "silence"
    result = CliRunner().invoke(main, ["separate", "silence", str(demo_cache), "--split", "test", "-o", str(preds)])
    assert result.exit_code == 0, result.output
    cache = StemCache(demo_cache)
    for track in cache.tracks("test"):
        for stem in cache.sources:
            data, rate = sf.read(preds / track / f"{stem}.wav", dtype="float32")
            assert rate == 8000 and data.shape == (cache.length("test", track), 2) and not data.any()
    manifest = json.loads((preds / "manifest.json").read_text())
    assert manifest["arch"] == "silence" and manifest["checkpoint"] == "silence"
    scores = tmp_path / "silence.json"
    assert run_mss("score", preds, "-o", scores).returncode == 0
    document = json.loads(scores.read_text())
    for track in cache.tracks("test"):
        for stem in cache.sources:
            values = document["tracks"][track][stem]
            assert values["usdr"] == 0.0 and values["si_sdr"] == 0.0 and values["sdr"] is None
            assert values["frames"]["sdr"] == [None] * (cache.length("test", track) // 8000)


def test_silence_baseline_with_museval_is_scored_and_flagged_not_refused(demo_cache, tmp_path):
    """museval refuses a track with an all-zero estimate; mss scores the other stems jointly and gives the
    silent one null BSSEval frames, a silent_estimate flag and the collapse check's verdict."""
    preds = tmp_path / "silence"
    assert CliRunner().invoke(main, ["separate", "silence", str(demo_cache), "--split", "test",
                                     "-o", str(preds)]).exit_code == 0
    scores = tmp_path / "silence.json"
    result = CliRunner().invoke(main, ["score", str(preds), "--museval", "-o", str(scores)])
    assert result.exit_code == 0, result.output
    document = json.loads(scores.read_text())
    cache = StemCache(demo_cache)
    for track in cache.tracks("test"):
        for stem in cache.sources:
            values = document["tracks"][track][stem]
            assert values["silent_estimate"] is True and values["usdr"] == 0.0
            assert all(values[m] is None for m in ("sdr", "isr", "sir", "sar"))
            assert values["frames"]["sar"] == [None] * (cache.length("test", track) // 8000)
    assert sorted(document["collapsed"]) == sorted(cache.sources)


def test_museval_accompaniment_convention_and_joint_runs(demo_cache, tmp_path):
    from mss_tools.scoring import evaluation_runs

    assert evaluation_runs(["vocals", "drums", "bass", "other", "accompaniment"]) == [
        ["vocals", "drums", "bass", "other"], ["vocals", "accompaniment"]]
    assert evaluation_runs(["vocals", "accompaniment"]) == [["vocals", "accompaniment"]]
    assert evaluation_runs(["drums", "bass"]) == [["drums", "bass"]]

    cache = StemCache(demo_cache)
    track = cache.tracks("test")[0]
    refs = cache.read("test", track, 0, 4 * 8000)
    rng = np.random.default_rng(0)
    folder = tmp_path / "preds" / track
    folder.mkdir(parents=True)
    estimates = {}
    for i, stem in enumerate(cache.sources):
        estimates[stem] = refs[i] + 0.05 * rng.standard_normal(refs[i].shape).astype(np.float32)
    estimates["accompaniment"] = refs[1:].sum(0) + 0.05 * rng.standard_normal(refs[0].shape).astype(np.float32)
    for stem, data in estimates.items():
        sf.write(folder / f"{stem}.wav", data.T, 8000, subtype="FLOAT")
    ref_cache = tmp_path / "refs"
    from mss_tools.cache import assemble_cache, write_track_part
    write_track_part(ref_cache / "part.h5", "test", track, dict(zip(cache.sources, refs)), refs.sum(0), 8000,
                     {"name": track, "missing": []})
    assemble_cache(tmp_path / "refs.h5", [ref_cache / "part.h5"],
                   {"format": "mss-stems", "format_version": 1, "sample_rate": 8000, "sources": cache.sources,
                    "channels": 2, "rms_hop": 0.5})
    from mss_tools.scoring import score

    museval_way = score(tmp_path / "preds", None, str(tmp_path / "refs.h5"), with_museval=True)
    separate_way = score(tmp_path / "preds", None, str(tmp_path / "refs.h5"), with_museval=True,
                         convention="separate")
    import museval.metrics
    pair = np.stack([refs[0].T, (refs[1:].sum(0)).T]).astype(np.float64)
    est_pair = np.stack([estimates["vocals"].T, estimates["accompaniment"].T]).astype(np.float64)
    _, _, sir, _, _ = museval.metrics.bss_eval(pair, est_pair, compute_permutation=False, window=8000, hop=8000,
                                               framewise_filters=False, bsseval_sources_version=False)
    got = museval_way["tracks"][track]["vocals"]["frames"]["sir"]
    np.testing.assert_allclose(got, sir[0], atol=1e-3)
    assert separate_way["tracks"][track]["vocals"]["frames"]["sir"] != got
    assert museval_way["accompaniment_convention"] == "museval"
    assert separate_way["tracks"][track]["accompaniment"] == museval_way["tracks"][track]["accompaniment"]


def test_spectral_condition_flags_band_limited_and_mono_references():
    import scipy.signal

    from mss_tools.scoring import CONDITION_LIMIT, spectral_condition

    noise = np.random.default_rng(0).standard_normal((2, 80000))
    assert spectral_condition(noise) < 10
    assert spectral_condition(np.stack([noise[0], noise[0]])) == float("inf")
    b, a = scipy.signal.butter(8, 0.3)
    assert spectral_condition(scipy.signal.lfilter(b, a, noise)) > CONDITION_LIMIT


def test_score_flags_ill_conditioned_references_from_the_gram_factorisation(tmp_path):
    """A mono (channel-duplicated) reference makes its run's Gram matrix singular: every stem of
    that track is flagged; broadband stereo references are not."""
    from mss_tools.cache import assemble_cache, write_track_part
    from mss_tools.scoring import score

    rng = np.random.default_rng(5)
    sr, n = 4000, 3 * 4000
    parts = []
    for track in ("broadband", "mono_bass"):
        refs = rng.standard_normal((2, 2, n)).astype(np.float32) * 0.1
        if track == "mono_bass":
            refs[1, 1] = refs[1, 0]
        write_track_part(tmp_path / f"{track}.h5", "test", track, {"vocals": refs[0], "bass": refs[1]},
                         refs.sum(0), sr, {"name": track, "missing": []})
        parts.append(tmp_path / f"{track}.h5")
        folder = tmp_path / "preds" / track
        folder.mkdir(parents=True)
        for stem, ref in zip(("vocals", "bass"), refs):
            sf.write(folder / f"{stem}.wav", (ref + 0.02 * rng.standard_normal(ref.shape)).T, sr, subtype="FLOAT")
    assemble_cache(tmp_path / "refs.h5", parts, {"format": "mss-stems", "format_version": 1, "sample_rate": sr,
                                                 "sources": ["vocals", "bass"], "channels": 2, "rms_hop": 0.5})
    result = score(tmp_path / "preds", None, str(tmp_path / "refs.h5"), with_museval=True)
    assert result["ill_conditioned"] == ["mono_bass/bass", "mono_bass/vocals"]
    assert not any("ill_conditioned" in values for values in result["tracks"]["broadband"].values())
    assert all(np.isfinite(result["tracks"]["broadband"][stem]["sir"]) for stem in ("vocals", "bass"))
    assert result["aggregate"]["bass"]["sir"]["tracks"] == 1  # the flagged track is left out of isr/sir/sar
    assert result["aggregate"]["bass"]["sir"]["median"] == result["tracks"]["broadband"]["bass"]["sir"]
    assert result["aggregate"]["bass"]["sdr"]["tracks"] == 2


def test_activation_checkpointing_is_a_training_option_that_resumes_either_way(demo_cache, tmp_path, monkeypatch):
    import torch.utils.checkpoint

    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    base = ["train", "--arch", "bsrnn", "--preset", "small", "--arch-opt", "feature_dim=8", "--arch-opt",
            "hidden_dim=8", "--arch-opt", "num_blocks=2", "--steps-per-epoch", "2", "--batch-size", "2",
            "--segment", "0.5", "--valid-seconds", "1", "-o", str(tmp_path / "run"), str(demo_cache)]
    first = CliRunner().invoke(main, base + ["--epochs", "1", "--activation-checkpointing"])
    assert first.exit_code == 0, first.output
    assert calls  # training really ran the blocks under checkpointing
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["activation_checkpointing"] is True
    calls.clear()
    second = CliRunner().invoke(main, base + ["--epochs", "2"])
    assert second.exit_code == 0, second.output
    assert not calls
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["training"]["epoch"] == 2


def test_two_stems_are_scored_against_the_target_and_the_rest_with_sir_sar(demo_cache, tmp_path):
    """A single-target model's predictions (drums, no_drums) are scored jointly against drums and the sum of
    the other sources; the demo corpus' recording noise floor keeps the references well-conditioned, so
    isr/sir/sar are reported (with museval's values, from museval itself where installed)."""
    cache = StemCache(demo_cache)
    track = cache.tracks("test")[0]
    refs = dict(zip(cache.sources, cache.read("test", track)))
    rest = refs["vocals"] + refs["bass"] + refs["other"]
    rng = np.random.default_rng(1)
    folder = tmp_path / "preds" / track
    folder.mkdir(parents=True)
    estimates = {"drums": refs["drums"] + 0.3 * rest + 0.02 * rng.standard_normal(rest.shape).astype(np.float32)}
    estimates["no_drums"] = cache.read_mixture("test", track) - estimates["drums"]
    for stem, data in estimates.items():
        sf.write(folder / f"{stem}.wav", data.T, 8000, subtype="FLOAT")
    scores = tmp_path / "scores.json"
    result = CliRunner().invoke(main, ["score", str(tmp_path / "preds"), "--ref", str(demo_cache),
                                       "--museval", "-o", str(scores)])
    assert result.exit_code == 0, result.output
    values = json.loads(scores.read_text())["tracks"][track]
    assert set(values) == {"drums", "no_drums"}
    for stem in ("drums", "no_drums"):
        assert not values[stem].get("ill_conditioned") and np.isfinite(values[stem]["sir"])
    from mss_tools.metrics import usdr
    assert values["no_drums"]["usdr"] == pytest.approx(usdr(rest, estimates["no_drums"]), abs=1e-6)
    museval = pytest.importorskip("museval.metrics")
    pair = np.stack([refs["drums"].T, rest.T]).astype(np.float64)
    est_pair = np.stack([estimates["drums"].T, estimates["no_drums"].T]).astype(np.float64)
    sdr, _, sir, sar, _ = museval.bss_eval(pair, est_pair, compute_permutation=False, window=8000, hop=8000,
                                           framewise_filters=False, bsseval_sources_version=False)
    np.testing.assert_allclose(values["drums"]["frames"]["sir"], sir[0], atol=1e-2)
    np.testing.assert_allclose(values["drums"]["frames"]["sar"], sar[0], atol=1e-2)
