"""The diffusion policy: observations (proprioception, wrench, taxel grids, camera images) are encoded
into one conditioning vector; a conditional 1-D U-Net denoises a chunk of ``pred_horizon``
actions from Gaussian noise, trained with DDPM and sampled with DDIM or DPM-Solver++ in a
configurable number of steps."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robot_learning.nets.mlp_denoiser import ConditionalMLPDenoiser
from robot_learning.nets.precision import autocast
from robot_learning.nets.precision import resolve as resolve_precision
from robot_learning.nets.tactile import TaxelEncoder
from robot_learning.nets.unet1d import ConditionalUnet1D
from robot_learning.nets.vision import ENCODERS, ImageEncoder, crop
from robot_learning.policies.checkpoint import DENOISERS, diffusion_problems
from robot_learning.policies.normalizer import Normalizer
from robot_learning.policies.registry import PolicyKind, register_kind
from robot_learning.runtime.policy import PolicySpec


@dataclass
class DiffusionConfig:
    obs_dims: dict[str, int]                      # low-dim observation key -> flat size
    action_dim: int
    image_shapes: dict[str, list[int]] = field(default_factory=dict)  # camera key -> [H, W, C] as sampled
    # camera key -> [x0, y0, x1, y1]: the region of the camera's frame (fractions of its width and
    # height) that is resized to image_shapes; a camera not named here is read whole
    image_rois: dict[str, list[float]] = field(default_factory=dict)
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8
    down_dims: list[int] = field(default_factory=lambda: [128, 256, 512])
    # the network that denoises the chunk: a 1-D U-Net over time (down_dims), or an MLP over the
    # flattened chunk (mlp_width x mlp_depth residual blocks), far cheaper a step for low-dim
    # observations (nets.mlp_denoiser)
    denoiser: str = "unet"
    mlp_width: int = 512
    mlp_depth: int = 3
    image_feature_dim: int = 64
    image_encoder: str = "small"                   # a key of nets.vision.ENCODERS
    # one encoder for every camera (LeRobot's and Diffusion Policy's default; the cameras must
    # share a shape; fewer parameters), instead of an encoder per camera
    shared_image_encoder: bool = False
    # observation keys that are taxel grids (key -> [rows, cols, C]; they stay in obs_dims too,
    # flat size): each goes through its own nets.tactile.TaxelEncoder instead of being flattened
    tactile_shapes: dict[str, list[int]] = field(default_factory=dict)
    tactile_feature_dim: int = 32
    crop_fraction: float = 0.9
    train_timesteps: int = 100
    # what the network outputs: "epsilon" (the noise, as in Diffusion Policy) or "sample" (the
    # clean chunk itself); measured on the demo's budget in docs/learning.md
    prediction: str = "epsilon"
    sampler: str = "ddim"                          # ddim or dpmsolver
    inference_steps: int = 10
    # [a, b] pairs of pose keys: the policy also sees position a - position b (e.g. cube relative
    # to the TCP), computed from the raw inputs, so the server feeds the same keys as ever
    relative: list[list[str]] = field(default_factory=list)
    dt: float = 0.1                                # seconds between policy steps (the dataset's step rate)
    task: str = ""                                 # what it was trained on (env rollouts, reports)
    action_kind: str = "twist"                     # twist or tcp_pose (runtime.actions)
    # an observed pose key: the network predicts the action's position (its first three values)
    # relative to that pose's newest position, and adding it back gives the action. A briefly
    # trained policy with absolute targets shrinks them toward the data's mean (2-3 cm off at
    # the grasp); "cube minus TCP" needs no such regression. Empty: absolute actions.
    action_origin: str = ""

    def spec(self) -> dict:
        """What a checkpoint expects of its inputs and outputs (checked when it is loaded)."""
        return {"obs_dims": self.obs_dims, "image_shapes": self.image_shapes, "action_dim": self.action_dim,
                "obs_horizon": self.obs_horizon, "pred_horizon": self.pred_horizon, "dt": self.dt}

    def to_json(self) -> dict:
        return asdict(self)


def relative_key(a: str, b: str) -> str:
    return f"{a}-{b}"


def make_scheduler(kind: str, train_timesteps: int, prediction: str = "epsilon"):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = {"num_train_timesteps": train_timesteps, "beta_schedule": "squaredcos_cap_v2", "clip_sample": True,
              "prediction_type": prediction}
    if kind == "ddpm":
        return DDPMScheduler(**common)
    if kind == "ddim":
        return DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0)
    if kind == "dpmsolver":
        common.pop("clip_sample")
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++")
    raise ValueError(f"sampler '{kind}' is not one of ddpm, ddim, dpmsolver")


SHARED = "shared"   # the key of the one encoder in ``DiffusionPolicy.encoders`` when cameras share it


class DiffusionPolicy(nn.Module):
    def __init__(self, cfg: DiffusionConfig, normalizer: Normalizer):
        super().__init__()
        self.cfg, self.normalizer = cfg, normalizer
        self._samplers: dict[str, object] = {}
        cams = cfg.image_shapes
        if cfg.shared_image_encoder and len({tuple(s) for s in cams.values()}) > 1:
            raise ValueError("one image encoder for every camera needs the cameras at one shape, not "
                             + ", ".join(f"{k} {s}" for k, s in cams.items())
                             + ": resize them alike, or give each camera an encoder of its own")
        shapes = ({SHARED: next(iter(cams.values()))} if cfg.shared_image_encoder and cams
                  else {k.replace(".", "_"): s for k, s in cams.items()})
        self.encoders = nn.ModuleDict({k: ImageEncoder(s[2], cfg.image_feature_dim, **ENCODERS[cfg.image_encoder])
                                       for k, s in shapes.items()})
        # frames arrive as [H, W, C] and permuting them gives channels-last strides: weights in the
        # same layout spare oneDNN a conversion each way (measured in benchmarks/image_training.py)
        self.encoders.to(memory_format=torch.channels_last)
        self.tactile = nn.ModuleDict({k.replace(".", "_"): TaxelEncoder(*shape, out_dim=cfg.tactile_feature_dim)
                                      for k, shape in cfg.tactile_shapes.items()})
        per_step = (sum(n for k, n in cfg.obs_dims.items() if k not in cfg.tactile_shapes) + 3 * len(cfg.relative)
                    + cfg.image_feature_dim * len(cfg.image_shapes) + cfg.tactile_feature_dim * len(cfg.tactile_shapes))
        if cfg.denoiser == "mlp":
            self.net = ConditionalMLPDenoiser(cfg.action_dim, cfg.pred_horizon, per_step * cfg.obs_horizon,
                                              cfg.mlp_width, cfg.mlp_depth)
        elif cfg.denoiser == "unet":
            self.net = ConditionalUnet1D(cfg.action_dim, per_step * cfg.obs_horizon, tuple(cfg.down_dims))
        else:
            raise ValueError(f"denoiser is one of {', '.join(DENOISERS)}, not '{cfg.denoiser}'")
        self.train_scheduler = make_scheduler("ddpm", cfg.train_timesteps, cfg.prediction)

    def encode(self, batch: dict[str, torch.Tensor], train: bool) -> torch.Tensor:
        """Observation window [B, To, ...] per key -> conditioning vector [B, To * per_step]."""
        feats = []
        for k in self.cfg.obs_dims:
            x = batch[f"obs/{k}"]
            if k in self.cfg.tactile_shapes:   # normalized per force axis (the stats are per channel)
                b, to = x.shape[:2]
                grid = self.normalizer.normalize(k, x.reshape(b * to, *self.cfg.tactile_shapes[k]).float())
                feats.append(self.tactile[k.replace(".", "_")](grid).reshape(b, to, -1))
            else:
                feats.append(self.normalizer.normalize(k, x.reshape(*x.shape[:2], -1)))
        for a, b in self.cfg.relative:
            d = batch[f"obs/{a}"][..., :3] - batch[f"obs/{b}"][..., :3]
            feats.append(self.normalizer.normalize(relative_key(a, b), d))
        # a camera at a time, also through a shared encoder: at the peers' network on a 2-core CPU both
        # cameras' 256 frames in one batch made the step 6% slower than two batches of 128 (and
        # batches of 64 were 2% slower again): a batch's maps stay in the cache
        feats += [self.image_features(batch, k, train) for k in self.cfg.image_shapes]
        return torch.cat(feats, dim=-1).flatten(1)

    def _frames(self, batch: dict[str, torch.Tensor], camera: str, train: bool) -> torch.Tensor:
        """One camera's frames [B, To, H, W(, C)] -> [B * To, C, h, w], cropped, as the encoder
        reads them (floats, channels-last in memory)."""
        shape = self.cfg.image_shapes[camera]
        img = batch[f"image/{camera}"]
        scale = 255.0 if img.dtype == torch.uint8 else 1000.0   # colour 0..255; depth in mm -> m
        img = img.reshape(-1, shape[0], shape[1], shape[2]).permute(0, 3, 1, 2)
        size = (int(shape[0] * self.cfg.crop_fraction), int(shape[1] * self.cfg.crop_fraction))
        # cropped before the conversion to float: a quarter of the bytes to gather, fewer to convert
        return crop(img, size, train).float() / scale

    def image_features(self, batch: dict[str, torch.Tensor], camera: str, train: bool) -> torch.Tensor:
        """One camera's frames [B, To, H, W(, C)] through its encoder -> [B, To, features]."""
        b, to = batch[f"image/{camera}"].shape[:2]
        encoder = self.encoders[SHARED if self.cfg.shared_image_encoder else camera.replace(".", "_")]
        return encoder(self._frames(batch, camera, train)).reshape(b, to, -1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss (what DistributedDataParallel wraps)."""
        return self.loss(batch)

    def _origin(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[B, 1, action_dim]: what is subtracted from absolute actions (``action_origin``'s
        newest position in the first three dims), or None for absolute actions."""
        if not self.cfg.action_origin:
            return None
        pos = batch[f"obs/{self.cfg.action_origin}"][:, -1, :3].float()
        return F.pad(pos, (0, self.cfg.action_dim - 3))[:, None, :]

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The absolute actions' range in the training data (the server refuses chunks well outside it)."""
        s = self.normalizer.stats.get("action_bounds" if self.cfg.action_origin else "action")
        return np.asarray(s["min"], np.float64), np.asarray(s["max"], np.float64)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cond = self.encode(batch, train=True)
        origin = self._origin(batch)
        action = self.normalizer.normalize("action", batch["action"] if origin is None else batch["action"] - origin)
        noise = torch.randn_like(action)
        k = torch.randint(0, self.cfg.train_timesteps, (action.shape[0],), device=action.device)
        noisy = self.train_scheduler.add_noise(action, noise, k)
        return F.mse_loss(self.net(noisy, k, cond), noise if self.cfg.prediction == "epsilon" else action)

    def _sampler(self, kind: str):
        """One inference scheduler per kind, built once (building one costs up to 1.6 ms an inference)."""
        if kind not in self._samplers:
            self._samplers[kind] = make_scheduler(kind, self.cfg.train_timesteps, self.cfg.prediction)
        return self._samplers[kind]

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], steps: int | None = None, sampler: str | None = None,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                noise_scale: float = 1.0) -> torch.Tensor:
        """Denoised action chunk [B, pred_horizon, action_dim] in the dataset's units, from
        ``noise`` [B, pred_horizon, action_dim] when given (DSRL chooses it), else from a draw
        of ``generator`` times ``noise_scale``. DDIM and DPM-Solver++ are deterministic: one
        noise, one chunk."""
        cond = self.encode(batch, train=False)
        sched = self._sampler(sampler or self.cfg.sampler)
        sched.set_timesteps(steps or self.cfg.inference_steps)   # also resets a multistep solver's state
        shape = (cond.shape[0], self.cfg.pred_horizon, self.cfg.action_dim)
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise must be {list(shape)}, not {list(noise.shape)}")
            x = noise.to(cond.device, cond.dtype)
        else:
            x = noise_scale * torch.randn(shape, generator=generator, device=cond.device)
        for k in sched.timesteps:
            out = self.net(x, k.to(cond.device).expand(x.shape[0]), cond)  # noise or chunk, as trained
            x = sched.step(out, k, x).prev_sample
        origin = self._origin(batch)
        out = self.normalizer.unnormalize("action", x)
        return out if origin is None else out + origin


