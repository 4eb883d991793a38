"""Training windows straight from a dataset's step tables.

A window around step t holds the ``obs_horizon`` observations ending at t and the
``pred_horizon`` actions starting at t - obs_horizon + 1. At the edges of an episode the
window is padded, never filled from a neighbouring episode: before the first step with the
first observation and action; after the last step with the last observation, and with the
last action for absolute dimensions (a position held) but zero for velocity dimensions (the
arm stopped, it did not keep moving).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from robot_learning.data.store import Dataset


@dataclass
class WindowSpec:
    obs_horizon: int = 2
    pred_horizon: int = 16
    obs_keys: tuple[str, ...] = ("joint_states.position",)   # steps/obs keys
    image_keys: tuple[str, ...] = ()                          # camera streams, read by frame index
    image_size: tuple[int, int] = (96, 96)                    # frames are cached at this size (H, W)
    zero_pad_dims: tuple[int, ...] = (0, 1, 2, 3, 4, 5)       # velocity action dims: zero after the end
    extra: dict = field(default_factory=dict)


def resize_frame(frame: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """A camera frame at the policy's input size (H, W); area averaging, as when training
    (``nearest``: nearest neighbour, for depth, where averaging invents values never measured)."""
    import cv2

    if frame.shape[:2] == tuple(size):
        return frame
    return cv2.resize(frame, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST if nearest
                      else cv2.INTER_AREA)


class WindowSampler:
    """Windows of every episode (or of ``episodes``), indexable like a dataset."""

    def __init__(self, dataset: Dataset, spec: WindowSpec, episodes: list[int] | None = None,
                 progress: bool = False):
        self.spec = spec
        self.episodes = []
        for idx in tqdm(episodes if episodes is not None else dataset.indices, desc="load episodes", unit="ep",
                        disable=not progress):
            ep = dataset.episode(idx)
            if ep.n_steps == 0:
                continue
            obs = {k: ep.steps["obs"][k][:].reshape(ep.n_steps, -1).astype(np.float32) for k in spec.obs_keys}
            images = {}
            for cam in spec.image_keys:
                rows = ep.steps["index"][cam][:]
                data = ep.streams[cam]["data"]
                frames = {}
                for r in np.unique(rows[rows >= 0]):
                    f = data[int(r)]
                    frames[int(r)] = resize_frame(f, spec.image_size)
                first = frames[int(rows[rows >= 0][0])] if frames else np.zeros((*spec.image_size, 3), np.uint8)
                images[cam] = np.stack([frames.get(int(r), first) for r in rows])  # [T, h, w(, c)]
            self.episodes.append({"obs": obs, "images": images,
                                  "action": ep.steps["action"][:].astype(np.float32), "n": ep.n_steps})
        self.index = [(e, t) for e, ep in enumerate(self.episodes) for t in range(ep["n"])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        e, t = self.index[i]
        ep = self.episodes[e]
        n, to, tp = ep["n"], self.spec.obs_horizon, self.spec.pred_horizon
        obs_rows = np.clip(np.arange(t - to + 1, t + 1), 0, n - 1)
        act_rows = np.arange(t - to + 1, t - to + 1 + tp)
        action = ep["action"][np.clip(act_rows, 0, n - 1)].copy()
        after = act_rows > n - 1
        if after.any() and self.spec.zero_pad_dims:
            action[np.ix_(after, list(self.spec.zero_pad_dims))] = 0.0
        out = {f"obs/{k}": v[obs_rows] for k, v in ep["obs"].items()}
        out.update({f"image/{k}": v[obs_rows] for k, v in ep["images"].items()})
        out["action"] = action
        out["action_is_pad"] = (act_rows < 0) | after
        return out

    def all_actions(self) -> np.ndarray:
        return np.concatenate([e["action"] for e in self.episodes])

    def window_actions(self, origin: str) -> np.ndarray:
        """Every window's actions [windows * pred_horizon, A] with the first three values taken
        relative to observation ``origin``'s position at the window's newest step: the range a
        policy predicting relative positions must normalize (actions up to pred_horizon steps
        ahead lie farther from the TCP than the step's own action)."""
        to, tp = self.spec.obs_horizon, self.spec.pred_horizon
        out = []
        for ep in self.episodes:
            n = ep["n"]
            rows = np.clip(np.arange(n)[:, None] + np.arange(tp)[None, :] - to + 1, 0, n - 1)
            a = ep["action"][rows].copy()                       # [n, tp, A] (absolute dims held at the ends)
            a[..., :3] -= ep["obs"][origin][:, None, :3]
            out.append(a.reshape(-1, a.shape[-1]))
        return np.concatenate(out)

    def all_obs(self, key: str) -> np.ndarray:
        return np.concatenate([e["obs"][key] for e in self.episodes])
