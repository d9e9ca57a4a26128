"""Lightweight spectrogram U-Net inspired by TFC-TDF-UNet v3, trainable on a 4 GB GPU.

Kim & Kim, "Sound Demixing Challenge 2023 Music Demixing Track Technical Report:
TFC-TDF-UNet v3" (arXiv 2306.09382) inspires the shape — a small convolutional U-Net on
the spectrogram — reduced to: an encoder of ``depth`` blocks Conv2D → BatchNorm → ReLU →
MaxPool (8 → 16 → 32 filters), a Conv2D bottleneck of 64 channels with Dropout(0.3), a
decoder of ConvTranspose2D upsampling layers with skip connections and Dropout(0.2), and a
1×1 convolution that predicts the magnitude spectrogram of every target, recombined with
the mixture phase for the inverse STFT.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mss_tools.dsp import STFT, unet_n_fft
from mss_tools.models.base import ModelConfig, SeparationModel


@dataclasses.dataclass(frozen=True)
class UNetLiteConfig(ModelConfig):
    n_fft: int = 0                     # 0: 2048 at 44.1 kHz, scaled to the sample rate
    hop_length: int = 0                # 0: n_fft // 4
    channels: int = 8                  # first encoder block; doubles each block
    depth: int = 3
    bottleneck_channels: int = 64
    kernel_size: int = 3
    bottleneck_dropout: float = 0.3
    decoder_dropout: float = 0.2


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2), nn.BatchNorm2d(out_ch), nn.ReLU())


class UNetLite(SeparationModel):
    """Small U-Net predicting target magnitudes directly (not masks).

    Input ``(batch, audio_channels, time)``; output ``(batch, sources, audio_channels, time)``.
    The network sees ``log1p`` of the mixture magnitude ``(batch, audio_channels, freq, frames)``
    and predicts ``log1p`` of each target's magnitude (kept non-negative by a softplus); the
    Nyquist bin is left out of the network and set to zero.
    """

    ARCH = "unet_lite"
    DEFAULTS = UNetLiteConfig()
    PRESETS = {
        "paper": DEFAULTS,
        "lite": DEFAULTS,
        "small": DEFAULTS,
    }
    DEFAULT_LOSS = "l1_magnitude"
    DEFAULT_SEGMENT = 6.0

    def __init__(self, sources, audio_channels=2, sample_rate=44100, config: UNetLiteConfig | None = None, *,
                 segment: float | None = None):
        super().__init__(sources, audio_channels, sample_rate, config, segment=segment)
        config = self.config
        n_fft = config.n_fft or unet_n_fft(sample_rate)
        self.stft = STFT(n_fft, config.hop_length or n_fft // 4)
        self.depth = config.depth
        kernel_size = config.kernel_size
        widths = [config.channels * 2 ** i for i in range(config.depth)]
        self.encoder = nn.ModuleList()
        in_ch = audio_channels
        for width in widths:
            self.encoder.append(_conv_bn_relu(in_ch, width, kernel_size))
            in_ch = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = nn.Sequential(_conv_bn_relu(in_ch, config.bottleneck_channels, kernel_size),
                                        nn.Dropout2d(config.bottleneck_dropout))
        self.upsample = nn.ModuleList()
        self.merge = nn.ModuleList()
        in_ch = config.bottleneck_channels
        for width in reversed(widths):
            self.upsample.append(nn.Sequential(nn.ConvTranspose2d(in_ch, width, 2, stride=2), nn.BatchNorm2d(width),
                                               nn.ReLU(), nn.Dropout2d(config.decoder_dropout)))
            self.merge.append(_conv_bn_relu(2 * width, width, kernel_size))
            in_ch = width
        self.head = nn.Conv2d(in_ch, len(self.sources) * audio_channels, 1)

    def magnitudes(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Mixture magnitude ``(batch, audio_channels, freq, frames)`` -> targets ``(batch, sources, audio_channels, freq, frames)``."""
        batch, channels, freq, frames = magnitude.shape
        unit = 1 << self.depth
        x = torch.log1p(magnitude[:, :, : freq - 1])
        x = nn.functional.pad(x, (0, (-frames) % unit, 0, (-x.shape[2]) % unit))
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, merge in zip(self.upsample, self.merge):
            x = merge(torch.cat([upsample(x), skips.pop()], dim=1))
        estimate = torch.expm1(nn.functional.softplus(self.head(x)))[:, :, : freq - 1, :frames]
        estimate = nn.functional.pad(estimate, (0, 0, 0, 1))
        return estimate.reshape(batch, len(self.sources), channels, freq, frames)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        spec = self.stft(mix)
        phase = torch.polar(torch.ones_like(spec.real), spec.angle())
        return self.stft.inverse(self.magnitudes(spec.abs()) * phase.unsqueeze(1), mix.shape[-1])
