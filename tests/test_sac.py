"""The SAC learner and its replay buffers (issue 13): the update learns known values, buffers
rebuild from a recorded dataset to exactly its transitions, checkpoints load without code, and
``train sac`` runs on a plain gymnasium env and resumes where it stopped."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_dataset import store  # noqa: F401  (fixture: 2 recorded episodes on real zarr)

from robot_learning.data.store import Dataset
from robot_learning.policies.checkpoint import PolicyError
from robot_learning.policies.sac import SAC, SACConfig, load_sac
from robot_learning.rl.replay import (
    ObsSpec,
    ReplayBuffer,
    from_dataset,
    obs_spec_from_dataset,
    rlpd_batch,
    sample_mixed,
)

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest


def _batch(n: int, state: np.ndarray, action: np.ndarray, reward: np.ndarray, terminal: bool) -> dict:
    return {"obs/state": torch.as_tensor(state, dtype=torch.float32),
            "next_obs/state": torch.as_tensor(state, dtype=torch.float32),
            "action": torch.as_tensor(action, dtype=torch.float32),
            "reward": torch.as_tensor(reward, dtype=torch.float32),
            "terminal": torch.full((n,), terminal), "grip_before": torch.zeros(n)}


def test_critic_learns_the_value_of_a_known_mdp():
    """One state, reward 1 forever, gamma 0.9, no entropy in the backup: Q* = 1 / (1 - 0.9) = 10
    for every action. The critic's loss falls and its Q-values reach 10."""
    torch.manual_seed(0)
    agent = SAC(SACConfig(obs_dim=2, action_low=[-1.0], action_high=[1.0], hidden=[32, 32], gamma=0.9, tau=0.1,
                          lr=3e-3, backup_entropy=False))
    n = 128
    rng = np.random.default_rng(0)
    batch = lambda: _batch(n, np.ones((n, 2)), rng.uniform(-1, 1, (n, 1)), np.ones(n), False)  # noqa: E731
    first = agent.update(batch())
    for _ in range(500):
        info = agent.update(batch())
    with torch.no_grad():
        q = agent.critics(torch.cat([agent.encoder({"state": torch.ones(5, 2)}),
                                     torch.linspace(-1, 1, 5)[:, None]], -1))
    assert abs(float(q.mean()) - 10.0) < 0.5, q
    assert info["critic_loss"] < first["critic_loss"]


def test_the_discrete_gripper_critic_learns_when_to_open_and_when_to_close():
    """HIL-SERL's gripper: open, stay or close chosen by its own critic (double DQN) from the
    recorded commands. A one-step task where closing pays in one state and opening in the
    other: the greedy choice is right in both, whatever the arm's continuous action."""
    torch.manual_seed(0)
    agent = SAC(SACConfig(obs_dim=1, action_low=[-1.0, 0.0], action_high=[1.0, 1.0], hidden=[32, 32], lr=3e-3,
                          discrete_gripper=True, backup_entropy=False))
    rng = np.random.default_rng(0)
    n = 128
    for _ in range(300):
        s = rng.integers(0, 2, n).astype(np.float32)
        choice = rng.integers(0, 3, n)                       # open, stay, close from a half-open gripper
        grip = np.choose(choice, [0.0, 0.5, 1.0])
        reward = ((s == 1) & (choice == 2)) | ((s == 0) & (choice == 0))
        b = _batch(n, s[:, None], np.c_[rng.uniform(-1, 1, n), grip], reward.astype(np.float32), True)
        b["grip_before"] = torch.full((n,), 0.5)
        agent.update(b)
    close = agent.act({"state": np.ones(1, np.float32)}, deterministic=True, gripper_now=0.5)
    open_ = agent.act({"state": np.zeros(1, np.float32)}, deterministic=True, gripper_now=0.5)
    assert close[-1] == 1.0 and open_[-1] == 0.0, (close, open_)


def test_a_return_range_bounds_what_the_critic_values():
    """The same MDP (Q* = 10) with returns declared in [0, 3] (``q_range``, as RLIF's rewards
    declare [-1 / (1 - gamma), 0]): the critic's values go to the bound, not past it."""
    torch.manual_seed(0)
    agent = SAC(SACConfig(obs_dim=2, action_low=[-1.0], action_high=[1.0], hidden=[32, 32], gamma=0.9, tau=0.1,
                          lr=3e-3, backup_entropy=False, q_range=[0.0, 3.0]))
    n = 128
    rng = np.random.default_rng(0)
    for _ in range(500):
        info = agent.update(_batch(n, np.ones((n, 2)), rng.uniform(-1, 1, (n, 1)), np.ones(n), False))
    assert info["q_target"] <= 3.0
    assert abs(info["q_mean"] - 3.0) < 0.3, info


