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
    entry_points={
        "console_scripts": [
            "sim_node = robot_learning_ros.sim_node:main",
            "arm_node = robot_learning_ros.arm_node:main",
            "scripted_operator = robot_learning_ros.scripted_operator:main",
            "teleop_node = robot_learning_ros.teleop_node:main",
            "command_mux = robot_learning_ros.command_mux:main",
            "recorder_node = robot_learning_ros.recorder_node:main",
            "bench_publisher = robot_learning_ros.bench_publisher:main",
            "policy_server = robot_learning_ros.policy_server:main",
            "policy_evaluator = robot_learning_ros.policy_evaluator:main",
            "camera_node = robot_learning_ros.camera_node:main",
            "tactile_node = robot_learning_ros.tactile_node:main",
            "rl_learner = robot_learning_ros.rl_learner:main",
            "rl_actor = robot_learning_ros.rl_actor:main",
            "rl_graph_actor = robot_learning_ros.rl_graph_actor:main",
            "intervening_operator = robot_learning_ros.intervening_operator:main",
            "reward_node = robot_learning_ros.reward_node:main",
            "mirror_node = robot_learning_ros.mirror_node:main",
        ],
    },
)
