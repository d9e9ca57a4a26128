"""Band-Split RNN and Band-Split RNN with Squeeze-and-Excitation.

Y. Luo and J. Yu, "Music Source Separation with Band-split RNN", arXiv:2209.15174 (2022).

Pipeline (shapes for a mixture ``(B, C, L)``, ``F = n_fft // 2 + 1`` bins, ``T`` frames,
``K`` sub-bands of ``G_k`` bins, feature size ``N``):

1. complex STFT ``(B, C, F, T)``;
2. band split: for every band, the real and imaginary parts of its ``G_k`` bins are
   normalised and go through a Linear to ``N`` -> features ``(K, B', T, N)``. The
   normalisation (option ``norm``) is, by default (``"band_time"``), the authors' released
   code's GroupNorm(1, .): statistics of the band over its features *and all frames* of the
   chunk, so the band's energy envelope (onsets, decays, level changes) reaches the BLSTMs;
   ``"frame"`` normalises every frame on its own (LayerNorm over the band's features), which
   removes the envelope (a 26 dB level step leaves the features unchanged). With
   ``channel_mode="independent"`` (the paper preset, as in the authors' released code) every
   channel is separated on its own by the same network (``B' = B * C``, ``2 * G_k`` values
   per frame); with ``"joint"`` the channels are features of the band (``B' = B``,
   ``2 * G_k * C`` values per frame);
3. ``num_blocks`` residual blocks, each a BLSTM across frames (per band) followed by a
   BLSTM across bands (per frame); each BLSTM is preceded by a one-group GroupNorm and
   followed by a Linear back to ``N`` and a residual connection. ``BSRNNSE`` adds a
   Squeeze-and-Excitation gate to every block (on the block's residual update by default,
   see :class:`BandSequenceBlock`);
4. per-band mask estimation: the norm of step 2 (over the ``N`` features and, by default,
   the frames) -> ``mlp_layers`` x (Linear to ``mlp_ratio * N`` -> Tanh) ->
   Linear(mlp_ratio * N, 2 * 2 * G_k * C') -> GLU gives the real and imaginary
   parts of a complex mask for every bin (and, if joint, channel) of the band;
5. the masks of all bands are concatenated along frequency, multiplied (complex) with the
   mixture spectrogram and inverted with the iSTFT to ``(B, S, C, L)``.

The paper trains one model per target, each with its own band scheme. Here ``sources`` may
list several targets: the band split and the band/sequence model are shared and every source
gets its own mask estimator (step 4). With ``band_scheme="auto"`` a single target picks its
paper scheme and several targets share ``v7``.

Paper configuration (preset ``paper``): N = 128, 12 blocks, 256 BLSTM units per direction,
mask MLP with two hidden layers of 4N, channels separated independently, 2048/512 STFT at
44.1 kHz. One target has 36.4 M parameters with the v7 scheme (vocals, other), 32.8 M with
bass, 41.0 M with drums; the SE layers add 50,880 (r = 8). The ``small`` CPU preset uses
one hidden layer and joint channels.

Per-band layers are stored grouped by band width (bands of equal width share one batched
weight tensor), so the hot path loops over the few distinct widths instead of the bands while
the parameters are exactly those of one norm/Linear per band. Features are kept
band-major, ``(K, B, T, N)``, so that both BLSTMs read them without a transpose: the one
across frames as ``(K * B, T, N)`` batch-first, the one across bands as ``(K, B * T, N)``
sequence-first.

Global context: with ``norm="band_time"`` (as with the SequenceNorm before every BLSTM) the
statistics are taken over the whole chunk the model is given, so every output frame depends
on the whole chunk, not only on its BLSTM context. Chunked inference (``mss separate``'s
overlap-add over ``segment``-long chunks) then normalises each chunk on its own; run it on
chunks of the training segment length so that the statistics are those the model learnt on.

Checkpoints written before ``norm`` (and ``se_placement``) existed store configs without
them; :attr:`BSRNNConfig.LEGACY` names the value those models had (``"frame"``,
``"stream"``), which such a stored config gets, so old checkpoints load with their old
behaviour and outputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mss_tools.dsp import model_n_fft
from mss_tools.errors import BadInput
from mss_tools.models.base import ModelConfig, SeparationModel, model_stft, require_at_least_one

# Each scheme: (upper edge in Hz, bandwidth in Hz) segments from 0 Hz; everything above the
# last upper edge (up to Nyquist) is one band. Band counts at 44.1 kHz / n_fft 2048 are the
# paper's: v7 41, bass 30, drums 55.
BAND_SCHEMES: dict[str, tuple[tuple[int, int], ...]] = {
    # vocals and other ("v7"): 10 + 12 + 8 + 8 + 2 + 1 = 41 bands
    "v7": ((1000, 100), (4000, 250), (8000, 500), (16000, 1000), (20000, 2000)),
    # bass: 10 + 5 + 6 + 4 + 4 + 1 = 30 bands
    "bass": ((500, 50), (1000, 100), (4000, 500), (8000, 1000), (16000, 2000)),
    # drums: 20 + 10 + 8 + 8 + 8 + 1 = 55 bands
    "drums": ((1000, 50), (2000, 100), (4000, 250), (8000, 500), (16000, 1000)),
}

TARGET_SCHEMES: dict[str, str] = {"vocals": "v7", "other": "v7", "bass": "bass", "drums": "drums"}


def band_edges_hz(scheme: str) -> list[int]:
    """Interior band edges (Hz, ascending) of a scheme; band ``i`` is ``[edge[i-1], edge[i])``."""
    if scheme not in BAND_SCHEMES:
        raise BadInput(f"unknown band scheme {scheme!r}; choose auto or one of {', '.join(BAND_SCHEMES)}")
    edges, low = [], 0
    for high, width in BAND_SCHEMES[scheme]:
        edges.extend(range(low + width, high + 1, width))
        low = high
    return edges


def band_widths(scheme: str, sample_rate: int, n_fft: int) -> list[int]:
    """Number of STFT bins in each band of ``scheme`` at ``sample_rate`` and ``n_fft``.

    Bin ``j`` (frequency ``j * sample_rate / n_fft``) belongs to the band whose Hz range
    contains it, so an edge ``f`` starts at bin ``ceil(f * n_fft / sample_rate)``. Edges that
    fall on the same bin are merged, edges at or above the last bin below Nyquist are dropped
    (the last band absorbs the rest), so every band has at least one bin and the bands tile
    all ``n_fft // 2 + 1`` bins.
    """
    n_freq = n_fft // 2 + 1
    starts = sorted({-(-edge * n_fft // sample_rate) for edge in band_edges_hz(scheme)})
    starts = [s for s in starts if 0 < s < n_freq - 1]
    bounds = [0, *starts, n_freq]
    widths = [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:])]
    assert sum(widths) == n_freq and min(widths) >= 1, (scheme, sample_rate, n_fft, widths)
    return widths


def resolve_band_scheme(band_scheme: str, sources: Sequence[str]) -> str:
    """``auto``: the paper's scheme of a single target (v7 for unknown ones), v7 for several."""
    if band_scheme != "auto":
        band_edges_hz(band_scheme)
        return band_scheme
    if len(sources) == 1:
        return TARGET_SCHEMES.get(sources[0], "v7")
    return "v7"