def test_actor_finds_the_best_action_of_a_bandit():
    """One step episodes with reward -(a - 0.5)^2: the actor's mean action goes to 0.5."""
    torch.manual_seed(0)
    agent = SAC(SACConfig(obs_dim=1, action_low=[-1.0], action_high=[1.0], hidden=[32, 32], lr=3e-3,
                          init_temperature=0.01, target_entropy=-2.0))
    rng = np.random.default_rng(1)
    n = 128
    for _ in range(500):
        a = rng.uniform(-1, 1, (n, 1))
        agent.update(_batch(n, np.zeros((n, 1)), a, -((a[:, 0] - 0.5) ** 2), True))
    best = agent.act({"state": np.zeros(1, np.float32)}, deterministic=True)
    assert abs(float(best[0]) - 0.5) < 0.1, best


def test_the_temperature_target_means_the_same_in_any_action_units():
    """The same policy over a box 10x narrower (peg_insert's 10 cm/s against the arm's 1 m/s)
    has the same log-density: in the action's own units it would be 2.3 nats a dim higher, and
    the temperature chasing its target entropy would grow without bound."""
    torch.manual_seed(0)
    wide = SAC(SACConfig(obs_dim=2, action_low=[-1.0] * 4, action_high=[1.0] * 4, hidden=[16]))
    narrow = SAC(SACConfig(obs_dim=2, action_low=[-0.1] * 4, action_high=[0.1] * 4, hidden=[16]))
    narrow.actor.net.load_state_dict(wide.actor.net.state_dict())
    feat = torch.randn(64, wide.encoder.out_dim)
    torch.manual_seed(1)
    a1, lp1 = wide.actor(feat)
    torch.manual_seed(1)
    a2, lp2 = narrow.actor(feat)
    assert torch.allclose(a2, 0.1 * a1) and torch.allclose(lp1, lp2)


def test_pretraining_clones_the_demonstrations_and_bc_keeps_the_actor_near_them():
    """Demonstrations say a = 0.6 * s. Offline pretraining (WSRL's warm start) makes the
    deterministic actor follow them; online, a critic that prefers a = -1 everywhere pulls the
    actor away unless the behaviour-cloning term on the demo rows holds it."""
    rng = np.random.default_rng(2)
    n = 256
    s = rng.uniform(-1, 1, (n, 1)).astype(np.float32)

    def demo_batch():
        return {**_batch(n, s, 0.6 * s, np.zeros(n), True), "demo": torch.ones(n, dtype=torch.bool)}

    finals = {}
    for bc in (0.0, 2.5):
        torch.manual_seed(0)
        agent = SAC(SACConfig(obs_dim=1, action_low=[-1.0], action_high=[1.0], hidden=[32, 32], lr=3e-3,
                              init_temperature=0.01, bc_weight=bc))
        first = agent.pretrain(demo_batch())
        for _ in range(300):
            info = agent.pretrain(demo_batch())
        assert info["bc_loss"] < 0.1 * first["bc_loss"]
        probe = {"state": np.array([0.5], np.float32)}
        assert abs(float(agent.act(probe, deterministic=True)[0]) - 0.3) < 0.05
        for _ in range(300):  # online: reward -(a + 1)^2 wants -1; the demonstrations say 0.6 s
            a = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
            b = demo_batch()
            b.update(_batch(n, s, a, -((a[:, 0] + 1) ** 2), True))
            agent.update(b)
        finals[bc] = float(agent.act(probe, deterministic=True)[0])
    assert finals[0.0] < -0.5 and finals[2.5] > finals[0.0] + 0.3, finals


