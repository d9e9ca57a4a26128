"""Waveform Demucs (LSTM and attention bottlenecks): shapes, gradients, checkpoints, receptive field."""

import io

import pytest
import torch

from mss_tools.errors import BadInput
from mss_tools.models import build_model
from mss_tools.models.demucs import DemucsAttention, DemucsLSTM

FOUR = ["drums", "bass", "other", "vocals"]
ARCHS = ["demucs_lstm", "demucs_attn"]


def tiny(arch, sources=("vocals",), audio_channels=2, **overrides):
    """Small preset made tinier still, so each test runs in well under a second."""
    torch.manual_seed(0)
    overrides = {"channels": 8, "depth": 4, **overrides}
    return build_model(arch, list(sources), audio_channels, 16000, preset="small", overrides=overrides)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sources,audio_channels,length", [
    (["vocals"], 2, 22049),
    (FOUR, 2, 8001),
    (["vocals"], 1, 8001),
    (FOUR, 1, 22049),
    (FOUR, 2, 1),
])
def test_output_shape_any_length(arch, sources, audio_channels, length):
    model = tiny(arch, sources, audio_channels)
    mix = torch.randn(2, audio_channels, length)
    with torch.no_grad():
        out = model(mix)
    assert out.shape == (2, len(sources), audio_channels, length)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_valid_length_is_consumed_exactly(arch):
    model = tiny(arch)
    for length in (1, 100, 8001, 22049):
        valid = model.valid_length(length)
        assert valid >= length
        assert model.valid_length(valid) == valid
        steps = valid
        for _ in range(model.depth):
            assert (steps - model.kernel_size) % model.stride == 0
            steps = (steps - model.kernel_size) // model.stride + 1


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_every_parameter(arch):
    model = tiny(arch, FOUR)
    model.train()
    mix = torch.randn(2, 2, 8001)
    out = model(mix)
    (out - torch.randn_like(out)).abs().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip(arch):
    model = tiny(arch, FOUR).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # a different init, so equality comes from the loaded weights
    fresh = build_model(arch, FOUR, 2, 16000, config=model.config).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    mix = torch.randn(1, 2, 8001)
    with torch.no_grad():
        assert torch.equal(model(mix), fresh(mix))


def test_lstm_state_dict_refused_by_attention_model():
    lstm = tiny("demucs_lstm")
    attn = tiny("demucs_attn")
    with pytest.raises(RuntimeError, match="state_dict"):
        attn.load_state_dict(lstm.state_dict())


@pytest.mark.parametrize("arch", ARCHS)
def test_unknown_option_is_bad_input(arch):
    with pytest.raises(BadInput, match="unknown option"):
        build_model(arch, ["vocals"], 2, 16000, preset="small", overrides={"nonsense": 1})
    with pytest.raises(BadInput):
        build_model(arch, ["vocals"], 2, 16000, config={"nonsense": 1})


def test_bad_options_are_bad_input():
    with pytest.raises(BadInput):
        tiny("demucs_lstm", context=2)
    with pytest.raises(BadInput):
        tiny("demucs_attn", attn_heads=7)
    with pytest.raises(BadInput):
        tiny("demucs_lstm", channels="many")
    with pytest.raises(BadInput):
        tiny("demucs_lstm")(torch.randn(1, 1, 100))


def test_option_defaults_and_presets():
    assert DemucsLSTM.DEFAULT_LOSS == DemucsAttention.DEFAULT_LOSS == "l1_wave"
    for cls in (DemucsLSTM, DemucsAttention):
        assert set(cls.PRESETS) >= {"paper", "small"}
        for preset in cls.PRESETS.values():
            assert set(preset) <= set(cls.DEFAULTS)
        assert cls.DEFAULTS["channels"] == 64 and cls.DEFAULTS["depth"] == 6
        assert cls.DEFAULTS["kernel_size"] == 8 and cls.DEFAULTS["stride"] == 4
    assert DemucsLSTM.DEFAULTS["lstm_layers"] == 2


@pytest.mark.parametrize("arch,options,expected", [
    # Demucs v2, 4 sources, 64 channels, depth 6: 265.7 M parameters (about 1014 MiB in
    # float32); the same configuration of the `demucs` package's Demucs class has exactly
    # as many (checked in benchmarks/bench_demucs_peer.py).
    ("demucs_lstm", {}, 265_679_496),
    ("demucs_attn", {}, 265_691_784),
    ("demucs_attn", {"attn_ff": 4.0}, 190_175_880),  # the feed-forward width before it was sized to match
    ("demucs_attn", {"attn_final_norm": False}, 265_687_688),  # before the final layer norm
])
def test_paper_preset_parameter_count(arch, options, expected):
    with torch.device("meta"):  # no memory; rescaling (slow on meta tensors) changes no count
        model = build_model(arch, FOUR, 2, 44100, preset="paper", overrides={"rescale": 0.0, **options})
    print(f"{arch} paper preset {options or ''}: {model.num_parameters:,} parameters")
    assert model.num_parameters == expected


