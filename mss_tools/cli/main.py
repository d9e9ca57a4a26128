"""The ``mss`` command: subcommands are imported only when they run (``mss --help`` stays light)."""

from __future__ import annotations

import importlib

import click

from mss_tools import __version__

SUBCOMMANDS = {
    "prep": ("mss_tools.cli.prep", "Decode a data set (MUSDB18, MUSDB18-HQ, stem folders, demo) into an HDF5 stem cache."),
    "remix": ("mss_tools.cli.remix", "Draw a mix plan: random cross-track remixes, curriculum stages, augmentations."),
    "train": ("mss_tools.cli.train", "Train a separation model on a stem cache."),
    "separate": ("mss_tools.cli.separate", "Separate audio files or a cache split with a checkpoint."),
    "score": ("mss_tools.cli.score", "Score separated stems against references (usdr, sdr, BSSEval v4)."),
    "compare": ("mss_tools.cli.compare", "Compare score files: per-source tables of several models."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        return importlib.import_module(SUBCOMMANDS[name][0]).cli

    def format_commands(self, ctx, formatter):
        rows = [(name, help_text) for name, (_, help_text) in SUBCOMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mss")
def main():
    """mss: music source separation research tools.

    \b
    A typical experiment:
      mss prep --sr 22050 musdb/ cache.h5
      mss train --arch unet cache.h5 -o exp/unet
      mss separate exp/unet/best.pt cache.h5 --split test -o preds/unet
      mss score preds/unet --museval -o scores/unet.json
      mss compare scores/*.json
    """
