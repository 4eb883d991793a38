"""A slow-fast policy in the spirit of Reactive Diffusion Policy (Xue et al. 2025): a frozen
diffusion policy plans action chunks from cameras at its own slow rate, and a small fast policy
corrects the action due at every control tick from what the fingers and the wrist feel now.

The slow policy cannot react inside a chunk: it planned from frames that are up to a chunk
old, and a contact that starts after that is invisible to it until the next plan. The fast
policy sees the newest taxel grids (``nets.tactile.TaxelEncoder``) and wrench, the robot's
state and the slow action due, and adds a bounded correction (``scale`` per action dimension).
It is trained by behaviour cloning against the slow policy's *own* plans on the
demonstrations (``train slow-fast``): the target is what the demonstrator did minus what the
frozen planner would have had the arm do at that step of its chunk, so it learns to fix the
planner's errors from touch, not to copy a plan that already knows the future.

In the policy server the slow chunks come from the inference thread as for any diffusion
policy, and ``correct`` runs in the control tick (the residual runner's interface), a batch-1
torch call of well under a millisecond.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robot_learning.nets.tactile import TaxelEncoder
from robot_learning.policies.checkpoint import FORMAT, VERSION, field_problems, load_weights, write_checkpoint
from robot_learning.policies.registry import PolicyKind, base_ref, load_policy, register_kind


@dataclass
class FastConfig:
    obs_keys: list[str]               # newest values it sees (state, wrench, taxel grids: recipe keys)
    obs_dims: list[int]               # flat size of each
    action_dim: int
    scale: list[float]                # the largest correction per action dimension (action units)
    action_low: list[float]           # the slow policy's actions span this: it sees them in [-1, 1]
    action_high: list[float]
    tactile_shapes: dict[str, list[int]] = field(default_factory=dict)  # grid keys -> [rows, cols, C]
    tactile_feature_dim: int = 32
    hidden: list[int] = field(default_factory=lambda: [256, 256])

    def to_json(self) -> dict:
        return asdict(self)


class FastPolicy(nn.Module):
    """[B, sum(obs_dims)] newest observations and [B, A] slow actions -> [B, A] corrections."""

    def __init__(self, cfg: FastConfig):
        super().__init__()
        self.cfg = cfg
        self.tactile = nn.ModuleDict({k.replace(".", "_"): TaxelEncoder(*s, out_dim=cfg.tactile_feature_dim)
                                      for k, s in cfg.tactile_shapes.items()})
        flat = sum(d for k, d in zip(cfg.obs_keys, cfg.obs_dims) if k not in cfg.tactile_shapes)
        n_in = flat + cfg.tactile_feature_dim * len(cfg.tactile_shapes) + cfg.action_dim
        layers: list[nn.Module] = []
        for h in cfg.hidden:
            layers += [nn.Linear(n_in, h), nn.LayerNorm(h), nn.ReLU()]
            n_in = h
        self.head = nn.Sequential(*layers, nn.Linear(n_in, cfg.action_dim))
        nn.init.zeros_(self.head[-1].weight)   # untrained: no correction, the slow policy exactly
        nn.init.zeros_(self.head[-1].bias)
        total = sum(cfg.obs_dims)
        self.register_buffer("obs_mean", torch.zeros(total))
        self.register_buffer("obs_std", torch.ones(total))
        self.register_buffer("scale", torch.as_tensor(cfg.scale, dtype=torch.float32))
        lo = torch.as_tensor(cfg.action_low, dtype=torch.float32)
        hi = torch.as_tensor(cfg.action_high, dtype=torch.float32)
        self.register_buffer("act_mid", (hi + lo) / 2)
        self.register_buffer("act_half", torch.clamp((hi - lo) / 2, min=1e-6))

    def set_obs_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Per value for states; a grid's values share one mean and spread per force axis (the
        caller fits them so), as the diffusion policy's do."""
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))

    def forward(self, obs: torch.Tensor, slow_action: torch.Tensor) -> torch.Tensor:
        """The bounded correction: within +-scale."""
        x = (obs - self.obs_mean) / self.obs_std
        parts, at = [], 0
        for k, d in zip(self.cfg.obs_keys, self.cfg.obs_dims):
            v = x[:, at:at + d]
            if k in self.cfg.tactile_shapes:
                v = self.tactile[k.replace(".", "_")](v.reshape(-1, *self.cfg.tactile_shapes[k]))
            parts.append(v)
            at += d
        parts.append((slow_action - self.act_mid) / self.act_half)
        return self.scale * torch.tanh(self.head(torch.cat(parts, -1)))

    def save(self, path: str | Path, base: str | Path, extra: dict | None = None) -> Path:
        """Weights and a config.json that names the slow policy by path and content hash."""
        return write_checkpoint(self, path, {**(extra or {}), "format": FORMAT, "version": VERSION,
                                             "policy": "slow_fast", "config": self.cfg.to_json(),
                                             "base": base_ref(base)})


