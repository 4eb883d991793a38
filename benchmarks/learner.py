"""The SAC learner's speed for ``make bench``: updates per second (and transitions consumed per
second) by batch size, update-to-data ratio and critic-ensemble size, state observations as on
the peg-in-hole task (23 numbers, 7-D action), one process on the CPU (and CUDA when present)."""

from __future__ import annotations

import time

import numpy as np


def updates_per_second(batch: int, utd: int, n_critics: int, device: str, seconds: float) -> float:
    import torch

    from robot_learning.policies.sac import SAC, SACConfig

    agent = SAC(SACConfig(obs_dim=23, action_low=[-1.0] * 7, action_high=[1.0] * 7, n_critics=n_critics, utd=utd),
                device=device)
    rng = np.random.default_rng(0)
    n = batch * utd
    data = {"obs/state": rng.normal(size=(n, 23)), "next_obs/state": rng.normal(size=(n, 23)),
            "action": rng.uniform(-1, 1, (n, 7)), "reward": rng.uniform(0, 1, n),
            "terminal": rng.uniform(size=n) < 0.01, "grip_before": np.zeros(n)}
    batch_t = {k: torch.as_tensor(v, dtype=torch.bool if v.dtype == bool else torch.float32, device=device)
               for k, v in data.items()}
    agent.update(batch_t)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        agent.update(batch_t)
        count += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return count / (time.perf_counter() - t0)


def section(quick: bool) -> list[str]:
    import torch

    seconds = 2.0 if quick else 6.0
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines = ["## SAC learner updates (one process)\n",
             "Each update: `utd` critic steps on `batch` transitions each, then one actor and temperature "
             "step (state observations of 23 numbers, 7-D action, 256x256 networks). Agent updates per "
             f"second, and transitions drawn per second in brackets; torch threads: {torch.get_num_threads()}.\n",
             "| device | critics | batch | utd 1 | utd 2 | utd 4 |", "|---|---|---|---|---|---|"]
    for device in devices:
        for n_critics in (2, 10):
            for batch in (64, 256):
                cells = []
                for utd in (1, 2, 4):
                    ups = updates_per_second(batch, utd, n_critics, device, seconds)
                    cells.append(f"{ups:.1f} ({ups * batch * utd:.0f})")
                    print(f"bench learner: {device} critics {n_critics} batch {batch} utd {utd}: {ups:.1f}/s",
                          flush=True)
                lines.append(f"| {device} | {n_critics} | {batch} | " + " | ".join(cells) + " |")
    lines.append("\nA robot stepping at 10 Hz with `utd` 1 needs 10 updates per second; the learner paces itself "
                 "to the data (`updates_per_transition`), so the rest of a core is left to the actor.")
    return lines
