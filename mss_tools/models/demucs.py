"""Waveform-domain Demucs with a BiLSTM or a Transformer bottleneck.

The backbone follows Demucs v2 (Défossez, Usunier, Bottou, Bach, "Music Source
Separation in the Waveform Domain", arXiv:1911.13254): a convolutional U-Net on the raw
waveform whose encoder blocks are ``Conv1d(K=8, S=4) -> ReLU -> Conv1d(1x1) -> GLU`` and
whose decoder blocks are ``Conv1d(context) -> GLU -> ConvTranspose1d(K=8, S=4) -> ReLU``,
with additive skip connections and the mixture normalised by its mean and standard
deviation. Two differences from the published model: the input is not upsampled x2
before the encoder, and the decoder's rewrite convolution uses "same" padding, so the
skip connections align without trimming.

- :class:`DemucsLSTM`: the v2 bottleneck, a 2-layer bidirectional LSTM over time followed
  by a linear layer back to the channel count.
- :class:`DemucsAttention`: a Transformer encoder (pre-norm multi-head self-attention with
  sinusoidal positions) at the bottleneck, for a receptive field spanning the whole input.
  Its feed-forward width is sized to match demucs_lstm: with the same backbone and the same
  number of bottleneck layers (2), the two models have the same parameter count to within
  0.04 % at every preset, so a comparison of the two measures the bottleneck, not the size.

Both map ``(batch, audio_channels, time)`` to ``(batch, len(sources), audio_channels, time)``
for any ``time``.
"""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mss_tools.errors import BadInput
from mss_tools.models.base import ModelConfig, SeparationModel


@dataclasses.dataclass(frozen=True)
class DemucsConfig(ModelConfig):
    """Options of the backbone both variants share."""

    channels: int = 64
    growth: float = 2.0
    depth: int = 6
    kernel_size: int = 8
    stride: int = 4
    context: int = 3
    rescale: float = 0.1
    normalize: bool = True


@dataclasses.dataclass(frozen=True)
class DemucsLSTMConfig(DemucsConfig):
    lstm_layers: int = 2


# Feed-forward width (times the bottleneck channels d) that gives 2 Transformer layers the
# parameters of Demucs v2's 2-layer BiLSTM bottleneck: the BiLSTM has 2 directions x 4 gates x
# (d x 2d inputs of layer 1 + d x 3d of layer 2) + a 2d -> d linear = 42 d^2 weights; a
# Transformer layer has 4 d^2 (attention) + 2 * ff * d^2 (feed-forward), so 2 (4 + 2 ff) = 42.
ATTN_FF_MATCHING_LSTM = 8.5


@dataclasses.dataclass(frozen=True)
class DemucsAttentionConfig(DemucsConfig):
    """Options of :class:`DemucsAttention`; ``attn_ff`` is sized to match demucs_lstm (see
    :data:`ATTN_FF_MATCHING_LSTM`). Checkpoints store ``attn_ff``, so those of the former
    default 4.0 keep their size and outputs.

    ``attn_final_norm``: a layer norm after the last layer, as pre-norm Transformer stacks end
    (see :class:`TransformerBottleneck`). ``LEGACY``: the models written before it had none.
    """

    attn_layers: int = 2
    attn_heads: int = 8
    attn_ff: float = ATTN_FF_MATCHING_LSTM
    attn_dropout: float = 0.0
    attn_final_norm: bool = True

    LEGACY: ClassVar[Mapping[str, Any]] = MappingProxyType({"attn_final_norm": False})


def rescale_weights(module: nn.Module, reference: float) -> None:
    """Demucs' init (v2, HTDemucs): divide each convolution's weight and bias by ``sqrt(std(weight) / reference)``."""
    for sub in module.modules():
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            scale = (sub.weight.detach().std() / reference) ** 0.5
            with torch.no_grad():
                sub.weight.div_(scale)
                if sub.bias is not None:
                    sub.bias.div_(scale)


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None, max_period: float = 10000.0) -> torch.Tensor:
    """Fixed positional embedding of shape ``(length, dim)`` (``dim`` even): cosines then sines."""
    half = dim // 2
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * (-math.log(max_period) / half))
    phase = position * frequency[None, :]
    return torch.cat([phase.cos(), phase.sin()], dim=1).to(dtype)


