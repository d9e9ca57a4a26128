import sys

import click

from mss_tools.cli.common import command, split_list


def _parse_arch_options(values) -> dict:
    from mss_tools.errors import BadInput

    options = {}
    for item in values:
        if "=" not in item:
            raise BadInput(f"--arch-opt expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    return options


@command("train")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--arch", default="unet", help="Architecture (registry name): unet, unet_lite, demucs_lstm, "
              "demucs_attn, bsrnn, bsrnn_se.")
@click.option("--preset", default=None, help="Named architecture preset (e.g. small, paper); default: the defaults.")
@click.option("--arch-opt", "arch_opts", multiple=True, metavar="KEY=VALUE",
              help="Override one architecture option (repeatable); see --print-config.")
@click.option("--print-config", is_flag=True, help="Print the resolved architecture config and exit.")
@click.option("--targets", default=None, help="Comma-separated sources to separate (default: every cache source).")
@click.option("--loss", default=None, help="Loss name (default: the architecture's paper loss).")
@click.option("--segment", type=float, default=None, help="Training segment in seconds (default: per architecture).")
@click.option("--batch-size", type=int, default=8)
@click.option("--epochs", type=int, default=10)
@click.option("--steps-per-epoch", type=int, default=100)
@click.option("--lr", type=float, default=3e-4, help="Adam learning rate.")
@click.option("--weight-decay", type=float, default=0.0)
@click.option("--grad-clip", type=float, default=5.0, help="Max gradient norm (0: off).")
@click.option("--valid-seconds", type=float, default=None, help="Validate on at most this many seconds per track.")
@click.option("-j", "--jobs", "workers", type=int, default=0, help="DataLoader worker processes.")
@click.option("--seed", type=int, default=42)
@click.option("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Experiment folder (default: exp/<arch>).")
@click.option("--restart", is_flag=True, help="Discard an existing last.pt in OUTPUT instead of resuming.")
def cli(cache, arch, preset, arch_opts, print_config, targets, loss, segment, batch_size, epochs, steps_per_epoch,
        lr, weight_decay, grad_clip, valid_seconds, workers, seed, device, output, restart):
    """Train a separation model on the stem cache CACHE.

    Training examples are random cross-track remixes of the cache's `train` split; each
    epoch is validated on the `valid` split (usdr per target). OUTPUT gets best.pt,
    last.pt, config.json, provenance.json and metrics.jsonl; run the same command again
    to resume after an interruption.

    \b
    Examples:
      mss train --arch unet --preset small demo.h5 -o exp/unet
      mss train --arch bsrnn_se --targets vocals musdb22k.h5 -o exp/bsrnn_se_vocals
      mss train --arch unet --print-config --arch-opt depth=5 demo.h5
    """
    import json

    from mss_tools.models import model_class

    options = _parse_arch_options(arch_opts)
    cls = model_class(arch)
    resolved = cls.resolve_config(preset, options)
    if print_config:
        click.echo(json.dumps({"arch": arch, "preset": preset, "config": resolved, "loss": loss or cls.DEFAULT_LOSS,
                               "segment": segment or cls.DEFAULT_SEGMENT}, indent=2))
        return
    from mss_tools.training import TrainConfig, train

    config = TrainConfig(arch=arch, preset=preset, arch_options=options, targets=split_list(targets), loss=loss,
                         segment=segment, batch_size=batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
                         lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, workers=workers, seed=seed,
                         valid_seconds=valid_seconds, device=device)
    train(cache, output or f"exp/{arch}", config, restart=restart, argv=sys.argv)
