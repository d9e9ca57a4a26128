"""The built-in synthetic demo corpus (mss_tools.datasets.demo)."""

from __future__ import annotations

import numpy as np
import pytest

from mss_tools.datasets.demo import DEMO_SOURCES, demo_track_names, synthesize_track
from mss_tools.errors import BadInput

SR = 44100


@pytest.fixture(scope="module")
def tracks() -> list[dict[str, np.ndarray]]:
    """Three full-length (12 s, 44.1 kHz) demo tracks of seed 0."""
    return [synthesize_track(i, seed=0, duration=12.0, sample_rate=SR) for i in range(3)]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def band_fraction(x: np.ndarray, sr: int, lo: float, hi: float) -> float:
    """Fraction of the energy of stereo x (2, time) between lo and hi Hz."""
    power = np.sum(np.abs(np.fft.rfft(x.astype(np.float64), axis=-1)) ** 2, axis=0)
    f = np.fft.rfftfreq(x.shape[-1], 1.0 / sr)
    return float(power[(f >= lo) & (f < hi)].sum() / power.sum())


def test_sources_are_musdb_stems():
    assert DEMO_SOURCES == ("vocals", "drums", "bass", "other")


def test_track_names_and_splits():
    names = demo_track_names(20, 3, 3)
    assert len(names) == 20
    assert [split for split, _ in names] == ["train"] * 14 + ["valid"] * 3 + ["test"] * 3
    assert [name for _, name in names] == [f"demo-{i:03d}" for i in range(20)]
    assert demo_track_names() == names
    small = demo_track_names(5, 1, 0)
    assert small == [("train", "demo-000"), ("train", "demo-001"), ("train", "demo-002"),
                     ("train", "demo-003"), ("valid", "demo-004")]
    big = demo_track_names(1200, 100, 50)
    assert len({name for _, name in big}) == 1200
    assert big[-1] == ("test", "demo-1199")
    assert sum(split == "valid" for split, _ in big) == 100


@pytest.mark.parametrize("args", [(5, 3, 2), (3, 2, 2), (0, 0, 0), (10, -1, 2)])
def test_track_names_reject_impossible_splits(args):
    with pytest.raises(BadInput):
        demo_track_names(*args)


@pytest.mark.parametrize("sample_rate", [16000, 22050, 44100])
def test_shapes_dtypes_and_content(sample_rate):
    duration = 2.3
    stems = synthesize_track(4, seed=1, duration=duration, sample_rate=sample_rate)
    assert list(stems) == list(DEMO_SOURCES)
    length = round(duration * sample_rate)
    for name, x in stems.items():
        assert x.shape == (2, length), name
        assert x.dtype == np.float32, name
        assert x.flags.c_contiguous, name
        assert np.all(np.isfinite(x)), name
        assert rms(x) > 1e-3, name
        assert not np.array_equal(x[0], x[1]), name
    assert np.max(np.abs(sum(stems.values()))) < 0.9


def test_deterministic_per_seed_and_index():
    a = synthesize_track(7, seed=3, duration=3.0, sample_rate=16000)
    b = synthesize_track(7, seed=3, duration=3.0, sample_rate=16000)
    for name in DEMO_SOURCES:
        np.testing.assert_array_equal(a[name], b[name])
    other_index = synthesize_track(8, seed=3, duration=3.0, sample_rate=16000)
    other_seed = synthesize_track(7, seed=4, duration=3.0, sample_rate=16000)
    for name in DEMO_SOURCES:
        assert not np.allclose(a[name], other_index[name], atol=1e-3), name
        assert not np.allclose(a[name], other_seed[name], atol=1e-3), name


def test_same_song_at_any_sample_rate():
    """The score (notes, hits, levels) does not depend on the sample rate: 50 ms
    loudness envelopes of each stem match across rates."""
    def envelope(x, sr):
        hop = sr // 20
        n = x.shape[-1] // hop
        return np.sqrt(np.mean(x[:, :n * hop].astype(np.float64).reshape(2, n, hop) ** 2, axis=(0, 2)))

    low = synthesize_track(5, seed=2, duration=3.0, sample_rate=16000)
    high = synthesize_track(5, seed=2, duration=3.0, sample_rate=22050)
    for name in DEMO_SOURCES:
        corr = np.corrcoef(envelope(low[name], 16000), envelope(high[name], 22050))[0, 1]
        assert corr > 0.9, (name, corr)


