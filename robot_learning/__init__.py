"""robot-learning: real-robot learning with ROS 2 integration.

The library is importable without ROS: data, policies, control, sim, cli. ROS 2 nodes in
``ros2_ws/src/robot_learning_ros`` are thin shells over it.
"""

__version__ = "0.1.0"
