"""``--only image``: where an image policy's training step spends its time, and what bfloat16
and the channels-last layout buy, for training and for inference, measured side by side in one
run (CPUs differ between machines; ratios taken in one run hold, absolute times do not).

The setting is issue 15's: two 96x96 cameras (cropped to 86x86), two observation frames,
proprioception, batch 64, the trainer's default U-Net (64/128/256), two torch threads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

CAMERAS = ["front_color", "wrist_color"]
OBS = ["joint_states.position"]
BATCH = 64


def _sampler(workdir: Path):
    from benchmarks.ingest import offline_write
    from robot_learning.data.sampler import WindowSampler, WindowSpec
    from robot_learning.data.store import Dataset

    if not (workdir / "offline.zarr").exists():
        offline_write(60.0, workdir)
    return WindowSampler(Dataset(workdir / "offline.zarr"), WindowSpec(2, 16, tuple(OBS), tuple(CAMERAS), (96, 96)))


def _policy(sampler):
    import torch

    from robot_learning.policies.diffusion import DiffusionConfig, DiffusionPolicy
    from robot_learning.policies.normalizer import Normalizer

    torch.manual_seed(0)
    sample = sampler[0]
    norm = Normalizer()
    norm.fit(OBS[0], np.concatenate([ep["obs"][OBS[0]] for ep in sampler.episodes]))
    norm.fit("action", np.concatenate([ep["action"] for ep in sampler.episodes]))
    cfg = DiffusionConfig(obs_dims={OBS[0]: int(sample[f"obs/{OBS[0]}"].shape[-1])},
                          action_dim=int(sample["action"].shape[-1]),
                          image_shapes={c: [96, 96, 3] for c in CAMERAS}, down_dims=[64, 128, 256])
    return DiffusionPolicy(cfg, norm)


def step_breakdown(sampler, precision: str, steps: int) -> dict[str, float]:
    """Milliseconds per training step in each phase (medians over ``steps`` after a warm-up)."""
    import torch

    from robot_learning.nets.precision import autocast
    from robot_learning.train.diffusion import _collate, _to, clipped_step, optimizers

    policy = _policy(sampler)
    opt, ema = optimizers(policy, 1e-4, 1e-6, 0.995)   # the trainer's
    rng = np.random.default_rng(0)
    phases: dict[str, list[float]] = {k: [] for k in ("batch", "forward", "backward", "optimizer + EMA",
                                                      "encoders (forward + backward)")}
    for i in range(steps + 2):
        t0 = time.perf_counter()
        batch = _to(_collate(sampler, rng.integers(0, len(sampler), BATCH)), "cpu")
        t1 = time.perf_counter()
        with autocast("cpu", precision):
            loss = policy.loss(batch)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        clipped_step(opt, policy.parameters(), 1.0)
        ema.update_parameters(policy)
        t4 = time.perf_counter()
        # the encoders alone on the same frames, as encode() feeds them
        t5 = time.perf_counter()
        with autocast("cpu", precision):
            feats = [policy.image_features(batch, c, train=True) for c in CAMERAS]
        torch.stack(feats).float().sum().backward()
        t6 = time.perf_counter()
        if i >= 2:
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5)):
                phases[k].append(v * 1e3)
    return {k: float(np.median(v)) for k, v in phases.items()}


def train_samples_per_s(workdir: Path, precision: str, steps: int, tag: str) -> float:
    """Samples/s of ``robot-learning train diffusion`` itself (its own meter, the last window)."""
    from robot_learning.train.diffusion import TrainConfig, train

    run = train(TrainConfig(dataset=str(workdir / "offline.zarr"), out=str(workdir / f"train_{tag}"), obs=OBS,
                            images=CAMERAS, batch_size=BATCH, steps=steps, eval_every=10_000, eval_episodes=0,
                            only_success=False, warmup_steps=1, threads=2, precision=precision), progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return float([r["samples_per_s"] for r in rows if "samples_per_s" in r][-1])


def inference(sampler, precision: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Latencies (ms) of one act() on a two-camera window, and the chunk from fixed noise."""
    from robot_learning.policies.diffusion import DiffusionRunner

    runner = DiffusionRunner(_policy(sampler).eval(), "cpu", precision=precision, noise_scale=0.0)
    win = {k: v for k, v in sampler[len(sampler) // 2].items() if k.startswith(("obs/", "image/"))}
    runner.act(win)
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        runner.act(win)
        ms.append((time.perf_counter() - t0) * 1e3)
    return np.array(ms), runner.chunks({k: v[None] for k, v in win.items()})[0]


def section(quick: bool, workdir: Path) -> list[str]:
    import torch

    from robot_learning.nets.precision import bf16_is_fast

    torch.set_num_threads(2)
    sampler = _sampler(workdir)
    fast = bf16_is_fast("cpu")
    steps, n, train_steps = (3, 5, 10) if quick else (10, 30, 60)
    print("bench: image training, where a step's time goes ...", flush=True)
    parts = {p: step_breakdown(sampler, p, steps) for p in ("fp32", "bf16")}
    print("bench: image training, samples/s of train diffusion ...", flush=True)
    sps: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(2):  # interleaved, so drift of the machine falls on both
        for p in sps:
            sps[p].append(train_samples_per_s(workdir, p, train_steps, f"{p}{r}"))
    print("bench: image inference ...", flush=True)
    lat = {p: inference(sampler, p, n) for p in ("fp32", "bf16")}
    dev = np.abs(lat["bf16"][1] - lat["fp32"][1])
    lo, hi = sampler.episodes[0]["action"].min(0), sampler.episodes[0]["action"].max(0)
    rel = float(np.max(dev / np.maximum(hi - lo, 1e-6)))
    rows = ["## Image policy: training step and inference by precision\n",
            f"Two 96x96 cameras (own encoder each, cropped to 86x86), two observation frames, joint positions, "
            f"U-Net 64/128/256, batch {BATCH}, two torch threads; this CPU has bf16 units: "
            f"{'yes' if fast else 'no (bf16 is emulated, slower)'}. `--precision auto` (the default) trains in "
            f"{'bf16' if fast else 'fp32'} here.\n",
            "Where one training step's time goes (ms, medians of "
            f"{steps} steps; the encoders' row is a separate pass over the same frames, part of forward and "
            "backward):\n",
            "| phase | fp32 | bf16 autocast |", "|---|---|---|"]
    rows += [f"| {k} | {parts['fp32'][k]:.0f} | {parts['bf16'][k]:.0f} |" for k in parts["fp32"]]
    f, b = np.mean(sps["fp32"]), np.mean(sps["bf16"])
    rows += ["", f"`robot-learning train diffusion` ({train_steps} steps a run, two runs each, interleaved): "
             f"fp32 {f:.1f} samples/s, bf16 {b:.1f} samples/s: **{b / f:.2f}x**.\n",
             f"Inference, one `act()` ({n} calls, DDIM 10): fp32 p50 {np.percentile(lat['fp32'][0], 50):.0f} ms / "
             f"p99 {np.percentile(lat['fp32'][0], 99):.0f} ms; bf16 p50 {np.percentile(lat['bf16'][0], 50):.0f} ms / "
             f"p99 {np.percentile(lat['bf16'][0], 99):.0f} ms. The bf16 chunk differs from the fp32 one (same "
             f"weights, same noise) by at most {rel:.2%} of each action dimension's range.\n"]
    return rows
