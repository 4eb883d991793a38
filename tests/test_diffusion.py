"""Diffusion policy slices: training windows with correct edge padding, and checkpoints that
load to the same outputs and refuse a mismatched spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_dataset import store  # noqa: F401  (fixture: 2 recorded episodes on real zarr)

from robot_learning.data.sampler import WindowSampler, WindowSpec
from robot_learning.data.store import Dataset
from robot_learning.policies.checkpoint import PolicyError, load_checkpoint, save_checkpoint
from robot_learning.policies.diffusion import DiffusionConfig, DiffusionPolicy
from robot_learning.policies.normalizer import Normalizer

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest

SPEC = WindowSpec(obs_horizon=2, pred_horizon=8, obs_keys=("joint_states.position",), image_keys=("front_color",),
                  image_size=(32, 32))


def test_windows_pad_at_episode_edges_and_never_cross_episodes(store):  # noqa: F811
    ds = Dataset(store)
    s = WindowSampler(ds, SPEC)
    ep = ds.episode(0)
    n = ep.n_steps
    act = ep.steps["action"][:]
    assert len(s) == sum(e.n_steps for e in ds.episodes())
    w = s[0]  # first step: history and the action before it padded with the first
    assert np.array_equal(w["obs/joint_states.position"][0], w["obs/joint_states.position"][1])
    assert np.allclose(w["action"][0], act[0]) and np.allclose(w["action"][1:], act[:7])
    assert w["action_is_pad"].tolist() == [True] + [False] * 7
    w = s[n - 1]  # last step: velocity dims stop (zero), the gripper holds its last value
    assert np.allclose(w["action"][:2], act[n - 2:n])
    assert np.all(w["action"][2:, :6] == 0) and np.allclose(w["action"][2:, 6], act[-1, 6])
    assert w["action_is_pad"].tolist() == [False, False] + [True] * 6
    assert w["image/front_color"].shape == (2, 32, 32, 3)
    w1 = s[n]  # the next episode's first window starts fresh
    assert np.allclose(w1["action"][1:], ds.episode(1).steps["action"][:7])


def tiny_policy(sampler: WindowSampler, **cfg_args) -> DiffusionPolicy:
    norm = Normalizer()
    norm.fit("joint_states.position", sampler.all_obs("joint_states.position"))
    norm.fit("action", sampler.all_actions())
    cfg = DiffusionConfig(obs_dims={"joint_states.position": 9}, action_dim=7,
                          image_shapes={"front_color": [32, 32, 3]}, obs_horizon=2, pred_horizon=8,
                          down_dims=[16, 32], image_feature_dim=8, train_timesteps=20, inference_steps=4,
                          **cfg_args)
    return DiffusionPolicy(cfg, norm)


def batch(sampler, idx):
    items = [sampler[i] for i in idx]
    return {k: torch.as_tensor(np.stack([it[k] for it in items])) for k in items[0] if k != "action_is_pad"}


@pytest.mark.parametrize("denoiser", ["unet", "mlp"])
def test_checkpoint_round_trip_gives_the_same_actions(store, tmp_path, denoiser):  # noqa: F811
    torch.manual_seed(0)
    s = WindowSampler(Dataset(store), SPEC)
    policy = tiny_policy(s, denoiser=denoiser, mlp_width=32, mlp_depth=2)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    for step in range(3):
        loss = policy.loss(batch(s, range(step * 8, step * 8 + 8)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    path = save_checkpoint(policy.eval(), tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded, meta = load_checkpoint(path, expect_spec=policy.cfg.spec())
    b = batch(s, [0, 5, 30])
    for sampler in ("ddim", "dpmsolver"):
        a = policy.predict(b, sampler=sampler, generator=torch.Generator().manual_seed(1))
        c = loaded.predict(b, sampler=sampler, generator=torch.Generator().manual_seed(1))
        assert a.shape == (3, 8, 7) and torch.allclose(a, c)
    assert type(loaded.net) is type(policy.net)


def test_the_mlp_denoiser_fits_a_batch_and_refuses_a_chunk_of_another_length(store):  # noqa: F811
    """The MLP over the flattened chunk learns: its denoising loss on a fixed batch falls well
    below where it started (as the U-Net's does), and it names the chunk shape it was built for."""
    s = WindowSampler(Dataset(store), SPEC)
    torch.manual_seed(0)
    policy = tiny_policy(s, denoiser="mlp", mlp_width=64, mlp_depth=2)
    b = batch(s, range(0, 40, 3))
    before = _denoising_loss(policy, b)
    _fit(policy, b, "fp32", 300, lr=1e-3)
    assert _denoising_loss(policy, b) < 0.5 * before
    with pytest.raises(ValueError, match=r"chunk must be \[B, 8, 7\]"):
        policy.net(torch.zeros(2, 16, 7), torch.zeros(2), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="denoiser is one of unet, mlp, not 'gru'"):
        tiny_policy(s, denoiser="gru")


def test_mismatched_spec_and_foreign_files_are_refused(store, tmp_path):  # noqa: F811
    s = WindowSampler(Dataset(store), SPEC)
    path = save_checkpoint(tiny_policy(s), tmp_path / "ckpt")
    want = {**tiny_policy(s).cfg.spec(), "action_dim": 6}
    with pytest.raises(PolicyError, match="action_dim: the checkpoint has 7, expected 6"):
        load_checkpoint(path, expect_spec=want)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PolicyError, match="needs config.json and model.safetensors"):
        load_checkpoint(tmp_path / "junk")


