"""The scripted intervening operator (RLIF's setting) and ``train sac --intervene --rlif``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robot_learning.config import load_yaml
from robot_learning.rl.intervene import InterveningOperator
from robot_learning.sim.env import WorkcellEnv, expert_obs_from_env
from robot_learning.sim.expert import ScriptedExpert
from robot_learning.transforms import orientation_error, pointing_down, xyzw_to_wxyz, yaw_of

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest


def _episode(policy, seed: int = 3, steps: int = 250, task: str = "peg_in_hole",
             takeover_steps: int = 15) -> tuple[list[bool], list[bool], bool]:
    env = WorkcellEnv(task)
    try:
        env.cell.task.max_steps = steps
        env.reset(seed=seed)
        op = InterveningOperator(task, takeover_steps=takeover_steps)
        flags, starts, info, a = [], [], {"success": False}, np.zeros(7)
        for k in range(steps):
            obs = expert_obs_from_env(env, k / env.control_hz)
            a, intervening, started = op.step(obs, policy(obs, a))
            _, _, term, trunc, info = env.step(a)
            flags.append(intervening)
            starts.append(started)
            if term or trunc:
                break
        return flags, starts, bool(info["success"])
    finally:
        env.close()


def test_an_operator_never_takes_over_from_a_policy_that_does_what_it_would():
    twin = ScriptedExpert("peg_in_hole")
    flags, _, success = _episode(lambda obs, _: np.r_[twin.act(obs)])
    assert success and not any(flags)


def test_an_operator_takes_over_from_a_policy_that_stands_still_and_finishes_the_task():
    """The policy holds still (the gripper as it was); the operator moves the arm in turns."""
    flags, starts, success = _episode(lambda obs, last: np.r_[np.zeros(6), last[6]], steps=400)
    assert starts.index(True) == 4                     # patience: the 5th astray step in a row
    assert flags[4:19] == [True] * 15                  # then 15 steps of the operator's own
    assert sum(starts) >= 3 and 0.5 < np.mean(flags) < 1.0
    assert success                                     # in turns, the operator gets the peg in


def test_an_operator_who_takes_over_until_done_finishes_the_insertion_from_where_the_policy_left_it():
    """peg_insert, takeovers until the plan is done: a policy that drifts off sideways and up is
    taken over once, and the operator's restarted plan gets the peg in within that takeover."""
    away = np.r_[0.04, -0.03, 0.02, 0, 0, 0, 1.0]
    flags, starts, success = _episode(lambda obs, _: away, seed=5, steps=100, task="peg_insert", takeover_steps=0)
    # judged by progress: no closer than 10 steps before (from step 10 on), 5 such steps in a row
    assert sum(starts) == 1 and starts.index(True) == 14
    assert all(flags[14:]) and success                 # never handed back before the peg was in


def test_on_peg_insert_an_operator_leaves_alone_a_policy_that_takes_another_path_in():
    """The expert goes above the hole first, then down; a policy that heads straight for the
    hole (diagonally, turning as it goes) makes progress all the way, so the operator never
    takes over (judged by direction against its own plan it took over at step 8-9 and drove
    88% of these episodes)."""
    half = float(load_yaml("sim/tasks/peg_insert.yaml")["peg"]["half_length"])

    def straight(obs, _):
        (peg, pq), (hole, hq) = obs.objects["peg"], obs.objects["hole"]
        v = np.clip(3.0 * (np.r_[hole[:2], half + 0.002] - peg), -0.1, 0.1)
        turn = (yaw_of(hq) - yaw_of(pq) + np.pi / 4) % (np.pi / 2) - np.pi / 4
        return np.r_[v, 0, 0, np.clip(3.0 * turn, -0.6, 0.6), 1.0]

    for seed in (5, 6):
        flags, _, success = _episode(straight, seed=seed, steps=100, task="peg_insert", takeover_steps=0)
        assert success and not any(flags), (seed, flags.index(True) if any(flags) else None)


def test_rlif_blames_the_step_before_a_takeover_and_a_protective_stop():
    from robot_learning.rl.rlif import RlifRewards

    # the policy, the policy, a takeover, the operator, the operator, the policy, a protective stop
    began = [False, False, True, False, False, False, False]
    stopped = [False] * 6 + [True]
    rlif, out = RlifRewards(), []
    for i, (b, s) in enumerate(zip(began, stopped)):
        out += rlif.step({"seq": i, "reward": 5.0}, b, s)
        assert len(out) == i  # each step held back one
    out += rlif.flush()
    assert [t["seq"] for t in out] == list(range(7))
    assert [float(t["reward"]) for t in out] == [0, -1, 0, 0, 0, 0, -1]
    assert rlif.flush() == []


