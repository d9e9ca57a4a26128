"""Contract tests every registered architecture must pass (tiny configs, CPU)."""

import dataclasses

import pytest
import torch

from mss_tools.checkpoint import load_model, model_payload, save_checkpoint
from mss_tools.errors import BadInput
from mss_tools.losses import get_loss
from mss_tools.models import ARCHITECTURES, build_model, model_class
from mss_tools.models.base import ModelConfig, SourceSeparator

TINY = {
    "unet": {"depth": 3, "channels": 4},
    "unet_lite": {"channels": 4, "bottleneck_channels": 8},
    "demucs_lstm": {"channels": 4, "depth": 2},
    "demucs_attn": {"channels": 4, "depth": 2},
    "bsrnn": {"feature_dim": 8, "hidden_dim": 8, "num_blocks": 1},
    "bsrnn_se": {"feature_dim": 8, "hidden_dim": 8, "num_blocks": 1},
    "bs_roformer": {"dim": 8, "depth": 1, "heads": 2, "dim_head": 4, "ff_mult": 2, "mask_mult": 1},
    "tfc_tdf_v3": {"channels": 4, "growth": 4, "scales": 2, "subbands": 2},
    "scnet": {"channels": 4, "depth": 2, "dual_path_layers": 2},
    "htdemucs": {"channels": 4, "depth": 2, "dconv_compress": 4, "bottom_channels": 0, "t_layers": 2, "t_heads": 2},
    "mel_roformer": {"dim": 8, "depth": 2, "heads": 2, "dim_head": 4, "ff_mult": 2, "mask_mult": 1, "num_bands": 12,
                     "attn_dropout": 0.1, "ff_dropout": 0.1},  # dropout: checkpointing must replay its masks
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


@pytest.mark.parametrize("name", ["demucs_lstm", "demucs_attn", "bsrnn", "bsrnn_se", "bs_roformer", "mel_roformer",
                                  "tfc_tdf_v3", "scnet", "htdemucs"])
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
    key = next(k for k in ("channels", "feature_dim", "dim") if k in payload["config"])
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


def test_presets_exist_and_build_the_model_they_name(arch):
    cls = model_class(arch)
    assert {"small", "paper"} <= set(cls.PRESETS)
    for name, preset in cls.PRESETS.items():
        assert type(preset) is type(cls.DEFAULTS)
        with torch.device("meta"):  # no memory; rescaling (slow on meta tensors) changes no structure
            model = build_model(arch, ["vocals"], 2, 44100, preset=name,
                                overrides={"rescale": 0.0} if "rescale" in cls.DEFAULTS else None)
        assert model.config == preset.with_options({"rescale": 0.0} if "rescale" in cls.DEFAULTS else {})
        assert isinstance(model, SourceSeparator)
        assert (model.arch, model.sources, model.audio_channels, model.sample_rate, model.segment) == (
            arch, ["vocals"], 2, 44100, cls.DEFAULT_SEGMENT)


def test_spectrogram_models_say_their_stft_hop(arch):
    model = tiny(arch)
    stft = getattr(model, "stft", None)
    assert model.stft_hop == (stft.hop_length if stft is not None else 1)
    assert (model.stft_hop > 1) == (arch in ("unet", "unet_lite", "bsrnn", "bsrnn_se", "bs_roformer", "mel_roformer",
                                              "tfc_tdf_v3", "scnet", "htdemucs"))


def test_unet_with_all_pass_masks_reconstructs_the_mixture():
    model = tiny("unet").eval()
    model.masks = lambda magnitude: torch.ones(magnitude.shape[0], 2, *magnitude.shape[1:])
    mix = torch.randn(1, 2, 7001)
    with torch.no_grad():
        out = model(mix)
    torch.testing.assert_close(out[0, 0], mix[0], rtol=1e-4, atol=1e-4)


def test_unet_lite_size_matches_its_description():
    """Encoder blocks of 8, 16, 32 filters (3x3 conv, BatchNorm), a 64-channel 3x3 bottleneck, per level a 2x2
    transposed convolution (BatchNorm) and a 3x3 merge convolution (BatchNorm), a 1x1 head: that many parameters."""
    model = build_model("unet_lite", ["vocals"], 2, 22050)

    def conv(inputs, outputs, kernel):  # weights, bias and the BatchNorm after it
        return inputs * outputs * kernel * kernel + outputs + 2 * outputs

    encoder = conv(2, 8, 3) + conv(8, 16, 3) + conv(16, 32, 3)
    bottleneck = conv(32, 64, 3)
    decoder = conv(64, 32, 2) + conv(64, 32, 3) + conv(32, 16, 2) + conv(32, 16, 3) + conv(16, 8, 2) + conv(16, 8, 3)
    head = 8 * 2 + 2
    assert model.num_parameters == encoder + bottleneck + decoder + head
    assert model.num_parameters < 100_000


def test_unet_lite_dropout_acts_in_training_only():
    model = build_model("unet_lite", ["vocals"], 2, 22050)
    assert (model.config.bottleneck_dropout, model.config.decoder_dropout) == (0.3, 0.2)
    mix = torch.randn(1, 2, 8000)
    with torch.no_grad():
        assert not torch.equal(model.train()(mix), model(mix))
        assert torch.equal(model.eval()(mix), model(mix))
        without = build_model("unet_lite", ["vocals"], 2, 22050,
                              overrides={"bottleneck_dropout": 0.0, "decoder_dropout": 0.0}).train()
        assert torch.equal(without(mix), without(mix))


@pytest.mark.parametrize("gain", [10.0, 0.01])
def test_unet_lite_is_scale_equivariant(gain):
    torch.manual_seed(0)
    model = build_model("unet_lite", ["vocals", "drums"], 2, 16000).eval()
    mix = torch.randn(2, 2, 3 * 16000)
    with torch.no_grad():
        plain, scaled = model(mix), model(gain * mix)
    assert ((scaled - gain * plain).norm() / (gain * plain).norm()).item() < 1e-4


def test_unet_lite_can_output_exact_silence():
    torch.manual_seed(0)
    model = build_model("unet_lite", ["vocals", "drums"], 2, 16000).eval()
    with torch.no_grad():
        assert torch.equal(model(torch.zeros(1, 2, 8000)), torch.zeros(1, 2, 2, 8000))  # a silent mixture
        model.head.bias.fill_(-1e3)  # every mask clamped to 0
        assert torch.equal(model(torch.randn(1, 2, 8000)), torch.zeros(1, 2, 2, 8000))


def test_unet_lite_masks_start_inside_the_clamp_so_every_bin_learns():
    """A clamped mask has no gradient where it is clamped: at initialisation every mask is near 0.5, not at the
    kink at 0 where half of them would start dead (a seed of the demo study got stuck at 2 dB that way)."""
    torch.manual_seed(0)
    model = build_model("unet_lite", ["drums"], 2, 8000)
    mix = torch.randn(2, 2, 8000)

    def inside() -> float:  # fraction of (unclamped) masks strictly inside (0, 1), Nyquist bin left out
        with torch.no_grad():
            masks = model.head_output(model.stft(mix / model.input_scale(mix)).abs())[..., :-1, :]
        return ((masks > 0) & (masks < 1)).float().mean().item()

    assert torch.equal(model.head.bias, torch.full_like(model.head.bias, 0.5))
    assert inside() > 0.8  # training mode: batch statistics and dropout spread them
    assert model.eval() and inside() > 0.99


def test_unet_lite_checkpoint_from_before_the_mask_head_keeps_its_head(tmp_path):
    """A stored config without ``output`` and ``normalize`` is the first head: log1p magnitudes, no normalisation."""
    torch.manual_seed(0)
    legacy = build_model("unet_lite", ["vocals"], 2, 8000,
                         overrides={"output": "log1p_magnitude", "normalize": False}).eval()
    payload = model_payload(legacy)
    del payload["config"]["output"], payload["config"]["normalize"]
    save_checkpoint(tmp_path / "old.pt", payload)
    loaded = load_model(tmp_path / "old.pt")
    assert (loaded.config.output, loaded.config.normalize) == ("log1p_magnitude", False)
    mix = torch.randn(1, 2, 5000)
    with torch.no_grad():
        assert torch.equal(loaded(mix), legacy(mix))
    from_empty_dict = build_model("unet_lite", ["vocals"], 2, 8000, config={}).config
    assert from_empty_dict == dataclasses.replace(model_class("unet_lite").DEFAULTS, output="log1p_magnitude",
                                                  normalize=False)
    with pytest.raises(BadInput, match="option output must be one of mask, log1p_magnitude"):
        build_model("unet_lite", ["vocals"], 2, 8000, overrides={"output": "waveform"})


@dataclasses.dataclass(frozen=True)
class EveryKind(ModelConfig):
    count: int = 0
    gain: float = 1.0
    flag: bool = False
    mode: str = "a"
    label: str | None = None
    sizes: tuple[int, ...] = (1, 2)
    names: list[str] = dataclasses.field(default_factory=list)


def test_options_are_converted_by_their_type_hints():
    from_strings = EveryKind().with_options({"count": " 3 ", "gain": "2", "flag": "yes", "mode": "b", "label": "x",
                                             "sizes": "4, 5", "names": "[vocals, drums]"})
    assert from_strings == EveryKind(3, 2.0, True, "b", "x", (4, 5), ["vocals", "drums"])
    from_json = EveryKind(label="x").with_options({"gain": 2, "flag": False, "label": None, "sizes": [6],
                                                   "names": ("bass",)})
    assert from_json == EveryKind(0, 2.0, False, "a", None, (6,), ["bass"])
    assert type(from_json.gain) is float and EveryKind().with_options({"label": "none"}).label is None


@pytest.mark.parametrize("options, message", [
    ({"count": "many"}, "option count: expected int, got 'many'"),
    ({"count": True}, "option count: expected int, got True"),
    ({"count": 2.5}, "option count: expected int, got 2.5"),
    ({"gain": "loud"}, "option gain: expected float, got 'loud'"),
    ({"flag": "maybe"}, "option flag: expected true/false, got 'maybe'"),
    ({"mode": 3}, "option mode: expected str, got 3"),
    ({"sizes": "1,x"}, "option sizes: expected int, got 'x'"),
    ({"sizes": 4}, "option sizes: expected a list of int, got 4"),
    ({"names": [1]}, "option names: expected str, got 1"),
    ({"colour": "red"}, "unknown option 'colour'; known options: count, flag, gain, label, mode, names, sizes"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(BadInput) as error:
        EveryKind().with_options(options)
    assert str(error.value) == message


def test_checkpoint_holds_the_config_as_a_plain_dict_and_the_training_segment(tmp_path):
    model = tiny("bsrnn_se")
    payload = model_payload(model, {"segment": 2.5})
    assert type(payload["config"]) is dict and payload["config"] == dataclasses.asdict(model.config)
    save_checkpoint(tmp_path / "m.pt", payload)
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config == model.config and loaded.segment == 2.5 and model.segment == 3.0
    payload["config"]["no_such_option"] = 1
    save_checkpoint(tmp_path / "bad.pt", payload)
    with pytest.raises(BadInput, match="config has options unknown to 'bsrnn_se': no_such_option"):
        load_model(tmp_path / "bad.pt")


@pytest.mark.parametrize("loss", ["l1_magnitude", "l1_complex_wave"])
def test_spectral_losses_leave_the_model_as_it_is(loss):
    model = tiny("demucs_lstm")
    attributes = dict(vars(model))
    value = get_loss(loss)(torch.randn(1, 2, 2, 4000), torch.randn(1, 2, 2, 4000), model)
    assert torch.isfinite(value) and vars(model) == attributes


def test_scnet_loss_is_its_authors_complex_spectrogram_rmse():
    model = build_model("scnet", ["drums", "bass"], 2, 8000, preset="small")
    assert model.DEFAULT_LOSS == "rmse_complex_spec"
    est, ref = torch.randn(3, 2, 2, 4000, dtype=torch.float64), torch.randn(3, 2, 2, 4000, dtype=torch.float64)
    n_fft, hop = model.stft.n_fft, model.stft.hop_length

    def spec(x):  # torch.stft as the authors call it: no window (rectangular), centred, normalised
        frames = torch.stft(x.reshape(-1, x.shape[-1]), n_fft, hop, center=True, normalized=True, return_complex=True)
        return torch.view_as_real(frames).reshape(*x.shape[:2], -1)

    per_example_and_source = (spec(est) - spec(ref)).pow(2).mean(-1).sqrt()
    assert per_example_and_source.shape == (3, 2)
    expected = per_example_and_source.mean()
    value = get_loss("rmse_complex_spec")(est, ref, model)
    assert torch.allclose(value, expected, rtol=1e-10)
    assert get_loss("rmse_complex_spec")(ref, ref.clone(), model).item() < 1e-9


def test_fast_fft_size_is_the_smallest_product_of_twos_and_threes_at_or_above():
    from mss_tools.dsp import fast_fft_size

    candidates = sorted(2 ** a * 3 ** b for a in range(14) for b in range(9))
    for samples in range(1, 5000):
        assert fast_fft_size(samples) == next(c for c in candidates if c >= samples)


def test_multiresolution_loss_keeps_the_reference_sizes_at_44k_and_fast_sizes_elsewhere():
    from mss_tools.losses import multires_stfts

    at_44k = [(s.n_fft, s.win_length, s.hop_length) for s in multires_stfts(44100, torch.device("cpu"))]
    assert at_44k == [(4096, 4096, 147), (2048, 2048, 147), (2048, 1024, 147), (2048, 512, 147), (2048, 256, 147)]
    at_8k = [(s.n_fft, s.win_length, s.hop_length) for s in multires_stfts(8000, torch.device("cpu"))]
    assert at_8k == [(768, 743, 27), (384, 372, 27), (384, 186, 27), (384, 93, 27), (384, 46, 27)]


def test_rotary_embedding_turns_each_pair_by_its_position_times_its_frequency():
    from mss_tools.models.roformer import RotaryEmbedding

    rotary = RotaryEmbedding(8, theta=100.0)
    x = torch.randn(3, 2, 5, 8)
    turned = rotary(x)
    position = torch.arange(5, dtype=torch.float64)[:, None]
    angle = position * 100.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    even, odd = x.double()[..., 0::2], x.double()[..., 1::2]
    assert torch.allclose(turned[..., 0::2].double(), even * angle.cos() - odd * angle.sin(), atol=1e-6)
    assert torch.allclose(turned[..., 1::2].double(), even * angle.sin() + odd * angle.cos(), atol=1e-6)
    assert torch.equal(turned[..., 0, :], x[..., 0, :])  # position 0 is not turned
    half = rotary(x.half())
    assert half.dtype == torch.float16 and torch.allclose(half.float(), turned, atol=1e-2)
