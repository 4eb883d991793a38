"""Forward kinematics and Jacobians of the arm, computed by MuJoCo on an arm-only model.

The model comes from the same hardware YAML as the sim, so a real-robot backend gets the
same kinematics as the simulated one without a second description to keep in sync.
"""

from __future__ import annotations

import mujoco
import numpy as np

from robot_learning.config import RobotConfig
from robot_learning.sim.model import TCP_SITE, robot_only_xml


class Kinematics:
    """TCP pose and Jacobian for joint positions; not thread-safe (own one per thread)."""

    def __init__(self, robot: RobotConfig):
        self.robot = robot
        self.model = mujoco.MjModel.from_xml_string(robot_only_xml(robot))
        self.data = mujoco.MjData(self.model)
        self.site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, TCP_SITE)
        self.qadr = np.array([
            self.model.jnt_qposadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, j)]
            for j in robot.joint_names
        ])
        self.dofadr = np.array([
            self.model.jnt_dofadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, j)]
            for j in robot.joint_names
        ])
        self._jp = np.zeros((3, self.model.nv))
        self._jr = np.zeros((3, self.model.nv))
        self._q: np.ndarray | None = None  # the joints the data's kinematics are for
        self._com = False                  # and whether mj_comPos ran for them

    def _set(self, q: np.ndarray) -> None:
        """Kinematics at ``q``, recomputed only when ``q`` changed: a control period asks for the
        same joints up to three times (twist target, Jacobian, the safety filter's check)."""
        if self._q is not None and np.array_equal(q, self._q):
            return
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        self._q = np.array(q, dtype=float)
        self._com = False

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position and quaternion (w, x, y, z) in the base frame."""
        self._set(q)
        pos = self.data.site_xpos[self.site].copy()
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self.site])
        return pos, quat

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """6 x dof Jacobian (linear rows first) of the TCP, base frame."""
        self._set(q)
        if not self._com:
            mujoco.mj_comPos(self.model, self.data)
            self._com = True
        mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self.site)
        return np.concatenate((self._jp[:, self.dofadr], self._jr[:, self.dofadr]))


def damped_pinv_step(jac: np.ndarray, twist: np.ndarray, v_null: np.ndarray | None = None,
                     damping: float = 0.05) -> np.ndarray:
    """Joint velocity for a TCP twist by damped least squares, well behaved near singularities.

    ``v_null``: a joint velocity also pursued where it does not disturb the twist, i.e.
    projected through the damped nullspace projector I - J^T (J J^T + d^2 I)^-1 J. Written as
    v + J^T (J J^T + d^2 I)^-1 (twist - J v): the same result with one 6x6 solve per period."""
    jjt = jac @ jac.T
    jjt.flat[::jjt.shape[0] + 1] += damping**2
    if v_null is None:
        return jac.T @ np.linalg.solve(jjt, twist)
    return v_null + jac.T @ np.linalg.solve(jjt, twist - jac @ v_null)


def tcp_positions(robot: RobotConfig, qs: np.ndarray) -> np.ndarray:
    """TCP positions (n, 3) for many joint vectors (n, dof) at once, from the DH table.

    The same chain the MJCF is built from (modified DH, flange, TCP on the hand's z axis),
    evaluated in numpy for all rows together: a long trajectory is checked point by point
    against the workspace box in milliseconds, where one MuJoCo call per point took 30 us
    each and a 20,000-point plan held the control loop for over half a second."""
    qs = np.atleast_2d(np.asarray(qs, dtype=float))
    n = qs.shape[0]
    # the rotation's columns (the link frame's axes in the base frame), one row per point
    x, y, z = (np.tile(e, (n, 1)) for e in np.eye(3))
    pos = np.zeros((n, 3))
    for i, (a, d, alpha) in enumerate(robot.dh):
        ca, sa = np.cos(alpha), np.sin(alpha)
        # link frame i in frame i-1: along x by a, about x by alpha, along z by d, about z by q_i
        y, z = ca * y + sa * z, ca * z - sa * y
        pos = pos + a * x + d * z
        c, s = np.cos(qs[:, i:i + 1]), np.sin(qs[:, i:i + 1])
        x, y = c * x + s * y, c * y - s * x
    # flange and TCP lie on the last joint's z axis (the hand's yaw does not move them)
    return pos + z * (robot.flange_offset + robot.tcp_offset)
