"""Visuotactile sensors (GelSight-class: a camera looking at a marked elastomer) as taxel grids.

What the sensor's camera sees becomes what the sim's fingertip pads publish, so a recipe and a
trained policy do not change between sim and robot: a (rows, cols, 3) grid in the pad frame
(x along the finger's width, y along its length, z the normal push), plus a net wrench.

- Difference image: how far each pixel moved from a reference frame of the untouched gel
  (taken at start-up, or on request).
- Markers: the gel's dark dots, found in the reference and followed frame to frame (each to the
  nearest dot within ``max_marker_shift_px``); their displacement is the shear field.
- Taxel grid: each cell's mean marker displacement (x, y) and mean difference intensity (z),
  scaled by the calibration to newtons (``hardware/tactile/*.yaml``: ``shear_n_per_px``,
  ``normal_n_per_level``).
- Contact mask: pixels whose difference exceeds ``contact_threshold``.
- Net wrench: a linear calibration (``wrench_matrix`` 6x4 and ``wrench_bias``) of the summed
  shear (x, y), the summed normal and the contact area fraction, fitted against a force/torque
  sensor; the default is the sum of the taxel forces with no torque.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class VisuotactileConfig:
    rows: int = 4
    cols: int = 4
    marker_max_level: int = 80           # a marker pixel is darker than this (0-255 grey)
    marker_min_area_px: int = 6          # smaller dark specks are noise
    max_marker_shift_px: float = 12.0    # a marker moved further than this is lost for the frame
    contact_threshold: float = 12.0      # grey levels of difference that count as contact
    shear_n_per_px: float = 0.05         # newtons of shear per pixel of marker displacement
    normal_n_per_level: float = 0.02     # newtons of normal force per grey level of difference
    wrench_matrix: np.ndarray = field(default_factory=lambda: np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], float))
    wrench_bias: np.ndarray = field(default_factory=lambda: np.zeros(6))

    @classmethod
    def from_dict(cls, d: dict) -> VisuotactileConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        cfg.wrench_matrix = np.asarray(cfg.wrench_matrix, float).reshape(6, 4)
        cfg.wrench_bias = np.asarray(cfg.wrench_bias, float).reshape(6)
        return cfg


@dataclass
class TactileReading:
    taxels: np.ndarray        # (rows, cols, 3) float32 newtons: shear x, shear y, normal
    wrench: np.ndarray        # (6,) force xyz, torque xyz in the pad frame
    contact: np.ndarray       # (H, W) uint8, 255 where in contact
    difference: np.ndarray    # (H, W) float32 grey levels from the reference
    displacement: np.ndarray  # (M, 2) pixels each reference marker moved (NaN: lost this frame)
    markers: np.ndarray       # (M, 2) reference marker centres (x, y) pixels


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


def find_markers(grey: np.ndarray, max_level: int, min_area: int) -> np.ndarray:
    """Centres (x, y) of the dark blobs, intensity-weighted for sub-pixel accuracy."""
    mask = (grey < max_level).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    weight = (max_level - grey.astype(np.float64)).clip(min=0)
    ys, xs = np.indices(grey.shape)
    out = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_area:
            continue
        x0, y0, w, h = (stats[i, k] for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                              cv2.CC_STAT_HEIGHT))
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        wt = weight[sl] * (labels[sl] == i)
        s = wt.sum()
        out.append(((xs[sl] * wt).sum() / s, (ys[sl] * wt).sum() / s))
    return np.array(out, float).reshape(-1, 2)


class Visuotactile:
    """Turns a visuotactile camera's frames into taxel grids (see the module)."""

    def __init__(self, cfg: VisuotactileConfig | None = None):
        self.cfg = cfg or VisuotactileConfig()
        self.reference: np.ndarray | None = None
        self.ref_markers = np.zeros((0, 2))

    def set_reference(self, image: np.ndarray) -> int:
        """The untouched gel. Returns how many markers it shows (0: check the lighting and
        ``marker_max_level``; the shear field then stays zero)."""
        grey = _grey(image)
        self.reference = grey.astype(np.float32)
        self.ref_markers = find_markers(grey, self.cfg.marker_max_level, self.cfg.marker_min_area_px)
        return len(self.ref_markers)

    def process(self, image: np.ndarray) -> TactileReading:
        if self.reference is None:
            self.set_reference(image)
        c = self.cfg
        grey = _grey(image)
        diff = np.abs(grey.astype(np.float32) - self.reference)
        contact = np.where(cv2.GaussianBlur(diff, (5, 5), 0) > c.contact_threshold, 255, 0).astype(np.uint8)
        now = find_markers(grey, c.marker_max_level, c.marker_min_area_px)
        disp = np.full_like(self.ref_markers, np.nan)
        if len(now) and len(self.ref_markers):
            d2 = ((self.ref_markers[:, None, :] - now[None, :, :]) ** 2).sum(-1)
            nearest = d2.argmin(1)
            ok = d2[np.arange(len(nearest)), nearest] <= c.max_marker_shift_px ** 2
            disp[ok] = now[nearest[ok]] - self.ref_markers[ok]
        h, w = grey.shape
        taxels = np.zeros((c.rows, c.cols, 3), np.float32)
        if len(self.ref_markers):
            col = np.clip((self.ref_markers[:, 0] / w * c.cols).astype(int), 0, c.cols - 1)
            row = np.clip((self.ref_markers[:, 1] / h * c.rows).astype(int), 0, c.rows - 1)
            for r in range(c.rows):
                for k in range(c.cols):
                    cell = disp[(row == r) & (col == k)]
                    cell = cell[np.isfinite(cell[:, 0])]
                    if len(cell):
                        taxels[r, k, :2] = cell.mean(0) * c.shear_n_per_px
        cells = diff[: h - h % c.rows, : w - w % c.cols].reshape(c.rows, h // c.rows, c.cols, w // c.cols)
        taxels[:, :, 2] = cells.mean(axis=(1, 3)) * c.normal_n_per_level
        features = np.r_[taxels[:, :, 0].sum(), taxels[:, :, 1].sum(), taxels[:, :, 2].sum(),
                         float((contact > 0).mean())]
        wrench = c.wrench_matrix @ features + c.wrench_bias
        return TactileReading(taxels, wrench, contact, diff, disp, self.ref_markers)
