"""Hand-eye calibration: where a camera sits, from the arm's own poses (its forward kinematics)
and the board's pose in each camera view, by Park and Martin's closed form (the AX = XB
problem; OpenCV 5's Python bindings no longer carry ``calibrateHandEye``).

- *eye in hand* (a wrist camera): the board lies still in the cell, the arm carries the
  camera through a set of poses; the result is the camera's optical frame in the hand frame.
- *eye to hand* (a fixed camera): the board rides on the hand, the arm shows it to the camera;
  the result is the camera's optical frame in the robot's base frame.

Either way the result is the ``translation`` / ``rotation_xyzw`` of the camera's entry in
``calibration/workcell.yaml``, with a residual: how far the board's pose (fixed in the world,
or in the hand) disagrees between views once the solution is applied.

The closed form works on the board poses PnP gives per view, whose depth is the least certain
part at a metre from the camera; the solution is then refined, with the board's fixed pose, on
the corners' reprojection error over all views together (SciPy's least squares), which is what
the pixels actually measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from robot_learning.calibrate.board import Board, Detection, detect
from robot_learning.calibrate.intrinsics import CalibrationError
from robot_learning.devices.camera import Intrinsics
from robot_learning.transforms import mat_to_quat, wxyz_to_xyzw

Pose = tuple[np.ndarray, np.ndarray]  # (R 3x3, t 3)


@dataclass
class HandEyeResult:
    rotation: np.ndarray          # camera optical frame in the hand (eye in hand) or base (eye to hand)
    translation: np.ndarray
    views: int
    residual_mm: float            # spread of the board's pose across views under this solution (RMS)
    residual_deg: float
    reprojection_px: float        # RMS corner error over all views, board and camera fitted together

    @property
    def rotation_xyzw(self) -> np.ndarray:
        return wxyz_to_xyzw(mat_to_quat(self.rotation))


@dataclass
class BoardView:
    pose: Pose                   # the board in the camera's optical frame (PnP)
    detection: Detection


def board_in_camera(board: Board, frame: np.ndarray, intr: Intrinsics) -> BoardView | None:
    """The board's pose in the camera's optical frame (PnP on its corners); None when not seen."""
    d = detect(board, frame, min_corners=8)
    if d is None:
        return None
    ok, rvec, tvec = cv2.solvePnP(d.object_points, d.image_points, _k(intr), np.array(intr.coeffs),
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    return BoardView((cv2.Rodrigues(rvec)[0], tvec.reshape(3)), d)


def _k(intr: Intrinsics) -> np.ndarray:
    return np.array(intr.k, float).reshape(3, 3)


def _inv(p: Pose) -> Pose:
    return p[0].T, -p[0].T @ p[1]


def _mul(a: Pose, b: Pose) -> Pose:
    return a[0] @ b[0], a[0] @ b[1] + a[1]


def _log_rot(r: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(r)[0].reshape(3)


def park_martin(moving: list[Pose], seen: list[Pose]) -> Pose:
    """X with ``moving[i] X seen[i]`` the same for every i. For each pair of views, A X = X B
    with A = moving[j]^-1 moving[i] and B = seen[j] seen[i]^-1: the rotation from the axes of
    A and B (least squares over the pairs), then the translation from (R_A - I) t = R t_B - t_A."""
    pairs = [(i, j) for i in range(len(moving)) for j in range(i + 1, len(moving))]
    a = [_mul(_inv(moving[j]), moving[i]) for i, j in pairs]
    b = [_mul(seen[j], _inv(seen[i])) for i, j in pairs]
    m = sum(np.outer(_log_rot(bb[0]), _log_rot(aa[0])) for aa, bb in zip(a, b))
    w, v = np.linalg.eigh(m.T @ m)
    if w.min() < 1e-12:
        raise CalibrationError("the hand turned about one axis only: the camera's rotation is not determined "
                               "(turn it about at least two different axes)")
    r = v @ np.diag(w ** -0.5) @ v.T @ m.T
    lhs = np.concatenate([aa[0] - np.eye(3) for aa in a])
    rhs = np.concatenate([r @ bb[1] - aa[1] for aa, bb in zip(a, b)])
    t = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return r, t


def solve_hand_eye(hand_in_base: list[Pose], views: list[BoardView], eye_in_hand: bool,
                   intr: Intrinsics) -> HandEyeResult:
    """The camera's pose (see the module) from matched views: the hand's pose in the base frame
    and the board's view in the camera, for each."""
    from scipy.optimize import least_squares

    if len(hand_in_base) != len(views):
        raise ValueError("one hand pose per board view")
    if len(hand_in_base) < 5:
        raise CalibrationError(f"{len(hand_in_base)} usable views; at least 5 (better 15), with the hand turned "
                               "about different axes, are needed")
    # eye in hand: hand_i X board_i is the board in the base, the same for every view; eye to
    # hand: hand_i^-1 X board_i is the board in the hand (X the camera in the base)
    moving = hand_in_base if eye_in_hand else [_inv(p) for p in hand_in_base]
    x0 = park_martin(moving, [v.pose for v in views])
    z0 = _mul(_mul(moving[0], x0), views[0].pose)
    k, dist = _k(intr), np.array(intr.coeffs, float)

    def residuals(params: np.ndarray) -> np.ndarray:
        x, z = _pose(params[:6]), _pose(params[6:])
        x_inv = _inv(x)
        out = []
        for m, v in zip(moving, views):
            r, t = _mul(_mul(x_inv, _inv(m)), z)  # the board in the camera, as predicted
            proj, _ = cv2.projectPoints(v.detection.object_points, cv2.Rodrigues(r)[0], t, k, dist)
            out.append((proj.reshape(-1, 2) - v.detection.image_points).ravel())
        return np.concatenate(out)

    fit = least_squares(residuals, np.r_[_vec(x0), _vec(z0)], method="lm")
    x, z = _pose(fit.x[:6]), _pose(fit.x[6:])
    # the board should stay put: in the base (eye in hand) or in the hand (eye to hand)
    fixed = [_mul(_mul(m, x), v.pose) for m, v in zip(moving, views)]
    ts = np.array([f[1] for f in fixed])
    angles = [np.degrees(np.linalg.norm(cv2.Rodrigues(z[0].T @ f[0])[0])) for f in fixed]
    return HandEyeResult(x[0], x[1], len(fixed), float(np.sqrt(np.mean(np.sum((ts - z[1]) ** 2, 1)))) * 1e3,
                         float(np.sqrt(np.mean(np.square(angles)))),
                         float(np.sqrt(np.mean(np.square(fit.fun)) * 2)))


