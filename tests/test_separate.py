"""``mss separate``: streaming equals whole-track separation, test-time augmentation, output formats and layout."""

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from mss_tools import audio
from mss_tools.apply import Pass, StreamingSeparator, separate_tensor, tta_passes
from mss_tools.checkpoint import load_model, model_payload, save_checkpoint
from mss_tools.cli.main import main
from mss_tools.models import ARCHITECTURES, build_model
from mss_tools.models.base import ModelConfig, SeparationModel
from tests.conftest import SHARED, ffmpeg_available, run_mss

SOURCES = ["vocals", "drums", "bass", "other"]
MUSDB_TRACK = SHARED / "fixtures" / "musdb18-7s" / "train" / "Music Delta - 80s Rock.stem.mp4"


@dataclasses.dataclass(frozen=True)
class GainConfig(ModelConfig):
    gain: float = 0.1


class Gain(SeparationModel):
    """A linear, time-invariant stand-in without weights: source k is ``gain · (k + 1)`` times the mixture."""

    ARCH = "gain"
    DEFAULTS = GainConfig()
    PRESETS = {"small": DEFAULTS, "paper": DEFAULTS}
    DEFAULT_SEGMENT = 0.5

    def forward(self, mix):
        scale = torch.arange(1, len(self.sources) + 1, dtype=mix.dtype, device=mix.device).view(1, -1, 1, 1)
        return mix.unsqueeze(1) * scale * self.config.gain


def save_model(model, path):
    save_checkpoint(path, model_payload(model))
    return path


@pytest.fixture(scope="module")
def unet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("unet", SOURCES, 2, 8000, overrides={"depth": 2, "channels": 4})
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "unet.pt")


@pytest.fixture
def gain_ckpt(tmp_path, monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "gain", "tests.test_separate:Gain")

    def make(sample_rate=8000, name="gain.pt"):
        return save_model(build_model("gain", SOURCES, 2, sample_rate), tmp_path / name)

    return make


def write_noise(path, seconds, rate=44100, channels=2, seed=0, subtype="FLOAT"):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 0.7 * t)
    data = (tone[:, None] + 0.05 * rng.standard_normal((t.size, channels))).astype(np.float32)
    sf.write(path, data, rate, subtype=subtype)
    return data.T


def invoke(*args):
    return CliRunner().invoke(main, ["separate", *map(str, args)])


def read(path):
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data.T, rate


def whole_track(ckpt, mix, rate, segment, overlap, batch_size, passes=None):
    """The non-streaming reference: resample the whole track, separate it whole, resample back."""
    model = load_model(ckpt)
    x = audio.resample(audio.to_channels(mix, model.audio_channels), rate, model.sample_rate)
    stems = separate_tensor(model, torch.from_numpy(x), segment, overlap, batch_size, passes=passes).numpy()
    return audio.resample(stems, model.sample_rate, rate)[..., : mix.shape[-1]]


