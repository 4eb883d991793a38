"""Soft actor-critic with the choices that make RLPD and HIL-SERL sample-efficient, in one file.

- A critic *ensemble* with LayerNorm after every hidden layer (RLPD): LayerNorm keeps the
  Q-values of actions the data never shows from running away, which is what lets the
  update-to-data ratio (``utd``) go above 1 without the critic diverging.
- The target takes the minimum over a random *subset* of the ensemble (``target_subsample``
  of ``n_critics``, REDQ/RLPD): less pessimistic than the min over all, less optimistic than one.
- ``utd`` critic updates per batch of new data, the actor and temperature once per batch.
- Images go through the diffusion policy's encoder (``nets.vision.ImageEncoder``) with a
  random-shift augmentation (DrQ); the critic's gradient trains the encoder, the actor reads
  its features detached (as in DrQ and HIL-SERL: the actor's loss would drag it around).
- Demonstrations can also shape the actor directly: ``bc_weight`` adds a behaviour-cloning
  term on the batch's demonstration rows (the actor's mean pulled toward the demonstrated
  action), and ``pretrain`` fits a behaviour-cloned actor and its critic on the demonstrations
  alone before any robot time is spent (WSRL's warm start). A sparse reward gives the critic
  nothing to say until the first success; the demonstrations' actions fill that gap.
- Optionally, the last action dimension is a gripper driven by a separate *discrete* critic
  (three choices: open, stay, close; a double DQN as HIL-SERL's grasp critic), because a
  gripper is a decision, not a velocity, and a Gaussian over it dithers.

Everything is plain PyTorch; a checkpoint is safetensors plus JSON, so loading one never runs code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robot_learning.nets.vision import ImageEncoder
from robot_learning.policies.registry import PolicyKind, register_kind
from robot_learning.runtime.policy import PolicySpec

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
GRIPPER_CHOICES = ("open", "stay", "close")
FORMAT = "robot_learning.sac"


@dataclass
class SACConfig:
    obs_dim: int                       # flat state vector (0 with images only)
    action_low: list[float]
    action_high: list[float]
    image_keys: list[str] = field(default_factory=list)
    image_size: list[int] = field(default_factory=lambda: [64, 64])   # H, W as stored in the buffer
    image_channels: int = 3
    encoder_dim: int = 64
    encoder_widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    n_critics: int = 2          # RLPD's 10 pays on a GPU; on a CPU each member costs a full critic
    target_subsample: int = 2
    gamma: float = 0.99
    tau: float = 0.005
    lr: float = 3e-4
    init_temperature: float = 0.1
    target_entropy: float | None = None   # None: -(continuous action dims) / 2, as HIL-SERL
    backup_entropy: bool = True
    q_range: list[float] = field(default_factory=list)  # [lo, hi] the returns can reach: targets clipped to it
                                                         # (RLIF's rewards, ``rl.rlif``); empty: no clipping
    bc_weight: float = 0.0                # behaviour cloning on the demonstration rows of a batch
    centre_weight: float = 0.0            # a pull of the mean toward the box's centre (a residual's "no
                                          # correction"), scaled as BC is: where the critic says nothing
                                          # the residual stays at its base
    utd: int = 1
    discrete_gripper: bool = False        # last action dim in [low, high]: open .. closed
    action_dims: list[int] = field(default_factory=list)  # continuous dims the agent chooses (all when
                                                          # empty); the task sets the rest (peg_insert)
    shift_pad: int = 4

    def bound_to_returns(self, return_range: list[float]) -> None:
        """Clip the critic's targets to the returns' range, and make them targets of returns
        alone: soft values carry the entropy bonus of every step to come, and a clip at the
        returns' top would flatten them all to it (an agent on a base: ``base_envs.RETURN_RANGE``)."""
        self.q_range = [float(x) for x in return_range]
        self.backup_entropy = False

    @property
    def act_dim(self) -> int:
        return len(self.action_low)

    @property
    def cont_dim(self) -> int:
        return self.act_dim - 1 if self.discrete_gripper else self.act_dim

    @property
    def learned(self) -> list[int]:
        """The continuous action dims the actor outputs and the critics judge. A dim the task
        overrides (a gripper it holds closed, a roll it holds level) is left out: the buffers
        keep the executed value, so a critic that saw it would value actor outputs it never
        saw there, and the actor would chase those (the critic diverged, Q 7 where 1 is the most)."""
        return list(self.action_dims) or list(range(self.cont_dim))

    def to_json(self) -> dict:
        return asdict(self)


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied as one batched matmul: [n, B, i] -> [n, B, o]."""

    def __init__(self, n: int, i: int, o: int):
        super().__init__()
        bound = 1.0 / math.sqrt(i)
        self.weight = nn.Parameter(torch.empty(n, i, o).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, o).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class Critics(nn.Module):
    """Q(s, a) for each member of the ensemble: [B, in] -> [n, B]."""

    def __init__(self, n: int, in_dim: int, hidden: list[int], out: int = 1):
        super().__init__()
        self.n = n
        dims = [in_dim, *hidden]
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = EnsembleLinear(n, dims[-1], out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(self.n, *x.shape)
        for layer in self.layers:
            h = layer(h)
            h = F.relu(F.layer_norm(h, h.shape[-1:]))
        out = self.head(h)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def mlp(in_dim: int, hidden: list[int], out: int, layer_norm: bool = False) -> nn.Sequential:
    layers, d = [], in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), *([nn.LayerNorm(h)] if layer_norm else []), nn.ReLU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, out))


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ's augmentation: pad by replicating the border, crop back at a random offset per image."""
    if pad <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    ys = torch.randint(0, 2 * pad + 1, (b,), device=images.device)
    xs = torch.randint(0, 2 * pad + 1, (b,), device=images.device)
    iy = ys[:, None] + torch.arange(h, device=images.device)[None]
    ix = xs[:, None] + torch.arange(w, device=images.device)[None]
    bi = torch.arange(b, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)