def test_the_centre_pull_keeps_a_residual_at_no_correction_where_the_critic_says_little():
    """A residual's critic that barely prefers a = -1 (rewards 0.02 * -(a + 1)^2: the noise of a
    sparse task's values): alone, the actor's mean follows it to the edge of its bound; with
    ``centre_weight`` it stays near no correction, which is the base."""
    rng = np.random.default_rng(5)
    n = 256
    s = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    probe = {"state": np.array([0.3], np.float32)}
    finals = {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        agent = SAC(SACConfig(obs_dim=1, action_low=[-1.0], action_high=[1.0], hidden=[32, 32], lr=3e-3,
                              init_temperature=0.01, backup_entropy=False, centre_weight=w))
        agent.actor.zero_mean()
        for _ in range(400):
            a = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
            agent.update(_batch(n, s, a, -0.02 * (a[:, 0] + 1) ** 2, True))
        finals[w] = float(agent.act(probe, deterministic=True)[0])
    assert finals[0.0] < -0.5 and abs(finals[1.0]) < 0.2, finals


def test_rlpd_batch_shuffles_demonstrations_into_every_slice():
    spec = ObsSpec(("x",), (1,))
    online, demo = ReplayBuffer(50, spec, 1), ReplayBuffer(50, spec, 1)
    for _ in range(50):
        online.add({"x": [0.0]}, [0.0], 0.0, {"x": [0.0]}, False)
        demo.add({"x": [1.0]}, [0.0], 0.0, {"x": [1.0]}, False)
    b = rlpd_batch(online, demo, 0.5, 512, np.random.default_rng(0))
    assert np.array_equal(b["demo"], b["obs/state"][:, 0] == 1.0) and b["demo"].sum() == 256
    for part in np.split(b["demo"], 4):  # utd 4: each critic update sees both kinds
        assert 0.3 < part.mean() < 0.7
    assert not rlpd_batch(online, None, 0.5, 64, np.random.default_rng(0))["demo"].any()


def test_demonstrations_are_read_as_the_action_space_lets_them_through(store):  # noqa: F811
    """Both learners read demonstrations through one function: the failed episode left out
    (unless asked), actions clipped to the (task-narrowed) action space the actor has."""
    from robot_learning.rl.replay import demo_buffer

    ds = Dataset(store)  # a failure, then a success
    spec = obs_spec_from_dataset(ds, ["ee_pose.data", "gripper_state.position"])
    succeeded = ds.episode(ds.indices[1]).n_steps
    assert len(demo_buffer(store, spec, [-1] * 7, [1] * 7, drop_idle=False)) == succeeded
    raw = from_dataset(ds, spec).in_order()["action"]
    low, high = np.r_[[-0.01] * 6, 0.0], np.r_[[0.01] * 6, 1.0]
    got = demo_buffer(store, spec, low, high, successes_only=False, drop_idle=False, room=5)
    assert len(got) == len(raw) and got.capacity == len(raw) + 5
    assert np.array_equal(got.in_order()["action"], np.clip(raw, low, high).astype(np.float32))
    assert np.abs(raw[:, :6]).max() > 0.01  # so the clip had something to do
    with pytest.raises(ValueError, match="observation sizes"):
        demo_buffer(store, ObsSpec(spec.state_keys, (7, 3)), low, high, successes_only=False)
    # RLIF counts rewards by takeovers: a demonstration's success reward would be a second definition
    assert got.in_order()["reward"].max() == 1.0
    assert not demo_buffer(store, spec, low, high, rlif=True).in_order()["reward"].any()


def test_buffer_rebuilds_exactly_the_recorded_transitions(store):  # noqa: F811
    ds = Dataset(store)
    keys = ["ee_pose.data", "gripper_state.position"]
    spec = obs_spec_from_dataset(ds, keys)
    assert spec.state_dims == (7, 2)
    buf = from_dataset(ds, spec)
    got = buf.in_order()
    row = 0
    for i in ds.indices:
        ep = ds.episode(i)
        n = ep.n_steps
        state = np.concatenate([ep.steps["obs"][k][:].reshape(n, -1) for k in keys], 1).astype(np.float32)
        sl = slice(row, row + n)
        assert np.array_equal(got["state"][sl], state)
        assert np.array_equal(got["next_state"][sl][:-1], state[1:])       # s' is the next step's s
        assert np.array_equal(got["action"][sl], ep.steps["action"][:].astype(np.float32))
        assert np.array_equal(got["reward"][sl], ep.steps["reward"][:].astype(np.float32))
        assert np.array_equal(got["intervention"][sl], ep.steps["intervention"][:])
        assert got["terminal"][sl].tolist() == [False] * (n - 1) + [True]  # the episode ended there
        row += n
    assert len(buf) == row
    assert got["intervention"].any()  # the recording's takeover came through
    assert got["reward"].sum() == 1.0  # one of the two episodes succeeded

    # a restart: saved and loaded, the buffer is the same; sampled half and half with another
    buf.save(store.parent / "online.npz")
    again = ReplayBuffer(len(buf), spec, buf.act_dim)
    again.load(store.parent / "online.npz")
    assert all(np.array_equal(again.in_order()[k], got[k]) for k in got)
    other = ReplayBuffer(10, spec, buf.act_dim)
    other.add({k: np.full(d, 7.0) for k, d in zip(keys, spec.state_dims)}, np.zeros(7), 0.0,
              {k: np.full(d, 7.0) for k, d in zip(keys, spec.state_dims)}, False)
    mixed = sample_mixed([(buf, 0.5), (other, 0.5)], 64, np.random.default_rng(0))
    assert (mixed["obs/state"][:, 0] == 7.0).sum() == 32


def test_ring_keeps_the_newest_transitions():
    spec = ObsSpec(("x",), (1,))
    buf = ReplayBuffer(5, spec, 1)
    for i in range(8):
        buf.add({"x": [i]}, [0.0], 0.0, {"x": [i + 1]}, False, seq=i)
    assert buf.in_order()["seq"].tolist() == [3, 4, 5, 6, 7] and buf.added == 8


def test_checkpoint_round_trip_and_damage(tmp_path):
    agent = SAC(SACConfig(obs_dim=3, action_low=[-1.0, 0.0], action_high=[1.0, 1.0], hidden=[32],
                          discrete_gripper=True))
    obs = {"state": np.array([0.1, 0.2, 0.3], np.float32)}
    path = agent.save(tmp_path / "ckpt", optimizers=True)
    loaded, meta = load_sac(path, optimizers=True)
    assert np.array_equal(loaded.act(obs, deterministic=True, gripper_now=0.0),
                          agent.act(obs, deterministic=True, gripper_now=0.0))
    assert meta["policy"] == "sac"
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    (bad / "model.safetensors").write_bytes(b"\x80\x04pickle")  # a pickle in place of the weights
    with pytest.raises(PolicyError, match="model.safetensors"):
        load_sac(bad)
    cfg = json.loads((path / "config.json").read_text())
    cfg["config"]["hiden"] = [3]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PolicyError, match="hiden"):
        load_sac(bad)


