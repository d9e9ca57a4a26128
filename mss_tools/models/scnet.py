"""SCNet: Sparse Compression Network.

W. Tong et al., "SCNet: Sparse Compression Network for Music Source Separation",
arXiv:2401.13276 (2024).

Shapes for a mixture ``(B, C, L)`` (``F`` bins, ``T`` frames, ``D_i`` channels of encoder level ``i``):

1. the mixture is padded so that the STFT has an even number of frames (the separation network
   takes an FFT over frames); normalised complex STFT (a rectangular window, as the authors' code
   has it: it passes ``torch.stft`` no window; option ``window``), real and imaginary parts as
   channels: ``(B, D_0 = 2C, F, T)``;
2. encoder, ``depth`` sparse down-sample (SD) blocks: the bins are split into a low, a middle and
   a high band (``low_fraction``, ``mid_fraction`` of the bins, the rest), each compressed along
   frequency by its own strided convolution (strides 1, 4, 16 by default: the high band is kept
   most sparsely) to ``D_{i+1}`` channels, then a convolution module per band along time (``3, 2,
   1`` residual layers of GroupNorm, conv, GLU, depthwise conv, GroupNorm, Swish, 1x1 conv; channel
   compression 4) and GELU; the bands are concatenated (the skip) and a 3x3 convolution follows;
3. separation network: ``dual_path_layers`` dual-path layers (a BLSTM across frequency, then one
   across time, each with GroupNorm before and a Linear and a residual after); between layers the
   features alternate between time and the frequency of an FFT over time (rfft/irfft, real and
   imaginary parts as channels), so every second layer models time as periodicities;
4. decoder, ``depth`` sparse up-sample (SU) blocks: fusion (skip added, channels doubled, 3x3 conv,
   GLU) and a transposed convolution per band back to that band's bins; the last gives
   ``S * 2C`` channels, ordered (source, channel, real/imaginary);
5. inverse STFT and cropping: ``(B, S, C, L)``.

The loss is ``rmse_complex_spec``, as the authors' training code has it: per example and source the
root mean squared difference of the normalised complex spectrograms (this STFT), then the mean.
Presets: ``paper`` is SCNet as the authors' code defaults it (channels 32, 64, 128; a 4096-point
STFT with hop 1024 at 44.1 kHz; band fractions 0.175, 0.392, 0.433; 6 dual-path layers); ``small``
for the CPU (channels 16, 32; 2 dual-path layers). At other rates the window keeps its duration (as
a power of two) and the hop stays a quarter of it.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from mss_tools.dsp.fft_sizes import nearest_power_of_two
from mss_tools.errors import BadInput
from mss_tools.models.base import ModelConfig, SeparationModel, model_stft, require_at_least_one

PAPER_N_FFT, PAPER_RATE = 4096, 44100


class ConvolutionModule(nn.Module):
    """``(N, channels, T)`` -> the same: ``depth`` residual layers of GroupNorm, conv to twice the
    compressed width, GLU, depthwise conv, GroupNorm, Swish (SiLU), 1x1 conv back."""

    def __init__(self, channels: int, depth: int, compress: int, kernel: int):
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList(nn.Sequential(
            nn.GroupNorm(1, channels), nn.Conv1d(channels, 2 * hidden, kernel, padding=kernel // 2), nn.GLU(1),
            nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden), nn.GroupNorm(1, hidden), nn.SiLU(),
            nn.Conv1d(hidden, channels, 1)) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def band_bounds(freq: int, low_fraction: float, mid_fraction: float) -> list[tuple[int, int]]:
    """``[start, stop)`` bins of the low, middle and high bands of ``freq`` bins."""
    low = math.ceil(freq * low_fraction)
    mid = math.ceil(freq * (low_fraction + mid_fraction))
    return [(0, low), (low, mid), (mid, freq)]


class SDBlock(nn.Module):
    """Sparse down-sample block: ``(B, in, F, T)`` -> ``(output (B, out, F', T), skip (B, out, F', T),
    band sizes after and before compression)``."""

    def __init__(self, channels_in: int, channels_out: int, strides, kernels, depths, fractions, compress: int,
                 conv_kernel: int):
        super().__init__()
        self.strides, self.kernels, self.fractions = list(strides), list(kernels), fractions
        self.convs = nn.ModuleList(nn.Conv2d(channels_in, channels_out, (k, 1), (s, 1))
                                   for s, k in zip(self.strides, self.kernels))
        self.conv_modules = nn.ModuleList(ConvolutionModule(channels_out, d, compress, conv_kernel) for d in depths)
        self.global_conv = nn.Conv2d(channels_out, channels_out, 3, 1, 1)

    def forward(self, x: torch.Tensor):
        bands, sizes = [], []
        layers = zip(self.convs, self.conv_modules, self.strides, self.kernels, band_bounds(x.shape[2], *self.fractions))
        for conv, module, stride, kernel, (start, stop) in layers:
            band = x[:, :, start:stop]
            sizes.append(stop - start)
            pad = kernel - stride if stride == 1 else (stride - band.shape[2] % stride) % stride
            band = conv(F.pad(band, (0, 0, pad // 2, pad - pad // 2)))
            batch, channels, freq, frames = band.shape
            along_time = module(band.transpose(1, 2).reshape(batch * freq, channels, frames))
            bands.append(F.gelu(along_time.view(batch, freq, channels, frames).transpose(1, 2)))
        skip = torch.cat(bands, dim=2)
        return self.global_conv(skip), skip, [b.shape[2] for b in bands], sizes


class SUBlock(nn.Module):
    """Sparse up-sample block: fusion with the skip, then per band a transposed convolution back to the
    band's bins: ``(B, in, F', T)`` -> ``(B, out, F, T)``."""

    def __init__(self, channels_in: int, channels_out: int, strides, kernels):
        super().__init__()
        self.fusion = nn.Conv2d(2 * channels_in, 2 * channels_in, 3, 1, 1)
        self.convs = nn.ModuleList(nn.ConvTranspose2d(channels_in, channels_out, (k, 1), (s, 1))
                                   for s, k in zip(strides, kernels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, compressed: list[int], sizes: list[int]) -> torch.Tensor:
        # the paper's fusion convolves [x + skip, x + skip] (the sum twice over the channels): the same as
        # convolving the sum once with the two input halves' weights added, at half the work
        weight = self.fusion.weight
        half = weight.shape[1] // 2
        x = F.glu(F.conv2d(x + skip, weight[:, :half] + weight[:, half:], self.fusion.bias,
                           padding=self.fusion.padding), dim=1)
        outputs, start = [], 0
        for conv, width, size in zip(self.convs, compressed, sizes):
            out = conv(x[:, :, start:start + width])
            trim = abs(size - out.shape[2]) // 2
            outputs.append(out[:, :, trim:trim + size])
            start += width
        return torch.cat(outputs, dim=2)


class DualPathLayer(nn.Module):
    """``(B, channels, F, T)`` -> the same: BLSTM across frequency then across time, each pre-normed
    (GroupNorm(1)) with a Linear back to ``channels`` and a residual."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        hidden = channels * expand
        self.lstms = nn.ModuleList(nn.LSTM(channels, hidden, batch_first=True, bidirectional=True) for _ in range(2))
        self.linears = nn.ModuleList(nn.Linear(2 * hidden, channels) for _ in range(2))
        self.norms = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, freq, frames = x.shape
        y = self.norms[0](x).permute(0, 3, 2, 1).reshape(batch * frames, freq, channels)
        y = self.linears[0](self.lstms[0](y)[0]).view(batch, frames, freq, channels).permute(0, 3, 2, 1)
        x = x + y
        y = self.norms[1](x).permute(0, 2, 3, 1).reshape(batch * freq, frames, channels)
        y = self.linears[1](self.lstms[1](y)[0]).view(batch, freq, frames, channels).permute(0, 3, 1, 2)
        return x + y


