"""``robot-learning train diffusion``: checkpoints, best/last, metrics and TensorBoard logs,
env rollouts, resume that continues where it stopped, and torchrun data parallel (gloo on CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_dataset import store  # noqa: F401  (fixture: 2 recorded episodes on real zarr)

from robot_learning.data.sampler import WindowSampler, WindowSpec
from robot_learning.data.store import Dataset
from robot_learning.evaluate import policy_cameras
from robot_learning.policies.registry import checkpoint_recipe, load_policy, read_checkpoint
from robot_learning.train.diffusion import TrainConfig, train

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest

TINY = dict(obs=["joint_states.position"], images=["front_color"], image_size=[32, 32], pred_horizon=8,
            action_horizon=4, down_dims=[16, 32], batch_size=16, warmup_steps=2, only_success=False)


def rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_checkpoints_evaluates_and_resumes(store, tmp_path):  # noqa: F811
    run = train(TrainConfig(dataset=str(store), out=str(tmp_path / "run"), steps=20, eval_every=10, eval_episodes=1,
                            eval_max_steps=15,
                            **TINY), progress=False)
    ck = run / "checkpoints"
    assert {p.name for p in ck.iterdir()} == {"step_0000010", "step_0000020", "best", "last"}
    assert list((run / "tb").glob("events.out.tfevents.*"))
    evals = [r for r in rows(run) if "success_rate" in r]
    assert [r["step"] for r in evals] == [10, 20]
    # an untrained policy: each rollout really ran in the sim, to the limit, and failed
    assert [(r["success_rate"], r["eval_steps"]) for r in evals] == [(0.0, 15.0)] * 2
    assert (run / "curves.png").exists()
    meta = json.loads((ck / "last" / "config.json").read_text())
    assert meta["train"]["step"] == 20 and "streams" in meta["recipe"]

    # the saved policy runs on a window built like the server builds it
    policy = load_policy(ck / "last")
    w = WindowSampler(Dataset(store), WindowSpec(2, 8, ("joint_states.position",), ("front_color",), (32, 32)))[5]
    chunk = policy.act({k: v for k, v in w.items() if k.startswith(("obs/", "image/"))})
    assert chunk.shape == (4, 7) and np.all(np.isfinite(chunk))  # --action-horizon 4 of the 8 predicted
    # `evaluate --where graph` has the sim render the camera the policy reads, no other, no depth
    rendered = policy_cameras(policy, checkpoint_recipe(read_checkpoint(ck / "last")))
    assert rendered == {"cameras": "front", "depth": "false"}

    state = torch.load(run / "train_state" / "optim.pt", weights_only=True)
    assert state["step"] == 20
    train(TrainConfig(dataset=str(store), resume=str(run), steps=30, eval_every=10, eval_episodes=0), progress=False)
    later = rows(run)[len(rows(run)) - 2:]
    assert later[-1]["step"] == 30 and (ck / "step_0000030").exists()
    assert torch.load(run / "train_state" / "optim.pt", weights_only=True)["scheduler"]["last_epoch"] == 30


def test_episodes_takes_the_first_n_and_refuses_more_than_there_are(store):  # noqa: F811
    """``--episodes N``: a data-scaling study trains on the first N demonstrations, and asking
    for more than the dataset holds is one sentence, not a run on fewer."""
    from robot_learning.train.diffusion import _split

    ds = Dataset(store)
    train_eps, val_eps, _ = _split(ds, TrainConfig(dataset=str(store), episodes=1, only_success=False))
    assert train_eps + val_eps == [ds.indices[0]]
    with pytest.raises(SystemExit, match="--episodes 3, but .* has 2 complete episodes: ask for at most that many"):
        _split(ds, TrainConfig(dataset=str(store), episodes=3, only_success=False))


def test_init_starts_from_a_checkpoints_weights_and_refuses_another_network(store, tmp_path):  # noqa: F811
    """--init: a run whose optimizer state is gone goes on from its weights (and its normalizer)."""
    from safetensors.torch import load_file

    from robot_learning.policies.checkpoint import PolicyError

    first = train(TrainConfig(dataset=str(store), out=str(tmp_path / "a"), steps=3, eval_every=0, eval_episodes=0,
                              **TINY), progress=False) / "checkpoints" / "last"
    # the learning rate of the first step is 1e-12: the weights must come out as they went in
    second = train(TrainConfig(dataset=str(store), out=str(tmp_path / "b"), steps=1, eval_every=0, eval_episodes=0,
                               init=str(first), **{**TINY, "warmup_steps": 10**10, "lr": 1e-2}),
                   progress=False) / "checkpoints" / "last"
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    norm = [json.loads((c / "config.json").read_text())["normalizer"] for c in (first, second)]
    assert norm[0] == norm[1]
    with pytest.raises(PolicyError, match="another network.*down_dims"):
        train(TrainConfig(dataset=str(store), out=str(tmp_path / "c"), steps=1, eval_every=0, eval_episodes=0,
                          init=str(first), **{**TINY, "down_dims": [8, 16]}), progress=False)


def test_the_region_of_the_view_a_policy_trained_on_is_cut_from_live_frames(tmp_path):
    """``dataset shrink --roi`` cuts a camera's view down to the workspace; a policy trained on
    that copy must read the same region of the full frames the server gets, not the whole view."""
    from test_dataset import record_textured

    from robot_learning.data.sampler import resize_frame
    from robot_learning.data.shrink import shrink_dataset
    from robot_learning.runtime.buffers import ObsBuffers

    roi = (0.25, 0.5, 0.75, 1.0)
    full, small = record_textured(tmp_path / "d.zarr"), tmp_path / "small.zarr"
    shrink_dataset(full, small, (32, 32), rois={"front_color": roi}, progress=False)
    run = train(TrainConfig(dataset=str(small), out=str(tmp_path / "a"), steps=2, eval_every=0, eval_episodes=0,
                            **TINY), progress=False)
    spec = load_policy(run / "checkpoints" / "last").spec
    assert spec.image_rois == {"front_color": roi}
    assert json.loads((run / "train_config.json").read_text())["image_roi"] == ["front_color:0.25:0.5:0.75:1"]

    raw, cut = Dataset(full).episode(0), Dataset(small).episode(0)
    rows_raw, rows_cut = raw.steps["index"]["front_color"][:], cut.steps["index"]["front_color"][:]
    s = int(np.flatnonzero(rows_raw >= 0)[3])
    frame = raw.streams["front_color"]["data"][rows_raw[s]]
    buffers = ObsBuffers(spec.obs_keys, spec.image_keys, spec.obs_horizon, spec.dt, spec.image_size,
                         image_rois=spec.image_rois)
    buffers.add("joint_states", 0.0, {"position": np.zeros(7)})
    buffers.add("front_color", 0.0, {"data": frame})
    live = buffers.window()[1]["image/front_color"][-1]
    assert np.array_equal(live, cut.streams["front_color"]["data"][rows_cut[s]])
    assert not np.array_equal(live, resize_frame(frame, (32, 32)))   # the whole view would differ

    # the same region from the full recording trains on the same windows; another is refused
    spec_w = WindowSpec(2, 8, ("joint_states.position",), ("front_color",), (32, 32), image_rois={"front_color": roi})
    a, b = WindowSampler(Dataset(full), spec_w)[7], WindowSampler(Dataset(small), spec_w)[7]
    assert np.array_equal(a["image/front_color"], b["image/front_color"])
    with pytest.raises(SystemExit, match=r"region \[0.25, 0.5, 0.75, 1\].*not \[0, 0, 1, 0.5\]"):
        train(TrainConfig(dataset=str(small), out=str(tmp_path / "b"), steps=1, eval_every=0, eval_episodes=0,
                          image_roi=["front_color:0:0:1:0.5"], **TINY), progress=False)
    with pytest.raises(SystemExit, match="camera:x0:y0:x1:y1"):
        train(TrainConfig(dataset=str(full), out=str(tmp_path / "c"), steps=1, eval_every=0, eval_episodes=0,
                          image_roi=["front_color:0.5:0:0.2:1"], **TINY), progress=False)


@pytest.mark.parametrize("max_norm", [0.05, 1e3], ids=["clipped", "unclipped"])
def test_the_trainers_clipped_step_is_clip_grad_norm_then_adamw(max_norm):
    """The trainer hands gradient clipping's factor to the fused AdamW instead of scaling every
    gradient first. Two steps must leave the parameters and the optimizer's moments where
    ``clip_grad_norm_`` then ``step`` leaves them, whether the norm is clipped or not."""
    from robot_learning.train.diffusion import clipped_step, optimizers

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Mish(), torch.nn.Linear(32, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [optimizers(n, 1e-2, 1e-6, 0.99)[0] for n in nets]
    x, y = torch.randn(64, 6), torch.randn(64, 3)
    for _ in range(2):
        for i, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            if i == 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
                opt.step()
            else:
                clipped_step(opt, net.parameters(), max_norm)
    moved = max((a - b).abs().max() for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    assert moved < 1e-6
    for a, b in zip(opts[0].state.values(), opts[1].state.values()):
        assert torch.allclose(a["exp_avg"], b["exp_avg"], atol=1e-7)
        assert torch.allclose(a["exp_avg_sq"], b["exp_avg_sq"])
    assert not hasattr(opts[1], "grad_scale")   # nothing left behind to scale a later step


def test_the_trainers_step_over_channels_last_and_tap_major_weights_is_adamws():
    """The encoders' weights are channels-last and the U-Net's tap-major: the trainer hands their
    gradients to the fused AdamW as contiguous views of the same memory (torch's kernel would copy
    them first). Three clipped steps must leave every parameter where ``clip_grad_norm_`` then
    torch's plain (unfused) AdamW leaves it, and the gradients as they were."""
    from robot_learning.nets.unet1d import TemporalConv
    from robot_learning.train.diffusion import clipped_step, optimizers

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
            self.seq = TemporalConv(4, 6, 5)
            self.head = torch.nn.Linear(8 + 6, 2)

        def forward(self, img, seq):
            return self.head(torch.cat([self.conv(img).mean((2, 3)), self.seq(seq).mean(2)], 1))

    nets = [Net() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    assert not nets[0].conv.weight.is_contiguous() and not nets[0].seq.weight.is_contiguous()
    opts = [torch.optim.AdamW(nets[0].parameters(), lr=1e-2, weight_decay=1e-2, foreach=False),
            optimizers(nets[1], 1e-2, 1e-2, 0.99)[0]]
    img = torch.randn(5, 3, 7, 7).contiguous(memory_format=torch.channels_last)
    seq, target = torch.randn(5, 4, 9), torch.randn(5, 2)
    for _ in range(3):
        for i, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(img, seq), target).backward()
            if i == 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), 0.05)
                opt.step()
            else:
                grads = [p.grad for p in net.parameters()]
                clipped_step(opt, net.parameters(), 0.05)
                assert all(p.grad is g for p, g in zip(net.parameters(), grads))   # put back
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
        assert a.stride() == b.stride(), name
    assert (nets[1].seq.weight - Net().seq.weight).abs().max() > 0.01


