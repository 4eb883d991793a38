"""DSRL: steering a frozen diffusion policy by its initial noise (after Wagenmaker et al. 2025).

The diffusion sampler is deterministic from a given noise (DDIM or DPM-Solver++), so the
noise is an action space: a SAC agent looks at the robot's state and picks the noise
[pred_horizon, action_dim] from which the base denoises its next chunk. Whatever the agent
picks, the chunk is one the base can make (it stays on the base's action manifold), and the
base's weights never change. The agent is the project's SAC (``policies.sac``), trained by
``train dsrl`` with ``train sac``'s loop, one agent step per chunk.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from robot_learning.policies.checkpoint import PolicyError
from robot_learning.policies.registry import PolicyKind, load_policy, register_kind
from robot_learning.policies.sac import load_sac, on_base_problems

DETERMINISTIC = ("ddim", "dpmsolver")


class DsrlRunner:
    """The base's chunk, denoised from the noise the agent picks for the newest state."""

    def __init__(self, base, agent, obs_keys: list[str]):
        if not hasattr(base, "chunks"):
            raise PolicyError("DSRL steers a diffusion policy; its base is not one")
        if base.sampler not in DETERMINISTIC:
            raise PolicyError(f"DSRL needs a deterministic sampler ({' or '.join(DETERMINISTIC)}), "
                              f"not '{base.sampler}'")
        cfg = base.policy.cfg
        self.shape = (cfg.pred_horizon, cfg.action_dim)
        if agent.cfg.act_dim != int(np.prod(self.shape)):
            raise PolicyError(f"the DSRL agent picks {agent.cfg.act_dim} noise values, the base needs "
                              f"{self.shape[0]} x {self.shape[1]}; retrain it on this base")
        self.base, self.agent, self.agent_keys = base, agent, list(obs_keys)
        s = base.spec
        self.base_keys = list(s.obs_keys)
        self.spec = replace(s, obs_keys=list(dict.fromkeys([*s.obs_keys, *obs_keys])))

    def reset(self) -> None:
        self.base.reset()

    def warmup(self) -> None:
        self.base.warmup()

    def noise(self, state: np.ndarray) -> np.ndarray:
        a = self.agent.act({"state": np.asarray(state, np.float32)}, deterministic=True)
        return np.asarray(a, np.float32).reshape(self.shape)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.concatenate([np.asarray(obs[f"obs/{k}"][-1], np.float32).ravel() for k in self.agent_keys])
        window = {k: np.asarray(v)[None] for k, v in obs.items()
                  if k.startswith("image/") or (k.startswith("obs/") and k[4:] in self.base_keys)}
        return self.base.executed(self.base.chunks(window, self.noise(state)[None])[0])


def dsrl_problems(meta: dict) -> list[str]:
    return on_base_problems(meta, "steers")


def _load(meta, device: str, **options) -> DsrlRunner:
    base = load_policy(meta.base.path, device, **options)
    agent, raw = load_sac(meta, device)
    agent.eval()
    return DsrlRunner(base, agent, [str(k) for k in raw["obs_keys"]])


register_kind(PolicyKind("dsrl", dsrl_problems, _load, ("sampler", "inference_steps")))
