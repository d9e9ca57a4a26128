"""TFC-TDF-UNet v3 (MDX23C).

M. Kim, J. H. Lee and S. Jung, "Sound Demixing Challenge 2023 Music Demixing Track Technical
Report: TFC-TDF-UNet v3", arXiv:2306.09382 (2023).

A U-Net on the complex spectrogram that predicts the targets' spectrograms directly (no mask).
Shapes for a mixture ``(B, C, L)``, ``S`` sources, ``k`` subbands, ``F`` kept bins, ``T`` frames:

1. complex STFT, the lowest ``dim_f`` bins (all but the Nyquist bin by default), real and
   imaginary parts as channels ``(B, 2C, F, T)`` (frames padded to a multiple of the time scale
   factor to the power ``scales``);
2. subbands: the bins are cut into ``k`` contiguous subbands stacked as channels,
   ``(B, 2Ck, F/k, T)``, then a 1x1 convolution to ``channels``; the U-Net works on
   ``(B, c, T, f)`` (frequency last, for the TDF layers);
3. encoder: ``scales`` x (a TFC-TDF block of ``blocks_per_scale`` layers, then a downscaling
   convolution (norm, activation, conv with kernel = stride = ``scale``) adding ``growth``
   channels); a TFC-TDF bottleneck; decoder: ``scales`` x (transposed-convolution upscaling
   removing ``growth`` channels, concatenation with the encoder output, a TFC-TDF block);
4. a TFC-TDF layer: shortcut 1x1 conv; TFC = (norm, activation, 3x3 conv); TDF = (norm,
   activation, Linear over frequency f -> f / ``bottleneck_factor``, norm, activation, Linear
   back) added to the TFC output; another TFC; plus the shortcut;
5. the decoder output is multiplied by the first convolution's output, concatenated with the
   subband input and mapped by (1x1 conv, activation, 1x1 conv) to ``S`` x ``2Ck`` channels:
   every source's subband spectrogram, reassembled and inverted with the iSTFT.

Norms are instance norms with affine parameters and the activation is GELU (options ``norm``,
``act``). Presets: ``paper`` is the MUSDB18 configuration of MSST's MDX23C (an 8192-point
STFT with hop 1024 at 44.1 kHz, 4096 bins, 4 subbands, 128 channels growing by 128 over 5
scales of (2, 2), 2 layers per block, TDF bottleneck factor 4); ``small`` is for the CPU. At
other rates the window keeps its duration (as a power of two) and the hop stays an eighth of it.
The loss of the reference training code is ``mse_wave``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mss_tools.dsp.fft_sizes import nearest_power_of_two
from mss_tools.errors import BadInput
from mss_tools.models.base import ModelConfig, SeparationModel, model_stft, require_at_least_one

PAPER_N_FFT, PAPER_RATE = 8192, 44100
NORMS = ("instance", "batch", "none")  # or "group<N>"
ACTIVATIONS = ("gelu", "relu")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind.startswith("group"):
        return nn.GroupNorm(int(kind[5:]), channels)
    return nn.Identity()


def _activation(kind: str) -> nn.Module:
    return nn.GELU() if kind == "gelu" else nn.ReLU()


class TFCTDFLayer(nn.Module):
    """``(B, in_channels, T, f)`` -> ``(B, channels, T, f)``: TFC, + TDF, TFC, + 1x1 shortcut."""

    def __init__(self, in_channels: int, channels: int, freq: int, bottleneck: int, norm: str, act: str):
        super().__init__()
        self.tfc1 = nn.Sequential(_norm(norm, in_channels), _activation(act),
                                  nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False))
        self.tdf = nn.Sequential(_norm(norm, channels), _activation(act),
                                 nn.Linear(freq, freq // bottleneck, bias=False),
                                 _norm(norm, channels), _activation(act),
                                 nn.Linear(freq // bottleneck, freq, bias=False))
        self.tfc2 = nn.Sequential(_norm(norm, channels), _activation(act),
                                  nn.Conv2d(channels, channels, 3, 1, 1, bias=False))
        self.shortcut = nn.Conv2d(in_channels, channels, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.tfc1(x)
        x = x + self.tdf(x)
        return self.tfc2(x) + shortcut


class TFCTDFBlock(nn.Sequential):
    """``layers`` :class:`TFCTDFLayer` s, the first from ``in_channels``."""

    def __init__(self, in_channels: int, channels: int, layers: int, freq: int, bottleneck: int, norm: str, act: str):
        super().__init__(*(TFCTDFLayer(in_channels if i == 0 else channels, channels, freq, bottleneck, norm, act)
                           for i in range(layers)))


@dataclasses.dataclass(frozen=True)
class TFCTDFv3Config(ModelConfig):
    """Options of :class:`TFCTDFv3` (see the module docstring)."""

    channels: int = 128
    growth: int = 128
    scales: int = 5
    blocks_per_scale: int = 2
    subbands: int = 4
    bottleneck_factor: int = 4
    scale_time: int = 2
    scale_freq: int = 2
    norm: str = "instance"
    act: str = "gelu"
    n_fft: int = 0      # 0: 8192 points at 44.1 kHz, the same duration (as a power of two) elsewhere
    hop_length: int = 0  # 0: n_fft / 8
    dim_f: int = 0       # bins kept; 0: n_fft / 2 (every bin but Nyquist)


class TFCTDFv3(SeparationModel):
    """TFC-TDF-UNet v3: mixture ``(batch, audio_channels, time)`` -> sources
    ``(batch, len(sources), audio_channels, time)``, spectrograms predicted directly."""

    ARCH = "tfc_tdf_v3"
    DEFAULTS = TFCTDFv3Config()
    PRESETS = {
        "paper": DEFAULTS,
        "small": dataclasses.replace(DEFAULTS, channels=16, growth=16, scales=3, blocks_per_scale=1, subbands=2,
                                     bottleneck_factor=2),
    }
    DEFAULT_LOSS = "mse_wave"
    DEFAULT_SEGMENT = 6.0

    def __init__(self, sources, audio_channels: int = 2, sample_rate: int = 44100,
                 config: TFCTDFv3Config | None = None, *, segment: float | None = None):
        super().__init__(sources, audio_channels, sample_rate, config, segment=segment)
        config = self.config
        require_at_least_one(config, ("channels", "scales", "blocks_per_scale", "subbands", "bottleneck_factor",
                                      "scale_time", "scale_freq"))
        if config.growth < 0 or config.n_fft < 0 or config.hop_length < 0 or config.dim_f < 0:
            raise BadInput("options growth, n_fft, hop_length and dim_f must not be negative")
        if config.norm not in NORMS and not (config.norm.startswith("group") and config.norm[5:].isdigit()):
            raise BadInput(f"option norm must be one of {', '.join(NORMS)} or group<N>, got {config.norm!r}")
        if config.act not in ACTIVATIONS:
            raise BadInput(f"option act must be one of {', '.join(ACTIVATIONS)}, got {config.act!r}")
        n_fft = config.n_fft or nearest_power_of_two(self.sample_rate * PAPER_N_FFT / PAPER_RATE)
        self.stft = model_stft(n_fft, config.hop_length or n_fft // 8)
        self.dim_f = config.dim_f or n_fft // 2
        freq_unit = config.subbands * config.scale_freq ** config.scales
        if self.dim_f > self.stft.n_freq or self.dim_f % freq_unit:
            raise BadInput(f"dim_f {self.dim_f} must be at most {self.stft.n_freq} and a multiple of subbands x "
                           f"scale_freq^scales = {freq_unit}")
        self.time_unit = config.scale_time ** config.scales
        scale = (config.scale_time, config.scale_freq)
        norm, act = config.norm, config.act
        subband_channels = 2 * self.audio_channels * config.subbands
        channels, freq = config.channels, self.dim_f // config.subbands
        layers, bottleneck, growth = config.blocks_per_scale, config.bottleneck_factor, config.growth

        self.first_conv = nn.Conv2d(subband_channels, channels, 1, 1, 0, bias=False)
        self.encoder = nn.ModuleList()
        for _ in range(config.scales):
            stage = nn.Module()
            stage.tfc_tdf = TFCTDFBlock(channels, channels, layers, freq, bottleneck, norm, act)
            stage.downscale = nn.Sequential(_norm(norm, channels), _activation(act),
                                            nn.Conv2d(channels, channels + growth, scale, scale, bias=False))
            self.encoder.append(stage)
            freq //= config.scale_freq
            channels += growth
        self.bottleneck = TFCTDFBlock(channels, channels, layers, freq, bottleneck, norm, act)
        self.decoder = nn.ModuleList()
        for _ in range(config.scales):
            stage = nn.Module()
            stage.upscale = nn.Sequential(_norm(norm, channels), _activation(act),
                                          nn.ConvTranspose2d(channels, channels - growth, scale, scale, bias=False))
            freq *= config.scale_freq
            channels -= growth
            stage.tfc_tdf = TFCTDFBlock(2 * channels, channels, layers, freq, bottleneck, norm, act)
            self.decoder.append(stage)
        self.final_conv = nn.Sequential(nn.Conv2d(channels + subband_channels, channels, 1, 1, 0, bias=False),
                                        _activation(act),
                                        nn.Conv2d(channels, len(self.sources) * subband_channels, 1, 1, 0, bias=False))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise BadInput(f"expected a mixture (batch, {self.audio_channels}, time), got {tuple(mix.shape)}")
        batch, channels, length = mix.shape
        k = self.config.subbands
        spec = self.stft(mix)[:, :, : self.dim_f]
        frames = spec.shape[-1]
        x = torch.view_as_real(spec).permute(0, 1, 4, 2, 3).reshape(batch, 2 * channels, self.dim_f, frames)
        x = nn.functional.pad(x, (0, (-frames) % self.time_unit))
        x = x.reshape(batch, 2 * channels * k, self.dim_f // k, x.shape[-1])
        subbands = x
        first = self.first_conv(x)
        x = first.transpose(-1, -2)
        skips = []
        for stage in self.encoder:
            x = self.run_block(stage.tfc_tdf, x)
            skips.append(x)
            x = stage.downscale(x)
        x = self.run_block(self.bottleneck, x)
        for stage in self.decoder:
            x = self.run_block(stage.tfc_tdf, torch.cat([stage.upscale(x), skips.pop()], 1))
        x = self.final_conv(torch.cat([subbands, x.transpose(-1, -2) * first], 1))
        x = x.reshape(batch, len(self.sources), channels, 2, self.dim_f, x.shape[-1])[..., :frames]
        estimate = torch.view_as_complex(x.permute(0, 1, 2, 4, 5, 3).contiguous())
        estimate = nn.functional.pad(estimate, (0, 0, 0, self.stft.n_freq - self.dim_f))
        return self.stft.inverse(estimate, length)
