"""What every architecture shares: the config type, the constructor contract, presets and option checks.

:class:`SourceSeparator` is all that inference (:mod:`mss_tools.apply`) needs of a model;
:class:`SeparationModel` is the base class of the registered architectures and baselines,
each with a frozen :class:`ModelConfig` dataclass of its options.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from mss_tools.errors import BadInput


@runtime_checkable
class SourceSeparator(Protocol):
    """A model as inference sees it.

    ``model(mix)`` maps a mixture ``(batch, audio_channels, time)`` at ``sample_rate`` to
    the estimates ``(batch, len(sources), audio_channels, time)``, for any ``time``;
    ``segment`` is the chunk length in seconds it is run on by default.

    Optional: ``stft_hop``, the hop in samples of a spectrogram model's STFT (a waveform model
    has none; inference reads it as 1). :mod:`mss_tools.apply` puts every chunk on the frame
    grid of the whole track's STFT with it.
    """

    sources: list[str]
    sample_rate: int
    audio_channels: int
    segment: float

    def __call__(self, mix: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True)
class ModelConfig(Mapping):
    """Base of every architecture's options: a frozen dataclass whose fields name the options,
    their types (the type hints) and their defaults.

    It reads like a mapping too (``config["depth"]``, ``dict(config)``, ``set(config)``).

    ``LEGACY``: options added after checkpoints of the architecture were first written, each with
    the value that reproduces the models written before it; a stored config (a checkpoint's or an
    experiment's, see :meth:`from_stored`) that lacks one gets that value, not today's default.
    """

    LEGACY: ClassVar[Mapping[str, Any]] = types.MappingProxyType({})

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """Each option's type hint, in field order."""
        hints = typing.get_type_hints(cls)
        return {field.name: hints[field.name] for field in dataclasses.fields(cls)}

    def with_options(self, options: Mapping[str, Any]) -> ModelConfig:
        """A copy with ``options`` replaced, each converted to its field's type (from a string of
        ``--arch-opt key=value`` or a JSON value); an unknown name or a bad value is :class:`BadInput`."""
        kinds = self.option_types()
        converted = {}
        for key, value in options.items():
            if key not in kinds:
                raise BadInput(f"unknown option {key!r}; known options: {', '.join(sorted(kinds))}")
            converted[key] = convert_option(key, value, kinds[key])
        return dataclasses.replace(self, **converted)

    def from_stored(self, stored: Mapping[str, Any]) -> ModelConfig:
        """The config a stored one describes (options it lacks: their ``LEGACY`` value, else the default)."""
        return self.with_options({**self.LEGACY, **stored})

    def __getitem__(self, key: str) -> Any:
        if key not in set(self):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return (field.name for field in dataclasses.fields(self))

    def __len__(self) -> int:
        return len(dataclasses.fields(self))


@dataclasses.dataclass(frozen=True)
class NoOptions(ModelConfig):
    """The config of a model without options (the baselines)."""


def convert_option(key: str, value: Any, kind: Any) -> Any:
    """``value`` as type ``kind``: ``bool``, ``int``, ``float``, ``str``, ``tuple[X, ...]``,
    ``list[X]`` or ``X | None`` (``X`` one of these).

    Strings are parsed (``true``/``false``, numbers; a list as ``1,2,3`` or ``[1, 2, 3]``;
    ``none`` or ``null`` for None); other values must already be of the type (an int is
    taken for a float).
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return convert_option(key, value, inner)
    if origin in (tuple, list):
        inner = args[0]
        if isinstance(value, str):
            items = [item.strip() for item in value.strip().strip("[]()").split(",") if item.strip()]
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            raise BadInput(f"option {key}: expected a list of {inner.__name__}, got {value!r}")
        return origin(convert_option(key, item, inner) for item in items)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise BadInput(f"option {key}: expected true/false, got {value!r}")
        try:
            return kind(text)
        except ValueError:
            raise BadInput(f"option {key}: expected {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadInput(f"option {key}: expected {kind.__name__}, got {value!r}")
    return value


def require_at_least_one(config: ModelConfig, keys: Sequence[str]) -> None:
    """Refuse (:class:`BadInput`) a config whose option ``key`` is below 1, for any of ``keys``."""
    for key in keys:
        if config[key] < 1:
            raise BadInput(f"option {key} must be at least 1, got {config[key]}")


def model_stft(n_fft: int, hop_length: int, **options):
    """The project's STFT for a model's options; an impossible combination is a :class:`BadInput`."""
    from mss_tools.dsp import STFT

    try:
        return STFT(n_fft, hop_length, **options)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


class SeparationModel(nn.Module):
    """Base class of every registered architecture (a :class:`SourceSeparator`).

    ``forward(mix)`` maps a mixture waveform ``(batch, audio_channels, time)`` to source
    waveforms ``(batch, len(sources), audio_channels, time)`` for any ``time`` (models
    pad and crop internally). Subclasses declare:

    - ``ARCH``: the name the registry (:mod:`mss_tools.models`) knows it by;
    - ``DEFAULTS``: the default config, an instance of the architecture's
      :class:`ModelConfig` dataclass (which the constructor takes);
    - ``PRESETS``: named configs, ``dataclasses.replace(DEFAULTS, ...)`` (at least ``small``
      for CPU work and ``paper`` for the published configuration);
    - ``DEFAULT_LOSS``: the name of the loss in :mod:`mss_tools.losses` its paper trains with;
    - ``DEFAULT_SEGMENT``: training segment length in seconds, the default ``segment``.
    """

    ARCH: ClassVar[str]
    DEFAULTS: ClassVar[ModelConfig] = NoOptions()
    PRESETS: ClassVar[dict[str, ModelConfig]] = {}
    DEFAULT_LOSS: ClassVar[str] = "l1_wave"
    DEFAULT_SEGMENT: ClassVar[float] = 6.0

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100,
                 config: ModelConfig | None = None, *, segment: float | None = None):
        super().__init__()
        # recompute the activations of checkpointed blocks in the backward pass instead of keeping
        # them (training only; the result and the weights are unchanged), see run_block
        self.activation_checkpointing = False
        if not sources:
            raise BadInput("a model needs at least one source")
        config = self.DEFAULTS if config is None else config
        if type(config) is not type(self.DEFAULTS):
            raise TypeError(f"{type(self).__name__} takes a {type(self.DEFAULTS).__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        self.sources = list(sources)
        self.audio_channels = int(audio_channels)
        self.sample_rate = int(sample_rate)
        self.segment = float(segment or self.DEFAULT_SEGMENT)

    @property
    def arch(self) -> str:
        return self.ARCH

    @classmethod
    def make_config(cls, preset: str | None = None, options: Mapping[str, Any] | None = None) -> ModelConfig:
        """The preset (default: ``DEFAULTS``), then ``options``, each converted to its option's type."""
        if preset is not None and preset not in cls.PRESETS:
            raise BadInput(f"unknown preset {preset!r} for this architecture; "
                           f"choose one of {', '.join(sorted(cls.PRESETS))}")
        base = cls.PRESETS[preset] if preset is not None else cls.DEFAULTS
        return base.with_options(options or {})

    @classmethod
    def resolve_config(cls, preset: str | None = None, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """:meth:`make_config` as a plain dict, the form JSON files and checkpoints hold."""
        return dataclasses.asdict(cls.make_config(preset, options))

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``block(x)``, under activation checkpointing when it is on and gradients are being recorded."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    @property
    def stft_hop(self) -> int:
        """Hop in samples of the model's STFT (its ``stft`` submodule, as the spectrogram models
        name it); 1 for a model without one (waveform models, baselines)."""
        stft = self._modules.get("stft")
        return int(getattr(stft, "hop_length", 1))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