def _vec(p: Pose) -> np.ndarray:
    return np.r_[cv2.Rodrigues(p[0])[0].ravel(), p[1]]


def _pose(v: np.ndarray) -> Pose:
    return cv2.Rodrigues(np.asarray(v[:3], float))[0], np.asarray(v[3:6], float)


def _axis_angle(axis: np.ndarray, deg: float) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(axis, float) / np.linalg.norm(axis) * np.radians(deg))[0]


def orbit_poses(start: Pose, pivot: np.ndarray, n: int, seed: int = 0, tilt_deg: float = 20.0,
                spin_deg: float = 30.0, shift: float = 0.04) -> list[Pose]:
    """``n`` hand poses that keep a camera aimed near ``pivot`` (a point it sees from ``start``):
    the start pose turned about the pivot by up to ``tilt_deg`` about two horizontal axes and
    ``spin_deg`` about the vertical, then shifted by up to ``shift`` metres. Rotations about
    different axes are what make a hand-eye problem well posed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rot = (_axis_angle([0, 0, 1], rng.uniform(-spin_deg, spin_deg))
               @ _axis_angle([1, 0, 0], rng.uniform(-tilt_deg, tilt_deg))
               @ _axis_angle([0, 1, 0], rng.uniform(-tilt_deg, tilt_deg)))
        p = pivot + rot @ (start[1] - pivot) + rng.uniform(-shift, shift, 3)
        out.append((rot @ start[0], p))
    return out
