"""Camera intrinsics from views of the ChArUco board (OpenCV's ``calibrateCamera``), written in
camera_calibration's YAML (what ``cameracalibrator`` and camera_info_manager use), with the
reprojection error and a picture of where in the image the board was seen: corners that
never reach the image's edges leave the distortion there unconstrained."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import yaml

from robot_learning.calibrate.board import Board, Detection, detect
from robot_learning.devices.camera import Intrinsics


class CalibrationError(RuntimeError):
    """Calibration could not be done as asked; the message says what to change."""


@dataclass
class IntrinsicsResult:
    intrinsics: Intrinsics
    rms_px: float                      # reprojection error over every corner of every view
    views: int                         # frames where the board was found (of ``frames``)
    frames: int
    per_view_px: list[float] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)


def calibrate_intrinsics(board: Board, frames: list[np.ndarray], min_views: int = 8) -> IntrinsicsResult:
    """Pinhole intrinsics and plumb_bob distortion (k1 k2 t1 t2 k3) from ``frames``."""
    if not frames:
        raise CalibrationError("no frames to calibrate from")
    h, w = frames[0].shape[:2]
    dets = [d for d in (detect(board, f) for f in frames) if d is not None and _spread(d)]
    if len(dets) < min_views:
        raise CalibrationError(f"the board was found in {len(dets)} of {len(frames)} frames and at least "
                               f"{min_views} are needed: show it at more places, distances and angles "
                               "(and check calibration/charuco.yaml matches the printed board)")
    obj = [d.object_points.astype(np.float32) for d in dets]
    img = [d.image_points.astype(np.float32) for d in dets]
    try:
        rms, k, dist, rvecs, tvecs = cv2.calibrateCamera(obj, img, (w, h), None, None)
    except cv2.error as e:
        raise CalibrationError(f"OpenCV could not solve for the intrinsics ({str(e).strip().splitlines()[-1]}): "
                               "take views with more of the board in them") from None
    per_view = []
    for o, i, r, t in zip(obj, img, rvecs, tvecs):
        proj, _ = cv2.projectPoints(o, r, t, k, dist)
        per_view.append(float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - i) ** 2, axis=1)))))
    coeffs = tuple(float(x) for x in np.ravel(dist)[:5])
    intr = Intrinsics(w, h, float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]), "plumb_bob", coeffs)
    return IntrinsicsResult(intr, float(rms), len(dets), len(frames), per_view, dets)


def _spread(d: Detection) -> bool:
    """Corners over at least 3 columns and 2 rows of the board: a view that sees one row of
    corners (nearly a line) fixes no homography and breaks OpenCV's initial guess."""
    return len(np.unique(d.object_points[:, 0])) >= 3 and len(np.unique(d.object_points[:, 1])) >= 2


def write_camera_info(path: str | Path, result: IntrinsicsResult, camera_name: str) -> Path:
    """camera_calibration's YAML (``uvc``'s ``camera_info`` parameter and camera_info_manager read it)."""
    i = result.intrinsics
    doc = {
        "image_width": i.width, "image_height": i.height, "camera_name": camera_name,
        "camera_matrix": {"rows": 3, "cols": 3, "data": i.k},
        "distortion_model": i.distortion_model,
        "distortion_coefficients": {"rows": 1, "cols": len(i.coeffs), "data": list(i.coeffs)},
        "rectification_matrix": {"rows": 3, "cols": 3, "data": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]},
        "projection_matrix": {"rows": 3, "cols": 4,
                              "data": [i.fx, 0.0, i.cx, 0.0, 0.0, i.fy, i.cy, 0.0, 0.0, 0.0, 1.0, 0.0]},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (f"# {camera_name}: calibrated {datetime.now():%Y-%m-%d %H:%M} by `robot-learning calibrate intrinsics`\n"
            f"# reprojection error {result.rms_px:.3f} px over {result.views} views of {result.frames} frames\n")
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(head + yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)
    return path


def coverage_image(result: IntrinsicsResult) -> np.ndarray:
    """Every detected corner over the image area, one colour per view, with the error per view:
    where the board was never seen, the calibration is a guess."""
    i = result.intrinsics
    canvas = np.full((i.height, i.width, 3), 255, np.uint8)
    rng = np.random.default_rng(0)
    for d, err in zip(result.detections, result.per_view_px):
        colour = tuple(int(c) for c in rng.integers(40, 200, 3))
        hull = cv2.convexHull(d.image_points.astype(np.float32)).astype(np.int32)
        cv2.polylines(canvas, [hull], True, colour, 1, cv2.LINE_AA)
        for x, y in d.image_points:
            cv2.circle(canvas, (int(round(x)), int(round(y))), 2, colour, -1, cv2.LINE_AA)
        x, y = hull[hull[:, 0, 1].argmin(), 0]  # the view's error by its topmost corner
        cv2.putText(canvas, f"{err:.2f}", (int(x), int(y) - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1,
                    cv2.LINE_AA)
    cv2.putText(canvas, f"{result.views} views, reprojection error {result.rms_px:.3f} px", (10, 25),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
