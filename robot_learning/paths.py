"""Where the project's configuration trees live.

Nodes started by ``ros2 launch`` from a colcon install still need ``hardware/``,
``calibration/`` and ``sim/``; they find them through ``ROBOT_LEARNING_HOME`` or, for the
usual editable install, next to this package.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout that holds hardware/, calibration/ and sim/."""
    env = os.environ.get("ROBOT_LEARNING_HOME")
    root = Path(env) if env else Path(__file__).resolve().parents[1]
    if not (root / "hardware").is_dir():
        raise FileNotFoundError(
            f"no hardware/ directory under {root}: set ROBOT_LEARNING_HOME to the robot-learning "
            "checkout (the folder with hardware/, calibration/ and sim/)"
        )
    return root


def resolve(path: str | os.PathLike[str]) -> Path:
    """An absolute path as given, or a path relative to the project root."""
    p = Path(path)
    return p if p.is_absolute() else project_root() / p


def use_local_dds_profile() -> None:
    """Point Fast DDS at the project's one-machine profile (shared memory for images, loopback
    UDP) when the discovery range is LOCALHOST and the user has not chosen a profile."""
    if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST") != "LOCALHOST":
        return
    profile = project_root() / "ros2_ws" / "src" / "robot_learning_ros" / "config" / "fastdds_localhost.xml"
    if profile.is_file():
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
