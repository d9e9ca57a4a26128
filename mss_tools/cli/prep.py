import sys

import click

from mss_tools.cli.common import command, split_list


@command("prep")
@click.argument("source")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--sr", "sample_rate", type=int, default=None, help="Resample to this rate (default: keep the native rate).")
@click.option("--layout", type=click.Choice(["auto", "musdb", "musdb-hq", "folder", "demo"]), default="auto",
              help="Data set layout; detected by default.")
@click.option("--sources", default=None, help="Comma-separated stems to keep, in this order (default: all).")
@click.option("--valid-tracks", default=None, help="Comma-separated training tracks to hold out for validation.")
@click.option("--valid-fraction", type=float, default=None,
              help="Fraction of training tracks held out (default: MUSDB's 14 tracks for MUSDB, else 0.1).")
@click.option("--seed", type=int, default=0, help="Seed of the validation draw and of the demo corpus.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable tracks (recorded in the cache) instead of stopping.")
@click.option("-j", "--jobs", type=int, default=1, help="Tracks decoded in parallel.")
@click.option("--force", is_flag=True, help="Rebuild even if OUTPUT is up to date.")
@click.option("--demo-tracks", type=int, default=20, help="Demo corpus: number of tracks (a fifth, 1 to 3, each for valid and test).")
@click.option("--demo-duration", type=float, default=12.0, help="Demo corpus: seconds per track.")
def cli(source, output, sample_rate, layout, sources, valid_tracks, valid_fraction, seed, skip_bad, jobs, force,
        demo_tracks, demo_duration):
    """Decode SOURCE into the HDF5 stem cache OUTPUT.

    SOURCE is a MUSDB18 root (.stem.mp4), a MUSDB18-HQ root, a folder laid out
    <split>/<track>/<stem>.wav|flac, or `demo` for the built-in synthetic corpus.

    \b
    Examples:
      mss prep --sr 22050 ~/data/musdb18 musdb22k.h5 -j 2
      mss prep --sr 16000 demo demo.h5
      mss prep --layout folder --valid-fraction 0.1 my_stems/ piano.h5
    """
    from mss_tools.prep import PrepOptions, prep

    options = PrepOptions(sample_rate=sample_rate, layout=layout, sources=split_list(sources),
                          valid_tracks=split_list(valid_tracks), valid_fraction=valid_fraction, seed=seed,
                          skip_bad=skip_bad, jobs=jobs, force=force, demo_tracks=demo_tracks,
                          demo_duration=demo_duration)
    prep(source, output, options, argv=sys.argv)
