"""Layers shared by the RoPE-Transformer band models (:mod:`~mss_tools.models.bs_roformer`,
:mod:`~mss_tools.models.mel_roformer`).

Shapes: ``B`` batch, ``C`` audio channels, ``F`` STFT bins, ``T`` frames, ``K`` bands, ``D``
feature size, ``H`` heads of ``E`` features.

- :class:`RMSNorm`: ``x / ||x|| * sqrt(D) * gamma`` over the last dimension.
- :class:`RotaryEmbedding`: rotary position embedding (Su et al., RoFormer) of interleaved
  feature pairs, positions 0, 1, ... along the sequence, frequencies ``theta ** (-2i / E)``.
- :class:`Attention`: pre-norm multi-head self-attention through
  ``torch.nn.functional.scaled_dot_product_attention`` (a GPU's fused kernels), RoPE on queries
  and keys, optionally a sigmoid gate per head and position (as the reference implementation,
  ``bs-roformer``, has).
- :class:`Transformer`: ``depth`` x (attention + residual, feed-forward + residual), optionally
  RMSNorm at the end.
- :class:`AxialRoFormer`: ``depth`` x (a Transformer across frames within each band, then one
  across bands within each frame) on features ``(B, T, K, D)``.
- :class:`BandProjection` / :class:`BandMaskEstimator`: per band, the (real, imaginary) values of
  its bins and channels -> ``D`` features (RMSNorm, Linear), and ``D`` features -> complex mask
  values (MLP with Tanh, GLU).

The layers follow the BS-RoFormer paper (Lu et al., arXiv:2309.02612) and, where the paper
leaves a detail open, the reference implementation: parameter names and shapes are such that
its weights map one to one (``tests/test_roformer_reference.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    """``(..., D)`` -> ``(..., D)``: unit L2 norm times ``sqrt(D)`` and a learnt gain per feature."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class RotaryEmbedding(nn.Module):
    """Rotate queries or keys ``(..., N, E)`` by position: pair ``(x[2i], x[2i+1])`` of position ``n``
    turns by ``n * theta ** (-2i / E)``. No parameters."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary embedding needs an even size, got {dim}")
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[-2], device=x.device, dtype=self.inv_freq.dtype)
        angles = torch.outer(positions, self.inv_freq)
        turns = torch.polar(torch.ones_like(angles), angles)
        # each pair as one complex number x[2i] + j x[2i+1]: the rotation is one complex product
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * turns).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """``(batch, N, D)`` -> ``(batch, N, D)``: RMSNorm, multi-head attention with RoPE, optional
    per-head sigmoid gates, output projection (the residual is added by :class:`Transformer`)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float, gates: bool):
        super().__init__()
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_gates = nn.Linear(dim, heads) if gates else None
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, rotary: RotaryEmbedding) -> torch.Tensor:
        x = self.norm(x)
        q, k, v = self.to_qkv(x).unflatten(-1, (3, self.heads, self.dim_head)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(rotary(q), rotary(k), v,
                                             dropout_p=self.dropout if self.training else 0.0)
        if self.to_gates is not None:
            out = out * self.to_gates(x).sigmoid().transpose(1, 2).unsqueeze(-1)
        return self.to_out(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    """``(..., D)`` -> ``(..., D)``: RMSNorm, Linear to ``mult * D``, GELU, Linear back (dropout after each)."""

    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__(RMSNorm(dim), nn.Linear(dim, mult * dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(mult * dim, dim), nn.Dropout(dropout))


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int, attn_dropout: float, ff_dropout: float,
                 gates: bool):
        super().__init__()
        self.attention = Attention(dim, heads, dim_head, attn_dropout, gates)
        self.feed_forward = FeedForward(dim, ff_mult, ff_dropout)

    def forward(self, x: torch.Tensor, rotary: RotaryEmbedding) -> torch.Tensor:
        x = self.attention(x, rotary) + x
        return self.feed_forward(x) + x


class Transformer(nn.Module):
    """``depth`` pre-norm layers over sequences ``(batch, N, D)``, optionally an RMSNorm at the end."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int, attn_dropout: float,
                 ff_dropout: float, gates: bool, norm_output: bool):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, dim_head, ff_mult, attn_dropout, ff_dropout, gates)
                                    for _ in range(depth))
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: torch.Tensor, rotary: RotaryEmbedding) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, rotary)
        return self.norm(x)


class AxialBlock(nn.Module):
    """``(B, T, K, D)`` -> the same: a Transformer across frames (each band a sequence of ``T``), then one
    across bands (each frame a sequence of ``K``)."""

    def __init__(self, time: Transformer, band: Transformer, time_rotary: RotaryEmbedding,
                 band_rotary: RotaryEmbedding):
        super().__init__()
        self.time, self.band = time, band
        self.rotary = (time_rotary, band_rotary)  # shared by every block, no parameters: not registered here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, bands, dim = x.shape
        x = self.time(x.transpose(1, 2).reshape(batch * bands, frames, dim), self.rotary[0])
        x = x.reshape(batch, bands, frames, dim).transpose(1, 2).reshape(batch * frames, bands, dim)
        return self.band(x, self.rotary[1]).reshape(batch, frames, bands, dim)


class AxialRoFormer(nn.Module):
    """``depth`` :class:`AxialBlock` s on ``(B, T, K, D)``, each Transformer ``time_depth`` /
    ``band_depth`` layers deep; one rotary embedding for time, one for bands, shared by every block."""

    def __init__(self, dim: int, depth: int, time_depth: int, band_depth: int, heads: int, dim_head: int,
                 ff_mult: int, attn_dropout: float, ff_dropout: float, gates: bool, norm_output: bool):
        super().__init__()
        self.time_rotary = RotaryEmbedding(dim_head)
        self.band_rotary = RotaryEmbedding(dim_head)

        def transformer(layers: int) -> Transformer:
            return Transformer(dim, layers, heads, dim_head, ff_mult, attn_dropout, ff_dropout, gates, norm_output)

        self.blocks = nn.ModuleList(AxialBlock(transformer(time_depth), transformer(band_depth), self.time_rotary,
                                               self.band_rotary) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class BandProjection(nn.Module):
    """Band inputs ``(B, T, sum(widths))`` (each band's ``widths[k]`` values side by side) -> features
    ``(B, T, K, D)``: per band RMSNorm and Linear(widths[k], D)."""

    def __init__(self, widths: Sequence[int], dim: int):
        super().__init__()
        self.widths = list(widths)
        self.bands = nn.ModuleList(nn.Sequential(RMSNorm(width), nn.Linear(width, dim)) for width in self.widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([band(part) for band, part in zip(self.bands, x.split(self.widths, dim=-1))], dim=-2)


class BandMaskEstimator(nn.Module):
    """Features ``(B, T, K, D)`` -> mask values ``(B, T, sum(widths))``: per band an MLP, ``hidden_layers``
    x (Linear, Tanh) at ``hidden`` features, then Linear to ``2 * widths[k]`` and a GLU."""

    def __init__(self, widths: Sequence[int], dim: int, hidden: int, hidden_layers: int):
        super().__init__()

        def mlp(width: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            size = dim
            for _ in range(hidden_layers):
                layers += [nn.Linear(size, hidden), nn.Tanh()]
                size = hidden
            return nn.Sequential(*layers, nn.Linear(size, 2 * width), nn.GLU(dim=-1))

        self.bands = nn.ModuleList(mlp(width) for width in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([band(features) for band, features in zip(self.bands, x.unbind(dim=-2))], dim=-1)


def interleave_bins(spec: torch.Tensor) -> torch.Tensor:
    """Complex ``(B, C, F, T)`` -> real ``(B, T, F * C * 2)``, ordered (bin, channel, real/imaginary): the
    values of a run of bins are then contiguous, whatever the channel count."""
    batch, channels, freq, frames = spec.shape
    return torch.view_as_real(spec).permute(0, 3, 2, 1, 4).reshape(batch, frames, freq * channels * 2)


def deinterleave_mask(values: torch.Tensor, channels: int) -> torch.Tensor:
    """Real ``(..., T, F * C * 2)`` ordered as :func:`interleave_bins` -> complex ``(..., C, F, T)``."""
    *lead, frames, size = values.shape
    mask = values.reshape(*lead, frames, size // (2 * channels), channels, 2)
    return torch.view_as_complex(mask.contiguous()).permute(*range(len(lead)), -1, -2, -3)
