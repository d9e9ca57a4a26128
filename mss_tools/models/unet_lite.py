"""Lightweight spectrogram U-Net inspired by TFC-TDF-UNet v3, trainable on a 4 GB GPU.

Kim & Kim, "Sound Demixing Challenge 2023 Music Demixing Track Technical Report:
TFC-TDF-UNet v3" (arXiv 2306.09382) inspires the shape — a small convolutional U-Net on
the spectrogram — reduced to: an encoder of ``depth`` blocks Conv2D → BatchNorm → ReLU →
MaxPool (8 → 16 → 32 filters), a Conv2D bottleneck of 64 channels with Dropout(0.3), a
decoder of ConvTranspose2D upsampling layers with skip connections and Dropout(0.2), and a
1×1 convolution head whose output, clamped to [0, 1], is a magnitude mask per target and
channel applied to the mixture STFT (the mixture phase is reused) for the inverse STFT.

The mixture is divided by its RMS before the STFT and every estimate multiplied by it after
the inverse (``normalize``), so the model is scale-equivariant: ``model(g · mix) = g ·
model(mix)`` for any gain ``g > 0``. The clamped mask reaches exactly 0, so a target can be
exactly silent. Checkpoints saved before these two options existed keep the head they were
trained with (``output="log1p_magnitude"``, ``normalize=False``; see
``UNetLiteConfig.LEGACY``).
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from mss_tools.dsp import STFT, unet_n_fft
from mss_tools.errors import BadInput
from mss_tools.models.base import ModelConfig, SeparationModel

OUTPUTS = ("mask", "log1p_magnitude")


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
    output: str = "mask"               # "mask": clamped [0, 1] magnitude mask; "log1p_magnitude": the first head
    normalize: bool = True             # divide the input by its RMS, multiply the estimates by it

    # what checkpoints saved before ``output`` and ``normalize`` existed were trained with
    LEGACY: ClassVar[Mapping[str, Any]] = MappingProxyType({"output": "log1p_magnitude", "normalize": False})


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2), nn.BatchNorm2d(out_ch), nn.ReLU())


class UNetLite(SeparationModel):
    """Small spectrogram U-Net with a clamped magnitude mask per target.

    Input ``(batch, audio_channels, time)``; output ``(batch, sources, audio_channels, time)``.
    The mixture (divided by its RMS over channels and time when ``normalize``) gives the
    magnitude ``(batch, audio_channels, freq, frames)``; the network sees its ``log1p`` and
    returns ``(batch, sources * audio_channels, freq, frames)``: with ``output="mask"`` masks
    clamped to [0, 1] that multiply the mixture STFT, with ``output="log1p_magnitude"`` each
    target's ``log1p`` magnitude, kept non-negative by a softplus and given the mixture phase.
    The Nyquist bin is left out of the network and set to zero.
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
        if config.output not in OUTPUTS:
            raise BadInput(f"option output must be one of {', '.join(OUTPUTS)}, got {config.output!r}")
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
        if config.output == "mask":
            # start every mask at 0.5, inside the clamp: a bin whose mask starts below 0 gets no gradient
            nn.init.constant_(self.head.bias, 0.5)

    def head_output(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Mixture magnitude ``(batch, audio_channels, freq, frames)`` -> what the head predicts, ``(batch, sources,
        audio_channels, freq, frames)``: masks in [0, 1] (``output="mask"``) or target magnitudes
        (``output="log1p_magnitude"``); zero in the Nyquist bin."""
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
        if self.config.output == "mask":
            estimate = self.head(x).clamp(0.0, 1.0)
        else:
            estimate = torch.expm1(nn.functional.softplus(self.head(x)))
        estimate = nn.functional.pad(estimate[:, :, : freq - 1, :frames], (0, 0, 0, 1))
        return estimate.reshape(batch, len(self.sources), channels, freq, frames)

    def input_scale(self, mix: torch.Tensor) -> torch.Tensor:
        """RMS of each example of ``mix`` ``(batch, audio_channels, time)`` over channels and time, ``(batch, 1, 1)``
        (at least 1e-8, so that a silent mixture stays silent instead of dividing by zero)."""
        return mix.square().mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-8)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        scale = self.input_scale(mix) if self.config.normalize else None
        spec = self.stft(mix / scale if scale is not None else mix)
        if self.config.output == "mask":
            estimate = self.head_output(spec.abs()) * spec.unsqueeze(1)
        else:
            phase = torch.polar(torch.ones_like(spec.real), spec.angle())
            estimate = self.head_output(spec.abs()) * phase.unsqueeze(1)
        sources = self.stft.inverse(estimate, mix.shape[-1])
        return sources * scale.unsqueeze(1) if scale is not None else sources
