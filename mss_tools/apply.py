"""Model-agnostic inference: chunked overlap-add over whole tracks.

Works for any :class:`~mss_tools.models.base.SeparationModel` (waveform in, stems out):
the track is cut into ``segment``-second chunks overlapping by ``overlap``, chunks are run
in batches, and the outputs are blended with a raised-cosine cross-fade, so memory is
bounded by the chunk, not the track.
"""

from __future__ import annotations

import math

import torch


def crossfade_window(length: int, fade: int, left: bool = True, right: bool = True) -> torch.Tensor:
    """Flat window with raised-cosine ramps of ``fade`` samples at the chosen ends, never below 1e-3.

    The first chunk of a track has no left ramp and the last no right ramp: nothing overlaps there.
    """
    window = torch.ones(length, dtype=torch.float64)
    if fade > 0:
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(fade, dtype=torch.float64) + 0.5) / fade)
        if left:
            window[:fade] = ramp
        if right:
            window[-fade:] = torch.minimum(window[-fade:], ramp.flip(0))
    return window.clamp_min(1e-3).float()


@torch.no_grad()
def separate_tensor(model, mix: torch.Tensor, segment: float | None = None, overlap: float = 0.25,
                    batch_size: int = 4, device: str | torch.device | None = None, progress=None) -> torch.Tensor:
    """Separate ``mix`` ``(channels, time)`` at the model's sample rate into ``(sources, channels, time)``.

    ``segment`` in seconds (default: ``model.segment``, the training segment a checkpoint
    records, else the architecture's default); ``overlap`` is the
    fraction of a chunk shared with the next one. The result stays on the CPU; only one
    batch of chunks lives on ``device`` at a time.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    channels, length = mix.shape
    chunk = max(1, int(round(default_segment(model, segment) * model.sample_rate)))
    chunk = min(chunk, length)
    hop = max(1, int(round(chunk * (1 - overlap))))
    starts = list(range(0, max(length - chunk, 0) + 1, hop))
    if starts[-1] + chunk < length:
        starts.append(length - chunk)
    fade = min(chunk - hop, chunk // 2)
    out = torch.zeros(len(model.sources), channels, length)
    weight = torch.zeros(length)
    for first in range(0, len(starts), batch_size):
        batch_starts = starts[first:first + batch_size]
        batch = torch.stack([mix[:, s:s + chunk] for s in batch_starts]).to(device)
        estimates = model(batch).float().cpu()
        for estimate, s in zip(estimates, batch_starts):
            window = crossfade_window(chunk, fade, left=s > 0, right=s + chunk < length)
            out[..., s:s + chunk] += estimate * window
            weight[s:s + chunk] += window
        if progress is not None:
            progress.advance(len(batch_starts))
    return out / weight


def default_segment(model, segment: float | None = None) -> float:
    return segment or getattr(model, "segment", None) or model.DEFAULT_SEGMENT


def chunk_count(length: int, chunk: int, overlap: float) -> int:
    chunk = min(chunk, length)
    hop = max(1, int(round(chunk * (1 - overlap))))
    count = len(range(0, max(length - chunk, 0) + 1, hop))
    return count + (1 if (count - 1) * hop + chunk < length else 0)
