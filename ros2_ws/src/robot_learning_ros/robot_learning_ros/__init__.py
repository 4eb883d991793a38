"""ROS 2 nodes of robot-learning. Each node declares parameters, wires topics and calls
into the ``robot_learning`` library; logic that can be tested without ROS lives there."""
