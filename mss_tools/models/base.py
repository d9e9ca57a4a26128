"""What every architecture shares: the constructor contract, presets and config checks."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from mss_tools.errors import BadInput


class SeparationModel(nn.Module):
    """Base class of every registered architecture.

    ``forward(mix)`` maps a mixture waveform ``(batch, audio_channels, time)`` to source
    waveforms ``(batch, len(sources), audio_channels, time)`` for any ``time`` (models
    pad and crop internally). Subclasses declare:

    - ``DEFAULTS``: every constructor option besides ``sources``, ``audio_channels`` and
      ``sample_rate``, with its default value (the type of the default is the option's type);
    - ``PRESETS``: named overrides of ``DEFAULTS`` (at least ``small`` for CPU work and
      ``paper`` for the published configuration);
    - ``DEFAULT_LOSS``: the name of the loss in :mod:`mss_tools.losses` its paper trains with;
    - ``DEFAULT_SEGMENT``: training segment length in seconds.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    DEFAULT_LOSS: ClassVar[str] = "l1_wave"
    DEFAULT_SEGMENT: ClassVar[float] = 6.0

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100):
        super().__init__()
        # recompute the activations of checkpointed blocks in the backward pass instead of keeping
        # them (training only; the result and the weights are unchanged), see run_block
        self.activation_checkpointing = False
        if not sources:
            raise BadInput("a model needs at least one source")
        self.sources = list(sources)
        self.audio_channels = int(audio_channels)
        self.sample_rate = int(sample_rate)

    @classmethod
    def resolve_config(cls, preset: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults, then the preset, then ``overrides``, each key type-checked."""
        config = dict(cls.DEFAULTS)
        if preset is not None:
            if preset not in cls.PRESETS:
                raise BadInput(f"unknown preset {preset!r} for this architecture; "
                               f"choose one of {', '.join(sorted(cls.PRESETS))}")
            config.update(cls.PRESETS[preset])
        for key, value in (overrides or {}).items():
            if key not in cls.DEFAULTS:
                raise BadInput(f"unknown option {key!r}; known options: {', '.join(sorted(cls.DEFAULTS))}")
            config[key] = coerce_option(key, value, cls.DEFAULTS[key])
        return config

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``block(x)``, under activation checkpointing when it is on and gradients are being recorded."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def coerce_option(key: str, value: Any, default: Any) -> Any:
    """Convert ``value`` (possibly a string from the command line) to the type of ``default``."""
    kind = type(default)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise BadInput(f"option {key}: expected true/false, got {value!r}")
        if kind in (list, tuple):
            items = [t for t in text.strip("[]()").split(",") if t.strip()]
            inner = type(default[0]) if default else float
            return kind(coerce_option(key, t, inner()) for t in items)
        try:
            return kind(text) if kind is not float else float(text)
        except ValueError:
            raise BadInput(f"option {key}: expected {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (list, tuple) and isinstance(value, (list, tuple)):
        return kind(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadInput(f"option {key}: expected {kind.__name__}, got {value!r}")
    return value


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int]:
    """Right-pad the last axis with zeros to a multiple of ``multiple``; returns (padded, original length)."""
    length = x.shape[-1]
    extra = (-length) % multiple
    if extra:
        x = nn.functional.pad(x, (0, extra))
    return x, length
