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
    # camera -> (x0, y0, x1, y1): the region of the frame, in fractions of its width and height,
    # that is resized to image_size (the rest of the view is cut away); absent: the whole frame
    image_rois: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


Roi = tuple[float, float, float, float]


def parse_rois(items: list[str] | tuple[str, ...], flag: str = "--image-roi") -> dict[str, Roi]:
    """``camera:x0:y0:x1:y1`` items (fractions of the frame's width and height) as a dict; a
    malformed item is refused with one sentence that shows the form."""
    rois: dict[str, Roi] = {}
    for item in items:
        cam, *vals = str(item).split(":")
        try:
            roi = tuple(float(v) for v in vals)
        except ValueError:
            roi = ()
        if not cam or len(roi) != 4 or not (0 <= roi[0] < roi[2] <= 1 and 0 <= roi[1] < roi[3] <= 1):
            raise ValueError(f"{flag} takes camera:x0:y0:x1:y1, fractions of the frame with x0 < x1 and y0 < y1 "
                             f"(e.g. front_color:0.23:0.27:0.84:0.78), not '{item}'")
        rois[cam] = roi  # type: ignore[assignment]
    return rois


def crop_roi(frame: np.ndarray, roi: Roi | None) -> np.ndarray:
    """The part of ``frame`` inside ``roi`` (fractions of its width and height), whole pixels."""
    if roi is None:
        return frame
    h, w = frame.shape[:2]
    x0, x1 = round(roi[0] * w), max(round(roi[2] * w), round(roi[0] * w) + 1)
    y0, y1 = round(roi[1] * h), max(round(roi[3] * h), round(roi[1] * h) + 1)
    return frame[y0:y1, x0:x1]


def resize_frame(frame: np.ndarray, size: tuple[int, int], nearest: bool = False, roi: Roi | None = None) -> np.ndarray:
    """A camera frame (its ``roi`` if given) at the policy's input size (H, W); area averaging,
    as when training (``nearest``: nearest neighbour, for depth, where averaging invents values
    never measured). Training, the shrunk copy and the policy server all come through here, so
    a policy sees at run time the pixels it trained on."""
    import cv2

    frame = crop_roi(frame, roi)
    if frame.shape[:2] == tuple(size):
        return frame
    return cv2.resize(frame, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST if nearest
                      else cv2.INTER_AREA)


def _fmt(roi) -> str:
    return "[" + ", ".join(f"{v:g}" for v in roi) + "]"


def shrunk_rois(attrs) -> dict[str, Roi]:
    """Camera -> the region ``dataset shrink --roi`` already cut from an episode's frames."""
    return {k: tuple(v) for k, v in dict(attrs.get("shrunk", {}) or {}).get("rois", {}).items()}


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
            cropped = shrunk_rois(ep.meta)
            for cam in spec.image_keys:
                rows = ep.steps["index"][cam][:]
                data = ep.streams[cam]["data"]
                roi = spec.image_rois.get(cam)
                if cropped.get(cam) is not None:   # the shrunk copy cut it already
                    if roi is None or not np.allclose(roi, cropped[cam]):
                        raise ValueError(f"episode {idx}'s {cam} frames are the region {_fmt(cropped[cam])} of the "
                                         f"camera's view (dataset shrink --roi), not {_fmt(roi or (0, 0, 1, 1))}: "
                                         "train with that region, or shrink the original again")
                    roi = None
                frames = {}
                for r in np.unique(rows[rows >= 0]):
                    frames[int(r)] = resize_frame(data[int(r)], spec.image_size, roi=roi)
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