def test_a_sac_checkpoint_deploys_through_the_policy_server(tmp_path):
    """The policy server's plug-in interface runs a SAC checkpoint like a diffusion one: the
    mean action for the state its obs_keys make, within the arm's twist bounds, one step at a
    time; rolled out in the env through the server's engine (``evaluate --where env``)."""
    from robot_learning.config import load_robot
    from robot_learning.evaluate import evaluate_env
    from robot_learning.policies.registry import load_policy
    from robot_learning.train.sac import WORKCELL_OBS

    low, high = load_robot().limits.twist_action_bounds()
    keys = WORKCELL_OBS["pick_place"]
    agent = SAC(SACConfig(obs_dim=23, action_low=low.tolist(), action_high=high.tolist(), hidden=[32],
                          discrete_gripper=True))
    path = agent.save(tmp_path / "sac", extra={"obs_keys": keys, "dt": 0.1, "env": "workcell/pick_place"})
    policy = load_policy(path)
    s = policy.spec
    assert (s.obs_keys, s.obs_horizon, s.dt, s.action_dim, s.task, s.action_kind) == (
        keys, 1, 0.1, 7, "pick_place", "twist")
    rng = np.random.default_rng(0)
    window = {f"obs/{k}": rng.normal(size=(1, d)).astype(np.float32) for k, d in zip(keys, (7, 2, 7, 7))}
    a = policy.act(window)
    assert a.shape == (1, 7) and np.all(a >= low) and np.all(a <= high)
    assert np.array_equal(a, policy.act(window))                      # no exploration noise when deployed
    r = evaluate_env(path, 1, seed=5)
    assert r["task"] == "pick_place" and len(r["episodes"]) == 1 and r["episodes"][0]["steps"] > 10
    meta = json.loads((path / "config.json").read_text())
    del meta["obs_keys"]
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="obs_keys"):
        load_policy(path)


