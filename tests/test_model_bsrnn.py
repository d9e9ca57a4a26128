"""Band-Split RNN (``bsrnn``) and its Squeeze-and-Excitation variant (``bsrnn_se``)."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch

from mss_tools.checkpoint import load_model, model_payload, save_checkpoint
from mss_tools.dsp import model_n_fft
from mss_tools.errors import BadInput
from mss_tools.losses import get_loss
from mss_tools.models import build_model
from mss_tools.models.bsrnn import BAND_SCHEMES, BSRNN, BSRNNSE, band_edges_hz, band_widths

TINY = {"feature_dim": 8, "hidden_dim": 8, "num_blocks": 1, "mlp_ratio": 2}


def tiny(arch="bsrnn", sources=("vocals",), channels=2, sample_rate=16000, **overrides):
    torch.manual_seed(0)
    return build_model(arch, list(sources), channels, sample_rate, overrides={**TINY, **overrides})


@pytest.mark.parametrize("scheme", sorted(BAND_SCHEMES))
@pytest.mark.parametrize("sample_rate", [16000, 22050, 44100])
def test_bands_tile_all_bins(scheme, sample_rate):
    for n_fft in (model_n_fft(sample_rate), 256, 4096):
        widths = band_widths(scheme, sample_rate, n_fft)
        assert sum(widths) == n_fft // 2 + 1
        assert min(widths) >= 1


def test_paper_band_counts_and_edges_at_44k():
    assert {s: len(band_widths(s, 44100, 2048)) for s in BAND_SCHEMES} == {"v7": 41, "bass": 30, "drums": 55}
    v7 = band_edges_hz("v7")
    assert v7[:10] == list(range(100, 1001, 100))
    assert v7[10:22] == list(range(1250, 4001, 250))
    assert v7[-3:] == [16000, 18000, 20000]
    assert band_edges_hz("bass")[:10] == list(range(50, 501, 50))
    assert band_edges_hz("drums")[-1] == 16000
    # 100 Hz bands are 4-5 bins of 21.5 Hz; the top band is 20 kHz..Nyquist.
    assert band_widths("v7", 44100, 2048)[:3] == [5, 5, 4]
    assert band_widths("v7", 44100, 2048)[-1] == 1025 - 929


def test_stft_settings_follow_sample_rate():
    assert (tiny(sample_rate=44100).stft.n_fft, tiny(sample_rate=44100).stft.hop_length) == (2048, 512)
    for rate in (16000, 22050):
        model = tiny(sample_rate=rate)
        assert (model.stft.n_fft, model.stft.hop_length) == (1024, 256)
    model = tiny(n_fft=512, hop_length=128)
    assert (model.stft.n_fft, model.stft.hop_length) == (512, 128)
    assert sum(model.band_widths) == 257


@pytest.mark.parametrize("sources, expected", [
    (["piano"], "v7"), (["vocals"], "v7"), (["other"], "v7"), (["bass"], "bass"), (["drums"], "drums"),
    (["vocals", "drums", "bass", "other"], "v7"),
])
def test_auto_band_scheme(sources, expected):
    assert tiny(sources=sources).band_scheme == expected


def test_named_band_scheme():
    model = tiny(sources=["vocals"], band_scheme="drums")
    assert model.band_scheme == "drums"
    assert model.num_bands == len(band_widths("drums", 16000, 1024))


@pytest.mark.parametrize("arch", ["bsrnn", "bsrnn_se"])
@pytest.mark.parametrize("channels, sources, length", [
    (2, ["vocals"], 4001),
    (1, ["piano"], 3333),
    (2, ["vocals", "drums", "bass", "other"], 2049),
    (1, ["bass"], 100),
])
def test_output_shape(arch, channels, sources, length):
    model = tiny(arch, sources, channels)
    out = model(torch.randn(2, channels, length))
    assert out.shape == (2, len(sources), channels, length)
    assert torch.isfinite(out).all()


def test_identity_mask_reconstructs_input(monkeypatch):
    model = tiny(sources=["vocals", "drums"])
    mix = torch.randn(2, 2, 5001)

    def unit_masks(spec):
        return torch.ones(spec.shape[0], 2, *spec.shape[1:], dtype=spec.dtype)

    monkeypatch.setattr(model, "estimate_masks", unit_masks)
    out = model(mix)
    assert torch.allclose(out, mix[:, None].expand_as(out), atol=1e-5)


def test_apply_masks_is_complex_product():
    spec = torch.randn(1, 2, 5, 3, dtype=torch.complex64)
    masks = torch.randn(1, 3, 2, 5, 3, dtype=torch.complex64)
    out = BSRNN.apply_masks(spec, masks)
    assert out.shape == (1, 3, 2, 5, 3)
    assert torch.allclose(out[0, 1], spec[0] * masks[0, 1])


@pytest.mark.parametrize("channel_mode, band_channels", [("independent", 1), ("joint", 2)])
def test_band_split_and_masks_are_band_local(channel_mode, band_channels):
    model = tiny(sources=["vocals"], channels=2, channel_mode=channel_mode)
    spec = torch.randn(1, band_channels, 513, 4, dtype=torch.complex64)
    starts = [sum(model.band_widths[:k]) for k in range(model.num_bands)]
    base = model.band_split(spec)
    for band in (0, 7, model.num_bands - 1):
        bumped = spec.clone()
        bumped[:, :, starts[band]:starts[band] + model.band_widths[band]] += 1.0
        changed = (model.band_split(bumped) - base).abs().amax(dim=(1, 2, 3)) > 0
        assert changed.nonzero().flatten().tolist() == [band]

    estimator = model.mask_estimators[0]
    features = torch.randn_like(base)
    mask = estimator(features)
    for band in (0, 7, model.num_bands - 1):
        bumped = features.clone()
        bumped[band] += 1.0
        changed = (estimator(bumped) - mask).abs().amax(dim=(0, 1, 3)) > 0
        lo, hi = starts[band], starts[band] + model.band_widths[band]
        assert changed.nonzero().flatten().tolist() == list(range(lo, hi))


def test_independent_channels_are_separated_on_their_own():
    model = tiny(sources=["vocals", "bass"], channels=2).eval()
    mix = torch.randn(2, 2, 4000)
    changed = mix.clone()
    changed[:, 1] = torch.randn(2, 4000)
    with torch.no_grad():
        out, out_changed = model(mix), model(changed)
        alone = model(mix[:, :1].expand(-1, 2, -1).contiguous())
    assert torch.equal(out[:, :, 0], out_changed[:, :, 0])
    assert not torch.allclose(out[:, :, 1], out_changed[:, :, 1])
    torch.testing.assert_close(alone[:, :, 0], out[:, :, 0], rtol=1e-5, atol=1e-6)
    joint = tiny(sources=["vocals"], channels=2, channel_mode="joint").eval()
    with torch.no_grad():
        assert not torch.equal(joint(mix)[:, :, 0], joint(changed)[:, :, 0])


@pytest.mark.parametrize("source, millions", [("vocals", 36.417160), ("bass", 32.797192), ("drums", 41.024392)])
def test_paper_preset_parameter_counts(source, millions):
    """Paper size (N=128, 12 blocks, 2N BLSTM units, two 4N mask layers, channels apart): 33-41 M
    per target depending on the band scheme; SE adds 12 * (2 * 128 * 16 + 16 + 128) parameters."""
    with torch.device("meta"):
        model = build_model("bsrnn", [source], 2, 44100, preset="paper")
        with_se = build_model("bsrnn_se", [source], 2, 44100, preset="paper")
    assert model.num_parameters == round(millions * 1e6)
    assert with_se.num_parameters - model.num_parameters == 12 * (2 * 128 * 16 + 16 + 128)


def test_mask_mlp_layers_and_channel_mode_set_the_size():
    one = tiny(mlp_layers=1, channel_mode="joint")
    two = tiny(mlp_layers=2, channel_mode="joint")
    hidden = TINY["mlp_ratio"] * TINY["feature_dim"]
    assert two.num_parameters - one.num_parameters == one.num_bands * (hidden * hidden + hidden)
    with pytest.raises(BadInput, match="channel_mode"):
        tiny(channel_mode="stereo")


@pytest.mark.parametrize("arch", ["bsrnn", "bsrnn_se"])
def test_gradients_reach_every_parameter(arch):
    # se_reduction 2 keeps 4 squeezed units, so a dead ReLU cannot zero the whole SE gradient.
    model = tiny(arch, sources=["vocals", "bass"], **({"se_reduction": 2} if arch == "bsrnn_se" else {}))
    mix = torch.randn(2, 2, 3000)
    loss = get_loss(model.DEFAULT_LOSS)(model(mix), torch.randn(2, 2, 2, 3000), model)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ["bsrnn", "bsrnn_se"])
def test_save_load_gives_identical_output(arch):
    model = tiny(arch).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    restored = build_model(arch, ["vocals"], 2, 16000, config=model.config).eval()
    restored.load_state_dict(torch.load(buffer))
    mix = torch.randn(1, 2, 2500)
    with torch.no_grad():
        assert torch.equal(model(mix), restored(mix))


def test_se_parameter_overhead():
    n, blocks, r = 16, 3, 4
    base = tiny("bsrnn", feature_dim=n, num_blocks=blocks)
    se = tiny("bsrnn_se", feature_dim=n, num_blocks=blocks, se_reduction=r)
    assert se.num_parameters - base.num_parameters == blocks * (n * n // r + n // r + n // r * n + n)


def test_bsrnn_state_dict_refused_by_bsrnn_se():
    state = tiny("bsrnn").state_dict()
    with pytest.raises(RuntimeError):
        tiny("bsrnn_se").load_state_dict(state)


@pytest.mark.parametrize("overrides", [
    {"no_such_option": 1}, {"se_reduction": 8}, {"band_scheme": "v9"}, {"feature_dim": 0}, {"n_fft": -1},
    {"hop_length": 4096}, {"norm": "layer"}, {"se_placement": "branch"},
])
def test_bad_options_raise_bad_input(overrides):
    with pytest.raises(BadInput):
        build_model("bsrnn", ["vocals"], 2, 16000, overrides={**TINY, **overrides})


def test_bad_se_placement_raises_bad_input():
    with pytest.raises(BadInput, match="se_placement"):
        tiny("bsrnn_se", se_placement="inside")


def test_unknown_option_in_a_config_raises_bad_input():
    with pytest.raises(BadInput):
        build_model("bsrnn_se", ["vocals"], 2, 16000, config={"depth": 3})
    with pytest.raises(TypeError):  # the constructor takes its own config type only
        BSRNNSE(["vocals"], 2, 16000, BSRNN.DEFAULTS)


def test_wrong_input_shape_raises_bad_input():
    with pytest.raises(BadInput):
        tiny(channels=2)(torch.randn(1, 1, 1000))


def test_class_settings():
    assert BSRNN.DEFAULT_LOSS == BSRNNSE.DEFAULT_LOSS == "l1_complex_wave"
    assert BSRNN.DEFAULT_SEGMENT == 3.0
    assert set(BSRNNSE.DEFAULTS) == set(BSRNN.DEFAULTS) | {"se_reduction", "se_placement"}
    assert (BSRNN.DEFAULTS.norm, BSRNNSE.DEFAULTS.norm, BSRNNSE.DEFAULTS.se_placement) == ("band_time", "band_time",
                                                                                          "branch")
    for cls in (BSRNN, BSRNNSE):
        assert {"paper", "small"} <= set(cls.PRESETS)


@pytest.mark.parametrize("target, bands", [("vocals", 41), ("bass", 30), ("drums", 55)])
def test_paper_preset_size(target, bands):
    model = build_model("bsrnn", [target], 2, 44100, preset="paper")
    assert model.num_bands == bands
    assert (model.stft.n_fft, model.stft.hop_length) == (2048, 512)
    # Measured 27.3 M (bass), 28.0 M (vocals/v7), 28.9 M (drums).
    assert 25e6 < model.num_parameters < 45e6


def se_identity_path_gain(placement: str) -> float:
    """Gain of the skip path through the 12 blocks of the bsrnn_se paper preset at initialisation.

    Every BLSTM branch's output projection is zeroed, so the blocks pass on only what the
    identity path carries; the gain is ``|out| / |in|`` for random band features
    ``(K=41, B=1, T=16, N=128)``. The SE layers keep their initial weights.
    """
    torch.manual_seed(0)
    model = build_model("bsrnn_se", ["vocals"], 2, 44100, preset="paper", overrides={"se_placement": placement})
    with torch.no_grad():
        for block in model.blocks:
            for rnn in (block.time_rnn, block.band_rnn):
                rnn.proj.weight.zero_()
                rnn.proj.bias.zero_()
        features = torch.randn(model.num_bands, 1, 16, model.config.feature_dim)
        out = features
        for block in model.blocks:
            out = block(out)
    return (out.norm() / features.norm()).item()


def test_se_on_the_residual_branch_keeps_the_identity_path():
    """Q3: with the SE gate on each block's residual update (default) the skip path of the 12-block
    paper preset has gain 1; gating the whole stream (the old placement) scales it by the product
    of twelve ~0.5 gates. The placement changes no parameter."""
    gains = {placement: se_identity_path_gain(placement) for placement in ("branch", "stream")}
    print(f"SE identity-path gain at initialisation, 12-block paper preset: branch {gains['branch']:.6g}, "
          f"stream {gains['stream']:.3g}")
    assert gains["branch"] == pytest.approx(1.0, abs=1e-6)
    assert gains["stream"] < 1e-2
    assert math.log2(gains["stream"]) == pytest.approx(-12, abs=3)  # about 0.5 ** 12
    with torch.device("meta"):
        counts = {placement: build_model("bsrnn_se", ["vocals"], 2, 44100, preset="paper",
                                         overrides={"se_placement": placement}).num_parameters
                  for placement in ("branch", "stream")}
    assert counts["branch"] == counts["stream"] == 36_417_160 + 12 * (2 * 128 * 16 + 16 + 128)


def test_branch_se_gates_the_block_update_and_stream_se_the_block_output():
    """Each placement computes what it says, from the same weights: ``x + SE(y - x)`` and ``SE(y)``,
    ``y`` the block without SE."""
    branch = tiny("bsrnn_se", feature_dim=16, se_reduction=2).blocks[0]
    stream = tiny("bsrnn_se", feature_dim=16, se_reduction=2, se_placement="stream").blocks[0]
    plain = tiny("bsrnn", feature_dim=16).blocks[0]
    stream.load_state_dict(branch.state_dict())
    plain.load_state_dict({k: v for k, v in branch.state_dict().items() if not k.startswith("se.")})
    x = torch.randn(5, 2, 7, 16)
    with torch.no_grad():
        y = plain(x)
        torch.testing.assert_close(branch(x), x + branch.se(y - x))
        torch.testing.assert_close(stream(x), branch.se(y))


def level_step(norm: str) -> tuple[BSRNN, torch.Tensor, torch.Tensor]:
    """A model with ``norm`` (joint channels, band-split bias zeroed so that features are linear in the
    normalised input), a noise spectrogram ``(1, 2, 513, 16)`` and the same one 26 dB louder from frame 8 on."""
    model = tiny(channel_mode="joint", norm=norm)
    with torch.no_grad():
        for group in model.band_split.groups:
            group.bias.zero_()
    torch.manual_seed(1)
    spec = torch.randn(1, 2, 513, 16, dtype=torch.complex64)
    stepped = spec.clone()
    stepped[..., 8:] *= 10 ** (26 / 20)
    return model, spec, stepped


def envelope_db(features: torch.Tensor) -> torch.Tensor:
    """Per-frame level (dB) of band features ``(K, B, T, N)``: mean square over bands, batch and features."""
    return 10 * torch.log10(features.pow(2).mean(dim=(0, 1, 3)))


def test_band_time_norm_keeps_a_level_step_and_frame_norm_removes_it():
    """A 26 dB step inside the chunk: with the authors' per-band normalisation over (features, time)
    the features' envelope steps by about as much (more than 20 dB); with per-frame normalisation
    the features do not change at all (up to float error)."""
    model, spec, stepped = level_step("band_time")
    with torch.no_grad():
        plain, louder = envelope_db(model.band_split(spec)), envelope_db(model.band_split(stepped))
    step = (louder[8:].mean() - louder[:8].mean()) - (plain[8:].mean() - plain[:8].mean())
    assert 20 < step.item() < 27  # the quiet half gains a little from the chunk mean subtracted from it
    model, spec, stepped = level_step("frame")
    with torch.no_grad():
        torch.testing.assert_close(model.band_split(stepped), model.band_split(spec), rtol=1e-4, atol=1e-4)


def test_mask_estimator_norm_over_time_sees_the_level_of_other_frames():
    """The masks of the first frames depend on the level of the later frames with ``band_time``
    (statistics over the chunk) and not with ``frame``."""
    for norm, depends in (("band_time", True), ("frame", False)):
        model = tiny(norm=norm)
        features = torch.randn(model.num_bands, 1, 6, TINY["feature_dim"])
        louder = features.clone()
        louder[:, :, 3:] *= 20
        with torch.no_grad():
            before, after = model.mask_estimators[0](features)[..., :3], model.mask_estimators[0](louder)[..., :3]
        assert (not torch.allclose(before, after, atol=1e-5)) is depends, norm


def test_norm_changes_no_parameter_count():
    """GroupNorm(1, C) and LayerNorm(C) both have 2C affine parameters: the paper counts stay exact."""
    with torch.device("meta"):
        for norm in ("band_time", "frame"):
            assert build_model("bsrnn", ["vocals"], 2, 44100, preset="paper",
                               overrides={"norm": norm}).num_parameters == 36_417_160


@pytest.mark.parametrize("arch, legacy", [("bsrnn", {"norm": "frame"}),
                                          ("bsrnn_se", {"norm": "frame", "se_placement": "stream"})])
def test_checkpoint_written_before_the_options_loads_with_the_old_behaviour(arch, legacy, tmp_path):
    """A stored config without ``norm``/``se_placement`` (written before they existed) takes the values
    the model had then; it gives the outputs of a model built with those values explicitly."""
    old = tiny(arch, sources=["vocals", "drums"], **legacy).eval()
    payload = model_payload(old)
    for key in legacy:
        del payload["config"][key]
    save_checkpoint(tmp_path / "old.pt", payload)
    loaded = load_model(tmp_path / "old.pt")
    assert loaded.config == old.config
    mix = torch.randn(1, 2, 5000)
    with torch.no_grad():
        assert torch.equal(loaded(mix), old(mix))
    # a partial set of options (a preset plus --arch-opt) keeps the new defaults
    assert BSRNN.DEFAULTS.with_options({"feature_dim": 8}).norm == "band_time"
    current = dataclasses.asdict(tiny(arch).config)
    assert build_model(arch, ["vocals"], 2, 16000, config=current).config == tiny(arch).config
