"""Mix plans, the curriculum, and training that researchers can trust (resume, NaN, DDP, warm start)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mss_tools.cache import StemCache, read_plan
from mss_tools.cli.main import main
from mss_tools.errors import BadInput
from mss_tools.mixing import MixPlan
from mss_tools.training import TrainConfig, train
from tests.conftest import run_mss

SMALL_BSRNN = {"feature_dim": 8, "hidden_dim": 8, "num_blocks": 1}


def remix(*args):
    return CliRunner().invoke(main, ["remix", *map(str, args)])


@pytest.mark.parametrize("stage,active", [(1, 2), (2, 3), (3, 4)])
def test_curriculum_stages_activate_exactly_2_3_all_sources(demo_cache, tmp_path, stage, active):
    plan = tmp_path / "plan.h5"
    result = remix(demo_cache, plan, "--target", "vocals", "--stage", stage, "--segment", 1, "--examples", 40)
    assert result.exit_code == 0, result.output
    fields, tracks, attrs = read_plan(plan)
    assert (fields["active"].sum(axis=1) == active).all()
    assert fields["active"][:, 0].all()  # vocals, the target, is always active
    assert attrs["stage"] == stage and list(attrs["targets"]) == ["vocals"]
    assert len(set(fields["track"][:, 0])) > 1  # cross-track: examples come from several tracks
    rendered = MixPlan(str(plan)).render(3)
    silent = ~fields["active"][3]
    assert np.all(rendered[silent] == 0) and np.any(rendered[~silent] != 0)


def test_plan_rendered_twice_gives_identical_bytes(demo_cache, tmp_path):
    plan = tmp_path / "plan.h5"
    assert remix(demo_cache, plan, "--target", "vocals", "--sources", 3, "--segment", 1, "--examples", 6,
                 "--render", tmp_path / "a.h5").exit_code == 0
    assert remix(demo_cache, tmp_path / "plan2.h5", "--target", "vocals", "--sources", 3, "--segment", 1,
                 "--examples", 6, "--render", tmp_path / "b.h5").exit_code == 0
    a, b = StemCache(tmp_path / "a.h5"), StemCache(tmp_path / "b.h5")
    from mss_tools.mixing import render_plan
    render_plan(str(plan), str(tmp_path / "c.h5"))
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "c.h5").read_bytes()
    for track in a.tracks("train"):
        np.testing.assert_array_equal(a.read("train", track), b.read("train", track))
        np.testing.assert_allclose(a.read_mixture("train", track), a.read("train", track).sum(0), atol=1e-6)
    assert len(a.tracks("train")) == 6


def test_aligned_examples_take_every_source_from_one_track(demo_cache, tmp_path):
    plan = tmp_path / "plan.h5"
    assert remix(demo_cache, plan, "--aligned", "--segment", 1, "--examples", 10, "--no-augment").exit_code == 0
    fields, _, _ = read_plan(plan)
    assert (fields["track"] == fields["track"][:, :1]).all()
    assert (fields["offset"] == fields["offset"][:, :1]).all()
    assert (fields["gain"] == 1).all() and not fields["swap"].any() and not fields["flip"].any()


def test_silent_targets_are_rejected(stem_folder, tmp_path):
    from mss_tools.prep import PrepOptions, prep

    root, _, _ = stem_folder
    cache = tmp_path / "c.h5"
    prep(str(root), cache, PrepOptions(valid_tracks=["song3"]))
    plan = tmp_path / "piano.h5"
    result = remix(cache, plan, "--target", "piano", "--sources", 2, "--segment", 0.5, "--examples", 60,
                   "--silent-keep", 0)
    assert result.exit_code == 0, result.output
    fields, tracks, _ = read_plan(plan)
    piano = StemCache(cache).sources.index("piano")
    assert "song1" in tracks  # the track without piano is in the split ...
    assert all(tracks[t] != "song1" for t in fields["track"][:, piano])  # ... but never feeds the piano slot
    assert (fields["active"].sum(1) == 2).all() and fields["active"][:, piano].all()
    kept = tmp_path / "kept.h5"
    assert remix(cache, kept, "--target", "piano", "--sources", 2, "--segment", 0.5, "--examples", 60,
                 "--silent-keep", 1).exit_code == 0
    assert any(read_plan(kept)[1][t] == "song1" for t in read_plan(kept)[0]["track"][:, piano])


def test_piano_only_single_target_training_on_a_custom_folder(stem_folder, tmp_path):
    from mss_tools.prep import PrepOptions, prep

    root, _, _ = stem_folder
    cache = tmp_path / "c.h5"
    prep(str(root), cache, PrepOptions(valid_tracks=["song3"]))
    plan = tmp_path / "piano.h5"
    assert remix(cache, plan, "--target", "piano", "--stage", 1, "--segment", 0.5, "--examples", 8).exit_code == 0
    config = TrainConfig(arch="bsrnn", preset="small", arch_options=SMALL_BSRNN, targets=["piano"], plan=str(plan),
                         epochs=1, steps_per_epoch=2, batch_size=2, seed=0)
    train(str(cache), tmp_path / "exp", config)
    best = torch.load(tmp_path / "exp" / "best.pt", weights_only=True)
    assert best["sources"] == ["piano"] and best["meta"]["stage"] == 1
    assert json.loads((tmp_path / "exp" / "config.json").read_text())["segment"] == 0.5


def _config(**overrides):
    base = dict(arch="bsrnn", preset="small", arch_options=SMALL_BSRNN, epochs=2, steps_per_epoch=3, batch_size=2,
                segment=0.5, valid_seconds=1.0, seed=5, ema=0.9, schedule="cosine", warmup_steps=2,
                checkpoint_every=1)
    base.update(overrides)
    return TrainConfig(**base)


def _weights(folder, name="last.pt"):
    return torch.load(folder / name, weights_only=True)["state_dict"]


def _assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if atol:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol)
        else:
            assert torch.equal(a[key], b[key]), key


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(demo_cache, tmp_path):
    args = ["train", "--arch", "bsrnn", "--preset", "small", "--arch-opt", "feature_dim=8", "--arch-opt", "hidden_dim=8",
            "--arch-opt", "num_blocks=1", "--epochs", "2", "--steps-per-epoch", "6", "--batch-size", "2",
            "--segment", "0.5", "--valid-seconds", "1", "--seed", "5", "--ema", "0.9", "--checkpoint-every", "1",
            "--schedule", "cosine", "--warmup-steps", "2", str(demo_cache)]
    run_mss(*args, "-o", tmp_path / "full", check=True)
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mss_tools", *args, "-o", str(killed)], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        last = killed / "last.pt"
        if last.exists():
            try:
                step = torch.load(last, weights_only=True)["training"]["step"]
            except Exception:
                step = 0
            if step >= 3:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert (killed / "last.pt").exists(), stderr[-2000:]
    step = torch.load(killed / "last.pt", weights_only=True)["training"]["step"]
    if step >= 12:
        pytest.skip("the run finished before it could be killed")
    resumed = run_mss(*args, "-o", killed, check=True)
    assert f"resuming {killed} at step {step}" in resumed.stderr
    _assert_same(_weights(tmp_path / "full"), _weights(killed))
    _assert_same(_weights(tmp_path / "full", "best.pt"), _weights(killed, "best.pt"))
    full_metrics = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    killed_metrics = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in killed_metrics] == [6, 12]
    assert [m["train_loss"] for m in killed_metrics] == pytest.approx([m["train_loss"] for m in full_metrics])


def test_truncated_last_checkpoint_is_a_clear_error_and_keeps_the_previous(demo_cache, tmp_path):
    folder = tmp_path / "exp"
    train(str(demo_cache), folder, _config(epochs=1))
    previous = (folder / "last.prev.pt").read_bytes()
    data = (folder / "last.pt").read_bytes()
    (folder / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="last.pt: not a readable checkpoint.*last.prev.pt is intact"):
        train(str(demo_cache), folder, _config(epochs=2))
    assert (folder / "last.prev.pt").read_bytes() == previous
    assert (folder / "last.pt").stat().st_size == len(data) // 2


def test_non_finite_losses_are_skipped_then_stop(demo_cache, tmp_path, monkeypatch):
    import mss_tools.training as training

    calls = {"n": 0}
    real = training.get_loss("l1_complex_wave")

    def flaky(est, ref, model):
        calls["n"] += 1
        value = real(est, ref, model)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(training, "get_loss", lambda name: flaky)
    folder = tmp_path / "exp"
    train(str(demo_cache), folder, _config(epochs=1, ema=0.0))
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["bad_steps"] == 1 and np.isfinite(record["train_loss"])
    for value in _weights(folder).values():
        assert torch.isfinite(value.float()).all()
    monkeypatch.setattr(training, "get_loss", lambda name: lambda e, r, m: real(e, r, m) * float("inf"))
    with pytest.raises(training.MssError, match="3 consecutive non-finite losses"):
        train(str(demo_cache), tmp_path / "diverged", _config(epochs=1, max_bad_steps=3))


def test_warm_start_chains_curriculum_stages(demo_cache, tmp_path):
    stage1 = tmp_path / "s1"
    train(str(demo_cache), stage1, _config(epochs=1, active_sources=2, stage=1, targets=["vocals"]))
    result = CliRunner().invoke(main, ["train", "--arch", "bsrnn", "--preset", "small", "--arch-opt", "feature_dim=8",
                                       "--arch-opt", "hidden_dim=8", "--arch-opt", "num_blocks=1", "--targets", "vocals",
                                       "--stage", "2", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
                                       "--segment", "0.5", "--valid-seconds", "1", "--init", str(stage1 / "best.pt"),
                                       "-o", str(tmp_path / "s2"), str(demo_cache)])
    assert result.exit_code == 0, result.output
    assert "warm start" in result.output
    assert json.loads((tmp_path / "s2" / "provenance.json").read_text())["stage"] == 2
    mismatch = CliRunner().invoke(main, ["train", "--arch", "bsrnn", "--preset", "small", "--targets", "vocals",
                                         "--init", str(stage1 / "best.pt"), "--epochs", "1", "-o", str(tmp_path / "x"),
                                         str(demo_cache)])
    assert mismatch.exit_code == 2 and "--init needs a checkpoint of the same architecture" in mismatch.output


def test_two_process_gloo_ddp_equals_single_process(demo_cache, tmp_path):
    common = ["train", "--arch", "bsrnn", "--preset", "small", "--arch-opt", "feature_dim=8", "--arch-opt",
              "hidden_dim=8", "--arch-opt", "num_blocks=1", "--epochs", "1", "--steps-per-epoch", "3",
              "--batch-size", "4", "--segment", "0.5", "--valid-seconds", "1", "--seed", "7", "--no-augment",
              "--device", "cpu", str(demo_cache)]
    run_mss(*common, "-o", tmp_path / "single", check=True)
    ddp = run_mss(*common, "--nproc", "2", "-o", tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    _assert_same(_weights(tmp_path / "single"), _weights(tmp_path / "ddp"), atol=5e-5)  # Adam steps are ~3e-4
    single = json.loads((tmp_path / "single" / "metrics.jsonl").read_text())
    double = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text())
    assert double["valid"].keys() == single["valid"].keys()
    assert double["valid_usdr"] == pytest.approx(single["valid_usdr"], abs=1e-3)
    assert json.loads((tmp_path / "ddp" / "provenance.json").read_text())["hardware"]["world_size"] == 2