@pytest.mark.parametrize("model", ["gain", "unet"])
def test_streaming_equals_whole_track_with_resampling(model, unet_ckpt, gain_ckpt, tmp_path):
    ckpt = unet_ckpt if model == "unet" else gain_ckpt()
    mix = write_noise(tmp_path / "song.wav", 2.7)  # 44.1 kHz in, 8 kHz model: read in 1 s blocks
    result = invoke(ckpt, tmp_path / "song.wav", "-o", tmp_path / "out", "--segment", "0.25", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    expected = whole_track(ckpt, mix, 44100, 0.25, 0.25, 2)
    for i, stem in enumerate(SOURCES):
        data, rate = read(tmp_path / "out" / "song" / f"{stem}.wav")
        assert rate == 44100 and data.shape == mix.shape
        np.testing.assert_allclose(data, expected[i], atol=2e-5)
    if model == "gain":  # and the whole-track reference itself is right
        np.testing.assert_allclose(expected[1], 0.2 * audio.resample(audio.resample(mix, 44100, 8000), 8000, 44100)
                                   [..., :mix.shape[-1]], atol=1e-6)


@pytest.mark.parametrize("block", [7, 97, 1000, 4410, 100_000])
def test_block_boundaries_are_invisible(block, unet_ckpt):
    model = load_model(unet_ckpt)
    rng = np.random.default_rng(1)
    mix = (0.3 * rng.standard_normal((2, 9000))).astype(np.float32)
    passes = tta_passes(2, True, 4000, 2, np.random.default_rng(0))
    expected = whole_track(unet_ckpt, mix, 22050, 0.3, 0.5, 3, passes)
    down, up = audio.StreamResampler(22050, 8000), audio.StreamResampler(8000, 22050)
    separator = StreamingSeparator(model, audio.resampled_length(mix.shape[-1], 22050, 8000), 0.3, 0.5, 3,
                                   passes=passes)
    pieces = []
    for start in range(0, mix.shape[-1], block):
        finished = separator.push(torch.from_numpy(down.push(mix[:, start:start + block])))
        pieces.append(up.push(finished.reshape(8, -1).numpy()))
    pieces.append(up.push(separator.push(torch.from_numpy(down.finish())).reshape(8, -1).numpy()))
    pieces.append(up.push(separator.finish().reshape(8, -1).numpy()))
    pieces.append(up.finish())
    out = np.concatenate(pieces, axis=-1)[:, : mix.shape[-1]].reshape(4, 2, -1)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_tta_passes():
    passes = tta_passes(3, True, 100, 2, np.random.default_rng(0))
    assert len(passes) == 12 and len({p.delay for p in passes}) == 3 and all(0 <= p.delay <= 100 for p in passes)
    assert {(p.swap, p.invert) for p in passes} == {(False, False), (True, False), (False, True), (True, True)}
    assert tta_passes(0) == [Pass()]
    assert len(tta_passes(0, True, 0, channels=1)) == 2  # no channel swap in mono
    x = torch.randn(3, 2, 10)
    assert torch.equal(Pass(swap=True, invert=True).prepare(x), -x.flip(1))


def test_shifts_are_seeded_and_average_out_for_a_linear_model(unet_ckpt, gain_ckpt, tmp_path):
    write_noise(tmp_path / "song.wav", 1.5, rate=8000)

    def run(ckpt, name, *options):
        result = invoke(ckpt, tmp_path / "song.wav", "-o", tmp_path / name, "--segment", "0.4", *options)
        assert result.exit_code == 0, result.output
        return np.stack([read(tmp_path / name / "song" / f"{s}.wav")[0] for s in SOURCES])

    plain = run(unet_ckpt, "plain")
    shifted = run(unet_ckpt, "a", "--shifts", "2", "--seed", "3")
    np.testing.assert_array_equal(shifted, run(unet_ckpt, "b", "--shifts", "2", "--seed", "3"))
    assert np.abs(shifted - plain).max() > 1e-3
    assert np.abs(shifted - run(unet_ckpt, "c", "--shifts", "2", "--seed", "4")).max() > 1e-4
    flipped = run(unet_ckpt, "d", "--tta-flip")
    assert np.abs(flipped - plain).max() > 1e-3

    ckpt = gain_ckpt()
    plain = run(ckpt, "g0")
    np.testing.assert_allclose(run(ckpt, "g1", "--shifts", "2", "--tta-flip"), plain, atol=1e-6)
    manifest = json.loads((tmp_path / "g1" / "manifest.json").read_text())
    assert manifest["shifts"] == 2 and manifest["tta_flip"] is True and manifest["seed"] == 0


@pytest.mark.parametrize("bits,tolerance,rate", [("float", 1e-6, 8000), ("16", 2.5 / 32768, 22050)])
def test_two_stems_add_up_to_the_input(bits, tolerance, rate, unet_ckpt, tmp_path):
    mix = write_noise(tmp_path / "song.wav", 1.3, rate=rate, subtype="PCM_16")
    result = invoke(unet_ckpt, tmp_path / "song.wav", "-o", tmp_path / "out", "--two-stems", "vocals",
                    "--bits", bits, "--segment", "0.5")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "song"
    assert sorted(p.name for p in folder.iterdir()) == ["no_vocals.wav", "vocals.wav"]
    vocals, written_rate = read(folder / "vocals.wav")
    rest, _ = read(folder / "no_vocals.wav")
    assert written_rate == rate and vocals.shape == rest.shape == mix.shape
    np.testing.assert_allclose(vocals + rest, read(tmp_path / "song.wav")[0], atol=tolerance)
    assert np.abs(vocals).max() > 1e-3 and np.abs(rest).max() > 1e-3
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stems"] == ["vocals", "no_vocals"] and manifest["two_stems"] == "vocals"
    assert invoke(unet_ckpt, tmp_path / "song.wav", "-o", tmp_path / "x", "--two-stems", "piano").exit_code == 2


@pytest.mark.parametrize("options,fmt,subtype", [
    ((), "WAV", "FLOAT"),
    (("--bits", "24"), "WAV", "PCM_24"),
    (("--bits", "16"), "WAV", "PCM_16"),
    (("--format", "flac"), "FLAC", "PCM_24"),
    (("--format", "flac", "--bits", "16"), "FLAC", "PCM_16"),
])
def test_output_formats(options, fmt, subtype, gain_ckpt, tmp_path):
    write_noise(tmp_path / "song.wav", 0.6, rate=8000)
    result = invoke(gain_ckpt(), tmp_path / "song.wav", "-o", tmp_path / "out", *options)
    assert result.exit_code == 0, result.output
    path = tmp_path / "out" / "song" / f"bass.{fmt.lower()}"
    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate, info.frames) == (fmt, subtype, 8000, 4800)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["audio_format"] == fmt.lower() and manifest["subtype"] == subtype


