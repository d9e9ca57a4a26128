import sys

import click

from mss_tools.cli.common import command


@command("separate")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--split", default=None, help="Split to separate when an input is a stem cache (default: test).")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Predictions folder.")
@click.option("--segment", type=float, default=None, help="Chunk length in seconds (default: the model's).")
@click.option("--overlap", type=float, default=0.25, help="Fraction of a chunk shared with the next.")
@click.option("--batch-size", type=int, default=4, help="Chunks per forward pass.")
@click.option("--bits", type=click.Choice(["16", "24", "float"]), default="float", help="WAV sample format.")
@click.option("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
@click.option("--force", is_flag=True, help="Separate again tracks that are already done.")
def cli(checkpoint, inputs, split, output, segment, overlap, batch_size, bits, device, force):
    """Separate INPUTS (audio files, folders, or a stem cache with --split) with CHECKPOINT.

    Each track is written as OUTPUT/<track>/<stem>.wav at the input's own sample rate,
    with OUTPUT/manifest.json naming the checkpoint and the inputs (what `mss score` reads).

    \b
    Examples:
      mss separate exp/unet/best.pt demo.h5 --split test -o preds/unet
      mss separate exp/unet/best.pt song.wav other_songs/ -o preds/mine
    """
    from mss_tools.separate import separate

    if not 0 <= overlap < 1:
        raise click.BadParameter("must be in [0, 1)", param_hint="--overlap")
    failures = separate(checkpoint, inputs, output, split=split, segment=segment, overlap=overlap,
                        batch_size=batch_size, device=device, subtype={"16": "PCM_16", "24": "PCM_24"}.get(bits, "FLOAT"),
                        force=force)
    sys.exit(1 if failures else 0)
