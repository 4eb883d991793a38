"""Recovering episodes a crash cut off, and checking a store end to end.

An interrupted episode (status ``recording``) is cut back to the rows whose timestamps
were flushed, its step table is rebuilt, and it is kept as ``recovered`` (success unknown)
or dropped when it is shorter than the recipe's ``min_steps``. Finished episodes are never
modified here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr

from robot_learning.data.schema import SOURCES, Recipe, parse_recipe
from robot_learning.data.steps import STEP_KEYS, write_steps
from robot_learning.data.store import Dataset, DatasetError, fsync_file, fsync_tree, now_iso, open_root


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


def repair_store(path: Path, root: zarr.Group, recipe: Recipe | None = None) -> dict[int, str]:
    """Recover or drop every interrupted episode; remove debris a crash left. Needs the writer lock."""
    for p in path.glob("*.partial"):
        p.unlink(missing_ok=True)
    eps_dir = path / "episodes"
    actions: dict[int, str] = {}
    if not eps_dir.exists():
        root.require_group("episodes")
        return actions
    for d in sorted(eps_dir.iterdir()):
        if not d.is_dir():
            continue
        if not (d / "zarr.json").exists():  # killed while the episode was being created
            shutil.rmtree(d)
            actions[int(d.name) if d.name.isdigit() else -1] = "dropped"
            continue
        g = root["episodes"][d.name]
        if "status" not in g.attrs:
            # killed between creating the group and writing its attributes (one write that also
            # stores the recipe): nothing was recorded into it
            shutil.rmtree(d)
            actions[int(d.name) if d.name.isdigit() else -1] = "dropped"
            continue
        if g.attrs["status"] != "recording":
            continue
        raw = g.attrs.get("recipe")
        rec = parse_recipe(raw, f"episode {d.name}") if raw else recipe
        if rec is None:
            raise DatasetError(f"episode {d.name} has no recipe stored and none was given")
        actions[int(d.name)] = recover_episode(g, rec)
    return actions


def validate_store(path: str | Path) -> tuple[Dataset | None, list[str]]:
    """Every problem found, as sentences; an empty list means the store is sound."""
    problems: list[str] = []
    try:
        ds = Dataset(path)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        return None, [str(e)]
    if ds.incomplete:
        problems.append(f"interrupted episodes {ds.incomplete}: run `robot-learning dataset repair {path}`")
    for ep in ds.episodes():
        problems += [f"episode {ep.index}: {p}" for p in validate_episode(ep)]
    return ds, problems


def validate_episode(ep) -> list[str]:
    out = []
    meta = ep.meta
    for key in ("status", "n_steps", "control_rate", "recipe", "stream_counts", "interventions"):
        if key not in meta:
            out.append(f"metadata lacks '{key}'")
    for name, g in ep.streams.items():
        arrays = dict(g.arrays())
        if "t" not in arrays:
            continue
        n = arrays["t"].shape[0]
        for k, a in arrays.items():
            if a.shape[0] != n:
                out.append(f"stream {name}: '{k}' has {a.shape[0]} rows, 't' has {n}")
        t = arrays["t"][:]
        if not np.all(np.isfinite(t)):
            out.append(f"stream {name}: non-finite timestamps")
        elif np.any(np.diff(t) <= 0):
            out.append(f"stream {name}: timestamps not strictly increasing")
        if meta.get("stream_counts", {}).get(name, n) != n:
            out.append(f"stream {name}: {n} rows, metadata says {meta['stream_counts'][name]}")
    if ep.steps is None:
        return out + ["no step table"]
    steps = ep.steps
    for k in STEP_KEYS:
        if k not in steps:
            out.append(f"steps lacks '{k}'")
    if out:
        return out
    n = steps["t"].shape[0]
    if n != ep.n_steps:
        out.append(f"steps has {n} rows, metadata says {ep.n_steps}")
    for k, a in _walk(steps):
        if a.shape[0] != n:
            out.append(f"steps/{k} has {a.shape[0]} rows, expected {n}")
    if n:
        if not np.all(np.isfinite(steps["action"][:])):
            out.append("non-finite actions")
        src = steps["source"][:]
        if np.any((src < -1) | (src >= len(SOURCES))):
            out.append("source codes out of range")
        if "index" in steps:
            for name, a in steps["index"].arrays():
                rows = ep.streams[name]["t"].shape[0] if name in ep.streams else 0
                idx = a[:]
                if np.any(idx >= rows) or np.any(np.diff(idx) < 0):
                    out.append(f"steps/index/{name} points outside the stream or goes backwards")
    return out


def _walk(g: zarr.Group, prefix: str = ""):
    for k, a in g.arrays():
        yield prefix + k, a
    for k, sub in g.groups():
        yield from _walk(sub, f"{prefix}{k}/")


def repair_path(path: str | Path) -> dict[int, str]:
    """``dataset repair``: take the writer lock, then recover what a crash left."""
    from robot_learning.data.store import writer_lock

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise DatasetError(f"no dataset at {path}")
    with writer_lock(path):
        open_root(path, create=False)  # checks it is a dataset of a version we read
        return repair_store(path, zarr.open_group(str(path), mode="r+"))
