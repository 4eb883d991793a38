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

    def _set(self, q: np.ndarray) -> None:
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)

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
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self.site)
        return np.vstack([self._jp[:, self.dofadr], self._jr[:, self.dofadr]])


def damped_pinv_step(jac: np.ndarray, twist: np.ndarray, damping: float = 0.05) -> np.ndarray:
    """Joint velocity for a TCP twist by damped least squares, well behaved near singularities."""
    jjt = jac @ jac.T + (damping**2) * np.eye(jac.shape[0])
    return jac.T @ np.linalg.solve(jjt, twist)


def nullspace_projector(jac: np.ndarray, damping: float = 0.05) -> np.ndarray:
    jjt = jac @ jac.T + (damping**2) * np.eye(jac.shape[0])
    return np.eye(jac.shape[1]) - jac.T @ np.linalg.solve(jjt, jac)