def test_actions_relative_to_the_tcp_cover_every_window_and_come_back_absolute(store, tmp_path):  # noqa: F811
    """``action_origin``: the network's actions are positions relative to the newest observed
    pose. Their normalizer range is every window's (not only each step's own action), and what
    the policy returns is absolute again, with absolute bounds for the server's check."""
    from robot_learning.policies.diffusion import DiffusionRunner

    key = "joint_states.position"
    spec = WindowSpec(obs_horizon=2, pred_horizon=8, obs_keys=(key,), zero_pad_dims=())
    s = WindowSampler(Dataset(store), spec)
    rel = s.window_actions(key).reshape(len(s), 8, -1)
    for i in (0, 5, len(s) - 1):
        w = s[i]
        want = w["action"].copy()
        want[:, :3] -= w[f"obs/{key}"][-1, :3]
        assert np.allclose(rel[i], want, atol=1e-6)
    norm = Normalizer()
    norm.fit(key, s.all_obs(key))
    norm.fit("action", s.window_actions(key))
    norm.fit("action_bounds", s.all_actions())
    cfg = DiffusionConfig(obs_dims={key: 9}, action_dim=7, obs_horizon=2, pred_horizon=8, down_dims=[16, 32],
                          train_timesteps=20, inference_steps=4, action_origin=key)
    policy = DiffusionPolicy(cfg, norm)
    b = batch(s, [3, 4])
    a = policy.predict(b, generator=torch.Generator().manual_seed(1), noise_scale=0.0)
    relative = (a - policy._origin(b)).numpy().reshape(-1, 7)   # within the windows' relative range
    lo_r, hi_r = rel.reshape(-1, 7).min(0), rel.reshape(-1, 7).max(0)
    varied = hi_r - lo_r > 1e-3   # (a constant dimension is normalized with a unit span)
    assert np.all(relative[:, varied] >= lo_r[varied] - 1e-3) and np.all(relative[:, varied] <= hi_r[varied] + 1e-3)
    assert not np.allclose(a.numpy()[..., :3], relative.reshape(a.shape)[..., :3])   # and absolute again
    runner = DiffusionRunner(policy)
    lo, hi = s.all_actions().min(0), s.all_actions().max(0)
    assert np.all(runner.spec.action_low < lo) and np.all(runner.spec.action_high > hi)   # absolute bounds
    path = save_checkpoint(policy.eval(), tmp_path / "ckpt")
    loaded, _ = load_checkpoint(path)
    assert torch.allclose(a, loaded.predict(b, generator=torch.Generator().manual_seed(1), noise_scale=0.0))
    meta = json.loads((path / "config.json").read_text())
    meta["config"]["action_origin"] = "cube_pose.data"   # not observed
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="action_origin 'cube_pose.data' must be an observed pose"):
        load_checkpoint(path)


