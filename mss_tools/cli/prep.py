import sys

import click

from mss_tools.cli.common import (MIN_SAMPLE_RATE, POSITIVE_INT, SEED, FiniteFloatRange, IntegerRange,
                                  command, split_list)


@command("prep")
@click.argument("source")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--sr", "sample_rate", type=IntegerRange(min=MIN_SAMPLE_RATE), default=None,
              help=f"Resample to this rate in Hz (default: keep the native rate); at least {MIN_SAMPLE_RATE} Hz: "
                   "a rate R keeps only frequencies below R/2, and below 500 Hz little but bass is left.")
@click.option("--layout", type=click.Choice(["auto", "musdb", "musdb-hq", "folder", "demo"]), default="auto",
              help="Data set layout; detected by default.")
@click.option("--sources", default=None, help="Comma-separated stems to keep, in this order (default: all).")
@click.option("--valid-tracks", default=None, help="Comma-separated training tracks to hold out for validation.")
@click.option("--valid-fraction", type=FiniteFloatRange(0.0, 1.0, min_open=True, max_open=True), default=None,
              help="Fraction of training tracks held out (default: MUSDB's 14 validation tracks for MUSDB and "
                   "MUSDB18-HQ, or 0.1 when the set has none of them; 0.1 for other sets).")
@click.option("--seed", type=SEED, default=0, help="Seed of the validation draw and of the demo corpus.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable tracks (recorded in the cache) instead of stopping.")
@click.option("-j", "--jobs", type=POSITIVE_INT, default=1, help="Tracks decoded in parallel.")
@click.option("--force", is_flag=True, help="Rebuild even if OUTPUT is up to date.")
@click.option("--demo-tracks", type=IntegerRange(min=3), default=20,
              help="Demo corpus: number of tracks (a fifth, 1 to 3, for valid; as many for test unless "
                   "--demo-test-tracks; at least one train track).")
@click.option("--demo-test-tracks", type=IntegerRange(min=1), default=None,
              help="Demo corpus: test tracks among --demo-tracks (default: as many as valid tracks).")
@click.option("--demo-duration", type=FiniteFloatRange(min=1.0), default=12.0,
              help="Demo corpus: seconds per track (at least one BSSEval window, 1 s).")
def cli(source, output, sample_rate, layout, sources, valid_tracks, valid_fraction, seed, skip_bad, jobs, force,
        demo_tracks, demo_test_tracks, demo_duration):
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
                          demo_test_tracks=demo_test_tracks, demo_duration=demo_duration)
    prep(source, output, options, argv=sys.argv)
