"""The real-robot path on this machine: the sim in hardware mode (a robot behind ros2_control,
no controller of ours inside) driven by arm_node's ros2_control backend, as real processes on
real DDS. What reaches the controller topic is what a real arm would execute."""

from __future__ import annotations

import math
import os
import re
import signal
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, Transform, TwistStamped
from robot_learning_ros.client import GraphClient
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import (
    JointTrajectory,
    JointTrajectoryPoint,
    MultiDOFJointTrajectory,
    MultiDOFJointTrajectoryPoint,
)

from robot_learning.config import load_robot
from robot_learning.control.ros2_control import load_ros2_control
from robot_learning.graph import SimGraph

pytestmark = pytest.mark.graph

ROBOT = load_robot()
RC = load_ros2_control(ROBOT)
COMMANDS = RC.arm.topic


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    log = tmp_path_factory.mktemp("hardware") / "graph.log"
    g = SimGraph(log, hardware="true", cameras="none", real_time_factor=1.0)
    g.__enter__()
    client = GraphClient("hardware_test")
    client.subscribe(COMMANDS, Float64MultiArray, depth=1000, transform=lambda m: np.array(m.data))
    client.subscribe("/arm/ee_pose", PoseStamped,
                     transform=lambda m: np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z]))
    client.subscribe("/diagnostics", DiagnosticArray, transform=lambda m: m.status[0])
    client.subscribe("/arm/protective_stop", String, latched=True, transform=lambda m: m.data)
    with g.coming_up(client):
        client.wait_for("/arm/ee_pose", 10, timeout=90)
        client.wait_for(COMMANDS, 10, timeout=30)
    yield g, client
    client.close()
    g.stop()


def stream(client, twist, seconds, frame=ROBOT.base_frame):
    pub = client.publisher("/arm/command/twist", TwistStamped)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        m = TwistStamped()
        m.header.frame_id = frame
        m.twist.linear.x, m.twist.linear.y, m.twist.linear.z = (float(v) for v in twist[:3])
        m.twist.angular.x, m.twist.angular.y, m.twist.angular.z = (float(v) for v in twist[3:])
        pub.publish(m)
        time.sleep(0.02)


def sent(client) -> np.ndarray:
    with client.lock:
        return np.array(client.msgs[COMMANDS])


def assert_commands_safe(cmds: np.ndarray) -> None:
    """Every command that reached the controller: finite, inside the limits, at most one
    period's worth of the velocity limit from the one before."""
    assert np.all(np.isfinite(cmds))
    assert np.all(cmds >= ROBOT.limits.q_lower) and np.all(cmds <= ROBOT.limits.q_upper)
    step = np.abs(np.diff(cmds, axis=0))
    assert np.all(step <= ROBOT.limits.qd_max / RC.rate + 1e-9), step.max(0)


def test_a_twist_moves_the_arm_through_arm_node_and_ros2_control(graph):
    _, client = graph
    p0 = client.latest("/arm/ee_pose")
    stream(client, [0.05, 0, 0, 0, 0, 0], 1.5)
    time.sleep(0.3)
    p1 = client.latest("/arm/ee_pose")
    assert p1[0] > p0[0] + 0.02 and abs(p1[1] - p0[1]) < 0.01
    assert_commands_safe(sent(client))


def test_a_tcp_plan_runs_at_the_arms_rate_through_ros2_control(graph):
    """A policy's chunk as the arm receives it: TCP poses with due times, one message."""
    _, client = graph
    p0 = client.latest("/arm/ee_pose")
    plan = MultiDOFJointTrajectory(joint_names=[ROBOT.ee_frame])
    plan.header.frame_id = ROBOT.base_frame
    for k in range(1, 11):
        tf = Transform()
        tf.translation.x, tf.translation.y, tf.translation.z = float(p0[0]), float(p0[1] + 0.004 * k), float(p0[2])
        tf.rotation.x, tf.rotation.w = 1.0, 0.0  # TCP pointing down, as at home
        pt = MultiDOFJointTrajectoryPoint(transforms=[tf])
        pt.time_from_start.nanosec = 100_000_000 * k
        plan.points.append(pt)
    client.clear(COMMANDS)
    client.publisher("/arm/command/tcp_trajectory", MultiDOFJointTrajectory).publish(plan)
    time.sleep(2.5)
    p1 = client.latest("/arm/ee_pose")
    assert p1[1] - p0[1] == pytest.approx(0.04, abs=0.004)
    assert abs(p1[0] - p0[0]) < 0.005 and abs(p1[2] - p0[2]) < 0.005
    assert_commands_safe(sent(client))


