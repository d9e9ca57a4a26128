"""Model registry: names map to classes imported on first use.

``build_model("unet", sources=["vocals"], audio_channels=2, sample_rate=22050,
preset="small", overrides={"depth": 4})`` returns a ready :class:`SeparationModel`.
``ARCHITECTURES`` are trained (``mss train --arch``); ``BASELINES`` have no weights and are
separated with by name (``mss separate mixture ...``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Sequence

from mss_tools.errors import BadInput

ARCHITECTURES: dict[str, str] = {
    "unet": "mss_tools.models.unet:UNet",
    "unet_lite": "mss_tools.models.unet_lite:UNetLite",
    "demucs_lstm": "mss_tools.models.demucs:DemucsLSTM",
    "demucs_attn": "mss_tools.models.demucs:DemucsAttention",
    "bsrnn": "mss_tools.models.bsrnn:BSRNN",
    "bsrnn_se": "mss_tools.models.bsrnn:BSRNNSE",
    "bs_roformer": "mss_tools.models.bs_roformer:BSRoFormer",
    "mel_roformer": "mss_tools.models.mel_roformer:MelRoFormer",
    "tfc_tdf_v3": "mss_tools.models.tfc_tdf_v3:TFCTDFv3",
    "scnet": "mss_tools.models.scnet:SCNet",
    "htdemucs": "mss_tools.models.htdemucs:HTDemucs",
}

BASELINES: dict[str, str] = {
    "mixture": "mss_tools.models.baselines:MixtureBaseline",
    "silence": "mss_tools.models.baselines:SilenceBaseline",
}


def model_class(arch: str):
    """The class of a trainable architecture."""
    if arch not in ARCHITECTURES:
        raise BadInput(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return _import_class(arch, ARCHITECTURES[arch])


def _import_class(name: str, location: str):
    module_name, class_name = location.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise BadInput(f"architecture {name!r} is registered but not available in this build") from None
        raise
    return getattr(module, class_name)


def build_model(arch: str, sources: Sequence[str], audio_channels: int, sample_rate: int,
                preset: str | None = None, overrides: Mapping[str, Any] | None = None,
                config: Mapping[str, Any] | None = None, segment: float | None = None):
    """Build ``arch``. ``config`` wins over preset/overrides: the architecture's config, or a
    stored plain dict of options (a checkpoint's; missing options take their ``LEGACY`` value,
    else their default, see :class:`~mss_tools.models.base.ModelConfig`).
    ``segment``: the chunk length inference runs on by default (the architecture's default
    segment when not given)."""
    cls = model_class(arch)
    if config is None:
        config = cls.make_config(preset, overrides)
    elif type(config) is not type(cls.DEFAULTS):
        unknown = set(config) - set(cls.DEFAULTS)
        if unknown:
            raise BadInput(f"config has options unknown to {arch!r}: {', '.join(sorted(unknown))}")
        config = cls.DEFAULTS.from_stored(config)
    return cls(list(sources), audio_channels, sample_rate, config, segment=segment)


def build_baseline(name: str, sources: Sequence[str], audio_channels: int, sample_rate: int):
    """The baseline ``name`` (one of ``BASELINES``), in eval mode."""
    if name not in BASELINES:
        raise BadInput(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return _import_class(name, BASELINES[name])(list(sources), audio_channels, sample_rate).eval()