class _Fixed(torch.nn.Module):
    """A denoiser that always outputs one tensor (broadcast to the batch)."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, x, k, cond):
        return self.out.expand_as(x)


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver"])
def test_a_sample_predicting_network_is_trained_on_and_sampled_as_the_clean_chunk(store, sampler):  # noqa: F811
    s = WindowSampler(Dataset(store), SPEC)
    policy = tiny_policy(s, prediction="sample")
    b = batch(s, [0, 5, 30])
    policy.net = _Fixed(torch.zeros(1, 8, 7))
    # the target is the normalized action chunk itself, not the noise drawn for it
    target = policy.normalizer.normalize("action", b["action"])
    assert torch.allclose(policy.loss(b), (target ** 2).mean())
    # a network sure of one chunk gets exactly that chunk, whatever the initial noise
    chunk = torch.linspace(-0.9, 0.9, 56).reshape(1, 8, 7)
    policy.net = _Fixed(chunk)
    out = policy.predict(b, sampler=sampler, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, policy.normalizer.unnormalize("action", chunk).expand(3, 8, 7), atol=1e-4)
    # the same network read as predicting noise gives something else
    policy.cfg.prediction = "epsilon"
    policy._samplers.clear()
    assert not torch.allclose(policy.predict(b, sampler=sampler, generator=torch.Generator().manual_seed(3)), out,
                              atol=1e-2)


def _fit(policy, b, precision: str, steps: int, lr: float = 1e-2) -> None:
    from robot_learning.nets.precision import autocast

    torch.manual_seed(1)  # the same noise and diffusion steps for both precisions
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    for _ in range(steps):
        with autocast("cpu", precision):
            loss = policy.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _denoising_loss(policy, b) -> float:
    """The loss over fixed draws of noise and diffusion steps (in float32)."""
    torch.manual_seed(123)
    with torch.no_grad():
        return float(np.mean([float(policy.loss(b)) for _ in range(10)]))


def test_bf16_autocast_trains_as_fp32_does_and_infers_the_same_chunk(store):  # noqa: F811
    """``--precision bf16`` (the default where the CPU has bf16 units): products and convolutions
    run in bfloat16, the weights and the loss stay float32. It must learn what float32 learns from
    the same start, and a bf16 inference must give float32's chunk up to bf16's rounding."""
    from robot_learning.nets.precision import bf16_is_fast
    from robot_learning.policies.diffusion import DiffusionRunner

    s = WindowSampler(Dataset(store), SPEC)
    b = batch(s, list(range(0, len(s), max(1, len(s) // 8)))[:8])
    torch.manual_seed(0)
    before = _denoising_loss(tiny_policy(s), b)
    after = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        policy = tiny_policy(s)
        _fit(policy, b, precision, 60)
        assert all(p.dtype == torch.float32 for p in policy.parameters())
        after[precision] = _denoising_loss(policy, b)
    print(f"denoising loss: {before:.3f} untrained, fp32 {after['fp32']:.3f}, bf16 {after['bf16']:.3f}")
    assert after["fp32"] < 0.9 * before and after["bf16"] < 0.9 * before
    assert after["bf16"] < 1.1 * after["fp32"]
    policy.eval()
    win = {k: v[0].numpy() for k, v in batch(s, [30]).items() if k.startswith(("obs/", "image/"))}
    chunks = {p: DiffusionRunner(policy, precision=p, noise_scale=0.0).chunks({k: v[None] for k, v in win.items()})
              for p in ("fp32", "bf16")}
    span = s.all_actions().max(0) - s.all_actions().min(0)
    moving = span > 1e-3  # dims the demonstrations never changed are sampled at their one value
    dev = np.abs(chunks["bf16"] - chunks["fp32"])[..., moving] / span[moving]
    print(f"bf16 chunk: at most {dev.max():.2%} of a dimension's range from fp32's")
    assert dev.max() < 0.05
    # the bf16 runner holds bf16 weights of its own (cast once, not at every call); the policy it
    # was given, a trainer's say, keeps float32 weights
    bf16 = DiffusionRunner(policy, precision="bf16")
    assert {p.dtype for p in bf16.policy.net.parameters()} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    # auto (what the policy server loads with) times both at warmup where bf16 is in hardware,
    # and keeps the faster: bf16 was 2.6x faster on one CPU with bf16 units and no faster on another
    auto = DiffusionRunner(policy, precision="auto")
    auto.warmup()
    if bf16_is_fast("cpu"):
        assert set(auto.timed_ms) == {"fp32", "bf16"} and auto.precision == min(auto.timed_ms, key=auto.timed_ms.get)
        kept = {p.dtype for p in auto.policy.net.parameters()}
        assert kept == {torch.bfloat16 if auto.precision == "bf16" else torch.float32}
    else:
        assert auto.precision == "fp32" and auto.policy is policy
    with pytest.raises(PolicyError, match="precision is one of auto, fp32, bf16, not 'fp8'"):
        DiffusionRunner(policy, precision="fp8")
    # auto: bf16 only for a network that reads images, and only on hardware with bf16 units
    from robot_learning.nets.precision import bf16_is_fast, resolve

    assert resolve("auto", "cpu", images=False) == "fp32"
    assert resolve("auto", "cpu", images=True) == ("bf16" if bf16_is_fast("cpu") else "fp32")


def test_the_checkpoint_check_knows_every_encoder_the_network_can_build():
    from robot_learning.nets.vision import ENCODERS
    from robot_learning.policies.checkpoint import IMAGE_ENCODERS

    assert set(IMAGE_ENCODERS) == set(ENCODERS)


@pytest.mark.parametrize("encoder, widest, pooled", [("resnet18", 512, True), ("tiny", 128, False)])
def test_other_encoder_sizes_round_trip_and_an_unknown_encoder_is_refused(store, tmp_path, encoder, widest,  # noqa: F811
                                                                          pooled):
    s = WindowSampler(Dataset(store), SPEC)
    policy = tiny_policy(s, image_encoder=encoder).eval()
    widths = [m.out_channels for m in policy.encoders["front_color"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(widths) == widest
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in policy.encoders.modules()) == pooled
    path = save_checkpoint(policy, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(path)
    b = batch(s, [0, 30])
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.allclose(policy.predict(b, generator=g()), loaded.predict(b, generator=g()))
    cfg = json.loads((path / "config.json").read_text())
    cfg["config"]["image_encoder"] = "vgg16"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PolicyError, match="image_encoder must be one of tiny, small, resnet18, not 'vgg16'"):
        load_checkpoint(path)


def test_cameras_can_share_one_encoder(tmp_path):
    """``shared_image_encoder`` (LeRobot's default): one encoder for both cameras. Each camera's
    features must be what that encoder makes of its frames, in the order the cameras are
    configured, and it must learn from both; checkpoints keep it; cameras of two shapes are
    refused with a sentence, by the policy and by the checkpoint check."""
    torch.manual_seed(0)
    cams = {"front_color": [32, 32, 3], "wrist_color": [32, 32, 3]}
    stats = {"state": {"min": [-1.0] * 3, "max": [1.0] * 3}, "action": {"min": [-1.0] * 2, "max": [1.0] * 2}}
    cfg = DiffusionConfig(obs_dims={"state": 3}, action_dim=2, image_shapes=cams, pred_horizon=8, down_dims=[16, 32],
                          image_feature_dim=8, image_encoder="tiny", train_timesteps=20, inference_steps=4,
                          shared_image_encoder=True)
    policy = DiffusionPolicy(cfg, Normalizer(stats)).eval()
    assert list(policy.encoders) == ["shared"]
    b = {"obs/state": torch.rand(3, 2, 3), **{f"image/{c}": torch.randint(0, 255, (3, 2, 32, 32, 3), dtype=torch.uint8)
                                              for c in cams}}
    with torch.no_grad():
        # the encoder on each camera's centre crop (28 of 32 pixels), by hand
        by_hand = [policy.encoders["shared"](b[f"image/{c}"].reshape(6, 32, 32, 3).permute(0, 3, 1, 2)
                                             [:, :, 2:30, 2:30].float() / 255).reshape(3, 2, -1) for c in cams]
        want = torch.cat([policy.normalizer.normalize("state", b["obs/state"]), *by_hand], -1).flatten(1)
        assert torch.allclose(policy.encode(b, train=False), want, atol=1e-6)
        assert not torch.allclose(*by_hand)
    policy.train()
    policy.loss({**b, "action": torch.rand(3, 8, 2)}).backward()
    assert all(p.grad is not None for p in policy.encoders.parameters())
    path = save_checkpoint(policy.eval(), tmp_path / "ckpt")
    loaded, _ = load_checkpoint(path)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(policy.predict(b, generator=g()), loaded.predict(b, generator=g()))
    cams["wrist_color"] = [24, 24, 3]
    with pytest.raises(ValueError, match="needs the cameras at one shape"):
        DiffusionPolicy(cfg, Normalizer(stats))
    meta = json.loads((path / "config.json").read_text())
    meta["config"]["image_shapes"] = cams
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="shared_image_encoder is true, but"):
        load_checkpoint(path)


@pytest.mark.parametrize("precision,batch,length,tol", [("bf16", 3, 4, 0.02), ("fp32", 1, 4, 1e-5),
                                                        ("bf16", 2, 2, 0.02), ("fp32", 1, 9, 1e-5)])
def test_temporal_convs_as_matrix_products_compute_what_the_direct_kernel_computes(precision, batch, length, tol):
    """On a CPU the U-Net's 1-D convolutions run as matrix products where that is faster: wide
    layers in bf16 (training: one product per tap), and any layer from 128 channels at the batch
    of one inference (one product over the windows). The output and every gradient must be the
    convolution's (to the precision's rounding), for sequences shorter than the kernel too, and a
    float32 training batch must keep the direct kernel."""
    from torch.nn import functional as F

    from robot_learning.nets.unet1d import TemporalConv

    torch.manual_seed(0)
    conv = TemporalConv(512, 256, 5)
    x = torch.randn(batch, 512, length, requires_grad=True)
    grad_out = torch.randn(batch, 256, length)
    results = []
    for fn in (conv, lambda t: F.conv1d(t, conv.weight, conv.bias, padding=2)):
        x.grad, conv.weight.grad, conv.bias.grad = None, None, None
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            y = fn(x)
        y.float().backward(grad_out)
        results.append([y.float(), x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()])
    for name, ours, direct in zip(("output", "input grad", "weight grad", "bias grad"), *results):
        scale = direct.abs().max()
        assert (ours - direct).abs().max() <= tol * scale, name
    # the kernel's orientation matters: the flipped kernel's output differs by far more than rounding
    flipped = F.conv1d(x, conv.weight.flip(-1), conv.bias, padding=2)
    assert (results[0][0] - flipped).abs().max() > 0.2 * results[1][0].abs().max()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):   # inference
        direct = F.conv1d(x, conv.weight, conv.bias, padding=2).float()
        assert (conv(x).float() - direct).abs().max() <= tol * direct.abs().max()
    with torch.no_grad():   # a float32 training batch: the direct kernel, bit for bit
        x8 = torch.randn(8, 512, 4)
        assert torch.equal(conv(x8), F.conv1d(x8, conv.weight, conv.bias, padding=2))


def test_temporal_conv_weights_stay_tap_major_and_train_as_plain_ones(tmp_path):
    """The U-Net's 1-D convolutions keep their weights tap-major in memory (each tap's
    [C_out, C] a matrix the products read as it lies) under the usual shape and checkpoint key.
    The fused AdamW must move such a weight exactly as the same weight in the plain layout, and
    the layout must survive a checkpoint round trip and the bf16 inference copy: without it each
    product would read a copied weight."""
    from torch.nn import functional as F

    from robot_learning.nets.unet1d import TemporalConv
    from robot_learning.policies.diffusion import _bf16_copy
    from robot_learning.train.diffusion import optimizers

    torch.manual_seed(0)
    tap_major = lambda w: w.stride() == (w.shape[1] * w.shape[2], 1, w.shape[1])  # noqa: E731
    convs = [TemporalConv(8, 6, 5) for _ in range(2)]
    convs[1].load_state_dict(convs[0].state_dict())
    convs[1].weight = torch.nn.Parameter(convs[1].weight.detach().contiguous())
    assert tap_major(convs[0].weight) and convs[1].weight.is_contiguous()
    opts = [optimizers(c, 1e-2, 1e-2, 0.99)[0] for c in convs]
    x, target = torch.randn(4, 8, 9), torch.randn(4, 6, 9)
    for _ in range(3):
        for conv, opt in zip(convs, opts):
            opt.zero_grad()
            F.mse_loss(conv(x), target).backward()
            opt.step()
    assert torch.allclose(convs[0].weight, convs[1].weight, atol=1e-7) and tap_major(convs[0].weight)
    assert (convs[0].weight - TemporalConv(8, 6, 5).weight).abs().max() > 0.01   # it did train
    stats = {"state": {"min": [-1.0] * 3, "max": [1.0] * 3}, "action": {"min": [-1.0] * 2, "max": [1.0] * 2}}
    policy = DiffusionPolicy(DiffusionConfig(obs_dims={"state": 3}, action_dim=2, pred_horizon=8, down_dims=[16, 32]),
                             Normalizer(stats))
    loaded, _ = load_checkpoint(save_checkpoint(policy, tmp_path / "ckpt"))
    for net in (policy, loaded, _bf16_copy(loaded)):
        weights = [m.weight for m in net.modules() if isinstance(m, TemporalConv)]
        assert weights and all(tap_major(w) for w in weights)


def test_training_crops_are_windows_of_each_frame_at_random_places():
    """The random-crop augmentation: each frame's crop is a window of that frame (its own pixels,
    all channels), the windows' places differ between frames, a crop leaves channels-last in
    memory (what the encoders' convolutions take), and outside training the crop is central."""
    from robot_learning.nets.vision import crop

    torch.manual_seed(0)
    frames = torch.randint(0, 256, (32, 12, 10, 3), dtype=torch.uint8).permute(0, 3, 1, 2)   # [B, C, H, W], HWC
    out = crop(frames, (8, 7), train=True)
    assert out.shape == (32, 3, 8, 7) and out.is_contiguous(memory_format=torch.channels_last)
    places = set()
    for i in range(32):
        found = [(y, x) for y in range(5) for x in range(4) if torch.equal(out[i], frames[i, :, y:y + 8, x:x + 7])]
        assert found, f"crop {i} is not a window of its frame"
        places.add(found[0])
    assert len(places) > 5
    assert torch.equal(crop(frames, (8, 7), train=False), frames[:, :, 2:10, 1:8])


@pytest.mark.parametrize("c_in,c_out,kernel,stride,hw", [(64, 128, 3, 2, 21), (64, 128, 1, 2, 21),
                                                         (256, 256, 3, 1, 6), (512, 512, 3, 1, 3),
                                                         (256, 512, 3, 1, 4)])
def test_image_convs_with_weight_gradients_as_products_train_as_the_kernel_does(c_in, c_out, kernel, stride, hw):
    """ResNet18's strided and wide encoder layers take their weight gradient in bf16 training as one
    matrix product over the input's windows, or on maps so small that much of each window is
    padding (3x3, 4x4) as one product per tap. Output, input gradient and weight gradient must be
    the convolution's, in the weight's own orientation (a transposed or flipped kernel gradient
    would differ by far more than rounding), and inference must keep the plain kernel."""
    from torch.nn import functional as F

    from robot_learning.nets.vision import ImageConv

    torch.manual_seed(0)
    conv = ImageConv(c_in, c_out, kernel, stride, kernel // 2, bias=False).to(memory_format=torch.channels_last)
    assert conv.product_weight_grad()
    x = torch.randn(4, c_in, hw, hw).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad_out = torch.randn(4, c_out, (hw - 1) // stride + 1, (hw - 1) // stride + 1)
    results = []
    for fn in (conv, lambda t: F.conv2d(t, conv.weight, None, stride, kernel // 2)):
        x.grad, conv.weight.grad = None, None
        with torch.autocast("cpu", torch.bfloat16):
            y = fn(x)
        y.float().backward(grad_out)
        results.append([y.float(), x.grad.clone(), conv.weight.grad.clone()])
    for name, ours, direct in zip(("output", "input grad", "weight grad"), *results):
        assert ours.shape == direct.shape, name
        assert (ours - direct).abs().max() <= 0.02 * direct.abs().max(), name
    w_grad = results[1][2]
    assert (results[0][2] - w_grad.flip(-1, -2)).abs().max() > 0.2 * w_grad.abs().max() or kernel == 1
    if c_in == c_out:
        assert (results[0][2] - w_grad.transpose(0, 1)).abs().max() > 0.2 * w_grad.abs().max()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):   # inference: the kernel itself
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, None, stride, kernel // 2))


def test_the_group_norm_kernel_builds_here():
    """``make setup`` installs gcc, so the encoders' GroupNorm kernel must build: without it image
    training silently falls back to torch's slower kernels."""
    from robot_learning.nets import group_norm_kernel

    assert group_norm_kernel.available()


def test_a_residual_of_another_shape_is_refused_before_the_kernel_reads_it():
    from robot_learning.nets.group_norm_kernel import group_norm_cl

    x = torch.randn(2, 16, 5, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="residual"):
        group_norm_cl(x, 8, torch.ones(16), torch.zeros(16), 1e-5, "relu", torch.randn(2, 16, 4, 5))


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("channels,relu,residual", [(16, False, False), (64, False, False), (64, True, False),
                                                    (64, True, True), (128, False, True)])
def test_group_norm_of_channels_last_bf16_maps_is_group_norm(channels, relu, residual, kernel, monkeypatch):
    """The encoders normalize bf16 channels-last maps with their own kernel (torch's is several
    times slower there), fusing the ReLU and a block's residual into it; without the kernel they
    go through the plain layout. Either way the output, the gradients of the input, the residual
    and the affine parameters must be ``relu(group_norm(x) + residual)``'s, and the output must
    come back channels-last bf16 for the next convolution."""
    from torch import nn

    from robot_learning.nets import group_norm_kernel
    from robot_learning.nets.vision import ImageGroupNorm

    monkeypatch.setenv("ROBOT_LEARNING_GROUPNORM_KERNEL", "1" if kernel else "0")
    group_norm_kernel._library.cache_clear()
    torch.manual_seed(0)
    ours, ref = ImageGroupNorm(8, channels, relu=relu), nn.GroupNorm(8, channels)
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.copy_(torch.randn_like(p)), q.copy_(p)
    spread = torch.linspace(0.5, 4.0, channels)[None, :, None, None]   # channels unlike each other
    x0 = (torch.randn(6, channels, 9, 7) * spread + spread).contiguous(memory_format=torch.channels_last)
    r0 = torch.randn(6, channels, 9, 7).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(6, channels, 9, 7).bfloat16()

    def reference(x, r):   # in float32 from the same bf16 inputs, so that no ReLU mask flips on rounding
        x = x.float()
        y = ref(x) + r.float() if r is not None else ref(x)
        return torch.relu(y) if relu else y

    results = []
    for norm, fn in ((ours, lambda x, r: ours(x, residual=r)), (ref, reference)):
        x = x0.clone().requires_grad_()
        r = r0.clone().requires_grad_() if residual else None
        y = fn(x.bfloat16(), None if r is None else r.bfloat16())
        y.backward(grad_out.to(y.dtype))
        results.append([y, x.grad, r.grad if residual else torch.ones(1), norm.weight.grad, norm.bias.grad])
    group_norm_kernel._library.cache_clear()
    assert results[0][0].is_contiguous(memory_format=torch.channels_last) and results[0][0].dtype == torch.bfloat16
    with torch.no_grad():   # where bf16's rounding may put a value on either side of the ReLU's kink
        pre = ref(x0.bfloat16().float()) + (r0.bfloat16().float() if residual else 0)
        kink = (pre.abs() < 0.02 * pre.abs().max()) if relu else torch.zeros_like(pre, dtype=torch.bool)
    for name, a, b in zip(("output", "input grad", "residual grad", "weight grad", "bias grad"), *results):
        a, b = a.float(), b.float()
        if a.shape == kink.shape and name != "output":
            a, b = a[~kink], b[~kink]
        # torch's path rounds to bf16 before the residual's sum, so a few more values land on the
        # other side of the kink and move the parameters' sums by a few percent
        tol = 0.06 if relu and residual and not kernel and name.endswith("grad") else 0.02
        assert (a - b).abs().max() <= tol * b.abs().max(), name
    if relu:
        assert (results[0][0] == 0).float().mean() > 0.2   # the ReLU clamped a good part of it
    # a different grouping (the groups' statistics) differs by far more than rounding
    other = nn.functional.group_norm(x0.bfloat16(), 4, ref.weight, ref.bias)
    assert (other.float() - ref(x0.bfloat16()).float()).abs().max() > 0.05 * ref(x0.bfloat16()).float().abs().max()


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("layout", ["sequence-major", "channel-major"])
def test_the_unets_group_norm_and_mish_in_bf16_are_torchs(layout, kernel, monkeypatch):
    """The U-Net's GroupNorm and Mish run as one pass of the C kernel over bf16 sequences, in
    either memory layout (a [B, C, L] tensor stored as [B, L, C], as the matrix-product
    convolutions leave it, or plain). Output and every gradient must be float32 torch's
    ``mish(group_norm(x))`` from the same inputs, to bf16's rounding, including where Mish
    saturates (large inputs) and where it bends (around -1)."""
    from torch import nn

    from robot_learning.nets import group_norm_kernel
    from robot_learning.nets.unet1d import GroupNormMish

    monkeypatch.setenv("ROBOT_LEARNING_GROUPNORM_KERNEL", "1" if kernel else "0")
    group_norm_kernel._library.cache_clear()
    torch.manual_seed(0)
    ours, ref = GroupNormMish(8, 64), nn.GroupNorm(8, 64)
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.copy_(torch.randn_like(p) * 6), q.copy_(p)   # wide affine outputs: both tails of Mish
    spread = torch.linspace(0.5, 4.0, 64)[None, :, None]
    x0 = torch.randn(5, 64, 8) * spread + spread
    if layout == "sequence-major":
        x0 = x0.transpose(1, 2).contiguous().transpose(1, 2)
    grad_out = torch.randn(5, 64, 8)
    results = []
    for fn in (ours, lambda x: nn.functional.mish(ref(x.float()))):
        for m in (ours, ref):
            m.zero_grad()
        x = x0.bfloat16().detach().requires_grad_()
        y = fn(x)
        y.float().backward(grad_out)
        results.append([y.float(), x.grad.float(), (ours if fn is ours else ref).weight.grad,
                        (ours if fn is ours else ref).bias.grad])
    group_norm_kernel._library.cache_clear()
    pre = ref(x0.bfloat16().float())
    assert pre.max() > 10 and pre.min() < -5   # both tails were exercised
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), *results):
        assert (a - b).abs().max() <= 0.02 * b.abs().max(), name
    # ReLU in Mish's place differs by far more than rounding
    assert (torch.relu(pre) - results[0][0]).abs().max() > 0.1


def test_the_group_norm_kernel_refuses_what_it_cannot_fuse():
    from robot_learning.nets.group_norm_kernel import group_norm_cl

    x = torch.randn(2, 16, 5, 1).bfloat16().contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="residual before a ReLU only"):
        group_norm_cl(x, 8, torch.ones(16), torch.zeros(16), 1e-5, "mish", x.clone())
    with pytest.raises(ValueError, match="must be one of"):
        group_norm_cl(x, 8, torch.ones(16), torch.zeros(16), 1e-5, "gelu")


@pytest.mark.parametrize("channels_last", [True, False])
def test_spatial_softmax_gives_each_channels_expected_row_then_column(channels_last):
    """The keypoints the image features are made of: each channel's softmax-weighted mean row (in
    [-1, 1], top to bottom) for the first C outputs, then its mean column; a sharp peak lands on
    its pixel. Checkpoints' projections were trained on that order."""
    from robot_learning.nets.vision import SpatialSoftmax

    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 7)
    x[1, 2, 4, 1] = 60.0   # a peak at the bottom row, second column
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = SpatialSoftmax()(x)
    p = torch.softmax(x.flatten(2), -1).view(4, 6, 5, 7)
    rows = (p.sum(3) * torch.linspace(-1, 1, 5)).sum(-1)
    cols = (p.sum(2) * torch.linspace(-1, 1, 7)).sum(-1)
    assert out.shape == (4, 12) and out.dtype == torch.float32
    assert torch.allclose(out, torch.cat([rows, cols], -1), atol=1e-6)
    assert torch.allclose(out[1, [2, 8]], torch.tensor([1.0, -1 + 2 / 6]), atol=1e-5)


