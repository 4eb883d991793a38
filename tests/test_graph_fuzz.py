"""Graph fuzzing: a hostile client in its own process (tests/graph_fuzzer.py) attacks the arm's
command topics while this process watches what the arm does on /joint_states and
/arm/ee_pose: joint limits, the workspace box, measured joint speed, and that the arm keeps
reporting and still obeys a valid command afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped, TwistStamped
from robot_learning_ros.client import GraphClient
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from robot_learning.config import DEFAULT_WORKCELL, load_robot, load_yaml
from robot_learning.control.kinematics import tcp_positions
from robot_learning.control.route import route_home, segment_times
from robot_learning.control.safety import box_distance
from robot_learning.graph import SimGraph
from robot_learning.sim.model import end_stop_timeconst

pytestmark = pytest.mark.graph

FUZZ_SECONDS = 30.0


def stamp(m) -> float:
    return m.header.stamp.sec + m.header.stamp.nanosec * 1e-9


def longest_run(t: np.ndarray, flag: np.ndarray) -> tuple[float, float]:
    """The longest stretch of time over which ``flag`` holds (from the sample before it first
    holds to the first sample it no longer does, or the last sample), and when it began."""
    longest, began, start = 0.0, float(t[0]), None
    for k in range(len(t)):
        if flag[k] and start is None:
            start = t[k - 1] if k else t[k]
        if start is not None and (not flag[k] or k == len(t) - 1):
            if t[k] - start > longest:
                longest, began = t[k] - start, start
            start = None
    return longest, began


def test_the_arm_holds_every_limit_under_a_command_fuzzer(tmp_path):
    robot = load_robot()
    lim = robot.limits
    with SimGraph(tmp_path / "sim.log", cameras="none", real_time_factor=1.0) as g:
        client = GraphClient("fuzz_watcher")
        try:
            client.subscribe("/joint_states", JointState, depth=1000,
                             transform=lambda m: (stamp(m), np.array(m.position[:7]), np.array(m.velocity[:7])))
            client.subscribe("/arm/ee_pose", PoseStamped, depth=1000,
                             transform=lambda m: np.array([stamp(m), m.pose.position.x, m.pose.position.y,
                                                           m.pose.position.z]))
            client.subscribe("/arm/protective_stop", String, latched=True, transform=lambda m: m.data)
            client.wait_for("/joint_states", 10, timeout=60)
            fuzzer = subprocess.run(
                [sys.executable, str(Path(__file__).with_name("graph_fuzzer.py")),
                 "--seconds", str(FUZZ_SECONDS), "--seed", "7"],
                capture_output=True, text=True, timeout=FUZZ_SECONDS + 60)
            assert fuzzer.returncode == 0, fuzzer.stderr[-2000:]
            assert "sent" in fuzzer.stdout
            # the last queued attack messages drain (commands are RELIABLE with a 100-deep queue)
            time.sleep(2.0)
            with client.lock:
                states = list(client.msgs["/joint_states"])
                poses = np.array(client.msgs["/arm/ee_pose"])
            t = np.array([s[0] for s in states])
            q = np.array([s[1] for s in states])
            qd = np.array([s[2] for s in states])

            tp, poses = poses[:, 0], poses[:, 1:]

            # joint limits hold at every sample. The limit is the joint's end stop, a stiff spring
            # in the sim as in a real arm: a hand the fuzzer presses into the table can push a
            # wrist joint onto it (the monitor trips first, at half the margin past the soft
            # limit) and the stop gives by its compliance: each joint may sink 1 mrad (pressed)
            # plus what the sim's stop gives a joint arriving at its top measured speed (seen:
            # 1.0 mrad quiet, 2.5 mrad under load, where a slip threw joint 6 faster)
            stop_tc = end_stop_timeconst(load_yaml(DEFAULT_WORKCELL))
            end_stop = 0.001 + stop_tc * np.abs(qd).max(axis=0) / np.e
            over = np.maximum(lim.q_lower - q, q - lim.q_upper) - end_stop  # > 0: past what the stop gives
            worst = np.unravel_index(np.argmax(over), over.shape)
            j, give = worst[1], end_stop[worst[1]]
            assert over.max() <= 0.0, (f"joint {j + 1} at {q[worst]:.4f} rad, {over[worst] + give:.5f} past its "
                                       f"limit (the stop gives {give:.5f}), t = {t[worst[0]]:.3f} s "
                                       f"(sample {worst[0]} of {len(q)})")
            # What no monitor can stop once it starts is a slip: a hand pressed on the table, its
            # wrist servo at its torque limit, lets go and the joint is thrown (the stall monitor
            # now stops most presses first, with half the push wound up). The monitor trips at the first
            # sample over its level and holds where the arm was then, but a 12 Nm wrist brakes
            # slowly: seen, joint 6 went on from 1.8x to 3.1x its speed limit, 0.21 rad past the
            # hold, and took 1 s to come back; such a throw took a TCP 22.5 mm out of the box
            # in CI. So the bound is on time, not on the peak: overspeed ends within the
            # braking (seen: 36 ms; the outside tester measured 2.2-2.4x, sustained), and the
            # TCP is back within the box's tolerance (the monitor's trip point, + one period's
            # drift) within the return to the hold.
            ratio = np.max(np.abs(qd) / lim.qd_max, axis=1)
            fast, fast_at = longest_run(t, ratio > 1.0 + lim.velocity_margin + 0.1)
            k = int(np.argmax(ratio))
            assert fast <= 0.06, (f"joints over their speed limit for {fast * 1000:.0f} ms from "
                                  f"t = {fast_at - t[0]:.3f} s (peak {ratio[k]:.2f}x at {t[k] - t[0]:.3f} s): "
                                  "the monitor did not stop them")
            margin = lim.workspace_tolerance + 0.001
            out = np.maximum(lim.workspace_min - poses, poses - lim.workspace_max).max(axis=1)  # > 0: outside
            away, away_at = longest_run(tp, out > margin)
            k = int(np.argmax(out))
            assert away <= 1.5, (f"TCP more than {margin * 1000:.0f} mm outside the workspace box for {away:.2f} s "
                                 f"from t = {away_at - tp[0]:.3f} s (peak {out[k] * 1000:.1f} mm at "
                                 f"{tp[k] - tp[0]:.3f} s)")
            # alive throughout: the sim clock kept moving, no long silence on /joint_states
            assert t[-1] - t[0] > 0.3 * FUZZ_SECONDS
            k = int(np.argmax(np.diff(t)))
            assert t[k + 1] - t[k] < 0.5, (f"no /joint_states stamped between {t[k] - t[0]:.2f} s and "
                                           f"{t[k + 1] - t[0]:.2f} s of the attack")

            # the node still obeys valid commands once released: a trajectory home, from wherever
            # the attack left the arm (a twist may not be feasible there: one left with a wrist
            # joint on its limit and the hand 6 cm over the table once moved 0.01 mm up in 3 s),
            # then a twist from home
            resets = [client.call(Trigger, f"/arm/reset_{kind}_stop") for kind in ("protective", "emergency")]
            answers = [(r.success, r.message) if r else None for r in resets]
            if not resets[0].success:
                # left dragged out of the box: not released there (the box would widen by the
                # tolerance at every release); the sim's reset stands in for guiding it back by hand
                assert "guide the arm back inside" in resets[0].message, answers
                p_now = client.latest("/arm/ee_pose")[1:]  # without its stamp
                assert box_distance(p_now, lim.workspace_min, lim.workspace_max) > lim.workspace_tolerance - 0.001, (
                    answers, p_now)
                assert client.call(Trigger, "/sim/reset").success
            home_pub = client.publisher("/arm/command/joint_trajectory", JointTrajectory)
            end = time.monotonic() + 30.0
            while home_pub.get_subscription_count() == 0 and time.monotonic() < end:
                time.sleep(0.05)

            def go_home(points: list[np.ndarray]) -> tuple[bool, str]:
                """Send a trajectory through ``points`` (the last one home); whether the arm got
                home, and what the node logged meanwhile (it stops early at a refusal)."""
                q = client.latest("/joint_states")[1]
                traj = JointTrajectory(joint_names=list(robot.joint_names))
                for p, t in zip(points, segment_times(robot, q, points, speed=0.5)):
                    point = JointTrajectoryPoint(positions=[float(v) for v in p])
                    point.time_from_start.sec, point.time_from_start.nanosec = int(t), int((t % 1) * 1e9)
                    traj.points.append(point)
                logged = len(g.log_path.read_text())
                home_pub.publish(traj)
                end = time.monotonic() + 30.0  # seconds on the sim's clock: longer on a busy machine
                while time.monotonic() < end:
                    if np.max(np.abs(client.latest("/joint_states")[1] - robot.home)) < 0.02:
                        return True, ""
                    news = g.log_path.read_text()[logged:]
                    if "add a waypoint" in news:
                        return False, news
                    time.sleep(0.1)
                return False, g.log_path.read_text()[logged:]

            # the straight joint-space line home may leave the box from where the attack left the
            # arm: the node refuses such a trajectory whole, saying so (it used to set off and stall
            # at the box for ever), and the route a client plans around it (route_home) runs
            q_now = client.latest("/joint_states")[1]
            route = route_home(robot, q_now)
            line = tcp_positions(robot, q_now + np.linspace(0, 1, 2000)[:, None] * (robot.home - q_now))
            beyond = np.max(np.maximum(lim.workspace_min - line, line - lim.workspace_max))
            t_home = client.latest("/joint_states")[0]
            if beyond > 0.001:  # judged here on its own, with a millimetre's band
                home, news = go_home([robot.home])
                assert not home and "add a waypoint" in news, (route, news[-2000:])
                assert np.max(np.abs(client.latest("/joint_states")[1] - q_now)) < 0.01  # nothing moved
            if route is None:  # none of the routes tried stays inside: the sim's reset
                assert client.call(Trigger, "/sim/reset").success
                route = [robot.home]
            home, news = go_home(route)
            if not home and "PROTECTIVE STOP" in news:
                # the box bounds the TCP only: on its way home the hand can still meet the object on
                # the table; a person releases the stop and sends it again from where it stopped
                assert client.call(Trigger, "/arm/reset_protective_stop").success, news[-2000:]
                route = route_home(robot, client.latest("/joint_states")[1])
                home, again = go_home(route)
                news += "\n(released, and sent again:)\n" + again
            assert home, (
                f"not home after the trajectory through {len(route)} point(s); /joint_states advanced "
                f"{client.latest('/joint_states')[0] - t_home:.2f} s on the sim's clock after it was sent; resets "
                f"answered {answers}; /arm/protective_stop last said {client.msgs['/arm/protective_stop'][-1:]}; "
                f"the node logged meanwhile:\n{news[-2000:]}")
            pub = client.publisher("/arm/command/twist", TwistStamped)
            p0 = client.latest("/arm/ee_pose")[1:]  # without its stamp
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                m = TwistStamped()
                m.header.frame_id = robot.base_frame
                m.twist.linear.z = 0.05 if p0[2] < 0.4 else -0.05
                pub.publish(m)
                time.sleep(0.02)
            time.sleep(0.3)
            p1 = client.latest("/arm/ee_pose")[1:]  # without its stamp
            assert abs(p1[2] - p0[2]) > 0.02
        finally:
            client.close()
        log = g.log_path.read_text()
    assert g.proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log and "died" not in log
    # each kind of refusal is rate-limited: a 30 s attack of ~9,000 messages leaves a short log
    assert len(log.splitlines()) < 40 * FUZZ_SECONDS, len(log.splitlines())
