"""Taxel grids in the diffusion policy: encoded as grids (``nets.tactile``), found in a
recording's float-image streams by ``train diffusion``, and kept through a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_dataset import store  # noqa: F401  (fixture: 2 recorded episodes on real zarr)

from robot_learning.policies.checkpoint import PolicyError, load_checkpoint
from robot_learning.policies.diffusion import DiffusionConfig, DiffusionPolicy
from robot_learning.policies.normalizer import Normalizer
from robot_learning.policies.registry import load_policy
from robot_learning.train.diffusion import TrainConfig, train

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest

GRID = "tactile_left.data"


def _contacts(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[n, 4, 4, 3] pads each pressed at one random point (2 N normal force, spread over the four
    taxels around it as the sim does), and that point's (u, v) in [0, 3]."""
    uv = rng.uniform(0, 3, (n, 2))
    grids = np.zeros((n, 4, 4, 3), np.float32)
    for i, (u, v) in enumerate(uv):
        c0, r0 = min(int(u), 2), min(int(v), 2)
        fu, fv = u - c0, v - r0
        for dr, dc, w in ((0, 0, (1 - fu) * (1 - fv)), (0, 1, fu * (1 - fv)), (1, 0, (1 - fu) * fv), (1, 1, fu * fv)):
            grids[i, r0 + dr, c0 + dc, 2] += 2.0 * w
    return grids, uv


