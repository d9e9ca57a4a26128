"""Self-describing checkpoints: primitives and tensors only, loadable with ``weights_only=True``.

Keys: ``format``, ``format_version``, ``arch``, ``config``, ``sources``, ``sample_rate``,
``audio_channels``, ``state_dict``, ``meta``; ``last.pt`` adds ``training`` (optimizer,
scheduler, step, RNG states...).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from mss_tools import __version__
from mss_tools.errors import BadInput, first_sentence
from mss_tools.outputs import atomic_path, temp_path

CHECKPOINT_FORMAT = "mss-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def provenance(argv: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Versions, git commit, command line and host: what made an artefact."""
    import numpy

    meta = {
        "mss_version": __version__,
        "torch_version": str(torch.__version__),
        "numpy_version": numpy.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "argv": list(sys.argv if argv is None else argv),
    }
    meta.update(extra)
    return meta


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def model_payload(model, meta: dict[str, Any] | None = None, state_dict: dict | None = None) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "arch": model.arch,
        "config": dataclasses.asdict(model.config),
        "sources": list(model.sources),
        "sample_rate": int(model.sample_rate),
        "audio_channels": int(model.audio_channels),
        "state_dict": {k: v.detach().cpu() for k, v in (state_dict or model.state_dict()).items()},
        "meta": meta or {},
    }


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], previous: str | os.PathLike | None = None) -> None:
    """``torch.save`` to a temporary name, fsync, then rename: a crash never leaves a partial file.

    With ``previous``, the file being replaced is kept there (hard-linked before the rename, so
    that ``path`` exists at every moment). A filesystem error is an ``OSError`` naming ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as handle:
                torch.save(payload, handle)
        except RuntimeError as exc:  # torch wraps the failed write (no space...) of its zip writer
            if isinstance(exc.__context__, OSError):
                raise OSError(exc.__context__.errno, exc.__context__.strerror, str(path)) from None
            raise
        if previous is not None and path.exists():
            link = temp_path(previous)
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, previous)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint dict (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise BadInput(f"{path}: not a readable checkpoint (empty file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before it fails on a plain pickle
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BadInput(f"{path}: not a readable checkpoint (not a torch.save file of tensors and plain values; "
                       "a plain pickle?)") from None
    except Exception as exc:
        raise BadInput(f"{path}: not a readable checkpoint ({first_sentence(exc) or type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise BadInput(f"{path}: not an mss checkpoint")
    if int(payload.get("format_version", 0)) > CHECKPOINT_FORMAT_VERSION:
        raise BadInput(f"{path}: checkpoint format_version {payload['format_version']} is newer than this mss")
    return payload


def model_from_payload(payload: dict[str, Any], origin: str = "checkpoint"):
    """Rebuild the model a checkpoint describes (with the segment it was trained on) and load its weights (strictly)."""
    from mss_tools.models import build_model

    model = build_model(payload["arch"], payload["sources"], payload["audio_channels"], payload["sample_rate"],
                        config=payload["config"], segment=payload.get("meta", {}).get("segment"))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = first_sentence(exc)
        raise BadInput(f"{origin}: weights do not fit architecture {payload['arch']!r} with its config ({first})") from None
    return model


def load_model(path: str | os.PathLike):
    """The model of checkpoint ``path``, in eval mode, on the CPU."""
    payload = read_checkpoint(path)
    model = model_from_payload(payload, str(path))
    model.eval()
    return model
