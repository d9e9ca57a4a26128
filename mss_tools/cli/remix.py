import sys

import click

from mss_tools.cli.common import (POSITIVE_FLOAT, POSITIVE_INT, SEED, command, dataclass_options, dataclass_values,
                                  split_list)
from mss_tools.mixing import MixSpec


@command("remix")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--target", "targets", default="all", help="Target source(s), comma-separated, or 'all'.")
@click.option("--segment", type=POSITIVE_FLOAT, default=6.0, help="Example length in seconds.")
@click.option("--examples", type=POSITIVE_INT, default=1000, help="Number of examples.")
@click.option("--seed", type=SEED, default=0, help="Seed of the draw.")
@click.option("--split", default="train", help="Cache split the examples come from.")
@click.option("--aligned", is_flag=True, help="All sources of every example from one track (same as --aligned-prob 1).")
@dataclass_options(MixSpec)
@click.option("--render", "render_to", type=click.Path(dir_okay=False), default=None,
              help="Also materialize the plan as a stem cache (one track per example, in the plan's split).")
@click.option("--force", is_flag=True, help="Replace OUTPUT (and --render's file) even if it is not a plan of CACHE; "
              "draw OUTPUT again even if it is up to date.")
def cli(cache, output, targets, segment, examples, seed, split, aligned, render_to, force, **mix):
    """Draw a mix plan OUTPUT from the stem cache CACHE: per example and source slot,
    which track, offset, gain and augmentations, and whether the slot is active.

    Each slot comes from its own random track (cross-track remixing) unless --aligned.
    Curriculum: --stage 1 (target + 1 distractor), 2 (target + 2), 3 (everything);
    inactive sources are silent in the mixture and in the targets. An existing plan drawn
    from the same cache with the same options is up to date and kept.

    \b
    Examples:
      mss remix cache.h5 plan_s1.h5 --target vocals --stage 1 --segment 6 --examples 2000
      mss remix cache.h5 plan.h5 --target piano --sources 2 --render listen.h5
    """
    from mss_tools.cache import StemCache
    from mss_tools.mixing import make_plan, parse_active_sources, render_plan

    options = dataclass_values(MixSpec, mix)
    options["active_sources"], options["stage"] = parse_active_sources(options["active_sources"], options["stage"])
    if aligned:
        options["aligned_prob"] = 1.0
    target_list = StemCache(cache).sources if targets == "all" else split_list(targets)
    spec = MixSpec(targets=target_list, segment=segment, split=split, **options)
    make_plan(cache, output, spec, examples, seed, argv=sys.argv, force=force)
    if render_to:
        render_plan(output, render_to, cache, force=force)