def test_a_peg_insert_policy_is_shaped_as_in_training_when_deployed(tmp_path):
    """A policy trained on peg_insert chose x, y, z and yaw only, in a box around the hole,
    with the task holding the gripper closed and the hand level. Deployed, the server's plug-in
    does the same from the poses it observes: a policy pushing up and out at full speed from
    the box's corner gets no further than the box's edge in one step, and the peg stays gripped
    (the fixed dims at mid-range would have opened the hand half-way and dropped it)."""
    from robot_learning.config import load_robot
    from robot_learning.policies.registry import load_policy
    from robot_learning.sim.tasks import make_task
    from robot_learning.train.sac import WORKCELL_OBS

    task = make_task("peg_insert")
    low, high = task.action_bounds(*load_robot().limits.twist_action_bounds())
    keys = WORKCELL_OBS["peg_insert"]
    agent = SAC(SACConfig(obs_dim=21, action_low=low.tolist(), action_high=high.tolist(), hidden=[32],
                          action_dims=list(task.action_dims)))
    with torch.no_grad():  # every learned dim at its top: +x, +y, +z at 10 cm/s, yaw at 0.6 rad/s
        agent.actor.net[-1].weight.zero_()
        agent.actor.net[-1].bias.fill_(5.0)
    path = agent.save(tmp_path / "sac", extra={"obs_keys": keys, "dt": 0.1, "env": "workcell/peg_insert"})
    policy = load_policy(path)
    box, top = task.cfg["box"], task.cfg["hole"]["depth"]
    hole = np.array([0.5, 0.15, 0.0])
    edge = hole + [box["xy"] - 0.002, box["xy"] - 0.002, top + box["above_top"][1] - 0.001]
    level = [1.0, 0.0, 0.0, 0.0]  # x y z w: the TCP pointing down, yaw 0 (the hole's)
    window = {"obs/ee_pose.data": np.float32([[*edge, *level]]),
              "obs/peg_pose.data": np.float32([[*(edge - [0, 0, 0.05]), 0, 0, 0, 1]]),
              "obs/hole_pose.data": np.float32([[*hole, 0, 0, 0, 1]])}
    a = policy.act(window)[0]
    assert a[6] == 1.0                                      # the gripper stays closed on the peg
    np.testing.assert_allclose(a[:3] * 0.1, [0.002, 0.002, 0.001], atol=1e-6)   # to the box's edge
    assert abs(a[5] - 0.6) < 1e-3 and np.all(np.abs(a[3:5]) < 1e-6)   # yaw is the policy's, roll/pitch held
    meta = json.loads((path / "config.json").read_text())
    meta["obs_keys"] = ["ee_pose.data", "peg_pose.data"]
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="observes no hole_pose.data"):
        load_policy(path)


def test_train_sac_on_a_gym_env_checkpoints_and_resumes(tmp_path):
    from robot_learning.train.sac import SACTrainConfig, train_sac

    cfg = SACTrainConfig(env="Pendulum-v1", steps=300, start_steps=100, learning_starts=100, batch_size=32,
                         hidden=[32, 32], eval_every=200, eval_episodes=1, video=False, out=str(tmp_path), utd=2)
    run = train_sac(cfg, progress=False)
    last = run / "checkpoints" / "last"
    agent, meta = load_sac(last)
    assert meta["env_steps"] == 300 and agent.updates == 201
    online = ReplayBuffer(1000, ObsSpec(("obs",), (3,)), 1)
    online.load(last / "online.npz")
    assert online.in_order()["seq"].tolist() == list(range(300))  # every step, once, in order
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows if "eval_return" in r] == [200, 300]
    assert (run / "curves.png").stat().st_size > 0
    # resumed to 400 steps: the online buffer goes on from step 300, nothing repeated or lost
    train_sac(SACTrainConfig(resume=str(run), steps=400), progress=False)
    online.load(last / "online.npz")
    assert online.in_order()["seq"].tolist() == list(range(400))
    assert load_sac(last)[0].updates == 301


def test_train_sac_from_pixels_on_the_workcell_and_deploy_it(tmp_path):
    """The image-based variant end to end: the wrist camera's frames (rendered at the camera's
    resolution, shrunk as recorded frames are) and proprioception only, into the buffer, the
    update (random shifts) and a checkpoint the policy server rolls out in the env."""
    from robot_learning.evaluate import evaluate_env
    from robot_learning.policies.registry import load_policy
    from robot_learning.train.sac import SACTrainConfig, train_sac

    keys = ["ee_pose.data", "gripper_state.position"]
    cfg = SACTrainConfig(env="workcell/pick_place", obs=keys, images=["wrist_color"], image_size=32, steps=60,
                         start_steps=30, learning_starts=30, batch_size=16, hidden=[32, 32], eval_every=60,
                         eval_episodes=1, max_episode_steps=25, video=False, out=str(tmp_path))
    run = train_sac(cfg, progress=False)
    last = run / "checkpoints" / "last"
    agent, meta = load_sac(last)
    assert agent.cfg.image_keys == ["wrist_color"] and agent.cfg.image_size == [32, 32] and agent.updates == 31
    online = ReplayBuffer(100, ObsSpec(tuple(keys), (7, 2), ("wrist_color",), (32, 32, 3)), 7)
    online.load(last / "online.npz")
    rows = online.in_order()
    img, nxt = rows["image/wrist_color"], rows["next_image/wrist_color"]
    assert img.shape == (60, 32, 32, 3) and img.std() > 10  # a real view of the cell, not a blank
    step = ~rows["terminal"][:-1] & (np.arange(59) % 25 != 24)  # within an episode: next frame = frame after
    assert np.array_equal(nxt[:-1][step], img[1:][step])
    assert np.abs(img[1:].astype(int) - img[:-1]).mean() > 0.5  # the arm moved: the wrist view changed
    policy = load_policy(last)
    assert policy.spec.image_keys == ["wrist_color"] and policy.spec.image_size == (32, 32)
    r = evaluate_env(last, 1, seed=3)
    assert len(r["episodes"]) == 1 and r["episodes"][0]["steps"] > 10


