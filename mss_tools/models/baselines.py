"""Baselines: models without weights that every trained model must beat.

- ``mixture`` (:class:`MixtureBaseline`): every source's estimate is the mixture itself;
- ``silence`` (:class:`SilenceBaseline`): every source's estimate is all zeros.

Both map ``(batch, audio_channels, time)`` to ``(batch, len(sources), audio_channels, time)``.
``mss separate mixture INPUTS`` (or ``silence``) runs them in place of a checkpoint.
"""

from __future__ import annotations

import torch

from mss_tools.models.base import SeparationModel


class MixtureBaseline(SeparationModel):
    """Each source's estimate is the mixture: ``(batch, C, time)`` -> ``(batch, sources, C, time)``."""

    ARCH = "mixture"
    DEFAULT_SEGMENT = 10.0

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return mix.unsqueeze(1).expand(-1, len(self.sources), -1, -1).clone()


class SilenceBaseline(SeparationModel):
    """Each source's estimate is silence: ``(batch, C, time)`` -> zeros ``(batch, sources, C, time)``."""

    ARCH = "silence"
    DEFAULT_SEGMENT = 10.0

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return mix.new_zeros(mix.shape[0], len(self.sources), *mix.shape[1:])
