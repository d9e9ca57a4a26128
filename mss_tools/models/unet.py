"""Spectrogram U-Net mask baseline.

Jansson et al., "Singing Voice Separation with Deep U-Net Convolutional Networks", ISMIR 2017.
The magnitude spectrogram is treated as an image: an encoder of strided 5×5 convolutions
(BatchNorm, LeakyReLU 0.2), a decoder of strided 5×5 transposed convolutions (BatchNorm,
ReLU, dropout 0.5 on the first three) with skip connections by concatenation, and a sigmoid
soft mask per target and channel, applied to the mixture STFT (the mixture phase is reused).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mss_tools.dsp import STFT, unet_n_fft
from mss_tools.models.base import ModelConfig, SeparationModel


@dataclasses.dataclass(frozen=True)
class UNetConfig(ModelConfig):
    n_fft: int = 0                     # 0: 2048 at 44.1 kHz, scaled to the sample rate
    hop_length: int = 0                # 0: n_fft // 4
    depth: int = 6
    channels: int = 16                 # first encoder layer; doubles each layer
    max_channels: int = 512
    kernel_size: int = 5
    dropout: float = 0.5
    decoder_dropout_layers: int = 3


class UNet(SeparationModel):
    """Spectrogram-magnitude U-Net predicting one soft mask per target.

    Input ``(batch, audio_channels, time)``; output ``(batch, sources, audio_channels, time)``.
    Inside: magnitude ``(batch, audio_channels, freq, frames)`` (the Nyquist bin is left out so
    that the frequency axis halves cleanly, and gets a zero mask) -> ``log1p`` -> U-Net -> masks
    ``(batch, sources * audio_channels, freq, frames)``.
    """

    ARCH = "unet"
    DEFAULTS = UNetConfig()
    PRESETS = {
        "paper": dataclasses.replace(DEFAULTS, depth=6, channels=16),
        "small": dataclasses.replace(DEFAULTS, depth=4, channels=12),
    }
    DEFAULT_LOSS = "l1_magnitude"
    DEFAULT_SEGMENT = 6.0

    def __init__(self, sources, audio_channels=2, sample_rate=44100, config: UNetConfig | None = None, *,
                 segment: float | None = None):
        super().__init__(sources, audio_channels, sample_rate, config, segment=segment)
        config = self.config
        n_fft = config.n_fft or unet_n_fft(sample_rate)
        self.stft = STFT(n_fft, config.hop_length or n_fft // 4)
        self.depth = depth = config.depth
        kernel_size = config.kernel_size
        pad = kernel_size // 2
        widths = [min(config.channels * 2 ** i, config.max_channels) for i in range(depth)]
        self.encoder = nn.ModuleList()
        in_ch = audio_channels
        for width in widths:
            self.encoder.append(nn.Sequential(
                nn.Conv2d(in_ch, width, kernel_size, stride=2, padding=pad),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(0.2),
            ))
            in_ch = width
        out_masks = len(self.sources) * audio_channels
        self.decoder = nn.ModuleList()
        for i in reversed(range(depth)):
            width = widths[i - 1] if i > 0 else out_masks
            in_ch = widths[i] if i == depth - 1 else 2 * widths[i]
            layers = [nn.ConvTranspose2d(in_ch, width, kernel_size, stride=2, padding=pad, output_padding=1)]
            if i > 0:
                layers += [nn.BatchNorm2d(width), nn.ReLU()]
                if depth - 1 - i < config.decoder_dropout_layers and config.dropout > 0:
                    layers.append(nn.Dropout2d(config.dropout))
            self.decoder.append(nn.Sequential(*layers))

    def masks(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Magnitude ``(batch, audio_channels, freq, frames)`` -> masks ``(batch, sources, audio_channels, freq, frames)``."""
        batch, channels, freq, frames = magnitude.shape
        unit = 1 << self.depth
        x = torch.log1p(magnitude[:, :, : freq - 1])
        pad_f, pad_t = (-x.shape[2]) % unit, (-frames) % unit
        x = nn.functional.pad(x, (0, pad_t, 0, pad_f))
        skips = []
        for layer in self.encoder:
            x = layer(x)
            skips.append(x)
        skips.pop()
        for i, layer in enumerate(self.decoder):
            if i > 0:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x)
        mask = torch.sigmoid(x[:, :, : freq - 1, :frames])
        mask = nn.functional.pad(mask, (0, 0, 0, 1))
        return mask.reshape(batch, len(self.sources), channels, freq, frames)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        spec = self.stft(mix)
        masked = self.masks(spec.abs()) * spec.unsqueeze(1)
        return self.stft.inverse(masked, mix.shape[-1])