def test_the_pooling_and_windows_kernel_builds_here():
    """Like the GroupNorm kernel: ``make setup`` installs gcc, so it must build."""
    from robot_learning.nets import map_kernels

    assert map_kernels.available()


@pytest.mark.parametrize("window", [(3, 2, 1), (2, 2, 0), (3, 1, 1)])
def test_max_pooling_of_channels_last_bf16_maps_is_torchs(window):
    """The stem's pooling (3, 2, 1) and two other windows: the same maxima as torch's, and the
    gradient reaches the same elements, ties included (ReLU's zeros are the common tie, and a
    NaN must win its windows as in torch), summed where windows overlap."""
    from robot_learning.nets.vision import ImageMaxPool

    torch.manual_seed(0)
    x0 = torch.relu(torch.randn(5, 24, 13, 11)).bfloat16().contiguous(memory_format=torch.channels_last)
    x0[1, 3, 4, 4] = float("nan")
    grad_out = None
    results = []
    for pool in (ImageMaxPool(*window), lambda x: torch.nn.functional.max_pool2d(x.float(), *window)):
        x = x0.clone().requires_grad_()
        y = pool(x)
        if grad_out is None:
            grad_out = torch.randn(y.shape).bfloat16()
        y.backward(grad_out.to(y.dtype))
        results.append((y, x.grad))
    (y, dx), (y_ref, dx_ref) = results
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert dx.dtype == torch.bfloat16 and dx.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y.float().nan_to_num(-1.0), y_ref.nan_to_num(-1.0))
    assert y.float().isnan().sum() > 0   # the NaN won its windows
    # float32's sum of the same bf16 gradients, rounded once: ours to the last bit
    assert torch.equal(dx, dx_ref.bfloat16()), (dx.float() - dx_ref).abs().max()
    assert (dx_ref != 0).float().mean() > 0.05


