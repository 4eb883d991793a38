"""What a store looks like on disk, shared by the writer, the readers and the checks.

``store`` (writing, reading, crash recovery) and ``repair`` (checking every chunk, fixing
damage) both build on this module and ``repair`` on ``store``, never the other way round:
the codec chain every array is written with, which arrays a finished episode must have,
and reading metadata files so that a broken one is named instead of raising from deep
inside zarr.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from robot_learning.data.schema import STEP_KEYS, STREAM_ARRAYS, Recipe, parse_recipe


class DatasetError(RuntimeError):
    """A store that cannot be used as asked; the message says what to do."""


class DamagedError(DatasetError):
    """A part of the store that is there but cannot be read.

    ``access`` is true when permissions, not damage, stop the read: then nothing is lost and
    nothing may be dropped; the user fixes the permissions.
    """

    def __init__(self, path: Path, what: str, access: bool = False):
        super().__init__(f"{path}: {what}")
        self.path, self.what, self.access = path, what, access


@dataclass(frozen=True)
class Fault:
    """One thing wrong with an episode. ``kind`` says what ``repair`` may do about it:
    "steps" (the step table or what is derived from it: rebuilt from the streams), "data"
    (recorded data or the episode's own metadata: lost, so the episode is dropped), or
    "access" (permissions: the user fixes them; nothing is dropped)."""

    where: str   # relative to the episode directory; "" for the episode as a whole
    what: str
    kind: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


def fault_kind(where: str, access: bool = False) -> str:
    if access:
        return "access"
    return "steps" if where == "steps" or where.startswith("steps/") else "data"


def compressors(dtype: np.dtype, image: bool) -> tuple[BytesBytesCodec, ...]:
    """Lossless compression, then a CRC32C of the compressed chunk.

    The checksum comes last so that it covers the bytes on disk: a flipped bit or a cut-off
    file then fails the read with an error. Blosc has no checksum of its own, and a flipped
    byte in a compressed float64 chunk decoded silently into wrong numbers (0.23 read back
    as -1.55e88). Variable-length strings keep zarr's own compressor (zstd).
    """
    if dtype.kind in "UTO":
        return ZstdCodec(), Crc32cCodec()
    if image and dtype.itemsize == 1:
        return BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"), Crc32cCodec()
    shuffle = "shuffle" if dtype.itemsize > 1 else "noshuffle"
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle), Crc32cCodec()


def has_checksum(array: zarr.Array) -> bool:
    """Whether the array's chunks carry a CRC32C (arrays written before they did have none)."""
    return any(isinstance(c, Crc32cCodec) for c in getattr(array.metadata, "codecs", ()))


def explain_os_error(e: OSError) -> str:
    """An OSError in words a user acts on (the path is named by the caller)."""
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOTDIR:
        return "a file stands where a directory should be"
    if e.errno == errno.EISDIR:
        return "a directory stands where a file should be"
    if e.errno == errno.ENOENT:
        return "missing"
    if e.errno == errno.EIO:
        return "input/output error: the disk is failing; copy what can still be read"
    return e.strerror or str(e)


def blocking_path(path: Path, top: Path) -> tuple[Path, OSError] | None:
    """The first part of ``path`` below ``top`` that cannot be entered, and why; None when
    ``path`` can be read (or is simply absent).

    ``os.path.exists`` says False for a directory we may not read and for a path through a
    file; telling those apart from "missing" is what lets a message say what to do.
    """
    parts = path.relative_to(top).parts
    for k in range(1, len(parts) + 1):
        p = top.joinpath(*parts[:k])
        try:
            os.stat(p)
        except FileNotFoundError:
            return None
        except OSError as e:
            return p, e
        if k < len(parts) and not os.path.isdir(p):
            return p, NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(p))
        if k < len(parts) and not os.access(p, os.R_OK | os.X_OK):
            return p, PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
    return None


