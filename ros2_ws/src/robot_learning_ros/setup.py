"""ament_python package: colcon installs it with a ROS 2 install; pip installs it into the venv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "robot_learning_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.yaml")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="robot-learning developers",
    description="ROS 2 nodes of robot-learning",
    license="Apache-2.0",
    # robot_learning_ros.entry makes SIGINT work before a node's heavy imports (see there)
    entry_points={
        "console_scripts": [
            "sim_node = robot_learning_ros.entry:sim_node",
            "arm_node = robot_learning_ros.entry:arm_node",
            "scripted_operator = robot_learning_ros.entry:scripted_operator",
            "teleop_node = robot_learning_ros.entry:teleop_node",
            "command_mux = robot_learning_ros.entry:command_mux",
            "recorder_node = robot_learning_ros.entry:recorder_node",
            "bench_publisher = robot_learning_ros.entry:bench_publisher",
            "policy_server = robot_learning_ros.entry:policy_server",
            "policy_evaluator = robot_learning_ros.entry:policy_evaluator",
            "camera_node = robot_learning_ros.entry:camera_node",
            "tactile_node = robot_learning_ros.entry:tactile_node",
            "rl_learner = robot_learning_ros.entry:rl_learner",
            "rl_actor = robot_learning_ros.entry:rl_actor",
            "rl_graph_actor = robot_learning_ros.entry:rl_graph_actor",
            "intervening_operator = robot_learning_ros.entry:intervening_operator",
            "reward_node = robot_learning_ros.entry:reward_node",
            "mirror_node = robot_learning_ros.entry:mirror_node",
        ],
    },
)
