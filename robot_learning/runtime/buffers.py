"""Short timestamped buffers of each observation stream, and the policy input built from them.

Samples are what the recorder stores (``data.convert.to_sample``), so the keys and units a
policy sees at run time are the ones it was trained on. The input is aligned to one
reference time: the newest camera frame when the policy uses images (the slowest, most
delayed stream), else the newest moment every stream has reached. Each of the
``obs_horizon`` observations is the newest sample at or before its time, the same
sample-and-hold rule the dataset's step table uses, and never a sample from the future.
"""

from __future__ import annotations

import bisect
from collections import deque

import numpy as np

from robot_learning.data.sampler import resize_frame


class StreamBuffer:
    def __init__(self, keep_s: float):
        self.keep_s = keep_s
        self.t: deque[float] = deque()
        self.v: deque[dict[str, np.ndarray]] = deque()

    def add(self, t: float, arrays: dict[str, np.ndarray]) -> None:
        if self.t and t <= self.t[-1]:
            return  # out of order or repeated: the newest sample stays the newest
        self.t.append(t)
        self.v.append(arrays)
        while len(self.t) > 2 and self.t[1] < t - self.keep_s:
            self.t.popleft()
            self.v.popleft()

    def newest(self) -> float | None:
        return self.t[-1] if self.t else None

    def at(self, t: float) -> dict[str, np.ndarray]:
        """Newest sample at or before ``t``; the oldest one when ``t`` is before all of them
        (the padding training uses at the start of an episode)."""
        i = bisect.bisect_right(self.t, t) - 1
        return self.v[max(i, 0)]


class ObsBuffers:
    def __init__(self, obs_keys: list[str], image_keys: list[str], obs_horizon: int, dt: float,
                 image_size: tuple[int, int] | None = None, keep_s: float = 2.0, image_rois: dict | None = None):
        self.obs_keys, self.image_keys = list(obs_keys), list(image_keys)
        self.obs_horizon, self.dt, self.image_size = obs_horizon, dt, image_size
        self.image_rois = dict(image_rois or {})
        self.streams = sorted({k.split(".", 1)[0] for k in self.obs_keys} | set(self.image_keys))
        self.buffers = {s: StreamBuffer(keep_s + obs_horizon * dt) for s in self.streams}

    def add(self, stream: str, t: float, arrays: dict[str, np.ndarray]) -> None:
        if stream in self.buffers:
            self.buffers[stream].add(t, arrays)

    def clear(self) -> None:
        self.buffers = {s: StreamBuffer(b.keep_s) for s, b in self.buffers.items()}

    def missing(self) -> list[str]:
        return [s for s, b in self.buffers.items() if b.newest() is None]

    def newest(self, key: str) -> tuple[float, np.ndarray] | None:
        """(stamp, value) of the newest sample of ``<stream>.<array>``, or None."""
        stream, array = key.split(".", 1)
        b = self.buffers.get(stream)
        if b is None or b.newest() is None:
            return None
        return b.t[-1], np.asarray(b.v[-1][array], np.float64).ravel()

    def reference_time(self) -> float | None:
        if self.missing():
            return None
        keys = self.image_keys or self.streams
        return min(self.buffers[s].newest() for s in keys)

    def window(self) -> tuple[float, dict[str, np.ndarray]] | None:
        """(reference time, {t: [To], obs/<key>: [To, ...], image/<stream>: [To, H, W(, C)]}) or None
        while some stream has not delivered anything yet."""
        t_ref = self.reference_time()
        if t_ref is None:
            return None
        times = t_ref - self.dt * np.arange(self.obs_horizon - 1, -1, -1)
        out: dict[str, np.ndarray] = {"t": times}
        for key in self.obs_keys:
            stream, array = key.split(".", 1)
            out[f"obs/{key}"] = np.stack([np.asarray(self.buffers[stream].at(t)[array], np.float32).ravel()
                                          for t in times])
        for cam in self.image_keys:
            frames = [self.buffers[cam].at(t)["data"] for t in times]
            if self.image_size is not None:
                frames = [resize_frame(f, self.image_size, roi=self.image_rois.get(cam)) for f in frames]
            out[f"image/{cam}"] = np.stack(frames)
        return float(t_ref), out
