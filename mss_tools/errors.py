"""Exceptions that the command line turns into one-line messages and exit codes."""


class MssError(Exception):
    """A runtime failure (exit code 1)."""

    exit_code = 1


class BadInput(MssError):
    """Bad user input: a file, option or data set that cannot be used (exit code 2)."""

    exit_code = 2
