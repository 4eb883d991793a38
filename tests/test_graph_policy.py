"""The policy server on the live graph (launch/deploy_policy.launch.yaml: sim, command mux,
policy server): it keeps the control rate while inference is slow, loads checkpoints by
parameter with clear refusals, and a checkpoint that produces NaN or out-of-range actions
never moves the arm. The checkpoints are real (safetensors + config.json), untrained."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from robot_learning_ros.client import GraphClient
from std_srvs.srv import Trigger
from test_graph import sim_now, stamp, tcp, wait_still

from robot_learning.data.schema import load_recipe
from robot_learning.graph import SimGraph
from robot_learning.paths import project_root
from robot_learning.policies.checkpoint import save_checkpoint
from robot_learning.policies.untrained import untrained_policy

pytestmark = pytest.mark.graph


def make_checkpoint(path: Path, down_dims=(16, 32), steps: int = 4, nan: bool = False,
                    narrow: bool = False, horizon: int = 8, action_horizon: int = 4) -> Path:
    """An untrained low-dim policy on the workcell's topics. ``nan``: NaN weights; ``narrow``:
    it declares an action range 1e-4 wide and samples far outside it (untrained, with
    DPM-Solver++, which does not clip its estimates to the data's range as DDIM does)."""
    policy = untrained_policy({"ee_pose.data": 7, "gripper_state.position": 2}, lo=[0.0] * 7 if narrow else None,
                              hi=[1e-4] * 7 if narrow else None, pred_horizon=horizon, action_horizon=action_horizon,
                              down_dims=list(down_dims), inference_steps=steps,
                              **({"sampler": "dpmsolver"} if narrow else {}))
    if nan:
        with torch.no_grad():
            for p in policy.net.out.parameters():
                p.fill_(float("nan"))
    recipe = load_recipe(project_root() / "datasets" / "recipes" / "workcell.yaml")
    return save_checkpoint(policy, path, {"recipe": recipe.raw})


@pytest.fixture(scope="module")
def deploy(tmp_path_factory):
    d = tmp_path_factory.mktemp("deploy")
    # slow: each inference takes many control periods (0.3 s alone on a 2-core EPYC without
    # AMX, about 1 s beside the sim); its chunks run 1.6 s, so the arm keeps getting fresh
    # actions while the next one is computed. Bigger nets took 4.4 s here: every chunk came stale.
    ckpts = {"slow": make_checkpoint(d / "slow", down_dims=(64, 128, 256), steps=16, horizon=32,
                                     action_horizon=16),
             "nan": make_checkpoint(d / "nan", nan=True), "narrow": make_checkpoint(d / "narrow", narrow=True)}
    g = SimGraph(d / "deploy.log", "deploy_policy.launch.yaml", checkpoint=ckpts["slow"], cameras="none",
                 control_rate=50.0, replan_every=2)
    g.__enter__()
    client = GraphClient("test_policy_client")
    client.subscribe("/arm/ee_pose", PoseStamped)
    client.subscribe("/policy/command/twist", TwistStamped, depth=200)
    client.subscribe("/policy/diagnostics", DiagnosticArray)
    with g.coming_up(client):
        client.wait_for("/arm/ee_pose", 5, timeout=60)
        client.wait_for("/policy/diagnostics", 1, timeout=60)
    yield g, client, ckpts
    client.close()
    rc = g.stop()
    assert rc == 0, g.log_path.read_text()[-3000:]


def diag(client) -> dict[str, str]:
    m = client.latest("/policy/diagnostics")
    return {kv.key: kv.value for kv in m.status[0].values}


def fresh_diagnostics(client) -> None:
    """Waits for diagnostics published after now (they come at 1 Hz)."""
    client.clear("/policy/diagnostics")
    client.wait_for("/policy/diagnostics", 2, timeout=10)


def set_param(client, name: str, value: str | int) -> tuple[bool, str]:
    v = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value) if isinstance(value, int) else \
        ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(value))
    res = client.call(SetParameters, "/policy_server/set_parameters", timeout=60.0,
                      parameters=[Parameter(name=name, value=v)])
    return res.results[0].successful, res.results[0].reason


def set_checkpoint(client, path) -> tuple[bool, str]:
    return set_param(client, "checkpoint", path)