class Encoder(nn.Module):
    """Observation -> feature vector: the normalized state, then one image encoder per camera."""

    def __init__(self, cfg: SACConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("obs_mean", torch.zeros(cfg.obs_dim))
        self.register_buffer("obs_std", torch.ones(cfg.obs_dim))
        self.images = nn.ModuleDict({k.replace(".", "_"): ImageEncoder(cfg.image_channels, cfg.encoder_dim,
                                                                       tuple(cfg.encoder_widths))
                                     for k in cfg.image_keys})
        self.out_dim = cfg.obs_dim + cfg.encoder_dim * len(cfg.image_keys)

    def set_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Fixed state normalization, kept with the weights (a constant dimension is left unscaled)."""
        std = np.where(np.asarray(std) > 1e-6, std, 1.0)
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, obs: dict[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        parts = []
        if self.cfg.obs_dim:
            parts.append((obs["state"] - self.obs_mean) / self.obs_std)
        for k in self.cfg.image_keys:
            img = obs[k].permute(0, 3, 1, 2).float() / 255.0 if obs[k].dtype == torch.uint8 else obs[k]
            if augment:
                img = random_shift(img, self.cfg.shift_pad)
            parts.append(self.images[k.replace(".", "_")](img))
        return torch.cat(parts, dim=-1)


class Actor(nn.Module):
    """Tanh-squashed Gaussian over the continuous action dims, scaled to the action box."""

    def __init__(self, feat_dim: int, cfg: SACConfig):
        super().__init__()
        self.net = mlp(feat_dim, cfg.hidden, 2 * len(cfg.learned))
        low = torch.tensor([cfg.action_low[i] for i in cfg.learned], dtype=torch.float32)
        high = torch.tensor([cfg.action_high[i] for i in cfg.learned], dtype=torch.float32)
        self.dims = cfg.learned
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("centre", (high + low) / 2)

    def forward(self, feat: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(feat).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        std = log_std.exp()
        u = mean if deterministic else mean + std * torch.randn_like(mean)
        a = torch.tanh(u)
        # log-density of the squashed sample in the box's [-1, 1] units, not the action's: the
        # temperature's target entropy then means the same whatever the units. In m/s, a task
        # that narrows the action space to 0.1 m/s (peg_insert) asks for an entropy no squashed
        # Gaussian can reach (7.4 nats more), and the temperature grows without bound
        logp = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return self.centre + self.scale * a, logp

    def zero_mean(self) -> None:
        """The mean action at the box's centre for every input (a residual's "no correction"),
        the spread as initialized."""
        last = self.net[-1]
        n = len(self.dims)
        with torch.no_grad():
            last.weight[:n].zero_()
            last.bias[:n].zero_()

    def _mean_gap(self, feat: torch.Tensor, target: torch.Tensor | float) -> torch.Tensor:
        """Squared distance of the mean action to ``target``, per row, in the box's [-1, 1]
        units (so a gripper and a velocity weigh alike)."""
        mean, _ = self.net(feat).chunk(2, dim=-1)
        return ((torch.tanh(mean) - target) ** 2).mean(-1)

    def centre_loss(self, feat: torch.Tensor) -> torch.Tensor:
        """Squared distance of the mean action to the box's centre (a residual's "no correction")."""
        return self._mean_gap(feat, 0.0)

    def bc_loss(self, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Squared distance of the mean action to the demonstrated one."""
        return self._mean_gap(feat, ((action[:, self.dims] - self.centre) / self.scale).clamp(-1, 1))


