"""The MuJoCo workcell: sensors, tasks and the scripted expert through the gym env."""

import gymnasium as gym
import numpy as np
import pytest

import robot_learning.sim.env  # noqa: F401  (registers the env)
from robot_learning.sim.env import WorkcellEnv, expert_obs_from_env
from robot_learning.sim.expert import ScriptedExpert
from robot_learning.sim.workcell import Workcell
from robot_learning.transforms import axis_angle_quat, pointing_down, quat_mul, yaw_of

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest


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


def test_peg_insert_starts_with_the_peg_held_above_the_hole():
    """SERL's insertion set-up: the hand at the drawn start, pointing down, the peg held in the
    closed fingers (it follows the hand up), its bottom 5-10 cm above the hole's top face."""
    c = Workcell("peg_insert")
    st = c.task.cfg["start"]
    for seed in range(5):
        c.reset(seed)
        pos, quat = c.tcp_pose()
        want, yaw, _ = c.task.hand_start()
        assert np.linalg.norm(pos - want) < 1e-3
        assert abs(yaw_of(quat) - yaw) < 0.01 and abs(quat[0]) < 0.01  # yaw as drawn, z pointing down
        peg, hole = (c.object_poses()[b][0] for b in ("peg", "hole"))
        assert np.abs(peg[:2] - hole[:2]).max() <= st["xy"] + 1e-3
        bottom = peg[2] - c.task.cfg["peg"]["half_length"] - c.task.cfg["hole"]["depth"]
        assert st["height"][0] - 2e-3 <= bottom <= st["height"][1] + 2e-3
        assert c.controller.fault is None and not c.success()
        rel = peg - pos
        c.controller.command_twist(np.r_[0, 0, 0.1, 0, 0, 0], c.time)
        for _ in range(int(0.5 / c.control_dt)):
            c.controller.command_twist(np.r_[0, 0, 0.1, 0, 0, 0], c.time)
            c.step_control()
        pos2 = c.tcp_pose()[0]
        assert pos2[2] - pos[2] > 0.03
        assert np.linalg.norm(c.object_poses()["peg"][0] - pos2 - rel) < 2e-3  # lifted with the hand


def test_peg_insert_lets_through_only_what_the_peers_task_allows():
    c = Workcell("peg_insert")
    c.reset(3)
    pos, quat = c.tcp_pose()
    a = c.task.shape_action(np.array([0.05, -0.05, 0.05, 0.7, -0.7, 0.3, 0.0]), pos, quat, 0.1)
    assert np.allclose(a[[0, 1, 2, 5]], [0.05, -0.05, 0.05, 0.3])  # x, y, z and yaw are the policy's
    assert np.allclose(a[3:5], 0, atol=0.05) and a[6] == 1.0  # roll, pitch held; gripper closed
    tilted = quat_mul(axis_angle_quat([1, 0, 0], 0.1), quat)
    assert c.task.shape_action(np.zeros(7), pos, tilted, 0.1)[3] < -0.2  # tilted: steered back
    hole = c.object_poses()["hole"][0]
    b = c.task.cfg["box"]
    corner = np.r_[hole[:2] + b["xy"], c.task.cfg["hole"]["depth"] + b["above_top"][1]]
    near = corner - 0.01  # 1 cm inside on every axis: a step at 0.2 m/s would leave the box
    out = c.task.shape_action(np.array([0.2, 0.2, 0.2, 0, 0, 0, 1.0]), near, quat, 0.1)
    assert np.allclose(out[:3], 0.1)  # slowed to end the step on the edge
    assert np.allclose(c.task.shape_action(np.array([0.2, 0.2, 0.2, 0, 0, 0, 1.0]), corner + 0.02, quat, 0.1)[:3], 0)
    back = c.task.shape_action(np.array([-0.1, -0.1, -0.1, 0, 0, 0, 1.0]), corner, quat, 0.1)
    assert np.allclose(back[:3], -0.1)  # and everything back in
    turned = pointing_down(c.task.hole_yaw + b["yaw"])  # at the yaw limit
    assert c.task.shape_action(np.r_[0, 0, 0, 0, 0, 1.0, 1], pos, turned, 0.1)[5] == pytest.approx(0, abs=1e-6)
    assert c.task.shape_action(np.r_[0, 0, 0, 0, 0, -1.0, 1], pos, turned, 0.1)[5] == -1.0
    # the policy's action space: 10 cm/s and 0.6 rad/s on the free dims, the arm's elsewhere
    low, high = c.task.action_bounds(*c.robot.limits.twist_action_bounds())
    assert np.allclose(high, [0.1, 0.1, 0.1, 1.5, 1.5, 0.6, 1.0]) and np.allclose(low, [-h for h in high[:6]] + [0])


def _progress(env: WorkcellEnv) -> float:
    """The task's progress measure (what reward shaping reads) from the sim's poses."""
    obs = {"ee_pose.data": env.cell.tcp_pose()[0][None]}
    obs.update({f"{b}_pose.data": p[None] for b, (p, _) in env.cell.object_poses().items()})
    return float(env.cell.task.progress(obs)[0])


