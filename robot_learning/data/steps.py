"""The control-rate step table a learner samples, built from an episode's recorded streams.

Observations at step k are each stream's newest sample stamped at or before t_k
(sample-and-hold, never a sample from the future). The action of step k is what went to
the arm during [t_k, t_k + dt): the newest command stamped before t_k + dt, or the part's
default when that command is older than its hold timeout (the arm's watchdog held).
Images are not copied: ``index/<stream>`` gives the row of the frame to read.
"""

from __future__ import annotations

import numpy as np
import zarr

from robot_learning.data.layout import DatasetError, compressors
from robot_learning.data.schema import SOURCES, Recipe


def _held(t: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Row of the newest sample stamped at or before each of ``at`` (-1: none yet)."""
    return np.searchsorted(t, at, side="right") - 1


class StreamTables:
    """An episode's stream arrays as the step table needs them, each read from disk at most once.

    ``held`` is what the recorder still has in memory (stream -> {"t": ..., array: ...}, a
    stream listed for every stream with samples): finishing an episode then reads nothing
    back, which on a loaded machine was most of the pause between two recorded episodes.
    A stream whose values were not kept (too long to hold) is read from the store.
    """

    def __init__(self, group: zarr.Group, held: dict[str, dict[str, np.ndarray]] | None = None):
        self.group = group
        self.held = held
        self._cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray] | None] = {}
        self._times: dict[str, np.ndarray] | None = None

    def times(self) -> dict[str, np.ndarray]:
        """Stamps of every stream with at least one sample."""
        if self._times is None:
            if self.held is not None:
                self._times = {n: h["t"] for n, h in self.held.items() if len(h["t"])}
            else:
                groups = self.group["streams"].groups() if "streams" in self.group else []
                self._times = {n: t for n, g in groups if "t" in g and len(t := g["t"][:])}
        return self._times

    def load(self, stream: str, array: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(t, values) of a stream's array, or None when the stream has no samples or no such array."""
        key = (stream, array)
        if key not in self._cache:
            t = self.times().get(stream)
            out = None
            if t is not None:
                held = (self.held or {}).get(stream, {})
                if array in held:
                    out = t, held[array]
                elif array in (g := self.group["streams"][stream]):
                    out = t, g[array][:]
            self._cache[key] = out
        return self._cache[key]


def step_times(tables: StreamTables, recipe: Recipe, t_end: float | None) -> np.ndarray:
    """From the moment every observed stream has a sample to the last moment they all cover."""
    starts, ends = [], []
    for ref in recipe.steps.observations:
        loaded = tables.load(*ref.split(".", 1))
        if loaded is not None:
            starts.append(loaded[0][0])
            ends.append(loaded[0][-1])
    if not starts:
        return np.zeros(0)
    for name, ts in tables.times().items():  # and no step before the first frame of every camera
        if name in recipe.streams and recipe.streams[name].kind == "image":
            starts.append(ts[0])
    t0, t1 = max(starts), min(ends)
    if t_end is not None:
        t1 = min(t1, t_end)
    dt = 1.0 / recipe.steps.rate
    return t0 + dt * np.arange(max(0, int(np.floor((t1 - t0) / dt + 1e-9)) + 1)) if t1 >= t0 else np.zeros(0)


def build_steps(tables: StreamTables, recipe: Recipe, success: bool | None,
                t_end: float | None = None) -> dict[str, np.ndarray]:
    st = recipe.steps
    t = step_times(tables, recipe, t_end)
    n, dt = len(t), 1.0 / st.rate
    out: dict[str, np.ndarray] = {"t": t}
    for ref in st.observations:
        loaded = tables.load(*ref.split(".", 1))
        if loaded is not None:
            ts, arr = loaded
            out[f"obs/{ref}"] = arr[np.clip(_held(ts, t), 0, None)]
    parts = []
    for part in st.action:
        default = np.asarray(part.default, np.float64)
        loaded = tables.load(*part.array.split(".", 1))
        col = np.broadcast_to(default, (n, default.size)).copy()
        if loaded is not None:
            ts, arr = loaded
            arr = arr.reshape(len(ts), -1).astype(np.float64)
            if arr.shape[1] != default.size:
                raise DatasetError(f"{recipe.source}: steps.action '{part.array}' has {arr.shape[1]} values per "
                                   f"sample but its default has {default.size}: give a default of "
                                   f"{arr.shape[1]} values")
            idx = _held(ts, t + dt - 1e-9)
            ok = idx >= 0
            if part.hold_timeout is not None:
                ok &= (t + dt) - ts[np.clip(idx, 0, None)] <= part.hold_timeout
            col[ok] = arr[idx[ok]]
        parts.append(col)
    out["action"] = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))
    source = np.full(n, -1, np.int8)  # -1: nothing said who was in control
    if st.source and (loaded := tables.load(*st.source.split(".", 1))) is not None:
        ts, names = loaded
        codes = np.array([SOURCES.index(s) if s in SOURCES else -1 for s in names], np.int8)
        idx = _held(ts, t + dt - 1e-9)
        source[idx >= 0] = codes[idx[idx >= 0]]
    out["source"] = source
    inter = np.zeros(n, bool)
    if st.intervention and (loaded := tables.load(*st.intervention.split(".", 1))) is not None:
        ts, flags = loaded
        idx = _held(ts, t + dt - 1e-9)
        inter[idx >= 0] = flags[idx[idx >= 0]].astype(bool)
    out["intervention"] = inter
    out["reward"] = np.zeros(n, np.float32)
    out["done"] = np.zeros(n, bool)
    if n:
        out["done"][-1] = True
        out["reward"][-1] = 1.0 if success else 0.0
    for name, ts in tables.times().items():
        out[f"index/{name}"] = _held(ts, t).astype(np.int64)
    return out


