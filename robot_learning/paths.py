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
    """An absolute path as given. A relative one is read from the working directory, as every
    command line reads it (``train`` writes ``runs/x`` there, so ``evaluate --checkpoint
    runs/x/...`` must find it there too), unless only the project root has it: the checkout's
    own files (``sim/workcell.yaml``, ``hardware/...``) resolve from any directory."""
    p = Path(path)
    if p.is_absolute():
        return p
    here = Path.cwd() / p
    if here.exists():
        return here
    root = project_root() / p
    return root if root.exists() else here


def use_local_dds_profile() -> None:
    """Point Fast DDS at the project's one-machine profile (shared memory for images, loopback
    UDP) when the discovery range is LOCALHOST and the user has not chosen a profile."""
    if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST") != "LOCALHOST":
        return
    profile = project_root() / "ros2_ws" / "src" / "robot_learning_ros" / "config" / "fastdds_localhost.xml"
    if profile.is_file():
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
