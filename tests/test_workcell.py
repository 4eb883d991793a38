"""The MuJoCo workcell: sensors, tasks and the scripted expert through the gym env."""

import gymnasium as gym
import numpy as np
import pytest

import robot_learning.sim.env  # noqa: F401  (registers the env)
from robot_learning.sim.env import WorkcellEnv, expert_obs_from_env
from robot_learning.sim.expert import ScriptedExpert
from robot_learning.sim.workcell import Workcell


@pytest.fixture(scope="module")
def cell():
    return Workcell("pick_place")


def test_cameras_render_calibrated_rgb_and_depth(cell):
    cell.reset(0)
    f = cell.render("front")
    assert f.rgb.shape == (480, 640, 3) and f.rgb.dtype == np.uint8
    assert f.depth_mm.dtype == np.uint16
    # The table centre is about 1.2 m from the front camera.
    h, w = f.depth_mm.shape
    assert 600 < np.median(f.depth_mm[h // 2 - 20:h // 2 + 20, w // 2 - 20:w // 2 + 20]) < 2000
    assert cell.render("wrist", 96, 96).rgb.shape == (96, 96, 3)


def test_grasp_shows_on_tactile_pads_and_wrist_sensor(cell):
    cell.reset(3)
    cube, _ = cell.object_poses()["cube"]
    e = ScriptedExpert("pick_place")
    from robot_learning.sim.expert import ExpertObs

    while e.k < 3 and cell.time < 15:  # up to the lift: the cube is squeezed
        p, q = cell.tcp_pose()
        tw, g = e.act(ExpertObs(cell.time, p, q, cell.backend.read_state().gripper_opening, cell.object_poses()))
        cell.controller.command_twist(tw, cell.time)
        cell.controller.command_gripper(g, cell.time)
        cell.advance(0.04)
    grids = cell.tactile_grids()
    assert set(grids) == {"left_finger", "right_finger"}
    for g in grids.values():
        assert g.shape == (4, 4, 3)
        normal = g[..., 2].sum()
        assert normal > 5.0  # pressing into the pad, newtons
        assert (g[..., 2] > 0).sum() >= 2  # spread over more than one taxel
    # Both fingers squeeze with about the same force.
    n = [g[..., 2].sum() for g in grids.values()]
    assert n[0] == pytest.approx(n[1], rel=0.2)


def test_reset_is_seeded(cell):
    cell.reset(7)
    a = cell.object_poses()["cube"][0]
    cell.reset(8)
    b = cell.object_poses()["cube"][0]
    cell.reset(7)
    assert np.allclose(cell.object_poses()["cube"][0], a) and not np.allclose(a, b)


def test_peg_hole_clearance_is_two_millimetres():
    c = Workcell("peg_in_hole")
    assert 2 * c.task.hole_half - 2 * c.task.cfg["peg"]["half_width"] == pytest.approx(0.002)


@pytest.mark.parametrize("task", ["pick_place", "peg_in_hole"])
def test_scripted_expert_succeeds_in_the_env(task):
    env = gym.make("robot_learning/Workcell-v0", task=task).unwrapped
    assert isinstance(env, WorkcellEnv)
    results = []
    for seed in range(1, 21):
        env.reset(seed=seed)
        e = ScriptedExpert(task)
        info = {"success": False}
        for k in range(env.cell.task.max_steps):
            tw, g = e.act(expert_obs_from_env(env, k / env.control_hz))
            _, _, term, trunc, info = env.step(np.r_[tw, g])
            if term or trunc:
                break
        results.append(info["success"])
    assert np.mean(results) >= 0.95, results


def test_env_images_and_bad_actions():
    env = WorkcellEnv("pick_place", cameras=("front", "wrist"), depth=True)
    obs, _ = env.reset(seed=0)
    assert obs["front_rgb"].shape == (96, 96, 3) and obs["wrist_depth"].shape == (96, 96)
    assert env.observation_space.contains(obs)
    with pytest.raises(ValueError, match="7 numbers"):
        env.step(np.zeros(6))
    q = env.cell.backend.read_state().q
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.r_[np.nan, np.zeros(5), 0.0])
    assert np.array_equal(env.cell.backend.read_state().q, q)
