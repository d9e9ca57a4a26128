"""Training losses, chosen by name (each architecture names its paper's default).

Every loss takes estimates and references of shape ``(batch, sources, channels, time)``
and the model (for its STFT settings) and returns a scalar.
"""

from __future__ import annotations

from typing import Callable

import torch

from mss_tools.dsp import STFT, fast_fft_size, loss_n_fft
from mss_tools.errors import BadInput

_STFTS: dict[tuple[int, int, torch.device], STFT] = {}


def loss_stft(model, device: torch.device) -> STFT:
    """The model's own STFT, else one of :func:`~mss_tools.dsp.loss_n_fft` points (hop a quarter) on ``device``."""
    stft = getattr(model, "stft", None)
    if isinstance(stft, STFT):
        return stft
    n_fft = loss_n_fft(getattr(model, "sample_rate", 44100))
    key = (n_fft, n_fft // 4, device)
    if key not in _STFTS:
        _STFTS[key] = STFT(n_fft, n_fft // 4).to(device)
    return _STFTS[key]


def l1_wave(est: torch.Tensor, ref: torch.Tensor, model=None) -> torch.Tensor:
    """Mean absolute error on the waveform (Demucs)."""
    return (est - ref).abs().mean()


def mse_wave(est: torch.Tensor, ref: torch.Tensor, model=None) -> torch.Tensor:
    """Mean squared error on the waveform."""
    return (est - ref).pow(2).mean()


def l1_magnitude(est: torch.Tensor, ref: torch.Tensor, model=None) -> torch.Tensor:
    """Mean absolute error between magnitude spectrograms (the spectrogram U-Nets)."""
    stft = loss_stft(model, est.device)
    return (stft(est).abs() - stft(ref).abs()).abs().mean()


def l1_complex_wave(est: torch.Tensor, ref: torch.Tensor, model=None) -> torch.Tensor:
    """L1 on real and imaginary STFT parts plus L1 on the waveform (BSRNN)."""
    stft = loss_stft(model, est.device)
    diff = stft(est) - stft(ref)
    return diff.real.abs().mean() + diff.imag.abs().mean() + (est - ref).abs().mean()


def rmse_complex_spec(est: torch.Tensor, ref: torch.Tensor, model=None) -> torch.Tensor:
    """Per example and source, the root of the mean squared difference of the normalised complex
    spectrograms (real and imaginary parts of every channel, bin and frame), then the mean (SCNet:
    its authors' training code)."""
    stft = loss_stft(model, est.device)
    diff = torch.view_as_real(stft(est) - stft(ref)) / stft.norm
    return diff.pow(2).flatten(2).mean(-1).clamp_min(1e-20).sqrt().mean()


# The multi-resolution STFT loss of the RoFormers' reference implementation, at 44.1 kHz: Hann windows of
# these lengths in frames of max(window, 2048) points, hop 147; scaled with the sample rate elsewhere, the
# frames rounded up to a fast FFT size (at 8 kHz 384 and 768 points, not 371 and 743: a fifth and a third
# of the time).
MULTIRES_WINDOWS = (4096, 2048, 1024, 512, 256)
MULTIRES_N_FFT, MULTIRES_HOP, MULTIRES_RATE = 2048, 147, 44100
_MULTIRES: dict[tuple[int, torch.device], list[STFT]] = {}


def multires_stfts(sample_rate: int, device: torch.device) -> list[STFT]:
    """The STFTs of :func:`l1_multires_stft` at ``sample_rate`` (the reference's at 44.1 kHz)."""
    key = (sample_rate, device)
    if key not in _MULTIRES:
        scale = sample_rate / MULTIRES_RATE
        hop = max(1, round(MULTIRES_HOP * scale))
        floor = max(16, round(MULTIRES_N_FFT * scale))
        _MULTIRES[key] = [STFT(fast_fft_size(max(floor, round(w * scale))), hop,
                               win_length=max(16, round(w * scale))).to(device) for w in MULTIRES_WINDOWS]
    return _MULTIRES[key]


def l1_multires_stft(est: torch.Tensor, ref: torch.Tensor, model=None) -> torch.Tensor:
    """L1 on the waveform plus, for each of five STFT resolutions, the mean modulus of the complex
    spectrogram difference (BS-RoFormer, Mel-RoFormer)."""
    loss = (est - ref).abs().mean()
    for stft in multires_stfts(getattr(model, "sample_rate", MULTIRES_RATE), est.device):
        loss = loss + (stft(est) - stft(ref)).abs().mean()
    return loss


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "l1_wave": l1_wave,
    "mse_wave": mse_wave,
    "l1_magnitude": l1_magnitude,
    "l1_complex_wave": l1_complex_wave,
    "l1_multires_stft": l1_multires_stft,
    "rmse_complex_spec": rmse_complex_spec,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    if name not in LOSSES:
        raise BadInput(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]
