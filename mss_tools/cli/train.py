import os
import subprocess
import sys

import click

from mss_tools.cli.common import (NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, SEED,
                                  FiniteFloatRange, command, mix_options, pop_mix_options, split_list)


def _parse_arch_options(values) -> dict:
    from mss_tools.errors import BadInput

    options = {}
    for item in values:
        if "=" not in item:
            raise BadInput(f"--arch-opt expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    return options


def _launch_torchrun(nproc: int) -> None:
    """Re-run this command under torchrun with ``nproc`` processes (``--nproc`` removed)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "mss_tools", *args]
    sys.exit(subprocess.call(command, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))))


def _load_config(ctx, param, value):
    """``--config FILE``: a JSON object of option defaults (``{"epochs": 20, "arch-opt": ["depth=5"]}``)."""
    if not value:
        return value
    import json

    try:
        data = json.loads(open(value).read())
    except (OSError, json.JSONDecodeError) as exc:
        raise click.BadParameter(f"{value}: not a readable JSON config ({exc})") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value}: the config must be a JSON object of option names and values")
    names = {p.name: p for p in ctx.command.params}
    defaults = {}
    for key, item in data.items():
        name = {"arch-opt": "arch_opts", "arch_opt": "arch_opts", "jobs": "workers"}.get(key, key.replace("-", "_"))
        if name not in names or name in ("cache", "config"):
            raise click.BadParameter(f"{value}: unknown option {key!r}")
        if name == "arch_opts" and isinstance(item, dict):
            item = [f"{k}={v}" for k, v in item.items()]
        try:
            names[name].type_cast_value(ctx, item)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{value}: option {key!r}: {exc.message}") from None
        defaults[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


@command("train")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True, expose_value=False,
              help="JSON file of option defaults (e.g. recipes/conf/bsrnn_demo.json); command-line options win.")
@click.option("--arch", default="unet", help="Architecture (registry name): unet, unet_lite, demucs_lstm, "
              "demucs_attn, bsrnn, bsrnn_se.")
@click.option("--preset", default=None, help="Named architecture preset (e.g. small, paper); default: the defaults.")
@click.option("--arch-opt", "arch_opts", multiple=True, metavar="KEY=VALUE",
              help="Override one architecture option (repeatable); see --print-config.")
@click.option("--print-config", is_flag=True, help="Print the resolved architecture config and exit.")
@click.option("--targets", default=None, help="Comma-separated sources to separate (default: every cache source).")
@click.option("--loss", default=None, help="Loss name (default: the architecture's paper loss).")
@click.option("--segment", type=POSITIVE_FLOAT, default=None,
              help="Training segment in seconds (default: per architecture).")
@click.option("--plan", type=click.Path(dir_okay=False), default=None,
              help="Train on the examples of this mix plan (default: random remixes drawn on the fly).")
@mix_options
@click.option("--init", type=click.Path(dir_okay=False), default=None,
              help="Warm start from this checkpoint (e.g. the previous curriculum stage's best.pt).")
@click.option("--batch-size", type=POSITIVE_INT, default=8, help="Global batch size (all processes together).")
@click.option("--accum-steps", type=POSITIVE_INT, default=1,
              help="Gradient accumulation: micro-batches per optimizer step.")
@click.option("--epochs", type=POSITIVE_INT, default=10)
@click.option("--steps-per-epoch", type=POSITIVE_INT, default=100,
              help="Optimizer steps per epoch (validation after each).")
@click.option("--lr", type=POSITIVE_FLOAT, default=3e-4, help="Adam learning rate.")
@click.option("--weight-decay", type=NON_NEGATIVE_FLOAT, default=0.0)
@click.option("--grad-clip", type=NON_NEGATIVE_FLOAT, default=5.0, help="Max gradient norm (0: off).")
@click.option("--schedule", type=click.Choice(["none", "plateau", "cosine"]), default="none",
              help="Learning-rate schedule (plateau: halve after --plateau-patience epochs without improvement).")
@click.option("--warmup-steps", type=NON_NEGATIVE_INT, default=0, help="Linear learning-rate warm-up.")
@click.option("--min-lr", type=NON_NEGATIVE_FLOAT, default=0.0,
              help="Final learning rate of the cosine schedule (at most --lr).")
@click.option("--plateau-patience", type=NON_NEGATIVE_INT, default=3,
              help="Epochs without improvement before the plateau schedule halves the learning rate.")
@click.option("--patience", type=NON_NEGATIVE_INT, default=0,
              help="Early stop after this many epochs without improvement (0: off).")
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", help="Mixed precision (CUDA).")
@click.option("--ema", type=FiniteFloatRange(0.0, 1.0, max_open=True), default=0.0,
              help="EMA decay of the weights, e.g. 0.999 (0: off).")
@click.option("--activation-checkpointing", is_flag=True,
              help="Recompute each block's activations in the backward pass instead of storing them (BSRNN "
                   "blocks, Demucs layers): much less memory for ~30%% more compute; same results.")
@click.option("--valid-seconds", type=POSITIVE_FLOAT, default=None,
              help="Validate on at most this many seconds per track.")
@click.option("--checkpoint-every", type=NON_NEGATIVE_INT, default=0,
              help="Also save last.pt every N steps (0: epoch ends).")
@click.option("--max-bad-steps", type=POSITIVE_INT, default=10,
              help="Stop after this many consecutive non-finite losses.")
@click.option("-j", "--jobs", "workers", type=NON_NEGATIVE_INT, default=0,
              help="DataLoader worker processes (0: load examples in the training process).")
@click.option("--nproc", type=POSITIVE_INT, default=1, help="Launch this many processes with torchrun (DDP).")
@click.option("--seed", type=SEED, default=42, help="Seed of the weights and of the examples.")
@click.option("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Experiment folder (default: exp/<arch>).")
@click.option("--restart", is_flag=True, help="Discard an existing last.pt in OUTPUT instead of resuming.")
def cli(cache, arch, preset, arch_opts, print_config, targets, loss, segment, plan, init, batch_size, accum_steps,
        epochs, steps_per_epoch, lr, weight_decay, grad_clip, schedule, warmup_steps, min_lr, plateau_patience,
        patience, amp, ema, activation_checkpointing, valid_seconds, checkpoint_every, max_bad_steps, workers, nproc,
        seed, device, output, restart, **mix):
    """Train a separation model on the stem cache CACHE.

    Examples are random cross-track remixes of the `train` split drawn on the fly (or the
    examples of --plan), with the curriculum and augmentation options of `mss remix`.
    Each epoch is validated on the `valid` split (usdr and sdr per target). OUTPUT gets
    best.pt, last.pt, config.json, provenance.json and metrics.jsonl; run the same
    command again to resume exactly where an interrupted run stopped.

    \b
    Examples:
      mss train --arch unet --preset small demo.h5 -o exp/unet
      mss train --arch bsrnn_se --targets vocals --stage 1 musdb22k.h5 -o exp/bsrnn_se/s1
      mss train --arch bsrnn_se --targets vocals --plan plan_s2.h5 --init exp/bsrnn_se/s1/best.pt musdb22k.h5 -o exp/bsrnn_se/s2
      mss train --arch demucs_lstm --nproc 4 --amp bf16 --ema 0.999 musdb44k.h5 -o exp/demucs
      mss train --arch unet --print-config --arch-opt depth=5 demo.h5
    """
    import json

    from mss_tools.models import model_class

    if schedule == "cosine" and min_lr > lr:
        raise click.BadParameter(f"{min_lr} is above --lr {lr}", param_hint="'--min-lr'")
    options = _parse_arch_options(arch_opts)
    cls = model_class(arch)
    resolved = cls.resolve_config(preset, options)
    if print_config:
        click.echo(json.dumps({"arch": arch, "preset": preset, "config": resolved, "loss": loss or cls.DEFAULT_LOSS,
                               "segment": segment or cls.DEFAULT_SEGMENT}, indent=2))
        return
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch_torchrun(nproc)
    from mss_tools.training import TrainConfig, train

    config = TrainConfig(arch=arch, preset=preset, arch_options=options, targets=split_list(targets), loss=loss,
                         segment=segment, plan=plan, init=init, batch_size=batch_size, accum_steps=accum_steps,
                         epochs=epochs, steps_per_epoch=steps_per_epoch, lr=lr, weight_decay=weight_decay,
                         grad_clip=grad_clip, schedule=schedule, warmup_steps=warmup_steps, min_lr=min_lr,
                         plateau_patience=plateau_patience, patience=patience, amp=amp, ema=ema,
                         activation_checkpointing=activation_checkpointing,
                         valid_seconds=valid_seconds, checkpoint_every=checkpoint_every, max_bad_steps=max_bad_steps,
                         workers=workers, seed=seed, device=device, **pop_mix_options(mix))
    train(cache, output or f"exp/{arch}", config, restart=restart, argv=sys.argv)
