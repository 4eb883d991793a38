"""Test-wide environment: ROS 2 from the venv, DDS kept on loopback, one domain per run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

VENV = Path(sys.executable).parent.parent
os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(
    p for p in (str(VENV), os.environ.get("AMENT_PREFIX_PATH", "")) if p)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 5))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ["PATH"] = f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(
    Path(__file__).resolve().parents[1] / "ros2_ws/src/robot_learning_ros/config/fastdds_localhost.xml")

try:  # property tests: a quick search in the suite, a long one on request
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("suite", max_examples=60)
    _hypothesis_settings.register_profile("thorough", max_examples=2000)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
except ImportError:
    pass
