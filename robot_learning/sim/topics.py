"""What each driver topic carries, read straight from the simulated workcell.

The sim node publishes these values as messages; the gymnasium env hands the same values,
keyed like the recorder's samples (``data.convert.to_sample``), to a policy rolled out
without ROS. One definition keeps a policy trained on recorded data, evaluated in the env
and deployed on the graph seeing the same numbers.
"""

from __future__ import annotations

import numpy as np

from robot_learning.control.backend import ArmState
from robot_learning.transforms import wxyz_to_xyzw


def arm_state_arrays(state: ArmState) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(/joint_states, /gripper/state) arrays: the gripper appears as two fingers at half the opening each."""
    half = state.gripper_opening / 2
    gripper = {"position": np.array([half, half]), "velocity": np.zeros(2),
               "effort": np.array([state.gripper_effort] * 2)}
    # np.concatenate, not np.r_: this runs at the control rate, and np.r_ costs ~10x more
    joints = {k: np.concatenate((arm, gripper[k])) for k, arm in
              (("position", state.q), ("velocity", state.qd), ("effort", state.effort))}
    return joints, gripper


def topic_sample(cell, topic: str) -> dict[str, np.ndarray]:
    """The arrays a recorder would store for one message on ``topic`` right now."""
    if topic in ("/joint_states", "/gripper/state"):
        joints, gripper = arm_state_arrays(cell.backend.read_state())
        return joints if topic == "/joint_states" else gripper
    if topic == "/arm/ee_pose":
        pos, quat = cell.tcp_pose()
        return {"data": np.r_[pos, wxyz_to_xyzw(quat)]}
    if topic == "/arm/wrench":
        return {"data": cell.wrist_wrench()}
    parts = topic.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "tactile":
        grid = cell.tactile_grids()[parts[1]]
        if parts[2] == "taxels":
            return {"data": grid}
        if parts[2] == "wrench":
            return {"data": np.r_[grid.reshape(-1, 3).sum(0), 0.0, 0.0, 0.0]}
    if len(parts) == 4 and parts[:2] == ["sim", "objects"] and parts[3] == "pose":
        pos, quat = cell.object_poses()[parts[2]]
        return {"data": np.r_[pos, wxyz_to_xyzw(quat)]}
    if len(parts) == 3 and parts[1:] == ["color", "image_raw"]:
        return {"data": cell.render(parts[0], depth=False).rgb}
    if len(parts) == 3 and parts[1:] == ["aligned_depth_to_color", "image_raw"]:
        return {"data": cell.render(parts[0], depth=True).depth_mm}
    raise KeyError(f"the sim workcell does not publish '{topic}'")
