"""Writing and reading dataset stores.

Durability comes from three rules, so that no crash can break what was already finished:
1. every file is written whole or not at all (zarr's LocalStore writes a temporary file and
   renames it), so a kill leaves each metadata and chunk file either old or new;
2. an episode lives in its own group and is never touched again once finished, and it is
   marked finished only after all its files are fsynced (a power cut cannot undo it);
3. a stream's timestamps are written after its data and are NaN where nothing was flushed,
   so an interrupted episode is readable up to its last flushed chunk, where any writer
   opening the store cuts it back to (``repair_store``).
One writer at a time holds ``writer.lock`` (an flock, released by the kernel if it dies).
Every chunk carries a CRC32C (see ``layout.compressors``), so damage on disk fails a read
instead of returning wrong numbers; ``repair`` checks and fixes whole stores.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

from robot_learning.data.convert import BadSample, has_header, stream_attrs, to_sample
from robot_learning.data.layout import (
    DamagedError,
    DatasetError,
    Fault,
    compressors,
    episode_attrs,
    episode_dirs,
    episode_recipe,
    next_episode_index,
    read_metadata,
    structure_faults,
)
from robot_learning.data.schema import SCHEMA, SCHEMA_VERSION, Recipe, StreamSpec
from robot_learning.data.steps import write_steps

warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component", module="zarr")
warnings.filterwarnings("ignore", message=".*StringDType.*", module="zarr")
warnings.filterwarnings("ignore", message=".*not part of the Zarr format 3 specification.*")

LOWDIM_CHUNK = 1024
# every chunk is written as it is: zarr's default compares each chunk with the fill value
# first, a full scan that cost the recording process an eighth of its CPU
WRITE_CONFIG = {"write_empty_chunks": True}
IMAGE_CHUNK = 8     # frames per chunk: a sample decompresses 8 frames (~2 ms), writing costs 8x fewer files
IMAGE_GROW = 64
HOLD_BYTES = 64 << 20        # a stream's values kept in memory for the step table, at most
HOLD_SAMPLE_BYTES = 16 << 10  # and only for samples this small (not camera frames)


def _storage_error(e: OSError, path: Path, what: str) -> DatasetError:
    if e.errno == errno.ENOSPC:
        hint = "the disk is full: free space or record to another disk"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "no permission to write there: choose a writable directory or fix its permissions"
    else:
        hint = e.strerror or str(e)
    return DatasetError(f"{what} in {path}: {hint}. Episodes finished before this are intact.")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _libc_syncfs():
    """libc's syncfs(2), or None where there is none (not Linux, or an old libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


def _syncfs(path: Path) -> bool:
    """syncfs(2) on the filesystem holding ``path``; False where the call does not exist."""
    syncfs = _libc_syncfs()
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                return False
            raise OSError(err, os.strerror(err), str(path))  # a failed write-back (Linux >= 5.8 reports it)
    finally:
        os.close(fd)
    return True


def fsync_tree(path: Path) -> None:
    """Make every file and directory under ``path`` (and ``path`` itself) durable.

    On Linux one syncfs(2) does it for the whole filesystem: an episode has hundreds of
    files, and one fsync each took 150 ms here against 7 ms for the one call, time the
    operator waits between two recorded episodes. Elsewhere each entry is fsynced.
    """
    if _syncfs(path):
        return
    for root, _dirs, files in os.walk(path):
        for f in files:
            fsync_file(Path(root) / f)
        fsync_file(Path(root))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def damaged_root_message(path: Path, e: DamagedError) -> str:
    """What to say, and what to do, when the root's or the episodes group's metadata is broken."""
    if e.access:
        return f"cannot read the dataset {path}: {e}: fix its permissions (chmod/chown) and run again"
    if e.path == path:
        return f"no dataset at {path}: {e.what}"
    if e.path.name != "zarr.json":
        return f"cannot read the dataset {path}: {e}: restore the store from a backup"
    what = "the dataset's root metadata" if e.path.parent == path else "the episodes group's metadata"
    return (f"{e.path} ({what}) is {e.what}. `robot-learning dataset repair {path}` rewrites it "
            "(the dataset's name is lost), or restore it from a backup")


