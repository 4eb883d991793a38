"""Residual policy on top of a frozen diffusion policy (after ResiP, Ankile et al. 2024).

A small Gaussian policy sees the robot's state and the base's action due now, and adds a
bounded correction to it at every control tick: ``action = base + scale * clip(u, -1, 1)``,
``u ~ N(mean, std)`` while learning and ``u = mean`` when deployed. The diffusion chunks stay
as they were trained; only the correction learns, so a base that gets close is made precise
without retraining it. The mean's last layer starts at zero: an untrained residual is the base,
exactly. ``scale`` (per action dimension, the action's units) bounds what the residual can
ever change.

In the policy server the base's chunks come from the inference thread as for any diffusion
policy, and ``correct`` runs in the control tick on the newest observation (a few
microseconds of numpy, no torch on that path).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robot_learning.policies.checkpoint import (
    FORMAT,
    VERSION,
    PolicyError,
    field_problems,
    load_weights,
    write_checkpoint,
)
from robot_learning.policies.registry import PolicyKind, base_ref, load_policy, register_kind


@dataclass
class ResidualConfig:
    obs_keys: list[str]               # state keys the residual sees (recipe keys, newest sample)
    obs_dim: int
    action_dim: int
    scale: list[float]                # the largest correction per action dimension (action units)
    action_low: list[float]           # the base's actions span this (from its normalizer): the
    action_high: list[float]          # residual sees them scaled to [-1, 1]
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    init_log_std: float = -1.0        # exploration at the start, in units of ``scale``

    def to_json(self) -> dict:
        return asdict(self)


def _mlp(i: int, hidden: list[int], o: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(i, h), nn.Tanh()]
        i = h
    layers.append(nn.Linear(i, o))
    return nn.Sequential(*layers)


class ResidualPolicy(nn.Module):
    """The Gaussian actor (mean MLP and a learned log std) and, for PPO, its critic."""

    def __init__(self, cfg: ResidualConfig):
        super().__init__()
        self.cfg = cfg
        n_in = cfg.obs_dim + cfg.action_dim
        self.actor = _mlp(n_in, cfg.hidden, cfg.action_dim)
        self.critic = _mlp(n_in, cfg.hidden, 1)
        self.log_std = nn.Parameter(torch.full((cfg.action_dim,), float(cfg.init_log_std)))
        last = self.actor[-1]
        nn.init.zeros_(last.weight)   # no correction until it learns one: the base, exactly
        nn.init.zeros_(last.bias)
        self.register_buffer("obs_mean", torch.zeros(cfg.obs_dim))
        self.register_buffer("obs_std", torch.ones(cfg.obs_dim))
        self.register_buffer("scale", torch.as_tensor(cfg.scale, dtype=torch.float32))
        lo = torch.as_tensor(cfg.action_low, dtype=torch.float32)
        hi = torch.as_tensor(cfg.action_high, dtype=torch.float32)
        self.register_buffer("act_mid", (hi + lo) / 2)
        self.register_buffer("act_half", torch.clamp((hi - lo) / 2, min=1e-6))

    def inputs(self, state: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
        return torch.cat([(state - self.obs_mean) / self.obs_std, (base_action - self.act_mid) / self.act_half], -1)

    def dist(self, x: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.actor(x), self.log_std.exp().expand(x.shape[0], -1))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    def correction(self, u: torch.Tensor) -> torch.Tensor:
        """What is added to the base's action for the pre-bound sample ``u``: within +-scale."""
        return self.scale * u.clamp(-1.0, 1.0)

    def set_obs_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))

    def save(self, path: str | Path, base: str | Path, extra: dict | None = None) -> Path:
        """Weights and a config.json that names the base by path and content hash."""
        return write_checkpoint(self, path, {**(extra or {}), "format": FORMAT, "version": VERSION,
                                             "policy": "residual", "config": self.cfg.to_json(),
                                             "base": base_ref(base)})  # extras never shadow the format's keys


