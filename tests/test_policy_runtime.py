"""The policy server's engine: chunks stamped with their due times, stale actions dropped,
overlapping chunks blended, hold when starved, bad chunks refused, and a timer that is
never held up by slow inference. The policies here stand in for a network: their actions
encode the time each one is due, so whatever executes can be checked against the clock."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from robot_learning.runtime.actions import TCP_POSE_KEY, commanded_pose_actions, pose_actions, track_pose
from robot_learning.runtime.buffers import ObsBuffers
from robot_learning.runtime.policy import PolicySpec
from robot_learning.runtime.scheduler import ChunkScheduler, SchedulerConfig
from robot_learning.runtime.server import PolicyServerCore, ServerConfig

DT = 0.1


class ClockPolicy:
    """Action k of a chunk = the time it is due (obs time + k dt), after ``latency`` s of 'inference'."""

    def __init__(self, latency: float = 0.0, n: int = 8, value=None):
        self.latency, self.n, self.value = latency, n, value
        self.spec = PolicySpec(["clock.data"], [], None, 2, DT, 1, np.array([-1e9]), np.array([1e9]))
        self.calls = 0

    def reset(self) -> None:
        pass

    def act(self, obs):
        self.calls += 1
        time.sleep(self.latency)
        t_obs = float(obs["obs/clock.data"][-1, 0])
        if self.value is not None:
            return np.full((self.n, 1), self.value)
        return (t_obs + DT * np.arange(self.n))[:, None]


class WallClock:
    def __init__(self):
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


def run_server(policy, seconds: float, control_hz: float = 50.0, **cfg) -> tuple[list, PolicyServerCore]:
    """Feeds the clock as an observation at 100 Hz and ticks at control_hz; returns (now, action) pairs."""
    clock = WallClock()
    core = PolicyServerCore(policy, ServerConfig(control_hz=control_hz, **cfg), clock, log=lambda m: None)
    core.start()
    core.resume()
    stop = threading.Event()

    def sensor():
        while not stop.is_set():
            t = clock()
            core.add_sample("clock", t, {"data": np.array([t])})
            time.sleep(0.01)

    th = threading.Thread(target=sensor, daemon=True)
    th.start()
    out = []
    end = clock() + seconds
    while clock() < end:
        now = clock()
        out.append((now, core.tick(now)))
        time.sleep(1.0 / control_hz)
    stop.set()
    th.join()
    core.stop()
    return out, core


def test_stale_actions_are_dropped_and_the_due_one_is_sent():
    s = ChunkScheduler(SchedulerConfig(DT, blend="replace", interpolate=False))
    stale = s.add(0.0, np.arange(8.0)[:, None], now=0.25)  # arrived 0.25 s after its observation
    assert stale == 2 and s.dropped_stale == 2
    assert s.due(0.25)[0] == 2.0 and s.due(0.31)[0] == 3.0
    assert s.due(0.81) is None  # past the chunk's last action: hold, never replay
    s.add(0.0, np.arange(8.0)[:, None], now=0.9)  # entirely stale: dropped whole
    assert s.dropped_chunks == 1 and s.due(0.9) is None


def test_interpolates_between_policy_steps():
    s = ChunkScheduler(SchedulerConfig(DT, blend="replace", interpolate=True))
    s.add(0.0, np.array([[0.0], [1.0], [3.0]]), now=0.0)
    assert s.due(0.05)[0] == pytest.approx(0.5) and s.due(0.15)[0] == pytest.approx(2.0)


@pytest.mark.parametrize("blend", ["ensemble", "crossfade"])
def test_overlapping_chunks_blend_without_a_jump(blend):
    """A new plan that disagrees with the old by 1.0 is blended in; 'replace' would jump by 1.0."""
    s = ChunkScheduler(SchedulerConfig(DT, blend=blend, ensemble_k=0.1, crossfade_s=0.3, interpolate=True))
    s.add(0.0, np.zeros((10, 1)), now=0.0)
    outs, t = [], 0.0
    while t < 0.95:
        if abs(t - 0.3) < 1e-9:
            s.add(0.3, np.ones((10, 1)), now=0.3)
        outs.append(s.due(t)[0])
        t = round(t + 0.02, 10)
    steps = np.abs(np.diff(outs))
    assert outs[0] == 0.0 and outs[-1] > 0.4          # the new plan takes over ...
    assert steps.max() < 0.55                          # ... without the full 1.0 jump
    r = ChunkScheduler(SchedulerConfig(DT, blend="replace"))
    r.add(0.0, np.zeros((10, 1)), now=0.0)
    before = r.due(0.29)[0]
    r.add(0.3, np.ones((10, 1)), now=0.3)
    assert r.due(0.3)[0] - before == 1.0


@pytest.mark.parametrize("latency", [0.0, 0.15, 0.35])
def test_executed_actions_are_the_ones_due_now_whatever_the_latency(latency):
    """The clock policy's action equals its due time: what the timer sends must match the clock
    within a policy step, so late chunks are shifted, not replayed from their start."""
    out, core = run_server(ClockPolicy(latency, n=12), seconds=2.0, blend="replace", replan_every=2)
    sent = [(t, a[0]) for t, a in out if a is not None]
    assert len(sent) > 0.5 * len(out)
    err = np.array([abs(a - t) for t, a in sent])
    assert err.max() < DT + 0.02
    if latency >= DT:
        assert core.scheduler.dropped_stale > 0


def test_the_arms_measured_latency_is_sent_ahead():
    """With the arm's command-to-motion latency known, the action due that much later goes out
    now: the arm then moves as planned when the plan said."""
    out, _ = run_server(ClockPolicy(0.0, n=12), seconds=1.5, blend="replace", replan_every=2,
                        actuation_latency=0.15)
    err = np.array([a[0] - t for t, a in out if a is not None])
    assert len(err) > 20 and abs(np.median(err) - 0.15) < 0.05


def test_hold_when_inference_is_slower_than_the_chunk():
    out, core = run_server(ClockPolicy(latency=0.5, n=3), seconds=1.5)  # 0.3 s of actions, 0.5 s to compute
    assert all(a is None for _, a in out)
    assert core.scheduler.dropped_chunks >= 1


def test_timer_is_never_held_up_by_slow_inference():
    policy = ClockPolicy(latency=0.8, n=20)
    out, core = run_server(policy, seconds=2.5, control_hz=50.0)
    times = np.array([t for t, _ in out])
    assert policy.calls >= 2 and np.diff(times).max() < 0.1  # ticks kept coming while act() ran
    assert core.diagnostics()["infer"]["p50_ms"] >= 700


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e12])
def test_nan_and_out_of_range_chunks_are_refused_whole(value):
    policy = ClockPolicy(value=value)
    out, core = run_server(policy, seconds=0.6)
    assert all(a is None for _, a in out)
    d = core.diagnostics()
    assert d["rejected_chunks"] >= 1 and d["last_reject"]


def test_buffers_align_to_the_newest_camera_frame_and_never_look_ahead():
    b = ObsBuffers(["joints.position"], ["cam"], obs_horizon=2, dt=DT)
    for k in range(50):  # joints at 100 Hz, camera at 10 Hz lagging 35 ms
        t = k * 0.01
        b.add("joints", t, {"position": np.array([t])})
        if k % 10 == 0 and k:
            b.add("cam", t - 0.035, {"data": np.full((2, 2, 3), k, np.uint8)})
    t_ref, win = b.window()
    assert t_ref == pytest.approx(0.4 - 0.035)
    j = win["obs/joints.position"][:, 0]
    assert j[1] <= t_ref and j[1] == pytest.approx(0.36) and j[0] == pytest.approx(0.26)
    assert win["image/cam"][1, 0, 0, 0] == 40 and win["image/cam"][0, 0, 0, 0] == 30


def _yaw_pose(x: float, yaw: float) -> np.ndarray:
    """TCP pointing down, turned by ``yaw`` (x y z qx qy qz qw, as recorded)."""
    return np.array([x, 0.0, 0.2, np.cos(yaw / 2), np.sin(yaw / 2), 0.0, 0.0])


def test_a_pose_target_becomes_the_twist_that_reaches_it_in_one_step():
    twist = track_pose(_yaw_pose(0.41, 0.1), _yaw_pose(0.40, 0.0), DT)
    np.testing.assert_allclose(twist[:3], [0.1, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(twist[3:], [0.0, 0.0, 1.0], atol=1e-9)   # +0.1 rad about z in 0.1 s
    np.testing.assert_allclose(track_pose(_yaw_pose(0.4, 0.0), _yaw_pose(0.4, 0.0), DT), np.zeros(6), atol=1e-12)


def test_pose_actions_are_the_next_steps_pose_then_the_gripper():
    poses = np.stack([_yaw_pose(0.3 + 0.01 * k, 0.0) for k in range(4)])
    recorded = np.concatenate([np.ones((4, 6)), np.arange(4.0)[:, None]], axis=1)   # twist, gripper
    acts = pose_actions(poses, recorded)
    np.testing.assert_allclose(acts[:, 0], [0.31, 0.32, 0.33, 0.33], atol=1e-6)    # the last one: stay
    np.testing.assert_allclose(acts[:, 7], [0, 1, 2, 3])


def test_commanded_pose_actions_are_the_poses_the_recorded_twists_ask_for():
    """The pose a twist commands a step on is the one the server, tracking it, turns back into
    that twist, whatever the arm then reached (here it never moved: a blocked arm)."""
    rng = np.random.default_rng(0)
    poses = np.stack([_yaw_pose(0.3, 0.1 * k) for k in range(5)])
    recorded = np.concatenate([rng.normal(0, 0.1, (5, 3)), rng.normal(0, 0.5, (5, 3)), np.ones((5, 1))], axis=1)
    acts = commanded_pose_actions(poses, recorded, DT)
    assert acts.shape == (5, 8) and np.all(acts[:, 7] == 1.0)
    for pose, act, twist in zip(poses, acts, recorded):
        np.testing.assert_allclose(track_pose(act, pose, DT), twist[:6], atol=1e-5)
    still = commanded_pose_actions(poses, np.zeros((5, 7)), DT)
    np.testing.assert_allclose(still[:, :7], poses, atol=1e-6)


class PosePlan:
    """A tcp_pose policy whose plan is to stand still at ``target``."""

    def __init__(self, target: np.ndarray, obs_key: str = TCP_POSE_KEY):
        self.target = target
        lo, hi = np.full(8, -2.0), np.full(8, 2.0)
        self.spec = PolicySpec([obs_key], [], None, 1, DT, 8, lo, hi, action_kind="tcp_pose")

    def reset(self) -> None:
        pass

    def act(self, obs):
        return np.tile(np.r_[self.target, 1.0], (8, 1))


def test_server_tracks_a_pose_plan_from_the_newest_tcp_pose_and_holds_without_one():
    clock = {"t": 0.0}
    core = PolicyServerCore(PosePlan(_yaw_pose(0.45, 0.0)), ServerConfig(max_obs_age=0.2), lambda: clock["t"],
                            log=lambda m: None)
    core.resume()
    core.add_sample("ee_pose", 0.0, {"data": _yaw_pose(0.40, 0.0)})
    assert core.infer_once()
    a = core.tick(0.0)
    np.testing.assert_allclose(a, [0.5, 0, 0, 0, 0, 0, 1.0], atol=1e-9)   # 5 cm in 0.1 s, gripper closed
    core.add_sample("ee_pose", 0.05, {"data": _yaw_pose(0.44, 0.0)})      # a newer pose: a smaller step
    clock["t"] = 0.05
    np.testing.assert_allclose(core.tick(0.05)[:3], [0.1, 0, 0], atol=1e-9)
    clock["t"] = 0.5                                                        # the TCP pose went silent: hold
    assert core.tick(0.5) is None


def test_a_pose_plan_needs_the_tcp_pose_among_its_observations():
    with pytest.raises(ValueError, match=TCP_POSE_KEY):
        PolicyServerCore(PosePlan(_yaw_pose(0.4, 0.0), obs_key="joint_states.position"), ServerConfig(),
                         lambda: 0.0, log=lambda m: None)


def test_a_pose_chunk_becomes_one_plan_of_unit_poses_one_step_after_each_action():
    """What the node sends the arm for a tcp_pose policy: the chunk's poses (quaternions made
    unit: a diffusion policy predicts each component on its own), each knot one policy step
    after its action is due; a plan only when a new chunk has come in."""
    clock = {"t": 0.0}
    target = _yaw_pose(0.45, 0.0)
    target[3:7] *= 1.3                                    # as a policy may predict it
    core = PolicyServerCore(PosePlan(target), ServerConfig(), lambda: clock["t"], log=lambda m: None)
    core.resume()
    core.add_sample("ee_pose", 0.0, {"data": _yaw_pose(0.40, 0.0)})
    assert core.infer_once()
    version, offsets, actions = core.plan(0.0, since=0)
    np.testing.assert_allclose(offsets, DT * np.arange(1, 9))
    np.testing.assert_allclose(np.linalg.norm(actions[:, 3:7], axis=1), 1.0)
    np.testing.assert_allclose(actions[:, :3], np.tile(target[:3], (8, 1)))
    assert core.plan(0.05, since=version) is None         # nothing new: no plan


class PegPlan:
    """A peg_insert tcp_pose policy whose plan is to be at ``target`` a step from now, gripper
    open; ``on_base``: RL on top of a base (a residual or DSRL runner, which holds ``base``)."""

    def __init__(self, target: np.ndarray, keys=(TCP_POSE_KEY, "hole_pose.data"), on_base: bool = True):
        self.target = target
        lo, hi = np.full(8, -2.0), np.full(8, 2.0)
        self.spec = PolicySpec(list(keys), [], None, 1, DT, 8, lo, hi, task="peg_insert", action_kind="tcp_pose")
        self.base = object() if on_base else None

    def reset(self) -> None:
        pass

    def act(self, obs):
        return np.tile(np.r_[self.target, 0.0], (8, 1))


@pytest.mark.parametrize("kind", ["on base", "on base, hole unseen", "cloned"])
def test_rl_on_a_base_gets_its_tasks_shaping_from_the_server(kind):
    """peg_insert shapes every action in the env RL on a base learns in (10 cm/s at most,
    5 cm/s down with the peg near the block, the gripper closed): the server applies the same
    shaping each tick from the observed TCP and hole, and sends twists rather than a plan the
    arm would run unshaped. A policy that does not observe the hole is told why its actions go
    unshaped; a base cloned from demonstrations goes out as its plan."""
    clock, said = {"t": 0.0}, []
    tcp = _yaw_pose(0.5, 0.0)
    tcp[1:3] = 0.15, 0.04 + 0.062 + 0.01      # the peg's bottom 1 cm above the block's top face
    target = tcp.copy()
    target[2] -= 0.05                           # 5 cm down in one step: 0.5 m/s into the block
    sees_hole = kind != "on base, hole unseen"
    keys = (TCP_POSE_KEY, "hole_pose.data") if sees_hole else (TCP_POSE_KEY,)
    core = PolicyServerCore(PegPlan(target, keys, on_base=kind != "cloned"), ServerConfig(max_obs_age=0.2),
                            lambda: clock["t"], log=said.append)
    core.resume()
    core.add_sample("ee_pose", 0.0, {"data": tcp})
    if sees_hole:
        core.add_sample("hole_pose", 0.0, {"data": np.array([0.5, 0.15, 0.0, 0.0, 0.0, 0.0, 1.0])})
    assert core.infer_once()
    a = core.tick(0.0)
    if kind == "on base":
        assert not core.plannable and not said
        np.testing.assert_allclose(a[2], -0.05, atol=1e-9)     # the task's contact speed
        assert a[6] == 1.0                                       # gripper kept closed
    else:
        assert core.plannable and (("hole_pose.data" in said[0]) if kind != "cloned" else not said)
        np.testing.assert_allclose(a[2], -0.5, atol=1e-9)      # as the plan asks
        assert a[6] == 0.0


@pytest.mark.parametrize("action_horizon", [3, 8])
def test_a_diffusion_policy_executes_action_horizon_actions_of_each_chunk(action_horizon):
    """``--action-horizon`` at run time: the chunk the server schedules starts at the newest
    observation and holds that many actions, whatever the prediction horizon."""
    from robot_learning.policies.diffusion import DiffusionRunner
    from robot_learning.policies.untrained import untrained_policy

    runner = DiffusionRunner(untrained_policy({"joint_states.position": 9}, action_horizon=action_horizon,
                                              down_dims=[16, 32], inference_steps=2))
    obs = {"obs/joint_states.position": np.zeros((2, 9), np.float32)}
    assert runner.act(obs).shape == (action_horizon, 7)


class GoToPosePolicy:
    """A tcp_pose policy that plans straight toward ``goal`` (2 cm per step) and closes the
    gripper; it remembers the newest TCP and finger opening it observed."""

    def __init__(self, goal):
        self.goal = np.asarray(goal, float)
        lo, hi = np.r_[-1, -1, -1, -1, -1, -1, -1, 0.0], np.r_[1, 1, 1, 1, 1, 1, 1, 1.0]
        self.spec = PolicySpec(["ee_pose.data", "gripper_state.position"], [], None, 1, DT, 8, lo, hi,
                               task="pick_place", action_kind="tcp_pose")
        self.seen: list[tuple[np.ndarray, float]] = []

    def reset(self) -> None:
        pass

    def act(self, obs):
        pose = obs["obs/ee_pose.data"][-1]
        self.seen.append((pose[:3].copy(), float(obs["obs/gripper_state.position"][-1].sum())))
        step = self.goal - pose[:3]
        k = np.arange(1, 9)[:, None]
        pos = pose[:3] + step * np.minimum(1.0, 0.02 * k / max(np.linalg.norm(step), 1e-9))
        return np.hstack([pos, np.tile(pose[3:7], (8, 1)), np.ones((8, 1))])


@pytest.mark.parametrize("plans", [True, False])
def test_env_rollout_drives_a_pose_policy_the_way_the_server_does(plans):
    """Env evaluations of a tcp_pose policy use the server's plans (its default) or its twists
    (plans:=false): either way the arm reaches the planned pose and the gripper closes."""
    from robot_learning.data.schema import load_recipe
    from robot_learning.paths import project_root
    from robot_learning.train.rollout import rollout

    recipe = load_recipe(project_root() / "datasets" / "recipes" / "workcell.yaml")
    home = np.array([0.307, 0.0, 0.487])
    policy = GoToPosePolicy(home + [0.1, 0.08, -0.12])
    rollout(policy, recipe, "pick_place", [0], max_steps=40, plans=plans)
    (tcp, opening), start = policy.seen[-1], policy.seen[0][0]
    assert np.linalg.norm(start - home) < 0.01
    assert np.linalg.norm(tcp - policy.goal) < 0.01, (tcp, policy.goal)
    assert opening < 0.01   # closed (the fingers are 0.08 apart at the start)


def test_an_env_rollout_reports_the_chunks_the_server_refused():
    """A policy whose chunks fall outside its own bounds (a gripper command of 1.0 against a
    bound of 0.9) never moves the arm; the rollout says how many chunks were refused and why,
    rather than a bare failure."""
    from robot_learning.data.schema import load_recipe
    from robot_learning.paths import project_root
    from robot_learning.train.rollout import rollout

    recipe = load_recipe(project_root() / "datasets" / "recipes" / "workcell.yaml")
    home = np.array([0.307, 0.0, 0.487])
    policy = GoToPosePolicy(home + [0.1, 0.08, -0.12])
    policy.spec.action_high[7] = 0.9
    r = rollout(policy, recipe, "pick_place", [0], max_steps=10)[0]
    assert not r.success and r.refused >= 10 and "outside the policy's bounds" in r.refusal, r
    assert np.linalg.norm(policy.seen[-1][0] - home) < 0.01   # the arm held


def test_the_engine_draws_the_graphs_timing_from_each_episodes_seed():
    """``ServedSim``'s ``lags``: the transport's delays, drawn per episode in whole ticks from its
    seed, within their bounds; a command delayed by one policy step's ticks moves the arm exactly
    one step later than an undelayed one."""
    from robot_learning.data.schema import load_recipe
    from robot_learning.paths import project_root
    from robot_learning.train.rollout import ServedSim, seconds_range

    assert seconds_range("0.06") == (0.06, 0.06) and seconds_range("0.04,0.16") == (0.04, 0.16)
    for bad in ("0.2,0.1", "-1", "fast", "1,2,3"):
        with pytest.raises(ValueError, match="is not seconds"):
            seconds_range(bad)
    recipe = load_recipe(project_root() / "datasets" / "recipes" / "workcell.yaml")
    home = np.array([0.307, 0.0, 0.487])
    sim = ServedSim(GoToPosePolicy(home + [0.1, 0.08, -0.12]), recipe, "pick_place", plans=False,
                    latency=(0.04, 0.16), lags=(0.04, 0.1))
    per_step = sim.sub
    assert sim.tick_s * per_step == pytest.approx(DT)
    draws = {}
    for seed in range(12):
        sim.reset(seed)
        draws[seed] = (sim.obs_lag, sim.cmd_lag)
    assert all(0 <= o <= round(0.04 / sim.tick_s) and 0 <= c <= per_step for o, c in draws.values())
    assert len(set(draws.values())) > 3
    sim.reset(5)
    assert (sim.obs_lag, sim.cmd_lag) == draws[5]

    def moved(seed: int, lags: tuple[float, float]) -> tuple[int, list[float]]:
        sim.lags, sim.latency = lags, (0.0, 0.0)
        sim.reset(seed)
        start, out = sim.cell.tcp_pose()[0].copy(), []
        for _ in range(3):
            sim.step()
            out.append(float(np.linalg.norm(sim.cell.tcp_pose()[0] - start)))
        return sim.cmd_lag, out

    _, late = next(r for s in range(20) if (r := moved(s, (0.0, DT)))[0] == per_step)
    _, now = moved(0, (0.0, 0.0))
    assert now[1] > 0.005 and late[0] < 1e-4
    assert late[1:] == pytest.approx(now[:-1], abs=1e-4)
    sim.close()
