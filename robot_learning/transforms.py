"""Rotation helpers. Quaternions are (w, x, y, z) inside the library, as MuJoCo uses;
ROS messages use (x, y, z, w): convert at the node boundary with ``wxyz_to_xyzw``."""

from __future__ import annotations

import numpy as np


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ])


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def mat_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrix to a unit quaternion with w >= 0."""
    t = np.trace(m)
    if t > 0:
        s = 2.0 * np.sqrt(t + 1.0)
        q = np.array([0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = np.empty(4)
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def axis_angle_quat(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    return np.concatenate([[np.cos(angle / 2)], np.sin(angle / 2) * axis])


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    """Rotation vector (axis times angle, angle in [0, pi]) of a quaternion."""
    q = np.asarray(q, dtype=float) / np.linalg.norm(q)
    if q[0] < 0:
        q = -q
    s = np.linalg.norm(q[1:])
    if s < 1e-12:
        return 2.0 * q[1:]
    return q[1:] / s * 2.0 * np.arctan2(s, q[0])


def orientation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """World-frame rotation vector that takes ``current`` onto ``target``."""
    return quat_to_rotvec(quat_mul(target, quat_conj(current)))


def quat_slerp(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    """The rotation a fraction ``s`` of the way from ``a`` to ``b`` (w x y z), the short way round."""
    rv = orientation_error(b, a) * s
    angle = np.linalg.norm(rv)
    step = np.r_[1.0, 0.5 * rv] if angle < 1e-12 else np.r_[np.cos(angle / 2), np.sin(angle / 2) * rv / angle]
    out = quat_mul(step, np.asarray(a, dtype=float))
    return out / np.linalg.norm(out)


def yaw_of(q: np.ndarray) -> float:
    """Heading of the frame's x axis in the world xy plane."""
    m = quat_to_mat(q)
    return float(np.arctan2(m[1, 0], m[0, 0]))


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """One quaternion or an array of them along the last axis."""
    return np.asarray(q, dtype=float)[..., [1, 2, 3, 0]]


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """One quaternion or an array of them along the last axis."""
    return np.asarray(q, dtype=float)[..., [3, 0, 1, 2]]


# A ROS optical frame (z forward, x right, y down) and a MuJoCo camera frame (looks down -z,
# y up) differ by half a turn about x.
OPTICAL_TO_MUJOCO_CAM = np.array([0.0, 1.0, 0.0, 0.0])


def look_at_optical(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Quaternion (w, x, y, z) of an optical frame at ``eye`` looking at ``target``."""
    z = np.asarray(target, float) - np.asarray(eye, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return mat_to_quat(np.stack([x, y, z], axis=1))


def pointing_down(yaw: float) -> np.ndarray:
    """The hand pointing at the table (TCP z down) turned by ``yaw`` about the base z axis (w x y z):
    the orientation scripted moves and the insertion task hold the hand in."""
    return quat_mul(axis_angle_quat([0, 0, 1], yaw), np.array([0.0, 1.0, 0.0, 0.0]))