def test_the_grid_encoder_learns_where_on_the_pad_a_contact_is():
    """What the tactile input is for: the action depends on where the object touches the pad.
    The policy is trained on grids alone and must say where the contact is (a pooled encoder
    could not: its features are the same wherever the contact sits)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a tiny network: two threads only wait on each other, the more so on a busy machine
    rng = np.random.default_rng(0)
    grids, uv = _contacts(512, rng)
    norm = Normalizer()
    norm.fit(GRID, grids.reshape(-1, 3))
    actions = np.repeat(uv[:, None, :], 4, axis=1).astype(np.float32)   # the chunk: go to that point
    norm.fit("action", actions.reshape(-1, 2))
    cfg = DiffusionConfig(obs_dims={GRID: 48}, action_dim=2, tactile_shapes={GRID: [4, 4, 3]}, obs_horizon=1,
                          pred_horizon=4, down_dims=[16, 32], train_timesteps=20, inference_steps=5)
    policy = DiffusionPolicy(cfg, norm)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(250):
        idx = rng.integers(0, 512, 64)
        loss = policy.loss({f"obs/{GRID}": torch.as_tensor(grids[idx, None]), "action": torch.as_tensor(actions[idx])})
        opt.zero_grad()
        loss.backward()
        opt.step()
    test_grids, test_uv = _contacts(64, np.random.default_rng(1))
    policy.eval()
    out = policy.predict({f"obs/{GRID}": torch.as_tensor(test_grids[:, None])},
                         generator=torch.Generator().manual_seed(0), noise_scale=0.0)
    torch.set_num_threads(threads)
    err = np.abs(out.mean(1).numpy() - test_uv).mean()
    print(f"contact position from the grid: mean error {err:.2f} taxels (a guess of the middle: "
          f"{np.abs(test_uv - 1.5).mean():.2f})")
    assert err < 0.3


def test_training_on_a_recording_encodes_its_taxel_grids_and_the_checkpoint_keeps_them(store, tmp_path):  # noqa: F811
    obs = ["joint_states.position", GRID, "wrench.data"]
    run = train(TrainConfig(dataset=str(store), out=str(tmp_path / "run"), obs=obs, steps=3, eval_every=3, threads=1,
                            eval_episodes=0, batch_size=8, down_dims=[16, 32], pred_horizon=8, action_horizon=4),
                progress=False)
    ck = run / "checkpoints" / "last"
    meta = json.loads((ck / "config.json").read_text())
    assert meta["config"]["tactile_shapes"] == {GRID: [4, 4, 3]}
    assert len(meta["normalizer"][GRID]["min"]) == 3          # one scale per force axis, not per taxel
    policy, _ = load_checkpoint(ck)
    assert GRID.replace(".", "_") in policy.tactile
    runner = load_policy(ck)
    window = {"obs/joint_states.position": np.zeros((2, 9), np.float32),
              f"obs/{GRID}": np.ones((2, 4, 4, 3), np.float32), "obs/wrench.data": np.zeros((2, 6), np.float32)}
    assert runner.act(window).shape == (4, 7)
    flat = train(TrainConfig(dataset=str(store), out=str(tmp_path / "flat"), obs=obs, steps=1, eval_every=1, threads=1,
                             eval_episodes=0, batch_size=8, down_dims=[16, 32], tactile="flat"), progress=False)
    assert json.loads((flat / "checkpoints" / "last" / "config.json").read_text())["config"]["tactile_shapes"] == {}

    meta["config"]["tactile_shapes"][GRID] = [4, 4, 2]   # edited apart from obs_dims
    (ck / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="tactile_shapes 'tactile_left.data' is 4x4x2, but config.obs_dims gives "
                                          "it 48 values"):
        load_checkpoint(ck)


def test_the_fast_policy_learns_to_correct_the_slow_plans_and_deploys_as_a_per_tick_correction(store, tmp_path):  # noqa: F811
    """``train slow-fast``: a frozen diffusion policy plans chunks; the fast policy learns, from
    the demonstrations, what to add to each planned action given the newest state, wrench and
    taxel grids. Its error against the demonstrations falls well below the plans' own, and the
    checkpoint runs in the server's interface: chunks from the slow policy, and a correction of
    the action due at every tick, bounded, from the newest observations."""
    from robot_learning.train.slow_fast import SlowFastTrainConfig, train_slow_fast

    base = train(TrainConfig(dataset=str(store), out=str(tmp_path / "slow"), obs=["ee_pose.data"], steps=3,
                             eval_every=3, eval_episodes=0, threads=1, batch_size=8, down_dims=[16, 32],
                             pred_horizon=8, action_horizon=4, only_success=False), progress=False)
    keys = ["ee_pose.data", "wrench.data", GRID]
    run = train_slow_fast(SlowFastTrainConfig(base=str(base / "checkpoints" / "last"), dataset=str(store), obs=keys,
                                              steps=300, hidden=[64, 64], eval_episodes=0, threads=1,
                                              out=str(tmp_path / "fast")), progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    print(f"error against the demonstrations, in units of the bound: plans {rows[0]['train_loss']:.3f}, "
          f"corrected {rows[-1]['train_loss']:.3f}")
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    ck = run / "checkpoints" / "last"
    meta = json.loads((ck / "config.json").read_text())
    assert meta["policy"] == "slow_fast" and meta["config"]["tactile_shapes"] == {GRID: [4, 4, 3]}
    runner = load_policy(ck)
    assert set(keys) <= set(runner.spec.obs_keys)
    window = {"obs/ee_pose.data": np.tile(np.r_[0.3, 0, 0.3, 1, 0, 0, 0].astype(np.float32), (2, 1))}
    chunk = runner.act(window)
    assert chunk.shape == (4, 7)
    newest = {"ee_pose.data": window["obs/ee_pose.data"][-1], "wrench.data": np.zeros(6),
              GRID: np.full((4, 4, 3), 50.0)}
    out = runner.correct(chunk[0], newest)
    bound = np.asarray(meta["config"]["scale"])
    assert np.all(np.abs(out - chunk[0]) <= bound + 1e-6) and np.any(np.abs(out - chunk[0]) > 1e-4)
    alone = load_policy(run / "checkpoints" / "slow_alone")   # the slow policy alone, on the same per-tick path
    assert np.array_equal(alone.correct(chunk[0], newest), chunk[0])


def test_dagger_labels_every_tick_slow_fast_visits_with_what_the_expert_commands_there(store, tmp_path):  # noqa: F811
    """``train slow-fast --dagger``: slow-fast acts through the server's engine while the
    scripted expert labels each tick with what it commands from that state, in the slow policy's
    action space (this slow policy's: twists)."""
    from robot_learning.data.schema import load_recipe
    from robot_learning.paths import project_root
    from robot_learning.policies.slow_fast import FastConfig, FastCorrection, FastPolicy
    from robot_learning.sim.expert import ScriptedExpert
    from robot_learning.train import dagger

    base = train(TrainConfig(dataset=str(store), out=str(tmp_path / "slow"), obs=["ee_pose.data"], steps=3,
                             eval_every=3, eval_episodes=0, threads=1, batch_size=8, down_dims=[16, 32],
                             pred_horizon=8, action_horizon=4, only_success=False), progress=False)
    slow = load_policy(base / "checkpoints" / "last")
    lo, hi = slow.policy.action_bounds()
    scale = np.ones(7)   # wide: this 3-step slow policy's chunks leave its data's range
    fast = FastPolicy(FastConfig(["wrench.data"], [6], 7, scale.tolist(), lo.tolist(), hi.tolist(), hidden=[8]))
    commanded = []
    act = ScriptedExpert.act

    def spy(self, obs):
        out = act(self, obs)
        commanded.append((out, obs.tcp_pos.copy()))
        return out

    ScriptedExpert.act = spy
    try:
        recipe = load_recipe(project_root() / "datasets" / "recipes" / "workcell.yaml")
        data, rate = dagger.expert_examples(slow, FastCorrection(fast), ["wrench.data"], scale, recipe,
                                            "pick_place", [5], progress=False, max_steps=6)
    finally:
        ScriptedExpert.act = act
    n = len(data["obs"])
    assert n == len(commanded) >= 6 * 4   # a label per tick that acted
    assert rate == 0.0   # 0.6 s is too short to pick and place: no rollout may count as a success
    assert data["obs"].shape == (n, 6) and data["slow"].shape == data["demo"].shape == (n, 7)
    assert np.all(data["episode"] == -1)      # never among the held-out demonstrations
    assert slow.spec.action_kind == "twist"
    for label, ((twist, grip), _) in zip(data["demo"], commanded):
        assert np.allclose(label, np.r_[twist, grip], atol=1e-6)
    moved = np.linalg.norm(commanded[-1][1] - commanded[0][1])
    assert moved > 1e-3   # the states are the ones slow-fast drove the arm through