class DiffusionRunner:
    """A diffusion policy behind the server's interface: executes the ``horizon`` actions that
    follow the newest observation (``action_horizon`` of the config unless told otherwise; the
    rest of the predicted chunk is never executed, and the server replans before it runs out)."""

    def __init__(self, policy: DiffusionPolicy, device: str = "cpu", horizon: int | None = None, seed: int = 0,
                 sampler: str | None = None, inference_steps: int | None = None,
                 noise_scale: float | None = None, precision: str = "fp32"):
        from robot_learning.policies.checkpoint import PolicyError

        try:  # bf16: where the hardware has bf16 units (nets.precision); auto picks it there for images
            self.precision = resolve_precision(precision, device, images=bool(policy.cfg.image_shapes))
        except ValueError as e:
            raise PolicyError(str(e)) from None
        fp32 = policy
        if self.precision == "bf16":
            policy = _bf16_copy(policy)
        # auto with bf16 units: both kept until warmup() times them (bf16 sampled 2.6x faster on an
        # EPYC with AVX512-BF16 and no faster on a Xeon with AMX, docs/design.md); bf16 until then
        self._choices = {"fp32": fp32, "bf16": policy} if precision == "auto" and self.precision == "bf16" else {}
        self.policy, self.device = policy, device
        cfg = policy.cfg
        self.set_sampling(sampler, inference_steps, noise_scale)
        self.horizon = min(horizon or cfg.action_horizon, cfg.pred_horizon - cfg.obs_horizon + 1)
        lo, hi = policy.action_bounds()
        margin = 0.1 * np.maximum(hi - lo, 1e-3)   # sampling may overshoot the data a little, not more
        image_size = None
        if cfg.image_shapes:
            image_size = tuple(next(iter(cfg.image_shapes.values()))[:2])
        self.spec = PolicySpec(list(cfg.obs_dims), list(cfg.image_shapes), image_size, cfg.obs_horizon, cfg.dt,
                               cfg.action_dim, lo - margin, hi + margin, cfg.task, cfg.action_kind,
                               {c: tuple(r) for c, r in cfg.image_rois.items()})
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.seed = seed

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def set_sampling(self, sampler: str | None = None, inference_steps: int | None = None,
                     noise_scale: float | None = None) -> None:
        """Sampler and number of denoising steps (None or empty: the checkpoint's), and the scale
        of the initial noise (None: 1, as trained). Fewer steps or a faster sampler
        trade a little accuracy for latency on the robot. A smaller noise scale samples closer to
        the mode of the action distribution: with a deterministic sampler (DDIM, DPM-Solver++),
        0 gives the one chunk the policy thinks most typical, no diversity left (a weak policy
        trained on few demonstrations went from 12% to 48% success with it, ``docs/learning.md``).
        Takes effect at the next inference."""
        from robot_learning.policies.checkpoint import PolicyError

        cfg = self.policy.cfg
        name, steps = sampler or cfg.sampler, int(inference_steps or cfg.inference_steps)
        try:
            make_scheduler(name, cfg.train_timesteps)
        except ValueError as e:
            raise PolicyError(str(e)) from None
        if not 1 <= steps <= cfg.train_timesteps:
            raise PolicyError(f"inference_steps must be 1..{cfg.train_timesteps}, not {steps}")
        scale = 1.0 if noise_scale is None else float(noise_scale)
        if not (np.isfinite(scale) and 0.0 <= scale <= 2.0):
            raise PolicyError(f"noise_scale must be between 0 and 2 (1: as trained), not {noise_scale}")
        self.sampler, self.steps, self.noise_scale = name, steps, scale

    def warmup(self) -> None:
        """One call on a blank window, so the first real inference is not slowed by torch's set-up;
        with ``auto`` precision on bf16 hardware, also the choice of the faster of float32 and
        bfloat16 here, by the median of three timed calls each."""
        import time

        cfg = self.policy.cfg
        obs = {f"obs/{k}": np.zeros((cfg.obs_horizon, d), np.float32) for k, d in cfg.obs_dims.items()}
        obs.update({f"image/{k}": np.zeros((cfg.obs_horizon, *shape), np.uint8)
                    for k, shape in cfg.image_shapes.items()})
        timed = {}
        for name, policy in (self._choices or {self.precision: self.policy}).items():
            self.policy, self.precision = policy, name
            self.act(obs)
            if self._choices:
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    self.act(obs)
                    times.append(time.perf_counter() - t0)
                timed[name] = float(np.median(times))
        if timed:
            self.precision = min(timed, key=timed.get)
            self.policy = self._choices[self.precision]
            self.timed_ms = {k: round(v * 1e3, 1) for k, v in timed.items()}
        self.reset()

    def chunks(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
        """Whole predicted chunks [B, pred_horizon, action_dim] for a batch of windows (each
        value [B, obs_horizon, ...]), from ``noise`` when given: the batched form the residual
        and DSRL envs use, one inference for many envs."""
        batch = {k: torch.as_tensor(np.ascontiguousarray(v), device=self.device) for k, v in obs.items() if k != "t"}
        x = None if noise is None else torch.as_tensor(np.asarray(noise, np.float32), device=self.device)
        with autocast(self.device, self.precision):
            out = self.policy.predict(batch, steps=self.steps, sampler=self.sampler, generator=self.generator,
                                      noise=x, noise_scale=self.noise_scale)
        return out.float().cpu().numpy().astype(np.float64)

    def executed(self, chunks: np.ndarray) -> np.ndarray:
        """The part of predicted chunks [..., pred_horizon, A] that is executed: the actions
        from the newest observation on, ``horizon`` of them."""
        to = self.policy.cfg.obs_horizon
        return chunks[..., to - 1: to - 1 + self.horizon, :]

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.executed(self.chunks({k: np.asarray(v)[None] for k, v in obs.items() if k != "t"})[0])


def _bf16_copy(policy: DiffusionPolicy) -> DiffusionPolicy:
    """A copy whose networks hold bfloat16 weights, for inference under autocast. Autocast alone
    casts every weight at every call: at batch 1 that traffic is most of a denoising step, and a
    small image policy inferred slower in bf16 than in float32 that way (``docs/benchmarks.md``).
    The normalizer stays float32 (positions in bf16 would be millimetres off), and so does the
    caller's policy (a trainer's weights must not be rounded)."""
    import copy

    twin = copy.deepcopy(policy)
    for net in (twin.encoders, twin.tactile, twin.net):
        net.to(torch.bfloat16)
    return twin.eval()


def _load(meta, device: str, sampler: str | None = None, inference_steps: int | None = None,
          noise_scale: float | None = None) -> DiffusionRunner:
    from robot_learning.policies.checkpoint import load_checkpoint

    policy, _ = load_checkpoint(meta, device=device)
    # auto: image policies in bf16 where the hardware has it (equal success measured in docs/learning.md)
    return DiffusionRunner(policy, device, sampler=sampler, inference_steps=inference_steps, noise_scale=noise_scale,
                           precision="auto")


register_kind(PolicyKind("diffusion", diffusion_problems, _load, ("sampler", "inference_steps", "noise_scale")))