def _root_metadata(path: Path, meta: Path) -> dict | None:
    try:
        return read_metadata(meta, top=path.parent)
    except FileNotFoundError:
        return None
    except DamagedError as e:
        raise DatasetError(damaged_root_message(path, e)) from e


def open_root(path: Path, create: bool, name: str = "") -> zarr.Group:
    """The store's root group, checking that it is one of ours and of a version we read.

    Its metadata is read here first, so that a damaged or unreadable root is reported by
    name with what to do, instead of as an error from deep inside zarr's JSON parsing."""
    meta = _root_metadata(path, path / "zarr.json")
    if meta is not None:
        _root_metadata(path, path / "episodes" / "zarr.json")  # absent when killed right after the root
        attrs = meta.get("attributes", {})
        schema, version = attrs.get("schema"), attrs.get("schema_version")
        if schema != SCHEMA:
            raise DatasetError(f"{path} is a zarr store but not a robot-learning dataset (schema '{schema}')")
        if version != SCHEMA_VERSION:
            raise DatasetError(f"{path} has dataset schema version {version}; this robot-learning reads "
                               f"version {SCHEMA_VERSION}: upgrade robot-learning or convert the dataset")
        root = zarr.open_group(str(path), mode="r+" if create else "r")
        if create and "episodes" not in root:  # killed right after creating the root
            root.require_group("episodes")
        return root
    if not create:
        raise DatasetError(f"no dataset at {path} (expected {path / 'zarr.json'})")
    # one atomic write makes the root a dataset: a kill can never leave a root without its schema
    root = zarr.create_group(str(path), attributes={"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                                                    "created": now_iso(), "name": name or path.stem})
    root.require_group("episodes")
    return root


@contextlib.contextmanager
def writer_lock(path: Path):
    """Exclusive right to write ``path``; a second writer gets a clear error, not a corrupt store."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise DatasetError(f"{path} is being written by another process ({other}); "
                               "stop that recorder first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)


class StreamWriter:
    """Buffers one stream's samples and appends them to its arrays, data before timestamps."""

    def __init__(self, group: zarr.Group, spec: StreamSpec):
        self.group, self.spec = group, spec
        self.arrays: dict[str, zarr.Array] = {}
        self.shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.buf: list[tuple[float, float, dict[str, np.ndarray]]] = []
        self.n = 0
        self.capacity = 0
        self.last_t = -np.inf
        self.rejected: Counter[str] = Counter()
        self.attrs: dict = {}
        # what was written, kept for the step table (stamps always; values of small samples, such
        # as states and tactile grids but not camera frames, up to HOLD_BYTES per stream)
        self.held_t: list[np.ndarray] = []
        self.held: dict[str, list[np.ndarray]] | None = {}
        self.held_bytes = 0

    def add(self, t: float, t_recv: float, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> None:
        if not np.isfinite(t):
            raise BadSample(f"stamp {t} is not finite", "bad_stamp")
        if t <= self.last_t:
            if not has_header(self.spec):  # receive-time stamps: arrival order is the order
                t = self.last_t + 1e-6
            else:
                raise BadSample(f"stamp {t:.6f} is not after the previous one ({self.last_t:.6f}): "
                                "out of order or duplicate", "stamp_order")
        if not self.shapes:
            self.shapes = {k: (v.shape, v.dtype) for k, v in arrays.items()}
            self.attrs = attrs or {}
        else:
            for k, v in arrays.items():
                shape, _ = self.shapes[k]
                if v.shape != shape:
                    if self.spec.kind == "image":
                        raise BadSample(f"size {v.shape[1]}x{v.shape[0]}, the stream started at "
                                        f"{shape[1]}x{shape[0]}", "bad_size")
                    raise BadSample(f"'{k}' has shape {v.shape}, the stream started with {shape}", "bad_shape")
        self.last_t = t
        self.buf.append((t, t_recv, arrays))

    def _create(self) -> None:
        image = self.spec.kind == "image"
        self.group.attrs.update({"topic": self.spec.topic, "type": self.spec.type, **self.attrs})
        for k, (shape, dtype) in self.shapes.items():
            chunks = (IMAGE_CHUNK, *shape) if image else (LOWDIM_CHUNK, *shape)
            self.arrays[k] = self.group.create_array(
                k, shape=(0, *shape), dtype=str if dtype.kind == "U" else dtype, chunks=chunks,
                compressors=compressors(dtype, image), config=WRITE_CONFIG)
        for k in ("t_recv", "t"):  # NaN past the flushed rows: the crash-recovery marker
            self.arrays[k] = self.group.create_array(k, shape=(0,), dtype="float64", chunks=(LOWDIM_CHUNK,),
                                                     fill_value=np.nan, compressors=compressors(np.dtype("f8"), False),
                                                     config=WRITE_CONFIG)

    def flush(self, final: bool = False) -> None:
        """Append what is buffered. Image streams write whole chunks only (the rest waits for
        the next flush or the end of the episode), so no image chunk is ever rewritten."""
        if not self.buf:
            return
        k = len(self.buf)
        if self.spec.kind == "image" and not final:
            k -= (self.n + k) % IMAGE_CHUNK
            if k <= 0:
                return
        if not self.arrays:
            self._create()
        buf, self.buf = self.buf[:k], self.buf[k:]
        if self.n + k > self.capacity:
            grow = IMAGE_GROW if self.spec.kind == "image" else LOWDIM_CHUNK
            self.capacity = max(self.n + k, self.capacity + grow)
            for arr in self.arrays.values():
                arr.resize((self.capacity, *arr.shape[1:]))
        sl = slice(self.n, self.n + k)
        values = {name: np.stack([b[2][name] for b in buf]) for name in self.shapes}
        for name, v in values.items():
            self.arrays[name][sl] = v
        t = np.array([b[0] for b in buf])
        self.arrays["t_recv"][sl] = np.array([b[1] for b in buf])
        self.arrays["t"][sl] = t
        self.n += k
        self._hold(t, values)

    def _hold(self, t: np.ndarray, values: dict[str, np.ndarray]) -> None:
        self.held_t.append(t)
        if self.held is None:
            return
        size = sum(v.nbytes for v in values.values())
        self.held_bytes += size
        if self.held_bytes > HOLD_BYTES or size > HOLD_SAMPLE_BYTES * len(t):  # the step table reads it back
            self.held = None
            return
        for name, v in values.items():
            self.held.setdefault(name, []).append(v)

    def held_arrays(self) -> dict[str, np.ndarray]:
        """The stamps, and the values still held, of everything written (see steps.StreamTables)."""
        out = {"t": np.concatenate(self.held_t) if self.held_t else np.zeros(0)}
        out.update({k: np.concatenate(v) for k, v in (self.held or {}).items()})
        return out

    def trim(self) -> None:
        for arr in self.arrays.values():
            if arr.shape[0] != self.n:
                arr.resize((self.n, *arr.shape[1:]))


def _flushed_rows(stream: zarr.Group) -> int:
    if "t" not in stream:
        return 0
    t = stream["t"][:]
    bad = np.flatnonzero(~np.isfinite(t))
    n = int(bad[0]) if bad.size else len(t)
    return min([n] + [a.shape[0] for _, a in stream.arrays()])


def recover_episode(group: zarr.Group, recipe: Recipe) -> str:
    """Cut an interrupted episode back to what was flushed. Returns 'recovered' or 'dropped'."""
    path = Path(group.store.root) / group.path
    for p in path.rglob("*.partial"):
        p.unlink(missing_ok=True)
    if "streams" in group:
        for _, s in group["streams"].groups():
            n = _flushed_rows(s)
            for _, a in s.arrays():
                if a.shape[0] != n:
                    a.resize((n, *a.shape[1:]))
    else:
        group.require_group("streams")
    meta = write_steps(group, recipe, success=None)
    if meta["n_steps"] < recipe.min_steps:
        shutil.rmtree(path)
        return "dropped"
    fsync_tree(path)
    group.attrs.update({**meta, "status": "recovered", "finished": now_iso(),
                        "note": "recording was interrupted; recovered up to the last flushed chunk"})
    fsync_file(path / "zarr.json")
    return "recovered"


def repair_store(path: Path, root: zarr.Group, recipe: Recipe | None = None,
                 drop_damaged: bool = False) -> dict[int, str]:
    """Recover or drop every interrupted episode; remove debris a crash left. Needs the writer lock.

    Finished episodes are never touched. An episode whose metadata or data cannot be read
    was not cut off by a crash (every file is replaced whole), it was damaged: a writer
    opening the store leaves it, with a warning, to ``dataset repair``, which passes
    ``drop_damaged`` and then drops an interrupted one it cannot read."""
    for p in path.glob("*.partial"):
        p.unlink(missing_ok=True)
    actions: dict[int, str] = {}
    if not (path / "episodes").exists():
        root.require_group("episodes")
        return actions
    for index, d in episode_dirs(path):
        if not d.is_dir():
            continue
        try:
            attrs = episode_attrs(d)
        except DamagedError:
            continue
        if attrs is None or "status" not in attrs:
            # killed while the episode was being created, or between creating its group and
            # writing its attributes (one write that also stores the recipe): nothing was recorded
            shutil.rmtree(d)
            actions[index] = "dropped"
            continue
        if attrs["status"] != "recording":
            continue
        rec = episode_recipe(attrs) or recipe
        if rec is None:
            raise DatasetError(f"episode {d.name} has no recipe stored and none was given")
        try:
            actions[index] = recover_episode(root["episodes"][d.name], rec)
        except OSError:
            raise  # the disk, not the episode (full, read-only): the caller says so
        except Exception as e:  # a chunk or metadata that does not decode (zarr raises many kinds)
            if not drop_damaged:
                warnings.warn(f"{d}: interrupted and damaged ({type(e).__name__}: {e}); "
                              f"`robot-learning dataset repair {path}` drops it", stacklevel=2)
                continue
            shutil.rmtree(d)
            actions[index] = f"dropped: interrupted, and its data cannot be read ({type(e).__name__}: {e})"
    return actions


class EpisodeWriter:
    """One episode being recorded. ``finish`` makes it permanent; ``discard`` removes it."""

    def __init__(self, dataset: DatasetWriter, index: int, group: zarr.Group, recipe: Recipe):
        self.dataset, self.index, self.group, self.recipe = dataset, index, group, recipe
        self.path = dataset.path / "episodes" / group.basename
        streams = group.require_group("streams")
        self.streams = {n: StreamWriter(streams.require_group(n), s) for n, s in recipe.streams.items()}
        self.last_flush = time.monotonic()
        self.closed = False

    def add(self, stream: str, t: float, t_recv: float, arrays: dict[str, np.ndarray],
            attrs: dict | None = None) -> None:
        """Queue one sample; raises BadSample (nothing stored) for input that does not fit."""
        self.streams[stream].add(t, t_recv, arrays, attrs)

    def add_message(self, stream: str, msg, t_recv: float) -> None:
        """Convert a ROS message (rclpy or rosbags) and queue it; BadSample says why it does not fit."""
        spec = self.recipe.streams[stream]
        try:
            t, arrays = to_sample(spec, msg, t_recv)
            self.add(stream, t, t_recv, arrays, stream_attrs(spec, msg) if not self.streams[stream].shapes else None)
        except BadSample as e:
            self.streams[stream].rejected[e.reason] += 1  # reported in the episode's metadata
            raise

    def flush(self, final: bool = False) -> None:
        try:
            for s in self.streams.values():
                s.flush(final)
        except OSError as e:
            raise _storage_error(e, self.path, f"writing episode {self.index}") from e
        self.last_flush = time.monotonic()

    def finish(self, success: bool | None, t_end: float | None = None, extra: dict | None = None) -> dict:
        """Flush, build the step table, fsync, then mark the episode complete (in that order)."""
        self.flush(final=True)
        try:
            for s in self.streams.values():
                s.trim()
            held = {n: s.held_arrays() for n, s in self.streams.items() if s.n}
            meta = write_steps(self.group, self.recipe, success, t_end, held)
            meta.update(extra or {})
            meta["rejected_samples"] = {n: dict(s.rejected) for n, s in self.streams.items() if s.rejected}
            missing = [n for n, s in self.streams.items() if s.n == 0 and s.spec.required]
            meta["missing_streams"] = missing
            meta["gaps"] = {n: g for n, h in held.items()   # every stamp is held: no read-back
                            if self.streams[n].spec.continuous and (g := stream_gaps(h["t"])) is not None}
            fsync_tree(self.path)
            self.group.attrs.update({**meta, "status": "complete", "finished": now_iso()})
            fsync_file(self.path / "zarr.json")
            fsync_file(self.path)
        except OSError as e:
            raise _storage_error(e, self.path, f"finishing episode {self.index}") from e
        self.closed = True
        return dict(self.group.attrs)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.closed = True


def stream_gaps(t: np.ndarray, factor: float = 2.5) -> dict | None:
    """Holes in a stream that publishes at a steady rate, judged from its own stamps: the rate
    is the median interval, and an interval over ``factor`` of it is a gap. Whoever lost the
    messages (the publisher, the network or this recorder), the episode says so instead of
    silently interpolating over them. None: no gaps, or too few samples to tell."""
    if len(t) < 20:
        return None
    dt = np.diff(t)
    period = float(np.median(dt))
    big = dt > factor * period
    if period <= 0.0 or not big.any():
        return None
    return {"rate_hz": round(1.0 / period, 3), "gaps": int(big.sum()),
            "missing": int(np.sum(np.round(dt[big] / period) - 1)), "longest_s": round(float(dt.max()), 4)}


class DatasetWriter:
    """Holds a dataset open for recording. Opening recovers episodes a crash cut off."""

    def __init__(self, path: str | Path, recipe: Recipe, name: str = ""):
        self.path = Path(path)
        self.recipe = recipe
        self._stack = contextlib.ExitStack()
        try:
            self._check_writable()
            self._stack.enter_context(writer_lock(self.path))
        except OSError as e:
            raise _storage_error(e, self.path, "opening the dataset for writing") from e
        try:
            self.root = open_root(self.path, create=True, name=name)
            self.recovered = repair_store(self.path, self.root, recipe)
        except OSError as e:
            self._stack.close()
            raise _storage_error(e, self.path, "opening the dataset") from e
        except BaseException:
            self._stack.close()
            raise

    def _check_writable(self) -> None:
        parent = self.path
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            raise DatasetError(f"cannot write the dataset {self.path}: no write permission on {parent}; "
                               "choose a writable directory or fix its permissions")

    def next_index(self) -> int:
        return next_episode_index(self.path)

    def start_episode(self, meta: dict) -> EpisodeWriter:
        idx = self.next_index()
        try:
            g = self.root["episodes"].create_group(f"{idx:06d}")
            g.attrs.update({"status": "recording", "index": idx, "started": now_iso(),
                            "recipe": self.recipe.to_json(), **meta})
        except OSError as e:
            raise _storage_error(e, self.path, "starting an episode") from e
        return EpisodeWriter(self, idx, g, self.recipe)

    def close(self) -> None:
        self._stack.close()


def discard_episodes(path: str | Path, indices: list[int]) -> None:
    """Removes the episodes ``indices`` (finished, interrupted or damaged) from a store no
    recorder holds, as the recorder's discard removes the one it records. For a collection
    whose graph is started again after a crash: the episode under way was saved unlabelled
    at shutdown (or left to repair) and is recorded again from its start, so kept it would
    enter training as a demonstration (an unlabelled episode counts as one)."""
    path = Path(path)
    if not indices:
        return
    try:
        with writer_lock(path):
            for i in indices:
                d = path / "episodes" / f"{i:06d}"
                if d.exists():
                    shutil.rmtree(d)
            fsync_file(path / "episodes")
    except OSError as e:
        raise _storage_error(e, path, f"discarding episodes {indices}") from e


@dataclass
class EpisodeInfo:
    index: int
    status: str
    meta: dict


class Episode:
    """Read access to one episode: ``streams[name][array]`` and ``steps[key]`` are zarr arrays."""

    def __init__(self, group: zarr.Group):
        self.group = group
        self.meta = dict(group.attrs)
        self.index = int(self.meta.get("index", group.basename))
        self.streams = {n: g for n, g in group["streams"].groups()} if "streams" in group else {}
        self.steps = group["steps"] if "steps" in group else None

    def stream(self, name: str) -> dict[str, np.ndarray]:
        """A stream's arrays loaded whole (use ``streams[name][k][i]`` for single image frames)."""
        g = self.streams.get(name)
        if g is None:
            return {}
        return {k: a[:] for k, a in g.arrays()}

    @property
    def n_steps(self) -> int:
        return int(self.meta.get("n_steps", 0))


class Dataset:
    """A store opened read-only. Episodes a crash cut off are listed in ``incomplete``, and
    finished ones with metadata missing, damaged or unreadable in ``damaged`` (index -> its
    faults); both are skipped, so a reader never trips over them. Opening reads metadata
    only; ``robot-learning dataset validate`` reads every chunk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.root = open_root(self.path, create=False)
        self.meta = dict(self.root.attrs)
        self.infos: list[EpisodeInfo] = []
        self.incomplete: list[int] = []
        self.damaged: dict[int, list[Fault]] = {}
        for index, d in episode_dirs(self.path):
            try:
                attrs = episode_attrs(d)
            except DamagedError as e:
                where = str(e.path.relative_to(d)) if e.path != d else ""
                self.damaged[index] = [Fault(where, e.what, "access" if e.access else "data")]
                continue
            status = (attrs or {}).get("status", "recording")
            if status not in ("complete", "recovered"):
                self.incomplete.append(index)
            elif faults := structure_faults(d, attrs):
                self.damaged[index] = faults
            else:
                self.infos.append(EpisodeInfo(int(attrs.get("index", index)), status, attrs))
        if self.incomplete:
            warnings.warn(f"{self.path}: {len(self.incomplete)} interrupted episode(s) skipped "
                          f"({self.incomplete}); `robot-learning dataset repair {self.path}` recovers them",
                          stacklevel=2)
        if self.damaged:
            said = {i: "; ".join(map(str, f)) for i, f in self.damaged.items()}
            warnings.warn(f"{self.path}: {len(self.damaged)} damaged episode(s) skipped ({said}); "
                          f"`robot-learning dataset validate {self.path}` says what to do", stacklevel=2)

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def indices(self) -> list[int]:
        return [i.index for i in self.infos]

    def episode(self, index: int) -> Episode:
        if index in self.damaged:
            faults = "; ".join(map(str, self.damaged[index]))
            raise DatasetError(f"episode {index} of {self.path} is damaged ({faults}): "
                               f"`robot-learning dataset validate {self.path}` says what to do")
        if index not in self.indices:
            raise DatasetError(f"{self.path} has no finished episode {index} (episodes: {self.indices})")
        return Episode(self.root["episodes"][f"{index:06d}"])

    def episodes(self):
        for i in self.indices:
            yield self.episode(i)

    def summary(self) -> dict:
        steps = sum(i.meta.get("n_steps", 0) for i in self.infos)
        dur = sum(i.meta.get("duration", 0.0) for i in self.infos)
        labelled = [i.meta.get("success") for i in self.infos if i.meta.get("success") is not None]
        return {"episodes": len(self.infos), "steps": steps, "duration_s": dur,
                "success_rate": float(np.mean(labelled)) if labelled else None,
                "interrupted": len(self.incomplete), "damaged": len(self.damaged),
                "interventions": sum(len(i.meta.get("interventions", [])) for i in self.infos)}