def parameter_count(arch: str, preset: str, sources=FOUR, **options) -> int:
    with torch.device("meta"):  # no memory; rescaling (slow on meta tensors) changes no count
        return build_model(arch, list(sources), 2, 44100, preset=preset,
                           overrides={"rescale": 0.0, **options}).num_parameters


@pytest.mark.parametrize("preset", sorted(set(DemucsLSTM.PRESETS) | set(DemucsAttention.PRESETS)))
def test_attention_is_parameter_matched_to_lstm_at_every_preset(preset):
    """Q2 is a controlled comparison: at every preset demucs_attn has demucs_lstm's parameter
    count to within 2 % (4 stems and 1 stem; the backbones are identical, the bottlenecks both
    42 d^2 weights)."""
    assert preset in DemucsLSTM.PRESETS and preset in DemucsAttention.PRESETS
    for sources in (FOUR, ["vocals"]):
        lstm, attn = parameter_count("demucs_lstm", preset, sources), parameter_count("demucs_attn", preset, sources)
        print(f"{preset} ({len(sources)} stems): demucs_lstm {lstm:,}, demucs_attn {attn:,}, ratio {attn / lstm:.5f}")
        assert abs(attn - lstm) / lstm < 0.02


def test_old_attention_checkpoint_keeps_its_size_and_output(tmp_path):
    """A checkpoint of the former default (attn_ff 4.0, stored in its config) loads at that size and
    gives the same output."""
    from mss_tools.checkpoint import load_model, model_payload, save_checkpoint

    old = tiny("demucs_attn", attn_ff=4.0).eval()
    save_checkpoint(tmp_path / "old.pt", model_payload(old))
    loaded = load_model(tmp_path / "old.pt")
    assert loaded.config.attn_ff == 4.0 and loaded.num_parameters == old.num_parameters
    assert loaded.num_parameters < tiny("demucs_attn").num_parameters
    mix = torch.randn(1, 2, 8001)
    with torch.no_grad():
        assert torch.equal(loaded(mix), old(mix))


def test_attention_checkpoint_from_before_the_final_norm_loads_without_it(tmp_path):
    """A checkpoint whose stored config predates ``attn_final_norm`` is rebuilt without the final
    layer norm (its ``LEGACY`` value): same parameters, same output."""
    from mss_tools.checkpoint import load_model, model_payload, save_checkpoint

    old = tiny("demucs_attn", attn_final_norm=False).eval()
    payload = model_payload(old)
    del payload["config"]["attn_final_norm"]
    save_checkpoint(tmp_path / "old.pt", payload)
    loaded = load_model(tmp_path / "old.pt")
    assert loaded.config.attn_final_norm is False
    assert isinstance(loaded.bottleneck.norm_out, torch.nn.Identity)
    with_norm = tiny("demucs_attn").num_parameters
    assert loaded.num_parameters == old.num_parameters == with_norm - 2 * old.bottleneck_channels
    mix = torch.randn(1, 2, 8001)
    with torch.no_grad():
        assert torch.equal(loaded(mix), old(mix))


def test_attention_bottleneck_output_is_normalised_per_step():
    """The final layer norm: every bottleneck step leaves with zero mean and unit variance over the
    channels (at initialisation, where its affine map is the identity), whatever the input level."""
    model = tiny("demucs_attn").eval()
    x = 30.0 * torch.randn(2, model.bottleneck_channels, 5)
    with torch.no_grad():
        y = model.bottleneck(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=1, correction=0), torch.ones(2, 5), atol=1e-3, rtol=0)


def test_attention_sees_the_whole_window():
    """The last output samples depend on the first input samples only through the attention.

    At initialisation that dependence is weak (the skip connections dominate) but real: the
    gradient is exactly zero without the attention layers and clearly non-zero with them.
    """
    length = 22049
    reach = {}
    for layers in (2, 0):
        model = tiny("demucs_attn", FOUR, normalize=False, attn_layers=layers).eval()
        mix = torch.randn(1, 2, length, requires_grad=True)
        model(mix)[..., -1000:].sum().backward()
        far, near = mix.grad[..., :2048].abs().max().item(), mix.grad[..., -1000:].abs().max().item()
        reach[layers] = far / near
        if layers:
            nudged = mix.detach().clone()
            nudged[..., :2048] += 10 * torch.randn(2, 2048)
            with torch.no_grad():
                assert not torch.equal(model(nudged)[..., -1000:], model(mix)[..., -1000:])
    assert reach[0] == 0.0  # the convolutions alone do not reach that far
    assert reach[2] > 1e-7


@pytest.mark.parametrize("arch", ARCHS)
def test_normalisation_makes_output_scale_with_input(arch):
    model = tiny(arch, FOUR).eval()
    mix = torch.randn(1, 2, 8001)
    with torch.no_grad():
        out, out_scaled = model(mix), model(10 * mix)
    torch.testing.assert_close(out_scaled, 10 * out, rtol=1e-4, atol=1e-4)


def test_small_preset_trains_one_step():
    torch.manual_seed(0)
    model = build_model("demucs_lstm", ["vocals"], 2, 22050, preset="small")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    mix, target = torch.randn(2, 2, 11025), torch.randn(2, 1, 2, 11025)
    losses = []
    for _ in range(3):
        loss = (model(mix) - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
