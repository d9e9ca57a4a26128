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
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

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
from mss_tools.train_config import TrainConfig

# Settings that may change when a run is resumed (arch_options/preset are compared resolved, as arch_config).
RESUMABLE_CHANGES = ("device", "workers", "epochs", "cache", "arch_options", "preset", "init", "patience",
                     "checkpoint_every", "max_bad_steps", "activation_checkpointing")


class TrainExamples(Dataset):
    """Training examples by global position: ``(mixture (channels, time), targets (targets, channels, time))``.

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
            perm = np.random.default_rng([self.seed, position // len(plan)]).permutation(len(plan))
            stems = plan.render(int(perm[position % len(plan)]))
        else:
            example = sampler.draw(np.random.default_rng([self.seed, position]))
            stems = render_example(cache, self.spec.split, sampler.tracks, example, sampler.frames)
        index = [cache.sources.index(t) for t in self.targets]
        return torch.from_numpy(stems.sum(axis=0)), torch.from_numpy(np.ascontiguousarray(stems[index]))


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
    is the median over tracks of the per-track median over 1 s frames.
    """
    from mss_tools.metrics import nanmedian
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
            rows.append((target, usdr(references[i], estimates[i]), nanmedian(frames[i])))
    model.train(was_training)
    rows = [row for part in dist.gather(rows) for row in part]
    return {t: {"usdr": float(np.mean([r[1] for r in rows if r[0] == t])),
                "sdr": nanmedian([r[2] for r in rows if r[0] == t])}
            for t in targets if any(r[0] == t for r in rows)}


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


def resolved_config(config: TrainConfig) -> dict[str, Any]:
    """The options as a run uses them, as far as they are known without the cache (``mss train
    --print-config``): every field, the architecture's config (``arch_config``: its defaults with
    ``--preset`` and ``--arch-opt`` applied) and the loss and segment the architecture chooses."""
    cls = model_class(config.arch)
    arch_config = cls.resolve_config(config.preset, config.arch_options)
    return dataclasses.asdict(config) | {"arch_config": arch_config, "loss": config.loss or cls.DEFAULT_LOSS,
                                         "segment": config.segment or cls.DEFAULT_SEGMENT}


