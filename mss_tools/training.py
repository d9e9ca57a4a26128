"""Training: random cross-track remixing, the loop, validation, checkpoints and resume.

An experiment folder holds ``config.json`` (the resolved training config), ``best.pt``
(the weights with the best validation ``usdr``), ``last.pt`` (weights plus training state,
for resuming), ``metrics.jsonl`` (one line per epoch) and ``provenance.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mss_tools import checkpoint as ckpt
from mss_tools.apply import separate_tensor
from mss_tools.cache import StemCache
from mss_tools.errors import BadInput
from mss_tools.losses import get_loss
from mss_tools.metrics import usdr
from mss_tools.models import build_model, model_class
from mss_tools.progress import log, progress_bar


# Settings that may differ when a run is resumed (arch_options/preset are compared resolved, as arch_config).
RESUMABLE_CHANGES = ("device", "workers", "epochs", "cache", "arch_options", "preset")


@dataclass
class TrainConfig:
    arch: str = "unet"
    preset: str | None = None
    arch_options: dict[str, Any] = field(default_factory=dict)
    targets: list[str] | None = None
    loss: str | None = None
    segment: float | None = None
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 100
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    gain_range: tuple[float, float] = (0.25, 1.25)
    channel_swap: float = 0.5
    workers: int = 0
    seed: int = 42
    valid_seconds: float | None = None
    device: str = "auto"


class RemixDataset(Dataset):
    """Random cross-track remixes: every source of an example comes from its own random track and offset.

    Item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: ``(mixture, targets)``
    with mixture ``(channels, time)`` (the sum of every cache source) and targets
    ``(len(targets), channels, time)``. Per-source augmentations: a random gain and a
    random left/right swap.
    """

    def __init__(self, cache_path: str, split: str, targets: list[str], segment_frames: int, size: int, seed: int,
                 gain_range=(0.25, 1.25), channel_swap: float = 0.5):
        self.cache = StemCache(cache_path)
        self.split = split
        self.tracks = self.cache.tracks(split)
        if not self.tracks:
            raise BadInput(f"{cache_path}: split {split!r} has no tracks to train on")
        self.lengths = [self.cache.length(split, t) for t in self.tracks]
        self.sources = self.cache.sources
        self.target_index = [self.sources.index(t) for t in targets]
        self.segment_frames = segment_frames
        self.size = size
        self.seed = seed
        self.gain_range = gain_range
        self.channel_swap = channel_swap
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        stems = np.zeros((len(self.sources), self.cache.channels, self.segment_frames), dtype=np.float32)
        for s, source in enumerate(self.sources):
            t = int(rng.integers(len(self.tracks)))
            length = self.lengths[t]
            start = int(rng.integers(max(1, length - self.segment_frames + 1)))
            stop = min(length, start + self.segment_frames)
            stems[s, :, : stop - start] = self.cache.read(self.split, self.tracks[t], start, stop, [source])[0]
            stems[s] *= rng.uniform(*self.gain_range)
            if rng.random() < self.channel_swap:
                stems[s] = stems[s, ::-1]
        mixture = stems.sum(axis=0)
        return torch.from_numpy(mixture), torch.from_numpy(np.ascontiguousarray(stems[self.target_index]))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def validate(model, cache: StemCache, targets: list[str], segment: float, device, max_seconds=None) -> dict:
    """Separate every ``valid`` track; returns ``{target: {"usdr": mean over tracks}}`` and the per-track values."""
    model.eval()
    per_target: dict[str, list[float]] = {t: [] for t in targets}
    for track in cache.tracks("valid"):
        stop = cache.length("valid", track)
        if max_seconds:
            stop = min(stop, int(max_seconds * cache.sample_rate))
        mixture = torch.from_numpy(cache.read_mixture("valid", track, 0, stop))
        references = cache.read("valid", track, 0, stop, targets)
        estimates = separate_tensor(model, mixture, segment=segment, device=device).numpy()
        for i, target in enumerate(targets):
            per_target[target].append(usdr(references[i], estimates[i]))
    model.train()
    return {t: {"usdr": float(np.mean(v))} for t, v in per_target.items() if v}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(cache_path: str, output: str | os.PathLike, config: TrainConfig, restart: bool = False,
          argv: list[str] | None = None) -> Path:
    """Train (or resume) an experiment in ``output``; returns the folder."""
    output = Path(output)
    cache = StemCache(cache_path)
    targets = config.targets or list(cache.sources)
    unknown = [t for t in targets if t not in cache.sources]
    if unknown:
        raise BadInput(f"{cache_path}: no source {', '.join(unknown)}; the cache has {', '.join(cache.sources)}")
    cls = model_class(config.arch)
    arch_config = cls.resolve_config(config.preset, config.arch_options)
    segment = config.segment or cls.DEFAULT_SEGMENT
    loss_name = config.loss or cls.DEFAULT_LOSS
    loss_fn = get_loss(loss_name)
    resolved = dataclasses.asdict(config) | {"targets": targets, "segment": segment, "loss": loss_name,
                                             "arch_config": arch_config, "cache": str(Path(cache_path).resolve()),
                                             "cache_fingerprint": cache.fingerprint,
                                             "sample_rate": cache.sample_rate}
    resolved["gain_range"] = list(config.gain_range)
    comparable = {k: v for k, v in resolved.items() if k not in RESUMABLE_CHANGES}

    output.mkdir(parents=True, exist_ok=True)
    last_path = output / "last.pt"
    state = None
    if last_path.exists() and not restart:
        payload = ckpt.read_checkpoint(last_path)
        saved = payload.get("training", {}).get("config", "{}")
        saved = {k: v for k, v in json.loads(saved).items() if k not in RESUMABLE_CHANGES}
        if saved != json.loads(json.dumps(comparable, default=str)):
            changed = sorted(k for k in set(saved) | set(comparable)
                             if saved.get(k) != json.loads(json.dumps(comparable.get(k), default=str)))
            raise BadInput(f"{last_path}: an experiment with a different config is here (differs in "
                           f"{', '.join(changed)}); use another -o, or --restart to discard it")
        state = payload
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    device = resolve_device(config.device)
    model = build_model(config.arch, targets, cache.channels, cache.sample_rate, config=arch_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    epoch, step, best = 0, 0, -math.inf
    if state is not None:
        model.load_state_dict(state["state_dict"])
        training = state["training"]
        optimizer.load_state_dict(training["optimizer"])
        epoch, step, best = training["epoch"], training["step"], training["best"]
        _set_rng_state(training["rng"])
        log.info("resuming %s at epoch %d (step %d)", output, epoch, step)
        if epoch >= config.epochs:
            log.info("%s: already trained for %d epochs; nothing to do", output, epoch)
            return output
    _write_json(output / "config.json", resolved)
    _write_json(output / "provenance.json", ckpt.provenance(argv, num_parameters=model.num_parameters,
                                                            device=str(device), hardware=_hardware(device)))
    _truncate_metrics(output / "metrics.jsonl", epoch)
    log.info("training %s (%s parameters) on %s: targets %s, loss %s, segment %.1f s", config.arch,
             f"{model.num_parameters:,}", device, ",".join(targets), loss_name, segment)

    segment_frames = int(round(segment * cache.sample_rate))
    dataset = RemixDataset(cache_path, "train", targets, segment_frames, config.steps_per_epoch * config.batch_size,
                           config.seed, tuple(config.gain_range), config.channel_swap)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.workers,
                        drop_last=True, pin_memory=device.type == "cuda")
    has_valid = bool(cache.tracks("valid")) if "valid" in cache.splits() else False
    model.train()
    while epoch < config.epochs:
        started = time.time()
        dataset.set_epoch(epoch)
        total, count = 0.0, 0
        with progress_bar(config.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}") as bar:
            for mixture, targets_batch in loader:
                mixture, targets_batch = mixture.to(device), targets_batch.to(device)
                loss = loss_fn(model(mixture), targets_batch, model)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"non-finite loss at step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                total += loss.item()
                count += 1
                step += 1
                bar.advance()
                bar.update(status=f"loss {total / count:.4f}")
        epoch += 1
        record = {"epoch": epoch, "step": step, "train_loss": total / max(count, 1),
                  "epoch_seconds": round(time.time() - started, 2)}
        if has_valid:
            scores = validate(model, cache, targets, segment, device, config.valid_seconds)
            record["valid"] = scores
            record["valid_usdr"] = float(np.mean([s["usdr"] for s in scores.values()]))
            score = record["valid_usdr"]
        else:
            score = -record["train_loss"]
        meta = ckpt.provenance(argv, epoch=epoch, step=step, data_fingerprint=cache.fingerprint,
                               targets=targets, segment=segment, loss=loss_name)
        if not np.isfinite(score):
            log.warning("epoch %d: validation score is not finite (%s); best.pt is not updated", epoch, score)
        elif score > best:
            best = score
            ckpt.save_checkpoint(output / "best.pt", ckpt.model_payload(model, meta))
            record["best"] = True
        with open(output / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        payload = ckpt.model_payload(model, meta)
        payload["training"] = {"optimizer": optimizer.state_dict(), "epoch": epoch, "step": step, "best": best,
                               "rng": _rng_state(), "config": json.dumps(comparable, default=str)}
        ckpt.save_checkpoint(last_path, payload)
        log.info("epoch %d: train loss %.4f%s (%.1f s)", epoch, record["train_loss"],
                 f", valid usdr {record['valid_usdr']:.2f} dB" if has_valid else "", record["epoch_seconds"])
    return output


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop metric lines of epochs after ``epoch`` (left by a run killed after writing them)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("epoch", 0) <= epoch]
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept))


def _hardware(device: torch.device) -> dict[str, Any]:
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