def test_commands_keep_the_control_rate_while_inference_is_slow(deploy):
    g, client, _ = deploy
    p0 = wait_still(client)
    assert client.call(Trigger, "/policy/resume").success
    client.clear("/policy/command/twist")
    # 6 s of the sim's clock (a loaded machine runs the sim slower than the wall), 60 s at most
    until, end = sim_now(client) + 6.0, time.monotonic() + 60.0
    while sim_now(client) < until and time.monotonic() < end:
        time.sleep(0.1)
    with client.lock:
        msgs = list(client.msgs["/policy/command/twist"])
    assert client.call(Trigger, "/policy/pause").success
    d = diag(client)
    assert float(d.get("infer.p50_ms", 0)) > 100.0, str(d)                   # each inference is slow ...
    # ... the 50 Hz control timer is not: it keeps ticking while the inference thread works. A
    # tick held up by an inference would wait for all of it, so its interval would be at least
    # one inference long; beside the sim on 2 cores p99 is 40-70 ms, and 100-120 ms with another
    # process keeping a core busy (inference then 0.2-1.5 s: half of it, the old limit, was
    # crossed once at 106 against 194 ms)
    assert float(d["tick_interval.p99_ms"]) < float(d["infer.p50_ms"]), str(d)
    assert float(d["tick_interval.n"]) > 150, str(d)
    t = np.array([stamp(m) for m in msgs])
    assert len(t) > 100 and np.all(np.diff(t) > 0), str(d)
    assert np.linalg.norm(tcp(client) - p0) > 2e-3                # and the policy's actions moved the arm


@pytest.mark.parametrize("kind", ["nan", "narrow"])
def test_nan_or_out_of_range_actions_never_move_the_arm(deploy, kind):
    g, client, ckpts = deploy
    ok, reason = set_checkpoint(client, ckpts[kind])
    assert ok, reason
    p0 = wait_still(client)
    assert client.call(Trigger, "/policy/resume").success
    time.sleep(3.0)
    d = diag(client)
    assert client.call(Trigger, "/policy/pause").success
    assert int(d["rejected_chunks"]) >= 1, d
    assert ("NaN" in d["last_reject"]) if kind == "nan" else ("outside" in d["last_reject"])
    assert np.linalg.norm(tcp(client) - p0) < 1e-3
    assert "refused a chunk" in g.log_path.read_text()


def test_a_bad_checkpoint_is_refused_with_a_reason(deploy, tmp_path):
    g, client, ckpts = deploy
    ok, reason = set_checkpoint(client, tmp_path / "missing")
    assert not ok and "config.json" in reason
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"policy": "mystery"}')
    ok, reason = set_checkpoint(client, tmp_path / "other")
    assert not ok and "mystery" in reason
    ok, reason = set_checkpoint(client, ckpts["slow"])  # still serving after the refusals
    assert ok, reason


def test_sampling_is_set_at_deploy_time_and_bad_settings_are_refused(deploy):
    g, client, ckpts = deploy
    fresh_diagnostics(client)
    assert diag(client)["sampling"] == "ddim 16"  # the checkpoint's own
    ok, reason = set_param(client, "sampler", "euler")
    assert not ok and "ddim" in reason
    ok, reason = set_param(client, "inference_steps", -3)
    assert not ok and "inference_steps" in reason
    assert set_param(client, "sampler", "dpmsolver")[0] and set_param(client, "inference_steps", 5)[0]
    fresh_diagnostics(client)
    assert diag(client)["sampling"] == "dpmsolver 5"
    ok, reason = set_checkpoint(client, ckpts["slow"])  # later loads keep the deploy-time setting
    assert ok, reason
    fresh_diagnostics(client)
    assert diag(client)["sampling"] == "dpmsolver 5"
    ok, reason = set_param(client, "noise_scale", 3.0)
    assert not ok and "noise_scale must be between 0 and 2" in reason
    assert set_param(client, "noise_scale", 0.0)[0]
    fresh_diagnostics(client)
    assert diag(client)["sampling"] == "dpmsolver 5 noise 0"
    assert set_param(client, "sampler", "")[0] and set_param(client, "inference_steps", 0)[0]
    assert set_param(client, "noise_scale", -1.0)[0]


def make_pose_checkpoint(path: Path, center: np.ndarray, half_width: float = 0.01, gripper: float = 0.0) -> Path:
    """An untrained ``tcp_pose`` policy whose actions all land within ``half_width`` of ``center``."""
    from robot_learning.policies.untrained import save_untrained, untrained_pose_policy

    return save_untrained(path, untrained_pose_policy(center, half_width, gripper=gripper))