def test_the_learner_puts_interventions_with_the_demos_and_rebuilds_both_on_restart(store, tmp_path):  # noqa: F811
    """HIL-SERL's rule: the operator's corrections are demonstrations too. A restarted learner
    reads its journal back into both buffers, so nothing an operator showed it is lost."""
    from robot_learning.rl.learner import Learner, transition_arrays
    from robot_learning.rl.link import Outbox

    keys = ["ee_pose.data", "gripper_state.position"]
    spec = {"state_keys": keys, "state_dims": [7, 2], "action_low": [-1.0] * 7, "action_high": [1.0] * 7,
            "dt": 0.1, "env": "test", "action_dims": [0, 1, 2, 5]}
    whole = from_dataset(Dataset(store), obs_spec_from_dataset(Dataset(store), keys))
    out = Outbox(tmp_path / "outbox", "actor-1")
    # the demonstrations as train sac reads them (the fixture's episodes are not marked successful)
    learner = Learner(tmp_path / "run", spec, demos=str(store), hidden=(16, 16), demo_successes_only=False,
                      demo_drop_idle=False, sac={"gamma": 0.97, "n_critics": 3})
    demos = len(whole)
    assert len(learner.demo) == demos
    assert learner.agent.cfg.action_dims == [0, 1, 2, 5] and learner.agent.cfg.gamma == 0.97
    assert learner.agent.cfg.n_critics == 3
    for i in range(10):
        o = {"ee_pose.data": np.full(7, i, np.float32), "gripper_state.position": np.full(2, i, np.float32)}
        o2 = {k: v + 1 for k, v in o.items()}
        learner.receive(out.push(transition_arrays(learner.spec, o, np.zeros(7), 0.0, o2, False, i % 3 == 0, 0.0))[1])
    learner.acks()
    assert len(learner.online) == 10 and len(learner.demo) == demos + 4  # steps 0, 3, 6, 9
    assert np.array_equal(learner.demo.in_order()["state"][demos:, 0], [0, 3, 6, 9])
    learner.weights()
    learner.weights()
    learner.checkpoint()  # at policy version 2: the format's own version stays 1, so it loads anywhere
    learner.close()
    again = Learner(tmp_path / "run", spec, demos=str(store), hidden=(16, 16), demo_successes_only=False,
                    demo_drop_idle=False)
    assert len(again.online) == 10 and len(again.demo) == demos + 4
    assert again.version == 2
    again.close()
    from robot_learning.policies.registry import load_policy
    from robot_learning.rl.learner import ActorPolicy

    deployed = load_policy(tmp_path / "run" / "checkpoints" / "last")
    assert deployed.spec.obs_keys == keys
    # the actor runs the weights it is sent through the server's plug-in: its mean action is
    # what the server will command for the same observation; exploring, it samples around it
    actor = ActorPolicy()
    actor.load(*again_weights(tmp_path / "run", spec))
    o = {"ee_pose.data": np.linspace(-1, 1, 7, dtype=np.float32), "gripper_state.position": np.ones(2, np.float32)}
    mean = actor.act(o, deterministic=True)
    assert mean.dtype == np.float32 and mean.shape == (7,)
    assert np.allclose(mean, deployed.act({f"obs/{k}": v[None] for k, v in o.items()})[0], atol=1e-6)
    explored = np.array([actor.act(o) for _ in range(20)])
    assert np.all(explored >= -1) and np.all(explored <= 1) and np.ptp(explored[:, :3], axis=0).min() > 0


