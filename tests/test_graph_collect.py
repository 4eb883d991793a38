"""Collecting through the ROS graph: teleop_collect.launch.yaml as real processes on real DDS.

The stored streams are compared with what this separate client process received from the
same topics; the operator's engage signal is compared with the recorded interventions."""

from __future__ import annotations

import hashlib
import json
import re
import time

import numpy as np
import pytest
from geometry_msgs.msg import TwistStamped
from robot_learning_ros.client import GraphClient
from robot_learning_ros.msgs import twist_msg
from sensor_msgs.msg import Joy
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from test_graph import stamp
from test_graph_evaluation import crash_the_sim_once

from robot_learning.collect import collect_scripted
from robot_learning.data.repair import validate_store
from robot_learning.graph import SimGraph

pytestmark = pytest.mark.graph


def test_scripted_collection_stores_what_was_published(scripted_pick_place):
    path, res, msgs = scripted_pick_place["path"], scripted_pick_place["result"], scripted_pick_place["msgs"]
    log = scripted_pick_place["log"].read_text()
    # rclpy's Future.__del__ can print an "Exception ignored" traceback while an interpreter is
    # torn down (a half-built Task at exit); that is rclpy's, after the node's work: not a failure
    ignored = re.findall(r"Exception ignored in: <function Future.__del__[^\n]*\n(?:.*Traceback.*\n)?", log)
    assert log.count("Traceback") == len(ignored), log[-3000:]
    assert [e["dataset_episode"] for e in res["episodes"]] == [0, 1]
    # Both episodes are stored with the outcome the operator saw. On a loaded 2-core machine
    # the expert can miss a grasp (commands then arrive late), so one success is required and
    # the checks below use it; the expert's success rate has its own 20-episode test.
    outcomes = [e["success"] for e in res["episodes"]]
    assert any(outcomes), "the scripted expert failed both episodes: see collect.log"
    ds, problems = validate_store(path)
    assert problems == []
    assert len(ds) == 2 and [ds.episode(i).meta["success"] for i in range(2)] == outcomes
    k = max(i for i, ok in enumerate(outcomes) if ok)
    ep = ds.episode(k)
    assert ep.meta["operator"] == "scripted_teleop" and ep.meta["task"] == "pick_place" and ep.meta["seed"] == 4 + k
    assert ep.meta["robot"]["name"] and "cameras" in ep.meta["calibration"]
    assert ep.meta["missing_streams"] == ["wrist_color"]  # the wrist camera was left off: reported
    assert ep.meta["rejected_samples"] == {}
    # the recorder's /diagnostics said what it was taking while it recorded
    recording = [v for m in msgs["/diagnostics"] for v in m if v["recording"] == "True"]
    assert recording and max(int(v.get("received/joint_states", 0)) for v in recording) > 0

    def compare(stream, key, topic, exact):
        rec_t = ep.streams[stream]["t"][:]
        pub = {m[0]: m[1:] for m in msgs[topic]}
        window = [t for t in sorted(pub) if rec_t[0] <= t <= rec_t[-1]]
        if exact:  # reliable topic: the same messages, in the same order, nothing lost
            missing = sorted(set(np.round(window, 6)) - set(np.round(rec_t, 6)))
            assert len(window) == len(rec_t) and np.allclose(window, rec_t, atol=1e-6), (stream, missing[:20])
        else:      # best-effort camera: both sides may miss a frame; what both have must agree
            common = set(np.round(rec_t, 6)) & set(np.round(window, 6))
            assert len(common) >= 0.5 * len(rec_t), stream
        assert np.all(np.diff(rec_t) > 0)
        return pub, rec_t

    pub, rec_t = compare("joint_states", "position", "/joint_states", exact=True)
    pos = ep.streams["joint_states"]["position"][:]
    for i in range(0, len(rec_t), 97):
        assert np.allclose(pub[min(pub, key=lambda t: abs(t - rec_t[i]))][0], pos[i])
    pub, rec_t = compare("cmd_twist", "data", "/arm/command/twist", exact=True)
    tw = ep.streams["cmd_twist"]["data"][:]
    for i in range(0, len(rec_t), 13):
        v = pub[min(pub, key=lambda t: abs(t - rec_t[i]))]
        assert np.allclose(v, [tw[i, 0], tw[i, 2], tw[i, 5]])
    pub, rec_t = compare("front_color", "data", "/front/color/image_raw", exact=False)
    frames = ep.streams["front_color"]["data"]
    checked = 0
    for i, t in enumerate(rec_t):
        if t in pub:
            assert hashlib.md5(frames[i].tobytes()).hexdigest() == pub[t][0], f"frame {i} differs"
            checked += 1
    assert checked >= 0.5 * len(rec_t)
    src = ep.steps["source"][:]
    assert (src == 1).mean() > 0.8  # the operator (teleop) drove nearly all of it

    # the env mirrors the graph: the recorded episode, replayed through the policy server's
    # engine and the mux in the gymnasium env from the same seed, does the task again. As a TCP
    # pose plan (what --action tcp_pose trains on): the server tracks the recorded poses with
    # twists from the newest TCP pose, even with every chunk arriving 0.2 s after its
    # observation. (The recorded twists replayed open loop are not enough: on a busy host the
    # graph's commands take effect a little late or early, and open loop the drift adds up.)
    from robot_learning.data.schema import parse_recipe
    from robot_learning.runtime.actions import pose_actions
    from robot_learning.runtime.policy import ReplayPolicy
    from robot_learning.train.rollout import rollout

    recipe = parse_recipe(ep.meta["recipe"])
    poses = pose_actions(ep.steps["obs"]["ee_pose.data"][:], ep.steps["action"][:])
    replay = ReplayPolicy(poses, 0.1, "ee_pose.data", action_kind="tcp_pose")
    assert rollout(replay, recipe, "pick_place", [ep.meta["seed"]], latency=0.2)[0].success
    assert not ep.steps["intervention"][:].any()  # no policy was running: no interventions


