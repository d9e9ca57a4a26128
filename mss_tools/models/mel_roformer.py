"""Mel-Band RoPE Transformer (Mel-RoFormer).

J.-C. Wang, W.-T. Lu and M. Won, "Mel-Band RoFormer for Music Source Separation",
arXiv:2310.01809 (2023).

BS-RoFormer (:mod:`~mss_tools.models.bs_roformer`) with another band split: ``num_bands``
overlapping bands that follow the mel scale. Band ``k`` holds every STFT bin where the ``k``-th
triangular filter of a Slaney-style mel filter bank (0 Hz to Nyquist, ``num_bands`` filters)
is positive; the first bin joins the first band and the last bin the last band, so every bin is
covered, most by two bands. For a mixture ``(B, C, L)``:

1. complex STFT ``(B, C, F, T)``, bins ordered (bin, channel, real/imaginary);
2. each band gathers its bins' ``2 * C * G_k`` values -> RMSNorm -> Linear to ``D``: ``(B, T, K, D)``;
3. ``depth`` axial RoPE-Transformer blocks (across frames, then across bands), each Transformer
   ending with an RMSNorm (as the reference implementation has it);
4. per source and band an MLP gives complex mask values for the band's bins; a bin covered by
   several bands gets the average of their estimates;
5. mask times mixture spectrogram, inverse STFT: ``(B, S, C, L)``.

Presets: ``paper`` (D = 384, 6 blocks, 60 bands, 8 heads of 64, 2048-point STFT with a 10 ms hop,
mask MLP with one hidden layer of 4D, dropout 0.1: a choice, the paper's depth was not checked here)
and ``small`` for the CPU (no dropout: minutes of training do not overfit). The loss is
``l1_multires_stft``. Global context as in BS-RoFormer: separate in chunks of the training segment.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from mss_tools.errors import BadInput
from mss_tools.models.bs_roformer import BSRoFormer, BSRoFormerConfig
from mss_tools.models.roformer import deinterleave_mask, interleave_bins

_MEL_BREAK_HZ, _MEL_LINEAR_HZ = 1000.0, 200.0 / 3  # Slaney: linear below 1 kHz (200/3 Hz per mel), log above
_MEL_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (the Auditory Toolbox's, librosa's default)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _MEL_LINEAR_HZ
    log = _MEL_BREAK_HZ / _MEL_LINEAR_HZ + np.log(np.maximum(hz, 1e-300) / _MEL_BREAK_HZ) / _MEL_LOG_STEP
    return np.where(hz >= _MEL_BREAK_HZ, log, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    break_mel = _MEL_BREAK_HZ / _MEL_LINEAR_HZ
    return np.where(mel >= break_mel, _MEL_BREAK_HZ * np.exp(_MEL_LOG_STEP * (mel - break_mel)), mel * _MEL_LINEAR_HZ)


def mel_band_bins(sample_rate: int, n_fft: int, num_bands: int) -> list[np.ndarray]:
    """The STFT bins (ascending indices) of each of ``num_bands`` overlapping mel bands: where the band's
    triangular filter (edges at ``num_bands + 2`` points equally spaced in mel from 0 Hz to Nyquist) is
    positive; bin 0 is added to the first band and the last bin to the last."""
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), num_bands + 2))
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    bands = []
    for k in range(num_bands):
        weight = np.maximum(0.0, np.minimum(-ramps[k] / widths[k], ramps[k + 2] / widths[k + 1]))
        # librosa stores the (positively normalised) weights as float32: what is positive there is positive here
        inside = weight.astype(np.float32) > 0
        if k == 0:
            inside[0] = True
        if k == num_bands - 1:
            inside[-1] = True
        bands.append(np.flatnonzero(inside))
    return bands


@dataclasses.dataclass(frozen=True)
class MelRoFormerConfig(BSRoFormerConfig):
    """:class:`~mss_tools.models.bs_roformer.BSRoFormerConfig`'s options and ``num_bands``."""

    depth: int = 6
    num_bands: int = 60
    attn_dropout: float = 0.1
    ff_dropout: float = 0.1


class MelRoFormer(BSRoFormer):
    """Mel-Band RoFormer: mixture ``(batch, audio_channels, time)`` -> sources
    ``(batch, len(sources), audio_channels, time)``; overlapping mel bands, averaged masks."""

    ARCH = "mel_roformer"
    DEFAULTS = MelRoFormerConfig()
    PRESETS = {
        "paper": DEFAULTS,
        "small": dataclasses.replace(DEFAULTS, dim=32, depth=2, heads=2, dim_head=16, ff_mult=2, mask_mult=2,
                                     num_bands=24, attn_dropout=0.0, ff_dropout=0.0),
    }
    NORM_EACH_TRANSFORMER = True

    def make_bands(self) -> list[int]:
        if self.config.num_bands < 2:
            raise BadInput(f"option num_bands must be at least 2, got {self.config.num_bands}")
        bins = mel_band_bins(self.sample_rate, self.stft.n_fft, self.config.num_bands)
        if any(b.size == 0 for b in bins):
            raise BadInput(f"{self.config.num_bands} mel bands are too many for a {self.stft.n_fft}-point STFT at "
                           f"{self.sample_rate} Hz: some band holds no bin")
        # the bands' values one after the other, as indices into a frame's interleaved values
        # (bin, channel, real/imaginary) of every bin: one gather in, one scatter-add out
        band_bins = np.concatenate(bins)
        values_per_bin = 2 * self.audio_channels
        value_index = (band_bins[:, None] * values_per_bin + np.arange(values_per_bin)).ravel()
        coverage = np.bincount(value_index, minlength=values_per_bin * self.stft.n_freq)
        self.register_buffer("band_value_index", torch.tensor(value_index, dtype=torch.long), persistent=False)
        self.register_buffer("value_coverage", torch.tensor(coverage, dtype=torch.float32), persistent=False)
        return [int(b.size) for b in bins]

    def band_values(self, spec: torch.Tensor) -> torch.Tensor:
        values = interleave_bins(spec)
        return values.gather(-1, self.band_value_index.expand(*values.shape[:-1], -1))

    def bin_masks(self, banded: torch.Tensor, channels: int) -> torch.Tensor:
        """Each bin's mask: the average of the masks of the bands that hold it."""
        summed = banded.new_zeros(*banded.shape[:-1], self.value_coverage.numel())
        summed.scatter_add_(-1, self.band_value_index.expand_as(banded), banded)
        return deinterleave_mask(summed / self.value_coverage, channels)