def test_bad_commands_never_reach_the_controller_topic(graph):
    _, client = graph
    client.clear(COMMANDS)
    stream(client, [math.nan, 0, 0, 0, 0, 0], 0.3)
    stream(client, [0.05, 0, 0, 0, 0, 0], 0.3, frame="camera_link")
    pose = client.publisher("/arm/command/pose", PoseStamped)
    m = PoseStamped()
    m.header.frame_id = ROBOT.base_frame
    m.pose.position.x, m.pose.position.z, m.pose.orientation.x = 0.5, -0.3, 1.0  # under the table
    pose.publish(m)
    # a jump of 1.5 rad in 10 ms: the arm must not be asked for more than its velocity limit
    traj = client.publisher("/arm/command/joint_trajectory", JointTrajectory)
    t = JointTrajectory(joint_names=ROBOT.joint_names)
    goal = ROBOT.home.copy()
    goal[0] += 0.6
    p = JointTrajectoryPoint(positions=[float(v) for v in goal])
    p.time_from_start.nanosec = 10_000_000
    t.points = [p]
    traj.publish(t)
    time.sleep(2.0)
    cmds = sent(client)
    assert len(cmds) > 100
    assert_commands_safe(cmds)
    assert cmds[-1][0] == pytest.approx(goal[0], abs=1e-3)  # it got there, at the limits
    # back home, for the tests after this one
    t.points[0].positions = [float(v) for v in ROBOT.home]
    t.points[0].time_from_start.sec = 2
    traj.publish(t)
    time.sleep(3.0)


def test_the_watchdog_holds_when_twists_stop(graph):
    _, client = graph
    stream(client, [0, 0.05, 0, 0, 0, 0], 1.0)
    time.sleep(ROBOT.limits.command_timeout + 0.5)  # timeout plus braking
    client.clear(COMMANDS)
    time.sleep(0.5)
    cmds = sent(client)
    assert len(cmds) > 20 and np.max(np.abs(cmds - cmds[-1])) < 1e-9


def test_estop_latches_at_the_controller_topic(graph):
    _, client = graph
    estop = client.publisher("/emergency_stop", Bool, latched=True)
    estop.publish(Bool(data=True))
    time.sleep(1.0)
    client.clear(COMMANDS)
    stream(client, [0.05, 0, 0, 0, 0, 0], 0.8)
    cmds = sent(client)
    assert np.max(np.abs(cmds - cmds[0])) < 1e-9
    estop.publish(Bool(data=False))
    assert client.call(Trigger, "/arm/reset_emergency_stop").success
    client.clear(COMMANDS)
    stream(client, [0.05, 0, 0, 0, 0, 0], 0.8)
    assert np.max(np.abs(sent(client) - sent(client)[0])) > 1e-3


def test_killing_the_hardware_side_makes_arm_node_hold_and_say_why(graph):
    g, client = graph
    pid = int(re.search(r"started sim \(pid (\d+)\)", g.log_path.read_text()).group(1))
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while time.monotonic() < end and "stale" not in (client.latest("/arm/protective_stop") or ""):
        time.sleep(0.05)
    assert "joint state is stale" in client.latest("/arm/protective_stop")
    time.sleep(2.5)
    diag = client.latest("/diagnostics")
    assert diag.message.startswith("protective stop: joint state is stale")
    assert "PROTECTIVE STOP: joint state is stale" in g.log_path.read_text()
    # commands are refused, with the reason
    stream(client, [0.05, 0, 0, 0, 0, 0], 0.3)
    time.sleep(1.5)
    assert "protective stop is latched" in g.log_path.read_text()
