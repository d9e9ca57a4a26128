"""BSSEval v4 (mss_tools.metrics.bsseval) against museval itself.

museval's arrays are ``(sources, time, channels)``; ours are ``(sources, channels, time)``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import signal

museval = pytest.importorskip("museval")

from mss_tools.metrics import CONDITION_LIMIT, bsseval  # noqa: E402
from mss_tools.metrics.bsseval import (  # noqa: E402
    METRICS,
    BssEvalInputError,
    bss_eval_v4,
    evaluate_track,
    frame_bounds,
    framewise_sdr,
    gram_condition,
    ill_conditioned,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "musdb18-7s"
FIXTURE_TRACK = "Music Delta - 80s Rock"

SDR_TOL = 1e-6  # dB, per frame
FILTER_TOL = 1e-3  # dB, per frame, isr/sir/sar on well-conditioned references


def broadband_sources(rng, n_src: int, n_samples: int, sr: int) -> np.ndarray:
    """Stereo ``(sources, 2, time)``: coloured noise + a harmonic tone, panned, with an
    independent noise floor per channel (keeps the Gram matrix well conditioned)."""
    t = np.arange(n_samples) / sr
    out = np.empty((n_src, 2, n_samples))
    for j in range(n_src):
        b, a = signal.butter(2, rng.uniform(0.05, 0.4), btype="low" if j % 2 else "high")
        mono = signal.lfilter(b, a, rng.standard_normal(n_samples))
        f0 = rng.uniform(80, 400)
        mono += sum(0.5 / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) for k in range(1, 6))
        mono *= 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t)
        pan = rng.uniform(0.2, 0.8)
        out[j, 0] = np.sqrt(1 - pan) * mono
        out[j, 1] = np.sqrt(pan) * np.roll(mono, int(rng.integers(0, 8)))
        out[j] += 0.05 * rng.standard_normal((2, n_samples))
    return out


def noisy_estimates(rng, refs: np.ndarray, noise: float = 0.3, leak: float = 0.2) -> np.ndarray:
    """Estimates = scaled reference + filtered leakage of the others + white noise."""
    n_src = refs.shape[0]
    ests = np.empty_like(refs)
    for j in range(n_src):
        others = sum(refs[i] for i in range(n_src) if i != j)
        leakage = signal.lfilter(rng.normal(0, 1, 6) * np.exp(-np.arange(6)), [1.0], others, axis=-1)
        ests[j] = rng.uniform(0.8, 1.1) * refs[j] + leak * leakage + noise * rng.standard_normal(refs[j].shape)
    return ests


def museval_v4(refs: np.ndarray, ests: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """museval's default v4 evaluation (``evaluate``: 1 s windows and hops)."""
    sdr, isr, sir, sar = museval.evaluate(np.swapaxes(refs, 1, 2), np.swapaxes(ests, 1, 2),
                                          win=sr, hop=sr, mode="v4")
    return {"sdr": sdr, "isr": isr, "sir": sir, "sar": sar}


def assert_matches(ours: dict, theirs: dict, filter_tol: float = FILTER_TOL) -> dict[str, float]:
    """Same NaN frames, sdr within SDR_TOL and isr/sir/sar within ``filter_tol``; returns the
    largest differences."""
    worst = {}
    for name in METRICS:
        a, b = ours[name], theirs[name]
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name}: NaN frames differ")
        finite = ~np.isnan(a)
        worst[name] = float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))
        assert worst[name] < (SDR_TOL if name == "sdr" else filter_tol), (name, worst[name])
    return worst


@pytest.fixture(scope="module")
def three_sources():
    """3 stereo sources, 8 s at 8 kHz, their estimates and museval's scores."""
    rng = np.random.default_rng(1)
    sr = 8000
    refs = broadband_sources(rng, 3, 8 * sr, sr)
    ests = noisy_estimates(rng, refs)
    return sr, refs, ests, museval_v4(refs, ests, sr)


def test_three_sources_match_museval(three_sources):
    sr, refs, ests, theirs = three_sources
    ours = bss_eval_v4(refs, ests, sr)
    assert set(ours) == set(METRICS)
    assert all(v.dtype == np.float64 and v.shape == (3, 8) for v in ours.values())
    assert_matches(ours, theirs)


