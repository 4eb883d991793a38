"""What the policy server runs: any policy that turns an observation window into a chunk of
timed actions. Diffusion policies are one kind, SAC agents (``train sac``, the RL learner)
another; each kind registers its loader under the ``policy`` name in its checkpoint's
config.json and the server runs them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class PolicySpec:
    obs_keys: list[str]                     # step-table keys "<stream>.<array>", in input order
    image_keys: list[str]                   # camera streams
    image_size: tuple[int, int] | None      # (H, W) the frames are resized to
    obs_horizon: int
    dt: float                               # seconds between actions of a chunk
    action_dim: int
    action_low: np.ndarray                  # a chunk with any action outside [low, high] is refused
    action_high: np.ndarray
    task: str = ""
    action_kind: str = "twist"              # what an action means (runtime.actions): twist or tcp_pose


class Policy(Protocol):
    spec: PolicySpec

    def reset(self) -> None:
        """A new episode starts (recurrent state, noise generators)."""

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Actions [N, action_dim] for the window ``obs`` (``obs/<key>`` and ``image/<stream>``,
        each [obs_horizon, ...], and ``t``: the observation times); row 0 is due at ``t[-1]``."""


LOADERS: dict[str, Callable[..., Policy]] = {}


def register_policy(kind: str):
    """Decorator: ``loader(path, device, **options) -> Policy`` for checkpoints whose config says
    ``policy: kind``; options a loader does not know are an error, not silently ignored."""
    def deco(fn):
        LOADERS[kind] = fn
        return fn
    return deco


def load_policy(path: str | Path, device: str = "cpu", **options) -> Policy:
    """The checkpoint at ``path`` as a server-ready policy. ``options`` are deploy-time settings
    of its kind (diffusion: ``sampler``, ``inference_steps``); None or empty values keep the
    checkpoint's own. A damaged config.json is a PolicyError naming it, like everything the
    loaders find wrong, so the server and the CLI report one sentence."""
    from robot_learning.policies.checkpoint import PolicyError, read_json

    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise PolicyError(f"{path} is not a checkpoint: there is no config.json (train one with "
                          "`robot-learning train diffusion --dataset ...`)")
    kind = read_json(cfg).get("policy")
    if not isinstance(kind, str) or kind not in LOADERS:
        raise PolicyError(f"{path}: policy type '{kind}' has no loader (known: {', '.join(sorted(LOADERS))})")
    return LOADERS[kind](path, device, **{k: v for k, v in options.items() if v not in (None, "", 0)})


class DiffusionRunner:
    """A diffusion policy behind the server's interface: executes the ``horizon`` actions that
    follow the newest observation (``action_horizon`` of the config unless told otherwise; the
    rest of the predicted chunk is never executed, and the server replans before it runs out)."""

    def __init__(self, policy, device: str = "cpu", horizon: int | None = None, seed: int = 0,
                 sampler: str | None = None, inference_steps: int | None = None):
        import torch

        self.policy, self.device = policy, device
        cfg = policy.cfg
        self.set_sampling(sampler, inference_steps)
        self.horizon = min(horizon or cfg.action_horizon, cfg.pred_horizon - cfg.obs_horizon + 1)
        lo = np.asarray(policy.normalizer.stats["action"]["min"], np.float64)
        hi = np.asarray(policy.normalizer.stats["action"]["max"], np.float64)
        margin = 0.1 * np.maximum(hi - lo, 1e-3)   # sampling may overshoot the data a little, not more
        image_size = None
        if cfg.image_shapes:
            image_size = tuple(next(iter(cfg.image_shapes.values()))[:2])
        self.spec = PolicySpec(list(cfg.obs_dims), list(cfg.image_shapes), image_size, cfg.obs_horizon, cfg.dt,
                               cfg.action_dim, lo - margin, hi + margin, cfg.task, cfg.action_kind)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.seed = seed

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def set_sampling(self, sampler: str | None = None, inference_steps: int | None = None) -> None:
        """Sampler and number of denoising steps (None or empty: the checkpoint's). Fewer steps or
        a faster sampler trade a little accuracy for latency on the robot; takes effect at the
        next inference."""
        from robot_learning.policies.checkpoint import PolicyError
        from robot_learning.policies.diffusion import make_scheduler

        cfg = self.policy.cfg
        name, steps = sampler or cfg.sampler, int(inference_steps or cfg.inference_steps)
        try:
            make_scheduler(name, cfg.train_timesteps)
        except ValueError as e:
            raise PolicyError(str(e)) from None
        if not 1 <= steps <= cfg.train_timesteps:
            raise PolicyError(f"inference_steps must be 1..{cfg.train_timesteps}, not {steps}")
        self.sampler, self.steps = name, steps

    def warmup(self) -> None:
        """One call on a blank window, so the first real inference is not slowed by torch's set-up."""
        cfg = self.policy.cfg
        obs = {f"obs/{k}": np.zeros((cfg.obs_horizon, d), np.float32) for k, d in cfg.obs_dims.items()}
        obs.update({f"image/{k}": np.zeros((cfg.obs_horizon, *shape), np.uint8)
                    for k, shape in cfg.image_shapes.items()})
        self.act(obs)
        self.reset()

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        batch = {k: torch.as_tensor(np.ascontiguousarray(v)[None], device=self.device) for k, v in obs.items()
                 if k != "t"}
        chunk = self.policy.predict(batch, steps=self.steps, sampler=self.sampler,
                                    generator=self.generator)[0].cpu().numpy().astype(np.float64)
        to = self.policy.cfg.obs_horizon
        return chunk[to - 1: to - 1 + self.horizon]


