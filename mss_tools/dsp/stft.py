"""The project's single STFT/iSTFT implementation.

Every spectrogram model, loss and metric goes through :class:`STFT` so that
framing, windowing and normalisation are identical everywhere.
"""

from __future__ import annotations

import torch
from torch import nn


class STFT(nn.Module):
    """Centred, Hann-windowed STFT with a perfect-reconstruction inverse.

    ``forward``: waveform ``(..., time)`` -> complex spectrogram ``(..., freq, frames)``
    with ``freq = n_fft // 2 + 1`` and ``frames = time // hop_length + 1``.
    ``inverse``: complex ``(..., freq, frames)`` -> waveform ``(..., length)``.
    Leading dimensions (batch, sources, channels) are kept as they are.
    """

    WINDOWS = ("hann", "rectangular")

    def __init__(self, n_fft: int = 2048, hop_length: int = 512, center: bool = True, win_length: int | None = None,
                 window: str = "hann"):
        super().__init__()
        win_length = win_length or n_fft
        if n_fft <= 0 or hop_length <= 0 or hop_length > n_fft or not 0 < win_length <= n_fft:
            raise ValueError(f"invalid STFT: n_fft={n_fft}, hop_length={hop_length}, win_length={win_length}")
        if window not in self.WINDOWS:
            raise ValueError(f"invalid STFT window {window!r}; choose one of {', '.join(self.WINDOWS)}")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.center = center
        self.win_length = win_length  # a shorter window sits in the middle of the n_fft-point frame
        self.register_buffer("window", torch.hann_window(win_length) if window == "hann" else torch.ones(win_length),
                             persistent=False)

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def norm(self) -> float:
        """What the normalised STFT (torch's ``normalized=True``) divides this one by: ``sqrt(n_fft)``."""
        return self.n_fft ** 0.5

    def n_frames(self, length: int) -> int:
        return length // self.hop_length + 1 if self.center else 1 + (length - self.n_fft) // self.hop_length

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        shape = wave.shape
        flat = wave.reshape(-1, shape[-1])
        window = self.window.to(device=flat.device, dtype=flat.dtype)
        spec = torch.stft(flat, self.n_fft, self.hop_length, win_length=self.win_length, window=window,
                          center=self.center,
                          pad_mode="reflect" if shape[-1] > self.n_fft // 2 else "constant",
                          normalized=False, onesided=True, return_complex=True)
        return spec.reshape(*shape[:-1], *spec.shape[-2:])

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        shape = spec.shape
        flat = spec.reshape(-1, *shape[-2:])
        window = self.window.to(device=flat.device, dtype=flat.real.dtype)
        wave = torch.istft(flat, self.n_fft, self.hop_length, win_length=self.win_length, window=window,
                           center=self.center,
                           normalized=False, onesided=True, length=length)
        return wave.reshape(*shape[:-2], length)
