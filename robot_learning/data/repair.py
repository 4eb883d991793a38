"""Checking a store end to end, and repairing what can be repaired.

``check_store`` (``robot-learning dataset validate``) reads every chunk of every array of
every finished episode and names the episode, the array and the chunk of each fault.
Chunks written since robot-learning added checksums carry a CRC32C, so altered bytes fail
the read; in older arrays only chunks that no longer decode can be found.

``repair_path`` (``robot-learning dataset repair``), under the writer lock:
- recovers episodes a crash cut off (``store.repair_store``);
- rebuilds the step table of an episode whose recorded streams are sound (it is derived
  from them, so nothing is lost);
- drops an episode whose recorded data or own metadata is damaged: nothing can rebuild it,
  and a reader must not train on it;
- leaves an episode it may not read (permissions) for the user to fix, and says so;
- rewrites the root's or the episodes group's metadata when only that is damaged.
Sound episodes are never written to.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from robot_learning.data.layout import (
    DamagedError,
    DatasetError,
    Fault,
    blocking_path,
    episode_attrs,
    episode_dirs,
    episode_recipe,
    explain_os_error,
    fault_kind,
    has_checksum,
    read_metadata,
    structure_faults,
)
from robot_learning.data.schema import SCHEMA, SCHEMA_VERSION, SOURCES
from robot_learning.data.steps import write_steps
from robot_learning.data.store import (
    Dataset,
    Episode,
    fsync_file,
    fsync_tree,
    now_iso,
    open_root,
    repair_store,
    writer_lock,
)

# episode attributes written with the step table: a rebuild restores them
DERIVED_KEYS = ("n_steps", "control_rate", "stream_counts", "interventions")
LEFT = "left as is"


@dataclass
class EpisodeCheck:
    index: int
    faults: list[Fault]
    arrays: int = 0          # arrays read
    unchecksummed: int = 0   # of which without chunk checksums


@dataclass
class StoreCheck:
    """What ``check_store`` found. ``error`` is set when the store cannot be opened at all."""

    path: Path
    dataset: Dataset | None = None
    error: str | None = None
    episodes: list[EpisodeCheck] = field(default_factory=list)

    @property
    def damaged(self) -> list[EpisodeCheck]:
        return [e for e in self.episodes if e.faults]

    def problems(self) -> list[str]:
        """Every problem as one sentence."""
        if self.error:
            return [self.error]
        out = []
        if self.dataset is not None and self.dataset.incomplete:
            out.append(f"interrupted episodes {self.dataset.incomplete}: "
                       f"run `robot-learning dataset repair {self.path}`")
        out += [f"episode {e.index}: {f}" for e in self.damaged for f in e.faults]
        return out


def remedy(path: Path, index: int, faults: list[Fault]) -> str:
    """What the user should do about an episode's faults (what ``repair`` would do)."""
    kinds = {f.kind for f in faults}
    if "access" in kinds:
        return ("fix the permissions of what is named (chmod/chown) and run validate again; "
                "repair leaves this episode as it is")
    if kinds == {"steps"}:
        return f"`robot-learning dataset repair {path}` rebuilds its step table from the recorded streams"
    return (f"`robot-learning dataset repair {path}` drops episode {index}: its recorded data cannot be "
            "rebuilt (restore it from a backup to keep it)")


def _rel(path: Path, ep_dir: Path) -> str:
    return "" if path == ep_dir else str(path.relative_to(ep_dir))


def _walk_arrays(ep_dir: Path) -> tuple[list[str], list[Fault]]:
    """Every array stored under the episode (relative paths), and the directories and
    metadata files on the way that cannot be read. Chunk directories are not walked."""
    arrays: list[str] = []
    faults: list[Fault] = []

    def unreadable(e: OSError) -> None:
        where = _rel(Path(e.filename), ep_dir) if e.filename else ""
        faults.append(Fault(where, explain_os_error(e), fault_kind(where, isinstance(e, PermissionError))))

    for root, dirs, files in os.walk(ep_dir, onerror=unreadable):
        dirs.sort()
        where = _rel(Path(root), ep_dir)
        if "zarr.json" not in files:
            continue
        try:
            meta = read_metadata(Path(root) / "zarr.json", top=ep_dir)
        except FileNotFoundError:  # gone since it was listed
            continue
        except DamagedError as e:
            faults.append(Fault(_rel(e.path, ep_dir), e.what, fault_kind(where, e.access)))
            dirs.clear()
            continue
        if meta["node_type"] == "array":
            arrays.append(where)
            dirs.clear()  # chunks: read through zarr, one by one
    return arrays, faults


BATCH_BYTES = 64 << 20  # read this much of an array per call: zarr's per-call overhead dominates small reads