def test_each_rank_trains_on_its_own_shard_of_every_epoch():
    from robot_learning.train.distributed import Ranks, shard_indices

    for n, per in ((103, 8), (64, 4)):
        epochs = n // 2 // per  # full batches per rank and epoch
        got = [np.concatenate([next(it) for _ in range(epochs)])
               for it in (shard_indices(n, per, np.random.default_rng(7), Ranks(r, 2)) for r in (0, 1))]
        assert not set(got[0]) & set(got[1])                         # disjoint
        assert len(set(got[0])) == len(got[0]) == epochs * per       # each window once per epoch
    # fewer windows than one batch of every rank: drawn with replacement, each rank its own
    tiny = [next(shard_indices(5, 8, np.random.default_rng(7), Ranks(r, 2))) for r in (0, 1)]
    assert all(len(t) == 8 and t.max() < 5 for t in tiny) and not np.array_equal(*tiny)


def test_prefetched_batches_come_in_order_and_an_error_in_the_thread_reaches_the_trainer():
    import pytest

    from robot_learning.train.distributed import prefetched

    def items(fail_at=None):
        for i in range(50):
            if i == fail_at:
                raise ValueError(f"bad window {i}")
            yield {"x": np.full(3, i)}

    got = [b["x"][0] for b in prefetched(items(), lambda b: {"x": b["x"] * 2})]
    assert got == [2 * i for i in range(50)]

    def slow_double(b):  # later jobs finish first: the order must still hold
        time.sleep(0.002 * (7 - int(b["x"][0]) % 7))
        return {"x": b["x"] * 2}

    assert [b["x"][0] for b in prefetched(items(), slow_double, workers=4)] == [2 * i for i in range(50)]
    it = prefetched(items(fail_at=7), lambda b: b)
    assert [next(it)["x"][0] for _ in range(7)] == list(range(7))
    with pytest.raises(ValueError, match="bad window 7"):
        next(it)