def intervention_segments(tables: StreamTables, recipe: Recipe, t_end: float) -> list[list[float]]:
    """[start, end] stamps of each stretch where the intervention flag was on."""
    if not recipe.steps.intervention:
        return []
    loaded = tables.load(*recipe.steps.intervention.split(".", 1))
    if loaded is None:
        return []
    segs, on = [], None
    for ts, flag in zip(*loaded):
        if flag and on is None:
            on = float(ts)
        elif not flag and on is not None:
            segs.append([on, float(ts)])
            on = None
    if on is not None:
        segs.append([on, float(t_end)])
    return segs


def write_steps(group: zarr.Group, recipe: Recipe, success: bool | None, t_end: float | None = None,
                held: dict[str, dict[str, np.ndarray]] | None = None) -> dict:
    """(Re)write ``steps/`` and return the episode metadata that describes it (``held``: see StreamTables)."""
    if "steps" in group:
        del group["steps"]
    tables = StreamTables(group, held)
    steps = build_steps(tables, recipe, success, t_end)
    g = group.create_group("steps")
    for k, v in steps.items():
        parent, _, leaf = k.rpartition("/")
        sub = g.require_group(parent) if parent else g
        sub.create_array(leaf, data=v, chunks=(max(1, min(len(v), 4096)), *v.shape[1:]),
                         compressors=compressors(v.dtype, image=False))
    t = steps["t"]
    counts = {n: int(len(ts)) for n, ts in tables.times().items()}
    end = float(t[-1]) if len(t) else (t_end or 0.0)
    return {
        "n_steps": int(len(t)), "t_start": float(t[0]) if len(t) else None, "t_end": end,
        "duration": float(t[-1] - t[0]) if len(t) else 0.0, "success": success,
        "control_rate": recipe.steps.rate, "stream_counts": counts,
        "interventions": intervention_segments(tables, recipe, end),
        "action_dim": int(steps["action"].shape[1]),
    }