class ReplayPolicy:
    """Plays recorded actions back by time (open loop): what the arm got at step k of an episode
    is sent again at k dt after the start. Checks that the env and the graph agree, and replays
    an episode on the arm."""

    def __init__(self, actions: np.ndarray, dt: float, obs_key: str, t0: float = 0.0, action_kind: str = "twist"):
        self.actions, self.t0 = np.asarray(actions, np.float64), t0
        span = np.ptp(self.actions, axis=0) + 1e-3
        self.spec = PolicySpec([obs_key], [], None, 1, dt, self.actions.shape[1],
                               self.actions.min(0) - span, self.actions.max(0) + span, action_kind=action_kind)

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        k = int(round((float(obs["t"][-1]) - self.t0) / self.spec.dt))
        return self.actions[min(max(k, 0), len(self.actions) - 1):]


@register_policy("diffusion")
def _load_diffusion(path: Path, device: str, sampler: str | None = None,
                    inference_steps: int | None = None) -> Policy:
    from robot_learning.policies.checkpoint import load_checkpoint

    policy, _ = load_checkpoint(path, device=device)
    return DiffusionRunner(policy, device, sampler=sampler, inference_steps=inference_steps)


class SacRunner:
    """A SAC agent behind the server's interface: its mean action (no exploration) for the
    newest observation, a chunk one policy step long, so the server asks again each step as
    the RL actor does. The state is the checkpoint's ``obs_keys`` concatenated in order, the
    arrays the recorder stores and the actor observed."""

    def __init__(self, agent, meta: dict, path: Path):
        from robot_learning.policies.checkpoint import PolicyError

        cfg = agent.cfg
        keys = [str(k) for k in meta.get("obs_keys") or []]
        if cfg.obs_dim and not keys:
            raise PolicyError(f"{path}: a SAC checkpoint without obs_keys cannot be deployed (retrain, or save it "
                              "with the state keys it was trained on)")
        env = str(meta.get("env", ""))
        task = env.split("/", 1)[1] if env.startswith("workcell/") else ""
        image_size = tuple(cfg.image_size) if cfg.image_keys else None
        self.agent = agent
        self.spec = PolicySpec(keys, list(cfg.image_keys), image_size, 1, float(meta.get("dt") or 0.1), cfg.act_dim,
                               np.asarray(cfg.action_low, np.float64), np.asarray(cfg.action_high, np.float64),
                               task, "twist")
        self._gripper: float | None = None

    def reset(self) -> None:
        self._gripper = None

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        o = {k: np.asarray(obs[f"image/{k}"][-1]) for k in self.spec.image_keys}
        if self.spec.obs_keys:
            o["state"] = np.concatenate([np.asarray(obs[f"obs/{k}"][-1], np.float32).ravel()
                                         for k in self.spec.obs_keys])
        a = self.agent.act(o, deterministic=True, gripper_now=self._gripper)
        self._gripper = float(a[-1])
        # tanh-squashed into the box already; the clip only removes float32 rounding at its edges
        return np.clip(np.asarray(a, np.float64), self.spec.action_low, self.spec.action_high)[None]


@register_policy("sac")
def _load_sac(path: Path, device: str) -> Policy:
    from robot_learning.policies.sac import load_sac

    agent, meta = load_sac(path, device=device)
    agent.eval()
    return SacRunner(agent, meta, path)
