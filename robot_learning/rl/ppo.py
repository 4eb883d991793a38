"""PPO's update (clipped surrogate, clipped value loss, GAE), in one place.

The model gives ``dist(x)`` (a torch Normal over its pre-bound action ``u``) and ``value(x)``;
the rollout stores inputs, ``u``, its log-probability under the policy that acted, rewards,
dones and values. Continuous actions, a Gaussian with a state-independent std, advantages
normalized per minibatch: the choices CleanRL's PPO makes for continuous control.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class PPOConfig:
    epochs: int = 4
    minibatches: int = 4
    clip: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    target_kl: float = 0.05        # stop the epochs early past this approximate KL


class Rollout:
    """``steps`` x ``n`` transitions of ``n`` envs stepped together."""

    def __init__(self, steps: int, n: int, in_dim: int, act_dim: int):
        self.x = np.zeros((steps, n, in_dim), np.float32)
        self.u = np.zeros((steps, n, act_dim), np.float32)
        self.logp = np.zeros((steps, n), np.float32)
        self.reward = np.zeros((steps, n), np.float32)
        self.done = np.zeros((steps, n), np.float32)       # the episode ended after this step
        self.value = np.zeros((steps, n), np.float32)
        self.t = 0

    def add(self, x, u, logp, reward, done, value) -> None:
        t = self.t
        self.x[t], self.u[t], self.logp[t] = x, u, logp
        self.reward[t], self.done[t], self.value[t] = reward, done, value
        self.t += 1

    def advantages(self, last_value: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
        """GAE(lambda) advantages and the returns the critic regresses to."""
        adv = np.zeros_like(self.reward)
        last = np.zeros(self.reward.shape[1], np.float32)
        for t in reversed(range(self.t)):
            nxt = last_value if t == self.t - 1 else self.value[t + 1]
            live = 1.0 - self.done[t]
            delta = self.reward[t] + gamma * nxt * live - self.value[t]
            last = delta + gamma * lam * live * last
            adv[t] = last
        return adv, adv + self.value


def ppo_update(model: nn.Module, opt: torch.optim.Optimizer, ro: Rollout, last_value: np.ndarray,
               cfg: PPOConfig, rng: np.random.Generator) -> dict[str, float]:
    adv, ret = ro.advantages(last_value, cfg.gamma, cfg.gae_lambda)
    n = ro.t * ro.x.shape[1]
    x = torch.as_tensor(ro.x[:ro.t].reshape(n, -1))
    u = torch.as_tensor(ro.u[:ro.t].reshape(n, -1))
    old_logp = torch.as_tensor(ro.logp[:ro.t].reshape(n))
    old_v = torch.as_tensor(ro.value[:ro.t].reshape(n))
    adv_t = torch.as_tensor(adv[:ro.t].reshape(n))
    ret_t = torch.as_tensor(ret[:ro.t].reshape(n))
    size = max(1, n // cfg.minibatches)
    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "entropy": [], "approx_kl": [],
                                     "clip_frac": []}
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        kls = []
        for s in range(0, n, size):
            idx = torch.as_tensor(order[s:s + size])
            d = model.dist(x[idx])
            logp = d.log_prob(u[idx]).sum(-1)
            ratio = (logp - old_logp[idx]).exp()
            a = adv_t[idx]
            a = (a - a.mean()) / (a.std() + 1e-8) if len(idx) > 1 else a
            pg = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
            v = model.value(x[idx])
            v_clip = old_v[idx] + (v - old_v[idx]).clamp(-cfg.clip, cfg.clip)
            vl = 0.5 * torch.max((v - ret_t[idx]) ** 2, (v_clip - ret_t[idx]) ** 2).mean()
            ent = d.entropy().sum(-1).mean()
            loss = pg + cfg.vf_coef * vl - cfg.ent_coef * ent
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            with torch.no_grad():
                kl = float(((ratio - 1) - (logp - old_logp[idx])).mean())
            kls.append(kl)
            for k, val in (("policy_loss", pg), ("value_loss", vl), ("entropy", ent)):
                stats[k].append(float(val.detach()))
            stats["approx_kl"].append(kl)
            stats["clip_frac"].append(float(((ratio - 1).abs() > cfg.clip).float().mean()))
        if np.mean(kls) > cfg.target_kl:
            break
    var = float(np.var(ret[:ro.t]))
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out["explained_variance"] = float(1 - np.var(ret[:ro.t] - ro.value[:ro.t]) / var) if var > 0 else 0.0
    return out
