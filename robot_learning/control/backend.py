"""The seam between the controller and whatever moves the joints.

The sim implements it first (``robot_learning.sim.workcell.SimBackend``); a ros2_control
backend (joint position commands to a forward controller, state from /joint_states)
implements the same three methods later, and nothing above it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class ArmState:
    """What a backend reports each control period."""

    stamp: float            # seconds, on the backend's clock (sim time in the sim)
    q: np.ndarray           # joint positions, rad
    qd: np.ndarray          # joint velocities, rad/s
    effort: np.ndarray      # joint torques, N m
    gripper_opening: float  # metres between the fingers
    gripper_effort: float = 0.0


class ArmBackend(Protocol):
    """Moves a real or simulated arm to joint position targets."""

    def read_state(self) -> ArmState: ...

    def write_command(self, q: np.ndarray, gripper_opening: float) -> None: ...

    def now(self) -> float: ...
