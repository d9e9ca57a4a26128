"""HTDemucs: Hybrid Transformer Demucs.

S. Rouard, F. Massa and A. Défossez, "Hybrid Transformers for Music Source Separation",
ICASSP 2023, arXiv:2211.08553.

Shapes for a mixture ``(B, C, L)`` (``S`` sources, ``F = n_fft / 2`` bins, ``T = ceil(L / hop)``
frames with ``hop = n_fft / 4``, ``D_i = channels * growth^i``):

1. spectrogram branch input: the mixture, reflect-padded by ``1.5 hop`` on each side (and up to
   a whole number of hops), normalised complex STFT; the Nyquist bin and the two outer frames on
   each side are dropped, so that frame ``t`` is centred on sample ``t * hop + hop / 2``; real
   and imaginary parts as channels: ``(B, 2C, F, T)``, standardised (one mean and standard
   deviation per example); time branch input: the mixture standardised the same way;
2. two encoders of ``depth`` layers each: a strided convolution (kernel 8, stride 4; along
   frequency only in the spectrogram branch, ``(B, D_i, F / 4^(i+1), T)``; along time in the
   time branch, ``(B, D_i, ceil(L / 4^(i+1)))``), GELU, a residual DConv branch (dilated
   convolutions along time, LayerScale; ``dconv_mode``), a 1x1 convolution and GLU; a learnt
   frequency embedding is added after the first spectrogram layer;
3. cross-domain Transformer encoder at ``bottom_channels`` (1x1 convolutions to and from it; 0
   keeps ``D_{depth-1}``): the spectrogram features as ``F' * T`` tokens with a 2-D sinusoidal
   embedding, the time features as ``L'`` tokens with a 1-D one (each after a LayerNorm); then
   ``t_layers`` layers per branch, self-attention and cross-attention (each branch attends to
   the other's tokens as they entered the layer) alternating; pre-norm, LayerScale and a
   GroupNorm(1) over the whole sequence after each layer as in the paper's configuration;
4. two decoders mirroring the encoders (skip added, a 3x3 / 3-tap convolution and GLU, DConv,
   transposed convolution, GELU but after the last): ``(B, S * 2C, F, T)`` and ``(B, S * C, L)``;
5. output: the time branch plus the inverse STFT of the spectrogram branch (complex as
   channels, no mask and no Wiener filtering), each de-standardised: ``(B, S, C, L)``.

Any length is accepted (the Transformer attends across the whole input, so chunked inference
should use the training segment, as :mod:`mss_tools.apply` does by default). The reference
pads a shorter input up to its training segment at inference (``use_train_segment``); this
model takes the input as it is, like the reference with ``use_train_segment=False``.

Presets: ``paper`` is the released ``htdemucs`` model's configuration (``conf/config.yaml``'s
``htdemucs`` section with the overrides of the paper's experiment grid ``grids/mmi.py``:
``dconv_mode=3`` (DConv in encoders and decoders), ``bottom_channels=512``, ``t_dropout=0.02``;
41,984,456 parameters with 4 sources, stereo); ``small`` for the CPU. At 44.1 kHz the STFT has
4096 points; at other rates the window keeps its duration (as a power of two), the hop is a
quarter of it. The loss is ``l1_wave``, as ``demucs``' training configuration has it (``optim.loss: l1``
on the waveform; Adam, lr 3e-4).

Checked against the authors' ``demucs`` 4.0.1 (``demucs.htdemucs.HTDemucs``) with copied weights
(``tests/test_htdemucs_reference.py``): the parameter count of the ``paper`` preset, its outputs and
those of the ``small`` preset (44.1 kHz stereo, 16 kHz mono) and of the other options, and the
``small`` preset's training gradients. Options of the reference that the paper's
configuration leaves off are not implemented: Wiener filtering or masking instead of complex as
channels, ``multi_freqs``, a separate ``channels_time``, sparse attention, CAPE or scaled
positional embeddings, and depths at which the spectrogram branch collapses to one bin and
merges into the time branch (Hybrid Demucs' layout).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

from mss_tools.dsp.fft_sizes import nearest_power_of_two
from mss_tools.errors import BadInput
from mss_tools.models.base import ModelConfig, SeparationModel, model_stft, require_at_least_one
from mss_tools.models.demucs import rescale_weights

PAPER_N_FFT, PAPER_RATE = 4096, 44100
KERNEL, STRIDE = 8, 4  # every encoder/decoder layer of both branches


class LayerScale(nn.Module):
    """A learnt per-channel gain, started small (``init``); ``channel_dim``: 1 for ``(N, C, T)``,
    -1 for ``(N, T, C)``."""

    def __init__(self, channels: int, init: float, channel_dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(init)))
        self.channel_dim = channel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.scale if self.channel_dim == -1 else self.scale[:, None])


class DConv(nn.Module):
    """Residual branch along time: ``(N, channels, T)`` -> the same. Layer ``i``: a 3-tap conv with
    dilation ``2^i`` to ``channels / compress``, GroupNorm(1), GELU, a 1x1 conv to ``2 * channels``,
    GroupNorm(1), GLU, LayerScale; each added to its input."""

    def __init__(self, channels: int, depth: int, compress: int, init: float):
        super().__init__()
        hidden = channels // compress
        self.layers = nn.ModuleList(nn.Sequential(
            nn.Conv1d(channels, hidden, 3, dilation=2 ** i, padding=2 ** i), nn.GroupNorm(1, hidden), nn.GELU(),
            nn.Conv1d(hidden, 2 * channels, 1), nn.GroupNorm(1, 2 * channels), nn.GLU(1),
            LayerScale(channels, init, channel_dim=1)) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def along_time(module: nn.Module, x: torch.Tensor, freq: bool) -> torch.Tensor:
    """``module`` applied along time: to ``(B, C, L)`` as it is, to ``(B, C, F, T)`` per bin."""
    if not freq:
        return module(x)
    batch, channels, bins, frames = x.shape
    y = module(x.transpose(1, 2).reshape(batch * bins, channels, frames))
    return y.view(batch, bins, channels, frames).transpose(1, 2)


def group_norm(channels: int, groups: int, enabled: bool) -> nn.Module:
    return nn.GroupNorm(groups, channels) if enabled else nn.Identity()


class EncoderLayer(nn.Module):
    """One encoder level. Spectrogram branch (``freq``): ``(B, C_in, F, T)`` -> ``(B, C_out, F / 4, T)``;
    time branch: ``(B, C_in, L)`` -> ``(B, C_out, ceil(L / 4))``."""

    def __init__(self, channels_in: int, channels_out: int, freq: bool, norm: bool, norm_groups: int,
                 dconv: dict | None, rewrite: bool, context: int):
        super().__init__()
        self.freq = freq
        if freq:
            self.conv = nn.Conv2d(channels_in, channels_out, (KERNEL, 1), (STRIDE, 1), (KERNEL // 4, 0))
        else:
            self.conv = nn.Conv1d(channels_in, channels_out, KERNEL, STRIDE, KERNEL // 4)
        self.norm1 = group_norm(channels_out, norm_groups, norm)
        convolution = nn.Conv2d if freq else nn.Conv1d
        self.rewrite = convolution(channels_out, 2 * channels_out, 1 + 2 * context, 1, context) if rewrite else None
        if rewrite:
            self.norm2 = group_norm(2 * channels_out, norm_groups, norm)
        self.dconv = DConv(channels_out, **dconv) if dconv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.freq and x.shape[-1] % STRIDE:
            x = F.pad(x, (0, STRIDE - x.shape[-1] % STRIDE))
        y = F.gelu(self.norm1(self.conv(x)))
        if self.dconv is not None:
            y = along_time(self.dconv, y, self.freq)
        if self.rewrite is not None:
            y = F.glu(self.norm2(self.rewrite(y)), dim=1)
        return y


class DecoderLayer(nn.Module):
    """One decoder level, the mirror of :class:`EncoderLayer`: skip added, ``rewrite`` convolution (3x3 or
    3 taps with ``context=1``) and GLU, DConv, transposed convolution back to ``C_out`` channels and 4
    times the bins (spectrogram branch) or to ``length`` samples (time branch), GELU unless ``last``."""

    def __init__(self, channels_in: int, channels_out: int, freq: bool, last: bool, norm: bool, norm_groups: int,
                 dconv: dict | None, rewrite: bool, context: int):
        super().__init__()
        self.freq, self.last = freq, last
        # KERNEL // 4 outputs are trimmed on each side (4 times the bins, at least 4 times the samples): by the
        # padding, unless a GroupNorm comes first (its statistics include them)
        self.trim = KERNEL // 4 if norm else 0
        padding = KERNEL // 4 - self.trim
        if freq:
            self.conv_tr = nn.ConvTranspose2d(channels_in, channels_out, (KERNEL, 1), (STRIDE, 1), (padding, 0))
        else:
            self.conv_tr = nn.ConvTranspose1d(channels_in, channels_out, KERNEL, STRIDE, padding)
        self.norm2 = group_norm(channels_out, norm_groups, norm)
        convolution = nn.Conv2d if freq else nn.Conv1d
        self.rewrite = convolution(channels_in, 2 * channels_in, 1 + 2 * context, 1, context) if rewrite else None
        if rewrite:
            self.norm1 = group_norm(2 * channels_in, norm_groups, norm)
        self.dconv = DConv(channels_in, **dconv) if dconv else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor, length: int) -> torch.Tensor:
        y = x + skip
        if self.rewrite is not None:
            y = F.glu(self.norm1(self.rewrite(y)), dim=1)
        if self.dconv is not None:
            y = along_time(self.dconv, y, self.freq)
        z = self.norm2(self.conv_tr(y))
        if self.freq and self.trim:
            z = z[..., self.trim:-self.trim, :]
        elif not self.freq and z.shape[-1] > length:
            z = z[..., self.trim:self.trim + length]
        return z if self.last else F.gelu(z)


class FrequencyEmbedding(nn.Module):
    """A learnt embedding per bin, ``(1, channels, bins, 1)``, stored divided by ``scale`` (which speeds up
    its learning by ``scale``); ``smooth``: initialised as a normalised cumulative sum over the bins."""

    def __init__(self, bins: int, channels: int, scale: float, smooth: bool):
        super().__init__()
        weight = torch.randn(bins, channels)
        if smooth:
            weight = weight.cumsum(0) / torch.arange(1, bins + 1).sqrt()[:, None]
        self.weight = nn.Parameter(weight / scale)
        self.scale = scale

    def forward(self) -> torch.Tensor:
        return (self.weight * self.scale).t()[None, :, :, None]


class SequenceGroupNorm(nn.GroupNorm):
    """GroupNorm over tokens ``(B, N, C)`` (with one group: over all tokens and channels of an example)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def token_norm(dim: int, group: bool) -> nn.Module:
    return SequenceGroupNorm(1, dim) if group else nn.LayerNorm(dim)


