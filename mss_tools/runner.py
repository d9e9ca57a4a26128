"""One per-track runner for ``prep``, ``separate`` and ``score``, with one failure policy.

- A track whose data is bad (an :class:`~mss_tools.errors.MssError` raised by the work on that
  track: unreadable audio, a missing reference...) is a *track failure*, yielded as a value.
  The tool decides what it means: ``prep`` stops at the first (``--skip-bad`` records it and
  goes on), ``separate`` and ``score`` go on and fail at the end naming the first.
- Anything else stops the whole run at once: a filesystem fault (no space, read-only), out
  of memory (CUDA's is a ``RuntimeError``), a bug. Going on would only fail again, or hide it.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Sequence, TypeVar

from mss_tools.errors import MssError

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class TrackFailure:
    """The one-line reason a track failed (it names the file where the error did)."""

    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class _Guarded(Generic[Item, Result]):
    """``work`` with track failures turned into values (picklable for worker processes)."""

    work: Callable[[Item], Result]

    def __call__(self, item: Item) -> Result | TrackFailure:
        try:
            return self.work(item)
        except MssError as exc:
            return TrackFailure(str(exc))


def run_tracks(work: Callable[[Item], Result], items: Sequence[Item], jobs: int = 1
               ) -> Iterator[tuple[Item, Result | TrackFailure]]:
    """Yield ``(item, work(item) or TrackFailure)`` for every item: in order with ``jobs=1``,
    else as they finish in ``jobs`` spawned worker processes (``work`` must then be picklable).
    Any other exception propagates, and pending work is cancelled."""
    guarded = _Guarded(work)
    if jobs <= 1 or len(items) <= 1:
        for item in items:
            yield item, guarded(item)
        return
    context = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=context)
    try:
        futures = {pool.submit(guarded, item): item for item in items}
        for future in cf.as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def failure_summary(failures: Sequence[TrackFailure], total: int) -> str:
    """``"2 of 9 tracks failed; first: <message>"``."""
    return f"{len(failures)} of {total} tracks failed; first: {failures[0]}"