def test_a_pose_policy_reaches_the_arm_as_timed_plans(deploy, tmp_path):
    """A tcp_pose policy's chunks go out as one MultiDOFJointTrajectory per chunk, not as a
    twist stream; the mux reports the policy in control and the arm follows the plans."""
    from std_msgs.msg import String
    from trajectory_msgs.msg import MultiDOFJointTrajectory

    from robot_learning.config import load_robot
    from robot_learning.control.kinematics import Kinematics
    from robot_learning.transforms import wxyz_to_xyzw

    g, client, _ = deploy
    robot = load_robot()
    pos, quat = Kinematics(robot).fk(robot.home)
    center = np.r_[pos + [0.03, 0.0, 0.0], wxyz_to_xyzw(quat)]
    client.subscribe("/policy/command/tcp_trajectory", MultiDOFJointTrajectory, depth=100)
    client.subscribe("/control_source", String, latched=True, transform=lambda m: m.data)
    ok, reason = set_checkpoint(client, make_pose_checkpoint(tmp_path / "pose", center))
    assert ok, reason
    wait_still(client)
    client.clear("/policy/command/twist")
    assert client.call(Trigger, "/policy/resume").success
    plans = client.wait_for("/policy/command/tcp_trajectory", 3, timeout=60)
    time.sleep(3.0)
    assert client.call(Trigger, "/policy/pause").success
    assert not client.msgs["/policy/command/twist"]           # no twist stream alongside the plans
    assert "policy" in client.msgs["/control_source"]
    for m in plans:
        assert m.header.frame_id == robot.base_frame and len(m.points) >= 2
        knots = np.array([[p.transforms[0].translation.x, p.transforms[0].translation.y,
                           p.transforms[0].translation.z] for p in m.points])
        assert np.all(np.abs(knots - center[:3]) <= 0.01 + 1e-6)
        t = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in m.points]
        assert t[0] > 0 and np.all(np.diff(t) > 0)
    assert np.linalg.norm(tcp(client) - center[:3]) < 0.02    # the arm went where the plans said
    ok, reason = set_checkpoint(client, deploy[2]["slow"])
    assert ok, reason


def test_residual_and_dsrl_checkpoints_are_served_with_no_server_change(deploy, tmp_path):
    """A residual checkpoint's correction reaches the arm at every tick, a DSRL one's chunks are
    the base's from the agent's noise; the server loads both by parameter like any checkpoint."""
    from robot_learning.policies.registry import base_ref
    from robot_learning.policies.residual import ResidualConfig, ResidualPolicy
    from robot_learning.policies.sac import SAC, SACConfig

    g, client, ckpts = deploy
    keys = ["ee_pose.data", "gripper_state.position"]
    # a base that barely moves (its actions span 0.1 mm/s), and a residual adding +1 cm/s along x
    base = save_checkpoint(untrained_policy(dict(zip(keys, (7, 2))), lo=[0.0] * 7, hi=[1e-4] * 7,
                                            pred_horizon=8, action_horizon=4, down_dims=[16, 32], inference_steps=4),
                           tmp_path / "base", {"recipe": load_recipe(project_root() / "datasets" / "recipes" /
                                                                     "workcell.yaml").raw})
    model = ResidualPolicy(ResidualConfig(keys, 9, 7, [0.02] * 6 + [0.0], [0.0] * 7, [1e-4] * 7,
                                          hidden=[16]))
    with torch.no_grad():
        model.actor[-1].bias[0] = 0.5
    ok, reason = set_checkpoint(client, model.save(tmp_path / "residual", base))
    assert ok, reason
    p0 = wait_still(client)
    fresh_diagnostics(client)
    refused = int(diag(client)["rejected_chunks"])   # the server's count so far (earlier tests' refusals)
    client.clear("/policy/command/twist")
    assert client.call(Trigger, "/policy/resume").success
    time.sleep(4.0)
    assert client.call(Trigger, "/policy/pause").success
    vx = np.array([m.twist.linear.x for m in client.msgs["/policy/command/twist"]])
    assert len(vx) > 50 and np.median(vx) == pytest.approx(0.01, abs=2e-4), vx[:20]
    moved = tcp(client) - p0
    assert moved[0] > 0.01 and abs(moved[1]) < 0.005, moved
    fresh_diagnostics(client)
    assert int(diag(client)["rejected_chunks"]) == refused

    n = 8 * 7
    agent = SAC(SACConfig(obs_dim=9, action_low=[-1.5] * n, action_high=[1.5] * n, hidden=[16, 16]))
    dsrl = agent.save(tmp_path / "dsrl", extra={"policy": "dsrl", "base": base_ref(base), "obs_keys": keys,
                                                "dt": 0.1, "env": "workcell/pick_place"})
    ok, reason = set_checkpoint(client, dsrl)
    assert ok, reason
    fresh_diagnostics(client)
    refused = int(diag(client)["rejected_chunks"])
    client.clear("/policy/command/twist")
    assert client.call(Trigger, "/policy/resume").success
    time.sleep(3.0)
    assert client.call(Trigger, "/policy/pause").success
    twists = client.msgs["/policy/command/twist"]
    vx = np.array([m.twist.linear.x for m in twists])
    assert len(vx) > 50 and vx.min() >= 0.0 and vx.max() <= 1.1e-4, vx   # within the base's range of 0.1 mm/s
    fresh_diagnostics(client)
    assert int(diag(client)["rejected_chunks"]) == refused
    ok, reason = set_checkpoint(client, ckpts["slow"])
    assert ok, reason