@pytest.mark.parametrize("kernel,stride,pad,hw", [(3, 1, 1, 6), (3, 2, 1, 11), (1, 2, 0, 7), (7, 2, 3, 9)])
def test_the_windows_kernel_gives_the_rows_torch_stacks(kernel, stride, pad, hw, monkeypatch):
    """The weight gradients' windows from the C kernel, element for element those of torch's
    padded and stacked slices: the row order the weight's layout needs, zeros over the edges."""
    from robot_learning.nets import map_kernels
    from robot_learning.nets.vision import _windows

    x = torch.randn(3, 24, hw, hw + 1).bfloat16().contiguous(memory_format=torch.channels_last)
    ho, wo = (hw + 2 * pad - kernel) // stride + 1, (hw + 1 + 2 * pad - kernel) // stride + 1
    ours = _windows(x, kernel, stride, pad, ho, wo)
    monkeypatch.setattr(map_kernels, "available", lambda: False)
    torchs = _windows(x, kernel, stride, pad, ho, wo)
    assert ours.shape == torchs.shape == (3 * ho * wo, kernel * kernel * 24)
    assert torch.equal(ours, torchs)
    assert pad == 0 or (ours == 0).any()


def test_the_max_pool_kernel_refuses_what_it_cannot_take():
    from robot_learning.nets.map_kernels import max_pool_cl

    x = torch.randn(2, 8, 6, 6).bfloat16().contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"padding must lie in \[0, 1\]"):
        max_pool_cl(x, 3, 2, 2)
    with pytest.raises(ValueError, match="windows up to 16x16"):
        max_pool_cl(x, 17, 1, 0)


def test_an_action_dimension_constant_in_the_data_comes_back_exactly():
    """A gripper held closed in every demonstration: the sampled chunk holds it at exactly that
    value, so the server's bounds (the data's range) never refuse a chunk for the network's noise there."""
    from robot_learning.policies.diffusion import DiffusionRunner

    torch.manual_seed(0)
    actions = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    actions[:, 2] = 1.0
    norm = Normalizer()
    norm.fit("state", actions)
    norm.fit("action", actions)
    cfg = DiffusionConfig(obs_dims={"state": 3}, action_dim=3, obs_horizon=1, pred_horizon=8, action_horizon=4,
                          down_dims=[16, 32], train_timesteps=20, inference_steps=4)
    runner = DiffusionRunner(DiffusionPolicy(cfg, norm).eval(), "cpu", precision="fp32")
    chunk = runner.act({"obs/state": actions[:1]})
    assert chunk.shape == (4, 3) and np.all(chunk[:, 2] == 1.0)
    assert np.all(chunk >= runner.spec.action_low) and np.all(chunk <= runner.spec.action_high)