def read_metadata(path: Path | str, top: Path | None = None) -> dict:
    """A ``zarr.json`` parsed and checked to be zarr v3 metadata.

    Raises FileNotFoundError when there is none (the caller knows whether that is normal)
    and DamagedError, naming the file or the directory in the way (looked for below
    ``top``), for everything else. Plain ``open`` of a string: every ``Dataset`` opening
    reads some 80 of these an episode, and pathlib doubled the time.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        where = blocking_path(Path(path), top) if top is not None else None
        bad, err = where if where else (Path(path), e)
        raise DamagedError(bad, explain_os_error(err), access=err.errno in (errno.EACCES, errno.EPERM)) from e
    try:
        meta = json.loads(raw)
    except UnicodeDecodeError as e:
        raise DamagedError(Path(path), "damaged: not text, let alone JSON") from e
    except ValueError as e:  # JSONDecodeError
        raise DamagedError(Path(path), f"damaged: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") not in ("group", "array"):
        raise DamagedError(Path(path), "damaged: valid JSON but not zarr v3 metadata")
    if not isinstance(meta.get("attributes", {}), dict):
        raise DamagedError(Path(path), "damaged: its attributes are not a JSON object")
    return meta


def episode_dirs(path: Path) -> list[tuple[int, Path]]:
    """(index, directory) of every episode in the store, whether or not it is sound."""
    eps = path / "episodes"
    try:
        names = sorted(e.name for e in os.scandir(eps))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise DatasetError(f"cannot list the episodes in {eps}: {explain_os_error(e)}") from e
    return [(int(n), eps / n) for n in names if n.isdigit()]


def next_episode_index(path: Path) -> int:
    """The index the store's next episode takes: one past the highest there, sound or not (0
    for a store not made yet), so an index is never used twice."""
    return max((i for i, _ in episode_dirs(path)), default=-1) + 1


def expected_arrays(recipe: Recipe, streams: list[str]) -> list[str]:
    """Paths (relative to the episode) of the arrays a finished episode has, given the
    streams that received samples: the step table, each stream's arrays, and the step
    table's observation and index columns of those streams (see ``steps.build_steps``)."""
    out = [f"steps/{k}" for k in STEP_KEYS]
    for name in streams:
        spec = recipe.streams.get(name)
        arrays = STREAM_ARRAYS.get(spec.kind, ("data",)) if spec else ("data",)
        out += [f"streams/{name}/{a}" for a in ("t", "t_recv", *arrays)]
        out.append(f"steps/index/{name}")
    for ref in recipe.steps.observations:
        stream, _, array = ref.partition(".")
        spec = recipe.streams.get(stream)
        if stream in streams and spec and array in STREAM_ARRAYS.get(spec.kind, ("data",)):
            out.append(f"steps/obs/{ref}")
    return out


def nodes_of(arrays: list[str]) -> list[str]:
    """The arrays and every group above them (each has its own ``zarr.json``), parents first."""
    out: dict[str, None] = {}
    for rel in arrays:
        parts = rel.split("/")
        for k in range(1, len(parts) + 1):
            out.setdefault("/".join(parts[:k]))
    return sorted(out, key=lambda r: (r.count("/"), r))


NODE_NAMES = {"array": "an array", "group": "a group"}


def node_faults(ep_dir: Path, arrays: list[str]) -> list[Fault]:
    """Faults of the metadata of ``arrays`` and of the groups above them: missing, unreadable,
    damaged or of the wrong node type. Each is reported once, at the highest level (``steps``
    rather than each of its arrays). Reads only ``zarr.json`` files (about 3 ms an episode
    here), so every ``Dataset`` opening can afford it."""
    base = str(ep_dir)
    out: list[Fault] = []
    broken: list[str] = []
    wanted = set(arrays)
    for rel in nodes_of(arrays):
        if any(rel == b or rel.startswith(b + "/") for b in broken):
            continue
        where, what, access = rel, "", False
        try:
            node = read_metadata(f"{base}/{rel}/zarr.json", top=ep_dir)["node_type"]
            if node != ("array" if rel in wanted else "group"):
                where, what = f"{rel}/zarr.json", f"damaged: describes {NODE_NAMES[node]} where {rel} is not one"
        except FileNotFoundError:
            what = "missing"
        except DamagedError as e:
            where, what, access = str(e.path.relative_to(ep_dir)), e.what, e.access
        if what and where not in broken:
            out.append(Fault(where, what, fault_kind(where, access)))
            broken += [where, rel]
    return out


def episode_attrs(ep_dir: Path) -> dict | None:
    """An episode's attributes, or None when it has no metadata yet (killed while being
    created). Raises DamagedError when its ``zarr.json`` cannot be read."""
    try:
        return read_metadata(ep_dir / "zarr.json", top=ep_dir.parent).get("attributes", {})
    except FileNotFoundError:
        return None


def episode_recipe(attrs: dict) -> Recipe | None:
    """The recipe an episode was recorded with, None when it is missing or unreadable."""
    try:
        return parse_recipe(attrs["recipe"], "the episode's recipe")
    except (KeyError, TypeError, AttributeError, ValueError):
        return None


def structure_faults(ep_dir: Path, attrs: dict) -> list[Fault]:
    """What is wrong with a finished episode's structure, judged from its own metadata.
    Reads metadata files only; reading every chunk is ``repair.check_episode``'s job."""
    recipe = episode_recipe(attrs)
    if recipe is None:
        what = "lacks 'recipe'" if "recipe" not in attrs else "its recipe is unreadable"
        return [Fault("zarr.json", what, "data")]
    counts = attrs.get("stream_counts")
    if not isinstance(counts, dict):
        return [Fault("zarr.json", "lacks 'stream_counts'", "steps")]
    return node_faults(ep_dir, expected_arrays(recipe, [name for name, n in counts.items() if n]))
