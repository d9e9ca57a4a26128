import numpy as np
import pytest
import torch

from mss_tools.apply import chunk_count, crossfade_window, separate_tensor
from mss_tools.dsp import STFT, loss_n_fft, model_n_fft, onset_n_fft, unet_n_fft
from mss_tools.metrics import si_sdr, usdr


class Scaler:
    """A stand-in model (a plain object with what inference needs): source k is (k+1)/10 of the mixture."""

    def __init__(self, sources=("a", "b", "c")):
        self.sources = list(sources)
        self.sample_rate = 1000
        self.audio_channels = 2
        self.segment = 0.5
        self.calls = []

    def __call__(self, mix):
        return self.forward(mix)

    def forward(self, mix):
        self.calls.append(tuple(mix.shape))
        gains = torch.arange(1, len(self.sources) + 1, dtype=mix.dtype).view(1, -1, 1, 1) / 10
        return mix.unsqueeze(1) * gains


@pytest.mark.parametrize("length,overlap", [(3217, 0.25), (500, 0.5), (120, 0.25), (10001, 0.0)])
def test_overlap_add_reconstructs_a_linear_model_exactly(length, overlap):
    model = Scaler()
    mix = torch.randn(2, length)
    out = separate_tensor(model, mix, segment=0.5, overlap=overlap, batch_size=3)
    assert out.shape == (3, 2, length)
    for k in range(3):
        torch.testing.assert_close(out[k], mix * (k + 1) / 10, rtol=1e-5, atol=1e-6)
    chunk = min(500, length)
    assert sum(shape[0] for shape in model.calls) == chunk_count(length, chunk, overlap)
    assert all(shape[0] <= 3 and shape[-1] == chunk for shape in model.calls)


def test_crossfade_window_is_positive_with_ramps():
    window = crossfade_window(48000, 12000)
    assert window.min() >= 1e-3 and window[12000:36000].eq(1).all()
    torch.testing.assert_close(window[:12000], window[-12000:].flip(0))
    assert crossfade_window(100, 25, left=False)[:25].eq(1).all()
    assert crossfade_window(100, 25, right=False)[-25:].eq(1).all()


def test_long_chunks_with_nonlinear_model_stay_finite():
    class Square(Scaler):
        def forward(self, mix):
            return (mix ** 2).unsqueeze(1).repeat(1, len(self.sources), 1, 1)

    model = Square()
    model.sample_rate = 16000
    mix = torch.randn(2, 16000 * 12)
    out = separate_tensor(model, mix, segment=3.0, overlap=0.25)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], mix ** 2, rtol=1e-5, atol=1e-5)


def test_stft_round_trip_and_shapes():
    stft = STFT(256, 64)
    wave = torch.randn(2, 3, 1001)
    spec = stft(wave)
    assert spec.shape == (2, 3, 129, 1001 // 64 + 1)
    torch.testing.assert_close(stft.inverse(spec, 1001), wave, rtol=1e-4, atol=1e-5)


def test_stft_window_rules():
    rates = [500, 8000, 16000, 22050, 32000, 32001, 44100, 48000]
    assert [model_n_fft(r) for r in rates] == [32, 512, 1024, 1024, 2048, 2048, 2048, 2048]
    assert [unet_n_fft(r) for r in rates] == [64, 512, 1024, 1024, 2048, 2048, 2048, 2048]
    assert [loss_n_fft(r) for r in rates] == [2048, 2048, 2048, 2048, 2048, 4096, 4096, 4096]
    assert [onset_n_fft(r) for r in rates] == [32, 512, 1024, 1024, 2048, 2048, 2048, 2048]
    assert onset_n_fft(100) == 16


def test_usdr_and_si_sdr_values():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 4000))
    noise = rng.standard_normal((2, 4000))
    noise *= np.sqrt((ref ** 2).sum() / (noise ** 2).sum()) / 10  # error energy = ref energy / 100
    assert usdr(ref, ref + noise) == pytest.approx(20.0, abs=1e-6)
    assert si_sdr(ref, 3 * ref) > 100  # scale does not matter
    assert usdr(ref, 3 * ref) == pytest.approx(10 * np.log10(1 / 4), abs=1e-6)
    assert usdr(np.zeros((2, 10)), np.zeros((2, 10))) == pytest.approx(0.0)
