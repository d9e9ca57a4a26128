"""Shared command-line plumbing: -v/-q, one-line errors and exit codes, the ranges of numeric options,
options generated from dataclass fields."""

from __future__ import annotations

import dataclasses
import functools
import sys

import click

from mss_tools.errors import MssError
# The ranges of numeric options are defined with the option fields; imported from here by every command.
from mss_tools.options import (NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT,  # noqa: F401
                               PROBABILITY, SEED, FIELD_DEFAULT, FiniteFloatRange, IntegerRange, nested_dataclass,
                               option_of)
from mss_tools.options import comma_list as split_list  # noqa: F401

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


def dataclass_options(cls):
    """Decorator: a click option for every field of the dataclass ``cls`` that has an
    :class:`~mss_tools.options.Option` (and for every field of the dataclasses its fields hold),
    named, typed, range-checked, documented and defaulted by the field. The values arrive under
    the field names; :func:`dataclass_values` turns them into field values."""

    def decorate(func):
        for decorator in reversed(_click_options(cls)):
            func = decorator(func)
        return func

    return decorate


def _click_options(cls) -> list:
    decorators = []
    for f in dataclasses.fields(cls):
        nested, spec = nested_dataclass(f), option_of(f)
        if nested is not None:
            decorators += _click_options(nested)
        if spec is None:
            continue
        if spec.cli_default is not FIELD_DEFAULT:
            default = spec.cli_default
        elif spec.multiple:
            default = ()
        else:
            default = False if nested is not None else f.default
        kwargs = {"default": default, "help": spec.help, "multiple": spec.multiple, "metavar": spec.metavar}
        if spec.is_flag:
            kwargs["is_flag"] = True
        elif spec.type is not None:
            kwargs["type"] = spec.type
        names = spec.names or (f"--{f.name.replace('_', '-')}",)
        decorators.append(click.option(*names, spec.dest or f.name, **kwargs))
    return decorators


def dataclass_values(cls, values: dict) -> dict:
    """Take the values of ``cls``'s options (:func:`dataclass_options`) out of ``values``, a
    command's keyword arguments, as ``{field: value}`` (converted; nested dataclasses built)."""
    fields = {}
    for f in dataclasses.fields(cls):
        nested, spec = nested_dataclass(f), option_of(f)
        if nested is not None:
            built = nested(**dataclass_values(nested, values))
            fields[f.name] = built if spec is None else spec.convert(values.pop(spec.dest or f.name), built)
        elif spec is not None:
            value = values.pop(f.name)
            fields[f.name] = spec.convert(value) if spec.convert else value
    return fields
