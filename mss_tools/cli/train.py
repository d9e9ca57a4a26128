import os
import subprocess
import sys

import click

from mss_tools.cli.common import POSITIVE_INT, command, dataclass_options, dataclass_values
from mss_tools.mixing import parse_active_sources
from mss_tools.train_config import TrainConfig


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
    """``--config FILE``: a JSON object of option defaults, keyed by option name
    (``{"epochs": 20, "batch-size": 4, "arch-opt": {"depth": 5}}``), each value checked as on the command line."""
    if not value:
        return value
    import json

    try:
        data = json.loads(open(value).read())
    except (OSError, json.JSONDecodeError) as exc:
        raise click.BadParameter(f"{value}: not a readable JSON config ({exc})") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value}: the config must be a JSON object of option names and values")
    params = {}  # by every long name (--batch-size, --jobs, --arch-opt) and the value's name (batch_size, workers)
    for p in ctx.command.params:
        for name in (p.name, *(opt[2:] for opt in p.opts if opt.startswith("--"))):
            params.setdefault(name.replace("-", "_"), p)
    defaults = {}
    for key, item in data.items():
        target = params.get(key.replace("-", "_"))
        if target is None or target.name in ("cache", "config"):
            raise click.BadParameter(f"{value}: unknown option {key!r}")
        if target.multiple and isinstance(item, dict):
            item = [f"{k}={v}" for k, v in item.items()]
        try:
            target.type_cast_value(ctx, item)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{value}: option {key!r}: {exc.message}") from None
        defaults[target.name] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


@command("train")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True, expose_value=False,
              help="JSON file of option defaults, keyed by option name (e.g. recipes/conf/demo/bsrnn.json); "
                   "command-line options win.")
@click.option("--print-config", is_flag=True,
              help="Print the resolved config (these options and the architecture's config) as JSON and exit.")
@dataclass_options(TrainConfig)
@click.option("--nproc", type=POSITIVE_INT, default=1, help="Launch this many processes with torchrun (DDP).")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Experiment folder (default: exp/<arch>).")
@click.option("--restart", is_flag=True, help="Discard an existing last.pt in OUTPUT instead of resuming.")
def cli(cache, print_config, nproc, output, restart, **options):
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
      mss train --config recipes/conf/demo/bsrnn.json --print-config demo.h5
    """
    import json

    config = TrainConfig(**dataclass_values(TrainConfig, options))
    if config.schedule == "cosine" and config.min_lr > config.lr:
        raise click.BadParameter(f"{config.min_lr} is above --lr {config.lr}", param_hint="'--min-lr'")
    config.active_sources, config.stage = parse_active_sources(config.active_sources, config.stage)
    if print_config:
        from mss_tools.training import resolved_config

        click.echo(json.dumps(resolved_config(config), indent=2))
        return
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch_torchrun(nproc)
    from mss_tools.training import train

    train(cache, output or f"exp/{config.arch}", config, restart=restart, argv=sys.argv)
