"""Contract tests every registered architecture must pass (tiny configs, CPU)."""

import re

import pytest
import torch

from mss_tools.checkpoint import load_model, model_payload, save_checkpoint
from mss_tools.errors import BadInput
from mss_tools.losses import get_loss
from mss_tools.models import ARCHITECTURES, build_model, model_class

TINY = {
    "unet": {"depth": 3, "channels": 4},
    "unet_lite": {"channels": 4, "bottleneck_channels": 8},
    "demucs_lstm": {"channels": 4, "depth": 2},
    "demucs_attn": {"channels": 4, "depth": 2},
    "bsrnn": {"feature_dim": 8, "hidden_dim": 8, "num_blocks": 1},
    "bsrnn_se": {"feature_dim": 8, "hidden_dim": 8, "num_blocks": 1},
}


def tiny(arch, sources=("vocals", "drums"), channels=2, rate=8000):
    cls = model_class(arch)
    options = {k: v for k, v in TINY[arch].items() if k in cls.DEFAULTS}
    return build_model(arch, list(sources), channels, rate, preset="small", overrides=options)


@pytest.fixture(params=list(ARCHITECTURES))
def arch(request):
    return request.param


@pytest.mark.parametrize("length", [4001, 8000])
@pytest.mark.parametrize("channels,sources", [(2, ("vocals", "drums", "bass", "other")), (1, ("piano",))])
def test_shapes_for_odd_lengths_mono_stereo_single_multi(arch, length, channels, sources):
    torch.manual_seed(0)
    model = tiny(arch, sources, channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, length))
    assert out.shape == (2, len(sources), channels, length)
    assert torch.isfinite(out).all()


def test_gradients_reach_every_parameter_with_the_default_loss(arch):
    torch.manual_seed(0)
    model = tiny(arch)
    mix = torch.randn(2, 2, 8000)
    loss = get_loss(model.DEFAULT_LOSS)(model(mix), torch.randn(2, 2, 2, 8000), model)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("name", ["demucs_lstm", "demucs_attn", "bsrnn", "bsrnn_se"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(name):
    torch.manual_seed(0)
    model = tiny(name)
    mix, target = torch.randn(2, 2, 8000), torch.randn(2, 2, 2, 8000)
    results, kept = [], []
    for enabled in (False, True):
        model.activation_checkpointing = enabled
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks; checkpoint replays its segment's RNG state
        saved = []  # bytes the autograd graph keeps outside checkpointed blocks
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
            output = model(mix)
        loss = get_loss(model.DEFAULT_LOSS)(output, target, model)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        kept.append(sum(saved))
    (loss_off, grads_off), (loss_on, grads_on) = results
    assert kept[1] < kept[0] / 2  # the blocks' activations are really not kept
    torch.testing.assert_close(loss_on, loss_off)
    for n in grads_off:
        torch.testing.assert_close(grads_on[n], grads_off[n], rtol=1e-4, atol=1e-6, msg=n)


def test_checkpoint_round_trip_gives_identical_output(arch, tmp_path):
    torch.manual_seed(0)
    model = tiny(arch).eval()
    save_checkpoint(tmp_path / "m.pt", model_payload(model))
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.arch == arch and loaded.config == model.config
    mix = torch.randn(1, 2, 5000)
    with torch.no_grad():
        assert torch.equal(model(mix), loaded(mix))


def test_weights_of_another_config_are_refused_clearly(arch, tmp_path):
    model = tiny(arch)
    payload = model_payload(model)
    key = next(k for k in ("channels", "feature_dim") if k in payload["config"])
    payload["config"][key] = payload["config"][key] * 2
    save_checkpoint(tmp_path / "m.pt", payload)
    with pytest.raises(BadInput, match=f"weights do not fit architecture '{arch}'"):
        load_model(tmp_path / "m.pt")


def test_unknown_option_and_bad_type_are_refused(arch):
    with pytest.raises(BadInput, match="unknown option 'no_such_option'"):
        model_class(arch).resolve_config(None, {"no_such_option": 1})
    key = next(k for k, v in model_class(arch).DEFAULTS.items() if isinstance(v, int) and not isinstance(v, bool))
    with pytest.raises(BadInput, match=f"option {key}: expected int"):
        model_class(arch).resolve_config(None, {key: "many"})


def test_presets_exist_and_docstring_cites_shapes(arch):
    cls = model_class(arch)
    assert {"small", "paper"} <= set(cls.PRESETS)
    doc = (cls.__doc__ or "") + (__import__(cls.__module__, fromlist=["x"]).__doc__ or "")
    assert re.search(r"\(\w+, \w+, \w+\)", doc), "the docstring states the waveform shape"
    assert re.search(r"arXiv|ISMIR|et al\.", doc), "the docstring cites the paper"


def test_unet_with_all_pass_masks_reconstructs_the_mixture():
    model = tiny("unet").eval()
    model.masks = lambda magnitude: torch.ones(magnitude.shape[0], 2, *magnitude.shape[1:])
    mix = torch.randn(1, 2, 7001)
    with torch.no_grad():
        out = model(mix)
    torch.testing.assert_close(out[0, 0], mix[0], rtol=1e-4, atol=1e-4)


def test_unet_lite_structure_matches_its_description():
    model = build_model("unet_lite", ["vocals"], 2, 22050)
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert model.bottleneck[0][0].out_channels == 64
    assert model.bottleneck[1].p == 0.3
    assert all(block[-1].p == 0.2 for block in model.upsample)
    assert model.head.kernel_size == (1, 1)
    assert model.num_parameters < 100_000
