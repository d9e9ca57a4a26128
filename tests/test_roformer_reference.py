"""BS-RoFormer and Mel-RoFormer against the reference implementation, ``bs-roformer`` (lucidrains),
with copied weights: same parameter count, same outputs and training gradients.

The reference is not a dependency: install it in a test or benchmark environment only, e.g.
``pip install --target /tmp/ref --no-deps bs-roformer==0.3.10 einops beartype rotary-embedding-torch
librosa`` (plus librosa's own dependencies for the mel model) and run with ``PYTHONPATH=/tmp/ref``.
Version 0.3.10 is the last one whose blocks are the paper's; later ones add hyper-connections and
value residuals. Every test here skips where the reference cannot be imported.
"""

from __future__ import annotations

import pytest
import torch

from mss_tools.models import build_model
from tests.conftest import assert_same_gradients

SAMPLE_RATE = 16000
SOURCES = ["vocals", "drums"]
SMALL = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "ff_mult": 4, "mask_mult": 4, "attn_dropout": 0.0,
         "ff_dropout": 0.0}


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State entries that are trained parameters (the reference keeps its rotary frequencies as frozen ones)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: value for name, value in model.state_dict().items() if name in names}


def copy_weights(reference: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Load the reference's trained parameters into ``ours``, in registration order (the layouts match)."""
    theirs, mine = trainable(reference), trainable(ours)
    assert [v.shape for v in theirs.values()] == [v.shape for v in mine.values()]
    ours.load_state_dict(dict(zip(mine, theirs.values())), strict=False)


def compare(reference: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Outputs in evaluation, then the gradients of an L1 loss in training, equal with copied weights."""
    copy_weights(reference, ours)
    reference.eval(), ours.eval()
    mix = 0.3 * torch.randn(2, 2, SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(mix)                # (batch, stems, channels, hop * (frames - 1))
        got = ours(mix)[..., : expected.shape[-1]]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    reference.train(), ours.train()  # no dropout in these configurations
    for model in (ours, reference):
        (model(mix)[..., : expected.shape[-1]] - 0.1).abs().mean().backward()
    assert_same_gradients(ours, (p for p in reference.parameters() if p.requires_grad))


def test_bs_roformer_equals_the_reference_with_copied_weights():
    reference_module = pytest.importorskip("bs_roformer.bs_roformer")
    torch.manual_seed(0)
    ours = build_model("bs_roformer", SOURCES, 2, SAMPLE_RATE, preset="small", overrides=SMALL)
    reference = reference_module.BSRoformer(
        dim=32, depth=2, stereo=True, num_stems=len(SOURCES), time_transformer_depth=1, freq_transformer_depth=1,
        freqs_per_bands=tuple(ours.band_widths), dim_head=16, heads=2, stft_n_fft=ours.stft.n_fft,
        stft_hop_length=ours.stft.hop_length, stft_win_length=ours.stft.n_fft, mask_estimator_depth=2)
    assert ours.num_parameters == sum(p.numel() for p in trainable(reference).values())
    compare(reference, ours)


def test_mel_roformer_equals_the_reference_with_copied_weights():
    reference_module = pytest.importorskip("bs_roformer.mel_band_roformer")
    pytest.importorskip("librosa")
    torch.manual_seed(0)
    ours = build_model("mel_roformer", SOURCES, 2, SAMPLE_RATE, preset="small", overrides=SMALL | {"num_bands": 24})
    reference = reference_module.MelBandRoformer(
        dim=32, depth=2, stereo=True, num_stems=len(SOURCES), time_transformer_depth=1, freq_transformer_depth=1,
        num_bands=24, dim_head=16, heads=2, sample_rate=SAMPLE_RATE, stft_n_fft=ours.stft.n_fft,
        stft_hop_length=ours.stft.hop_length, stft_win_length=ours.stft.n_fft, mask_estimator_depth=1,
        attn_dropout=0.0, ff_dropout=0.0)
    assert ours.band_widths == reference.num_freqs_per_band.tolist()
    assert ours.num_parameters == sum(p.numel() for p in trainable(reference).values())
    compare(reference, ours)


@pytest.mark.parametrize("arch, reference_class, options", [
    ("bs_roformer", "bs_roformer.bs_roformer:BSRoformer", {}),
    ("mel_roformer", "bs_roformer.mel_band_roformer:MelBandRoformer", {"num_bands": 60, "sample_rate": 44100}),
])
def test_paper_preset_has_the_reference_parameter_count(arch, reference_class, options):
    module_name, class_name = reference_class.split(":")
    module = pytest.importorskip(module_name)
    if arch == "mel_roformer":
        pytest.importorskip("librosa")
    ours = build_model(arch, ["vocals"], 2, 44100, preset="paper")
    config = ours.config
    extra = {"freqs_per_bands": tuple(ours.band_widths)} if arch == "bs_roformer" else options
    reference = getattr(module, class_name)(
        dim=config.dim, depth=config.depth, stereo=True, num_stems=1, time_transformer_depth=config.time_depth,
        freq_transformer_depth=config.band_depth, dim_head=config.dim_head, heads=config.heads,
        stft_n_fft=ours.stft.n_fft, stft_hop_length=ours.stft.hop_length, stft_win_length=ours.stft.n_fft,
        mask_estimator_depth=config.mask_hidden_layers + (1 if arch == "bs_roformer" else 0), **extra)
    assert ours.num_parameters == sum(p.numel() for p in trainable(reference).values())


def test_multiresolution_stft_loss_equals_the_reference_loss_at_44k():
    """At 44.1 kHz l1_multires_stft is the reference's training loss: waveform L1 plus the complex L1 of
    five STFTs (Hann windows of 4096 ... 256 in frames of at least 2048 points, hop 147)."""
    reference_module = pytest.importorskip("bs_roformer.bs_roformer")
    from mss_tools.losses import l1_multires_stft

    torch.manual_seed(0)
    ours = build_model("bs_roformer", ["vocals"], 2, 44100, preset="small", overrides=SMALL)
    reference = reference_module.BSRoformer(
        dim=32, depth=2, stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1,
        freqs_per_bands=tuple(ours.band_widths), dim_head=16, heads=2, stft_n_fft=ours.stft.n_fft,
        stft_hop_length=ours.stft.hop_length, stft_win_length=ours.stft.n_fft, mask_estimator_depth=2)
    copy_weights(reference, ours)
    generator = torch.Generator().manual_seed(1)
    mix = 0.3 * torch.randn(1, 2, 20 * ours.stft.hop_length, generator=generator)  # whole frames: equal lengths
    target = 0.3 * torch.randn(1, 2, mix.shape[-1], generator=generator)
    expected = reference(mix, target=target)
    got = l1_multires_stft(ours(mix), target.unsqueeze(1), ours)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