def test_global_rng_untouched():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    synthesize_track(0, duration=0.5, sample_rate=16000)
    assert np.random.random() == expected


def test_full_tracks_mix_and_levels(tracks):
    length = round(12.0 * SR)
    for stems in tracks:
        mixture = sum(stems.values())
        assert mixture.shape == (2, length)
        peak = float(np.max(np.abs(mixture)))
        assert 0.3 < peak <= 0.9
        levels = {name: 20 * np.log10(rms(x)) for name, x in stems.items()}
        assert max(levels.values()) - min(levels.values()) <= 10.0, levels
        for name, x in stems.items():
            assert np.all(np.isfinite(x)), name
            # Channels differ beyond a gain: panning plus delays/reverb tails.
            corr = np.corrcoef(x[0], x[1])[0, 1]
            assert corr < 0.999, (name, corr)
    # Different tracks are different songs.
    assert not np.allclose(tracks[0]["bass"], tracks[1]["bass"], atol=1e-3)


def test_vocals_sing_in_phrases_with_rests(tracks):
    frame = SR // 2
    for stems in tracks:
        vocals = stems["vocals"]
        track_rms = rms(vocals)
        n_frames = vocals.shape[-1] // frame
        frames = vocals[:, :n_frames * frame].astype(np.float64).reshape(2, n_frames, frame)
        frame_db = 10 * np.log10(np.mean(frames ** 2, axis=(0, 2)) + 1e-20) - 20 * np.log10(track_rms)
        assert np.sum(frame_db < -30.0) >= 1, frame_db.round(1)   # rests
        assert np.sum(frame_db > -6.0) >= 4, frame_db.round(1)    # singing


def test_spectral_placement(tracks):
    for stems in tracks:
        bass_low = band_fraction(stems["bass"], SR, 0, 300)
        bass_high = band_fraction(stems["bass"], SR, 5000, SR / 2)
        drums_high = band_fraction(stems["drums"], SR, 5000, SR / 2)
        assert bass_low > 0.8
        assert bass_high < 1e-3
        assert drums_high > 0.005                                  # cymbals and hi-hats
        assert band_fraction(stems["drums"], SR, 0, 300) > 0.3      # kick (and toms)
        assert drums_high > 20 * bass_high
        # Vocals and the chord instruments live in the mid range and overlap there.
        for name in ("vocals", "other"):
            assert band_fraction(stems[name], SR, 100, 5000) > 0.95, name
            assert band_fraction(stems[name], SR, 150, 1000) > 0.3, name


def test_short_and_odd_durations():
    stems = synthesize_track(2, seed=5, duration=0.01, sample_rate=22050)
    assert all(x.shape == (2, round(0.01 * 22050)) for x in stems.values())
    assert all(np.all(np.isfinite(x)) for x in stems.values())


@pytest.mark.parametrize("kwargs", [dict(index=-1), dict(index=0, duration=0.0), dict(index=0, sample_rate=100)])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(BadInput):
        synthesize_track(**kwargs)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_stems_are_broadband_recordings_so_bsseval_is_well_conditioned(rate):
    """Each stem carries its own recording noise floor, 60 dB below it, independent per channel: no band is
    empty, so BSSEval's Gram matrices (and museval's isr/sir/sar) are well-conditioned."""
    from mss_tools.metrics import CONDITION_LIMIT
    from mss_tools.metrics.bsseval import evaluate_track

    stems = synthesize_track(4, seed=0, duration=3.0, sample_rate=rate)
    rng = np.random.default_rng(0)
    estimates = {k: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32) * v.std() for k, v in stems.items()}
    conditions = {k: v.pop("condition") for k, v in evaluate_track(stems, estimates, rate, condition=True).items()}
    assert all(c < CONDITION_LIMIT for c in conditions.values()), conditions
    for stem in stems.values():
        assert np.corrcoef(stem[0], stem[1])[0, 1] < 0.9999