def _open_arrays(ep_dir: Path, rels: list[str], clean: bool) -> dict[str, zarr.Array | Exception]:
    """The arrays at ``rels``, or why one cannot be opened. A sound episode is opened in one
    listing (one round trip to zarr's event loop instead of one per array); otherwise each
    array on its own, so that a broken one cannot hide the others."""
    out: dict[str, zarr.Array | Exception] = {}
    if clean:
        with contextlib.suppress(Exception):  # then each on its own, below
            members = zarr.open_group(str(ep_dir), mode="r").members(max_depth=None)
            out = {k: a for k, a in members if isinstance(a, zarr.Array) and k in rels}
    for rel in rels:
        if rel not in out:
            try:
                out[rel] = zarr.open_array(str(ep_dir / rel), mode="r")
            except Exception as e:  # zarr raises KeyError, ValueError, TypeError ... for bad metadata
                out[rel] = e
    return out


def _read_error(e: Exception, checksummed: bool) -> str:
    if "checksum" in str(e).lower():
        return "checksum mismatch: its bytes changed on disk (a flipped bit, a cut-off write or a bad copy)"
    if isinstance(e, OSError):
        return explain_os_error(e)
    return f"cannot be decoded ({type(e).__name__}: {e})" + ("" if checksummed else "; it has no checksum")


def _chunk_name(arr: zarr.Array, coords: tuple[int, ...]) -> str:
    key = arr.metadata.encode_chunk_key(coords)
    if coords and not any(coords[1:]):
        lo = coords[0] * arr.chunks[0]
        hi = min(lo + arr.chunks[0], arr.shape[0]) - 1
        return f"chunk {coords[0]} (rows {lo}-{hi}, file {key})"
    return f"chunk {coords} (file {key})"


