"""Model-agnostic inference: streaming chunked overlap-add with test-time augmentation.

Works for any :class:`~mss_tools.models.base.SourceSeparator` (``sources``,
``sample_rate``, ``audio_channels``, ``segment``; waveform ``(batch, audio_channels, time)``
in, stems ``(batch, len(sources), audio_channels, time)`` out): the track is cut into
``segment``-second chunks overlapping by ``overlap``, chunks are run in batches, and the
outputs are blended with a raised-cosine cross-fade.
:class:`StreamingSeparator` takes the mixture in blocks and hands back finished stems as
soon as no later chunk can touch them, so memory is bounded by the chunk, not the track;
:func:`separate_tensor` is the same on a whole track held in memory.

Chunks of a spectrogram model sit on the frame grid of the whole track's STFT. A model with an
STFT says its hop in ``stft_hop`` (:class:`~mss_tools.models.base.SourceSeparator`; 1 when it
has none, as for waveform models, and then nothing below changes anything): the chunk hop is
``chunk · (1 - overlap)`` rounded to a multiple of ``stft_hop``, and the chunk length is
``segment`` rounded to a multiple of ``stft_hop`` plus ``(length - that) mod stft_hop``, so that
every chunk — the last one too, which is moved back to end with the track — starts at a multiple
of ``stft_hop``. A chunk's frames are then the whole track's frames (away from the chunk's own
edges, where its STFT pads), and a model that treats frames locally gives the same output
chunked as whole; with a chunk hop off the grid every chunk's frames fall between the track's,
and the estimates of neighbouring chunks disagree wherever they are blended. (A time-shifted
pass puts its chunks on the grid of the delayed track it separates.)

Test-time augmentation (:class:`Pass`, :func:`tta_passes`) runs the track several times —
time-shifted by a random delay (Demucs' "shifts"), channel-swapped, polarity-inverted —
maps every estimate back and averages them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mss_tools.models.base import SourceSeparator


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


def default_segment(model: SourceSeparator, segment: float | None = None) -> float:
    return segment or model.segment


def model_device(model: SourceSeparator) -> torch.device:
    """Where a module's parameters (or buffers) are; the CPU for a model that holds no tensors."""
    if isinstance(model, torch.nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return torch.device("cpu")


def frame_hop(model: SourceSeparator) -> int:
    """The hop chunks are aligned to: the model's ``stft_hop``, 1 for a model without an STFT."""
    return max(1, int(getattr(model, "stft_hop", 1) or 1))


def chunk_length(segment_samples: int, length: int, hop: int = 1) -> int:
    """Samples per chunk of a ``length``-sample track for a segment of ``segment_samples`` and an STFT hop ``hop``.

    The whole track if it is no longer than the segment; else the segment rounded to a multiple
    of ``hop`` (at least ``hop``), plus ``(length - chunk) mod hop``: then the last chunk, which
    ends with the track, starts on the frame grid (a multiple of ``hop``) like the others.
    """
    chunk = hop * max(1, round(segment_samples / hop))
    if chunk >= length:
        return length
    return chunk + (length - chunk) % hop


def chunk_hop(chunk: int, overlap: float, hop: int = 1) -> int:
    """Samples from one chunk's start to the next: ``chunk · (1 - overlap)`` rounded to a multiple of the STFT hop
    ``hop`` (at least ``hop``, at most the chunk, so that chunks leave no gap)."""
    return hop * max(1, min(round(chunk * (1 - overlap) / hop), chunk // hop))


def chunk_starts(length: int, chunk: int, overlap: float, hop: int = 1) -> list[int]:
    """Start of every chunk of a ``length``-sample track; ``chunk`` is at most ``length`` (:func:`chunk_length`).

    Steps of :func:`chunk_hop`; the last chunk is moved back to end with the track (on the
    frame grid when ``chunk`` comes from :func:`chunk_length` with the same ``hop``).
    """
    starts = list(range(0, max(length - chunk, 0) + 1, chunk_hop(chunk, overlap, hop)))
    if starts[-1] + chunk < length:
        starts.append(length - chunk)
    return starts


def chunk_count(length: int, chunk: int, overlap: float, hop: int = 1) -> int:
    """How many chunks a ``length``-sample track is cut into for a segment of ``chunk`` samples."""
    return len(chunk_starts(length, chunk_length(chunk, length, hop), overlap, hop))


@dataclass(frozen=True)
class Pass:
    """One test-time-augmentation pass over a track.

    The model sees the mixture after ``delay`` zeros (a time shift), with its channels
    swapped (``swap``) and its polarity inverted (``invert``); :meth:`restore` undoes the
    channel swap and the inversion on the estimate, and the separator drops the delay.
    """

    delay: int = 0
    swap: bool = False
    invert: bool = False

    def prepare(self, mix: torch.Tensor) -> torch.Tensor:
        """``(..., channels, time)`` -> the same, augmented."""
        if self.swap:
            mix = mix.flip(-2)
        return -mix if self.invert else mix

    restore = prepare  # both operations are their own inverse


def tta_passes(shifts: int = 0, flip: bool = False, max_shift: int = 0, channels: int = 2,
               rng: np.random.Generator | None = None) -> list[Pass]:
    """The passes of a test-time augmentation: every delay times every flip.

    ``shifts`` random delays in ``[0, max_shift]`` samples drawn from ``rng`` (none: one
    pass without a shift); ``flip`` adds channel swap (stereo only) and polarity inversion,
    each alone and both together, so ``max(shifts, 1) · (4 if flip else 1)`` passes for stereo.
    """
    rng = rng if rng is not None else np.random.default_rng()
    delays = [int(d) for d in rng.integers(0, max_shift + 1, size=shifts)] if shifts > 0 else [0]
    swaps = (False, True) if flip and channels == 2 else (False,)
    inverts = (False, True) if flip else (False,)
    return [Pass(d, s, i) for d in delays for s in swaps for i in inverts]


class _OverlapAdd:
    """Windowed sums ``(sources, channels, ·)`` and window sums over a stretch of time that slides forward.

    ``add`` accumulates at absolute sample positions at or after ``start``; ``pop`` hands
    back the normalized first samples and moves ``start`` on. When an ``add`` would run
    past the buffer, what is still live moves to its front (the buffer grows only if the
    live span exceeds ``capacity``).
    """

    def __init__(self, sources: int, channels: int, capacity: int):
        self.start = 0
        self._head = 0  # buffer index of ``start``
        self._end = 0   # buffer index after the furthest sample added; zeros from there on
        self._sums = torch.zeros(sources, channels, capacity)
        self._weights = torch.zeros(capacity)

    def add(self, at: int, estimate: torch.Tensor, window: torch.Tensor) -> None:
        if self._head + at - self.start + estimate.shape[-1] > self._weights.shape[0]:
            self._make_room(at - self.start + estimate.shape[-1])
        lo = self._head + at - self.start
        hi = lo + estimate.shape[-1]
        self._sums[..., lo:hi].addcmul_(estimate, window)
        self._weights[lo:hi] += window
        self._end = max(self._end, hi)

    def pop(self, n: int) -> torch.Tensor:
        out = self._sums[..., self._head:self._head + n] / self._weights[self._head:self._head + n]
        self._head += n
        self.start += n
        return out

    def _make_room(self, span: int) -> None:
        live, end = self._end - self._head, self._end
        sums, weights = self._sums[..., self._head:end], self._weights[self._head:end]
        if span > self._weights.shape[0]:
            self._sums = torch.zeros(*sums.shape[:-1], max(span, 2 * self._weights.shape[0]))
            self._weights = torch.zeros(self._sums.shape[-1])
        elif self._head < live:  # the live part overlaps the place it moves to
            sums, weights = sums.clone(), weights.clone()
        self._sums[..., :live] = sums
        self._weights[:live] = weights
        self._sums[..., live:end] = 0
        self._weights[live:end] = 0
        self._head, self._end = 0, live


class _Timeline:
    """The input blocks still needed, addressed by absolute sample position; zeros outside ``[0, received)``."""

    def __init__(self):
        self._blocks: list[tuple[int, torch.Tensor]] = []
        self.received = 0

    def append(self, block: torch.Tensor) -> None:
        if block.shape[-1]:
            self._blocks.append((self.received, block))
            self.received += block.shape[-1]

    def read_into(self, out: torch.Tensor, lo: int) -> None:
        """Fill ``out`` ``(channels, n)`` with samples ``[lo, lo + n)``."""
        hi = lo + out.shape[-1]
        if lo < 0:
            out[:, : min(hi, 0) - lo] = 0
        for start, block in self._blocks:
            a, b = max(lo, start), min(hi, start + block.shape[-1])
            if a < b:
                out[:, a - lo:b - lo] = block[:, a - start:b - start]

    def release(self, before: int) -> None:
        """Forget the blocks that end at or before sample ``before``."""
        while self._blocks and self._blocks[0][0] + self._blocks[0][1].shape[-1] <= before:
            self._blocks.pop(0)


class _PassState:
    """Where one pass stands: its chunk grid over the delayed track and the next chunk to run."""

    def __init__(self, tta: Pass, length: int, segment_samples: int, overlap: float, batch_size: int, sources: int,
                 channels: int, hop: int = 1):
        self.tta = tta
        self.length = length + tta.delay  # the delayed track this pass separates
        self.chunk = chunk_length(segment_samples, self.length, hop)
        self.starts = chunk_starts(self.length, self.chunk, overlap, hop)
        step = chunk_hop(self.chunk, overlap, hop)
        self.fade = min(self.chunk - step, self.chunk // 2)
        self.next = 0
        # a batch of chunks spans at most this much beyond the oldest unfinished sample
        self.sums = _OverlapAdd(sources, channels, self.chunk + batch_size * step)
        self._windows: dict[tuple[bool, bool], torch.Tensor] = {}

    def needs(self, index: int) -> tuple[int, int]:
        """Mixture samples ``[lo, hi)`` chunk ``index`` reads (``lo < 0``: inside the delay)."""
        lo = self.starts[index] - self.tta.delay
        return lo, lo + self.chunk

    def window(self, index: int) -> torch.Tensor:
        key = (self.starts[index] > 0, self.starts[index] + self.chunk < self.length)
        if key not in self._windows:
            self._windows[key] = crossfade_window(self.chunk, self.fade, *key)
        return self._windows[key]

    def done_until(self, mixture_length: int) -> int:
        """Mixture samples before this position have all their chunks summed."""
        if self.next == len(self.starts):
            return mixture_length
        return max(0, self.starts[self.next] - self.tta.delay)


class StreamingSeparator:
    """Overlap-add separation of a mixture that arrives in blocks, at the model's sample rate.

    ``length`` is the mixture's total length in samples (the chunk grid depends on it);
    ``channels`` its channel count (default: the model's ``audio_channels``).
    :meth:`push` takes ``(channels, n)`` blocks and returns the stems that are finished,
    ``(sources, channels, m)`` with ``m`` possibly 0; after the last block :meth:`finish`
    returns the rest. Concatenated, the returns are the separated track ``(sources,
    channels, length)``, identical to :func:`separate_tensor` on the whole track (chunks on the
    STFT frame grid of the model, see the module's docstring). Chunks run ``batch_size`` at a
    time on ``device`` (default: the model's), drawn from every pass in the order their
    input arrives; the result stays on the CPU. Held at once: the input of the chunks not
    yet run and each pass's overlap-add sums back to the oldest unfinished sample — about
    ``chunk + batch_size · hop + delay`` samples.
    """

    def __init__(self, model: SourceSeparator, length: int, segment: float | None = None, overlap: float = 0.25,
                 batch_size: int = 4, device: str | torch.device | None = None, passes: Sequence[Pass] | None = None,
                 progress=None, channels: int | None = None):
        if length <= 0:
            raise ValueError("cannot separate an empty track")
        self.model = model
        self.length = int(length)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device) if device is not None else model_device(model)
        self.progress = progress
        self.channels = channels if channels is not None else model.audio_channels
        segment_samples = max(1, int(round(default_segment(model, segment) * model.sample_rate)))
        self.passes = [_PassState(p, self.length, segment_samples, overlap, self.batch_size, len(model.sources),
                                  self.channels, frame_hop(model))
                       for p in (passes or [Pass()])]
        self.total_chunks = sum(len(p.starts) for p in self.passes)
        self._input = _Timeline()
        self._emitted = 0

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Add ``(channels, n)`` mixture samples; returns the stems finished so far ``(sources, channels, m)``."""
        if block.shape[0] != self.channels:
            raise ValueError(f"block has {block.shape[0]} channels, expected {self.channels}")
        if self._input.received + block.shape[-1] > self.length:
            raise ValueError(f"more than the announced {self.length} samples")
        self._input.append(block)
        finished = [self._emit()]
        while self._run_batch():
            finished.append(self._emit())
        finished = [f for f in finished if f.shape[-1]] or finished[:1]
        return finished[0] if len(finished) == 1 else torch.cat(finished, dim=-1)

    def finish(self) -> torch.Tensor:
        """The remaining stems; every sample of the track must have been pushed."""
        if self._input.received != self.length:
            raise ValueError(f"got {self._input.received} of the announced {self.length} samples")
        return self._emit()

    @torch.no_grad()
    def _run_batch(self) -> bool:
        """Run the next batch of chunks if one is ready; False if none is."""
        batch = self._next_batch()
        if not batch:
            return False
        mix = torch.empty(len(batch), self.channels, batch[0][0].chunk)
        for row, (p, i) in zip(mix, batch):
            self._input.read_into(row, p.needs(i)[0])
            if p.tta.swap or p.tta.invert:
                row.copy_(p.tta.prepare(row))
        estimates = self.model(mix.to(self.device)).float().cpu()
        for (p, i), estimate in zip(batch, estimates):
            lo = p.needs(i)[0]
            estimate, window = p.tta.restore(estimate), p.window(i)
            if lo < 0:  # the delay of a shifted pass is dropped
                estimate, window, lo = estimate[..., -lo:], window[-lo:], 0
            p.sums.add(lo, estimate, window)
        if self.progress is not None:
            self.progress.advance(len(batch))
        self._input.release(min(p.needs(p.next)[0] if p.next < len(p.starts) else self.length
                                for p in self.passes))
        return True

    def _next_batch(self) -> list[tuple[_PassState, int]]:
        """Up to ``batch_size`` chunks whose input has arrived, earliest input first, all of one length.

        A batch short of ``batch_size`` is run only once the whole track is in (or when the
        next chunk has another length, which happens only on tracks shorter than a chunk).
        """
        nexts = [p.next for p in self.passes]
        batch: list[tuple[_PassState, int]] = []
        run_short = self._input.received == self.length
        while len(batch) < self.batch_size:
            waiting = [(p.needs(nexts[k])[1], k) for k, p in enumerate(self.passes) if nexts[k] < len(p.starts)]
            if not waiting:
                break
            hi, k = min(waiting)
            if hi > self._input.received:
                break
            if batch and self.passes[k].chunk != batch[0][0].chunk:
                run_short = True
                break
            batch.append((self.passes[k], nexts[k]))
            nexts[k] += 1
        if len(batch) < self.batch_size and not run_short:
            return []
        for p, index in zip(self.passes, nexts):
            p.next = index
        return batch

    def _emit(self) -> torch.Tensor:
        n = min(p.done_until(self.length) for p in self.passes) - self._emitted
        if n <= 0:
            return torch.zeros(len(self.model.sources), self.channels, 0)
        self._emitted += n
        out = self.passes[0].sums.pop(n)
        for p in self.passes[1:]:
            out += p.sums.pop(n)
        return out / len(self.passes) if len(self.passes) > 1 else out


def separate_tensor(model: SourceSeparator, mix: torch.Tensor, segment: float | None = None, overlap: float = 0.25,
                    batch_size: int = 4, device: str | torch.device | None = None, progress=None,
                    passes: Sequence[Pass] | None = None) -> torch.Tensor:
    """Separate ``mix`` ``(channels, time)`` at the model's sample rate into ``(sources, channels, time)``.

    ``segment`` in seconds (default: ``model.segment``, the training segment a checkpoint
    records, else the architecture's default); ``overlap`` is the fraction of a chunk shared
    with the next one; ``passes``: test-time augmentation (:func:`tta_passes`). The result
    stays on the CPU; only one batch of chunks lives on ``device`` at a time.
    """
    separator = StreamingSeparator(model, mix.shape[-1], segment, overlap, batch_size, device, passes, progress,
                                   channels=mix.shape[0])
    return torch.cat([separator.push(mix), separator.finish()], dim=-1)