def _uniform_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """The default ``nn.Linear`` initialisation range for a weight or bias with ``fan_in`` inputs."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(tensor, -bound, bound)


NORMS = ("band_time", "frame")
SE_PLACEMENTS = ("branch", "stream")


def normalize_bands(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-band normalisation of ``x`` ``(n, B, T, D)`` with per-band affine ``weight``, ``bias`` ``(n, D)``.

    ``"band_time"``: mean and variance of each band and batch item over its ``T`` frames and
    ``D`` features, i.e. GroupNorm(1, D) on ``(B, D, T)`` as in the authors' released code;
    the band's level over time survives. ``"frame"``: over the ``D`` features of each frame
    (LayerNorm(D)); every frame is brought to unit variance, so the envelope is lost. Both
    have ``2 * D`` affine parameters per band. ``eps`` is LayerNorm's 1e-5 in both.
    """
    dims = 2 if norm == "band_time" else 1
    return F.layer_norm(x, x.shape[-dims:]) * weight[:, None, None] + bias[:, None, None]


def _group_bands(widths: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Bands grouped by width: ``[(width, [band indices])]``, widths ascending."""
    groups: dict[int, list[int]] = {}
    for band, width in enumerate(widths):
        groups.setdefault(width, []).append(band)
    return sorted(groups.items())


class _SplitGroup(nn.Module):
    """Band split of ``n`` bands of ``width`` bins: per band a norm of its 2*width*C values
    (:func:`normalize_bands`) + Linear(., N)."""

    def __init__(self, band_starts: Sequence[int], width: int, channels: int, feature_dim: int, norm: str):
        super().__init__()
        self.norm = norm
        n, dim = len(band_starts), 2 * width * channels
        bins = torch.tensor(band_starts)[:, None] + torch.arange(width)
        self.register_buffer("bins", bins, persistent=False)
        self.norm_weight = nn.Parameter(torch.ones(n, dim))
        self.norm_bias = nn.Parameter(torch.zeros(n, dim))
        self.weight = nn.Parameter(_uniform_(torch.empty(n, dim, feature_dim), dim))
        self.bias = nn.Parameter(_uniform_(torch.empty(n, feature_dim), dim))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T, 2)`` real view of the spectrogram -> ``(n, B, T, N)``."""
        batch, _, _, frames, _ = spec.shape
        n = self.bins.shape[0]
        x = spec[:, :, self.bins]                                    # (B, C, n, width, T, 2)
        x = x.permute(2, 0, 4, 3, 1, 5).reshape(n, batch, frames, -1)
        x = normalize_bands(x, self.norm_weight, self.norm_bias, self.norm).reshape(n, batch * frames, -1)
        return torch.baddbmm(self.bias[:, None], x, self.weight).reshape(n, batch, frames, -1)


class BandSplit(nn.Module):
    """Complex spectrogram ``(B, C, F, T)`` -> band features ``(K, B, T, N)``; ``norm``: see :func:`normalize_bands`."""

    def __init__(self, widths: Sequence[int], channels: int, feature_dim: int, norm: str = "band_time"):
        super().__init__()
        starts = [sum(widths[:i]) for i in range(len(widths))]
        grouped = _group_bands(widths)
        self.groups = nn.ModuleList(
            _SplitGroup([starts[b] for b in bands], width, channels, feature_dim, norm) for width, bands in grouped)
        concat_order = [b for _, bands in grouped for b in bands]
        self.register_buffer("order", torch.tensor(concat_order).argsort(), persistent=False)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        spec = torch.view_as_real(spec)
        features = torch.cat([group(spec) for group in self.groups], dim=0)
        return features.index_select(0, self.order)


class _MaskGroup(nn.Module):
    """Mask MLP of ``n`` bands of ``width`` bins: norm of the N features (:func:`normalize_bands`),
    ``layers`` x (Linear(., H), Tanh), Linear(H, 2D), GLU."""

    def __init__(self, bands: Sequence[int], width: int, channels: int, feature_dim: int, mlp_dim: int,
                 layers: int, norm: str):
        super().__init__()
        self.norm = norm
        n, dim = len(bands), 2 * width * channels
        self.width, self.channels = width, channels
        self.register_buffer("bands", torch.tensor(bands), persistent=False)
        self.norm_weight = nn.Parameter(torch.ones(n, feature_dim))
        self.norm_bias = nn.Parameter(torch.zeros(n, feature_dim))
        fan_in = [feature_dim] + [mlp_dim] * (layers - 1)
        self.hidden_weights = nn.ParameterList(
            nn.Parameter(_uniform_(torch.empty(n, d, mlp_dim), d)) for d in fan_in)
        self.hidden_biases = nn.ParameterList(
            nn.Parameter(_uniform_(torch.empty(n, mlp_dim), d)) for d in fan_in)
        self.out_weight = nn.Parameter(_uniform_(torch.empty(n, mlp_dim, 2 * dim), mlp_dim))
        self.out_bias = nn.Parameter(_uniform_(torch.empty(n, 2 * dim), mlp_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(K, B, T, N)`` -> mask ``(B, C, n * width, T, 2)`` (real, imaginary) for this group's bins."""
        _, batch, frames, dim = features.shape
        n = self.bands.shape[0]
        x = features.index_select(0, self.bands)
        x = normalize_bands(x, self.norm_weight, self.norm_bias, self.norm).reshape(n, batch * frames, dim)
        for weight, bias in zip(self.hidden_weights, self.hidden_biases):
            x = torch.tanh(torch.baddbmm(bias[:, None], x, weight))
        x = F.glu(torch.baddbmm(self.out_bias[:, None], x, self.out_weight), dim=-1)
        x = x.reshape(n, batch, frames, self.width, self.channels, 2)
        return x.permute(1, 4, 0, 3, 2, 5).reshape(batch, self.channels, n * self.width, frames, 2)


class MaskEstimator(nn.Module):
    """Band features ``(K, B, T, N)`` -> complex mask ``(B, C, F, T)`` for one source; ``norm``: see :func:`normalize_bands`."""

    def __init__(self, widths: Sequence[int], channels: int, feature_dim: int, mlp_dim: int, layers: int = 1,
                 norm: str = "band_time"):
        super().__init__()
        starts = [sum(widths[:i]) for i in range(len(widths))]
        grouped = _group_bands(widths)
        self.groups = nn.ModuleList(
            _MaskGroup(bands, width, channels, feature_dim, mlp_dim, layers, norm) for width, bands in grouped)
        concat_bins = [starts[b] + j for width, bands in grouped for b in bands for j in range(width)]
        self.register_buffer("order", torch.tensor(concat_bins).argsort(), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mask = torch.cat([group(features) for group in self.groups], dim=2)
        return torch.view_as_complex(mask.index_select(2, self.order))


class SequenceNorm(nn.Module):
    """GroupNorm with one group: statistics over a whole sequence (``seq_dim``) and the features (last)."""

    def __init__(self, dim: int, seq_dim: int, eps: float = 1e-5):
        super().__init__()
        self.seq_dim, self.eps = seq_dim, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(self.seq_dim, -1), unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class ResidualRNN(nn.Module):
    """``x + Linear(BLSTM(GroupNorm(x)))`` on ``(batch, length, N)`` or, if not ``batch_first``, ``(length, batch, N)``."""

    def __init__(self, feature_dim: int, hidden_dim: int, batch_first: bool):
        super().__init__()
        self.norm = SequenceNorm(feature_dim, seq_dim=1 if batch_first else 0)
        self.rnn = nn.LSTM(feature_dim, hidden_dim, batch_first=batch_first, bidirectional=True)
        self.proj = nn.Linear(2 * hidden_dim, feature_dim)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch alone, ``Linear(BLSTM(GroupNorm(x)))``, the shape of ``x``."""
        return self.proj(self.rnn(self.norm(x))[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class SqueezeExcitation(nn.Module):
    """Channel reweighting of ``(K, B, T, N)``: mean over bands and frames -> FC -> ReLU -> FC -> sigmoid."""

    def __init__(self, feature_dim: int, reduction: int):
        super().__init__()
        squeezed = max(1, feature_dim // reduction)
        self.fc1 = nn.Linear(feature_dim, squeezed)
        self.fc2 = nn.Linear(squeezed, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(0, 2))))))
        return x * scale[:, None, :]


class BandSequenceBlock(nn.Module):
    """BLSTM across frames (per band), then BLSTM across bands (per frame), optional SE; ``(K, B, T, N)``.

    Without SE: ``h = x + time(x)``, ``y = h + band(h)`` (``time``, ``band``: the residual
    branches of the two :class:`ResidualRNN`). With SE (``se_reduction`` > 0), ``se_placement``:

    - ``"branch"`` (default): the SE gates the block's residual update,
      ``y = x + SE(time(x) + band(h))``; the squeeze is taken on that update. As in SE-ResNet
      (Hu et al., CVPR 2018), where one SE recalibrates the output of a whole residual unit
      (several convolutions) before the identity is added, the unit here is the block (the
      pair of BLSTMs), so the identity path ``x -> y`` has gain 1 and a stack of blocks stays
      a residual network. One gate per block, as in ``"stream"``, so both placements have the
      same parameters and the same number of gates and differ only in where the gate acts.
      Gating each BLSTM's branch separately would need two SE layers per block.
    - ``"stream"`` (the placement before the option existed, kept for comparison and old
      checkpoints): ``y = SE(h + band(h))`` rescales the whole residual stream, identity
      included. The gates start near 0.5, so the identity path of 12 blocks starts near
      0.5**12 ~ 2.4e-4: SE plus a decaying skip path rather than channel attention.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, se_reduction: int = 0, se_placement: str = "branch"):
        super().__init__()
        if se_placement not in SE_PLACEMENTS:
            raise BadInput(f"option se_placement must be one of {', '.join(SE_PLACEMENTS)}, got {se_placement!r}")
        self.time_rnn = ResidualRNN(feature_dim, hidden_dim, batch_first=True)
        self.band_rnn = ResidualRNN(feature_dim, hidden_dim, batch_first=False)
        self.se = SqueezeExcitation(feature_dim, se_reduction) if se_reduction else None
        self.se_placement = se_placement

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands, batch, frames, dim = x.shape
        if self.se is not None and self.se_placement == "branch":
            time_update = self.time_rnn.branch(x.reshape(bands * batch, frames, dim))
            h = x + time_update.reshape(bands, batch, frames, dim)
            band_update = self.band_rnn.branch(h.reshape(bands, batch * frames, dim))
            update = time_update.reshape(bands, batch, frames, dim) + band_update.reshape(bands, batch, frames, dim)
            return x + self.se(update)
        x = self.time_rnn(x.reshape(bands * batch, frames, dim))
        x = self.band_rnn(x.reshape(bands, batch * frames, dim)).reshape(bands, batch, frames, dim)
        return self.se(x) if self.se is not None else x


@dataclasses.dataclass(frozen=True)
class BSRNNConfig(ModelConfig):
    """Options of :class:`BSRNN` (described there).

    ``LEGACY``: the per-frame norm of the models written before ``norm`` existed.
    """

    LEGACY: ClassVar[Mapping[str, Any]] = MappingProxyType({"norm": "frame"})

    feature_dim: int = 128
    hidden_dim: int = 256
    num_blocks: int = 12
    mlp_ratio: int = 4
    mlp_layers: int = 2
    channel_mode: str = "independent"
    n_fft: int = 0
    hop_length: int = 0
    band_scheme: str = "auto"
    norm: str = "band_time"


@dataclasses.dataclass(frozen=True)
class BSRNNSEConfig(BSRNNConfig):
    """Options of :class:`BSRNNSE`: :class:`BSRNNConfig`'s, ``se_reduction`` and ``se_placement``."""

    LEGACY: ClassVar[Mapping[str, Any]] = MappingProxyType({**BSRNNConfig.LEGACY, "se_placement": "stream"})

    se_reduction: int = 8
    se_placement: str = "branch"


class BSRNN(SeparationModel):
    """Band-Split RNN (Luo & Yu, arXiv:2209.15174) with complex masks.

    ``forward``: mixture ``(batch, audio_channels, time)`` -> sources
    ``(batch, len(sources), audio_channels, time)`` for any ``time``.

    Options: ``feature_dim`` (N), ``hidden_dim`` (BLSTM units per direction; the paper's 256
    for N=128, i.e. 2N), ``num_blocks`` (band+sequence blocks), ``mlp_ratio`` (mask MLP hidden
    size = mlp_ratio * N), ``mlp_layers`` (hidden layers of the mask MLP), ``channel_mode``
    (``independent``: each channel separated on its own; ``joint``: channels are features of
    a band), ``n_fft`` / ``hop_length`` (0 = auto: a ~46 ms power-of-two window,
    hop n_fft/4), ``band_scheme`` (``auto``, ``v7``, ``bass`` or ``drums``; see
    :data:`BAND_SCHEMES`), ``norm`` (normalisation of the band split and of the mask
    estimators' input: ``band_time``, the authors' per-band GroupNorm over features and
    frames, or ``frame``, per frame; see :func:`normalize_bands`). ``BSRNNSE`` adds
    ``se_reduction`` and ``se_placement``.
    """

    ARCH = "bsrnn"
    DEFAULTS = BSRNNConfig()
    PRESETS = {
        "paper": dataclasses.replace(DEFAULTS, feature_dim=128, hidden_dim=256, num_blocks=12, mlp_ratio=4,
                                     mlp_layers=2, channel_mode="independent"),
        "small": dataclasses.replace(DEFAULTS, feature_dim=32, hidden_dim=32, num_blocks=2, mlp_ratio=4,
                                     mlp_layers=1, channel_mode="joint"),
    }
    DEFAULT_LOSS = "l1_complex_wave"
    DEFAULT_SEGMENT = 3.0

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100,
                 config: BSRNNConfig | None = None, *, segment: float | None = None):
        super().__init__(sources, audio_channels, sample_rate, config, segment=segment)
        config = self.config
        positive = ("feature_dim", "hidden_dim", "num_blocks", "mlp_ratio", "mlp_layers", "se_reduction")
        require_at_least_one(config, [key for key in positive if key in config])
        for key in ("n_fft", "hop_length"):
            if config[key] < 0:
                raise BadInput(f"option {key} must be 0 (auto) or positive, got {config[key]}")
        if self.audio_channels < 1 or self.sample_rate < 1:
            raise BadInput("audio_channels and sample_rate must be positive")
        if config.channel_mode not in ("independent", "joint"):
            raise BadInput(f"option channel_mode must be 'independent' or 'joint', got {config.channel_mode!r}")
        if config.norm not in NORMS:
            raise BadInput(f"option norm must be one of {', '.join(NORMS)}, got {config.norm!r}")
        self.independent_channels = config.channel_mode == "independent"
        band_channels = 1 if self.independent_channels else self.audio_channels

        n_fft = config.n_fft or model_n_fft(self.sample_rate)
        hop_length = config.hop_length or n_fft // 4
        self.stft = model_stft(n_fft, hop_length)
        self.band_scheme = resolve_band_scheme(config.band_scheme, self.sources)
        self.band_widths = band_widths(self.band_scheme, self.sample_rate, n_fft)

        feature_dim = config.feature_dim
        self.band_split = BandSplit(self.band_widths, band_channels, feature_dim, config.norm)
        self.blocks = nn.ModuleList(self.make_block(config) for _ in range(config.num_blocks))
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(self.band_widths, band_channels, feature_dim, config.mlp_ratio * feature_dim,
                          config.mlp_layers, config.norm)
            for _ in self.sources)

    def make_block(self, config: BSRNNConfig) -> BandSequenceBlock:
        """One band/sequence block ``(K, B, T, N)`` -> the same shape."""
        return BandSequenceBlock(config.feature_dim, config.hidden_dim)

    @property
    def num_bands(self) -> int:
        return len(self.band_widths)

    def estimate_masks(self, spec: torch.Tensor) -> torch.Tensor:
        """Mixture spectrogram ``(B, C, F, T)`` complex -> masks ``(B, S, C, F, T)`` complex."""
        batch, channels = spec.shape[:2]
        if self.independent_channels:
            spec = spec.reshape(batch * channels, 1, *spec.shape[2:])
        features = self.band_split(spec)
        for block in self.blocks:
            features = self.run_block(block, features)
        masks = torch.stack([estimator(features) for estimator in self.mask_estimators], dim=1)
        if self.independent_channels:  # (B * C, S, 1, F, T) -> (B, S, C, F, T)
            masks = masks.reshape(batch, channels, *masks.shape[1:]).squeeze(3).transpose(1, 2)
        return masks

    @staticmethod
    def apply_masks(spec: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Complex product of the mixture ``(B, C, F, T)`` with masks ``(B, S, C, F, T)``."""
        return spec.unsqueeze(1) * masks

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise BadInput(f"expected a mixture (batch, {self.audio_channels}, time), got {tuple(mix.shape)}")
        spec = self.stft(mix)
        masks = self.estimate_masks(spec)
        return self.stft.inverse(self.apply_masks(spec, masks), mix.shape[-1])


class BSRNNSE(BSRNN):
    """BSRNN with a Squeeze-and-Excitation gate in every band/sequence block.

    The SE layer averages a ``(K, B, T, N)`` tensor over bands and frames, maps the ``N``
    means through FC(N, N/r) -> ReLU -> FC(N/r, N) -> sigmoid and rescales the feature
    dimension: ``num_blocks * (2 * N * N/r + N/r + N)`` extra parameters. Extra options:
    ``se_reduction`` (r) and ``se_placement``: ``branch`` (default) gates each block's
    residual update before the identity is added, as SE-ResNet does; ``stream`` gates the
    block's whole output, identity included (see :class:`BandSequenceBlock`). The placement
    does not change the parameters.
    """

    ARCH = "bsrnn_se"
    DEFAULTS = BSRNNSEConfig()
    PRESETS = {
        "paper": BSRNNSEConfig(**BSRNN.PRESETS["paper"], se_reduction=8),
        "small": BSRNNSEConfig(**BSRNN.PRESETS["small"], se_reduction=8),
    }

    def make_block(self, config: BSRNNSEConfig) -> BandSequenceBlock:
        return BandSequenceBlock(config.feature_dim, config.hidden_dim, config.se_reduction, config.se_placement)
