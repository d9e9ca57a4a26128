"""Settings defined once: a dataclass field carries its default, help text and range, and the
command line is generated from it (:func:`mss_tools.cli.common.dataclass_options`).

``TrainConfig`` (:mod:`mss_tools.train_config`), ``MixSpec`` and ``Augmentation``
(:mod:`mss_tools.mixing`) declare their settings with :func:`option`; a field without one is
not a command-line option. This module imports click (for the range types) but not torch, so
that ``--help`` stays light.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass
from typing import Any, Callable

import click

from mss_tools.errors import BadInput


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


FIELD_DEFAULT = type("FieldDefault", (), {"__repr__": lambda self: "FIELD_DEFAULT"})()  # Option.cli_default unset


@dataclass(frozen=True)
class Option:
    """How a dataclass field appears on the command line.

    ``names``: the option's names (default ``--field-name``); the value always lands in the
    field of that name. ``type``: a click type (the ranges above, ``click.Choice``...; default
    text). ``cli_default``: the command line's default where "not given" is not the field's
    default (``--stage``: none, so that ``--sources`` decides). ``convert``: command-line value
    -> field value. For a field whose value is a dataclass with options of its own
    (``augment``), the option is a switch and ``convert(switch, built)`` gets the switch and the
    dataclass built from those options; ``dest`` names the switch's value.
    """

    help: str
    type: Any = None
    names: tuple[str, ...] = ()
    is_flag: bool = False
    multiple: bool = False
    metavar: str | None = None
    cli_default: Any = FIELD_DEFAULT
    convert: Callable[..., Any] | None = None
    dest: str | None = None


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field with a command-line :class:`Option` (keyword arguments: its attributes)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": Option(**spec)})


def same_field(cls: type, name: str) -> Any:
    """A new field with the default and option of field ``name`` of dataclass ``cls``: one
    setting shared by two dataclasses (``TrainConfig.aligned_prob`` is ``MixSpec.aligned_prob``)."""
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(default=source.default, default_factory=source.default_factory,
                             metadata=source.metadata)


def option_of(f: dataclasses.Field) -> Option | None:
    return f.metadata.get("option")


def nested_dataclass(f: dataclasses.Field) -> type | None:
    """The dataclass a field holds when its default is made by a dataclass (``augment``), else None."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def comma_list(value: str | None) -> list[str] | None:
    """'a,b, c' -> ['a', 'b', 'c']; None/'' -> None."""
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_arch_options(values) -> dict[str, str]:
    """``--arch-opt`` values ``("depth=5", "channels=8")`` -> ``{"depth": "5", "channels": "8"}``."""
    options = {}
    for item in values:
        if "=" not in item:
            raise BadInput(f"--arch-opt expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    return options