def test_torchrun_data_parallel_on_cpu(store, tmp_path):  # noqa: F811
    """Two gloo ranks: they stop at the same step on rank 0's clock (--max-minutes), share the
    evaluation's rollouts, and end with identical weights."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "robot_learning.cli", "train", "diffusion", "--dataset", str(store), "--out", str(out),
           "--steps", "100000", "--max-minutes", "0.03", "--eval-every", "100000", "--eval-episodes", "2",
           "--eval-max-steps", "10", "--obs", "joint_states.position", "--images", "", "--pred-horizon", "8",
           "--down-dims", "16,32", "--batch-size", "8", "--no-only-success", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "x2" in r.stdout and r.stdout.count("budget is spent") == 1
    ends = sorted(re.findall(r"rank (\d): stopped after step (\d+), weights checksum (\w+)", r.stdout))
    assert [e[0] for e in ends] == ["0", "1"] and ends[0][1:] == ends[1][1:], ends  # same step, same weights
    assert (out / "checkpoints" / "last" / "model.safetensors").exists()
    ev = [x for x in rows(out) if "success_rate" in x]
    assert len(ev) == 1 and (ev[0]["eval_episodes"], ev[0]["eval_steps"]) == (2, 10.0)  # one rollout per rank


def test_every_train_flag_is_explained_by_its_configs_comment():
    """``--help`` is the field's comment in the config dataclass, the lines above it and the one
    beside it (a subclass's fields too), so the explanation lives in one place."""
    import argparse

    from robot_learning.train.cli import add_parser, field_comments
    from robot_learning.train.residual import ResidualTrainConfig
    from robot_learning.train.sac import DsrlTrainConfig

    helps = field_comments(ResidualTrainConfig)
    assert helps["scale"].startswith("the largest correction, as a share of each action's half-range")
    assert helps["shaping"].startswith("Potential-based shaping:") and helps["shaping"].endswith("pick_place base.")
    assert "noise_bound" in field_comments(DsrlTrainConfig) and "demo_ratio" in field_comments(DsrlTrainConfig)
    parser = argparse.ArgumentParser(prog="robot-learning")
    add_parser(parser.add_subparsers(dest="command"))
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    kinds = next(a for a in train._actions if isinstance(a, argparse._SubParsersAction)).choices
    text = " ".join(kinds["residual"].format_help().split())
    assert "--scale SCALE the largest correction, as a share of each action's half-range in the data" in text
    assert "--hidden HIDDEN the residual's MLP (actor and critic) (comma-" in text  # (wrapped at the hyphen)
    for kind in ("residual", "diffusion"):
        unexplained = [a.dest for a in kinds[kind]._actions if a.option_strings and a.dest != "help" and not a.help]
        assert not unexplained, f"train {kind}: flags with no comment in the config: {unexplained}"