class NumpyMlp:
    """An ``nn.Sequential`` of Linear, Tanh and ReLU layers in float64 numpy, for the server's
    control tick: a batch-1 MLP costs microseconds here against tens of them through torch's
    dispatcher."""

    def __init__(self, seq: nn.Sequential):
        self.ops: list = []
        for m in seq:
            if isinstance(m, nn.Linear):
                self.ops.append((m.weight.detach().cpu().double().numpy().T.copy(),
                                 m.bias.detach().cpu().double().numpy()))
            elif isinstance(m, (nn.Tanh, nn.ReLU)):
                self.ops.append(np.tanh if isinstance(m, nn.Tanh) else _relu)
            else:
                raise TypeError(f"NumpyMlp: no numpy {type(m).__name__}")

    def __call__(self, h: np.ndarray) -> np.ndarray:
        for op in self.ops:
            h = h @ op[0] + op[1] if isinstance(op, tuple) else op(h)
        return h


def _relu(h: np.ndarray) -> np.ndarray:
    return np.maximum(h, 0.0)


class NumpyResidual:
    """The PPO residual's deterministic correction (its mean, bounded) in numpy."""

    def __init__(self, model: ResidualPolicy):
        sd = {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}
        self.mlp = NumpyMlp(model.actor)
        self.mean, self.std = sd["obs_mean"], sd["obs_std"]
        self.mid, self.half, self.scale = sd["act_mid"], sd["act_half"], sd["scale"]

    def __call__(self, state: np.ndarray, base_action: np.ndarray) -> np.ndarray:
        h = np.concatenate(((state - self.mean) / self.std, (base_action - self.mid) / self.half))
        return self.scale * np.clip(self.mlp(h), -1.0, 1.0)


class SacCorrection:
    """The off-policy residual's correction (``train residual-sac``, ``rl.residual_env``): the
    SAC actor's mean ``u`` in [-1, 1] for the state and the base's action due now (scaled by
    the base's action range), times the bound, in numpy."""

    def __init__(self, agent, bound: np.ndarray, mid: np.ndarray, half: np.ndarray):
        cfg = agent.cfg
        if cfg.image_keys or cfg.discrete_gripper or cfg.action_dims:
            raise PolicyError("a residual SAC agent corrects every action dimension from the state only")
        enc, actor = agent.encoder, agent.actor
        self.mlp = NumpyMlp(actor.net)
        self.mean, self.std = enc.obs_mean.double().numpy(), enc.obs_std.double().numpy()
        self.centre, self.scale = actor.centre.double().numpy(), actor.scale.double().numpy()
        self.n = cfg.act_dim
        self.bound, self.mid, self.half = (np.asarray(v, np.float64) for v in (bound, mid, half))

    def __call__(self, state: np.ndarray, base_action: np.ndarray) -> np.ndarray:
        x = np.concatenate((state, ((base_action - self.mid) / self.half).astype(np.float32)))
        u = self.centre + self.scale * np.tanh(self.mlp((x - self.mean) / self.std)[:self.n])
        return self.bound * u


class ResidualRunner:
    """The base's chunks (inference thread) plus a residual's correction per control tick
    (``net(state, base_action)``, within +-``scale``). Its spec is the base's, observing the
    residual's keys too, with bounds widened by ``scale``."""

    def __init__(self, base, net, obs_keys: list[str], scale):
        self.base, self.net, self.obs_keys = base, net, list(obs_keys)
        s = base.spec
        keys = list(dict.fromkeys([*s.obs_keys, *self.obs_keys]))
        scale = np.asarray(scale, np.float64)
        self.spec = replace(s, obs_keys=keys, action_low=s.action_low - scale, action_high=s.action_high + scale)
        self.base_keys = list(s.obs_keys)

    def reset(self) -> None:
        self.base.reset()

    def warmup(self) -> None:
        if hasattr(self.base, "warmup"):
            self.base.warmup()

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        base_obs = {k: v for k, v in obs.items() if not k.startswith("obs/") or k[4:] in self.base_keys}
        return self.base.act(base_obs)

    def state(self, newest: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(newest[k], np.float64).ravel() for k in self.obs_keys])

    def correct(self, action: np.ndarray, newest: dict[str, np.ndarray]) -> np.ndarray:
        """The base's action due now plus the residual's correction for the newest observation."""
        return action + self.net(self.state(newest), np.asarray(action, np.float64))


