"""Shared command-line plumbing: -v/-q, one-line errors and exit codes."""

from __future__ import annotations

import functools
import sys

import click

from mss_tools.errors import MssError


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
            except KeyboardInterrupt:
                click.echo(f"mss {name}: interrupted", err=True)
                sys.exit(130)

        kwargs.setdefault("context_settings", {"show_default": True, "max_content_width": 100})
        return click.command(name, **kwargs)(wrapper)

    return decorate


def split_list(value: str | None) -> list[str] | None:
    """'a,b, c' -> ['a', 'b', 'c']; None/'' -> None."""
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]
