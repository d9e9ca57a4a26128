"""HTDemucs against the authors' implementation (``demucs`` 4.0.1) with copied weights: same parameter
count, same outputs and gradients.

The reference is never a project dependency; install it outside the project and put it on
``PYTHONPATH``, e.g.::

    pip install --target /tmp/ref_demucs --no-deps demucs==4.0.1 einops julius openunmix omegaconf \\
        antlr4-python3-runtime==4.9.3 dora-search treetable retrying submitit cloudpickle
    PYTHONPATH=/tmp/ref_demucs python -m pytest -q tests/test_htdemucs_reference.py

(``demucs.htdemucs`` imports ``openunmix`` and, through ``demucs.states``, ``omegaconf`` and ``dora``.)
The tests skip where ``demucs.htdemucs`` cannot be imported.
"""

from __future__ import annotations

import pytest
import torch

from mss_tools.models import build_model
from tests.conftest import assert_same_gradients

SOURCES = ["drums", "bass", "other", "vocals"]


def reference_class():
    return pytest.importorskip("demucs.htdemucs").HTDemucs


def reference_for(ours, **options):
    """The reference at ``ours``' configuration (the options the presets set)."""
    config = ours.config
    return reference_class()(
        sources=ours.sources, audio_channels=ours.audio_channels, samplerate=ours.sample_rate,
        nfft=ours.stft.n_fft, channels=config.channels, depth=config.depth, dconv_mode=config.dconv_mode,
        bottom_channels=config.bottom_channels, t_layers=config.t_layers, t_heads=config.t_heads,
        t_dropout=config.t_dropout, **options)


def copy_reference_weights(ours, reference) -> None:
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert [v.shape for v in theirs.values()] == [v.shape for v in mine.values()]
    ours.load_state_dict(dict(zip(mine, theirs.values(), strict=True)))


@pytest.mark.parametrize("options, reference_options, count", [
    # the released htdemucs: conf/config.yaml's htdemucs section with the paper grid's (grids/mmi.py) overrides
    ({}, {"dconv_mode": 3, "bottom_channels": 512, "t_dropout": 0.02}, 41_984_456),
    # the reference constructor's defaults (DConv in the encoders only, no bottom channels)
    ({"dconv_mode": 1, "bottom_channels": 0}, {}, 26_899_536),
])
def test_paper_preset_has_the_reference_parameter_count(options, reference_options, count):
    reference = reference_class()(sources=SOURCES, **reference_options)
    ours = build_model("htdemucs", SOURCES, 2, 44100, preset="paper", overrides={"rescale": 0.0, **options})
    theirs = sum(p.numel() for p in reference.parameters())
    print(f"htdemucs paper preset {options or ''}: ours {ours.num_parameters:,}, reference {theirs:,}")
    assert ours.num_parameters == theirs == count


@pytest.mark.parametrize("sources, channels, rate, length", [
    (SOURCES, 2, 44100, 2 * 44100 + 123),  # stereo, 44.1 kHz (a 4096-point STFT), not a whole number of hops
    (["vocals"], 1, 16000, 16000),          # mono, one source, 16 kHz (a 2048-point STFT)
])
def test_outputs_equal_the_reference_with_copied_weights(sources, channels, rate, length):
    torch.manual_seed(0)
    ours = build_model("htdemucs", sources, channels, rate, preset="small").eval()
    reference = reference_for(ours, use_train_segment=False).eval()
    copy_reference_weights(ours, reference)
    mix = 0.3 * torch.randn(2, channels, length, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(mix), reference(mix), rtol=1e-4, atol=1e-5)


def test_paper_preset_outputs_equal_the_reference_with_copied_weights():
    torch.manual_seed(0)
    ours = build_model("htdemucs", SOURCES, 2, 44100, preset="paper", overrides={"rescale": 0.0}).eval()
    reference = reference_for(ours, use_train_segment=False).eval()
    copy_reference_weights(ours, reference)
    mix = 0.3 * torch.randn(1, 2, 44100, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(ours(mix), reference(mix), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [
    {"t_norm_first": False},
    {"t_group_norm": True, "t_norm_in": False, "t_norm_in_group": True},
    {"t_cross_first": True, "t_layer_scale": False, "t_gelu": False},
    {"norm_starts": 1, "context": 2, "context_enc": 1, "dconv_mode": 2, "freq_emb": 0.0, "t_norm_out": False},
    {"rewrite": False, "dconv_mode": 0, "t_layers": 3, "t_hidden_scale": 2.0, "t_max_period": 500.0,
     "t_weight_pos_embed": 0.5, "growth": 3},
    {"t_layers": 0},
], ids=lambda options: ",".join(options))
def test_other_options_equal_the_reference(options):
    """Options the paper's configuration leaves at one value, each as the reference's option of the same name."""
    torch.manual_seed(0)
    ours = build_model("htdemucs", SOURCES[:2], 2, 44100, preset="small", overrides=options).eval()
    shared = {"dconv_mode", "t_layers"}  # reference_for passes these already
    reference = reference_for(ours, use_train_segment=False,
                              **{k: v for k, v in options.items() if k not in shared}).eval()
    copy_reference_weights(ours, reference)
    mix = 0.3 * torch.randn(1, 2, 44100 + 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(mix), reference(mix), rtol=1e-4, atol=1e-5)


def test_outputs_equal_the_reference_at_its_training_segment():
    """The reference as it separates by default (``use_train_segment``), on an input of its segment."""
    torch.manual_seed(0)
    ours = build_model("htdemucs", SOURCES, 2, 44100, preset="small", segment=1.5).eval()
    reference = reference_for(ours, segment=1.5).eval()
    copy_reference_weights(ours, reference)
    mix = 0.3 * torch.randn(1, 2, int(1.5 * 44100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(mix), reference(mix), rtol=1e-4, atol=1e-5)


def test_training_gradients_equal_the_reference_with_copied_weights():
    torch.manual_seed(0)
    ours = build_model("htdemucs", SOURCES, 2, 44100, preset="small").train()
    reference = reference_for(ours).train()  # t_dropout 0 in the small preset: deterministic
    copy_reference_weights(ours, reference)
    mix = 0.3 * torch.randn(1, 2, 44100 + 77, generator=torch.Generator().manual_seed(2))
    target = 0.1 * torch.randn(1, 4, 2, mix.shape[-1], generator=torch.Generator().manual_seed(3))
    outputs = []
    for model in (ours, reference):
        out = model(mix)
        (out - target).abs().mean().backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    assert_same_gradients(ours, reference.parameters())