def test_a_restarted_actor_acts_with_the_policy_it_kept_not_with_another_runs(tmp_path):
    """An actor restarted while no learner is up acts with the weights its earlier run last
    loaded (kept beside its outbox) instead of exploring from scratch on the robot; weights kept
    for another spec, damaged, or that no longer build, are not used and the log says why."""
    from robot_learning.rl.learner import ActorPolicy, Learner

    keys = ["ee_pose.data", "gripper_state.position"]
    spec = {"state_keys": keys, "state_dims": [7, 2], "action_low": [-1.0] * 7, "action_high": [1.0] * 7,
            "dt": 0.1, "env": "graph/peg_insert"}
    learner = Learner(tmp_path / "run", spec, hidden=(16, 16))
    first = ActorPolicy(keep=tmp_path / "outbox")
    assert first.restore(spec) is None  # nothing kept yet: the actor announces its spec
    first.load(*learner.weights())
    learner.close()
    o = {"ee_pose.data": np.linspace(-1, 1, 7, dtype=np.float32), "gripper_state.position": np.ones(2, np.float32)}

    again = ActorPolicy(keep=tmp_path / "outbox")
    assert "version 1, kept by an earlier run" in again.restore(spec)
    assert again.restored and np.array_equal(again.act(o, deterministic=True), first.act(o, deterministic=True))
    assert ActorPolicy(keep=tmp_path / "outbox", tag="another_actor").restore(spec) is None

    def refused(spec_now: dict) -> str:
        other = ActorPolicy(keep=tmp_path / "outbox")
        said = other.restore(spec_now)
        assert other.agent is None and not other.restored, said
        return said

    assert "another actor spec (graph/peg_insert" in refused(spec | {"env": "graph/peg_in_hole"})
    assert "another actor spec" in refused(spec | {"state_dims": [7, 3]})      # another robot, same keys
    assert "another actor spec" in refused(spec | {"action_high": [0.5] * 7})  # the task's bounds changed
    record = tmp_path / "outbox" / "policy_actor.json"
    kept = json.loads(record.read_text())
    record.write_text(json.dumps(kept | {"meta": kept["meta"] | {"config": {"hiden": [3]}}}))
    assert "does not load" in refused(spec)                     # a config this code no longer builds
    record.write_text(json.dumps(kept))
    w = tmp_path / "outbox" / kept["weights"]
    w.write_bytes(w.read_bytes()[:100])
    assert "damaged" in refused(spec)
    record.write_text("{not json")
    assert "unreadable" in refused(spec)


def again_weights(run, spec) -> tuple[int, str, bytes]:
    """What a learner restarted on ``run`` publishes first."""
    from robot_learning.rl.learner import Learner

    learner = Learner(run, spec, hidden=(16, 16))
    try:
        return learner.weights()
    finally:
        learner.close()


def test_a_learner_started_afresh_rebuilds_its_buffers_from_recorded_online_episodes(store, tmp_path):  # noqa: F811
    """``online_datasets``: the recorder's copy of earlier runs' online episodes. A learner on a
    new run directory (another machine) starts from them: every recorded step in the online
    buffer, the operator's steps in the demonstrations' too; an episode that did not succeed
    is cut, not over (no terminal state); RLIF's -1 on the step before each takeover."""
    from robot_learning.rl.learner import Learner, transition_arrays
    from robot_learning.rl.link import Outbox

    keys = ["ee_pose.data", "gripper_state.position"]
    spec = {"state_keys": keys, "state_dims": [7, 2], "action_low": [-1.0] * 7, "action_high": [1.0] * 7,
            "dt": 0.1, "env": "test"}
    whole = from_dataset(Dataset(store), obs_spec_from_dataset(Dataset(store), keys)).in_order()
    learner = Learner(tmp_path / "new", spec, demos=str(store), hidden=(16, 16), demo_successes_only=False,
                      demo_drop_idle=False, online_datasets=(str(store),))
    got = learner.online.in_order()
    assert learner.from_datasets == len(learner.online) == len(whole["state"])
    for k in ("state", "next_state", "action", "intervention"):
        assert np.array_equal(got[k], whole[k]), k
    # two episodes, a failure then a success: only the success ends in a terminal state
    assert whole["terminal"].sum() == 2 and np.flatnonzero(got["terminal"]).tolist() == [len(got["state"]) - 1]
    assert len(learner.demo) == len(whole["state"]) + got["intervention"].sum() > len(whole["state"])
    # this run's own transitions come from its journal, on top of the recordings, at every start
    o = {"ee_pose.data": np.zeros(7, np.float32), "gripper_state.position": np.zeros(2, np.float32)}
    out = Outbox(tmp_path / "outbox", "actor-1")
    learner.receive(out.push(transition_arrays(learner.spec, o, np.zeros(7), 0.0, o, False, False, 0.0))[1])
    learner.acks()
    learner.close()
    again = Learner(tmp_path / "new", spec, hidden=(16, 16), online_datasets=(str(store),))
    assert len(again.online) == len(whole["state"]) + 1 and again.received == 1
    again.close()

    rlif = Learner(tmp_path / "rlif", {**spec, "reward": "rlif"}, hidden=(16, 16), online_datasets=(str(store),))
    r = rlif.online.in_order()
    penalized = np.flatnonzero(r["reward"] == -1.0)
    assert len(penalized) == 2 and set(np.unique(r["reward"])) == {-1.0, 0.0}   # one takeover an episode
    assert all(not r["intervention"][i] and r["intervention"][i + 1] for i in penalized)
    rlif.close()
    with pytest.raises(ValueError, match="online_datasets: .* has 7-D actions, this actor's are 4-D"):
        Learner(tmp_path / "other", {**spec, "action_low": [-1.0] * 4, "action_high": [1.0] * 4}, hidden=(16, 16),
                online_datasets=(str(store),))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU says")
