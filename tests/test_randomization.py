"""Domain randomization and latency injection as configuration (issue 16): seeded per episode,
relative to the nominal model (no compounding), logged, and each latency measurable."""

from __future__ import annotations

import numpy as np
import pytest

from robot_learning.config import ConfigError
from robot_learning.sim.env import WorkcellEnv
from robot_learning.sim.randomize import load_randomization
from robot_learning.sim.workcell import Workcell


@pytest.mark.parametrize("cfg, msg", [
    ({"object": {}}, "unknown section 'object'"),
    ({"objects": {"mass": [1, 2]}}, "unknown key 'objects.mass'"),
    ({"objects": {"mass_scale": [2, 1]}}, "must be \\[low, high\\]"),
    ({"sensors": {"pixels": -1}}, "must be a number >= 0"),
])
def test_a_bad_randomization_file_is_one_sentence(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        load_randomization(cfg)


def test_a_bad_parameter_file_stops_collection_before_the_graph_starts(tmp_path):
    """Not a sim node dying inside the launch log with a traceback, and no dataset begun."""
    import subprocess
    import sys

    bad = tmp_path / "real.yaml"
    bad.write_text("arm:\n  kp_scale: [2, 1]\n")
    r = subprocess.run([sys.executable, "-m", "robot_learning.cli", "collect", "--episodes", "1", "--dataset",
                        str(tmp_path / "d.zarr"), f"randomization:={bad}"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "'arm.kp_scale' must be [low, high]" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "d.zarr").exists()


def test_each_episode_draws_from_its_seed_and_never_compounds():
    cell = Workcell("peg_in_hole", randomization="sim/randomization.yaml")
    peg = cell.task.body_ids["peg"]
    nominal = cell.randomizer.nominal["body_mass"][peg]
    cell.reset(1)
    first, mass1, light1 = dict(cell.draw.values), cell.model.body_mass[peg], cell.model.light_diffuse.copy()
    cell.reset(2)
    assert cell.draw.values != first and cell.model.body_mass[peg] != mass1
    cell.reset(1)
    assert cell.draw.values == first and cell.model.body_mass[peg] == mass1  # replayable, not compounded
    assert np.array_equal(cell.model.light_diffuse, light1)
    assert 0.7 * nominal <= mass1 <= 1.4 * nominal
    hole = cell.task.body_ids["hole"]  # a fixture: its clearance is the task, never randomized
    assert cell.model.body_mass[hole] == cell.randomizer.nominal["body_mass"][hole]
    cam = cell.calib.cameras["front"]
    moved = cell.render("front", 80, 60, depth=False).rgb
    cell.close()
    plain = Workcell("peg_in_hole")
    plain.reset(1)
    assert plain.draw.values == {}
    assert np.abs(plain.render("front", 80, 60, depth=False).rgb.astype(int) - moved).mean() > 1.0
    assert cam.width == 640
    plain.close()


def _push(env: WorkcellEnv, steps: int) -> list[float]:
    """TCP x after each of ``steps`` steps of a +x twist from rest (observed, and true)."""
    env.reset(seed=3)
    x0 = env.cell.tcp_pose()[0][0]
    out = []
    for _ in range(steps):
        obs, *_ = env.step(np.array([0.1, 0, 0, 0, 0, 0, 0.0]))
        out.append((float(obs["tcp_pose"][0]) - x0, float(env.cell.tcp_pose()[0][0]) - x0))
    return out


def test_action_and_observation_latency_are_what_the_file_says():
    fixed = {"latency": {"action_s": [0.05, 0.05]}}
    nominal, late = _push(WorkcellEnv("pick_place"), 3), _push(WorkcellEnv("pick_place", randomization=fixed), 3)
    # the first step's command takes effect half-way through it: about half the motion, then caught up in pace
    assert late[0][1] < 0.7 * nominal[0][1] and late[2][1] - late[1][1] == pytest.approx(
        nominal[2][1] - nominal[1][1], rel=0.2)
    seen = _push(WorkcellEnv("pick_place", randomization={"latency": {"observation_s": [0.04, 0.04]}}), 4)
    lag = [true - obs for obs, true in seen[1:]]
    assert all(0.002 < g < 0.006 for g in lag), lag  # 0.04 s at about 0.1 m/s: the sensors saw 4 mm ago
    with pytest.raises(ValueError, match="less than one step"):
        WorkcellEnv("pick_place", randomization={"latency": {"observation_s": [0.0, 0.2]}})


def test_sensor_noise_has_the_configured_spread_and_the_draw_is_logged():
    env = WorkcellEnv("pick_place", randomization={"sensors": {"joint_position": 0.01}})
    _, info = env.reset(seed=0)
    assert info["randomization"] == {}  # noise only: nothing physical drawn
    q = env.cell.backend.read_state().q
    errs = np.array([env._obs()["joint_pos"] - q for _ in range(200)])
    assert errs.std() == pytest.approx(0.01, rel=0.15) and abs(errs.mean()) < 0.002
    env.close()
    _, info = WorkcellEnv("pick_place", randomization="sim/randomization.yaml").reset(seed=4)
    assert {"mass_scale", "light_diffuse", "action_latency_s", "camera_pos_offset_m"} <= set(info["randomization"])
