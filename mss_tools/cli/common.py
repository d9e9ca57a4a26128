"""Shared command-line plumbing: -v/-q, one-line errors and exit codes, the ranges of numeric options."""

from __future__ import annotations

import functools
import math
import sys

import click

from mss_tools.errors import MssError


class IntegerRange(click.IntRange):
    """A ``click.IntRange`` whose error for a non-number says "not a valid integer"."""

    name = "integer"


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which compare false with any bound)."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


PROBABILITY = FiniteFloatRange(0.0, 1.0)
POSITIVE_FLOAT = FiniteFloatRange(min=0.0, min_open=True)
NON_NEGATIVE_FLOAT = FiniteFloatRange(min=0.0)
POSITIVE_INT = IntegerRange(min=1)
NON_NEGATIVE_INT = IntegerRange(min=0)
SEED = IntegerRange(0, 2**32 - 1)  # numpy seed sequences take no negative numbers
MIN_SAMPLE_RATE = 1000


class OneLineUsageError(click.ClickException):
    """A bad option or argument, shown as ``mss NAME: error: ...`` on one line (exit code 2)."""

    exit_code = 2

    def __init__(self, command_name: str, message: str):
        super().__init__(" ".join(message.split()))
        self.command_name = command_name

    def show(self, file=None) -> None:
        click.echo(f"mss {self.command_name}: error: {self.format_message()}", err=True, file=file)


class MssCommand(click.Command):
    """A subcommand whose usage errors (a bad option value, a missing argument) are one line, not the
    usage text followed by the error."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise OneLineUsageError(self.name, exc.format_message()) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise OneLineUsageError(self.name, exc.format_message()) from None


def command(name: str, **kwargs):
    """A click command with ``-v/-q`` whose ``MssError`` becomes one line on stderr and its exit code."""

    def decorate(func):
        @click.option("-v", "--verbose", count=True, help="More log output (and tracebacks on errors).")
        @click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
        @functools.wraps(func)
        def wrapper(*args, verbose: int = 0, quiet: bool = False, **kw):
            from mss_tools.progress import setup_logging

            setup_logging(-1 if quiet else verbose)
            try:
                return func(*args, **kw)
            except MssError as exc:
                if verbose:
                    raise
                click.echo(f"mss {name}: error: {exc}", err=True)
                sys.exit(exc.exit_code)
            except (ImportError, OSError) as exc:
                from mss_tools.runtime import describe_failure

                message = describe_failure(exc)
                if verbose or message is None:
                    raise
                click.echo(f"mss {name}: error: {message}", err=True)
                sys.exit(1)
            except KeyboardInterrupt:
                click.echo(f"mss {name}: interrupted", err=True)
                sys.exit(130)

        kwargs.setdefault("context_settings", {"show_default": True, "max_content_width": 100})
        return click.command(name, cls=MssCommand, **kwargs)(wrapper)

    return decorate


def split_list(value: str | None) -> list[str] | None:
    """'a,b, c' -> ['a', 'b', 'c']; None/'' -> None."""
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


_MIX_OPTIONS = [
    click.option("--sources", "active_sources", default=None,
                 help="Active sources per example: 2, 3, ... or 'all' (default all)."),
    click.option("--stage", type=IntegerRange(1, 3), default=None,
                 help="Curriculum stage: 1 = target + 1 distractor, 2 = target + 2, 3 = full mixture."),
    click.option("--aligned-prob", type=PROBABILITY, default=0.0,
                 help="Probability that all sources of an example come from one track (else cross-track remix)."),
    click.option("--silent-keep", type=PROBABILITY, default=0.1,
                 help="Probability of keeping an example whose target is silent (else it is redrawn)."),
    click.option("--gain-db", type=NON_NEGATIVE_FLOAT, default=6.0, help="Random gain range per source (± dB)."),
    click.option("--gain-prob", type=PROBABILITY, default=1.0, help="Probability of the random gain."),
    click.option("--swap-prob", type=PROBABILITY, default=0.5, help="Left/right swap probability per source."),
    click.option("--flip-prob", type=PROBABILITY, default=0.5, help="Polarity inversion probability per source."),
    click.option("--shift", type=NON_NEGATIVE_FLOAT, default=0.0,
                 help="Max time shift per source in aligned examples (s)."),
    click.option("--pitch-prob", type=PROBABILITY, default=0.0, help="Pitch shift probability per source (slow)."),
    click.option("--pitch-semitones", type=FiniteFloatRange(0.0, 12.0), default=2.0,
                 help="Pitch shift range (± semitones; at most an octave)."),
    click.option("--stretch-prob", type=PROBABILITY, default=0.0, help="Time stretch probability per source (slow)."),
    click.option("--stretch-range", type=FiniteFloatRange(0.0, 0.5), default=0.1,
                 help="Time stretch rate range (1 ± range; at most 0.5, half or one and a half times the speed)."),
    click.option("--no-augment", is_flag=True, help="Turn every augmentation off."),
]
MIX_KEYS = ("active_sources", "stage", "aligned_prob", "silent_keep", "gain_db", "gain_prob", "swap_prob",
            "flip_prob", "shift", "pitch_prob", "pitch_semitones", "stretch_prob", "stretch_range", "no_augment")


def mix_options(func):
    """The remixing/curriculum/augmentation options shared by ``remix`` and ``train``."""
    for option in reversed(_MIX_OPTIONS):
        func = option(func)
    return func


def pop_mix_options(kwargs: dict) -> dict:
    """Remove the ``mix_options`` values from ``kwargs``; returns active_sources, stage, aligned_prob,
    silent_keep and augment (an ``Augmentation``)."""
    from mss_tools.mixing import Augmentation, parse_active_sources

    values = {key: kwargs.pop(key) for key in MIX_KEYS}
    active, stage = parse_active_sources(values["active_sources"], values["stage"])
    augment = Augmentation.none() if values["no_augment"] else Augmentation(
        **{k: values[k] for k in ("gain_db", "gain_prob", "swap_prob", "flip_prob", "shift", "pitch_prob",
                                  "pitch_semitones", "stretch_prob", "stretch_range")})
    return {"active_sources": active, "stage": stage, "aligned_prob": values["aligned_prob"],
            "silent_keep": values["silent_keep"], "augment": augment}