class SeparationNetwork(nn.Module):
    """``layers`` dual-path layers; after each, features go to the frequency of an FFT over frames (even
    layers: rfft, real and imaginary as channels, twice the channels) or back (odd layers: irfft)."""

    def __init__(self, channels: int, layers: int, expand: int):
        super().__init__()
        self.layers = nn.ModuleList(DualPathLayer(channels * (2 if i % 2 else 1), expand) for i in range(layers))

    @staticmethod
    def convert(x: torch.Tensor, index: int) -> torch.Tensor:
        """The features after dual-path layer ``index``: to the FFT over frames (even) or back (odd)."""
        x = x.float()
        if index % 2 == 0:
            spectrum = torch.fft.rfft(x, dim=3, norm="ortho")
            return torch.cat([spectrum.real, spectrum.imag], dim=1)
        half = x.shape[1] // 2
        return torch.fft.irfft(torch.complex(x[:, :half], x[:, half:]), dim=3, norm="ortho")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = self.convert(layer(x), index)
        return x


@dataclasses.dataclass(frozen=True)
class SCNetConfig(ModelConfig):
    """Options of :class:`SCNet` (see the module docstring)."""

    channels: int = 32          # D_1; D_{i+1} = 2 D_i
    depth: int = 3              # SD/SU blocks
    low_fraction: float = 0.175
    mid_fraction: float = 0.392
    mid_stride: int = 4
    high_stride: int = 16
    low_kernel: int = 3
    mid_kernel: int = 4
    high_kernel: int = 16
    low_convs: int = 3
    mid_convs: int = 2
    high_convs: int = 1
    compress: int = 4
    conv_kernel: int = 3
    dual_path_layers: int = 6
    expand: int = 1
    n_fft: int = 0              # 0: 4096 points at 44.1 kHz, the same duration (as a power of two) elsewhere
    hop_length: int = 0         # 0: n_fft / 4
    window: str = "rectangular"  # the authors' code gives torch.stft no window (rectangular); or "hann"


