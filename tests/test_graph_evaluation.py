"""The evaluator's episodes through the ROS graph (launch/deploy_policy), each test with the
graph to itself. Graphs started while another runs share its DDS domain: two sims publish
/arm/ee_pose, and the evaluator's /policy/resume reaches both policy servers. A module-scoped
graph stays up until its module's last test, and this test sat in test_graph_policy.py beside
one: the likely cause of its two failures there (in CI an episode whose fingers never closed,
in a busy run one that started with them 31 mm apart)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_graph_policy import make_pose_checkpoint

pytestmark = pytest.mark.graph


def test_each_evaluation_episode_starts_with_the_gripper_open(tmp_path):
    """A policy that ends an episode with the gripper closed must not close it again at the
    start of the next: once paused, its plans keep it the mux's source for a while, but its
    last gripper command goes stale (this sank every episode after a failed one)."""
    from robot_learning.config import load_robot
    from robot_learning.control.kinematics import Kinematics
    from robot_learning.evaluate import evaluate_graph
    from robot_learning.transforms import wxyz_to_xyzw

    robot = load_robot()
    home, quat = Kinematics(robot).fk(robot.home)
    ckpt = make_pose_checkpoint(tmp_path / "ckpt", np.r_[home + [0.05, 0.0, -0.05], wxyz_to_xyzw(quat)], gripper=1.0)
    evaluate_graph(ckpt, "pick_place", 3, tmp_path / "eval", tmp_path / "eval.log", episode_timeout=5.0,
                   progress=False, state_rate=100.0)
    for i in range(3):
        traj = np.load(tmp_path / "eval" / f"episode_{i:03d}" / "episode.npz")["trajectory"]
        # what a failure needs to be understood: did the policy move the arm at all, what did its server say
        seen = (f"episode {i}: TCP moved {np.linalg.norm(traj[-1, 1:4] - traj[0, 1:4]) * 1000:.0f} mm, "
                f"fingers {traj[0, 4] * 1000:.0f} -> min {traj[:, 4].min() * 1000:.0f} mm over {traj[-1, 0]:.1f} s; "
                f"server: {json.loads((tmp_path / 'eval' / 'results.json').read_text())['diagnostics']}; "
                f"log: {(tmp_path / 'eval.log').read_text()[-3000:]}")
        assert traj[0, 4] > 0.07, f"started with the fingers apart by less than 70 mm: {seen}"
        assert traj[:, 4].min() < 0.06, f"the policy never closed the fingers: {seen}"  # (on the cube, 44 mm)
    # a policy that holds the hand beside the cube never reaches the task's success: each result says
    # so apart from one whose success came on and did not hold
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [(e["success"], e["success_seen"]) for e in results["episodes"]] == [(False, False)] * 3, results
    pace = results["sim_pace"]
    assert pace["asked"] == 1.0 and pace["reports"] >= 3 and 0.0 < pace["p10"] <= pace["median"], pace


def test_evaluate_says_when_the_sim_fell_behind_the_pace_asked():
    """A sim behind real time means the policy's inference waited for a core: the success rate
    then measures the machine's load too, and evaluate says so with what makes room."""
    from robot_learning.evaluate import sim_pace_note

    behind = {"sim_pace": {"asked": 1.0, "median": 0.72, "p10": 0.61, "reports": 300}}
    note = sim_pace_note(behind, rendered=True)
    assert "0.72x real time" in note and "color_profile:=320x240x30" in note and "--real-time-factor 0.7" in note
    assert "color_profile" not in sim_pace_note(behind, rendered=False)   # no cameras to make smaller
    assert sim_pace_note(behind, rendered=False, prog="demo").startswith("demo: the sim kept 0.72x")
    kept_up = {"sim_pace": {"asked": 1.0, "median": 0.96, "p10": 0.9, "reports": 300}}
    assert sim_pace_note(kept_up, rendered=True) == ""
    assert sim_pace_note({"sim_pace": None}, rendered=True) == ""   # no sim (a robot), or as fast as it can


def test_an_evaluation_goes_on_where_a_crashed_sim_left_it(tmp_path):
    """The sim's software renderer segfaulted once in about a day of runs here, and the
    evaluation hung 11 minutes before it failed with nothing kept. Now the graph ends with the
    sim, and evaluate starts it again for the episodes left, from the seed where it stopped:
    the same seeds in order, the episodes done before kept, the interrupted one run again."""
    from robot_learning.config import load_robot
    from robot_learning.control.kinematics import Kinematics
    from robot_learning.evaluate import evaluate_graph
    from robot_learning.transforms import wxyz_to_xyzw

    robot = load_robot()
    home, quat = Kinematics(robot).fk(robot.home)
    ckpt = make_pose_checkpoint(tmp_path / "ckpt", np.r_[home + [0.05, 0.0, -0.05], wxyz_to_xyzw(quat)], gripper=1.0)
    out, log = tmp_path / "eval", tmp_path / "eval.log"
    r = crash_the_sim_once(lambda: evaluate_graph(ckpt, "pick_place", 3, out, log, episode_timeout=4.0, progress=False,
                                                  state_rate=100.0, seed=2000),
                           log, lambda: (out / "episode_000" / "result.json").exists())
    assert [e["seed"] for e in r["episodes"]] == [2001, 2002, 2003], r["episodes"]
    assert [e["episode"] for e in r["episodes"]] == [0, 1, 2]
    assert len(r["restarts"]) == 1 and r["restarts"][0]["after_episodes"] in (1, 2), r["restarts"]
    assert "node 'sim' was killed by SIGSEGV" in r["restarts"][0]["why"]
    assert sorted(p.name for p in out.iterdir()) == ["episode_000", "episode_001", "episode_002", "results.json"]
    assert json.loads((out / "results.json").read_text())["episodes"] == r["episodes"]
    assert "ended with on_exit: shutdown" in log.read_text()   # the graph went down with the sim, at once
    assert (tmp_path / "eval-restart-1.log").exists()


def crash_the_sim_once(run: Callable[[], dict], log: Path, when: Callable[[], bool]) -> dict:
    """Runs ``run`` (episodes through a graph, restarts allowed) in a thread, kills the graph's
    sim with SIGSEGV (what its software renderer's crash does) once ``when()`` holds, and
    returns what ``run`` returned after it went on."""
    got: dict = {}

    def work() -> None:
        try:
            got["results"] = run()
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            got["error"] = e

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 300
    while not when() and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    sim = re.search(r"started sim \(pid (\d+)\)", log.read_text())
    assert sim and when(), log.read_text()[-3000:]
    os.kill(int(sim.group(1)), signal.SIGSEGV)
    worker.join(timeout=400)
    assert not worker.is_alive() and "error" not in got, f"{got.get('error')}: {log.read_text()[-3000:]}"
    return got["results"]
