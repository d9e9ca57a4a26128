"""Which torch device a tool runs on (``-d/--device`` of ``train`` and ``separate``)."""

from __future__ import annotations

import torch

from mss_tools.errors import BadInput


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (this process's GPU under torchrun, else the CPU), ``cpu``, ``cuda``, ``cuda:1`` ...

    A CUDA device without CUDA is ``BadInput``."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)