def test_train_sac_with_interventions_and_rlif_rewards(tmp_path):
    from robot_learning.rl.replay import ObsSpec, ReplayBuffer
    from robot_learning.train.sac import SACTrainConfig, train_sac

    cfg = SACTrainConfig(env="workcell/peg_in_hole", steps=300, max_episode_steps=100, learning_starts=100,
                         batch_size=32, hidden=[32, 32], eval_every=1000, eval_episodes=1, video=False,
                         out=str(tmp_path), intervene=True, rlif=True)
    run = train_sac(cfg, progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    eps = [r for r in rows if "intervention_rate" in r]
    assert len(eps) >= 3 and all(0 < r["intervention_rate"] < 1 for r in eps)
    online = ReplayBuffer(1000, ObsSpec(("x",), (23,)), 7)
    online.load(run / "checkpoints" / "last" / "online.npz")
    # the logged episodes' steps (a protective stop ends an episode early, leaving a partial last one)
    logged = sum(r["episode_length"] for r in eps)
    got = {k: v[:logged] for k, v in online.in_order().items()}
    inter = got["intervention"]
    starts = inter & ~np.r_[False, inter[:-1]]
    assert starts.sum() == sum(r["takeovers"] for r in eps)
    # RLIF: -1 on the policy's step just before each takeover (a takeover running on from the step
    # before is not a start; one at an episode's first step has no step of the policy to blame),
    # never on the operator's correction, which joins the demonstrations
    first = np.r_[0, np.cumsum([r["episode_length"] for r in eps])[:-1]]
    blamed = np.zeros(len(inter), bool)
    blamed[[i - 1 for i in np.flatnonzero(starts) if i not in first]] = True
    stops = got["terminal"] & (got["reward"] == -1.0) & ~blamed   # the arm's own takeovers
    assert np.array_equal(got["reward"] == -1.0, blamed | stops) and blamed.any()
    assert not (inter & (got["reward"] != 0)).any() and set(np.unique(got["reward"])) <= {0.0, -1.0}
    assert (run / "curves.png").stat().st_size > 0

    # two runs on one figure, one of them cut off mid-line by a kill (its rows so far still count)
    from robot_learning.cli import main
    from robot_learning.train.compare import read_metrics

    cut = tmp_path / "cut"
    cut.mkdir()
    text = (run / "metrics.jsonl").read_text()
    (cut / "metrics.jsonl").write_text(text[: len(text) - 20])
    assert len(read_metrics(cut)) == len(rows) - 1
    out = tmp_path / "compare.png"
    assert main(["plot", f"{run}=rlif", f"{cut}=killed", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        main(["plot", str(tmp_path), "--out", str(out)])


def test_peg_insert_buffers_keep_the_action_that_reached_the_arm(tmp_path):
    """On peg_insert the task holds the gripper closed and roll/pitch level: the buffer keeps
    those executed actions, not the actor's raw ones, and the operator judges them (an actor's
    gripper output, which never reaches the arm, is no reason to take over)."""
    from robot_learning.rl.replay import ObsSpec, ReplayBuffer
    from robot_learning.train.sac import SACTrainConfig, train_sac

    cfg = SACTrainConfig(env="workcell/peg_insert", steps=120, learning_starts=60, batch_size=32, hidden=[32, 32],
                         eval_every=1000, eval_episodes=1, video=False, out=str(tmp_path), intervene=True)
    run = train_sac(cfg, progress=False)
    online = ReplayBuffer(1000, ObsSpec(("x",), (21,)), 7)
    online.load(run / "checkpoints" / "last" / "online.npz")
    got = online.in_order()
    assert len(got["action"]) == 120 and np.all(got["action"][:, 6] == 1.0)
    # roll and pitch are the task's hold toward pointing down at the pose observed (ee_pose:
    # position, then x y z w), whoever drove: the actor's and the operator's own did not pass
    pose = got["state"][:, :7].astype(float)
    hold = [np.clip(4.0 * orientation_error(pointing_down(yaw_of(q)), q)[:2], -1, 1)
            for q in xyzw_to_wxyz(pose[:, 3:7])]
    assert np.allclose(got["action"][:, 3:5], hold, atol=1e-4)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["intervention_rate"] < 1 for r in rows if "intervention_rate" in r)