def residual_problems(meta: dict) -> list[str]:
    cfg = meta.get("config")
    problems = field_problems(cfg, ResidualConfig, ("obs_keys", "obs_dim", "action_dim", "scale", "action_low",
                                                    "action_high"))
    if not problems:
        for k in ("scale", "action_low", "action_high"):
            v = cfg[k]
            if not (isinstance(v, list) and len(v) == cfg["action_dim"]
                    and all(isinstance(x, (int, float)) and np.isfinite(x) for x in v)):
                problems.append(f"config.{k} must be {cfg['action_dim']} finite numbers")
        if not problems and any(x < 0 for x in cfg["scale"]):
            problems.append("config.scale must not be negative")
    if "base" not in meta:
        problems.append("'base' (the diffusion checkpoint it corrects) is missing")
    return problems + _base_options(meta)


def load_residual(path, device: str = "cpu") -> tuple[ResidualPolicy, dict]:
    """The residual saved at ``path`` (or whose metadata the caller has read) and its config.json."""
    from robot_learning.policies.registry import as_meta

    meta = as_meta(path)
    if meta.kind != "residual":
        raise PolicyError(f"{meta.path} is a {meta.kind} checkpoint, not a residual policy")
    model = ResidualPolicy(ResidualConfig(**meta.config))
    load_weights(model, meta.path / "model.safetensors", device)
    return model.eval(), meta.raw


def _base_options(meta: dict) -> list[str]:
    """What is wrong with a checkpoint's ``base_options`` (the base's deploy settings it learned on)."""
    return [] if isinstance(meta.get("base_options", {}), dict) else [
        "'base_options' must map deploy settings of the base to values"]


def _base(meta, device: str, options: dict):
    """The base as the residual learned on it (its ``base_options``), unless ``options`` say otherwise."""
    return load_policy(meta.base.path, device, **{**(meta.raw.get("base_options") or {}), **options})


def _load(meta, device: str, **options) -> ResidualRunner:
    base = _base(meta, device, options)
    if base.spec.action_dim != meta.config["action_dim"]:
        raise PolicyError(f"{meta.path}: corrects {meta.config['action_dim']} actions, its base makes "
                          f"{base.spec.action_dim}; retrain it on this base")
    model, _ = load_residual(meta, device)
    return ResidualRunner(base, NumpyResidual(model), model.cfg.obs_keys, model.cfg.scale)


def residual_sac_problems(meta: dict) -> list[str]:
    from robot_learning.policies.sac import on_base_problems

    problems = on_base_problems(meta, "corrects")
    bound = meta.get("bound")
    if not (isinstance(bound, list) and bound and all(isinstance(x, (int, float)) and np.isfinite(x) and x >= 0
                                                      for x in bound)):
        problems.append("'bound' (the largest correction per action dimension) must be non-negative numbers")
    return problems + _base_options(meta)


def _load_sac(meta, device: str, **options) -> ResidualRunner:
    from robot_learning.policies.sac import load_sac
    from robot_learning.rl.residual_env import base_action_range

    base = _base(meta, device, options)
    agent, raw = load_sac(meta, "cpu")   # read into numpy for the tick (SacCorrection), whatever the device
    bound = np.asarray(raw["bound"], np.float64)
    if len(bound) != base.spec.action_dim or agent.cfg.act_dim != base.spec.action_dim:
        raise PolicyError(f"{meta.path}: corrects {agent.cfg.act_dim} actions, its base makes "
                          f"{base.spec.action_dim}; retrain it on this base")
    return ResidualRunner(base, SacCorrection(agent.eval(), bound, *base_action_range(base)),
                          [str(k) for k in raw["obs_keys"]], bound)


register_kind(PolicyKind("residual", residual_problems, _load, ("sampler", "inference_steps", "noise_scale")))
register_kind(PolicyKind("residual_sac", residual_sac_problems, _load_sac, ("sampler", "inference_steps",
                                                                             "noise_scale")))