def test_framewise_sdr_matches_museval(three_sources):
    sr, refs, ests, theirs = three_sources
    assert np.max(np.abs(framewise_sdr(refs, ests, sr) - theirs["sdr"])) < SDR_TOL


def test_float32_input_and_torch_tensors(three_sources):
    sr, refs, ests, _ = three_sources
    ours = bss_eval_v4(torch.from_numpy(refs), torch.from_numpy(ests), sr)
    reference = bss_eval_v4(refs, ests, sr)
    for name in METRICS:
        np.testing.assert_array_equal(ours[name], reference[name])
    single = bss_eval_v4(refs.astype(np.float32), ests.astype(np.float32), sr)
    assert np.max(np.abs(single["sdr"] - reference["sdr"])) < 1e-3


def test_silent_windows_are_nan_like_museval():
    rng = np.random.default_rng(2)
    sr = 8000
    refs = broadband_sources(rng, 2, 5 * sr, sr)
    ests = noisy_estimates(rng, refs)
    refs[1, :, 2 * sr:3 * sr] = 0.0  # a silent reference window
    ests[0, :, 4 * sr:5 * sr] = 0.0  # a silent estimate window
    refs[0, 0, sr:2 * sr] = 0.0  # one silent channel only: not a silent window
    theirs = museval_v4(refs, ests, sr)
    ours = bss_eval_v4(refs, ests, sr)
    assert_matches(ours, theirs)
    for name in METRICS:
        assert np.isnan(ours[name][:, [2, 4]]).all() and not np.isnan(ours[name][:, [0, 1, 3]]).any()
    np.testing.assert_array_equal(np.isnan(framewise_sdr(refs, ests, sr)), np.isnan(theirs["sdr"]))


def test_two_sources_partial_last_window():
    rng = np.random.default_rng(3)
    sr = 16000
    refs = broadband_sources(rng, 2, int(6.5 * sr), sr)  # the trailing half window is dropped
    ests = noisy_estimates(rng, refs, noise=0.1, leak=0.5)
    ours = bss_eval_v4(refs, ests, sr)
    assert ours["sdr"].shape == (2, 6)
    assert_matches(ours, museval_v4(refs, ests, sr))


def test_overlapping_windows_and_whole_track():
    rng = np.random.default_rng(4)
    sr = 4000
    refs = broadband_sources(rng, 2, 3 * sr + 123, sr)
    ests = noisy_estimates(rng, refs)
    for window, hop in ((1.0, 0.5), (np.inf, np.inf)):
        win = refs.shape[-1] if np.isinf(window) else int(window * sr)
        step = refs.shape[-1] if np.isinf(hop) else int(hop * sr)
        sdr, isr, sir, sar, _ = museval.metrics.bss_eval(
            np.swapaxes(refs, 1, 2), np.swapaxes(ests, 1, 2), window=win, hop=step,
            compute_permutation=False, filters_len=512, framewise_filters=False,
            bsseval_sources_version=False)
        assert_matches(bss_eval_v4(refs, ests, sr, window=window, hop=hop),
                       {"sdr": sdr, "isr": isr, "sir": sir, "sar": sar})


@pytest.mark.parametrize("n_samples, filter_length, corr_fft", [(1000, 16, 64), (1003, 16, 128), (300, 1, 64),
                                                               (700, 16, 4096)])
def test_blockwise_correlations_do_not_change_the_scores(monkeypatch, n_samples, filter_length, corr_fft):
    """Scores computed with many small correlation blocks (and their boundary terms) equal museval's."""
    monkeypatch.setattr(bsseval, "_CORR_FFT", corr_fft)
    rng = np.random.default_rng(7)
    refs = rng.standard_normal((2, 2, n_samples))
    ests = refs + 0.3 * rng.standard_normal((2, 2, n_samples))
    ours = bss_eval_v4(refs, ests, 100, window=np.inf, hop=np.inf, filter_length=filter_length)
    sdr, isr, sir, sar, _ = museval.metrics.bss_eval(
        np.swapaxes(refs, 1, 2), np.swapaxes(ests, 1, 2), window=n_samples, hop=n_samples,
        compute_permutation=False, filters_len=filter_length, framewise_filters=False,
        bsseval_sources_version=False)
    assert_matches(ours, {"sdr": sdr, "isr": isr, "sir": sir, "sar": sar})


