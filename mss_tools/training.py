"""Training: examples from mix plans or on-the-fly remixes, the loop, validation, checkpoints, resume, DDP.

An experiment folder holds ``config.json`` (the resolved training config), ``command.txt``,
``provenance.json`` (versions, git commit, data fingerprint, hardware), ``best.pt`` (the
weights — EMA weights when EMA is on — with the best validation ``usdr``), ``last.pt``
(weights plus the whole training state), ``last.prev.pt`` (the ``last.pt`` before it) and
``metrics.jsonl`` (one line per epoch).

Data order is a pure function of the seed and the global position: micro-batch ``m`` holds
examples ``m * global_batch ... (m + 1) * global_batch - 1`` and rank ``r`` of ``W`` takes its
``r``-th slice, so a run resumed from any saved step, or split over ranks, sees exactly the
data an uninterrupted single-process run sees.

The pieces: :func:`train` guards the output folder (one writer, cleanup of a run that fails
before its first checkpoint); :func:`_resolve` checks the options against the cache and
resolves what the run is (:class:`Run`, its ``config.json``); :func:`_previous_run` finds the
``last.pt`` to continue; :class:`Trainer` builds the model, optimizer, :class:`LRSchedule` and
data, restores a ``last.pt`` and runs the loop (:meth:`Trainer.fit`: per epoch
:meth:`~Trainer._train_epoch` of :meth:`~Trainer._optimizer_step`, then
:meth:`~Trainer._end_epoch`) with its counters in a :class:`TrainState`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mss_tools import checkpoint as ckpt
from mss_tools.apply import separate_tensor
from mss_tools.cache import StemCache
from mss_tools.devices import resolve_device
from mss_tools.errors import BadInput, MssError
from mss_tools.losses import get_loss
from mss_tools.metrics import usdr
from mss_tools.mixing import ExampleSampler, MixPlan, MixSpec, render_example
from mss_tools.models import build_model, model_class
from mss_tools.outputs import OutputLock, is_temp_name, sweep_temps, write_text
from mss_tools.progress import log, progress_bar
from mss_tools.train_config import AMP_MODES, SCHEDULES, TrainConfig

__all__ = ["TrainConfig", "TrainState", "LRSchedule", "Trainer", "train", "validate", "resolved_config", "lr_factor"]

# Settings that may change when a run is resumed (arch_options/preset are compared resolved, as arch_config).
RESUMABLE_CHANGES = ("device", "workers", "epochs", "cache", "arch_options", "preset", "init", "patience",
                     "checkpoint_every", "max_bad_steps", "activation_checkpointing")
EXPERIMENT_FILES = ("config.json", "command.txt", "provenance.json", "metrics.jsonl", "best.pt", "last.pt",
                    "last.prev.pt")
# The layout of last.pt's "training" dict; a last.pt without "version" is from before TrainState (upgraded on resume).
TRAINING_STATE_VERSION = 2


class TrainExamples(Dataset):
    """Training examples by global position: ``(mixture (channels, time), targets (targets, channels, time),
    active (targets,) bool)``; an inactive target (a curriculum stage leaves it out of the mixture) is
    absent, not silent, and gets no loss (:func:`active_loss`).

    From a plan: position ``p`` is example ``perm_k[p % N]`` with ``perm_k`` a permutation seeded
    by ``(seed, k = p // N)``. On the fly: example ``p`` is drawn from generator ``(seed, p)``.
    """

    def __init__(self, cache_path: str, targets: list[str], spec: MixSpec, seed: int, plan: str | None = None):
        self.cache_path, self.targets, self.spec, self.seed, self.plan_path = cache_path, targets, spec, seed, plan
        self._state = None

    def _open(self):
        if self._state is None or self._state[0] != os.getpid():
            if self.plan_path:
                plan = MixPlan(self.plan_path, self.cache_path)
                self._state = (os.getpid(), plan, None, plan.cache)
            else:
                cache = StemCache(self.cache_path)
                self._state = (os.getpid(), None, ExampleSampler(cache, self.spec), cache)
        return self._state[1:]

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, position: int):
        plan, sampler, cache = self._open()
        if plan is not None:
            number = int(np.random.default_rng([self.seed, position // len(plan)]).permutation(len(plan))[
                position % len(plan)])
            stems, example = plan.render(number), plan.example(number)
        else:
            example = sampler.draw(np.random.default_rng([self.seed, position]))
            stems = render_example(cache, self.spec.split, sampler.tracks, example, sampler.frames)
        index = [cache.sources.index(t) for t in self.targets]
        return (torch.from_numpy(stems.sum(axis=0)), torch.from_numpy(np.ascontiguousarray(stems[index])),
                torch.from_numpy(np.asarray(example["active"], dtype=bool)[index]))


def active_loss(loss_fn: Callable, estimate: torch.Tensor, reference: torch.Tensor, active: torch.Tensor,
                model) -> torch.Tensor:
    """``loss_fn`` over the active (example, target) pairs only: estimates and references
    ``(batch, targets, channels, time)``, ``active`` ``(batch, targets)`` bool. With every target active
    (single-target training, the full mixture) this is ``loss_fn`` itself; in a multi-target curriculum
    stage the targets left out of the mixture are not trained towards silence. ``active`` may stay on the
    CPU (the batch's flags, as loaded): deciding there costs no device synchronisation."""
    if bool(active.all()):
        return loss_fn(estimate, reference, model)
    active = active.to(estimate.device)
    return loss_fn(estimate[active].unsqueeze(1), reference[active].unsqueeze(1), model)


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for ema_value, value in zip(self.model.state_dict().values(), model.state_dict().values()):
            if ema_value.dtype.is_floating_point:
                ema_value.lerp_(value.detach(), 1 - self.decay)
            else:
                ema_value.copy_(value)


class Distributed:
    """Rank, world size and collectives; a no-op outside torchrun."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, value):
        if self.world == 1:
            return [value]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def all_true(self, flag: bool) -> bool:
        return all(self.gather(bool(flag)))

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def validate(model, cache: StemCache, targets: list[str], segment: float, device, max_seconds=None,
             dist: Distributed | None = None) -> dict:
    """Separate the ``valid`` tracks (split across ranks); ``{target: {"usdr": mean, "sdr": median}}``.

    ``usdr`` is averaged over tracks; ``sdr`` (BSSEval v4 framewise, the images-mode frame SNR)
    is the median over tracks of the per-track median over 1 s frames. A track whose reference of
    a target is silent in the window scored (as ``mss score`` skips silent references) does not
    count for that target: its usdr would be minus infinity, or hugely negative for a reference
    near silence, whatever the estimate. A target silent in every valid track gets no entry.
    """
    from mss_tools.metrics import is_silent, nanmedian
    from mss_tools.metrics.bsseval import framewise_sdr

    dist = dist or Distributed()
    was_training = model.training
    model.eval()
    rows = []
    for number, track in enumerate(cache.tracks("valid")):
        if number % dist.world != dist.rank:
            continue
        stop = cache.length("valid", track)
        if max_seconds:
            stop = min(stop, int(max_seconds * cache.sample_rate))
        mixture = torch.from_numpy(cache.read_mixture("valid", track, 0, stop))
        references = cache.read("valid", track, 0, stop, targets)
        estimates = separate_tensor(model, mixture, segment=segment, device=device).numpy()
        frames = framewise_sdr(references, estimates, cache.sample_rate)
        for i, target in enumerate(targets):
            if not is_silent(references[i]):
                rows.append((target, usdr(references[i], estimates[i]), nanmedian(frames[i])))
    model.train(was_training)
    rows = [row for part in dist.gather(rows) for row in part]
    return {t: {"usdr": float(np.mean([r[1] for r in rows if r[0] == t])),
                "sdr": nanmedian([r[2] for r in rows if r[0] == t])}
            for t in targets if any(r[0] == t for r in rows)}


@dataclass
class TrainState:
    """The training loop's own counters, saved in ``last.pt`` beside the weights, optimizer, schedule and RNGs."""

    step: int = 0               # optimizer steps done (a skipped batch counts as one)
    best: float = -math.inf     # best epoch score: mean validation usdr (minus the training loss without valid tracks)
    stale: int = 0              # epochs since the best
    bad_run: int = 0            # consecutive skipped batches (non-finite loss or gradient)
    bad_steps: int = 0          # skipped batches in all
    epoch_loss: float = 0.0     # sum of the epoch's finite step losses so far ...
    epoch_batches: int = 0      # ... and their number
    stopped: bool = False       # stopped early: the run is over

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, state[f.name])


def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (of ``total``) as a factor of ``lr``: linear warm-up
    over ``warmup_steps``, then 1, or for ``cosine`` a half cosine down to ``min_lr`` at the last step."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
        floor = config.min_lr / config.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


class LRSchedule:
    """The learning rate of every optimizer step, as torch schedulers whose ``state_dict`` resumes.

    ``per_step``, a ``LambdaLR``: ``lr × lr_factor(step)``, stepped after every optimizer step
    (skipped batches included, so it follows the step number). ``plateau``, only for ``--schedule
    plateau``: a ``ReduceLROnPlateau`` on each epoch's score that halves the learning rate after
    ``plateau_patience`` epochs without improvement; the per-step schedule goes on from the halved rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
        self.optimizer = optimizer
        self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step, total_steps))
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                                  patience=config.plateau_patience)
                        if config.schedule == "plateau" else None)

    @property
    def lr(self) -> float:
        """The learning rate of the next optimizer step."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self) -> None:
        with warnings.catch_warnings():  # a run whose first batch is skipped steps the schedule before the optimizer
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.per_step.step()

    def end_epoch(self, score: float) -> None:
        if self.plateau is None or not math.isfinite(score):
            return
        before = [group["lr"] for group in self.optimizer.param_groups]
        self.plateau.step(score)
        for i, (group, lr) in enumerate(zip(self.optimizer.param_groups, before)):
            if group["lr"] != lr:
                self.per_step.base_lrs[i] *= self.plateau.factor

    def state_dict(self) -> dict[str, Any]:
        return {"per_step": self.per_step.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


def resolved_config(config: TrainConfig) -> dict[str, Any]:
    """The options as a run uses them, as far as they are known without the cache (``mss train
    --print-config``): every field, the architecture's config (``arch_config``: its defaults with
    ``--preset`` and ``--arch-opt`` applied) and the loss and segment the architecture chooses."""
    cls = model_class(config.arch)
    arch_config = cls.resolve_config(config.preset, config.arch_options)
    return dataclasses.asdict(config) | {"arch_config": arch_config, "loss": config.loss or cls.DEFAULT_LOSS,
                                         "segment": config.segment or cls.DEFAULT_SEGMENT}


@dataclass
class Run:
    """What a training run is, resolved against its cache; ``resolved`` is its ``config.json``."""

    config: TrainConfig
    cache_path: str
    cache: StemCache
    targets: list[str]
    segment: float
    stage: int
    loss: str
    loss_fn: Callable
    resolved: dict[str, Any]

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.config.steps_per_epoch

    @property
    def comparable(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run in ``last.pt`` (as JSON values)."""
        return json.loads(json.dumps({k: v for k, v in self.resolved.items() if k not in RESUMABLE_CHANGES},
                                     default=str))


def _resolve(cache_path: str, config: TrainConfig, world: int) -> Run:
    """Check the options against the cache (and plan) and resolve targets, architecture config, segment,
    curriculum stage and loss; ``BadInput`` on anything that cannot train."""
    cache = StemCache(cache_path)
    targets = config.targets or list(cache.sources)
    unknown = [t for t in targets if t not in cache.sources]
    if unknown:
        raise BadInput(f"{cache_path}: no source {', '.join(unknown)}; the cache has {', '.join(cache.sources)}")
    resolved = resolved_config(config)
    segment, stage = resolved["segment"], config.stage
    if config.plan:
        plan = MixPlan(config.plan, cache_path)
        segment = plan.frames / cache.sample_rate
        stage = int(plan.attrs.get("stage", stage))
    loss_fn = get_loss(resolved["loss"])
    if config.batch_size % world:
        raise BadInput(f"--batch-size {config.batch_size} must be divisible by the {world} processes")
    if config.schedule not in SCHEDULES:
        raise BadInput(f"unknown schedule {config.schedule!r}; choose none, plateau or cosine")
    if config.amp not in AMP_MODES:
        raise BadInput(f"unknown --amp {config.amp!r}; choose off, bf16 or fp16")
    resolved |= {"targets": targets, "segment": segment, "stage": stage, "cache": str(Path(cache_path).resolve()),
                 "cache_fingerprint": cache.fingerprint, "sample_rate": cache.sample_rate, "world_size": world}
    return Run(config, cache_path, cache, targets, segment, stage, resolved["loss"], loss_fn, resolved)


def _previous_run(output: Path, run: Run) -> dict | None:
    """The ``last.pt`` in ``output`` to continue (its ``training`` in today's layout), or None; one of
    another config is refused."""
    path = output / "last.pt"
    if not path.exists():
        return None
    checkpoint = _load_last(path)
    training = checkpoint.get("training", {})
    saved = {k: v for k, v in json.loads(training.get("config", "{}")).items() if k not in RESUMABLE_CHANGES}
    if isinstance(saved.get("arch_config"), dict):
        saved["arch_config"] = _as_stored(run.config.arch, saved["arch_config"])
    comparable = run.comparable
    if saved != comparable:
        changed = sorted(k for k in set(saved) | set(comparable) if saved.get(k) != comparable.get(k))
        raise BadInput(f"{path}: an experiment with a different config is here (differs in "
                       f"{', '.join(changed)}); use another -o, or --restart to discard it")
    version = training.get("version", 1)
    if version > TRAINING_STATE_VERSION:
        raise BadInput(f"{path}: written by a newer mss (training state version {version}); resume it with that "
                       "version, or use --restart")
    if version < TRAINING_STATE_VERSION:
        checkpoint["training"] = _upgrade_training_state(training, run)
    return checkpoint


def _upgrade_training_state(training: dict, run: Run) -> dict:
    """A ``training`` dict written before :class:`TrainState` and :class:`LRSchedule`, in today's layout.

    That loop set each step's learning rate itself, to ``group["base_lr"] * lr_factor(step)``
    (``base_lr``: ``--lr``, halved by the plateau scheduler), kept the epoch's loss sums in
    ``epoch_sums`` (None at an epoch's end) and did not save its run of skipped batches.
    """
    config, step = run.config, training["step"]
    groups = [dict(group) for group in training["optimizer"]["param_groups"]]
    base_lrs = [group.pop("base_lr", config.lr) for group in groups]
    for group, base in zip(groups, base_lrs):
        group["initial_lr"] = config.lr
        group["lr"] = base * lr_factor(config, step, run.total_steps)
    loss, batches = training.get("epoch_sums") or (0.0, 0)
    per_step = {"base_lrs": base_lrs, "last_epoch": step, "_step_count": step + 1,
                "_last_lr": [group["lr"] for group in groups], "lr_lambdas": [None] * len(groups)}
    return training | {
        "version": TRAINING_STATE_VERSION, "optimizer": training["optimizer"] | {"param_groups": groups},
        "schedule": {"per_step": per_step, "plateau": training.get("plateau") if config.schedule == "plateau" else None},
        "bad_run": 0, "epoch_loss": loss, "epoch_batches": batches}


def _as_stored(arch: str, arch_config: dict) -> dict:
    """A stored architecture config completed as the model it describes (options added since it was
    written take their legacy values, :meth:`~mss_tools.models.base.ModelConfig.from_stored`), in JSON types."""
    return json.loads(json.dumps(dict(model_class(arch).DEFAULTS.from_stored(arch_config))))


def _finished(training: dict, total_steps: int) -> bool:
    return training["step"] >= total_steps or bool(training.get("stopped"))


def _build_model(run: Run, device: torch.device, warm_start: bool) -> torch.nn.Module:
    """The model, on ``device``: initialised from the seed, or from ``--init`` when ``warm_start``."""
    config = run.config
    model = build_model(config.arch, run.targets, run.cache.channels, run.cache.sample_rate,
                        config=run.resolved["arch_config"])
    if config.init and warm_start:
        source = ckpt.read_checkpoint(config.init)
        if (source["arch"] != config.arch
                or _as_stored(config.arch, source["config"]) != _as_stored(config.arch, run.resolved["arch_config"])
                or source["sources"] != run.targets):
            raise BadInput(f"{config.init}: --init needs a checkpoint of the same architecture, config and targets "
                           f"(it has {source['arch']} for {','.join(source['sources'])})")
        model.load_state_dict(source["state_dict"])
        log.info("warm start from %s", config.init)
    model.activation_checkpointing = config.activation_checkpointing
    return model.to(device)


class Trainer:
    """One experiment's training, in the manner of demucs' ``Solver``: the constructor builds the
    model, EMA, optimizer, :class:`LRSchedule`, AMP scaler and data; :meth:`restore` continues from
    a ``last.pt``; :meth:`fit` runs the epochs. Only rank 0 writes files."""

    def __init__(self, run: Run, output: Path, argv: list[str] | None, dist: Distributed, warm_start: bool = True):
        config = self.config = run.config
        self.run, self.output, self.argv, self.dist = run, output, argv, dist
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed % (1 << 32))
        self.device = resolve_device(config.device, dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.model = _build_model(run, self.device, warm_start)
        self.ema = EMA(self.model, config.ema) if config.ema > 0 else None
        self.net = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if dist.world > 1 else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.use_amp = config.amp != "off" and self.device.type == "cuda"
        if config.amp != "off" and not self.use_amp:
            log.warning("--amp %s needs CUDA; training in float32", config.amp)
        self.amp_dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and config.amp == "fp16")
        self.schedule = LRSchedule(self.optimizer, config, run.total_steps)
        self.state = TrainState()
        spec = MixSpec(targets=run.targets, segment=run.segment, active_sources=config.active_sources,
                       stage=config.stage, aligned_prob=config.aligned_prob, silent_keep=config.silent_keep,
                       augment=config.augment)
        self.dataset = TrainExamples(run.cache_path, run.targets, spec, config.seed, config.plan)
        self.has_valid = "valid" in run.cache.splits()

    def restore(self, checkpoint: dict) -> None:
        """Continue from a ``last.pt``: weights, EMA, optimizer, schedule, scaler, counters and RNG states."""
        training = checkpoint["training"]
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.schedule.load_state_dict(training["schedule"])
        self.scaler.load_state_dict(training["scaler"])
        if self.ema is not None:
            self.ema.model.load_state_dict(training["ema"])
        self.state.load_state_dict(training)
        _set_rng_state(training["rng"][min(self.dist.rank, len(training["rng"]) - 1)])
        log.info("resuming %s at step %d (epoch %d)", self.output, self.state.step,
                 self.state.step // self.config.steps_per_epoch)

    def write_experiment_files(self) -> None:
        """config.json, provenance.json, one more line of command.txt (every command that trained this
        experiment, a resumed run's too); metrics lines past the restored step are dropped."""
        if not self.dist.main:
            return
        run, output = self.run, self.output
        output.mkdir(parents=True, exist_ok=True)
        _write_json(output / "config.json", run.resolved)
        commands = output / "command.txt"
        earlier = commands.read_text() if commands.exists() else ""
        write_text(commands, earlier + " ".join(self.argv or []) + "\n")
        _write_json(output / "provenance.json", ckpt.provenance(
            self.argv, num_parameters=self.model.num_parameters, device=str(self.device),
            hardware=_hardware(self.device, self.dist.world), data_fingerprint=run.cache.fingerprint,
            plan=self.config.plan, stage=run.stage))
        _truncate_metrics(output / "metrics.jsonl", self.state.step // self.config.steps_per_epoch)

    def fit(self) -> None:
        """Train epoch by epoch until the last step or an early stop."""
        run = self.run
        log.info("training %s (%s parameters) on %s x%d: targets %s, loss %s, segment %.2f s, stage %s",
                 self.config.arch, f"{self.model.num_parameters:,}", self.device, self.dist.world,
                 ",".join(run.targets), run.loss, run.segment, run.stage)
        if not self.has_valid and self.dist.main:
            log.warning("%s has no valid tracks: training runs without validation and best.pt is chosen by training "
                        "loss; hold out tracks with `mss prep --valid-fraction 0.1` or `--valid-tracks NAMES`",
                        run.cache_path)
        self.model.train()
        while self.state.step < run.total_steps and not self.state.stopped:
            started = time.time()
            lr = self._train_epoch()
            self._end_epoch(started, lr)

    def _train_epoch(self) -> float:
        """The optimizer steps from the current one to the end of its epoch (``last.pt`` every
        ``--checkpoint-every`` steps); returns the learning rate of the last."""
        config, state = self.config, self.state
        epoch = state.step // config.steps_per_epoch
        epoch_end = (epoch + 1) * config.steps_per_epoch
        lr, step_loss = self.schedule.lr, 0.0
        self.optimizer.zero_grad(set_to_none=True)
        with progress_bar(epoch_end - state.step, f"epoch {epoch + 1}/{config.epochs}") as bar:
            for number, (mixture, reference, active) in enumerate(self._batches(state.step, epoch_end)):
                last_micro = (number + 1) % config.accum_steps == 0
                step_loss += self._backward(mixture, reference, active, sync=last_micro)
                if not last_micro:
                    continue
                lr = self._optimizer_step(step_loss)
                step_loss = 0.0
                bar.advance()
                bar.update(status=f"loss {state.epoch_loss / max(state.epoch_batches, 1):.4f}")
                if config.checkpoint_every and state.step % config.checkpoint_every == 0 and state.step < epoch_end:
                    self._save_last()
        return lr

    def _batches(self, first_step: int, end_step: int) -> DataLoader:
        """This rank's micro-batches of optimizer steps ``first_step ... end_step - 1`` (see the module docstring)."""
        config, dist = self.config, self.dist
        local = config.batch_size // dist.world
        micro = [list(range(m * config.batch_size + dist.rank * local, m * config.batch_size + (dist.rank + 1) * local))
                 for m in range(first_step * config.accum_steps, end_step * config.accum_steps)]
        return DataLoader(self.dataset, batch_sampler=micro, num_workers=config.workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          generator=torch.Generator().manual_seed(config.seed))

    def _backward(self, mixture: torch.Tensor, reference: torch.Tensor, active: torch.Tensor, sync: bool) -> float:
        """Forward and backward pass of one micro-batch; gradients accumulate (across ranks only when ``sync``).
        Returns its share of the step's loss."""
        mixture = mixture.to(self.device, non_blocking=True)
        reference = reference.to(self.device, non_blocking=True)
        with nullcontext() if sync or self.dist.world == 1 else self.net.no_sync():
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                loss = active_loss(self.run.loss_fn, self.net(mixture).float(), reference, active,
                                   self.model) / self.config.accum_steps
            self.scaler.scale(loss).backward()
        return loss.item()

    def _optimizer_step(self, loss: float) -> float:
        """Apply the accumulated gradients (clipped; EMA updated), or skip the batch when the loss or a
        gradient is not finite on any rank; ``--max-bad-steps`` skips in a row stop the run. Returns the
        step's learning rate."""
        config, state, optimizer = self.config, self.state, self.optimizer
        lr = self.schedule.lr
        self.scaler.unscale_(optimizer)
        grads_ok = all(torch.isfinite(p.grad).all() for p in self.model.parameters() if p.grad is not None)
        finite = self.dist.all_true(grads_ok and math.isfinite(loss))
        if finite:
            state.bad_run = 0
            state.epoch_loss += loss
            state.epoch_batches += 1
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.scaler.step(optimizer)
        else:
            state.bad_run += 1
            state.bad_steps += 1
            log.warning("step %d: non-finite loss or gradient, batch skipped (%d in a row, %d in all)",
                        state.step, state.bad_run, state.bad_steps)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if state.bad_run >= config.max_bad_steps:
            raise MssError(f"training diverged: {state.bad_run} consecutive non-finite losses, last at step "
                           f"{state.step}; lower --lr or use --grad-clip")
        if finite and self.ema is not None:
            self.ema.update(self.model)
        state.step += 1
        self.schedule.step()
        return lr

    def _end_epoch(self, started: float, lr: float) -> None:
        """Validate, step the plateau schedule, keep the best weights, append the metrics line, save
        ``last.pt``; stop early after ``--patience`` epochs without improvement."""
        config, run, state = self.config, self.run, self.state
        record = {"epoch": state.step // config.steps_per_epoch, "step": state.step,
                  "train_loss": state.epoch_loss / max(state.epoch_batches, 1), "lr": lr,
                  "bad_steps": state.bad_steps, "epoch_seconds": round(time.time() - started, 2)}
        evaluated = self.ema.model if self.ema is not None else self.model
        if self.has_valid:
            record["valid"] = validate(evaluated, run.cache, run.targets, run.segment, self.device,
                                       config.valid_seconds, self.dist)
            scores = [s["usdr"] for s in record["valid"].values()]
            if scores:
                record["valid_usdr"] = score = float(np.mean(scores))
            else:
                log.warning("every valid track's %s is silent in the window validated; this epoch is scored by its "
                            "training loss", ", ".join(run.targets))
                score = -record["train_loss"]
        else:
            score = -record["train_loss"]
        self.schedule.end_epoch(score)
        if math.isfinite(score) and score > state.best:
            state.best, state.stale = score, 0
            record["best"] = True
            self._save_best(evaluated, record)
        else:
            state.stale += 1
            if not math.isfinite(score):
                log.warning("step %d: validation score is not finite; best.pt is not updated", state.step)
        state.stopped = config.patience > 0 and state.stale >= config.patience
        state.epoch_loss, state.epoch_batches = 0.0, 0
        if self.dist.main:
            with open(self.output / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
        self._save_last()
        log.info("epoch %d: train loss %.4f%s (%.1f s)", record["epoch"], record["train_loss"],
                 f", valid usdr {record['valid_usdr']:.2f} dB" if self.has_valid else "", record["epoch_seconds"])
        if state.stopped:
            log.info("early stop: no validation improvement for %d epochs", state.stale)

    def _meta(self, **extra: Any) -> dict[str, Any]:
        run = self.run
        return ckpt.provenance(self.argv, step=self.state.step, **extra, data_fingerprint=run.cache.fingerprint,
                               targets=run.targets, segment=run.segment, loss=run.loss, stage=run.stage)

    def _save_best(self, evaluated: torch.nn.Module, record: dict) -> None:
        if self.dist.main:
            meta = self._meta(epoch=record["epoch"]) | {"ema": self.config.ema, "valid": record.get("valid")}
            ckpt.save_checkpoint(self.output / "best.pt", ckpt.model_payload(evaluated, meta))

    def _save_last(self) -> None:
        rngs = self.dist.gather(_rng_state())
        if not self.dist.main:
            return
        config, state = self.config, self.state
        payload = ckpt.model_payload(self.model, self._meta())
        payload["training"] = state.state_dict() | {
            "version": TRAINING_STATE_VERSION, "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else None, "rng": rngs,
            "config": json.dumps(self.run.comparable), "epoch": state.step // config.steps_per_epoch,
            "stage": self.run.stage, "data_position": state.step * config.accum_steps}
        ckpt.save_checkpoint(self.output / "last.pt", payload, previous=self.output / "last.prev.pt")


def train(cache_path: str, output: str | os.PathLike, config: TrainConfig, restart: bool = False,
          argv: list[str] | None = None) -> Path:
    """Train (or resume) the experiment in ``output``; returns the folder.

    One process trains into a folder at a time (a second gets ``BadInput``); a folder holding
    files that are not an experiment's is refused. A run that fails before its first checkpoint
    removes the experiment files it created.
    """
    output = Path(output)
    dist = Distributed()
    lock = OutputLock(output, "train") if dist.main else nullcontext()
    try:
        with lock:
            existed = set()
            if dist.main:
                _check_experiment_folder(output)
                sweep_temps(output)
                existed = {name for name in EXPERIMENT_FILES if (output / name).exists()}
                folder_existed = output.exists()
            try:
                return _train(cache_path, output, config, restart, argv, dist)
            except BaseException:
                if dist.main and not (output / "last.pt").exists():
                    for name in set(EXPERIMENT_FILES) - existed:
                        (output / name).unlink(missing_ok=True)
                    if not folder_existed and output.is_dir() and not any(output.iterdir()):
                        output.rmdir()
                raise
    finally:
        dist.close()


def _check_experiment_folder(output: Path) -> None:
    """Refuse an output that is a file, or a non-empty folder without an experiment's files."""
    if output.exists() and not output.is_dir():
        raise BadInput(f"{output}: is a file; -o names the experiment folder")
    if not output.is_dir():
        return
    names = {p.name for p in output.iterdir() if not is_temp_name(p.name)}
    if names and not names & set(EXPERIMENT_FILES):
        raise BadInput(f"{output}: a folder with other files in it, not an mss experiment; choose another -o")


def _train(cache_path, output: Path, config: TrainConfig, restart, argv, dist: Distributed) -> Path:
    """Resolve the run, continue its last.pt (unless ``restart``) or start it, and train to the end."""
    run = _resolve(cache_path, config, dist.world)
    checkpoint = None if restart else _previous_run(output, run)
    if checkpoint is not None and _finished(checkpoint["training"], run.total_steps):
        log.info("%s: training finished at step %d; nothing to do", output, checkpoint["training"]["step"])
        return output
    trainer = Trainer(run, output, argv, dist, warm_start=checkpoint is None)
    if checkpoint is not None:
        trainer.restore(checkpoint)
    trainer.write_experiment_files()
    trainer.fit()
    return output


def _load_last(path: Path) -> dict:
    try:
        return ckpt.read_checkpoint(path)
    except BadInput as exc:
        previous = path.with_name("last.prev.pt")
        hint = (f"; the previous checkpoint {previous} is intact: move it to {path.name} to resume from it"
                if previous.exists() else "")
        raise BadInput(f"{exc}{hint}, or use --restart") from None


def _write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate()),
             "numpy": json.dumps([keys.tolist(), int(position), int(has_gauss), float(gauss)])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        keys, position, has_gauss, gauss = json.loads(state["numpy"])
        np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop metric lines of epochs after ``epoch`` (left by a run killed after writing them)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if _epoch_of(line) <= epoch]
    if len(kept) != len(lines):
        write_text(path, "".join(line + "\n" for line in kept))


def _epoch_of(line: str) -> float:
    """The epoch of a metrics line; a line cut short by a kill counts as past every epoch."""
    try:
        return json.loads(line).get("epoch", 0)
    except json.JSONDecodeError:
        return math.inf


def _hardware(device: torch.device, world: int) -> dict[str, Any]:
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "world_size": world}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
