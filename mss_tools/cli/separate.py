import sys

import click

from mss_tools.cli.common import NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, SEED, FiniteFloatRange, command

DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"  # mss_tools.separate.DEFAULT_TEMPLATE (not imported: keeps --help light)


@command("separate")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--split", default=None, help="Split to separate when an input is a stem cache (default: test).")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Predictions folder.")
@click.option("--segment", type=POSITIVE_FLOAT, default=None,
              help="Chunk length in seconds (default: the model's).")
@click.option("--overlap", type=FiniteFloatRange(0.0, 1.0, max_open=True), default=0.25,
              help="Fraction of a chunk shared with the next.")
@click.option("--batch-size", type=POSITIVE_INT, default=4, help="Chunks per forward pass.")
@click.option("--shifts", type=NON_NEGATIVE_INT, default=0,
              help="Test-time augmentation: average N passes, each shifted by a random delay of up to 0.5 s.")
@click.option("--tta-flip", is_flag=True,
              help="Also average passes with the channels swapped and the polarity inverted (x4 passes in stereo).")
@click.option("--seed", type=SEED, default=0, help="Seed of the random shifts (with the track name).")
@click.option("--two-stems", metavar="STEM", default=None,
              help="Write only STEM and no_STEM = input mixture - STEM (the two add up to the input).")
@click.option("--format", "file_format", type=click.Choice(["wav", "flac"]), default="wav", help="Output file format.")
@click.option("--bits", type=click.Choice(["16", "24", "float"]), default=None,
              help="Sample format (default: float for wav, 24 for flac).")
@click.option("--name-template", default=DEFAULT_TEMPLATE,
              help="Output path under OUTPUT; fields {track}, {stem}, {ext}, {model} (the architecture). "
                   "`mss score` reads the default layout.")
@click.option("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
@click.option("--force", is_flag=True, help="Separate again tracks that are already done.")
def cli(checkpoint, inputs, split, output, segment, overlap, batch_size, shifts, tta_flip, seed, two_stems,
        file_format, bits, name_template, device, force):
    """Separate INPUTS (audio files, folders, MUSDB .stem.mp4 files, or a stem cache with --split) with CHECKPOINT.

    CHECKPOINT `mixture` or `silence` names a baseline every model must beat: each source's
    estimate is the mixture itself, or silence (the sources of the first stem cache among
    INPUTS, else MUSDB's).

    Each track is streamed (memory bounded by the chunk, not the track) and written at the
    input's own sample rate and channel count, by default as OUTPUT/<track>/<stem>.wav,
    with OUTPUT/manifest.json naming the checkpoint, the inputs, the settings and the time
    taken (what `mss score` and `mss compare` read). A .stem.mp4 is separated from its
    mixture stream (needs ffmpeg). A failing input is reported and the others go on (exit code 1).

    \b
    Examples:
      mss separate mixture demo.h5 --split test -o preds/mixture
      mss separate silence demo.h5 --split test -o preds/silence
      mss separate exp/unet/best.pt demo.h5 --split test -o preds/unet
      mss separate exp/unet/best.pt song.wav albums/ musdb18/test/ -o preds/mine --shifts 4 --tta-flip
      mss separate exp/unet/best.pt song.flac -o out --two-stems vocals --format flac --bits 24
      mss separate exp/unet/best.pt songs/ -o out --name-template '{model}/{track}-{stem}.{ext}'
    """
    from mss_tools.separate import separate

    subtype = {"16": "PCM_16", "24": "PCM_24", "float": "FLOAT"}.get(bits)
    failures = separate(checkpoint, inputs, output, split=split, segment=segment, overlap=overlap,
                        batch_size=batch_size, device=device, subtype=subtype, force=force, shifts=shifts,
                        tta_flip=tta_flip, seed=seed, file_format=file_format, name_template=name_template,
                        two_stems=two_stems)
    sys.exit(1 if failures else 0)