class Attention(nn.Module):
    """Multi-head attention of ``(B, N, dim)`` queries over themselves or over ``(B, M, dim)`` ``memory``
    (keys and values); the projections are packed as ``nn.MultiheadAttention`` packs them."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # queries, keys and values (B, heads, N, dim / heads) made contiguous: the CPU flash kernel's
        # forward and backward took 3-14 % less time on them than on strided views of the projection
        if memory is None:
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(
                batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4).contiguous()
        else:
            q = F.linear(x, self.in_proj_weight[:dim], self.in_proj_bias[:dim]).view(
                batch, tokens, self.heads, dim // self.heads).transpose(1, 2).contiguous()
            k, v = F.linear(memory, self.in_proj_weight[dim:], self.in_proj_bias[dim:]).view(
                batch, memory.shape[1], 2, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4).contiguous()
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerLayer(nn.Module):
    """Self-attention (``cross=False``) or cross-attention layer over ``(B, N, dim)`` tokens, then a
    feed-forward of ``hidden``; pre-norm (``norm_first``: the memory has its own norm; with ``norm_out``
    a GroupNorm(1) over the whole sequence follows) or post-norm; LayerScale (init 1e-4) on both
    residual branches when ``layer_scale``."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float, cross: bool, norm_first: bool,
                 group_norm: bool, norm_out: bool, layer_scale: bool, gelu: bool):
        super().__init__()
        self.cross, self.norm_first = cross, norm_first
        self.attention = Attention(dim, heads, dropout)
        self.feedforward = nn.Sequential(nn.Linear(dim, hidden), nn.GELU() if gelu else nn.ReLU(), nn.Dropout(dropout),
                                         nn.Linear(hidden, dim))
        self.attention_norm = token_norm(dim, group_norm)
        if cross:
            self.memory_norm = token_norm(dim, group_norm)
        self.feedforward_norm = token_norm(dim, group_norm)
        self.output_norm = SequenceGroupNorm(1, dim) if norm_first and norm_out else nn.Identity()
        self.attention_scale = LayerScale(dim, 1e-4, channel_dim=-1) if layer_scale else nn.Identity()
        self.feedforward_scale = LayerScale(dim, 1e-4, channel_dim=-1) if layer_scale else nn.Identity()
        self.residual_dropout = nn.Dropout(dropout)

    def attend(self, x: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        return self.attention_scale(self.residual_dropout(self.attention(x, memory)))

    def feed(self, x: torch.Tensor) -> torch.Tensor:
        return self.feedforward_scale(self.residual_dropout(self.feedforward(x)))

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            memory = self.memory_norm(memory) if self.cross else None
            x = x + self.attend(self.attention_norm(x), memory)
            return self.output_norm(x + self.feed(self.feedforward_norm(x)))
        x = self.attention_norm(x + self.attend(x, memory))
        # post-norm: the reference's second norm follows the feed-forward (a cross layer's third is unused)
        second = self.memory_norm if self.cross else self.feedforward_norm
        return second(x + self.feed(x))


def sinusoidal_embedding(length: int, dim: int, max_period: float, device) -> torch.Tensor:
    """``(length, dim)``: cosines then sines of ``position / max_period^(i / (dim / 2 - 1))``."""
    half = dim // 2
    periods = max_period ** (torch.arange(half, device=device) / (half - 1))
    phase = torch.arange(length, device=device)[:, None] / periods
    return torch.cat([phase.cos(), phase.sin()], dim=1)


def sinusoidal_embedding_2d(frames: int, bins: int, dim: int, max_period: float, device) -> torch.Tensor:
    """``(frames * bins, dim)``, tokens frame-major: the first half of the channels encodes the frame
    (sine, cosine interleaved), the second half the bin."""
    half = dim // 2
    rates = torch.exp(torch.arange(0.0, half, 2, device=device) * -(math.log(max_period) / half))
    by_frame = torch.arange(0.0, frames, device=device)[:, None] * rates
    by_bin = torch.arange(0.0, bins, device=device)[:, None] * rates
    embedding = torch.empty(frames, bins, dim, device=device)
    embedding[..., 0:half:2] = by_frame.sin()[:, None]
    embedding[..., 1:half:2] = by_frame.cos()[:, None]
    embedding[..., half::2] = by_bin.sin()[None]
    embedding[..., half + 1::2] = by_bin.cos()[None]
    return embedding.view(frames * bins, dim)


class CrossTransformer(nn.Module):
    """Spectrogram features ``(B, dim, F', T)`` and time features ``(B, dim, L')`` -> the same shapes."""

    def __init__(self, dim: int, layers: int, heads: int, hidden: int, dropout: float, norm_in: bool,
                 norm_in_group: bool, group_norm: bool, norm_first: bool, norm_out: bool, layer_scale: bool,
                 gelu: bool, max_period: float, weight_pos_embed: float, cross_first: bool):
        super().__init__()
        self.max_period, self.weight_pos_embed = max_period, weight_pos_embed
        self.cross = [(index % 2 == 0) == cross_first for index in range(layers)]
        norm = (lambda: nn.LayerNorm(dim)) if norm_in else (lambda: SequenceGroupNorm(1, dim)) if norm_in_group else (
            nn.Identity)
        self.norm_in, self.norm_in_t = norm(), norm()
        common = {"dim": dim, "heads": heads, "hidden": hidden, "dropout": dropout, "norm_first": norm_first,
                  "group_norm": group_norm, "norm_out": norm_out, "layer_scale": layer_scale, "gelu": gelu}
        self.layers = nn.ModuleList(TransformerLayer(cross=cross, **common) for cross in self.cross)
        self.layers_t = nn.ModuleList(TransformerLayer(cross=cross, **common) for cross in self.cross)

    def forward(self, x: torch.Tensor, xt: torch.Tensor, run=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``run(block, tokens)``: how a layer is called (activation checkpointing); default ``block(tokens)``."""
        run = run or (lambda block, tokens: block(tokens))
        batch, dim, bins, frames = x.shape
        x = self.norm_in(x.permute(0, 3, 2, 1).reshape(batch, frames * bins, dim))
        x = x + self.weight_pos_embed * sinusoidal_embedding_2d(frames, bins, dim, self.max_period, x.device)
        xt = self.norm_in_t(xt.transpose(1, 2))
        xt = xt + self.weight_pos_embed * sinusoidal_embedding(xt.shape[1], dim, self.max_period, xt.device)
        for layer, layer_t, cross in zip(self.layers, self.layers_t, self.cross, strict=True):
            if cross:
                x, xt = (run(functools.partial(layer, memory=xt), x), run(functools.partial(layer_t, memory=x), xt))
            else:
                x, xt = run(layer, x), run(layer_t, xt)
        return x.view(batch, frames, bins, dim).permute(0, 3, 2, 1), xt.transpose(1, 2)


@dataclasses.dataclass(frozen=True)
class HTDemucsConfig(ModelConfig):
    """Options of :class:`HTDemucs` (see the module docstring; names as the reference's)."""

    channels: int = 48            # D_0; D_{i+1} = growth * D_i
    growth: int = 2
    depth: int = 4                # encoder (and decoder) layers per branch
    n_fft: int = 0                # 0: 4096 points at 44.1 kHz, the same duration (as a power of two) elsewhere
    rewrite: bool = True          # 1x1 (encoder) / context (decoder) convolution and GLU in every layer
    context: int = 1              # decoder rewrite convolution: 1 + 2 * context taps
    context_enc: int = 0
    norm_starts: int = 4          # GroupNorm in layers from this index on (decoders counted from the bottom)
    norm_groups: int = 4
    dconv_mode: int = 3           # DConv branches: 0 none, 1 encoders, 2 decoders, 3 both
    dconv_depth: int = 2
    dconv_compress: int = 8
    dconv_init: float = 1e-3
    freq_emb: float = 0.2         # weight of the frequency embedding (0: none)
    emb_scale: float = 10.0
    emb_smooth: bool = True
    bottom_channels: int = 512    # Transformer width (0: D_{depth-1})
    t_layers: int = 5             # Transformer layers per branch
    t_heads: int = 8
    t_hidden_scale: float = 4.0
    t_dropout: float = 0.02
    t_layer_scale: bool = True
    t_gelu: bool = True
    t_norm_in: bool = True
    t_norm_in_group: bool = False
    t_group_norm: bool = False
    t_norm_first: bool = True
    t_norm_out: bool = True
    t_max_period: float = 10000.0
    t_weight_pos_embed: float = 1.0
    t_cross_first: bool = False
    rescale: float = 0.1          # initial weights of the U-Nets' convolutions rescaled towards this std (0: off)


class HTDemucs(SeparationModel):
    """Hybrid Transformer Demucs: mixture ``(batch, audio_channels, time)`` -> sources
    ``(batch, len(sources), audio_channels, time)``."""

    ARCH = "htdemucs"
    DEFAULTS = HTDemucsConfig()
    PRESETS = {
        "paper": DEFAULTS,
        "small": dataclasses.replace(DEFAULTS, channels=16, depth=3, bottom_channels=128, t_layers=2, t_heads=4,
                                     t_dropout=0.0),
    }
    DEFAULT_LOSS = "l1_wave"
    DEFAULT_SEGMENT = 10.0

    def __init__(self, sources, audio_channels: int = 2, sample_rate: int = 44100,
                 config: HTDemucsConfig | None = None, *, segment: float | None = None):
        super().__init__(sources, audio_channels, sample_rate, config, segment=segment)
        config = self.config
        require_at_least_one(config, ("channels", "growth", "depth", "norm_groups", "dconv_compress", "t_heads"))
        for key in ("context", "context_enc", "norm_starts", "dconv_depth", "bottom_channels", "t_layers"):
            if config[key] < 0:
                raise BadInput(f"option {key} must not be negative, got {config[key]}")
        if config.dconv_mode not in (0, 1, 2, 3):
            raise BadInput(f"option dconv_mode must be 0, 1, 2 or 3, got {config.dconv_mode}")
        if not 0 <= config.t_dropout < 1:
            raise BadInput(f"option t_dropout must be in [0, 1), got {config.t_dropout}")
        n_fft = config.n_fft or nearest_power_of_two(self.sample_rate * PAPER_N_FFT / PAPER_RATE)
        bins = n_fft // 2
        if n_fft % 4 or bins % STRIDE ** config.depth or bins // STRIDE ** (config.depth - 1) <= KERNEL:
            raise BadInput(f"n_fft {n_fft} does not fit depth {config.depth}: the n_fft / 2 bins must divide "
                           f"by {STRIDE}^depth and more than {KERNEL} bins must reach the deepest layer (a larger "
                           "n_fft or a smaller depth)")
        widths = [config.channels * config.growth ** i for i in range(config.depth)]
        if widths[0] // config.dconv_compress < 1 and config.dconv_mode:
            raise BadInput(f"option dconv_compress ({config.dconv_compress}) leaves no channel of {widths[0]} in the "
                           "DConv branches")
        dim = config.bottom_channels or widths[-1]
        if config.t_layers and (dim % 4 or dim % config.t_heads or dim < 8):
            raise BadInput(f"the Transformer width {dim} must be a multiple of 4 and of t_heads ({config.t_heads}), "
                           "and at least 8")
        self.stft = model_stft(n_fft, n_fft // 4)

        sources, channels = len(self.sources), self.audio_channels
        dconv = {"depth": config.dconv_depth, "compress": config.dconv_compress, "init": config.dconv_init}
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        self.tencoder, self.tdecoder = nn.ModuleList(), nn.ModuleList()
        for freq, encoder, decoder, inputs, outputs in (
                (True, self.encoder, self.decoder, 2 * channels, 2 * channels * sources),
                (False, self.tencoder, self.tdecoder, channels, channels * sources)):
            ins = [inputs] + widths[:-1]
            for index, width in enumerate(widths):
                norm = index >= config.norm_starts
                encoder.append(EncoderLayer(ins[index], width, freq, norm, config.norm_groups,
                                            dconv if config.dconv_mode & 1 else None, config.rewrite,
                                            config.context_enc))
                decoder.insert(0, DecoderLayer(width, outputs if index == 0 else ins[index], freq, index == 0, norm,
                                               config.norm_groups, dconv if config.dconv_mode & 2 else None,
                                               config.rewrite, config.context))
        self.freq_emb = (FrequencyEmbedding(bins // STRIDE, widths[0], config.emb_scale, config.emb_smooth)
                         if config.freq_emb else None)
        if config.rescale:
            for module in (self.encoder, self.decoder, self.tencoder, self.tdecoder):
                rescale_weights(module, config.rescale)
        if config.bottom_channels:
            self.channel_upsampler = nn.Conv1d(widths[-1], dim, 1)
            self.channel_downsampler = nn.Conv1d(dim, widths[-1], 1)
            self.channel_upsampler_t = nn.Conv1d(widths[-1], dim, 1)
            self.channel_downsampler_t = nn.Conv1d(dim, widths[-1], 1)
        self.crosstransformer = CrossTransformer(
            dim, config.t_layers, config.t_heads, int(dim * config.t_hidden_scale), config.t_dropout,
            config.t_norm_in, config.t_norm_in_group, config.t_group_norm, config.t_norm_first, config.t_norm_out,
            config.t_layer_scale, config.t_gelu, config.t_max_period, config.t_weight_pos_embed,
            config.t_cross_first) if config.t_layers else None

    def spectrogram(self, mix: torch.Tensor) -> torch.Tensor:
        """``(B, C, L)`` -> normalised complex STFT ``(B, C, F, ceil(L / hop))``: frame ``t`` centred on sample
        ``t * hop + hop / 2``, the Nyquist bin dropped."""
        hop, length = self.stft.hop_length, mix.shape[-1]
        frames = -(-length // hop)
        padded = reflect_pad(mix, hop // 2 * 3, hop // 2 * 3 + frames * hop - length)
        return (self.stft(padded) / self.stft.norm)[..., :-1, 2:2 + frames]

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """The inverse of :meth:`spectrogram`, given an unnormalised spectrogram with the Nyquist bin and two
        frames on each side (zeros) put back: ``(..., F + 1, T + 4)`` -> ``(..., length)``."""
        hop, pad = self.stft.hop_length, self.stft.hop_length // 2 * 3
        return self.stft.inverse(spec, (spec.shape[-1] - 4) * hop + 2 * pad)[..., pad:pad + length]

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise BadInput(f"expected a mixture (batch, {self.audio_channels}, time), got {tuple(mix.shape)}")
        batch, channels, length = mix.shape
        spec = self.spectrogram(mix)
        bins, frames = spec.shape[-2:]
        x = torch.view_as_real(spec).permute(0, 1, 4, 2, 3).reshape(batch, 2 * channels, bins, frames)
        std, mean = torch.std_mean(x, dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        std_t, mean_t = torch.std_mean(mix, dim=(1, 2), keepdim=True)
        xt = (mix - mean_t) / (1e-5 + std_t)

        skips, skips_t, lengths_t = [], [], []
        for index, (encode, encode_t) in enumerate(zip(self.encoder, self.tencoder, strict=True)):
            lengths_t.append(xt.shape[-1])
            xt = self.run_block(encode_t, xt)
            x = self.run_block(encode, x)
            if index == 0 and self.freq_emb is not None:
                x = x + self.config.freq_emb * self.freq_emb()
            skips.append(x)
            skips_t.append(xt)

        if self.crosstransformer is not None:
            if self.config.bottom_channels:
                width, bottom_bins = x.shape[1], x.shape[2]
                x = self.channel_upsampler(x.reshape(batch, width, -1)).view(batch, -1, bottom_bins, frames)
                xt = self.channel_upsampler_t(xt)
            x, xt = self.crosstransformer(x, xt, self.run_block)
            if self.config.bottom_channels:
                x = self.channel_downsampler(x.reshape(batch, x.shape[1], -1)).view(batch, width, bottom_bins, frames)
                xt = self.channel_downsampler_t(xt)

        for decode, decode_t in zip(self.decoder, self.tdecoder, strict=True):
            x = self.run_block(functools.partial(decode, skip=skips.pop(), length=frames), x)
            xt = self.run_block(functools.partial(decode_t, skip=skips_t.pop(), length=lengths_t.pop()), xt)

        sources = len(self.sources)
        norm = self.stft.norm  # back to the unnormalised STFT here rather than in waveform()
        x = torch.addcmul(mean[:, None] * norm, x.view(batch, sources, 2 * channels, bins, frames), std[:, None] * norm)
        x = x.view(batch, sources, channels, 2, bins, frames).permute(0, 1, 2, 4, 5, 3)
        # the Nyquist bin and two frames on each side back as zeros (see spectrogram()), in the copy
        # that makes real and imaginary parts adjacent
        estimate = torch.view_as_complex(F.pad(x, (0, 0, 2, 2, 0, 1)))
        xt = torch.addcmul(mean_t[:, None], xt.view(batch, sources, channels, length), std_t[:, None])
        return xt + self.istft(estimate, length)


def reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding of the last dimension, also of a signal not longer than the padding (zeros are added
    to it first, on the right as far as ``right`` allows, as the reference's ``pad1d`` does)."""
    length = x.shape[-1]
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        extra_right = min(right, extra)
        x = F.pad(x, (extra - extra_right, extra_right))
        left, right = left - (extra - extra_right), right - extra_right
    return F.pad(x, (left, right), mode="reflect")