def _lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """Warm-up then (for ``cosine``) decay to ``min_lr``, as a factor of ``lr``."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
        floor = config.min_lr / config.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def _mix_spec(config: TrainConfig, targets: list[str], segment: float) -> MixSpec:
    return MixSpec(targets=targets, segment=segment, active_sources=config.active_sources,
                   aligned_prob=config.aligned_prob, silent_keep=config.silent_keep, augment=config.augment)


def _load_last(path: Path) -> dict:
    try:
        return ckpt.read_checkpoint(path)
    except BadInput as exc:
        previous = path.with_name("last.prev.pt")
        hint = (f"; the previous checkpoint {previous} is intact: move it to {path.name} to resume from it"
                if previous.exists() else "")
        raise BadInput(f"{exc}{hint}, or use --restart") from None


EXPERIMENT_FILES = ("config.json", "command.txt", "provenance.json", "metrics.jsonl", "best.pt", "last.pt",
                    "last.prev.pt")


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
    cache = StemCache(cache_path)
    targets = config.targets or list(cache.sources)
    unknown = [t for t in targets if t not in cache.sources]
    if unknown:
        raise BadInput(f"{cache_path}: no source {', '.join(unknown)}; the cache has {', '.join(cache.sources)}")
    cls = model_class(config.arch)
    arch_config = cls.resolve_config(config.preset, config.arch_options)
    segment = config.segment or cls.DEFAULT_SEGMENT
    stage = config.stage
    if config.plan:
        plan = MixPlan(config.plan, cache_path)
        segment = plan.frames / cache.sample_rate
        stage = int(plan.attrs.get("stage", stage))
    loss_name = config.loss or cls.DEFAULT_LOSS
    loss_fn = get_loss(loss_name)
    if config.batch_size % dist.world:
        raise BadInput(f"--batch-size {config.batch_size} must be divisible by the {dist.world} processes")
    if config.schedule not in ("none", "plateau", "cosine"):
        raise BadInput(f"unknown schedule {config.schedule!r}; choose none, plateau or cosine")
    if config.amp not in ("off", "bf16", "fp16"):
        raise BadInput(f"unknown --amp {config.amp!r}; choose off, bf16 or fp16")
    resolved = dataclasses.asdict(config) | {
        "targets": targets, "segment": segment, "loss": loss_name, "arch_config": arch_config, "stage": stage,
        "cache": str(Path(cache_path).resolve()), "cache_fingerprint": cache.fingerprint,
        "sample_rate": cache.sample_rate, "world_size": dist.world}
    comparable = json.loads(json.dumps({k: v for k, v in resolved.items() if k not in RESUMABLE_CHANGES}, default=str))

    last_path = output / "last.pt"
    state = None
    if last_path.exists() and not restart:
        state = _load_last(last_path)
        saved = {k: v for k, v in json.loads(state.get("training", {}).get("config", "{}")).items()
                 if k not in RESUMABLE_CHANGES}
        if saved != comparable:
            changed = sorted(k for k in set(saved) | set(comparable) if saved.get(k) != comparable.get(k))
            raise BadInput(f"{last_path}: an experiment with a different config is here (differs in "
                           f"{', '.join(changed)}); use another -o, or --restart to discard it")

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % (1 << 32))
    device = resolve_device(config.device, dist.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = build_model(config.arch, targets, cache.channels, cache.sample_rate, config=arch_config)
    if config.init and state is None:
        source = ckpt.read_checkpoint(config.init)
        if source["arch"] != config.arch or source["config"] != arch_config or source["sources"] != targets:
            raise BadInput(f"{config.init}: --init needs a checkpoint of the same architecture, config and targets "
                           f"(it has {source['arch']} for {','.join(source['sources'])})")
        model.load_state_dict(source["state_dict"])
        log.info("warm start from %s", config.init)
    model.activation_checkpointing = config.activation_checkpointing
    model.to(device)
    ema = EMA(model, config.ema) if config.ema > 0 else None
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    use_amp = config.amp != "off" and device.type == "cuda"
    if config.amp != "off" and not use_amp:
        log.warning("--amp %s needs CUDA; training in float32", config.amp)
    amp_dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and config.amp == "fp16")
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                         patience=config.plateau_patience)
    step, best, stale, bad_run, bad_total, epoch_sums = 0, -math.inf, 0, 0, 0, None
    if state is not None:
        model.load_state_dict(state["state_dict"])
        training = state["training"]
        optimizer.load_state_dict(training["optimizer"])
        plateau.load_state_dict(training["plateau"])
        scaler.load_state_dict(training["scaler"])
        if ema is not None:
            ema.model.load_state_dict(training["ema"])
        step, best, stale, bad_total = training["step"], training["best"], training["stale"], training["bad_steps"]
        epoch_sums = tuple(training["epoch_sums"]) if training.get("epoch_sums") else None
        _set_rng_state(training["rng"][min(dist.rank, len(training["rng"]) - 1)])
        log.info("resuming %s at step %d (epoch %d)", output, step, step // config.steps_per_epoch)
    total_steps = config.epochs * config.steps_per_epoch
    if step >= total_steps or (state is not None and state["training"].get("stopped")):
        log.info("%s: training finished at step %d; nothing to do", output, step)
        return output
    if dist.main:
        output.mkdir(parents=True, exist_ok=True)
        _write_json(output / "config.json", resolved)
        write_text(output / "command.txt", " ".join(argv or []) + "\n")
        _write_json(output / "provenance.json", ckpt.provenance(
            argv, num_parameters=model.num_parameters, device=str(device), hardware=_hardware(device, dist.world),
            data_fingerprint=cache.fingerprint, plan=config.plan, stage=stage))
        _truncate_metrics(output / "metrics.jsonl", step // config.steps_per_epoch)
    log.info("training %s (%s parameters) on %s x%d: targets %s, loss %s, segment %.2f s, stage %s", config.arch,
             f"{model.num_parameters:,}", device, dist.world, ",".join(targets), loss_name, segment, stage)

    local_batch = config.batch_size // dist.world
    dataset = TrainExamples(cache_path, targets, _mix_spec(config, targets, segment), config.seed, config.plan)
    has_valid = "valid" in cache.splits()
    if not has_valid and dist.main:
        log.warning("%s has no valid tracks: training runs without validation and best.pt is chosen by training "
                    "loss; hold out tracks with `mss prep --valid-fraction 0.1` or `--valid-tracks NAMES`", cache_path)
    model.train()

    def save_last(stopped: bool = False, epoch_sums=None) -> None:
        rngs = dist.gather(_rng_state())
        if not dist.main:
            return
        payload = ckpt.model_payload(model, ckpt.provenance(argv, step=step, data_fingerprint=cache.fingerprint,
                                                            targets=targets, segment=segment, loss=loss_name,
                                                            stage=stage))
        payload["training"] = {"optimizer": optimizer.state_dict(), "plateau": plateau.state_dict(),
                               "scaler": scaler.state_dict(), "ema": ema.model.state_dict() if ema else None,
                               "step": step, "epoch": step // config.steps_per_epoch, "best": best, "stale": stale,
                               "bad_steps": bad_total, "stage": stage,
                               "data_position": step * config.accum_steps, "rng": rngs, "stopped": stopped,
                               "epoch_sums": list(epoch_sums) if epoch_sums else None,
                               "config": json.dumps(comparable)}
        ckpt.save_checkpoint(last_path, payload, previous=output / "last.prev.pt")

    while step < total_steps:
        epoch = step // config.steps_per_epoch
        epoch_end = (epoch + 1) * config.steps_per_epoch
        started = time.time()
        micro = [list(range(m * config.batch_size + dist.rank * local_batch,
                            m * config.batch_size + (dist.rank + 1) * local_batch))
                 for m in range(step * config.accum_steps, epoch_end * config.accum_steps)]
        loader = DataLoader(dataset, batch_sampler=micro, num_workers=config.workers,
                            pin_memory=device.type == "cuda", persistent_workers=False,
                            generator=torch.Generator().manual_seed(config.seed))
        total, count = (epoch_sums if epoch_sums is not None else (0.0, 0))
        epoch_sums = None
        step_loss = 0.0
        optimizer.zero_grad(set_to_none=True)
        with progress_bar(epoch_end - step, f"epoch {epoch + 1}/{config.epochs}") as bar:
            for number, (mixture, reference) in enumerate(loader):
                mixture, reference = mixture.to(device, non_blocking=True), reference.to(device, non_blocking=True)
                last_micro = (number + 1) % config.accum_steps == 0
                sync = nullcontext() if last_micro or dist.world == 1 else net.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        loss = loss_fn(net(mixture).float(), reference, model) / config.accum_steps
                    scaler.scale(loss).backward()
                step_loss += loss.item()
                if not last_micro:
                    continue
                for group in optimizer.param_groups:
                    group["lr"] = group.setdefault("base_lr", config.lr) * _lr_factor(config, step, total_steps)
                scaler.unscale_(optimizer)
                grads_ok = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
                finite = grads_ok and math.isfinite(step_loss)
                step_loss, loss_value = 0.0, step_loss
                if not dist.all_true(finite):
                    bad_run += 1
                    bad_total += 1
                    log.warning("step %d: non-finite loss or gradient, batch skipped (%d in a row, %d in all)",
                                step, bad_run, bad_total)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.update()
                    if bad_run >= config.max_bad_steps:
                        raise MssError(f"training diverged: {bad_run} consecutive non-finite losses, last at step "
                                       f"{step}; lower --lr or use --grad-clip")
                    step += 1
                    bar.advance()
                    continue
                bad_run = 0
                total += loss_value
                count += 1
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
                step += 1
                bar.advance()
                bar.update(status=f"loss {total / max(count, 1):.4f}")
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step < epoch_end:
                    save_last(epoch_sums=(total, count))
        record = {"epoch": step // config.steps_per_epoch, "step": step, "train_loss": total / max(count, 1),
                  "lr": optimizer.param_groups[0]["lr"], "bad_steps": bad_total,
                  "epoch_seconds": round(time.time() - started, 2)}
        evaluated = ema.model if ema is not None else model
        if has_valid:
            scores = validate(evaluated, cache, targets, segment, device, config.valid_seconds, dist)
            record["valid"] = scores
            record["valid_usdr"] = float(np.mean([s["usdr"] for s in scores.values()]))
            score = record["valid_usdr"]
        else:
            score = -record["train_loss"]
        if config.schedule == "plateau" and math.isfinite(score):
            plateau.step(score)
            for group in optimizer.param_groups:
                group["base_lr"] = group["lr"]
        if math.isfinite(score) and score > best:
            best, stale = score, 0
            record["best"] = True
            if dist.main:
                meta = ckpt.provenance(argv, step=step, epoch=record["epoch"], data_fingerprint=cache.fingerprint,
                                       targets=targets, segment=segment, loss=loss_name, stage=stage,
                                       ema=config.ema, valid=record.get("valid"))
                ckpt.save_checkpoint(output / "best.pt", ckpt.model_payload(evaluated, meta))
        else:
            stale += 1
            if not math.isfinite(score):
                log.warning("step %d: validation score is not finite; best.pt is not updated", step)
        stop_early = config.patience > 0 and stale >= config.patience
        if dist.main:
            with open(output / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
        save_last(stopped=stop_early)
        log.info("epoch %d: train loss %.4f%s (%.1f s)", record["epoch"], record["train_loss"],
                 f", valid usdr {record['valid_usdr']:.2f} dB" if has_valid else "", record["epoch_seconds"])
        if stop_early:
            log.info("early stop: no validation improvement for %d epochs", stale)
            break
    return output


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