@pytest.mark.parametrize("n_samples, window, hop", [(100, 30, 30), (100, 30, 20), (90, 30, 30),
                                                    (29, 30, 30), (30, 30, 30), (1000, 7, 3)])
def test_frame_bounds_match_museval(n_samples, window, hop):
    framer = museval.metrics.Framing(window, hop, n_samples)
    expected = [(s.start, s.stop) for s in framer]
    assert [tuple(b) for b in frame_bounds(n_samples, window, hop)] == expected


def test_evaluate_track_dict_api(three_sources):
    sr, refs, ests, theirs = three_sources
    names = ["vocals", "drums", "bass"]
    references = {name: refs[i] for i, name in enumerate(names)}
    estimates = {name: ests[i] for i, name in reversed(list(enumerate(names)))}  # order is refs'
    estimates["drums"] = np.concatenate([ests[1], np.ones((2, 100))], axis=-1)  # cut to length
    scores = evaluate_track(references, estimates, sr)
    assert list(scores) == names
    for i, name in enumerate(names):
        assert set(scores[name]) == set(METRICS)
        for metric in METRICS:
            assert all(isinstance(v, float) for v in scores[name][metric])
            np.testing.assert_allclose(scores[name][metric], theirs[metric][i], rtol=0, atol=FILTER_TOL)
    # a short estimate is zero-padded like museval.evaluate(padding=True)
    short = dict(estimates, bass=ests[2][:, :-sr // 2])
    padded = ests.copy()
    padded[2, :, -sr // 2:] = 0.0
    scores = evaluate_track(references, short, sr)
    np.testing.assert_allclose(scores["bass"]["sdr"], framewise_sdr(refs, padded, sr)[2], rtol=0, atol=1e-9)
    with pytest.raises(BssEvalInputError, match="bass"):
        evaluate_track(references, {"vocals": ests[0], "drums": ests[1]}, sr)


def test_invalid_inputs():
    rng = np.random.default_rng(5)
    refs = rng.standard_normal((2, 2, 4000))
    with pytest.raises(ValueError, match="shape"):
        bss_eval_v4(refs, refs[:, :, :-1], 1000)
    silent = refs.copy()
    silent[1] = 0.0
    with pytest.raises(BssEvalInputError, match="reference source 1 is silent"):
        bss_eval_v4(silent, refs, 1000)
    with pytest.raises(BssEvalInputError, match="estimate source 1 is silent"):
        bss_eval_v4(refs, silent, 1000)
    assert np.isnan(framewise_sdr(silent, refs, 1000)).all()  # allowed there, all NaN


def test_ill_conditioned_flags():
    rng = np.random.default_rng(6)
    sr = 4000
    good = broadband_sources(rng, 2, 2 * sr, sr)
    cond = gram_condition(good)
    assert cond["joint"] < 1e6 and (cond["per_source"] < 1e6).all()

    mono = good.copy()
    mono[1, 1] = mono[1, 0]  # one source is mono: its two channels coincide
    assert ill_conditioned(mono).all()  # the joint matrix is singular: every source flagged

    sos = signal.butter(8, 0.25, output="sos")  # one source band-limited to a quarter of Nyquist
    band = good.copy()
    band[0] = signal.sosfilt(sos, rng.standard_normal((2, band.shape[-1])))
    cond = gram_condition(band)
    assert cond["joint"] > CONDITION_LIMIT and cond["per_source"][0] > CONDITION_LIMIT
    assert cond["per_source"][1] < 1e6


def test_condition_from_bss_eval_v4_matches_gram_condition():
    rng = np.random.default_rng(8)
    sr = 4000
    refs = broadband_sources(rng, 2, 2 * sr, sr)
    refs[1, 1] = refs[1, 0]  # mono: singular joint Gram matrix
    cond = gram_condition(refs)
    scores = bss_eval_v4(refs, noisy_estimates(rng, refs), sr, condition=True)
    np.testing.assert_array_equal(scores["condition"], [cond["joint"]] * 2)
    assert np.isinf(scores["condition"]).all()
    names = {"a": refs[0], "b": refs[1]}
    track = evaluate_track(names, names, sr, condition=True)
    assert all(np.isinf(track[stem]["condition"]) for stem in names)
    good = broadband_sources(rng, 2, 2 * sr, sr)
    scores = bss_eval_v4(good, noisy_estimates(rng, good), sr, condition=True)
    assert (scores["condition"] < 1e6).all() and set(scores) == set(METRICS) | {"condition"}
    cond = gram_condition(good)
    np.testing.assert_array_equal(scores["condition"], [cond["joint"]] * 2)
    # each source's own Gram matrix is a principal block of the joint one (Cauchy interlacing)
    assert (cond["per_source"] <= cond["joint"]).all()


def test_condition_estimate_agrees_with_the_exact_condition_number():
    """The power-iteration estimate, stopped early once it settles, is a lower bound within a few
    per cent of numpy's exact 2-norm condition number, for a well- and an ill-conditioned Gram."""
    from mss_tools.metrics.bsseval import _cholesky, _condition

    rng = np.random.default_rng(9)
    for scale in (1.0, 1e-5):
        basis = np.linalg.qr(rng.standard_normal((300, 300)))[0]
        eigenvalues = np.concatenate([np.geomspace(1.0, 1e3, 290), scale * np.geomspace(1e-3, 2e-3, 10)])
        gram = torch.from_numpy((basis * eigenvalues) @ basis.T)
        gram = (gram + gram.T) / 2
        exact = np.linalg.cond(gram.numpy())
        estimate = float(_condition(gram, *_cholesky(gram)))
        assert exact * 0.9 <= estimate <= exact * (1 + 1e-9)


def test_torch_backend_matches_numpy(three_sources, monkeypatch):
    """The torch code path (used for CUDA devices), run on the CPU."""
    sr, refs, ests, theirs = three_sources
    monkeypatch.setattr(bsseval, "_backend", lambda device, workers: (bsseval._TorchBackend(torch.device("cpu")),
                                                                      torch.device("cpu")))
    assert_matches(bss_eval_v4(refs, ests, sr), theirs)


def test_threads_agree(three_sources):
    sr, refs, ests, _ = three_sources
    one, two = bss_eval_v4(refs, ests, sr, workers=1), bss_eval_v4(refs, ests, sr, workers=2)
    for name in METRICS:
        np.testing.assert_allclose(one[name], two[name], rtol=0, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(three_sources):
    sr, refs, ests, theirs = three_sources
    assert_matches(bss_eval_v4(refs, ests, sr, device="cuda"), theirs)


@pytest.mark.ffmpeg
@pytest.mark.skipif(not (FIXTURE / "train").is_dir(), reason="../shared/fixtures/musdb18-7s is absent")
@pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                    reason="ffmpeg/ffprobe not installed")
def test_museval_regression_fixture():
    """museval's own regression test: random estimates for vocals/accompaniment of the 7 s
    MUSDB18 sample, scored jointly; museval's reference json has 5 decimals (tolerance 0.1 dB
    in museval's test)."""
    musdb = pytest.importorskip("musdb")
    mus = musdb.DB(root=str(FIXTURE), subsets="train")
    track = next(t for t in mus.tracks if t.name == FIXTURE_TRACK)
    np.random.seed(0)
    estimates = {"vocals": np.random.random(track.audio.shape),
                 "accompaniment": np.random.random(track.audio.shape)}
    references = {name: track.targets[name].audio.T for name in estimates}
    scores = evaluate_track(references, {k: v.T for k, v in estimates.items()}, track.rate)

    expected = json.loads((FIXTURE / f"{FIXTURE_TRACK}.museval.json").read_text())
    worst = 0.0
    for target in expected["targets"]:
        for metric in METRICS:
            ref = np.array([frame["metrics"][metric.upper()] for frame in target["frames"]])
            ours = np.array(scores[target["name"]][metric])
            assert ours.shape == ref.shape
            worst = max(worst, float(np.max(np.abs(ours - ref))))
    assert worst < 2e-5, worst  # the json has 5 decimals
