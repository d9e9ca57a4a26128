import sys

import click

from mss_tools.cli.common import command, split_list


@command("remix")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--target", "targets", default="all", help="Target source(s), comma-separated, or 'all'.")
@click.option("--sources", default=None, help="Active sources per example: 2, 3, ... or 'all' (default all).")
@click.option("--stage", type=int, default=None, help="Curriculum stage: 1 = target + 1 distractor, 2 = + 2, 3 = all.")
@click.option("--segment", type=float, default=6.0, help="Example length in seconds.")
@click.option("--examples", type=int, default=1000, help="Number of examples.")
@click.option("--seed", type=int, default=0)
@click.option("--split", default="train", help="Cache split the examples come from.")
@click.option("--aligned", is_flag=True, help="All slots of an example from one track (no cross-track remixing).")
@click.option("--aligned-prob", type=float, default=0.0, help="Probability that an example is aligned.")
@click.option("--silent-keep", type=float, default=0.1,
              help="Probability of keeping an example whose target is silent (else it is redrawn).")
@click.option("--gain-db", type=float, default=6.0, help="Random gain range per source (± dB).")
@click.option("--gain-prob", type=float, default=1.0)
@click.option("--swap-prob", type=float, default=0.5, help="Left/right swap probability per source.")
@click.option("--flip-prob", type=float, default=0.5, help="Polarity inversion probability per source.")
@click.option("--shift", type=float, default=0.0, help="Max time shift per source in aligned examples (s).")
@click.option("--pitch-prob", type=float, default=0.0, help="Pitch shift probability per source (slow).")
@click.option("--pitch-semitones", type=float, default=2.0)
@click.option("--stretch-prob", type=float, default=0.0, help="Time stretch probability per source (slow).")
@click.option("--stretch-range", type=float, default=0.1)
@click.option("--no-augment", is_flag=True, help="Turn every augmentation off.")
@click.option("--render", "render_to", type=click.Path(dir_okay=False), default=None,
              help="Also materialize the plan as a stem cache (one track per example).")
def cli(cache, output, targets, sources, stage, segment, examples, seed, split, aligned, aligned_prob, silent_keep,
        gain_db, gain_prob, swap_prob, flip_prob, shift, pitch_prob, pitch_semitones, stretch_prob, stretch_range,
        no_augment, render_to):
    """Draw a mix plan OUTPUT from the stem cache CACHE: per example and source slot,
    which track, offset, gain and augmentations, and whether the slot is active.

    Each slot comes from its own random track (cross-track remixing) unless --aligned.
    Curriculum: --stage 1 (target + 1 distractor), 2 (target + 2), 3 (everything);
    inactive sources are silent in the mixture and in the targets.

    \b
    Examples:
      mss remix cache.h5 plan_s1.h5 --target vocals --stage 1 --segment 6 --examples 2000
      mss remix cache.h5 plan.h5 --target piano --sources 2 --render listen.h5
    """
    from mss_tools.cache import StemCache
    from mss_tools.mixing import Augmentation, MixSpec, make_plan, parse_active_sources, render_plan

    active, stage_number = parse_active_sources(sources, stage)
    target_list = StemCache(cache).sources if targets == "all" else split_list(targets)
    augment = Augmentation.none() if no_augment else Augmentation(
        gain_db=gain_db, gain_prob=gain_prob, swap_prob=swap_prob, flip_prob=flip_prob, shift=shift,
        pitch_prob=pitch_prob, pitch_semitones=pitch_semitones, stretch_prob=stretch_prob, stretch_range=stretch_range)
    spec = MixSpec(targets=target_list, segment=segment, active_sources=active,
                   aligned_prob=1.0 if aligned else aligned_prob, silent_keep=silent_keep, split=split, augment=augment)
    make_plan(cache, output, spec, examples, seed, stage_number, argv=sys.argv)
    if render_to:
        render_plan(output, render_to, cache)
