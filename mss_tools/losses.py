"""Training losses, chosen by name (each architecture names its paper's default).

Every loss takes estimates and references of shape ``(batch, sources, channels, time)``
and the model (for its STFT settings) and returns a scalar.
"""

from __future__ import annotations

from typing import Callable

import torch

from mss_tools.dsp import STFT, loss_n_fft
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


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "l1_wave": l1_wave,
    "mse_wave": mse_wave,
    "l1_magnitude": l1_magnitude,
    "l1_complex_wave": l1_complex_wave,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    if name not in LOSSES:
        raise BadInput(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]