def _read_array(arr: zarr.Array, rel: str) -> tuple[list[Fault], np.ndarray | None]:
    """Read every chunk of an array: many chunks a call, and chunk by chunk only where a
    call fails, to name each damaged chunk. Returns the faults, and the values when the
    array is small enough to keep for the value checks (one call's worth) and sound."""
    if arr.ndim == 0 or 0 in arr.shape:
        return [], arr[...]
    checksummed, kind = has_checksum(arr), fault_kind(rel)
    row_bytes = int(np.prod(arr.shape[1:])) * max(arr.dtype.itemsize, 8)
    rows = max(1, BATCH_BYTES // max(row_bytes * arr.chunks[0], 1)) * arr.chunks[0]
    faults, parts = [], []
    for lo in range(0, arr.shape[0], rows):
        try:
            parts.append(arr[lo:lo + rows])
            continue
        except Exception:  # find which chunk, below
            pass
        first, last = lo // arr.chunks[0], -(-min(lo + rows, arr.shape[0]) // arr.chunks[0])
        for coords in itertools.product(range(first, last), *(range(n) for n in arr.cdata_shape[1:])):
            try:
                arr.get_block_selection(coords)
            except Exception as e:  # any failure to read a chunk is the fault being looked for
                faults.append(Fault(rel, f"{_chunk_name(arr, coords)} is damaged: {_read_error(e, checksummed)}",
                                    kind))
    return faults, (parts[0] if len(parts) == 1 and not faults else None)


def check_episode(ep_dir: Path, index: int | None = None) -> EpisodeCheck:
    """Every fault of a finished episode: metadata, structure, every chunk, then whether the
    values agree with each other (only when everything could be read)."""
    index = int(ep_dir.name) if index is None else index
    if os.path.lexists(ep_dir) and not os.path.isdir(ep_dir):
        return EpisodeCheck(index, [Fault("", "a file stands where the episode's directory should be", "data")])
    try:
        attrs = episode_attrs(ep_dir)
    except DamagedError as e:
        return EpisodeCheck(index, [Fault(_rel(e.path, ep_dir) or "its directory", e.what,
                                          "access" if e.access else "data")])
    if attrs is None:
        return EpisodeCheck(index, [Fault("zarr.json", "missing", "data")])
    faults = [Fault("zarr.json", f"lacks '{k}'", "data") for k in ("status", "recipe") if k not in attrs]
    faults += [Fault("zarr.json", f"lacks '{k}'", "steps") for k in DERIVED_KEYS if k not in attrs]
    faults += structure_faults(ep_dir, attrs)
    rels, walk_faults = _walk_arrays(ep_dir)
    faults += walk_faults
    check = EpisodeCheck(index, faults, arrays=len(rels))
    shapes, values = {}, {}
    for rel, arr in _open_arrays(ep_dir, rels, clean=not faults).items():
        if isinstance(arr, Exception):
            faults.append(Fault(f"{rel}/zarr.json", f"damaged: not a valid zarr array ({type(arr).__name__}: {arr})",
                                fault_kind(rel)))
            continue
        check.unchecksummed += not has_checksum(arr)
        array_faults, values[rel] = _read_array(arr, rel)
        faults += array_faults
        shapes[rel] = arr.shape
    if not faults:
        faults += _value_faults(shapes, values, attrs)
    check.faults = list(dict.fromkeys(faults))  # the same fault seen twice (structure and walk) once
    return check


def _value_faults(shapes: dict[str, tuple[int, ...]], values: dict[str, np.ndarray | None],
                  meta: dict) -> list[Fault]:
    """Whether the arrays agree with each other and with the metadata (all could be read).
    The values looked at (stamps, actions, sources, indices) are small enough to have been
    kept by ``_read_array``; one that was not (over 64 MB) is not checked."""
    out = []
    streams: dict[str, dict[str, tuple[int, ...]]] = {}
    for rel, shape in shapes.items():
        if rel.startswith("streams/") and rel.count("/") == 2:
            _, name, k = rel.split("/")
            streams.setdefault(name, {})[k] = shape
    for name, arrays in streams.items():
        if "t" not in arrays:
            continue
        where = f"streams/{name}"
        n = arrays["t"][0]
        for k, shape in arrays.items():
            if shape[0] != n:
                out.append(Fault(where, f"'{k}' has {shape[0]} rows, 't' has {n}", "data"))
        t = values[f"{where}/t"]
        if t is not None and not np.all(np.isfinite(t)):
            out.append(Fault(where, "non-finite timestamps", "data"))
        elif t is not None and np.any(np.diff(t) <= 0):
            out.append(Fault(where, "timestamps not strictly increasing", "data"))
        if meta.get("stream_counts", {}).get(name, n) != n:
            out.append(Fault(where, f"{n} rows, metadata says {meta['stream_counts'][name]}", "data"))
    n = shapes["steps/t"][0]
    if n != meta.get("n_steps"):
        out.append(Fault("steps", f"{n} rows, metadata says {meta.get('n_steps')}", "steps"))
    for rel, shape in shapes.items():
        if rel.startswith("steps/") and shape[0] != n:
            out.append(Fault(rel, f"{shape[0]} rows, expected {n}", "steps"))
    if n and not out:
        action, src = values["steps/action"], values["steps/source"]
        if action is not None and not np.all(np.isfinite(action)):
            out.append(Fault("steps/action", "non-finite actions", "steps"))
        if src is not None and np.any((src < -1) | (src >= len(SOURCES))):
            out.append(Fault("steps/source", "source codes out of range", "steps"))
        for rel, idx in values.items():
            if rel.startswith("steps/index/") and idx is not None:
                name = rel.rsplit("/", 1)[1]
                rows = streams.get(name, {}).get("t", (0,))[0]
                if np.any(idx >= rows) or np.any(np.diff(idx) < 0):
                    out.append(Fault(rel, "points outside the stream or goes backwards", "steps"))
    return out


def episode_dir(ep: Episode) -> Path:
    return Path(ep.group.store.root) / ep.group.path


def validate_episode(ep: Episode) -> list[str]:
    """The faults of one episode, as sentences (empty: sound, every chunk read)."""
    return [str(f) for f in check_episode(episode_dir(ep), ep.index).faults]


def check_store(path: str | Path) -> StoreCheck:
    """Open the store and check every finished episode, reading every chunk."""
    path = Path(path)
    report = StoreCheck(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # interrupted and damaged episodes are reported below
            report.dataset = Dataset(path)
    except DatasetError as e:
        report.error = str(e)
        return report
    for index, d in episode_dirs(path):
        if index not in report.dataset.incomplete:
            report.episodes.append(check_episode(d, index))
    return report


def validate_store(path: str | Path) -> tuple[Dataset | None, list[str]]:
    """Every problem found, as sentences; an empty list means the store is sound."""
    report = check_store(path)
    return report.dataset, report.problems()


def _write_group_metadata(path: Path, attrs: dict) -> None:
    """A group's zarr.json replaced whole (temporary file, fsync, rename), as zarr writes it."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps({"attributes": attrs, "zarr_format": 3, "node_type": "group"}, indent=2))
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_file(path.parent)


def _repair_root(path: Path, report: Callable[[str], None]) -> None:
    """Rewrite the root's or the episodes group's metadata when it is damaged (not merely
    unreadable): the episodes group holds no attributes, the root only the schema and the
    dataset's name and creation date. The root is rewritten only when an episode with a
    recipe shows the store is a robot-learning dataset."""
    for meta in (path / "zarr.json", path / "episodes" / "zarr.json"):
        try:
            read_metadata(meta, top=path.parent)
            continue
        except FileNotFoundError:
            continue
        except DamagedError as e:
            if e.access or e.path != meta:
                continue  # open_root says what to do
        if meta.parent == path:
            attrs = _root_attrs(path)
            if attrs is None:
                raise DatasetError(f"{meta} (the dataset's root metadata) is damaged and no episode shows this is "
                                   "a robot-learning dataset: restore it from a backup")
        else:
            attrs = {}
        _write_group_metadata(meta, attrs)
        report(f"{meta.relative_to(path)}: was damaged, rewritten")


def _root_attrs(path: Path) -> dict | None:
    started = []
    for _, d in episode_dirs(path):
        with contextlib.suppress(DatasetError):
            attrs = episode_attrs(d) or {}
            if "recipe" in attrs:
                started.append(str(attrs.get("started", "")))
    if not started:
        return None
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": min(started) or now_iso(),
            "name": path.stem, "note": f"root metadata rewritten by `robot-learning dataset repair` on {now_iso()}: "
                                       "the original name was lost, 'created' is the first episode's start"}


def _rebuild_steps(ep_dir: Path) -> None:
    """Write the step table again from the recorded streams, with the episode's own recipe,
    outcome and end, so that it equals the one the recorder wrote."""
    attrs = episode_attrs(ep_dir) or {}
    recipe = episode_recipe(attrs)
    if recipe is None:
        raise DatasetError("its recipe is missing or unreadable")
    steps = ep_dir / "steps"
    if os.path.isdir(steps):
        shutil.rmtree(steps)
    elif os.path.lexists(steps):
        steps.unlink()
    group = zarr.open_group(str(ep_dir), mode="r+")
    t_end = attrs.get("t_end")  # the last step's stamp: a hair more keeps that step whatever the rounding
    meta = write_steps(group, recipe, attrs.get("success"), None if t_end is None else t_end + 1e-9)
    fsync_tree(ep_dir)
    group.attrs.update({**meta, "repaired": f"step table rebuilt by `robot-learning dataset repair` on {now_iso()}"})
    fsync_file(ep_dir / "zarr.json")


def _drop(ep_dir: Path) -> None:
    if os.path.isdir(ep_dir) and not os.path.islink(ep_dir):
        shutil.rmtree(ep_dir)
    else:
        ep_dir.unlink()
    fsync_file(ep_dir.parent)


def _summary(faults: list[Fault]) -> str:
    more = f" and {len(faults) - 1} more" if len(faults) > 1 else ""
    return f"{faults[0]}{more}"


def repair_episode(ep_dir: Path, faults: list[Fault]) -> str:
    """Fix or drop one damaged episode (see the module's docstring); says what was done."""
    access = [f for f in faults if f.kind == "access"]
    if access:
        return f"{LEFT}: {_summary(access)}"
    if {f.kind for f in faults} == {"steps"}:
        try:
            _rebuild_steps(ep_dir)
        except Exception as e:  # the streams failed to read after all: drop below
            faults = [Fault("steps", f"cannot be rebuilt ({type(e).__name__}: {e})", "data")]
        else:
            after = check_episode(ep_dir).faults
            if not after:
                return f"step table rebuilt ({_summary(faults)})"
            faults = after
    _drop(ep_dir)
    return f"dropped ({_summary(faults)})"


def repair_path(path: str | Path, report: Callable[[str], None] = lambda _: None) -> dict[int, str]:
    """``dataset repair``: take the writer lock, recover what a crash left, then check every
    episode and rebuild, drop or leave each damaged one. Returns what was done per episode;
    store-level fixes go to ``report``."""
    path = Path(path)
    blocked = blocking_path(path / "zarr.json", path.parent)
    if blocked is not None:
        raise DatasetError(f"cannot read the dataset {path}: {blocked[0]}: {explain_os_error(blocked[1])}; "
                           "check the path and its permissions")
    if not (path / "zarr.json").exists():
        raise DatasetError(f"no dataset at {path} (expected {path / 'zarr.json'})")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(writer_lock(path))
        except OSError as e:
            raise DatasetError(f"cannot take the writer lock {path / 'writer.lock'}: {explain_os_error(e)}; "
                               "repair writes to the store: run it as a user who may") from e
        _repair_root(path, report)
        open_root(path, create=False)  # checks it is a dataset of a version we read
        actions = repair_store(path, zarr.open_group(str(path), mode="r+"), drop_damaged=True)
        for index, d in episode_dirs(path):
            if index in actions:
                continue
            with contextlib.suppress(DatasetError):
                if (episode_attrs(d) or {}).get("status") == "recording":
                    continue  # interrupted and left by repair_store: it said why
            faults = check_episode(d, index).faults
            if faults:
                actions[index] = repair_episode(d, faults)
    return actions