class SAC(nn.Module):
    """The agent: encoder, actor, critic ensemble (+ target), temperature, optional gripper critic."""

    def __init__(self, cfg: SACConfig, device: str = "cpu"):
        super().__init__()
        if not 1 <= cfg.target_subsample <= cfg.n_critics:
            raise ValueError(f"target_subsample must be between 1 and n_critics ({cfg.n_critics})")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.target_encoder = Encoder(cfg)
        f = self.encoder.out_dim
        self.actor = Actor(f, cfg)
        self.critics = Critics(cfg.n_critics, f + len(cfg.learned), cfg.hidden)
        self.target_critics = Critics(cfg.n_critics, f + len(cfg.learned), cfg.hidden)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.grip = self.target_grip = None
        if cfg.discrete_gripper:
            self.grip = Critics(2, f, cfg.hidden, out=len(GRIPPER_CHOICES))
            self.target_grip = Critics(2, f, cfg.hidden, out=len(GRIPPER_CHOICES))
        for tgt, src in self._targets():
            tgt.load_state_dict(src.state_dict())
            tgt.requires_grad_(False)
        self.target_entropy = (cfg.target_entropy if cfg.target_entropy is not None else -len(cfg.learned) / 2)
        self.to(device)
        self.device = device
        critic_params = list(self.critics.parameters()) + list(self.encoder.parameters())
        if self.grip is not None:
            critic_params += list(self.grip.parameters())
        self.opt_critic = torch.optim.Adam(critic_params, lr=cfg.lr)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.opt_alpha = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        self.updates = 0
        n = cfg.cont_dim
        self._mid = (np.asarray(cfg.action_low[:n], float) + np.asarray(cfg.action_high[:n], float)) / 2

    def _targets(self):
        pairs = [(self.target_encoder, self.encoder), (self.target_critics, self.critics)]
        if self.grip is not None:
            pairs.append((self.target_grip, self.grip))
        return pairs

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def set_obs_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Fixed state normalization (from the demonstrations, or the first data), kept in the checkpoint."""
        for enc in (self.encoder, self.target_encoder):
            enc.set_normalization(mean, std)

    # ---- acting ----------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = False,
            gripper_now: float | None = None) -> np.ndarray:
        """One action for one observation (arrays without a batch dimension).

        ``gripper_now``: the gripper's current command, which "stay" keeps (discrete gripper only)."""
        batch = {k: torch.as_tensor(np.asarray(v)[None], device=self.device) for k, v in obs.items()}
        feat = self.encoder(batch)
        learned, _ = self.actor(feat, deterministic)
        a = self._mid.copy()  # the dims not learned at mid-range: the task sets them
        a[self.cfg.learned] = learned[0].cpu().numpy()
        if self.grip is not None:
            q = self.grip(feat).mean(0)[0]
            choice = int(q.argmax()) if deterministic or np.random.rand() > 0.1 else np.random.randint(3)
            a = np.r_[a, self.gripper_value(choice, gripper_now)]
        return a.astype(np.float32)

    def gripper_value(self, choice: int, now: float | None) -> float:
        lo, hi = self.cfg.action_low[-1], self.cfg.action_high[-1]
        if choice == 1:
            return float(now) if now is not None else lo
        return lo if choice == 0 else hi

    def gripper_choice(self, action: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """The discrete choice a recorded gripper command amounts to: open, stay or close."""
        d = action - before
        tol = 0.05 * (self.cfg.action_high[-1] - self.cfg.action_low[-1])
        return torch.where(d > tol, 2, torch.where(d < -tol, 0, 1))

    # ---- learning --------------------------------------------------------------------
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """``utd`` critic updates (the batch split in ``utd`` parts), then one actor and
        temperature update on the last part. Batch keys: obs/*, next_obs/*, action, reward,
        terminal (1: no bootstrap), and for the discrete gripper grip_before (its previous command)."""
        cfg = self.cfg
        n = batch["reward"].shape[0] // cfg.utd
        info: dict[str, float] = {}
        for i in range(cfg.utd):
            part = {k: v[i * n:(i + 1) * n] for k, v in batch.items()}
            info = self._update_critic(part)
        info.update(self._update_actor(part))
        self.updates += 1
        return info

    def pretrain(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One offline step on demonstrations: the critic by TD on them (bootstrapping with
        the actor), the actor by behaviour cloning only (the critic is not yet worth following)."""
        info = self._update_critic(batch)
        with torch.no_grad():
            feat = self.encoder(self._split(batch, "obs/"), augment=bool(self.cfg.image_keys))
        loss = self.actor.bc_loss(feat, batch["action"]).mean()
        self.opt_actor.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_actor.step()
        return {**info, "bc_loss": float(loss.detach())}

    def _split(self, part: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in part.items() if k.startswith(prefix)}

    def _update_critic(self, part: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, nxt = self._split(part, "obs/"), self._split(part, "next_obs/")
        reward, not_done = part["reward"], 1.0 - part["terminal"].float()
        with torch.no_grad():
            nfeat = self.encoder(nxt, augment=bool(cfg.image_keys))
            na, nlogp = self.actor(nfeat)
            tfeat = self.target_encoder(nxt, augment=bool(cfg.image_keys))
            idx = torch.randperm(cfg.n_critics, device=reward.device)[:cfg.target_subsample]
            q_next = self.target_critics(torch.cat([tfeat, na], -1))[idx].min(0).values
            if cfg.backup_entropy:
                q_next = q_next - self.alpha * nlogp
            target = reward + cfg.gamma * not_done * q_next
            if cfg.q_range:
                target = target.clamp(*cfg.q_range)
        feat = self.encoder(obs, augment=bool(cfg.image_keys))
        q = self.critics(torch.cat([feat, part["action"][:, cfg.learned]], -1))
        loss = F.mse_loss(q, target.expand_as(q), reduction="none").mean(1).sum()
        info = {"critic_loss": float(loss.detach()) / cfg.n_critics, "q_mean": float(q.detach().mean()),
                "q_target": float(target.mean())}
        if self.grip is not None:
            choice = self.gripper_choice(part["action"][:, -1], part["grip_before"])
            with torch.no_grad():
                best = self.grip(nfeat).mean(0).argmax(-1, keepdim=True)        # double DQN: chosen online,
                qg_next = self.target_grip(tfeat).mean(0).gather(1, best)[:, 0]  # valued by the target
                g_target = reward + cfg.gamma * not_done * qg_next
                if cfg.q_range:
                    g_target = g_target.clamp(*cfg.q_range)
            qg = self.grip(feat).gather(2, choice.view(1, -1, 1).expand(2, -1, 1))[..., 0]
            g_loss = F.mse_loss(qg, g_target.expand_as(qg), reduction="none").mean(1).sum()
            loss = loss + g_loss
            info["grip_loss"] = float(g_loss.detach()) / 2
        self.opt_critic.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_critic.step()
        with torch.no_grad():
            for tgt, src in self._targets():
                for pt, ps in zip(tgt.parameters(), src.parameters()):
                    pt.lerp_(ps, cfg.tau)
        return info

    def _update_actor(self, part: dict[str, torch.Tensor]) -> dict[str, float]:
        with torch.no_grad():
            feat = self.encoder(self._split(part, "obs/"), augment=bool(self.cfg.image_keys))
        a, logp = self.actor(feat)
        q = self.critics(torch.cat([feat, a], -1)).mean(0)
        loss = (self.alpha.detach() * logp - q).mean()
        info = {}
        demo = part.get("demo")
        if self.cfg.bc_weight > 0 and demo is not None and bool(demo.any()):
            # scaled by |Q| as TD3+BC does, so the weight means the same at any reward scale
            bc = self.actor.bc_loss(feat[demo], part["action"][demo]).mean()
            loss = loss + self.cfg.bc_weight * q.abs().mean().detach().clamp(min=1.0) * bc
            info["bc_loss"] = float(bc.detach())
        if self.cfg.centre_weight > 0:
            centre = self.actor.centre_loss(feat).mean()
            loss = loss + self.cfg.centre_weight * q.abs().mean().detach().clamp(min=1.0) * centre
            info["centre_loss"] = float(centre.detach())
        self.opt_actor.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_actor.step()
        a_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.opt_alpha.zero_grad(set_to_none=True)
        a_loss.backward()
        self.opt_alpha.step()
        return {"actor_loss": float(loss.detach()), "alpha": float(self.alpha.detach()),
                "entropy": float(-logp.detach().mean()), **info}

    # ---- checkpoints -----------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None, optimizers: bool = False) -> Path:
        """Weights as safetensors, the config as JSON (written whole or not at all). With
        ``optimizers``, Adam's moments too (``optim.safetensors``), so a resumed run goes on
        exactly where it stopped."""
        from safetensors.torch import save_file

        from robot_learning.policies.checkpoint import write_checkpoint

        path = Path(path)
        if optimizers:  # before config.json, which is written last
            path.mkdir(parents=True, exist_ok=True)
            save_file(_optim_tensors(self), str(path / "optim.safetensors.partial"))
            (path / "optim.safetensors.partial").replace(path / "optim.safetensors")
        # extras may name another kind of SAC agent ("policy": "dsrl", with its base) but never
        # the format: a learner's policy version once overwrote "version" and made it unreadable
        meta = {"policy": "sac", **(extra or {})}
        return write_checkpoint(self, path, {**meta, "format": FORMAT, "version": 1, "config": self.cfg.to_json(),
                                             "updates": self.updates})


def _optim_tensors(agent: SAC) -> dict[str, torch.Tensor]:
    out = {}
    for name, opt in (("critic", agent.opt_critic), ("actor", agent.opt_actor), ("alpha", agent.opt_alpha)):
        for pid, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                out[f"{name}.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return out


def _load_optim(agent: SAC, tensors: dict[str, torch.Tensor]) -> None:
    for name, opt in (("critic", agent.opt_critic), ("actor", agent.opt_actor), ("alpha", agent.opt_alpha)):
        sd = opt.state_dict()
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            n, pid, k = key.split(".", 2)
            if n == name:
                state.setdefault(int(pid), {})[k] = v
        sd["state"] = state
        opt.load_state_dict(sd)


def sac_problems(meta: dict) -> list[str]:
    """What is wrong with config.json of a checkpoint holding a SAC agent (the registry's check)."""
    from robot_learning.policies.checkpoint import field_problems

    return field_problems(meta.get("config"), SACConfig, ("obs_dim", "action_low", "action_high"))


def on_base_problems(meta: dict, role: str) -> list[str]:
    """``sac_problems`` of an agent trained on top of a base checkpoint from the state (DSRL, the
    residual SAC): its base and its state keys must be named too. ``role``: what it does to the base."""
    problems = sac_problems(meta)
    if "base" not in meta:
        problems.append(f"'base' (the diffusion checkpoint it {role}) is missing")
    if not isinstance(meta.get("obs_keys"), list) or not meta.get("obs_keys"):
        problems.append("'obs_keys' (the state the agent sees) is missing")
    return problems


def load_sac(path, device: str = "cpu", optimizers: bool = False) -> tuple[SAC, dict]:
    """A saved agent (of a ``sac`` checkpoint, or the agent inside a ``dsrl`` one) and its
    config.json, read and checked by ``registry.read_checkpoint`` first, so a damaged checkpoint
    ends in one ``PolicyError`` sentence."""
    from safetensors.torch import load_file

    from robot_learning.policies.checkpoint import PolicyError, load_weights
    from robot_learning.policies.registry import as_meta

    meta = as_meta(path)   # a path, or the metadata its caller has read already
    path = meta.path
    if meta.kind not in SAC_KINDS:
        raise PolicyError(f"{path}: a {meta.kind} checkpoint holds no SAC agent")
    try:
        agent = SAC(SACConfig(**meta.config), device)
    except (TypeError, ValueError) as e:
        raise PolicyError(f"{path / 'config.json'}: {e}; re-export the checkpoint") from None
    load_weights(agent, path / "model.safetensors", device)
    agent.updates = int(meta.raw.get("updates", 0))
    if optimizers and (path / "optim.safetensors").exists():
        _load_optim(agent, load_file(str(path / "optim.safetensors"), device=device))
    return agent, meta.raw


class SacRunner:
    """A SAC agent behind the server's interface: its mean action (no exploration) for the
    newest observation, a chunk one policy step long, so the server asks again each step as
    the RL actor does. The state is the checkpoint's ``obs_keys`` concatenated in order, the
    arrays the recorder stores and the actor observed. A policy trained on a task that shapes
    its actions (peg_insert: gripper closed, hand level, TCP kept in a box around the hole) is
    shaped here the same way, from the TCP and fixture poses it observes: it never saw an
    action go to the arm unshaped, and half its action dims were never its to choose.

    The RL actor acts through this plug-in too (``rl.learner.ActorPolicy``), with ``explore``
    (the agent's sampled action while training), ``gripper`` set from the arm before each step
    (an operator may have moved it) and ``shape`` False: it shapes from the TCP at the moment
    it commands, as the env does."""

    def __init__(self, agent: SAC, meta: dict, path: Path, shape: bool = True):
        from robot_learning.policies.checkpoint import PolicyError

        cfg = agent.cfg
        keys = [str(k) for k in meta.get("obs_keys") or []]
        if cfg.obs_dim and not keys:
            raise PolicyError(f"{path}: a SAC checkpoint without obs_keys cannot be deployed (retrain, or save it "
                              "with the state keys it was trained on)")
        image_size = tuple(cfg.image_size) if cfg.image_keys else None
        self.agent = agent
        self.spec = PolicySpec(keys, list(cfg.image_keys), image_size, 1, float(meta.get("dt") or 0.1), cfg.act_dim,
                               np.asarray(cfg.action_low, np.float64), np.asarray(cfg.action_high, np.float64),
                               env_task(meta), "twist")
        self.task = None  # the checkpoint's task, when it shapes actions
        if self.spec.task and shape:
            from robot_learning.sim.tasks import make_task

            task = make_task(self.spec.task)
            missing = [k for k in task.shaping_keys if k not in keys]
            if missing:
                raise PolicyError(f"{path}: a {self.spec.task} policy's actions are shaped from "
                                  f"{', '.join(task.shaping_keys)}, but it observes no {', '.join(missing)} "
                                  "(retrain it with those state keys)")
            self.task = task if task.shaping_keys else None
        self.explore = False  # the mean action, as deployed
        self.gripper: float | None = None  # the gripper's command now: this policy's last one

    def reset(self) -> None:
        self.gripper = None

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        o = {k: np.asarray(obs[f"image/{k}"][-1]) for k in self.spec.image_keys}
        if self.spec.obs_keys:
            o["state"] = np.concatenate([np.asarray(obs[f"obs/{k}"][-1], np.float32).ravel()
                                         for k in self.spec.obs_keys])
        a = self.agent.act(o, deterministic=not self.explore, gripper_now=self.gripper)
        if self.task is not None:
            a = self.task.shape_observed(a, {k: obs[f"obs/{k}"][-1] for k in self.task.shaping_keys}, self.spec.dt)
        self.gripper = float(a[-1])
        # tanh-squashed into the box already; the clip only removes float32 rounding at its edges
        return np.clip(np.asarray(a, np.float64), self.spec.action_low, self.spec.action_high)[None]


def env_task(meta: dict) -> str:
    """The workcell task a checkpoint trained in the env was trained on ("" for other envs)."""
    env = str(meta.get("env", ""))
    return env.split("/", 1)[1] if env.startswith("workcell/") else ""


def _load(meta, device: str) -> SacRunner:
    agent, raw = load_sac(meta, device=device)
    agent.eval()
    return SacRunner(agent, raw, meta.path)


SAC_KINDS = ("sac", "dsrl", "residual_sac")   # checkpoint kinds whose weights are a SAC agent
register_kind(PolicyKind("sac", sac_problems, _load))
