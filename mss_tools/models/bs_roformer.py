"""Band-Split RoPE Transformer (BS-RoFormer).

W.-T. Lu, J.-C. Wang, Q. Kong and Y.-N. Hung, "Music Source Separation with Band-Split RoPE
Transformer", arXiv:2309.02612 (2023).

Pipeline for a mixture ``(B, C, L)`` (``F = n_fft // 2 + 1`` bins, ``T`` frames, ``K`` bands,
feature size ``D``; layers in :mod:`~mss_tools.models.roformer`):

1. complex STFT ``(B, C, F, T)``, the bins of every frame ordered (bin, channel, real/imaginary)
   so that a band's values are contiguous: ``(B, T, 2 * C * F)``;
2. band split: the ``F`` bins are cut into ``K`` non-overlapping bands (62 at
   44.1 kHz with a 2048-point STFT: 24 bands of 2 bins, 12 of 4, 8 of 12, 8 of 24, 8 of 48, then
   128 and 129 bins); each band's ``2 * C * G_k`` values -> RMSNorm -> Linear to ``D``:
   ``(B, T, K, D)``;
3. ``depth`` axial RoPE-Transformer blocks: a Transformer across frames within each band,
   then one across bands within each frame (``time_depth``/``band_depth`` layers each; pre-norm
   attention with rotary embeddings on queries and keys, per-head sigmoid output gates as in
   the reference implementation, feed-forward of ``ff_mult * D``), then an RMSNorm;
4. per source and band, an MLP (``mask_hidden_layers`` x Linear/Tanh at ``mask_mult * D``, then
   Linear to twice the band's values and a GLU) gives a complex mask for each bin and channel;
5. mask times mixture spectrogram, inverse STFT: ``(B, S, C, L)``.

Presets: ``paper`` is D = 384, 12 blocks of one time and one band Transformer layer, 8 heads of
64, a 2048-point STFT with a 10 ms hop and a mask MLP with one hidden layer of 4D (the large
configuration community trainings use; not checked against the paper's text here); ``small`` is a
CPU configuration. The 62 bands are those of the reference implementation (``bs-roformer``'s
default split); at other sample rates and STFT sizes their edges are kept in Hz (see
:func:`paper_band_widths`). The loss is the reference implementation's, ``l1_multires_stft``
(waveform L1 plus multi-resolution complex STFT L1).

Global context: attention across all frames of the chunk the model is given, so chunked
inference differs from whole-track inference; separate in chunks of the training segment.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import torch

from mss_tools.dsp import model_n_fft
from mss_tools.errors import BadInput
from mss_tools.models.base import ModelConfig, SeparationModel, model_stft, require_at_least_one
from mss_tools.models.roformer import (AxialRoFormer, BandMaskEstimator, BandProjection, RMSNorm, deinterleave_mask,
                                       interleave_bins)

# The paper's band widths in bins of a 2048-point STFT at 44.1 kHz: 62 bands covering all 1025 bins.
PAPER_BINS_PER_BAND = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
PAPER_RATE, PAPER_N_FFT = 44100, 2048


def paper_band_widths(sample_rate: int, n_fft: int) -> list[int]:
    """The paper's bands for an ``n_fft``-point STFT at ``sample_rate``: widths in bins, summing to
    ``n_fft // 2 + 1``. A band starts at the first bin at or above the paper band's lower edge in Hz;
    bands left without a bin (low resolution) merge into the next; above Nyquist they are dropped.
    The paper's exact widths at 44.1 kHz and 2048 points."""
    n_freq = n_fft // 2 + 1
    starts, edge = [], 0
    for width in PAPER_BINS_PER_BAND:
        start = -(-Fraction(edge * PAPER_RATE, PAPER_N_FFT) * n_fft // sample_rate)  # ceil, exactly
        if start < n_freq and (not starts or start > starts[-1]):
            starts.append(int(start))
        edge += width
    return [b - a for a, b in zip(starts, starts[1:] + [n_freq])]


@dataclasses.dataclass(frozen=True)
class BSRoFormerConfig(ModelConfig):
    """Options of :class:`BSRoFormer` (see the module docstring)."""

    dim: int = 384
    depth: int = 12
    time_depth: int = 1
    band_depth: int = 1
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    gates: bool = True
    mask_mult: int = 4
    mask_hidden_layers: int = 1
    n_fft: int = 0          # 0: the paper's 46 ms window as a power of two (2048 at 44.1 kHz)
    hop_length: int = 0     # 0: 10 ms (441 at 44.1 kHz)


class BSRoFormer(SeparationModel):
    """Band-Split RoPE Transformer: mixture ``(batch, audio_channels, time)`` -> sources
    ``(batch, len(sources), audio_channels, time)``; one mask estimator per source."""

    ARCH = "bs_roformer"
    DEFAULTS = BSRoFormerConfig()
    PRESETS = {
        "paper": DEFAULTS,
        "small": dataclasses.replace(DEFAULTS, dim=32, depth=2, heads=2, dim_head=16, ff_mult=2, mask_mult=2),
    }
    DEFAULT_LOSS = "l1_multires_stft"
    DEFAULT_SEGMENT = 8.0
    NORM_EACH_TRANSFORMER = False  # BS-RoFormer: one RMSNorm after the last block

    def __init__(self, sources, audio_channels: int = 2, sample_rate: int = 44100,
                 config: BSRoFormerConfig | None = None, *, segment: float | None = None):
        super().__init__(sources, audio_channels, sample_rate, config, segment=segment)
        config = self.config
        require_at_least_one(config, ("dim", "depth", "time_depth", "band_depth", "heads", "dim_head", "ff_mult",
                                      "mask_mult"))
        if config.dim_head % 2:
            raise BadInput(f"option dim_head must be even (rotary embedding pairs), got {config.dim_head}")
        if config.mask_hidden_layers < 0 or config.n_fft < 0 or config.hop_length < 0:
            raise BadInput("options mask_hidden_layers, n_fft and hop_length must not be negative")
        n_fft = config.n_fft or model_n_fft(self.sample_rate)
        hop_length = config.hop_length or max(1, round(0.01 * self.sample_rate))
        self.stft = model_stft(n_fft, hop_length)
        self.band_widths = self.make_bands()
        values = [2 * self.audio_channels * width for width in self.band_widths]
        self.roformer = AxialRoFormer(config.dim, config.depth, config.time_depth, config.band_depth, config.heads,
                                      config.dim_head, config.ff_mult, config.attn_dropout, config.ff_dropout,
                                      config.gates, norm_output=self.NORM_EACH_TRANSFORMER)
        self.final_norm = torch.nn.Identity() if self.NORM_EACH_TRANSFORMER else RMSNorm(config.dim)
        self.band_split = BandProjection(values, config.dim)
        self.mask_estimators = torch.nn.ModuleList(
            BandMaskEstimator(values, config.dim, config.mask_mult * config.dim, config.mask_hidden_layers)
            for _ in self.sources)

    def make_bands(self) -> list[int]:
        """Widths in bins of the bands (non-overlapping, covering every bin in order)."""
        return paper_band_widths(self.sample_rate, self.stft.n_fft)

    def band_values(self, spec: torch.Tensor) -> torch.Tensor:
        """Spectrogram ``(B, C, F, T)`` complex -> the bands' values side by side, each band's
        interleaved (bin, channel, real/imaginary): ``(B, T, sum)``."""
        return interleave_bins(spec)

    def bin_masks(self, banded: torch.Tensor, channels: int) -> torch.Tensor:
        """The bands' mask values ``(B, S, T, sum)`` -> complex masks ``(B, S, C, F, T)``."""
        return deinterleave_mask(banded, channels)

    def estimate_masks(self, spec: torch.Tensor) -> torch.Tensor:
        """Mixture spectrogram ``(B, C, F, T)`` complex -> masks ``(B, S, C, F, T)`` complex."""
        features = self.band_split(self.band_values(spec))
        for block in self.roformer.blocks:
            features = self.run_block(block, features)
        features = self.final_norm(features)
        banded = torch.stack([estimator(features) for estimator in self.mask_estimators], dim=1)
        return self.bin_masks(banded, spec.shape[1])

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise BadInput(f"expected a mixture (batch, {self.audio_channels}, time), got {tuple(mix.shape)}")
        spec = self.stft(mix)
        return self.stft.inverse(spec.unsqueeze(1) * self.estimate_masks(spec), mix.shape[-1])
