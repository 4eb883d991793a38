"""RL on top of a frozen diffusion policy: residual policies and DSRL, as checkpoint kinds.

A zero-initialized residual is the base exactly; its correction never leaves its bound; the
sampler is deterministic from a given noise; a residual or DSRL checkpoint refuses a base that
changed since it was trained; both train (tiny runs), resume, and are served by the policy
server's engine and the env rollouts like any other kind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_learning.policies.checkpoint import PolicyError
from robot_learning.policies.registry import load_policy, read_checkpoint
from robot_learning.policies.residual import NumpyResidual, ResidualConfig, ResidualPolicy
from robot_learning.policies.untrained import save_untrained
from robot_learning.runtime.server import PolicyServerCore, ServerConfig

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest

KEYS = ["ee_pose.data", "gripper_state.position", "cube_pose.data", "target_pose.data"]
TINY = dict(obs_dims={k: d for k, d in zip(KEYS, (7, 2, 7, 7))}, pred_horizon=8, action_horizon=4,
            down_dims=[8, 16], train_timesteps=10, inference_steps=4)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_untrained(tmp_path_factory.mktemp("base") / "base", **TINY)


def residual_model(seed: int = 0, scale=0.01, **kw) -> ResidualPolicy:
    torch.manual_seed(seed)
    return ResidualPolicy(ResidualConfig(KEYS, 23, 7, [scale] * 7, [-0.04] * 6 + [0.0], [0.04] * 6 + [1.0],
                                         hidden=[16, 16], **kw))


def window(rng, t: float = 1.0) -> dict[str, np.ndarray]:
    return {**{f"obs/{k}": rng.uniform(-1, 1, (2, d)).astype(np.float32) for k, d in TINY["obs_dims"].items()},
            "t": np.array([t - 0.1, t])}


def test_a_given_noise_gives_the_same_chunk_and_another_noise_another(base):
    runner = load_policy(base)
    rng = np.random.default_rng(0)
    w = {k: v[None] for k, v in window(rng).items() if k != "t"}
    noise = rng.standard_normal((1, 8, 7)).astype(np.float32)
    a, b = runner.chunks(w, noise), runner.chunks(w, noise)
    assert np.array_equal(a, b)
    assert not np.allclose(a, runner.chunks(w, -noise))
    with pytest.raises(ValueError, match=r"noise must be \[1, 8, 7\]"):
        runner.chunks(w, noise[:, :4])


def test_the_noise_scale_is_a_deploy_time_setting(base):
    """0 with DDIM: one chunk per observation, whatever the draw; 1: the trained spread; out of
    range, or given to a kind that samples no noise, refused in one sentence."""
    rng = np.random.default_rng(0)
    w = {k: v[None] for k, v in window(rng).items() if k != "t"}
    typical = load_policy(base, noise_scale=0.0)
    assert typical.noise_scale == 0.0  # a float 0 is a setting, not "the checkpoint's"
    assert np.array_equal(typical.chunks(w), typical.chunks(w))
    sampled = load_policy(base)
    assert sampled.noise_scale == 1.0 and not np.allclose(sampled.chunks(w), sampled.chunks(w))
    half = load_policy(base, noise_scale=0.5)
    spread = [np.std([r.chunks(w) for _ in range(8)], axis=0).mean() for r in (half, sampled)]
    assert spread[0] < spread[1]
    with pytest.raises(PolicyError, match="noise_scale must be between 0 and 2"):
        load_policy(base, noise_scale=-0.5)
    sampled.set_sampling(noise_scale=0.0)  # the policy server's live parameter change
    assert np.array_equal(sampled.chunks(w), typical.chunks(w))


def residual_sac(base: Path, path: Path, bound: float = 0.01, wild: bool = False) -> Path:
    """A residual SAC checkpoint (``train residual-sac``'s kind) on ``base``: zero-initialized,
    or with weights gone wild."""
    from robot_learning.policies.registry import base_ref
    from robot_learning.policies.sac import SAC, SACConfig

    torch.manual_seed(0)
    agent = SAC(SACConfig(obs_dim=23 + 7, action_low=[-1.0] * 7, action_high=[1.0] * 7, hidden=[16, 16]))
    agent.actor.zero_mean()
    if wild:
        with torch.no_grad():
            for p in agent.actor.parameters():
                p.normal_(0, 10.0)
    return agent.save(path, extra={"policy": "residual_sac", "base": base_ref(base), "obs_keys": KEYS,
                                   "bound": [bound] * 7, "dt": 0.1})


@pytest.mark.parametrize("kind", ["residual", "residual_sac"])
def test_a_zero_initialized_residual_is_the_base_exactly(base, tmp_path, kind):
    ck = residual_model().save(tmp_path / "res", base) if kind == "residual" else residual_sac(base, tmp_path / "r")
    runner, plain = load_policy(ck), load_policy(base)
    assert read_checkpoint(ck).kind == kind
    rng = np.random.default_rng(1)
    for _ in range(20):
        w = window(rng)
        chunk = runner.act(w)
        assert np.array_equal(chunk, plain.act(w))
        newest = {k: w[f"obs/{k}"][-1] for k in KEYS}
        for a in chunk:
            assert np.array_equal(runner.correct(a, newest), a)


def test_the_correction_never_leaves_its_bound_whatever_the_weights():
    rng = np.random.default_rng(2)
    for seed in range(5):
        model = residual_model(seed, scale=0.02)
        with torch.no_grad():
            for p in model.actor.parameters():
                p.normal_(0, 10.0)   # a residual gone wild
        net = NumpyResidual(model)
        x = rng.normal(0, 100, (200, 23))
        a = rng.normal(0, 1, (200, 7))
        corr = np.stack([net(s, b) for s, b in zip(x, a)])
        assert np.abs(corr).max() <= 0.02 + 1e-12
        assert np.abs(corr).max() > 0.019   # it does reach the bound: the clip is what holds it
        with torch.no_grad():  # torch's sampled corrections, as PPO explores, are bounded alike
            u = model.dist(model.inputs(torch.as_tensor(x, dtype=torch.float32),
                                        torch.as_tensor(a, dtype=torch.float32))).sample()
            assert float(model.correction(u).abs().max()) <= 0.02 + 1e-7
        # and the numpy tick path computes what torch does
        with torch.no_grad():
            want = model.correction(model.actor(model.inputs(torch.as_tensor(x[:5], dtype=torch.float32),
                                                             torch.as_tensor(a[:5], dtype=torch.float32))))
        np.testing.assert_allclose(corr[:5], want.numpy(), atol=1e-5)


def test_the_off_policy_correction_never_leaves_its_bound_and_is_the_agents_mean(base, tmp_path):
    from robot_learning.policies.residual import SacCorrection
    from robot_learning.policies.sac import load_sac
    from robot_learning.rl.residual_env import base_action_range

    ck = residual_sac(base, tmp_path / "wild", bound=0.02, wild=True)
    runner = load_policy(ck)
    agent, _ = load_sac(ck)
    mid, half = base_action_range(load_policy(base))
    net = SacCorrection(agent.eval(), np.full(7, 0.02), mid, half)
    rng = np.random.default_rng(2)
    x, a = rng.normal(0, 100, (200, 23)), rng.normal(0, 1, (200, 7))
    corr = np.stack([net(s, b) for s, b in zip(x, a)])
    assert np.abs(corr).max() <= 0.02 + 1e-12 and np.abs(corr).max() > 0.019
    for s, b, c in zip(x[:5], a[:5], corr):   # the tick's numpy is the agent's deterministic action
        u = agent.act({"state": np.r_[s, (b - mid) / half].astype(np.float32)}, deterministic=True)
        np.testing.assert_allclose(c, 0.02 * u, atol=1e-5)
    newest = {k: rng.normal(0, 100, d) for k, d in TINY["obs_dims"].items()}
    assert np.abs(runner.correct(a[0], newest) - a[0]).max() <= 0.02 + 1e-12


def test_the_server_applies_the_correction_every_tick_on_the_newest_observation(base, tmp_path):
    model = residual_model()
    with torch.no_grad():
        model.actor[-1].bias.fill_(0.5)   # a constant correction: half the bound on every action
    ck = model.save(tmp_path / "res", base)
    runner = load_policy(ck)
    clock = {"t": 0.0}
    core = PolicyServerCore(runner, ServerConfig(blend="replace", interpolate=False), lambda: clock["t"],
                            log=lambda m: None)
    plain = PolicyServerCore(load_policy(base), ServerConfig(blend="replace", interpolate=False),
                             lambda: clock["t"], log=lambda m: None)
    rng = np.random.default_rng(3)
    for c in (core, plain):
        c.resume()
    for k in range(3):
        clock["t"] = t = 0.1 * k
        for stream, d in (("ee_pose", 7), ("gripper_state", 2), ("cube_pose", 7), ("target_pose", 7)):
            arr = {"data" if stream != "gripper_state" else "position": rng.uniform(-1, 1, d)}
            for c in (core, plain):
                c.add_sample(stream, t, arr)
    for c in (core, plain):
        assert c.infer_once()
    got, want = core.tick(clock["t"]), plain.tick(clock["t"])
    np.testing.assert_allclose(got - want, 0.005, atol=1e-9)
    clock["t"] += 5.0   # the observations are now stale: the correction cannot be made, so it holds
    assert core._corrected(want, clock["t"]) is None


def test_a_checkpoint_refuses_a_base_that_changed_and_names_a_missing_one(base, tmp_path):
    own_base = Path(shutil.copytree(base, tmp_path / "base"))
    ck = residual_model().save(tmp_path / "res", own_base)
    load_policy(ck)
    meta = json.loads((own_base / "config.json").read_text())
    meta["config"]["inference_steps"] = 3     # "just a deploy setting", yet not what it was trained on
    (own_base / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="has changed since") as e:
        load_policy(ck)
    assert "retrain it on the base you have, or put back the base it was trained on" in str(e.value)
    shutil.rmtree(own_base)
    with pytest.raises(PolicyError, match="which is not a checkpoint here"):
        load_policy(ck)


def test_dsrl_and_residual_train_resume_and_deploy_as_any_kind(base, tmp_path):
    from robot_learning.evaluate import evaluate_env
    from robot_learning.train.residual import ResidualTrainConfig, train_residual
    from robot_learning.train.sac import DsrlTrainConfig, ResidualSacTrainConfig, train_sac

    run = train_residual(ResidualTrainConfig(base=str(base), envs=2, steps=32, rollout=8, eval_every=16,
                                             eval_episodes=2, max_episode_steps=12, video=False, shaping=1.0,
                                             noise_scale=0.5, anneal_lr=True, out=str(tmp_path), threads=1),
                         progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows if "eval_success" in r] == [0, 16, 32]
    assert [r["lr"] for r in rows if "lr" in r] == pytest.approx([3e-4, 1.5e-4])  # linear to 0 at 32 steps
    assert (run / "curves.png").is_file()
    run = train_residual(ResidualTrainConfig(resume=str(run), steps=48), progress=False)
    assert read_checkpoint(run / "checkpoints" / "last").raw["env_steps"] == 48
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-2]["lr"] == pytest.approx(3e-4 * (1 - 32 / 48))  # resumed: the same schedule, to its new end
    # the base samples as the residual learned on it (noise 0.5), unless the deployment says otherwise
    assert load_policy(run / "checkpoints" / "last").base.noise_scale == 0.5
    assert load_policy(run / "checkpoints" / "last", noise_scale=0.25).base.noise_scale == 0.25
    r = evaluate_env(run / "checkpoints" / "last", 1, max_steps=12)   # through the server's engine
    assert r["task"] == "pick_place" and r["episodes"][0]["steps"] == 12

    dsrl = train_sac(DsrlTrainConfig(base=str(base), steps=12, start_steps=4, learning_starts=4, batch_size=4,
                                     eval_every=6, eval_episodes=1, max_episode_steps=12, video=False,
                                     hidden=[16, 16], out=str(tmp_path), threads=1), progress=False)
    meta = read_checkpoint(dsrl / "checkpoints" / "last")
    assert meta.kind == "dsrl" and len(meta.config["action_low"]) == 8 * 7
    assert meta.config["q_range"] == [0.0, 1.0]   # the task's returns: the critic's targets are clipped there
    assert not meta.config["backup_entropy"]       # (returns alone, no entropy bonus in them)
    policy = load_policy(dsrl / "checkpoints" / "last")
    rng = np.random.default_rng(4)
    w = window(rng)
    assert np.array_equal(policy.act(w), policy.act(w))   # the noise is the agent's, not a draw
    r = evaluate_env(dsrl / "checkpoints" / "last", 1, max_steps=12)
    assert r["episodes"][0]["steps"] == 12

    res = train_sac(ResidualSacTrainConfig(base=str(base), steps=12, learning_starts=4, batch_size=4, eval_every=6,
                                           eval_episodes=1, max_episode_steps=12, video=False, hidden=[16, 16],
                                           out=str(tmp_path), threads=1), progress=False)
    rows = [json.loads(x) for x in (res / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows if "eval_success" in r] == [0, 6, 12]   # 0: the base alone
    meta = read_checkpoint(res / "checkpoints" / "last")
    assert meta.kind == "residual_sac" and meta.raw["obs_keys"] == KEYS and len(meta.raw["bound"]) == 7
    assert meta.config["q_range"] == [0.0, 1.0]
    res = train_sac(ResidualSacTrainConfig(resume=str(res), steps=18), progress=False)
    assert read_checkpoint(res / "checkpoints" / "last").raw["env_steps"] == 18
    r = evaluate_env(res / "checkpoints" / "last", 1, max_steps=12)
    assert r["task"] == "pick_place" and r["episodes"][0]["steps"] == 12


def test_envs_driven_by_a_pose_base_track_its_plans_as_the_server_does(tmp_path):
    from robot_learning.config import load_robot
    from robot_learning.control.kinematics import Kinematics
    from robot_learning.policies.untrained import untrained_pose_policy
    from robot_learning.rl.base_envs import BaseDrivenEnvs
    from robot_learning.transforms import wxyz_to_xyzw

    robot = load_robot()
    pos, quat = Kinematics(robot).fk(robot.home)
    center = np.r_[pos + [0.03, 0.0, 0.0], wxyz_to_xyzw(quat)]
    base = load_policy(save_untrained(tmp_path / "pose", untrained_pose_policy(center, 0.005)))
    envs = BaseDrivenEnvs(base, "pick_place", 2, ["ee_pose.data"], max_steps=40)
    envs.reset(0)
    start = envs.obs["ee_pose.data"][:, :3].copy()
    off = []
    for _ in range(30):
        a = envs.base_actions()
        assert a.shape == (2, 8)
        cmd = envs.commands(a)
        assert cmd.shape == (2, 7) and np.all(np.isfinite(cmd))
        envs.step(a)
        off.append(np.linalg.norm(envs.obs["ee_pose.data"][:, :3] - center[:3], axis=1))
    envs.close()
    # both arms went where the plans lie (3 cm along x from home), as the server's tracking takes
    # them, and stay among them: the plans scatter by 5 mm, so the last second is averaged (seen:
    # 5-7 mm, one step 10.0 mm)
    assert np.all(np.mean(off[-10:], axis=0) < 0.01), off[-10:]
    assert np.all(np.linalg.norm(start - center[:3], axis=1) > 0.02)


def test_a_residual_on_a_pose_base_reaches_the_arm_tick_by_tick_not_as_plans(tmp_path):
    """A plan carries the base's poses ahead of time, so a residual's per-tick correction could
    never be in it: the server (and the env rollouts) send such a policy's poses tick by tick,
    each one corrected, while the same base alone still goes out as plans."""
    from robot_learning.config import load_robot
    from robot_learning.control.kinematics import Kinematics
    from robot_learning.policies.untrained import untrained_pose_policy
    from robot_learning.transforms import wxyz_to_xyzw

    robot = load_robot()
    pos, quat = Kinematics(robot).fk(robot.home)
    center = np.r_[pos, wxyz_to_xyzw(quat)]
    base = save_untrained(tmp_path / "pose", untrained_pose_policy(center, 0.005))
    torch.manual_seed(0)
    model = ResidualPolicy(ResidualConfig(["ee_pose.data"], 7, 8, [0.02] + [0.0] * 7, list(center - 0.005) + [0.0],
                                          list(center + 0.005) + [0.01], hidden=[16]))
    with torch.no_grad():
        model.actor[-1].bias.fill_(1.0)   # 2 cm further along x on every tick
    res = model.save(tmp_path / "res", base)
    clock = {"t": 0.0}
    cores = [PolicyServerCore(load_policy(p), ServerConfig(blend="replace", interpolate=False), lambda: clock["t"],
                              log=lambda m: None) for p in (base, res)]
    for c in cores:
        c.resume()
        for k in range(3):
            c.add_sample("ee_pose", 0.1 * k, {"data": center})
            c.add_sample("gripper_state", 0.1 * k, {"position": np.array([0.04, 0.04])})
        assert c.infer_once()
    clock["t"] = 0.2
    plain, corrected = cores
    assert plain.plannable and plain.plan(0.2, -1) is not None
    assert not corrected.plannable and corrected.plan(0.2, -1) is None
    # the tick tracks the corrected pose: a twist toward +x that the base alone does not ask for
    assert corrected.tick(0.2)[0] - plain.tick(0.2)[0] > 0.1


def test_the_robots_residual_plans_the_base_as_the_env_does_and_reads_takeovers_as_corrections(base):
    """``ResidualOnRobot`` (the graph actor with ``base:=``): a chunk per ``horizon`` steps from
    a window of the observations, as ``BaseDrivenEnvs`` plans it; the command is the base's
    action plus at most the bound; an operator's command reads back as the correction that
    would have given it (clipped to [-1, 1])."""
    from robot_learning.rl.base_envs import window_input
    from robot_learning.rl.residual_env import BASE_ACTION, ResidualOnRobot

    res = ResidualOnRobot(str(base), scale=0.1, noise_scale=0.0)
    rng = np.random.default_rng(3)
    seen = [{k: rng.uniform(-1, 1, d).astype(np.float32) for k, d in TINY["obs_dims"].items()} for _ in range(6)]
    first = res.first(seen[0])
    want = res.base.executed(res.base.chunks(window_input(KEYS, [[seen[0], seen[0]]])))[0]
    assert np.allclose(first, want[0])
    assert res.horizon == 4
    for i in range(1, 4):  # the rest of the chunk, then a new one from the last two observations
        assert np.allclose(res.next(seen[i]), want[i])
    again = res.base.executed(res.base.chunks(window_input(KEYS, [[seen[3], seen[4]]])))[0]
    assert np.allclose(res.next(seen[4]), again[0])
    base_now = res.next(seen[5])
    u = np.array([0.5, -0.25, 1.0, -1.0, 0.0, 0.1, -0.6], np.float32)
    command = res.command(base_now, u, seen[5])   # a twist base: the corrected action itself
    assert np.allclose(command, base_now + res.bound * u)
    assert np.allclose(res.command(base_now, 5 * u, seen[5]) - base_now, res.bound * np.clip(5 * u, -1, 1))
    assert np.allclose(res.taken_over(command, base_now, seen[5]), u, atol=1e-6)
    assert np.array_equal(res.taken_over(base_now + 3 * res.bound, base_now, seen[5]), np.ones(7, np.float32))
    o = res.agent_obs(seen[5], KEYS[:2], base_now)
    assert list(o) == [*KEYS[:2], BASE_ACTION] and np.abs(o[BASE_ACTION]).max() <= 1.0 + 1e-6
    extra = res.spec_extra(KEYS)
    assert extra["checkpoint"]["policy"] == "residual_sac" and extra["return_range"] == [0.0, 1.0]


def test_on_a_pose_base_the_robots_residual_tracks_the_corrected_pose_and_reads_a_reached_pose_back(tmp_path):
    """A ``tcp_pose`` base on the robot: the command is the twist that tracks the corrected pose
    from the TCP pose now over one step (as the env does), and an operator's takeover reads back
    as the correction towards the pose the TCP reached, whatever the sign of its quaternion."""
    from robot_learning.policies.untrained import untrained_pose_policy
    from robot_learning.rl.residual_env import ResidualOnRobot
    from robot_learning.runtime.actions import pose_command

    center = np.r_[0.45, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0]
    path = save_untrained(tmp_path / "pose", untrained_pose_policy(center, 0.005))
    res = ResidualOnRobot(str(path), scale=0.5, noise_scale=0.0)
    obs = {"ee_pose.data": center.astype(np.float32), "gripper_state.position": np.zeros(2, np.float32)}
    base_now = res.first(obs)
    u = np.array([1.0, -1.0, 0.5, 0, 0, 0, 0, 0], np.float32)
    cmd = res.command(base_now, u, obs)
    assert cmd.shape == (7,)
    assert np.allclose(cmd, pose_command(base_now + res.bound * u, center, res.dt))
    reached = np.r_[base_now[:7] + res.bound[:7] * u[:7]]
    reached[3:7] = -reached[3:7]   # the same rotation, the other sign
    back = res.taken_over(np.r_[np.zeros(6), base_now[7]], base_now, {"ee_pose.data": reached})
    assert np.allclose(back, u, atol=1e-4)


def test_dsrl_shaping_adds_the_progress_made_over_each_chunk(base):
    """With shaping (gamma 1 here) an episode's rewards sum to its successes plus the progress
    from its first state to its last: per chunk, the potential's change and nothing else; the
    critic's targets are widened to hold it."""
    from robot_learning.rl.base_envs import PROGRESS_BOUND
    from robot_learning.rl.dsrl_env import DsrlAdapter
    from robot_learning.sim.tasks import make_task

    keys = ["ee_pose.data", "cube_pose.data", "target_pose.data"]  # the agent sees what progress reads
    env = DsrlAdapter(str(base), "pick_place", keys, max_steps=20, shaping=2.0, gamma=1.0)
    assert env.return_range == [-2.0 * PROGRESS_BOUND, 1.0 + 2.0 * PROGRESS_BOUND]
    task, rng = make_task("pick_place"), np.random.default_rng(0)
    batch = lambda o: {k: o[k][None] for k in keys}  # noqa: E731
    obs, _ = env.reset(7)
    first, total, successes, steps = batch(obs), 0.0, 0, 0
    while True:
        obs, r, term, trunc, info = env.step(rng.standard_normal(len(env.low)))
        total, successes, steps = total + r, successes + info["success"], steps + 1
        if term or trunc:
            break
    assert steps == 5  # 20 env steps, 4 (the base's action horizon) per agent step
    made = float(task.progress(batch(obs))[0] - task.progress(first)[0])
    assert abs(made) > 1e-4 and total - successes == pytest.approx(2.0 * made, abs=1e-9)


def test_a_residual_trains_through_the_servers_engine_and_its_correction_reaches_the_arm(tmp_path):
    """``train residual-sac --served``: the agent's correction goes through the path it deploys
    on (the server's engine, per-tick pose tracking, the command mux) and moves the arm by what
    it asks; its observation is what the runner gave the correction; it trains, checkpoints and
    is evaluated like the plain env's."""
    from robot_learning.config import load_robot
    from robot_learning.control.kinematics import Kinematics
    from robot_learning.evaluate import evaluate_env
    from robot_learning.policies.untrained import untrained_pose_policy
    from robot_learning.rl.residual_env import BASE_ACTION, ServedResidualAdapter
    from robot_learning.train.sac import ResidualSacTrainConfig, train_sac
    from robot_learning.transforms import wxyz_to_xyzw

    robot = load_robot()
    pos, quat = Kinematics(robot).fk(robot.home)
    base = save_untrained(tmp_path / "pose", untrained_pose_policy(np.r_[pos, wxyz_to_xyzw(quat)], 0.005))
    env = ServedResidualAdapter(str(base), "pick_place", ["ee_pose.data"], max_steps=20, scale=4.0)
    assert env.spec.state_keys == ("ee_pose.data", BASE_ACTION) and env.spec.state_dims == (7, 8)

    def moved(u: np.ndarray) -> float:
        torch.manual_seed(0)
        obs, _ = env.reset(3)
        x0 = obs["ee_pose.data"][0]
        for _ in range(10):
            obs, r, term, trunc, info = env.step(u)
            assert not term and not trunc and np.all(np.abs(obs[BASE_ACTION]) <= 1.01)
        newest = env.sim.core.buffers.newest("ee_pose.data")[1]
        assert np.allclose(obs["ee_pose.data"], newest, atol=0.01)   # the runner's view, one tick old at most
        return float(obs["ee_pose.data"][0] - x0)

    u = np.zeros(8, np.float32)
    plain = moved(u)
    u[0] = 1.0                                   # the most the bound allows along x: 2 cm past the base's pose
    assert moved(u) - plain == pytest.approx(env.bound[0], rel=0.35)
    env.close()

    run = train_sac(ResidualSacTrainConfig(base=str(base), served=True, scale=1.0, steps=8, learning_starts=4,
                                           batch_size=4, eval_every=8, eval_episodes=1, max_episode_steps=6,
                                           video=False, hidden=[16, 16], out=str(tmp_path), threads=1),
                    progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows if "eval_success" in r] == [0, 8]
    assert read_checkpoint(run / "checkpoints" / "last").kind == "residual_sac"
    assert evaluate_env(run / "checkpoints" / "last", 1, max_steps=6)["episodes"][0]["steps"] == 6


@pytest.mark.parametrize("served", [False, True])
def test_residual_sac_shaping_adds_the_progress_made_over_each_step(base, served):
    """``train residual-sac --shaping``, in the plain env and through the server's engine: with
    gamma 1 an episode's rewards sum to its successes plus the progress from its first state to
    its last, and the critic's targets are widened to hold it."""
    from robot_learning.rl.base_envs import PROGRESS_BOUND
    from robot_learning.rl.residual_env import ResidualAdapter, ServedResidualAdapter
    from robot_learning.sim.tasks import make_task

    keys = ["ee_pose.data", "cube_pose.data", "target_pose.data"]
    adapter = ServedResidualAdapter if served else ResidualAdapter
    env = adapter(str(base), "pick_place", keys, max_steps=12, scale=0.5, shaping=2.0, gamma=1.0)
    assert env.return_range == [-2.0 * PROGRESS_BOUND, 1.0 + 2.0 * PROGRESS_BOUND]
    task, rng = make_task("pick_place"), np.random.default_rng(0)
    measured = env._progress_obs if served else (lambda: {k: env._obs[k] for k in keys})
    env.reset(7)
    first, total, successes = measured(), 0.0, 0
    for _ in range(8):   # within the episode (the plain env starts the next one at its end)
        obs, r, term, trunc, info = env.step(rng.uniform(-1, 1, len(env.low)))
        total, successes = total + r, successes + info["success"]
        assert not term and not trunc
    made = float(task.progress(measured())[0] - task.progress(first)[0])
    assert abs(made) > 1e-4 and total - successes == pytest.approx(2.0 * made, abs=1e-6)
    env.close()