@pytest.mark.parametrize("task", ["pick_place", "peg_in_hole", "peg_insert"])
def test_scripted_expert_succeeds_in_the_env(task):
    """... and the task's progress measure rises along its episodes to within 3 cm of done
    (seen: from -0.10 to -0.85 at the start to -0.001 to -0.024 at success)."""
    env = gym.make("robot_learning/Workcell-v0", task=task).unwrapped
    assert isinstance(env, WorkcellEnv)
    results = []
    for seed in range(1, 21):
        env.reset(seed=seed)
        e = ScriptedExpert(task)
        info = {"success": False}
        start = _progress(env)
        for k in range(env.cell.task.max_steps):
            tw, g = e.act(expert_obs_from_env(env, k / env.control_hz))
            _, _, term, trunc, info = env.step(np.r_[tw, g])
            if term or trunc:
                break
        results.append(info["success"])
        if info["success"]:
            assert _progress(env) > -0.03 and _progress(env) > start + 0.07, (seed, start, _progress(env))
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


def test_a_heavy_cube_dropped_with_a_spin_settles_on_the_table():
    """Randomized masses are part of sim-to-real training; with MuJoCo's implicitfast integrator
    a 200 g cube (the nominal 80 g times 2.5) slipping from the fingers onto the table blew up in
    12 of these 20 drops, and MuJoCo reset the whole scene mid-episode."""
    import mujoco

    cell = Workcell("pick_place", randomization={"objects": {"mass_scale": [2.5, 2.5]}})
    a = cell.task.qadr["cube"]
    for k in range(20):
        cell.reset(k)
        rng = np.random.default_rng(k)
        d = cell.data
        d.qpos[a:a + 3] = [0.55, 0.2, 0.024 + 0.01 * rng.random()]
        q = np.r_[1.0, rng.normal(size=3) * [0.02, 0.02, 0.3]]
        d.qpos[a + 3:a + 7] = q / np.linalg.norm(q)
        d.qvel[cell.model.jnt_dofadr[cell.model.body_jntadr[cell.task.body_ids["cube"]]] + np.arange(6)] = \
            np.r_[0.0, 0.0, -0.25, rng.normal(size=3) * 0.5]
        mujoco.mj_forward(cell.model, d)
        cell.advance(1.0)
        assert cell.controller.fault is None, (k, cell.controller.fault)
        assert abs(cell.object_poses()["cube"][0][2] - 0.022) < 0.002, (k, cell.object_poses()["cube"][0])


def test_a_sim_that_goes_unstable_ends_the_episode_saying_so():
    """MuJoCo resets a diverged state to the model's defaults and carries on: without a check the
    arm would jump to zero and the clock run backwards, and the episode would end as an
    unexplained joint-speed fault, or not at all."""
    said = []
    cell = Workcell("pick_place", log=said.append)
    cell.reset(1)
    cell.advance(0.1)
    before = cell.time
    cell.data.qvel[cell.model.jnt_dofadr[cell.model.body_jntadr[cell.task.body_ids["cube"]]]] = 1e12
    cell.step_control()
    assert cell.time > before
    assert cell.controller.fault and "went unstable" in cell.controller.fault and "'cube'" in cell.controller.fault
    assert cell.controller.fault in said[-1]  # in the log, once
    cell.reset(2)  # the next episode starts clean
    assert cell.controller.fault is None
    cell.advance(0.1)
    assert cell.controller.fault is None


def test_the_experts_label_for_any_peg_insert_state_pushes_in_over_the_opening_else_goes_over_it():
    """``ScriptedExpert.label`` (DAgger's labels): no matter where its plan would be, from a peg
    over the opening it pushes down; from a peg beside it, low, it brings it over the opening at
    the pre-insertion height instead of back to the approach its plan starts with."""
    from robot_learning.sim.expert import ExpertObs, ScriptedExpert
    from robot_learning.transforms import pointing_down

    e = ScriptedExpert("peg_insert")
    hole = np.array([0.5, 0.15, 0.0])
    down = pointing_down(0.0)
    L = e.peg_half_length

    def obs(peg):   # the TCP 3 cm above the peg's centre, the peg upright, not turned
        return ExpertObs(0.0, peg + [0, 0, 0.03], down, 0.02, {"peg": (peg, np.array([1.0, 0, 0, 0])),
                                                                "hole": (hole, np.array([1.0, 0, 0, 0]))})

    over = obs(hole + [0.0005, 0.0, L + 0.03])
    twist, grip = e.label(over)
    assert twist[2] < -0.02 and abs(twist[0]) < 0.01 and grip == 1.0
    beside = obs(hole + [0.02, 0.0, L + 0.03])
    twist, _ = e.label(beside)
    assert twist[0] < -0.01 and twist[2] > 0 and twist[2] < 0.05   # toward the axis, up to 4.5 cm only
    assert e.plan == [] and e.k == 0   # labelling left the expert's own plan alone
    with pytest.raises(ValueError, match="peg_insert only"):
        ScriptedExpert("pick_place").label(over)