def test_name_template_mono_and_manifest_timing(gain_ckpt, tmp_path):
    mono = write_noise(tmp_path / "mono.wav", 1.0, rate=16000, channels=1)
    (tmp_path / "album" / "cd1").mkdir(parents=True)
    write_noise(tmp_path / "album" / "cd1" / "one.flac", 0.5, rate=8000, subtype="PCM_16")
    out, ckpt = tmp_path / "out", gain_ckpt()
    result = invoke(ckpt, tmp_path / "mono.wav", tmp_path / "album", "-o", out,
                    "--name-template", "{model}/{track}-{stem}.{ext}", "--format", "flac", "--bits", "16")
    assert result.exit_code == 0, result.output
    data, rate = read(out / "gain" / "mono-vocals.flac")
    assert rate == 16000 and data.shape == mono.shape == (1, 16000)
    expected = 0.1 * audio.resample(audio.resample(np.repeat(mono, 2, 0), 16000, 8000), 8000, 16000).mean(0)
    np.testing.assert_allclose(data[0], expected[:16000], atol=1.5 / 32768)
    assert (out / "gain" / "cd1__one-other.flac").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name_template"] == "{model}/{track}-{stem}.{ext}"
    assert manifest["timing"]["audio_seconds"] == pytest.approx(1.5)
    assert manifest["timing"]["wall_seconds"] > 0
    assert {e["track"]: e["files"]["bass"] for e in manifest["tracks"]} == {
        "mono": "gain/mono-bass.flac", "cd1__one": "gain/cd1__one-bass.flac"}

    rerun = invoke(ckpt, tmp_path / "mono.wav", tmp_path / "album", "-o", out,
                   "--name-template", "{model}/{track}-{stem}.{ext}", "--format", "flac", "--bits", "16")
    assert rerun.exit_code == 0 and rerun.output.count("already separated") == 2
    changed = invoke(ckpt, tmp_path / "mono.wav", "-o", out, "--name-template", "{model}/{track}-{stem}.{ext}",
                     "--format", "flac", "--bits", "24")
    assert changed.exit_code == 0 and "already separated" not in changed.output
    assert sf.info(out / "gain" / "mono-bass.flac").subtype == "PCM_24"
    for template in ("{track}/{stem}.{extension}", "{track}.{ext}", "../{track}/{stem}.{ext}"):
        assert invoke(ckpt, tmp_path / "mono.wav", "-o", out, "--name-template", template).exit_code == 2
    clash = invoke(ckpt, tmp_path / "mono.wav", tmp_path / "album", "-o", out, "--name-template", "{stem}.wav")
    assert clash.exit_code == 2 and "same file" in clash.output


