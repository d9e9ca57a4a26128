"""Writing outputs safely: the one place for temporary names, output locks, atomic renames,
the refusal to replace files that are not ours, and one-line filesystem errors.

Every tool writes an output the same way:

1. ``with OutputLock(path, "prep"):`` — one writer per output. A second process writing the
   same output fails at once with :class:`~mss_tools.errors.BadInput` (exit code 2) naming
   the process that holds it. The lock is ``flock`` on ``.<name>.lock`` beside the output,
   so a killed writer never leaves a stale lock.
2. :func:`check_replaceable` — an existing file is replaced only if it is this tool's own
   output (or with ``--force``).
3. :func:`sweep_temps` — while holding the lock, remove what killed runs left behind.
4. ``with atomic_path(path) as tmp:`` — write ``tmp``; on success it is flushed to disk and
   renamed over ``path``, on failure it is removed. Temporary names follow one scheme,
   ``.<name>.<pid>.tmp``, so leftovers are recognisable.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from mss_tools.errors import BadInput

_TEMP_NAME = re.compile(r"^\..+\.\d+\.tmp$")
LOCK_SUFFIX = ".lock"


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name ``path`` is written under: ``.<name>.<pid>.tmp`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


def sweep_temps(folder: str | os.PathLike) -> int:
    """Remove temporary files (:func:`temp_path` names) anywhere under ``folder``; returns how many.

    Call only on a folder the caller owns while holding its :class:`OutputLock`: then no live
    writer owns them, and they are what a killed run left behind.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.rglob(".*.tmp"):
        if is_temp_name(path.name) and not path.is_dir():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_stale_temps(path: str | os.PathLike) -> int:
    """Remove the temporary files of the one output ``path`` (``.<name>.<pid>.tmp`` beside it) that
    killed runs left; call while holding its :class:`OutputLock`."""
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.\d+\.tmp$")
    removed = 0
    for candidate in path.parent.glob(".*.tmp"):
        if pattern.match(candidate.name) and not candidate.is_dir():
            candidate.unlink(missing_ok=True)
            removed += 1
    return removed


def make_parent(path: str | os.PathLike) -> None:
    """Create the folder ``path`` goes in; a file in the way is ``OSError(ENOTDIR)`` naming that file."""
    parent = Path(path).parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OSError(errno.ENOTDIR, "a file, not a folder: cannot hold an output", str(ancestor))
            break
    parent.mkdir(parents=True, exist_ok=True)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield the temporary path to write ``path`` under; on success flush it and rename it into
    place, on any failure remove it. ``path`` is never seen half-written."""
    path = Path(path)
    make_parent(path)
    tmp = temp_path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def dumps_json(data: Any, indent: int | None = 1) -> str:
    """Strict JSON (no bare NaN/Infinity: a non-finite number is an error, callers write null)."""
    return json.dumps(data, indent=indent, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    write_text(path, dumps_json(data, indent))


class OutputLock:
    """An exclusive, process-wide lock on an output (file or folder) for the length of a run.

    ``.<name>.lock`` beside the output holds the owner's pid and tool; ``flock`` is released by
    the kernel when the owner dies, so a killed run never blocks the next one. A second writer
    gets :class:`BadInput` at once.
    """

    def __init__(self, path: str | os.PathLike, tool: str):
        self.path = Path(path)
        self.tool = tool
        self.lock_path = self.path.with_name(f".{self.path.name}{LOCK_SUFFIX}")
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        while True:
            try:
                make_parent(self.lock_path)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # name the output, not our hidden lock file
                raise OSError(exc.errno, exc.strerror, exc.filename if exc.errno == errno.ENOTDIR
                              else str(self.path)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise BadInput(f"{self.path}: another process is writing it ({self._owner()}); wait for it to "
                               f"finish or choose another output") from None
            # the previous owner may have removed the lock file between our open and flock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} mss {self.tool}\n".encode())
        self._fd = fd
        return self

    def _owner(self) -> str:
        try:
            text = self.lock_path.read_text().strip()
        except OSError:
            text = ""
        pid, _, tool = text.partition(" ")
        return f"{tool or 'mss'}, pid {pid}" if pid else "mss"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.lock_path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_replaceable(path: str | os.PathLike, is_own: Callable[[Path], bool], what: str, force: bool) -> None:
    """Refuse to replace an existing ``path`` unless ``is_own(path)`` (this tool's output for the
    same inputs) or ``force``. ``what`` names the expected kind of file, for the message."""
    path = Path(path)
    if force or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir():
        raise BadInput(f"{path}: is a folder; name a file to write {what} to")
    if not is_own(path):
        raise BadInput(f"{path}: exists and is not {what}; refusing to replace it (use --force, or another output)")


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``folder`` before writing ``needed`` bytes into it if they cannot fit."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return
    free = stats.f_bavail * stats.f_frsize
    if needed > free:
        raise OSError(errno.ENOSPC, f"No space left on device for {what} (needs {_size(needed)}, {_size(free)} free)",
                      str(folder))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


_H5_FIELDS = re.compile(r"(?:name|filename) = '([^']*)'.*?errno = (\d+)", re.S)


def describe_os_error(exc: OSError) -> str:
    """One line for a filesystem error: ``<path>: <reason>`` (also for h5py's wrapped errors)."""
    path = exc.filename
    reason = exc.strerror
    if reason is None:
        text = str(exc)
        match = _H5_FIELDS.search(text)
        if match:
            path = path or match.group(1)
            reason = os.strerror(int(match.group(2)))
        else:
            reason = text.splitlines()[0] if text else type(exc).__name__
    if exc.filename2:
        path = f"{path} -> {exc.filename2}"
    return f"{path}: {reason}" if path else str(reason)
