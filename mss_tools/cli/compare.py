import click

from mss_tools.cli.common import command


@command("compare")
@click.argument("scores", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Report folder: RESULTS.md and results.csv.")
def cli(scores, output):
    """Compare the score files SCORES (one per model; the file name labels the model).

    Prints one Markdown table per source to stdout: for each model, each metric's median
    over tracks (SiSEC: of the per-track medians over frames) and its mean.

    \b
    Examples:
      mss compare scores/*.json
      mss compare scores/unet.json scores/bsrnn.json -o report/
    """
    from mss_tools.report import compare

    click.echo(compare(scores, output), nl=False)