def test_takeover_from_a_policy_is_logged_as_intervention(tmp_path):
    """A policy (this client) streams commands; an operator holds the gamepad's dead-man switch
    twice. The mux hands over without a jump and the recorder logs both takeovers."""
    path = tmp_path / "hil.zarr"
    client = GraphClient("policy_and_operator")
    client.subscribe("/arm/command/twist", TwistStamped, transform=lambda m: (stamp(m), [
        m.twist.linear.x, m.twist.linear.y, m.twist.linear.z]))
    client.subscribe("/control_source", String, latched=True)
    client.subscribe("/recorder/status", String, latched=True)
    policy = client.publisher("/policy/command/twist", TwistStamped)
    joy = client.publisher("/joy", Joy)
    with SimGraph(tmp_path / "hil.log", "teleop_collect.launch.yaml", device="gamepad", dataset=path,
                  cameras="", task="pick_place") as g:
        client.wait_for("/recorder/status", 1, timeout=60)
        client.wait_for("/control_source", 1, timeout=60)
        res = client.call(Trigger, "/recorder/start_episode", timeout=60)
        assert res.success, res.message
        engaged_windows, t0 = [], time.monotonic()
        held_since = None
        while time.monotonic() - t0 < 6.0:
            el = time.monotonic() - t0
            hold = 1.0 <= el < 2.5 or 3.5 <= el < 4.5
            if hold and held_since is None:
                held_since = el
            if not hold and held_since is not None:
                engaged_windows.append((held_since, el))
                held_since = None
            m = Joy()
            m.axes = [0.0, -0.6 if hold else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
            m.buttons = [0, 0, 0, 0, int(hold), 0, 0, 0, 0, 0, 0]
            joy.publish(m)
            policy.publish(twist_msg(np.array([0.04, 0.0, 0.0, 0.0, 0.0, 0.0]), 0.0, "panda_link0"))
            time.sleep(0.02)
        res = client.call(SetBool, "/recorder/stop_episode", timeout=60, data=True)
        assert res.success, res.message
        info = json.loads(res.message)
        # 6 s of wall time; the sim clock may run slower on a loaded machine: 10 Hz of what it ran
        assert info["duration"] > 2.0 and info["n_steps"] >= 10.0 * info["duration"] - 2, info
    client.close()
    assert "Traceback" not in g.log_path.read_text()
    ds, problems = validate_store(path)
    assert problems == []
    ep = ds.episode(0)
    segs = ep.meta["interventions"]
    assert len(segs) == 2, segs
    # sim time against the wall clock of the held button: on a loaded 2-core machine the teleop
    # node sees a press or release up to ~0.5 s late and the sim clock may lag, hence the margin
    durations = [b - a for a, b in segs]
    assert durations == pytest.approx([w[1] - w[0] for w in engaged_windows], abs=0.6)
    assert segs[1][0] - segs[0][0] == pytest.approx(engaged_windows[1][0] - engaged_windows[0][0], abs=0.6)
    src, inter = ep.steps["source"][:], ep.steps["intervention"][:]
    assert set(src[inter].tolist()) == {1} and {0, 1} <= set(src.tolist())
    # what went to the arm: smooth through every handover (bounded acceleration, 1.5 m/s^2 default)
    cmds = sorted(client.msgs["/arm/command/twist"])
    t = np.array([c[0] for c in cmds])
    v = np.array([c[1] for c in cmds])
    acc = np.linalg.norm(np.diff(v, axis=0), axis=1) / np.maximum(np.diff(t), 1e-3)
    assert np.max(acc) < 1.5 * 1.6, np.max(acc)
    assert v[:, 0].min() < -0.05 and v[:, 0].max() > 0.03  # both the operator's and the policy's motion went out


def test_a_collection_goes_on_where_a_crashed_sim_left_it(tmp_path):
    """The sim dies by a signal (its software renderer's rare segfault) while the second of
    two episodes is recorded: the graph goes down with it, collect starts it again from that
    episode's seed, and the partial episode the recorder saved at shutdown is discarded. The
    dataset ends as an uninterrupted run leaves it: two finished, labelled episodes with the
    seeds in order."""
    path, out, log = tmp_path / "demo.zarr", tmp_path / "report", tmp_path / "collect.log"
    # the sim killed while the second episode is recorded: the recorder made its group in the store
    r = crash_the_sim_once(lambda: collect_scripted("pick_place", 2, path, out, log, cameras="", seed=10,
                                                    real_time_factor=2.0, state_rate=100.0, progress=False,
                                                    timeout=600),
                           log, lambda: (path / "episodes" / "000001").exists())
    assert [e["seed"] for e in r["episodes"]] == [11, 12], r["episodes"]
    assert len(r["restarts"]) == 1 and "node 'sim' was killed by SIGSEGV" in r["restarts"][0]["why"], r["restarts"]
    # the recorder left episode 1 in the store at the shutdown, and it was discarded (the recorder's
    # own log line about it is not asserted: at a shutdown it can be lost with the launcher's pipes)
    assert r["restarts"][0]["after_episodes"] == 1 and r["restarts"][0]["discarded_dataset_episodes"] == [1]
    ds, problems = validate_store(path)
    assert problems == [] and ds.incomplete == []
    # the restart's recorder numbers on from the last episode kept
    assert ds.indices == [0, 1] == [e["dataset_episode"] for e in r["episodes"]]
    assert [ds.episode(i).meta["seed"] for i in ds.indices] == [11, 12]
    assert all(ds.episode(i).meta["success"] is not None for i in ds.indices)   # each one labelled
