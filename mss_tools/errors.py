"""Exceptions that the command line turns into one-line messages and exit codes."""

import re


class MssError(Exception):
    """A runtime failure (exit code 1)."""

    exit_code = 1


class BadInput(MssError):
    """Bad user input: a file, option or data set that cannot be used (exit code 2)."""

    exit_code = 2


def first_sentence(text: str) -> str:
    """The first sentence of the first non-empty line of ``text``, whole (``""`` when there is none)."""
    for line in str(text).splitlines():
        line = line.strip()
        if line:
            return re.split(r"(?<=[.!?])\s+(?=[A-Z(])", line, maxsplit=1)[0]
    return ""
