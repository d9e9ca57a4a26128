import click

from mss_tools.cli.common import POSITIVE_INT, command


@command("score")
@click.argument("predictions", type=click.Path(file_okay=False))
@click.option("--ref", "references", default=None,
              help="References: a stem cache or a data set root (default: the cache named in the manifest).")
@click.option("--museval", "with_museval", is_flag=True, help="Add BSSEval v4 isr/sir/sar (sdr is always computed).")
@click.option("--backend", type=click.Choice(["mss", "museval"]), default="mss",
              help="BSSEval v4 implementation: this project's, or the museval package (for cross-checking).")
@click.option("--accompaniment-convention", "convention", type=click.Choice(["museval", "separate"]),
              default="museval", help="With vocals, drums, bass, other and accompaniment all present: museval "
              "reports vocals from the vocals/accompaniment run (sigsep-mus-eval #65); 'separate' keeps vocals "
              "from the joint run of the stems.")
@click.option("-j", "--jobs", type=POSITIVE_INT, default=1, help="Tracks scored in parallel.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Score file (JSON); default: print the JSON to stdout.")
@click.option("--force", is_flag=True, help="Replace OUTPUT even if it is not a score file of PREDICTIONS.")
def cli(predictions, references, with_museval, backend, convention, jobs, output, force):
    """Score the separated stems in PREDICTIONS against their references.

    Every <track>/<stem>.wav present is an estimate; the stems of a track are evaluated
    jointly. Metrics: usdr, si_sdr and framewise BSSEval v4 sdr (1 s windows); --museval
    adds isr, sir and sar. Aggregation: median over frames, then median over tracks. A stem
    whose reference is silent (below -80 dBFS RMS) gets no values, is listed under
    "silent_references" and is left out of the aggregate and of its track's joint evaluation.

    \b
    Examples:
      mss score preds/unet -o scores/unet.json
      mss score preds/unet --museval -j 2 -o scores/unet.json
      mss score preds/mine --ref ~/data/musdb18 --museval --backend museval
    """
    from mss_tools.formats import dumps_scores
    from mss_tools.scoring import score

    document = score(predictions, output, references, with_museval, backend, jobs, convention, force)
    if output is None:
        click.echo(dumps_scores(document), nl=False)
    else:
        from mss_tools.report import markdown_summary

        click.echo(markdown_summary([document], [output]), err=True)
