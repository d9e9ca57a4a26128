"""The training options: one field each, with its default, range and help text.

``mss train``'s options are generated from these fields (:func:`mss_tools.cli.common.dataclass_options`),
``--config FILE.json`` takes the same names, and ``config.json`` of an experiment holds them
resolved (:func:`mss_tools.training.resolved_config`). Kept free of torch so that ``mss train
--help`` stays light; :mod:`mss_tools.training` re-exports :class:`TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from mss_tools.mixing import Augmentation, MixSpec
from mss_tools.models import ARCHITECTURES
from mss_tools.options import (NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, SEED,
                               FiniteFloatRange, comma_list, option, parse_arch_options, same_field)

SCHEDULES = ("none", "plateau", "cosine")
AMP_MODES = ("off", "bf16", "fp16")


@dataclass
class TrainConfig:
    # the model
    arch: str = option("unet", help="Architecture (registry name): " + ", ".join(ARCHITECTURES) + ".")
    preset: str | None = option(None, help="Named architecture preset (e.g. small, paper); default: the defaults.")
    arch_options: dict[str, Any] = option(default_factory=dict, names=("--arch-opt",), multiple=True,
                                          metavar="KEY=VALUE", convert=parse_arch_options,
                                          help="Override one architecture option (repeatable); see --print-config.")
    targets: list[str] | None = option(None, convert=comma_list,
                                       help="Comma-separated sources to separate (default: every cache source).")
    loss: str | None = option(None, help="Loss name (default: the architecture's paper loss).")
    segment: float | None = option(None, type=POSITIVE_FLOAT,
                                   help="Training segment in seconds (default: per architecture).")
    # data: a mix plan, or on-the-fly remixes drawn like `mss remix`
    plan: str | None = option(None, type=click.Path(dir_okay=False), help="Train on the examples of this mix plan "
                              "(default: random remixes drawn on the fly).")
    active_sources: int | None = same_field(MixSpec, "active_sources")
    stage: int = same_field(MixSpec, "stage")
    aligned_prob: float = same_field(MixSpec, "aligned_prob")
    silent_keep: float = same_field(MixSpec, "silent_keep")
    augment: Augmentation = same_field(MixSpec, "augment")
    # optimisation
    batch_size: int = option(8, type=POSITIVE_INT, help="Global batch size (all processes together).")
    accum_steps: int = option(1, type=POSITIVE_INT, help="Gradient accumulation: micro-batches per optimizer step.")
    epochs: int = option(10, type=POSITIVE_INT, help="Epochs to train.")
    steps_per_epoch: int = option(100, type=POSITIVE_INT, help="Optimizer steps per epoch (validation after each).")
    lr: float = option(3e-4, type=POSITIVE_FLOAT, help="Adam learning rate.")
    weight_decay: float = option(0.0, type=NON_NEGATIVE_FLOAT, help="Adam weight decay.")
    grad_clip: float = option(5.0, type=NON_NEGATIVE_FLOAT, help="Max gradient norm (0: off).")
    schedule: str = option("none", type=click.Choice(SCHEDULES), help="Learning-rate schedule (plateau: halve "
                           "after --plateau-patience epochs without improvement; cosine: decay to --min-lr).")
    warmup_steps: int = option(0, type=NON_NEGATIVE_INT, help="Linear learning-rate warm-up.")
    min_lr: float = option(0.0, type=NON_NEGATIVE_FLOAT,
                           help="Final learning rate of the cosine schedule (at most --lr).")
    plateau_patience: int = option(3, type=NON_NEGATIVE_INT,
                                   help="Epochs without improvement before the plateau schedule halves the learning "
                                        "rate.")
    patience: int = option(0, type=NON_NEGATIVE_INT,
                           help="Early stop after this many epochs without improvement (0: off).")
    amp: str = option("off", type=click.Choice(AMP_MODES), help="Mixed precision (CUDA).")
    ema: float = option(0.0, type=FiniteFloatRange(0.0, 1.0, max_open=True),
                        help="EMA decay of the weights, e.g. 0.999 (0: off).")
    activation_checkpointing: bool = option(False, is_flag=True, help="Recompute each block's activations in the "
                                            "backward pass instead of storing them (BSRNN blocks, Demucs layers): "
                                            "much less memory for ~30% more compute; same results.")
    init: str | None = option(None, type=click.Path(dir_okay=False), help="Warm start from this checkpoint (e.g. "
                              "the previous curriculum stage's best.pt).")
    # bookkeeping
    workers: int = option(0, type=NON_NEGATIVE_INT, names=("-j", "--jobs"),
                          help="DataLoader worker processes (0: load examples in the training process).")
    seed: int = option(42, type=SEED, help="Seed of the weights and of the examples.")
    valid_seconds: float | None = option(None, type=POSITIVE_FLOAT,
                                         help="Validate on at most this many seconds per track.")
    checkpoint_every: int = option(0, type=NON_NEGATIVE_INT, help="Also save last.pt every N optimizer steps "
                                   "(0: only at epoch ends).")
    max_bad_steps: int = option(10, type=POSITIVE_INT, help="Stop after this many consecutive non-finite losses.")
    device: str = option("auto", names=("-d", "--device"), help="auto, cpu, cuda, cuda:1 ...")
