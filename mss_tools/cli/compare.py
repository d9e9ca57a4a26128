import click

from mss_tools.cli.common import NON_NEGATIVE_INT, SEED, FiniteFloatRange, IntegerRange, command


@command("compare")
@click.argument("scores", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Report folder: RESULTS.md, results.csv, models.csv, pairs.csv, plots/ and index.html.")
@click.option("--no-listening", is_flag=True, help="Leave the audio excerpts out of index.html.")
@click.option("--excerpt-seconds", type=FiniteFloatRange(min=0.5, max=60.0), default=8.0,
              help="Length of each listening excerpt (seconds).")
@click.option("--excerpts", type=IntegerRange(1, 3), default=2,
              help="Excerpts per category (transients, repetition, disagreement).")
@click.option("--bootstrap", type=NON_NEGATIVE_INT, default=10000,
              help="Bootstrap resamples for the confidence intervals of mean differences (0: none).")
@click.option("--seed", type=SEED, default=0, help="Seed of the bootstrap.")
@click.option("--force", is_flag=True, help="Write into OUTPUT even if it holds files that are not a report's.")
def cli(scores, output, no_listening, excerpt_seconds, excerpts, bootstrap, seed, force):
    """Compare the score files SCORES (one per model; the file name labels the model).

    Prints one Markdown table per source to stdout: for each model its parameter count and
    separation speed (when known), and each metric's median over tracks (SiSEC: of the
    per-track medians over frames) and its mean; then, for every pair of models, paired
    per-track differences of sdr and usdr with a Wilcoxon signed-rank p-value and a bootstrap
    95% confidence interval of the mean difference.

    With -o, also writes CSV files, boxplots and per-track difference plots (PNG and SVG), and
    a self-contained index.html with a listening section: short aligned excerpts of mixture,
    reference and every model's estimate, chosen automatically (onset-dense passages, loud
    repetitive drum passages, and where the models disagree most).

    \b
    Examples:
      mss compare scores/*.json
      mss compare scores/unet.json scores/bsrnn.json -o report/
      mss compare scores/*.json -o report/ --excerpt-seconds 6 --no-listening
    """
    from mss_tools.report import compare

    click.echo(compare(scores, output, listening=not no_listening, excerpt_seconds=excerpt_seconds,
                       excerpts=excerpts, bootstrap=bootstrap, seed=seed, force=force), nl=False)
