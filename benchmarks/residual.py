"""RL on top of a frozen diffusion policy (``--only residual``): what a residual costs the
policy server's control tick, and what stepping envs together with one batched base
inference gains over one env at a time (the residual's PPO and DSRL's data collection)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

KEYS = {"ee_pose.data": 7, "gripper_state.position": 2, "cube_pose.data": 7, "target_pose.data": 7}


def _base(tmp: Path) -> Path:
    from robot_learning.policies.untrained import save_untrained

    return save_untrained(tmp / "bench_base", obs_dims=KEYS)   # the demo's size: U-Net 64-128-256, DDIM 10


def tick_cost(tmp: Path, ticks: int) -> dict[str, dict[str, float]]:
    """Per-tick time of the server's control tick with the base alone and with a residual
    (256x256, the default), and of the correction alone, with fresh observations each tick."""
    import torch

    from robot_learning.policies.registry import load_policy
    from robot_learning.policies.residual import ResidualConfig, ResidualPolicy
    from robot_learning.runtime.server import PolicyServerCore, ServerConfig

    base = _base(tmp)
    model = ResidualPolicy(ResidualConfig(list(KEYS), sum(KEYS.values()), 7, [0.004] * 6 + [0.05],
                                          [-0.04] * 6 + [0.0], [0.04] * 6 + [1.0]))
    with torch.no_grad():
        for p in model.actor.parameters():
            p.normal_(0, 0.1)
    res = model.save(tmp / "bench_residual", base)
    rng = np.random.default_rng(0)
    out = {}
    for name, path in (("base alone", base), ("base + residual", res)):
        clock = {"t": 0.0}
        core = PolicyServerCore(load_policy(path), ServerConfig(control_hz=100.0),
                                lambda clock=clock: clock["t"], log=lambda m: None)
        core.resume()

        def feed(t: float, core=core) -> None:
            for key, d in KEYS.items():
                stream, array = key.split(".")
                core.add_sample(stream, t, {array: rng.uniform(-1, 1, d)})

        for k in range(3):
            feed(0.1 * k)
        clock["t"] = 0.2
        core.infer_once()
        times = []
        for i in range(ticks):
            clock["t"] = 0.2 + 0.01 * (i % 50)   # within the chunk's span, always a due action
            feed(clock["t"])
            t0 = time.perf_counter()
            a = core.tick(clock["t"])
            times.append(time.perf_counter() - t0)
            assert a is not None
        out[name] = {"p50": np.percentile(times, 50) * 1e3, "p99": np.percentile(times, 99) * 1e3,
                     "max": np.max(times) * 1e3}
        if name == "base + residual":
            policy = core.policy
            newest = {k: rng.uniform(-1, 1, d) for k, d in KEYS.items()}
            a = np.zeros(7)
            ts = []
            for _ in range(ticks):
                t0 = time.perf_counter()
                policy.correct(a, newest)
                ts.append(time.perf_counter() - t0)
            out["correction alone"] = {"p50": np.percentile(ts, 50) * 1e3, "p99": np.percentile(ts, 99) * 1e3,
                                       "max": np.max(ts) * 1e3}
    return out


def env_throughput(tmp: Path, n: int, seconds: float) -> float:
    """Env steps per second (all envs together) of ``n`` envs driven by the base, batched."""
    from robot_learning.policies.registry import load_policy
    from robot_learning.rl.base_envs import BaseDrivenEnvs

    base = load_policy(_base(tmp))
    envs = BaseDrivenEnvs(base, "pick_place", n, list(KEYS))
    envs.reset(0)
    for _ in range(base.horizon):  # past the first inference's set-up
        envs.step(envs.base_actions())
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        envs.step(envs.base_actions())
        steps += n
    rate = steps / (time.perf_counter() - t0)
    envs.close()
    return rate


def section(quick: bool, tmp: Path) -> list[str]:
    import torch

    torch.set_num_threads(1)   # batch-1 inference, as rollouts and the server run it
    ticks = 2000 if quick else 20000
    cost = tick_cost(tmp, ticks)
    lines = ["## RL on a frozen diffusion policy: the residual's tick, batched envs\n",
             f"The policy server's control tick ({ticks} ticks at 100 Hz of simulated time, fresh observations "
             "each tick, an action due every tick) serving an untrained diffusion policy of the demo's size, alone "
             "and with a residual (256x256 MLP, the default) correcting every tick in numpy. Goal: the residual "
             "under 1 ms p99.\n",
             "| | p50 ms | p99 ms | max ms |", "|---|---|---|---|"]
    for name, c in cost.items():
        lines.append(f"| {name} | {c['p50']:.3f} | {c['p99']:.3f} | {c['max']:.3f} |")
        print(f"bench residual: {name}: p99 {c['p99']:.3f} ms", flush=True)
    seconds = 4.0 if quick else 15.0
    lines += ["", "Workcell envs driven by the same base (10 Hz steps, a chunk of 8 executed per inference, "
              "DDIM 10 steps), stepped together with the envs that need a chunk inferred in one batch, against "
              "one env at a time. Env steps per second, all envs together (one torch thread).\n",
              "| envs | env steps/s | vs one env |", "|---|---|---|"]
    one = None
    for n in (1, 4, 8, 16):
        rate = env_throughput(tmp, n, seconds)
        one = one or rate
        lines.append(f"| {n} | {rate:.0f} | {rate / one:.2f}x |")
        print(f"bench residual: {n} envs: {rate:.0f} steps/s", flush=True)
    return lines