class SCNet(SeparationModel):
    """SCNet: mixture ``(batch, audio_channels, time)`` -> sources ``(batch, len(sources), audio_channels, time)``."""

    ARCH = "scnet"
    DEFAULTS = SCNetConfig()
    PRESETS = {
        "paper": DEFAULTS,
        "small": dataclasses.replace(DEFAULTS, channels=16, depth=2, dual_path_layers=2),
    }
    DEFAULT_LOSS = "rmse_complex_spec"
    DEFAULT_SEGMENT = 11.0

    def __init__(self, sources, audio_channels: int = 2, sample_rate: int = 44100,
                 config: SCNetConfig | None = None, *, segment: float | None = None):
        super().__init__(sources, audio_channels, sample_rate, config, segment=segment)
        config = self.config
        require_at_least_one(config, ("channels", "depth", "mid_stride", "high_stride", "low_kernel", "mid_kernel",
                                      "high_kernel", "compress", "conv_kernel", "expand"))
        if config.conv_kernel % 2 == 0:
            raise BadInput(f"option conv_kernel must be odd, got {config.conv_kernel}")
        if config.dual_path_layers < 0 or config.dual_path_layers % 2:
            raise BadInput(f"option dual_path_layers must be even (time, then FFT over time), got "
                           f"{config.dual_path_layers}")
        if not (0 < config.low_fraction and 0 < config.mid_fraction and config.low_fraction + config.mid_fraction < 1):
            raise BadInput("options low_fraction and mid_fraction must be positive and sum to less than 1")
        n_fft = config.n_fft or nearest_power_of_two(self.sample_rate * PAPER_N_FFT / PAPER_RATE)
        self.stft = model_stft(n_fft, config.hop_length or n_fft // 4, window=config.window)
        strides = (1, config.mid_stride, config.high_stride)
        kernels = (config.low_kernel, config.mid_kernel, config.high_kernel)
        depths = (config.low_convs, config.mid_convs, config.high_convs)
        fractions = (config.low_fraction, config.mid_fraction)
        dims = [2 * self.audio_channels] + [config.channels * 2 ** i for i in range(config.depth)]
        self.encoder = nn.ModuleList(SDBlock(dims[i], dims[i + 1], strides, kernels, depths, fractions,
                                             config.compress, config.conv_kernel) for i in range(config.depth))
        self.decoder = nn.ModuleList(SUBlock(dims[i + 1], dims[i] * (len(self.sources) if i == 0 else 1), strides,
                                             kernels) for i in reversed(range(config.depth)))
        self.separation = SeparationNetwork(dims[-1], config.dual_path_layers, config.expand)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise BadInput(f"expected a mixture (batch, {self.audio_channels}, time), got {tuple(mix.shape)}")
        batch, channels, length = mix.shape
        hop = self.stft.hop_length
        padding = hop - length % hop
        if (length + padding) // hop % 2 == 0:  # an even number of frames for the FFT over frames
            padding += hop
        spec = torch.view_as_real(self.stft(F.pad(mix, (0, padding)))) / self.stft.norm
        freq, frames = spec.shape[-3:-1]
        x = spec.permute(0, 1, 4, 2, 3).reshape(batch, 2 * channels, freq, frames)
        skips = []
        for block in self.encoder:
            x, skip, compressed, sizes = self.run_block(block, x)
            skips.append((skip, compressed, sizes))
        for index, layer in enumerate(self.separation.layers):
            x = self.separation.convert(self.run_block(layer, x), index)
        for block in self.decoder:
            skip, compressed, sizes = skips.pop()
            x = block(x, skip, compressed, sizes)
        x = x.reshape(batch, len(self.sources), channels, 2, freq, frames).permute(0, 1, 2, 4, 5, 3)
        estimate = torch.view_as_complex((x * self.stft.norm).contiguous())
        return self.stft.inverse(estimate, length + padding)[..., :length]