def test_a_learner_or_trainer_told_to_use_a_gpu_that_is_not_there_says_so_before_starting(tmp_path):
    """``device:=cuda`` on the wrong machine (the learner is meant for the GPU box): one sentence
    at start, not a CUDA error at the first update minutes later, and no run directory left."""
    from robot_learning.nets.device import pick_device
    from robot_learning.rl.learner import Learner
    from robot_learning.train.sac import SACTrainConfig, train_sac

    assert pick_device("auto") == "cpu" and pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device 'tpu0' is not a torch device: use auto, cpu, cuda or cuda:N"):
        pick_device("tpu0")
    spec = {"state_keys": ["ee_pose.data"], "state_dims": [7], "action_low": [-1.0] * 7, "action_high": [1.0] * 7,
            "dt": 0.1, "env": "test"}
    with pytest.raises(ValueError, match="device 'cuda': this machine has no CUDA GPU torch can use; use cpu"):
        Learner(tmp_path / "run", spec, device="cuda")
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="train sac: device 'cuda:1': this machine has no CUDA GPU"):
        train_sac(SACTrainConfig(env="Pendulum-v1", device="cuda:1", out=str(tmp_path / "runs")), progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_learner_stores_no_transition_laid_out_for_another_actor(tmp_path):
    """An outbox an earlier run left behind (another task, or the actor with ``base:=`` toggled)
    is resent to whatever learner is up: those transitions are counted, not stored, and the
    learner goes on with the ones that fit its spec."""
    from robot_learning.rl.learner import Learner, transition_arrays
    from robot_learning.rl.link import Outbox
    from robot_learning.rl.replay import ObsSpec

    spec = {"state_keys": ["ee_pose.data"], "state_dims": [7], "action_low": [-1.0] * 7, "action_high": [1.0] * 7,
            "dt": 0.1, "env": "test"}
    other = ObsSpec(("ee_pose.data", "base_action"), (7, 7))
    learner = Learner(tmp_path / "run", spec, hidden=(16, 16))
    out = Outbox(tmp_path / "outbox", "actor-1")
    o, wide = {"ee_pose.data": np.zeros(7, np.float32)}, {"ee_pose.data": np.zeros(7, np.float32),
                                                           "base_action": np.zeros(7, np.float32)}
    learner.receive(out.push(transition_arrays(other, wide, np.zeros(7), 0.0, wide, False, False, 0.0))[1])
    learner.receive(out.push(transition_arrays(learner.spec, o, np.zeros(7), 0.0, o, False, False, 0.0))[1])
    assert learner.misfits == 1 and learner.received == 1 and len(learner.online) == 1
    learner.close()


def test_a_learner_for_a_residual_starts_at_no_correction_and_resumes_without_the_base(tmp_path):
    """A residual actor's spec: the learner's agent starts with a zero mean (the base alone),
    its critic's targets clipped to the returns' range; its checkpoints name the base, yet a
    restarted learner on a machine without that base resumes (only deploying needs the base)."""
    from robot_learning.rl.learner import Learner

    spec = {"state_keys": ["ee_pose.data", "base_action"], "state_dims": [7, 7], "action_low": [-1.0] * 7,
            "action_high": [1.0] * 7, "dt": 0.1, "env": "graph/pick_place/residual", "zero_correction": True,
            "return_range": [0.0, 1.0],
            "checkpoint": {"policy": "residual_sac", "base": {"path": str(tmp_path / "gone"), "sha256": "0" * 64},
                           "obs_keys": ["ee_pose.data"], "bound": [0.01] * 7, "base_options": {}}}
    learner = Learner(tmp_path / "run", spec, hidden=(16, 16))
    assert learner.agent.cfg.q_range == [0.0, 1.0] and not learner.agent.cfg.backup_entropy
    for x in np.random.default_rng(0).normal(size=(5, 14)).astype(np.float32):
        assert np.all(learner.agent.act({"state": x}, deterministic=True) == 0.0)
    learner.checkpoint()
    learner.close()
    raw = json.loads((tmp_path / "run" / "checkpoints" / "last" / "config.json").read_text())
    assert raw["policy"] == "residual_sac" and raw["obs_keys"] == ["ee_pose.data"]
    again = Learner(tmp_path / "run", spec, hidden=(16, 16))   # the base is not on this machine
    assert again.agent.cfg.q_range == [0.0, 1.0]
    again.close()
    with pytest.raises(ValueError, match="without demos"):
        Learner(tmp_path / "run2", spec, demos=str(tmp_path / "demos.zarr"), hidden=(16, 16))
