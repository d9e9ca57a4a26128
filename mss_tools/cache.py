"""The only place that touches h5py: stem caches (and, later, mix plans).

Stem cache layout (``format="mss-stems"``)::

    /                      attrs: format, format_version, sample_rate, sources, channels,
                                  created_by (JSON), fingerprint, layout, skipped (JSON),
                                  chunk_frames, rms_hop
    /<split>/<track>/      attrs: name, origin, length, source_sample_rate, missing (JSON)
        <stem>             float32 (channels, time), chunked (channels, chunk_frames);
                           attrs: rms_db (float32 per rms_hop seconds), silent_fraction
        mixture            float32 (channels, time): the mixture as stored in the source

A stem listed in ``missing`` has no dataset and reads as silence.

Caches are built from per-track *part files* (one small HDF5 file per track, each written
under a temporary name and renamed), then assembled in a fixed order into the final file,
itself written under a temporary name and renamed. Parts let ``-j`` workers write in
parallel and let an interrupted prep resume with the tracks it had finished. Every stem
and mixture dataset carries the CRC-32 of its samples (attr ``crc32``); a part is reused
and copied into the cache only if every checksum verifies, and the cache's ``fingerprint``
is written last, after every part was verified.

Every HDF5 file is created through :func:`create_h5`: HDF5 cannot survive a failed write
(a full disk crashes the process when the library shuts down), so writes go through a file
object that records the first filesystem error instead of passing it to HDF5, and the error
is raised as a plain ``OSError`` once HDF5 has closed the file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import h5py
import numpy as np

from mss_tools import formats
from mss_tools.errors import BadInput
from mss_tools.formats import PLAN_FORMAT, PLAN_FORMAT_VERSION
from mss_tools.outputs import atomic_path, check_free_space

SPLITS = ("train", "valid", "test")
CHUNK_FRAMES = 1 << 15
RMS_HOP = 0.5
SILENCE_DB = -60.0
MIXTURE = "mixture"


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_stem_cache(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file (by its signature; :class:`StemCache` checks the rest)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(8) == HDF5_SIGNATURE


def read_root_attrs(path: str | os.PathLike) -> dict[str, Any] | None:
    """The decoded root attributes of an HDF5 file, or None if it is not one (for ownership checks)."""
    if not is_stem_cache(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            return {k: _decode(v) for k, v in f.attrs.items()}
    except OSError:
        return None


def frame_rms_db(audio: np.ndarray, hop: int) -> np.ndarray:
    """RMS in dBFS of consecutive ``hop``-sample frames of ``(channels, time)`` audio (last partial frame kept)."""
    length = audio.shape[-1]
    n = max(1, -(-length // hop))
    padded = np.zeros((audio.shape[0], n * hop), dtype=np.float64)
    padded[:, :length] = audio
    power = (padded.reshape(audio.shape[0], n, hop) ** 2).mean(axis=(0, 2))
    counts = np.full(n, hop, dtype=np.float64)
    counts[-1] = length - (n - 1) * hop
    power = power * hop / counts
    return (10 * np.log10(power + 1e-12)).astype(np.float32)


class _ErrorRecordingFile(io.RawIOBase):
    """A file for h5py whose writes never fail: the first ``OSError`` is kept in ``error`` and
    later writes are skipped, so that HDF5 closes cleanly and the caller raises the error."""

    def __init__(self, raw: io.FileIO):
        self.raw = raw
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer) -> int:
        return self.raw.readinto(buffer)

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if self.error is None:
            try:
                written = self.raw.write(data)
                if written == size:
                    return written
                self.raw.write(memoryview(data).cast("B")[written:])  # a short write: ENOSPC follows
                return size
            except OSError as exc:
                self.error = exc
        self.raw.seek(size, os.SEEK_CUR)
        return size

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self.raw.truncate(size)
            except OSError as exc:
                self.error = exc
        return self.raw.tell() if size is None else size

    def flush(self) -> None:
        if self.error is None:
            try:
                self.raw.flush()
            except OSError as exc:
                self.error = exc


@contextmanager
def create_h5(path: str | os.PathLike, expected_bytes: int = 0, **kwargs) -> Iterator[h5py.File]:
    """Create the HDF5 file ``path`` atomically: written under a temporary name, renamed into place
    when the block ends without error. ``expected_bytes`` is checked against the free space first.
    A filesystem error is raised as ``OSError`` naming ``path``, never a crash."""
    path = Path(path)
    check_free_space(path.parent, expected_bytes, path.name)
    with atomic_path(path) as tmp:
        with open(tmp, "w+b", buffering=0) as raw:
            recorder = _ErrorRecordingFile(raw)
            with h5py.File(recorder, "w", **kwargs) as handle:
                yield handle
            if recorder.error is not None:
                error = recorder.error
                raise OSError(error.errno, error.strerror or str(error), str(path)) from None


def checksum(audio: np.ndarray) -> int:
    """CRC-32 of the samples of a float32 array (what the ``crc32`` attribute holds)."""
    return zlib.crc32(np.ascontiguousarray(audio, dtype=np.float32).data)


def write_track_part(path: str | os.PathLike, split: str, track: str, stems: dict[str, np.ndarray],
                     mixture: np.ndarray, sample_rate: int, attrs: dict[str, Any]) -> None:
    """Write one track as a part file atomically. ``stems``: name -> ``(channels, time)`` float32."""
    hop = max(1, int(round(RMS_HOP * sample_rate)))
    arrays = [(name, np.ascontiguousarray(audio, dtype=np.float32))
              for name, audio in list(stems.items()) + [(MIXTURE, mixture)]]
    with create_h5(path, sum(a.nbytes for _, a in arrays) + (1 << 20)) as f:
        group = f.create_group(f"{split}/{track}")
        for name, audio in arrays:
            chunk = (audio.shape[0], min(CHUNK_FRAMES, audio.shape[1]))
            dset = group.create_dataset(name, data=audio, chunks=chunk)
            dset.attrs["crc32"] = checksum(audio)
            if name != MIXTURE:
                rms = frame_rms_db(audio, hop)
                dset.attrs["rms_db"] = rms
                dset.attrs["silent_fraction"] = float((rms < SILENCE_DB).mean())
        for key, value in attrs.items():
            group.attrs[key] = _attr(value)


def verify_part(path: str | os.PathLike) -> tuple[str, str]:
    """(split, track) held by a part file whose every dataset matches its checksum; raises
    ``BadInput`` if the part is unreadable, incomplete or corrupt."""
    try:
        with h5py.File(path, "r") as f:
            split = next(iter(f.keys()))
            track = next(iter(f[split].keys()))
            group = f[f"{split}/{track}"]
            if MIXTURE not in group:
                raise BadInput(f"{path}: part file lacks the mixture")
            for name, dataset in group.items():
                if "crc32" not in dataset.attrs or checksum(dataset[()]) != int(dataset.attrs["crc32"]):
                    raise BadInput(f"{path}: {split}/{track}/{name} does not match its checksum")
            return split, track
    except (OSError, StopIteration, KeyError) as exc:
        raise BadInput(f"{path}: not a complete part file ({exc})") from None


def assemble_cache(output: str | os.PathLike, parts: Sequence[str | os.PathLike], root_attrs: dict[str, Any]) -> None:
    """Copy ``parts`` (in the given order) into one stem cache at ``output``, atomically. Every
    dataset is checked against its checksum on the way; ``fingerprint`` is written last."""
    output = Path(output)
    expected = sum(Path(p).stat().st_size for p in parts) + (1 << 20)
    attrs = dict(root_attrs)
    fingerprint = attrs.pop("fingerprint", None)
    with create_h5(output, expected, track_order=True) as dst:
        for split in SPLITS:
            dst.create_group(split, track_order=True)
        for key, value in attrs.items():
            dst.attrs[key] = _attr(value)
        for part in parts:
            with h5py.File(part, "r") as src:
                for split in src:
                    for track in src[split]:
                        _copy_verified(src[f"{split}/{track}"], dst[split].create_group(track), part)
        if fingerprint is not None:
            dst.attrs["fingerprint"] = _attr(fingerprint)


def _copy_verified(src: h5py.Group, dst: h5py.Group, part: str | os.PathLike) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name, dataset in src.items():
        data = dataset[()]
        if "crc32" in dataset.attrs and checksum(data) != int(dataset.attrs["crc32"]):
            raise BadInput(f"{part}: {src.name}/{name} does not match its checksum; remove the part and rerun")
        copy = dst.create_dataset(name, data=data, chunks=dataset.chunks)
        for key, value in dataset.attrs.items():
            copy.attrs[key] = value


def _attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)) and not _is_str_list(value):
        return json.dumps(value)
    if _is_str_list(value):
        return np.array(list(value), dtype=h5py.string_dtype())
    return value


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_attr(value: Any, default: Any) -> Any:
    value = _decode(value)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return default if value is None else value


class StemCache:
    """Read access to a stem cache, opened lazily once per process (safe in DataLoader workers).

    ``read(split, track, start, stop)`` returns ``(sources, channels, time)`` float32.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        try:
            with h5py.File(self.path, "r") as f:
                attrs = {k: _decode(v) for k, v in f.attrs.items()}
                index = {split: list(f[split].keys()) for split in SPLITS if split in f}
        except FileNotFoundError:
            raise BadInput(f"{self.path}: no such stem cache") from None
        except OSError as exc:
            raise BadInput(f"{self.path}: not a readable HDF5 stem cache ({exc})") from None
        except AttributeError:
            raise BadInput(f"{self.path}: a split of the stem cache is not a group of tracks") from None
        for key in ("created_by", "skipped"):
            if key in attrs:
                attrs[key] = _json_attr(attrs[key], None)
        formats.check_stem_cache_attrs(attrs, self.path)
        self.attrs = attrs
        self.sample_rate = int(attrs["sample_rate"])
        self.sources: list[str] = list(attrs["sources"])
        self.channels = int(attrs.get("channels", 2))
        self.fingerprint = str(attrs.get("fingerprint", ""))
        self.skipped = attrs.get("skipped") or []
        self._index = index

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        return state

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def splits(self) -> list[str]:
        return [s for s in SPLITS if self._index.get(s)]

    def tracks(self, split: str) -> list[str]:
        if split not in self._index:
            raise BadInput(f"{self.path}: no split {split!r}; the cache has {', '.join(self.splits())}")
        return list(self._index[split])

    def _group(self, split: str, track: str) -> h5py.Group:
        try:
            return self.file[f"{split}/{track}"]
        except KeyError:
            raise BadInput(f"{self.path}: no track {track!r} in split {split!r}") from None

    def track_attrs(self, split: str, track: str) -> dict[str, Any]:
        attrs = {k: _decode(v) for k, v in self._group(split, track).attrs.items()}
        attrs["missing"] = _json_attr(attrs.get("missing"), [])
        return attrs

    def length(self, split: str, track: str) -> int:
        return int(self._group(split, track)[MIXTURE].shape[-1])

    def read(self, split: str, track: str, start: int = 0, stop: int | None = None,
             sources: Iterable[str] | None = None) -> np.ndarray:
        """Stems ``(len(sources), channels, stop - start)``; a stem the track lacks, and samples past the
        end of the track, read as zeros."""
        group = self._group(split, track)
        length = group[MIXTURE].shape[-1]
        stop = length if stop is None else stop
        end = min(stop, length)
        names = list(self.sources if sources is None else sources)
        out = np.zeros((len(names), self.channels, stop - start), dtype=np.float32)
        for i, name in enumerate(names):
            if name in group:
                if end > start:
                    group[name].read_direct(out, np.s_[:, start:end], np.s_[i, :, : end - start])
            elif name not in self.sources:
                raise BadInput(f"{self.path}: unknown source {name!r}; the cache has {', '.join(self.sources)}")
        return out

    def read_into(self, out: np.ndarray, split: str, track: str, source: str, start: int) -> int:
        """Read ``source`` from ``start`` into ``out`` ``(channels, n)`` without a temporary copy; returns the
        number of frames read (fewer at the end of the track; a missing stem reads nothing)."""
        group = self._group(split, track)
        if source not in group:
            return 0
        dataset = group[source]
        count = max(0, min(out.shape[-1], dataset.shape[-1] - start))
        if count:
            dataset.read_direct(out, np.s_[:, start:start + count], np.s_[:, :count])
        return count

    def read_mixture(self, split: str, track: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The stored mixture ``(channels, stop - start)``."""
        return self._group(split, track)[MIXTURE][:, start:stop]

    def rms_db(self, split: str, track: str, source: str) -> np.ndarray:
        """Frame RMS (dBFS, one value per ``rms_hop`` seconds) of a stem; -120 dB for a missing stem."""
        group = self._group(split, track)
        if source not in group:
            return np.full(-(-self.length(split, track) // int(self.attrs["rms_hop"] * self.sample_rate)),
                           -120.0, dtype=np.float32)
        return np.asarray(group[source].attrs["rms_db"])


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Mix plans (``format="mss-plan"``): per example and per source slot, which track, offset,
# gain and augmentation flags, and whether the slot is active.

PLAN_FIELDS = {  # name -> dtype; every field is (examples, slots)
    "track": np.int32, "offset": np.int64, "gain": np.float32, "active": np.bool_, "swap": np.bool_,
    "flip": np.bool_, "shift": np.int64, "pitch": np.float32, "stretch": np.float32,
}


def write_plan(path: str | os.PathLike, fields: dict[str, np.ndarray], tracks: Sequence[str],
               attrs: dict[str, Any]) -> None:
    """Write a mix plan atomically; ``fields`` holds every name of ``PLAN_FIELDS``."""
    arrays = {name: np.asarray(fields[name], dtype=dtype) for name, dtype in PLAN_FIELDS.items()}
    with create_h5(path, sum(a.nbytes for a in arrays.values()) + (1 << 20)) as f:
        f.attrs["format"] = PLAN_FORMAT
        f.attrs["format_version"] = PLAN_FORMAT_VERSION
        for key, value in attrs.items():
            f.attrs[key] = _attr(value)
        f.create_dataset("tracks", data=np.array(list(tracks), dtype=h5py.string_dtype()))
        for name, array in arrays.items():
            f.create_dataset(name, data=array)


def read_plan(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    """(fields, tracks, attrs) of a mix plan, checked against :class:`~mss_tools.formats.MixPlanAttrs`
    and the field shapes; JSON attrs are decoded."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
            if attrs.get("format") != PLAN_FORMAT:
                raise BadInput(f"{path}: not an mss mix plan (format={attrs.get('format')!r})")
            missing = [name for name in ("tracks", *PLAN_FIELDS) if name not in f]
            if missing:
                raise BadInput(f"{path}: mix plan lacks its {missing[0]!r} field")
            fields = {name: f[name][()] for name in PLAN_FIELDS}
            tracks = [t.decode() if isinstance(t, bytes) else str(t) for t in f["tracks"][()]]
    except FileNotFoundError:
        raise BadInput(f"{path}: no such mix plan") from None
    except OSError as exc:
        raise BadInput(f"{path}: not a readable mix plan ({exc})") from None
    for key in ("augment", "created_by"):
        if key in attrs:
            attrs[key] = _json_attr(attrs[key], {})
    formats.check_plan_attrs(attrs, path)
    shape = fields["track"].shape
    if len(shape) != 2 or shape[1] != len(attrs["sources"]) or any(v.shape != shape for v in fields.values()):
        raise BadInput(f"{path}: mix plan fields are not all (examples, {len(attrs['sources'])} sources)")
    if shape[0] and (fields["track"].min() < 0 or fields["track"].max() >= len(tracks)):
        raise BadInput(f"{path}: mix plan names track numbers outside its {len(tracks)} tracks")
    return fields, tracks, attrs