def test_failures_and_exit_codes(unet_ckpt, tmp_path):
    write_noise(tmp_path / "good.wav", 0.5, rate=8000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF junk")
    result = invoke(unet_ckpt, tmp_path / "bad.wav", tmp_path / "good.wav", "-o", tmp_path / "out")
    assert result.exit_code == 1 and "bad.wav" in result.output
    assert all((tmp_path / "out" / "good" / f"{s}.wav").exists() for s in SOURCES)
    assert not (tmp_path / "out" / "bad").exists()
    assert not list((tmp_path / "out").rglob("*.tmp"))
    missing = invoke(tmp_path / "nowhere.pt", tmp_path / "good.wav", "-o", tmp_path / "o2")
    assert missing.exit_code == 2 and "nowhere.pt" in missing.output
    assert invoke(unet_ckpt, tmp_path / "good.wav", "-o", tmp_path / "o3", "--format", "flac",
                  "--bits", "float").exit_code == 2

    process = run_mss("separate", unet_ckpt, tmp_path / "good.wav", tmp_path / "bad.wav", "-o", tmp_path / "sub",
                      "--bits", "16", "--shifts", "1")
    assert process.returncode == 1 and "bad.wav" in process.stderr and "Traceback" not in process.stderr
    assert sf.info(tmp_path / "sub" / "good" / "vocals.wav").subtype == "PCM_16"
    manifest = json.loads((tmp_path / "sub" / "manifest.json").read_text())
    assert [e["track"] for e in manifest["tracks"]] == ["good"] and manifest["timing"]["audio_seconds"] == 0.5


def test_stem_mp4_without_ffmpeg_is_a_clear_error(gain_ckpt, tmp_path, monkeypatch):
    write_noise(tmp_path / "good.wav", 0.5, rate=8000)
    (tmp_path / "song.stem.mp4").write_bytes(b"not really")
    monkeypatch.setattr(audio, "ffmpeg_available", lambda: False)
    audio._stempeg.cache_clear()
    try:
        result = invoke(gain_ckpt(), tmp_path, "-o", tmp_path / "out")
    finally:
        audio._stempeg.cache_clear()
    assert result.exit_code == 1
    assert "song.stem.mp4" in result.output and "needs ffmpeg" in result.output
    assert (tmp_path / "out" / "good" / "vocals.wav").exists()


@pytest.mark.skipif(not MUSDB_TRACK.exists(), reason="../shared/fixtures is absent")
@pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed")
def test_stem_mp4_separates_its_mixture_stream(gain_ckpt, tmp_path):
    result = invoke(gain_ckpt(sample_rate=44100), MUSDB_TRACK, "-o", tmp_path / "out", "--segment", "2")
    assert result.exit_code == 0, result.output
    mixture = audio.read_stem_mp4(MUSDB_TRACK)[0][0]
    vocals, rate = read(tmp_path / "out" / "Music Delta - 80s Rock" / "vocals.wav")
    assert rate == 44100
    np.testing.assert_allclose(vocals, 0.1 * mixture, atol=1e-6)
