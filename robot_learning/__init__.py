"""robot-learning: real-robot learning with ROS 2 integration.

The library is importable without ROS: data, policies, control, sim, cli. ROS 2 nodes in
``ros2_ws/src/robot_learning_ros`` are thin shells over it.
"""

__version__ = "0.1.0"

import os as _os

# MuJoCo picks its GL platform when it is first imported, so this must come before any module
# imports it: without a display (a robot PC over ssh, CI) render offscreen with EGL instead of
# failing at the first rendered frame ("an OpenGL platform library has not been loaded").
if not (_os.environ.get("DISPLAY") or _os.environ.get("WAYLAND_DISPLAY")):
    _os.environ.setdefault("MUJOCO_GL", "egl")