class BLSTMBottleneck(nn.Module):
    """Bidirectional LSTM over time then a linear layer: ``(batch, dim, steps)`` to the same shape."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers=layers, bidirectional=True)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x.permute(2, 0, 1))
        return self.linear(y).permute(1, 2, 0)


class TransformerBottleneck(nn.Module):
    """Layer norm, sinusoidal positions, pre-norm Transformer encoder layers, then (``final_norm``)
    a layer norm.

    ``(batch, dim, steps)`` to the same shape; every output step attends to every input step.
    Pre-norm layers only add to their input, so without the final norm the output is the
    unnormalised residual stream, positions included at full scale, and it replaces the
    bottleneck's input in the decoder: trained with the demo budget, demucs_attn then fitted the
    training mixtures worse than demucs_lstm (final train loss 0.0268 against 0.0195) and scored
    2.0 dB on drums; with the final norm, 0.0176 and 4.3 dB (see the README's notes on the compared pairs).
    """

    def __init__(self, dim: int, layers: int, heads: int, ff_mult: float, dropout: float, final_norm: bool = True):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=int(round(ff_mult * dim)), dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.norm_out = nn.LayerNorm(dim) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_in(x.transpose(1, 2))
        y = y + sinusoidal_positions(y.shape[1], y.shape[2], y.device, y.dtype)
        for layer in self.layers:
            y = layer(y)
        return self.norm_out(y).transpose(1, 2)


class DemucsBackbone(SeparationModel):
    """Demucs v2 U-Net on waveforms; subclasses choose the bottleneck (arXiv:1911.13254).

    ``forward(mix)``: ``(batch, audio_channels, time)`` -> ``(batch, len(sources), audio_channels, time)``.
    The mixture is normalised by the mean and standard deviation of its mono downmix (when
    ``normalize``), padded on both sides to :meth:`valid_length`, separated, cropped back
    and denormalised. Encoder level ``i`` has ``channels * growth**i`` channels; the
    bottleneck works on ``(batch, bottleneck_channels, steps)``.
    """

    DEFAULT_LOSS = "l1_wave"
    DEFAULT_SEGMENT = 6.0

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100,
                 config: DemucsConfig | None = None, *, segment: float | None = None):
        super().__init__(sources, audio_channels, sample_rate, config, segment=segment)
        config = self.config
        self.depth = config.depth
        self.kernel_size = config.kernel_size
        self.stride = config.stride
        self.normalize = config.normalize
        channels, growth, context = config.channels, config.growth, config.context
        if self.audio_channels < 1:
            raise BadInput("audio_channels must be at least 1")
        if channels < 1 or self.depth < 1 or growth <= 0:
            raise BadInput("channels and depth must be at least 1 and growth positive")
        if not 1 <= self.stride <= self.kernel_size:
            raise BadInput(f"need 1 <= stride <= kernel_size, got stride {self.stride}, kernel_size {self.kernel_size}")
        if context < 1 or context % 2 == 0:
            raise BadInput(f"context (kernel of the decoder's rewrite convolution) must be odd, got {context}")

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        in_channels = self.audio_channels
        for index in range(self.depth):
            self.encoder.append(nn.Sequential(
                nn.Conv1d(in_channels, channels, self.kernel_size, self.stride),
                nn.ReLU(inplace=True),
                nn.Conv1d(channels, 2 * channels, 1),
                nn.GLU(dim=1),
            ))
            out_channels = in_channels if index > 0 else len(self.sources) * self.audio_channels
            decode = [
                nn.Conv1d(channels, 2 * channels, context, padding=context // 2),
                nn.GLU(dim=1),
                nn.ConvTranspose1d(channels, out_channels, self.kernel_size, self.stride),
            ]
            if index > 0:
                decode.append(nn.ReLU(inplace=True))
            self.decoder.insert(0, nn.Sequential(*decode))
            in_channels = channels
            channels = int(growth * channels)
            if channels < 1 and index < self.depth - 1:
                raise BadInput(f"growth {growth} leaves no channels at encoder level {index + 1}")
        self.bottleneck_channels = in_channels
        self.bottleneck = self.make_bottleneck(in_channels, config)
        if config.rescale:
            rescale_weights(self, config.rescale)

    def make_bottleneck(self, channels: int, config: DemucsConfig) -> nn.Module:
        """The module mapping ``(batch, channels, steps)`` to the same shape at the deepest level."""
        raise NotImplementedError

    def valid_length(self, length: int) -> int:
        """Smallest length >= ``length`` that every strided convolution consumes without remainder."""
        for _ in range(self.depth):
            length = max(1, math.ceil((length - self.kernel_size) / self.stride) + 1)
        for _ in range(self.depth):
            length = (length - 1) * self.stride + self.kernel_size
        return length

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise BadInput(f"expected a mixture of shape (batch, {self.audio_channels}, time), got {tuple(mix.shape)}")
        length = mix.shape[-1]
        x = mix
        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)
            mean = mono.mean(dim=-1, keepdim=True)
            std = mono.std(dim=-1, keepdim=True, correction=0)
            x = (x - mean) / (std + 1e-5)
        delta = self.valid_length(length) - length
        left = delta // 2
        x = F.pad(x, (left, delta - left))

        skips = []
        for encode in self.encoder:
            x = self.run_block(encode, x)
            skips.append(x)
        x = self.run_block(self.bottleneck, x)
        for decode in self.decoder:
            x = self.run_block(decode, x + skips.pop())

        x = x[..., left:left + length]
        if self.normalize:
            x = x * std + mean
        return x.reshape(x.shape[0], len(self.sources), self.audio_channels, length)


class DemucsLSTM(DemucsBackbone):
    """Demucs v2 (arXiv:1911.13254) with its bidirectional-LSTM bottleneck.

    ``(batch, audio_channels, time)`` -> ``(batch, len(sources), audio_channels, time)``.
    Options: see :class:`DemucsLSTMConfig`; ``lstm_layers`` = 0 leaves the bottleneck empty.
    """

    ARCH = "demucs_lstm"
    DEFAULTS = DemucsLSTMConfig()
    PRESETS = {
        "paper": dataclasses.replace(DEFAULTS, channels=64, depth=6, lstm_layers=2),
        "small": dataclasses.replace(DEFAULTS, channels=16, depth=5, lstm_layers=2),
    }

    def make_bottleneck(self, channels: int, config: DemucsLSTMConfig) -> nn.Module:
        if config.lstm_layers < 0:
            raise BadInput("lstm_layers must be >= 0")
        if config.lstm_layers == 0:
            return nn.Identity()
        return BLSTMBottleneck(channels, config.lstm_layers)


class DemucsAttention(DemucsBackbone):
    """Demucs v2 backbone (arXiv:1911.13254) with a Transformer-encoder bottleneck.

    ``(batch, audio_channels, time)`` -> ``(batch, len(sources), audio_channels, time)``.
    The bottleneck (``attn_layers`` pre-norm layers of ``attn_heads`` heads, feed-forward
    width ``attn_ff`` times the bottleneck channels, sinusoidal positions) gives every
    output sample a receptive field covering the whole input window.

    Sized to match demucs_lstm: two layers, as the BiLSTM has, and ``attn_ff`` = 8.5 (rather
    than the usual 4) so that the bottleneck has the BiLSTM's 42 d^2 weights; every preset is
    then within 0.04 % of :class:`DemucsLSTM`'s count (paper: 265,691,784 against
    265,679,496; small: 4,161,192 against 4,159,656). With ``attn_ff`` = 4 it had 28 % fewer
    parameters (190.2 M at the paper preset). Changing ``attn_layers`` or ``lstm_layers``
    undoes the match.
    """

    ARCH = "demucs_attn"
    DEFAULTS = DemucsAttentionConfig()
    PRESETS = {
        "paper": dataclasses.replace(DEFAULTS, channels=64, depth=6, attn_layers=2, attn_heads=8),
        "small": dataclasses.replace(DEFAULTS, channels=16, depth=5, attn_layers=2, attn_heads=8),
    }

    def make_bottleneck(self, channels: int, config: DemucsAttentionConfig) -> nn.Module:
        layers, heads = config.attn_layers, config.attn_heads
        if layers < 0 or heads < 1 or config.attn_ff <= 0 or not 0 <= config.attn_dropout < 1:
            raise BadInput("need attn_layers >= 0, attn_heads >= 1, attn_ff > 0 and 0 <= attn_dropout < 1")
        if channels % heads or channels % 2:
            raise BadInput(f"bottleneck channels ({channels}) must be even and divisible by attn_heads ({heads})")
        return TransformerBottleneck(channels, layers, heads, config.attn_ff, config.attn_dropout,
                                     config.attn_final_norm)
