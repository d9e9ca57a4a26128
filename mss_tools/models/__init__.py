"""Architecture registry: names map to classes imported on first use.

``build_model("unet", sources=["vocals"], audio_channels=2, sample_rate=22050,
preset="small", overrides={"depth": 4})`` returns a ready :class:`SeparationModel`.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

from mss_tools.errors import BadInput

ARCHITECTURES: dict[str, str] = {
    "unet": "mss_tools.models.unet:UNet",
    "unet_lite": "mss_tools.models.unet_lite:UNetLite",
    "demucs_lstm": "mss_tools.models.demucs:DemucsLSTM",
    "demucs_attn": "mss_tools.models.demucs:DemucsAttention",
    "bsrnn": "mss_tools.models.bsrnn:BSRNN",
    "bsrnn_se": "mss_tools.models.bsrnn:BSRNNSE",
}


def model_class(arch: str):
    if arch not in ARCHITECTURES:
        raise BadInput(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    module_name, class_name = ARCHITECTURES[arch].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise BadInput(f"architecture {arch!r} is registered but not available in this build") from None
        raise
    return getattr(module, class_name)


def available_architectures() -> list[str]:
    """Registered names whose module can be imported."""
    names = []
    for arch in ARCHITECTURES:
        try:
            model_class(arch)
        except BadInput:
            continue
        names.append(arch)
    return names


def build_model(arch: str, sources: Sequence[str], audio_channels: int, sample_rate: int,
                preset: str | None = None, overrides: dict[str, Any] | None = None,
                config: dict[str, Any] | None = None):
    """Build ``arch``. ``config`` (a resolved config, e.g. from a checkpoint) wins over preset/overrides."""
    cls = model_class(arch)
    if config is None:
        config = cls.resolve_config(preset, overrides)
    else:
        unknown = set(config) - set(cls.DEFAULTS)
        if unknown:
            raise BadInput(f"config has options unknown to {arch!r}: {', '.join(sorted(unknown))}")
        config = cls.resolve_config(None, config)
    model = cls(sources=list(sources), audio_channels=audio_channels, sample_rate=sample_rate, **config)
    model.arch = arch
    model.config = config
    return model
