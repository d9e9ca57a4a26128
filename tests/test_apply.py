import numpy as np
import pytest
import torch

from mss_tools.apply import chunk_count, chunk_hop, chunk_length, chunk_starts, crossfade_window, separate_tensor
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


class FrequencyGain(torch.nn.Module):
    """A spectrogram model local in time: source k is the mixture STFT times a fixed gain per frequency bin
    ``gains[k]``, inverted; it declares its STFT hop in ``stft_hop`` (``declare_hop=False``: it does not)."""

    def __init__(self, gains, n_fft=512, hop=128, sample_rate=8000, declare_hop=True):
        super().__init__()
        self.sources = [f"s{k}" for k in range(gains.shape[0])]
        self.sample_rate, self.audio_channels, self.segment = sample_rate, 2, 1.3
        self.stft = STFT(n_fft, hop)
        self.gains = gains  # (sources, n_fft // 2 + 1)
        if declare_hop:
            self.stft_hop = hop

    def forward(self, mix):
        """``(batch, channels, time)`` -> ``(batch, sources, channels, time)``."""
        spec = self.stft(mix).unsqueeze(1)
        return self.stft.inverse(spec * self.gains.view(1, len(self.sources), 1, -1, 1), mix.shape[-1])


def snr_db(reference, estimate):
    return 10 * torch.log10(reference.square().sum() / (reference - estimate).square().sum()).item()


@pytest.mark.parametrize("segment,overlap", [(1.3, 0.25), (1.0, 0.5), (2.0, 0.1), (0.77, 0.25)])
def test_chunks_on_the_stft_frame_grid_give_the_whole_track_output(segment, overlap):
    """Separated in chunks, a model local in time gives its whole-track output (60 dB); off the grid it does not."""
    generator = torch.Generator().manual_seed(0)
    gains = torch.rand(2, 257, generator=generator)
    mix = torch.randn(2, 8000 * 10 + 37, generator=generator)  # 10 s at 8 kHz, not a multiple of the hop
    aligned = FrequencyGain(gains)
    with torch.no_grad():
        whole = aligned(mix.unsqueeze(0))[0]
        assert snr_db(whole, separate_tensor(aligned, mix, segment=segment, overlap=overlap)) >= 60
        off_grid = separate_tensor(FrequencyGain(gains, declare_hop=False), mix, segment=segment, overlap=overlap)
        assert snr_db(whole, off_grid) < 50


@pytest.mark.parametrize("length", [8000 * 10 + 37, 10400, 10401, 20000, 129, 100])
@pytest.mark.parametrize("segment_samples,overlap", [(10400, 0.25), (8000, 0.5), (6160, 0.0), (1000, 0.9)])
def test_chunk_grid_starts_every_chunk_on_a_frame(length, segment_samples, overlap):
    hop = 128
    chunk = chunk_length(segment_samples, length, hop)
    starts = chunk_starts(length, chunk, overlap, hop)
    assert all(start % hop == 0 for start in starts)
    assert starts[0] == 0 and starts[-1] + chunk == length  # the whole track is covered ...
    assert all(b - a <= chunk for a, b in zip(starts, starts[1:]))  # ... without a gap
    assert chunk_hop(chunk, overlap, hop) % hop == 0
    assert chunk == length or hop * round(segment_samples / hop) <= chunk < hop * round(segment_samples / hop) + hop


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