class FastCorrection:
    """The fast policy at the control tick: the newest observations (flat, in ``obs_keys``
    order) and the slow action due -> its correction, float64 numpy in and out."""

    def __init__(self, model: FastPolicy):
        self.model = model.eval()

    @torch.inference_mode()
    def __call__(self, state: np.ndarray, slow_action: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(state, np.float32))[None]
        a = torch.as_tensor(np.asarray(slow_action, np.float32))[None]
        return self.model(x, a)[0].double().numpy()


def slow_fast_problems(meta: dict) -> list[str]:
    cfg = meta.get("config")
    problems = field_problems(cfg, FastConfig, ("obs_keys", "obs_dims", "action_dim", "scale", "action_low",
                                                "action_high"))
    if not problems:
        if len(cfg["obs_keys"]) != len(cfg["obs_dims"]):
            problems.append("config.obs_keys and config.obs_dims must be as long as each other")
        for k in ("scale", "action_low", "action_high"):
            v = cfg[k]
            if not (isinstance(v, list) and len(v) == cfg["action_dim"]
                    and all(isinstance(x, (int, float)) and np.isfinite(x) for x in v)):
                problems.append(f"config.{k} must be {cfg['action_dim']} finite numbers")
        dims = dict(zip(cfg["obs_keys"], cfg["obs_dims"]))
        for k, shape in (cfg.get("tactile_shapes") or {}).items():
            if not (isinstance(shape, list) and len(shape) == 3 and dims.get(k) == int(np.prod(shape))):
                problems.append(f"config.tactile_shapes '{k}' must be [rows, cols, C] of an observed key, "
                                f"{dims.get(k, 'no')} values")
    if "base" not in meta:
        problems.append("'base' (the slow diffusion policy it corrects) is missing")
    return problems


def load_fast(meta, device: str = "cpu") -> FastPolicy:
    model = FastPolicy(FastConfig(**meta.config))
    load_weights(model, meta.path / "model.safetensors", device)
    return model.eval()


def _load(meta, device: str, **options):
    from robot_learning.policies.checkpoint import PolicyError
    from robot_learning.policies.residual import ResidualRunner

    slow = load_policy(meta.base.path, device, **options)
    if slow.spec.action_dim != meta.config["action_dim"]:
        raise PolicyError(f"{meta.path}: corrects {meta.config['action_dim']} actions, its slow policy makes "
                          f"{slow.spec.action_dim}; retrain it on this one")
    model = load_fast(meta, "cpu")   # the tick's batch-1 call: the CPU, whatever the slow policy runs on
    return ResidualRunner(slow, FastCorrection(model), model.cfg.obs_keys, model.cfg.scale)


register_kind(PolicyKind("slow_fast", slow_fast_problems, _load, ("sampler", "inference_steps", "noise_scale")))
