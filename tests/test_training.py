"""The training loop's parts: learning rate per step, the loop state, last.pt layouts."""

import io
import json
import math

import pytest
import torch

from mss_tools.errors import BadInput
from mss_tools.training import LRSchedule, TrainConfig, TrainState, lr_factor, train


def _previous_factor(config, step, total):
    """The learning-rate factor of the previous training loop (``training._lr_factor``), verbatim."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
        floor = config.min_lr / config.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def _previous_lrs(config, total, steps_per_epoch, scores):
    """Each step's learning rate as the previous loop set it: ``base_lr * factor`` before the step,
    ReduceLROnPlateau on the epoch's score and ``base_lr = lr`` after each epoch (``plateau`` only)."""
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                         patience=config.plateau_patience)
    lrs = []
    for step in range(total):
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", config.lr) * _previous_factor(config, step, total)
        lrs.append(optimizer.param_groups[0]["lr"])
        if (step + 1) % steps_per_epoch == 0 and config.schedule == "plateau":
            plateau.step(scores[step // steps_per_epoch])
            for group in optimizer.param_groups:
                group["base_lr"] = group["lr"]
    return lrs


def _schedule(config, total):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    return optimizer, LRSchedule(optimizer, config, total)


def _lrs(config, total, steps_per_epoch, scores, resume_at=None):
    """Each step's learning rate from LRSchedule; with ``resume_at``, optimizer and schedule are
    saved after that step and a new pair continues from the saved state (``weights_only`` load)."""
    optimizer, schedule = _schedule(config, total)
    lrs = []
    for step in range(total):
        lrs.append(schedule.lr)
        optimizer.step()
        schedule.step()
        if (step + 1) % steps_per_epoch == 0:
            schedule.end_epoch(scores[step // steps_per_epoch])
        if step + 1 == resume_at:
            buffer = io.BytesIO()
            torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            optimizer, schedule = _schedule(config, total)
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
    return lrs


# epoch scores: better, the same three times (two halvings with patience 1), better, the same
SCORES = [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("schedule", ["none", "cosine", "plateau"])
@pytest.mark.parametrize("resume_at", [None, 5, 12])
def test_learning_rate_per_step_is_the_previous_formula_and_resumes(schedule, resume_at):
    config = TrainConfig(lr=1e-3, min_lr=1e-5, schedule=schedule, warmup_steps=3, plateau_patience=1)
    total, per_epoch = 32, 4  # warm-up ends inside the first epoch
    expected = _previous_lrs(config, total, per_epoch, SCORES)
    assert _lrs(config, total, per_epoch, SCORES, resume_at) == expected
    assert expected[:4] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])
    if schedule == "cosine":
        assert all(a > b for a, b in zip(expected[3:], expected[4:])) and expected[-1] < 2e-5
        assert lr_factor(config, total, total) == pytest.approx(1e-5 / 1e-3)
    if schedule == "plateau":
        assert min(expected) == 1e-3 / 4 and expected[-1] == 1e-3 / 4  # halved twice, then no more
    else:
        assert expected == [1e-3 * lr_factor(config, s, total) for s in range(total)]


def test_plateau_scheduler_only_for_the_plateau_schedule():
    for schedule in ("none", "cosine", "plateau"):
        _, lr_schedule = _schedule(TrainConfig(schedule=schedule), 10)
        assert (lr_schedule.plateau is not None) == (schedule == "plateau")
        assert (lr_schedule.state_dict()["plateau"] is not None) == (schedule == "plateau")


def test_plateau_with_warm_up_across_epoch_ends_keeps_the_warm_up_ramp():
    # the previous loop folded the warm-up factor into its base lr at every epoch end during warm-up
    config = TrainConfig(lr=1e-3, schedule="plateau", warmup_steps=6)
    lrs = _lrs(config, 12, 2, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert lrs == [1e-3 * ((s + 1) / 6) for s in range(6)] + [1e-3] * 6
    assert _previous_lrs(config, 12, 2, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])[-1] < 1e-3 / 2


def test_train_state_round_trip():
    state = TrainState(step=7, best=1.5, stale=2, bad_run=1, bad_steps=3, epoch_loss=0.25, epoch_batches=4,
                       stopped=True)
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    restored = TrainState()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored == state
    fresh = TrainState()
    fresh.load_state_dict(TrainState().state_dict())
    assert fresh.best == -math.inf and fresh.step == 0 and not fresh.stopped


def test_last_pt_holds_the_train_state(trained_unet):
    training = torch.load(trained_unet / "last.pt", weights_only=True)["training"]
    state = TrainState()
    state.load_state_dict(training)
    last_epoch = json.loads((trained_unet / "metrics.jsonl").read_text().splitlines()[-1])
    assert state.step == last_epoch["step"] == 6 and not state.stopped
    assert state.epoch_batches == 0 and state.epoch_loss == 0.0  # an epoch's end
    assert state.bad_steps == last_epoch["bad_steps"] == 0 and state.best > -math.inf
    assert training["schedule"]["per_step"]["last_epoch"] == 6 and training["schedule"]["plateau"] is None


UNET = dict(arch="unet", preset="small", arch_options={"depth": 2, "channels": 4}, steps_per_epoch=3, batch_size=2,
            segment=0.5, valid_seconds=1.0, seed=3, ema=0.9, warmup_steps=4, checkpoint_every=1)


def _previous_layout(training: dict, config: TrainConfig) -> dict:
    """A ``training`` dict as the previous loop wrote it for the same moment: keys optimizer, plateau,
    scaler, ema, step, epoch, best, stale, bad_steps, stage, data_position, rng, stopped, epoch_sums,
    config; ``base_lr`` in the optimizer's groups and the lr of the step just done."""
    step = training["step"]
    old = {k: v for k, v in training.items()
           if k not in ("version", "schedule", "bad_run", "epoch_loss", "epoch_batches")}
    old["epoch_sums"] = [training["epoch_loss"], training["epoch_batches"]] if training["epoch_batches"] else None
    groups = []
    for group in training["optimizer"]["param_groups"]:
        group = {k: v for k, v in group.items() if k != "initial_lr"}
        group["base_lr"] = config.lr
        group["lr"] = config.lr * _previous_factor(config, step - 1, config.epochs * config.steps_per_epoch)
        groups.append(group)
    old["optimizer"] = training["optimizer"] | {"param_groups": groups}
    throwaway = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    old["plateau"] = torch.optim.lr_scheduler.ReduceLROnPlateau(throwaway, mode="max", factor=0.5,
                                                                patience=3).state_dict()
    return old


def test_last_pt_of_the_previous_layout_resumes_to_the_same_weights(demo_cache, tmp_path):
    train(str(demo_cache), tmp_path / "full", TrainConfig(**UNET, epochs=2))
    train(str(demo_cache), tmp_path / "part", TrainConfig(**UNET, epochs=1))
    payload = torch.load(tmp_path / "part" / "last.prev.pt", weights_only=True)
    assert payload["training"]["step"] == 2 and payload["training"]["epoch_batches"] == 2  # mid-epoch
    payload["training"] = _previous_layout(payload["training"], TrainConfig(**UNET, epochs=2))
    (tmp_path / "resumed").mkdir()
    torch.save(payload, tmp_path / "resumed" / "last.pt")
    train(str(demo_cache), tmp_path / "resumed", TrainConfig(**UNET, epochs=2))
    for name in ("last.pt", "best.pt"):
        full = torch.load(tmp_path / "full" / name, weights_only=True)["state_dict"]
        resumed = torch.load(tmp_path / "resumed" / name, weights_only=True)["state_dict"]
        assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full), name
    losses = [[json.loads(line)["train_loss"] for line in (tmp_path / folder / "metrics.jsonl").read_text().splitlines()]
              for folder in ("full", "resumed")]
    assert losses[0] == losses[1] and len(losses[0]) == 2

    newer = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    newer["training"]["version"] = 99
    (tmp_path / "newer").mkdir()
    torch.save(newer, tmp_path / "newer" / "last.pt")
    with pytest.raises(BadInput, match="last.pt: written by a newer mss .*--restart"):
        train(str(demo_cache), tmp_path / "newer", TrainConfig(**UNET, epochs=3))


def test_an_experiment_from_before_an_option_existed_resumes_with_its_legacy_value(demo_cache, tmp_path):
    """unet_lite gained `output` and `normalize`; an experiment written without them is the legacy model:
    it resumes when asked for that model, and is refused as a different config otherwise."""
    from mss_tools.checkpoint import read_checkpoint, save_checkpoint

    def config(epochs, **options):
        return TrainConfig(arch="unet_lite", arch_options=options, epochs=epochs, steps_per_epoch=2, batch_size=2,
                           segment=1.0, valid_seconds=1.0, seed=3)

    legacy = {"output": "log1p_magnitude", "normalize": "false"}
    train(str(demo_cache), tmp_path, config(1, **legacy))
    last = read_checkpoint(tmp_path / "last.pt")
    for key in ("output", "normalize"):  # as the code before these options wrote it
        del last["config"][key]
    saved = json.loads(last["training"]["config"])
    for key in ("output", "normalize"):
        del saved["arch_config"][key]
    last["training"]["config"] = json.dumps(saved)
    save_checkpoint(tmp_path / "last.pt", last)
    with pytest.raises(BadInput, match="differs in arch_config"):
        train(str(demo_cache), tmp_path, config(2))
    train(str(demo_cache), tmp_path, config(2, **legacy))
    assert read_checkpoint(tmp_path / "last.pt")["training"]["step"] == 4


def test_command_txt_keeps_every_command_that_trained_the_experiment(demo_cache, tmp_path):
    def config(epochs):
        return TrainConfig(arch="unet", arch_options={"depth": 2, "channels": 4}, epochs=epochs, steps_per_epoch=1,
                           batch_size=2, segment=1.0, valid_seconds=1.0)

    train(str(demo_cache), tmp_path, config(1), argv=["mss", "train", "--epochs", "1"])
    train(str(demo_cache), tmp_path, config(1), argv=["mss", "train", "--epochs", "1"])  # finished: nothing to do
    train(str(demo_cache), tmp_path, config(2), argv=["mss", "train", "--epochs", "2"])
    assert (tmp_path / "command.txt").read_text().splitlines() == ["mss train --epochs 1", "mss train --epochs 2"]


def test_inactive_targets_get_no_loss_and_all_active_is_the_plain_loss():
    """A multi-target curriculum stage leaves targets out of the mixture: those (example, target) pairs are
    absent, not silent, and do not train the model towards silence."""
    from mss_tools.losses import l1_wave
    from mss_tools.training import active_loss

    torch.manual_seed(0)
    estimate, reference = torch.randn(3, 4, 2, 100), torch.randn(3, 4, 2, 100)
    every = torch.ones(3, 4, dtype=torch.bool)
    assert active_loss(l1_wave, estimate, reference, every, None) == l1_wave(estimate, reference)
    active = torch.tensor([[True, False, True, False], [False, False, True, True], [True, True, False, False]])
    expected = torch.stack([(estimate[b, s] - reference[b, s]).abs().mean() for b, s in active.nonzero()]).mean()
    assert torch.allclose(active_loss(l1_wave, estimate, reference, active, None), expected)
    changed = estimate.clone()
    changed[~active] = 1e3  # whatever the model outputs for an absent target costs nothing
    assert active_loss(l1_wave, changed, reference, active, None) == active_loss(l1_wave, estimate, reference,
                                                                                  active, None)


def test_training_examples_say_which_targets_are_active(demo_cache):
    from mss_tools.mixing import MixSpec
    from mss_tools.training import TrainExamples

    sources = ["vocals", "drums", "bass", "other"]
    stage1 = TrainExamples(str(demo_cache), sources, MixSpec(targets=sources, segment=0.5, active_sources=2,
                                                             stage=1), seed=3)
    for position in range(6):
        mixture, targets, active = stage1[position]
        assert active.dtype == torch.bool and int(active.sum()) == 2
        assert torch.allclose(mixture, targets[active].sum(0), atol=1e-5)
        assert not targets[~active].any()
    drums = TrainExamples(str(demo_cache), ["drums"], MixSpec(targets=["drums"], segment=0.5, active_sources=2,
                                                              stage=1), seed=3)
    assert all(bool(drums[p][2].all()) for p in range(6))


class _TwoTrackValidCache:
    """A stand-in for a stem cache's ``valid`` split: two tracks of drums and bass whose mixture is
    their sum; the drums of track ``quiet`` are silent."""

    sample_rate = 8000

    def __init__(self):
        gen = torch.Generator().manual_seed(3)
        self.stems = {}
        for track in ("loud", "quiet"):
            drums = 0.1 * torch.randn(2, 8000, generator=gen)
            bass = 0.1 * torch.randn(2, 8000, generator=gen)
            if track == "quiet":
                drums.zero_()
            self.stems[track] = {"drums": drums.numpy(), "bass": bass.numpy()}

    def tracks(self, split):
        return list(self.stems)

    def length(self, split, track):
        return 8000

    def read_mixture(self, split, track, start=0, stop=None):
        return sum(self.stems[track].values())[:, start:stop]

    def read(self, split, track, start=0, stop=None, sources=None):
        import numpy as np

        return np.stack([self.stems[track][s][:, start:stop] for s in sources])


def test_validation_skips_silent_references_as_scoring_does():
    """With the mixture as estimate, usdr is 10 log10(|s|^2 / |other|^2) per track: about 0 dB for
    the drums of ``loud``; ``quiet``'s silent drums (usdr minus infinity) do not count, its bass does."""
    import numpy as np

    from mss_tools.metrics import usdr
    from mss_tools.models.baselines import MixtureBaseline
    from mss_tools.training import validate

    cache = _TwoTrackValidCache()
    model = MixtureBaseline(["drums", "bass"], 2, 8000)
    scores = validate(model, cache, ["drums", "bass"], segment=1.0, device=torch.device("cpu"))
    loud, quiet = cache.stems["loud"], cache.stems["quiet"]
    assert scores["drums"]["usdr"] == pytest.approx(usdr(loud["drums"], loud["drums"] + loud["bass"]), abs=1e-4)
    expected_bass = np.mean([usdr(t["bass"], t["drums"] + t["bass"]) for t in (loud, quiet)])
    assert scores["bass"]["usdr"] == pytest.approx(expected_bass, abs=1e-4)
    assert math.isfinite(scores["drums"]["sdr"])
    assert scores["bass"]["usdr"] > 40  # quiet's bass is the whole mixture: the mean of about 0 and 90 dB
    drums_only = MixtureBaseline(["drums"], 2, 8000)
    only_silent = validate(drums_only, _only(cache, "quiet"), ["drums"], segment=1.0, device=torch.device("cpu"))
    assert only_silent == {}


def _only(cache, track):
    cache.stems = {track: cache.stems[track]}
    return cache
