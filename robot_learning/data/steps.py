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

from robot_learning.data.schema import SOURCES, Recipe

STEP_KEYS = ("t", "action", "source", "intervention", "reward", "done")


def _held(t: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Row of the newest sample stamped at or before each of ``at`` (-1: none yet)."""
    return np.searchsorted(t, at, side="right") - 1


def _load(group: zarr.Group, stream: str, array: str, cache: dict | None = None):
    """(t, values) of a stream's array, or None; ``cache`` keeps one read per array per build."""
    key = (stream, array)
    if cache is not None and key in cache:
        return cache[key]
    out = None
    if "streams" in group and stream in group["streams"]:
        g = group["streams"][stream]
        if "t" in g and array in g and g["t"].shape[0] > 0:
            out = g["t"][:], g[array][:]
    if cache is not None:
        cache[key] = out
    return out


def step_times(group: zarr.Group, recipe: Recipe, t_end: float | None, cache: dict | None = None) -> np.ndarray:
    """From the moment every observed stream has a sample to the last moment they all cover."""
    starts, ends = [], []
    for ref in recipe.steps.observations:
        loaded = _load(group, *ref.split(".", 1), cache)
        if loaded is not None:
            starts.append(loaded[0][0])
            ends.append(loaded[0][-1])
    if not starts:
        return np.zeros(0)
    if "streams" in group:  # and no step before the first frame of every camera
        for name, g in group["streams"].groups():
            if name in recipe.streams and recipe.streams[name].kind == "image" and "t" in g and g["t"].shape[0]:
                starts.append(g["t"][0])
    t0, t1 = max(starts), min(ends)
    if t_end is not None:
        t1 = min(t1, t_end)
    dt = 1.0 / recipe.steps.rate
    return t0 + dt * np.arange(max(0, int(np.floor((t1 - t0) / dt + 1e-9)) + 1)) if t1 >= t0 else np.zeros(0)


def build_steps(group: zarr.Group, recipe: Recipe, success: bool | None,
                t_end: float | None = None, cache: dict | None = None) -> dict[str, np.ndarray]:
    st = recipe.steps
    cache = {} if cache is None else cache
    t = step_times(group, recipe, t_end, cache)
    n, dt = len(t), 1.0 / st.rate
    out: dict[str, np.ndarray] = {"t": t}
    for ref in st.observations:
        loaded = _load(group, *ref.split(".", 1), cache)
        if loaded is not None:
            ts, arr = loaded
            out[f"obs/{ref}"] = arr[np.clip(_held(ts, t), 0, None)]
    parts = []
    for part in st.action:
        default = np.asarray(part.default, np.float64)
        loaded = _load(group, *part.array.split(".", 1), cache)
        col = np.broadcast_to(default, (n, default.size)).copy()
        if loaded is not None:
            ts, arr = loaded
            arr = arr.reshape(len(ts), -1).astype(np.float64)
            idx = _held(ts, t + dt - 1e-9)
            ok = idx >= 0
            if part.hold_timeout is not None:
                ok &= (t + dt) - ts[np.clip(idx, 0, None)] <= part.hold_timeout
            col[ok] = arr[idx[ok]]
        parts.append(col)
    out["action"] = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))
    source = np.full(n, -1, np.int8)  # -1: nothing said who was in control
    if st.source and (loaded := _load(group, *st.source.split(".", 1), cache)) is not None:
        ts, names = loaded
        codes = np.array([SOURCES.index(s) if s in SOURCES else -1 for s in names], np.int8)
        idx = _held(ts, t + dt - 1e-9)
        source[idx >= 0] = codes[idx[idx >= 0]]
    out["source"] = source
    inter = np.zeros(n, bool)
    if st.intervention and (loaded := _load(group, *st.intervention.split(".", 1), cache)) is not None:
        ts, flags = loaded
        idx = _held(ts, t + dt - 1e-9)
        inter[idx >= 0] = flags[idx[idx >= 0]].astype(bool)
    out["intervention"] = inter
    out["reward"] = np.zeros(n, np.float32)
    out["done"] = np.zeros(n, bool)
    if n:
        out["done"][-1] = True
        out["reward"][-1] = 1.0 if success else 0.0
    for name, g in (group["streams"].groups() if "streams" in group else []):
        if "t" in g and g["t"].shape[0]:
            out[f"index/{name}"] = _held(g["t"][:], t).astype(np.int64)
    return out


def intervention_segments(group: zarr.Group, recipe: Recipe, t_end: float,
                          cache: dict | None = None) -> list[list[float]]:
    """[start, end] stamps of each stretch where the intervention flag was on."""
    if not recipe.steps.intervention:
        return []
    loaded = _load(group, *recipe.steps.intervention.split(".", 1), cache)
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


def write_steps(group: zarr.Group, recipe: Recipe, success: bool | None, t_end: float | None = None) -> dict:
    """(Re)write ``steps/`` and return the episode metadata that describes it."""
    if "steps" in group:
        del group["steps"]
    cache: dict = {}  # each stream array is read from disk once for the whole table
    steps = build_steps(group, recipe, success, t_end, cache)
    g = group.create_group("steps")
    for k, v in steps.items():
        parent, _, leaf = k.rpartition("/")
        sub = g.require_group(parent) if parent else g
        sub.create_array(leaf, data=v, chunks=(max(1, min(len(v), 4096)), *v.shape[1:]))
    t = steps["t"]
    counts = {n: int(s["t"].shape[0]) for n, s in group["streams"].groups() if "t" in s}
    end = float(t[-1]) if len(t) else (t_end or 0.0)
    return {
        "n_steps": int(len(t)), "t_start": float(t[0]) if len(t) else None, "t_end": end,
        "duration": float(t[-1] - t[0]) if len(t) else 0.0, "success": success,
        "control_rate": recipe.steps.rate, "stream_counts": counts,
        "interventions": intervention_segments(group, recipe, end, cache),
        "action_dim": int(steps["action"].shape[1]),
    }
