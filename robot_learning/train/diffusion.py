"""``robot-learning train diffusion``: a diffusion policy from a zarr dataset.

Windows are sampled straight from the dataset's step tables (``data.sampler``); a few
episodes are held out for the validation loss. The EMA of the weights is what gets
evaluated and saved. Every ``eval_every`` steps: validation loss, rollouts in the gymnasium
env (success rate) and a checkpoint (``checkpoints/step_*``, ``last``, and ``best`` by
success rate, else by validation loss). ``train_state/`` holds what ``--resume`` needs.
Metrics go to TensorBoard (``tb/``) and ``metrics.jsonl``. Under ``torchrun`` each process
trains on its own shard of every epoch (DistributedDataParallel), all of them evaluate their
share, rank 0 saves (``train.distributed``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_learning.data.schema import parse_recipe
from robot_learning.data.store import Dataset
from robot_learning.nets.device import AdaptiveThreads, pick_device
from robot_learning.nets.precision import PRECISIONS, autocast, resolve
from robot_learning.policies.checkpoint import (
    DENOISERS,
    IMAGE_ENCODERS,
    PREDICTIONS,
    PolicyError,
    load_weights,
    read_json,
)
from robot_learning.policies.registry import read_checkpoint
from robot_learning.runtime.actions import TCP_POSE_KEY, TWIST_DIMS, check_action_kind, pose_actions
from robot_learning.train import distributed
from robot_learning.train.cpu_clock import CpuClock

RESUME_FIX = "resume from an intact copy of the run, or train afresh"


@dataclass
class TrainConfig:
    dataset: str
    out: str = ""                                         # the run directory (default: runs/train-<date>-<time>)
    obs: list[str] = field(default_factory=list)         # step obs keys; empty: every low-dim one
    images: list[str] = field(default_factory=list)      # camera streams
    relative: list[str] = field(default_factory=list)    # "a-b": also observe position a minus position b
    action: str = "twist"                                 # twist (as recorded) or tcp_pose (runtime.actions)
    action_origin: str = ""                               # tcp_pose positions relative to this pose obs
    image_size: list[int] = field(default_factory=lambda: [96, 96])   # height, width the encoder sees
    # camera:x0:y0:x1:y1, the region of a camera's view the policy reads (fractions of the frame;
    # the server cuts it from live frames too). Empty: what `dataset shrink --roi` cut, if anything
    image_roi: list[str] = field(default_factory=list)
    image_encoder: str = "small"                          # tiny (CPUs), small, resnet18 (the peers' size): nets.vision
    shared_image_encoder: bool = False   # one encoder for all cameras (one shape; LeRobot's default)
    tactile: str = "grid"                                 # taxel grids through a conv encoder (nets.tactile), or flat
    obs_horizon: int = 2                                  # observations the policy conditions on
    pred_horizon: int = 16                                # actions per predicted chunk
    action_horizon: int = 8                               # actions executed of each chunk, from the newest obs
    down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])   # the U-Net's channels per level
    denoiser: str = "unet"                                # unet (down_dims), or mlp (mlp_width x mlp_depth)
    mlp_width: int = 512                                  # the MLP denoiser's hidden width
    mlp_depth: int = 3                                    # and its hidden layers
    batch_size: int = 256                                 # windows per step
    lr: float = 1e-3                                      # AdamW, cosine decay after the warm-up
    weight_decay: float = 1e-6                            # AdamW's
    warmup_steps: int = 200                               # linear learning-rate warm-up
    steps: int = 3000                                     # optimizer steps in all (a resumed run goes on to it)
    ema_decay: float = 0.995                              # the EMA weights that are saved and evaluated
    val_fraction: float = 0.1                             # episodes held out for the validation loss
    eval_every: int = 500                                 # steps between evaluations (0: only at the end)
    eval_episodes: int = 10                               # sim rollouts per evaluation (0: none)
    eval_seed: int = 100_000                              # the evaluations' first seed (the same episodes each time)
    eval_max_steps: int = 0                               # policy steps per eval rollout (0: the task's own limit)
    eval_noise_scale: float = 1.0                         # the eval rollouts' sampling noise (deploy with the same)
    sampler: str = "ddim"                                 # ddim, ddpm or dpmsolver, at deployment too
    inference_steps: int = 10                             # denoising steps per chunk at deployment
    prediction: str = "epsilon"                           # the network outputs the noise, or the clean chunk (sample)
    device: str = "auto"                                  # auto (CUDA when there is one), cuda, cpu
    seed: int = 0                                         # initial weights, batches and the validation split
    resume: str = ""                                      # a run directory to continue, from its last checkpoint
    init: str = ""                 # start from this checkpoint's weights and normalizer (same network; _init_from)
    compile: bool = False          # torch.compile the network for the training step (eager if compiling fails)
    loaders: int = 0               # threads collating batches ahead (0: 4 on CUDA; none on a CPU, whose cores it needs)
    only_success: bool = True                             # train on successful episodes only
    episodes: int = 0   # the first N usable episodes only, validation's included (0: all): what N demonstrations buy
    threads: int = 0    # torch CPU threads (0: torch's default; -1: timed against the load: AdaptiveThreads)
    precision: str = "auto"                               # auto: bf16 for image policies where the hardware has it
    max_minutes: float = 0.0                              # stop (evaluate, save) after this long; 0: no limit


def _split(ds: Dataset, cfg: TrainConfig) -> tuple[list[int], list[int], str]:
    eps = []
    for i in ds.indices:
        m = ds.episode(i).meta
        if m.get("status") == "complete" and (not cfg.only_success or m.get("success") is not False):
            eps.append(i)
    if not eps:
        raise SystemExit(f"train: {cfg.dataset} has no complete{' successful' if cfg.only_success else ''} "
                         "episodes to train on (record some with `robot-learning collect`)")
    if cfg.episodes:
        if cfg.episodes > len(eps):
            raise SystemExit(f"train: --episodes {cfg.episodes}, but {cfg.dataset} has {len(eps)} complete"
                             f"{' successful' if cfg.only_success else ''} episodes: ask for at most that many")
        eps = eps[:cfg.episodes]
    tasks = {ds.episode(i).meta.get("task", "") for i in eps}
    rng = np.random.default_rng(cfg.seed)
    order = list(rng.permutation(eps))
    n_val = int(round(len(eps) * cfg.val_fraction)) if len(eps) >= 5 else 0
    return sorted(order[n_val:]), sorted(order[:n_val]), sorted(tasks)[0] if len(tasks) == 1 else ""


def _check_action(cfg: TrainConfig, recipe, obs_keys: list[str]) -> None:
    """``tcp_pose`` actions are built from the recorded TCP pose, replacing the recorded twist."""
    try:
        check_action_kind(cfg.action)
    except ValueError as e:
        raise SystemExit(f"train: --action: {e}") from None
    if cfg.denoiser not in DENOISERS:
        raise SystemExit(f"train: --denoiser is one of {', '.join(DENOISERS)}, not '{cfg.denoiser}'")
    if cfg.prediction not in PREDICTIONS:
        raise SystemExit(f"train: --prediction is one of {', '.join(PREDICTIONS)}, not '{cfg.prediction}'")
    if cfg.image_encoder not in IMAGE_ENCODERS:
        raise SystemExit(f"train: --image-encoder is one of {', '.join(IMAGE_ENCODERS)}, not '{cfg.image_encoder}'")
    if cfg.precision not in PRECISIONS:
        raise SystemExit(f"train: --precision is one of {', '.join(PRECISIONS)}, not '{cfg.precision}'")
    if cfg.action_origin and (cfg.action != "tcp_pose" or cfg.action_origin not in obs_keys):
        raise SystemExit(f"train: --action-origin {cfg.action_origin} needs --action tcp_pose and "
                         f"{cfg.action_origin} among --obs")
    if cfg.action != "tcp_pose":
        return
    if TCP_POSE_KEY not in obs_keys:
        raise SystemExit(f"train: --action tcp_pose needs {TCP_POSE_KEY} among --obs (the plan is tracked against it)")
    parts = recipe.steps.action
    if not parts or parts[0].array.split(".", 1)[0] != "cmd_twist":
        raise SystemExit("train: --action tcp_pose replaces the recorded TCP twist, but the dataset's first "
                         f"action part is {parts[0].array if parts else 'missing'}")


def _default_obs(ds: Dataset, episode: int) -> list[str]:
    steps = ds.episode(episode).steps["obs"]
    keys = []
    for stream, g in steps.groups():
        keys += [f"{stream}.{a}" for a, _ in g.arrays()]
    return sorted(k for k in keys if not k.endswith(".effort"))


TACTILE_MODES = ("grid", "flat")


def taxel_grids(recipe, obs_keys, steps_obs) -> dict[str, list[int]]:
    """The observations that are taxel grids: float images ([rows, cols, C] forces, as the tactile
    drivers publish them) among the low-dim keys -> their shape (as stored in a step table)."""
    grids = {}
    for k in obs_keys:
        stream = recipe.streams.get(k.split(".", 1)[0])
        shape = steps_obs[k].shape[1:]
        if stream is not None and stream.kind == "image" and (stream.encoding or "").startswith("32FC") \
                and len(shape) == 3:
            grids[k] = [int(n) for n in shape]
    return grids


def _collate(sampler, idx) -> dict[str, np.ndarray]:
    items = [sampler[int(i)] for i in idx]
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


def _to(batch: dict, device: str):
    import torch

    if device.startswith("cuda"):  # pinned, then copied without a wait (see distributed.prefetched)
        return {k: torch.as_tensor(v).pin_memory().to(device, non_blocking=True) for k, v in batch.items()
                if k != "action_is_pad"}
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items() if k != "action_is_pad"}


def _image_rois(cfg: TrainConfig, first_episode_meta: dict) -> dict:
    """The region of each camera's view the policy reads: ``--image-roi``, or else the one
    ``dataset shrink --roi`` cut (the sampler refuses an episode cut otherwise)."""
    from robot_learning.data.sampler import parse_rois, shrunk_rois

    try:
        rois = parse_rois(cfg.image_roi)
    except ValueError as e:
        raise SystemExit(f"train: {e}") from None
    stray = [c for c in rois if c not in cfg.images]
    if stray:
        raise SystemExit(f"train: --image-roi names {', '.join(stray)}, which is not among --images")
    if not cfg.image_roi:
        rois = {c: r for c, r in shrunk_rois(first_episode_meta).items() if c in cfg.images}
        cfg.image_roi = [":".join([c, *(f"{v:g}" for v in r)]) for c, r in rois.items()]
    return rois


def _init_from(meta, dcfg, model, device: str) -> None:
    """Copies the weights of the checkpoint ``meta`` into ``model``. It must be a diffusion policy
    with the network this run builds (inference settings may differ); otherwise one sentence
    names what differs, before anything trains."""
    if meta.kind != "diffusion":
        raise PolicyError(f"--init {meta.path} is a {meta.kind} checkpoint; it takes a diffusion policy's")
    mine = asdict(dcfg)
    inference_only = {"sampler", "inference_steps", "action_horizon", "task", "image_rois"}  # a new view fine-tunes
    diff = [f"{k}: {meta.config.get(k)!r} there, {v!r} here" for k, v in mine.items()
            if k not in inference_only and json.loads(json.dumps(meta.config.get(k))) != json.loads(json.dumps(v))]
    if diff:
        raise PolicyError(f"--init {meta.path} has another network than this run would train ({'; '.join(diff[:4])}); "
                          "give the same --obs/--images/--image-size/network flags, or train without --init")
    load_weights(model, meta.path / "model.safetensors", device)


def _save_state(run: Path, model, ema, opt, sched, step: int, rng_state: dict) -> None:
    import torch
    from safetensors.torch import save_file

    d = run / "train_state"
    tmp = run / "train_state.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()},
              str(tmp / "ema.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                "n_averaged": int(ema.n_averaged.item())}, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "rng": rng_state}))
    old = run / "train_state.old"
    if d.exists():
        d.replace(old)
    tmp.replace(d)
    shutil.rmtree(old, ignore_errors=True)


def _load_state(st: Path, model, ema, opt, sched, device: str) -> int:
    """Restores what ``_save_state`` wrote into ``st`` and returns its step. The weights are read
    as safetensors and optim.pt with ``weights_only`` (neither runs code); a missing, damaged or
    mismatched file is a PolicyError naming it, as a damaged checkpoint is, not a traceback."""
    import pickle

    import torch

    load_weights(model, st / "model.safetensors", device, RESUME_FIX)
    load_weights(ema.module, st / "ema.safetensors", device, RESUME_FIX)
    optim = st / "optim.pt"
    if not optim.is_file():
        raise PolicyError(f"{optim} is missing; {RESUME_FIX}")
    try:
        saved = torch.load(optim, map_location=device, weights_only=True)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        ema.n_averaged.fill_(saved["n_averaged"])
        return int(saved["step"])
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PolicyError(f"{optim} cannot be restored ({reason[:120]}); {RESUME_FIX}") from None


def _plot_curves(run: Path) -> Path | None:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    tr = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    sr = [(r["step"], r["success_rate"]) for r in rows if r.get("success_rate") is not None]
    if tr:
        ax[0].plot(*zip(*tr), label="train", alpha=0.8)
    if va:
        ax[0].plot(*zip(*va), "o-", label="validation")
    ax[0].set(xlabel="step", ylabel="denoising loss", yscale="log", title="loss")
    ax[0].legend()
    if sr:
        ax[1].plot(*zip(*sr), "o-", color="tab:green")
    ax[1].set(xlabel="step", ylabel="success rate", ylim=(-0.05, 1.05), title="env rollouts")
    fig.tight_layout()
    out = run / "curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def optimizers(model, lr: float, weight_decay: float, ema_decay: float):
    """The trainer's AdamW and the EMA copy of ``model`` that is saved and evaluated; the
    benchmarks time these same two, so that their steps are the trainer's. Fused: one kernel for
    all parameters, which halves the optimizer step on a 2-core CPU."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    return opt, AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)


def clipped_step(opt, params, max_norm: float) -> None:
    """``clip_grad_norm_(params, max_norm)`` then ``opt.step()``. The fused AdamW divides each
    gradient by its ``grad_scale`` as it reads it (the hook mixed precision's loss scaling uses), so
    the clipping's factor goes there instead of into a pass of its own over all 89M gradients of
    the peers' network: 8 ms of its 1.9 s CPU step. The parameters come out the same to float32's
    rounding (7e-9 apart after a step of that network: a division where clipping multiplies)."""
    import torch

    params = list(params)
    if not opt.defaults.get("fused"):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        return
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    opt.grad_scale = torch.clamp_min((norm + 1e-6) / max_norm, 1.0)   # clip_grad_norm_'s factor, inverted
    grads = _in_memory_order(params)
    try:
        opt.step()
    finally:
        del opt.grad_scale
        for p, g in grads:
            p.grad = g


def _in_memory_order(params) -> list:
    """Hands the fused AdamW each CPU gradient that is not contiguous (channels-last encoder
    weights, the U-Net's tap-major ones) as a contiguous view of the same memory, and returns
    (parameter, gradient) pairs to put back after the step. torch's CPU kernel updates parameter,
    gradient and moments element by element in memory order (they share the parameter's layout),
    but first copies a non-contiguous gradient into the contiguous layout and then does not use
    the copy: a wasted pass over 83M of the peers' 89M gradients a step, about 45 ms of its
    profile. The update is the same either way (a test checks it against clipping then a plain
    AdamW)."""
    import torch

    swapped = []
    for p in params:
        g = p.grad
        if (g is None or g.device.type != "cpu" or g.is_contiguous() or g.stride() != p.stride()
                or torch.empty_like(g, device="meta").stride() != g.stride()):   # not one dense block
            continue
        p.grad = g.as_strided(g.shape, torch.empty(g.shape, device="meta").stride(), g.storage_offset())
        swapped.append((p, g))
    return swapped


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Trains and returns the run directory (``best``/``last`` checkpoints inside)."""
    import torch

    from robot_learning.data.sampler import WindowSampler, WindowSpec
    from robot_learning.policies.checkpoint import save_checkpoint
    from robot_learning.policies.diffusion import DiffusionConfig, DiffusionPolicy, DiffusionRunner, relative_key
    from robot_learning.policies.normalizer import Normalizer

    ranks = distributed.init()
    rank, world, lead = ranks.rank, ranks.world, ranks.lead
    try:
        device = pick_device(cfg.device)
    except ValueError as e:
        raise SystemExit(f"train: {e}") from None
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    resume = Path(cfg.resume) if cfg.resume else None
    if resume is not None:
        saved = read_json(resume / "train_config.json", RESUME_FIX)
        unknown = sorted(set(saved) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise PolicyError(f"{resume / 'train_config.json'} has unknown keys {', '.join(unknown)}; {RESUME_FIX}")
        keep = {"steps": cfg.steps, "eval_every": cfg.eval_every, "device": cfg.device, "resume": cfg.resume,
                "out": str(resume), "dataset": cfg.dataset or saved["dataset"]}
        cfg = TrainConfig(**{**saved, **keep})
    run = resume or Path(cfg.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    ds = Dataset(cfg.dataset)
    train_eps, val_eps, task = _split(ds, cfg)
    obs_keys = cfg.obs or _default_obs(ds, train_eps[0])
    cfg.obs = list(obs_keys)
    recipe_raw = ds.episode(train_eps[0]).meta["recipe"]
    recipe = parse_recipe(recipe_raw, "dataset recipe")
    rate = recipe.steps.rate
    for k in obs_keys:
        if k not in recipe.steps.observations:
            raise SystemExit(f"train: '{k}' is not an observation of {cfg.dataset} "
                             f"(it has: {', '.join(recipe.steps.observations)})")
    pairs = [r.split("-", 1) for r in cfg.relative]
    for pair in pairs:
        if len(pair) != 2 or any(k not in obs_keys for k in pair):
            raise SystemExit(f"train: --relative takes a-b with a and b among --obs, not '{'-'.join(pair)}'")
    for cam in cfg.images:
        if cam not in recipe.streams or recipe.streams[cam].kind != "image":
            raise SystemExit(f"train: '{cam}' is not a camera stream of {cfg.dataset}")
    _check_action(cfg, recipe, obs_keys)
    rois = _image_rois(cfg, ds.episode(train_eps[0]).meta)
    if cfg.tactile not in TACTILE_MODES:
        raise SystemExit(f"train: --tactile is one of {', '.join(TACTILE_MODES)}, not '{cfg.tactile}'")
    spec = WindowSpec(cfg.obs_horizon, cfg.pred_horizon, tuple(obs_keys), tuple(cfg.images), tuple(cfg.image_size),
                      zero_pad_dims=tuple(range(TWIST_DIMS)) if cfg.action == "twist" else (), image_rois=rois)
    torch.manual_seed(cfg.seed + rank)
    try:
        train_set = WindowSampler(ds, spec, train_eps, progress=progress and rank == 0)
        val_set = WindowSampler(ds, spec, val_eps) if val_eps else None
    except ValueError as e:   # frames cut to another region than this run reads
        raise SystemExit(f"train: {e}") from None
    if cfg.action == "tcp_pose":
        for ep in train_set.episodes + (val_set.episodes if val_set else []):
            ep["action"] = pose_actions(ep["obs"][TCP_POSE_KEY], ep["action"])
    if len(train_set) == 0:
        raise SystemExit(f"train: the episodes of {cfg.dataset} have no steps")

    grids = taxel_grids(recipe, obs_keys, ds.episode(train_eps[0]).steps["obs"]) if cfg.tactile == "grid" else {}
    init = read_checkpoint(cfg.init) if cfg.init and resume is None else None
    if resume is not None:
        normalizer = Normalizer(read_checkpoint(run / "checkpoints" / "last").normalizer)
    elif init is not None:
        normalizer = Normalizer(init.normalizer)  # the weights were trained on its scaling
    else:
        normalizer = Normalizer()
        for k in obs_keys:
            x = train_set.all_obs(k)
            normalizer.fit(k, x.reshape(-1, grids[k][2]) if k in grids else x)   # grids: one scale per force axis
        for a, b in pairs:
            normalizer.fit(relative_key(a, b), train_set.all_obs(a)[:, :3] - train_set.all_obs(b)[:, :3])
        if cfg.action_origin:
            normalizer.fit("action", train_set.window_actions(cfg.action_origin))
            normalizer.fit("action_bounds", train_set.all_actions())
        else:
            normalizer.fit("action", train_set.all_actions())
    sample = train_set[0]
    image_shapes = {}
    for cam in cfg.images:
        img = sample[f"image/{cam}"][0]
        image_shapes[cam] = [img.shape[0], img.shape[1], img.shape[2] if img.ndim == 3 else 1]
    dcfg = DiffusionConfig(obs_dims={k: int(np.prod(sample[f"obs/{k}"].shape[1:])) for k in obs_keys},
                           action_dim=int(sample["action"].shape[-1]), image_shapes=image_shapes,
                           obs_horizon=cfg.obs_horizon, pred_horizon=cfg.pred_horizon,
                           action_horizon=cfg.action_horizon, down_dims=list(cfg.down_dims), sampler=cfg.sampler,
                           denoiser=cfg.denoiser, mlp_width=cfg.mlp_width, mlp_depth=cfg.mlp_depth,
                           image_encoder=cfg.image_encoder, shared_image_encoder=cfg.shared_image_encoder,
                           tactile_shapes=grids,
                           image_rois={c: list(r) for c, r in rois.items()},
                           relative=[list(p) for p in pairs],
                           inference_steps=cfg.inference_steps, prediction=cfg.prediction, dt=1.0 / rate, task=task,
                           action_kind=cfg.action, action_origin=cfg.action_origin)
    model = DiffusionPolicy(dcfg, normalizer).to(device)
    if init is not None:
        _init_from(init, dcfg, model, device)
    precision = resolve(cfg.precision, device, images=bool(cfg.images))
    opt, ema = optimizers(model, cfg.lr, cfg.weight_decay, cfg.ema_decay)
    spent = [0.0]  # seconds of training by rank 0's clock, agreed every step

    def lr_factor(step: int) -> float:
        """Linear warm-up, then cosine decay over the steps, or over the time budget if that ends first."""
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = step / cfg.steps
        if cfg.max_minutes > 0:
            progress = max(progress, spent[0] / (cfg.max_minutes * 60))
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    start, rng_seed = 0, cfg.seed * 1000  # alike on every rank: they deal out one permutation per epoch
    if resume is not None:
        start = _load_state(run / "train_state", model, ema, opt, sched, device)
        rng_seed += start
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda")
                                                        else None)
    writer = None
    if lead:
        from torch.utils.tensorboard import SummaryWriter

        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
        writer = SummaryWriter(str(run / "tb"))
        n_params = sum(p.numel() for p in model.parameters())
        print(f"train: {len(train_eps)} training and {len(val_eps)} validation episodes, {len(train_set)} windows; "
              f"obs {', '.join(obs_keys)}{'; images ' + ', '.join(cfg.images) if cfg.images else ''}; "
              f"{n_params / 1e6:.1f}M parameters on {device}{f' x{world}' if world > 1 else ''} ({precision}); "
              f"run dir {run}",
              flush=True)
    best_path = run / "best.json"
    best = json.loads(best_path.read_text()) if best_path.exists() else {"score": -math.inf}
    loaders = cfg.loaders or (4 if device.startswith("cuda") else 0)
    indices = distributed.batch_indices(len(train_set), cfg.batch_size, rng_seed, ranks)
    if loaders > 0:
        batches = distributed.prefetched(indices, lambda idx: _to(_collate(train_set, idx), device), loaders)
    else:
        batches = (_to(_collate(train_set, idx), device) for idx in indices)
    step_net = torch.compile(net) if cfg.compile else net  # compiled at its first call
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train diffusion", unit="step",
               disable=not (progress and lead), dynamic_ncols=True)
    t_window, n_window, losses, t_data = time.perf_counter(), 0, [], 0.0
    # losses stay on the device until they are logged: reading one every step (.item()) makes the
    # host wait for the GPU, and a small network's step is then launch time plus GPU time, not the larger
    # of the two
    t_start = time.monotonic()  # the budget counts training, not loading
    cpu = CpuClock(run / "metrics.jsonl")
    tuner = AdaptiveThreads(log=bar.write) if cfg.threads < 0 and device == "cpu" else None
    for step in bar:
        t_step = time.perf_counter()
        model.train()
        batch = next(batches)
        t_data += time.perf_counter() - t_step
        with autocast(device, precision):
            try:
                loss = step_net(batch)
            except Exception as e:  # noqa: BLE001  (compilation fails inside the first call)
                if step_net is net:
                    raise
                tqdm.write(f"train: torch.compile failed ({str(e).strip().splitlines()[0][:160]}); training eagerly")
                step_net = net
                loss = net(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clipped_step(opt, model.parameters(), 1.0)
        # rank 0's clock for every rank: one learning rate, and all stop, evaluate and save at one step
        spent[0] = distributed.agree(time.monotonic() - t_start, ranks)
        sched.step()
        ema.update_parameters(model)
        losses.append(loss.detach())
        if tuner is not None:
            tuner.step_done(time.perf_counter() - t_step)
        n_window += cfg.batch_size
        done = step + 1
        out_of_time = cfg.max_minutes > 0 and spent[0] > cfg.max_minutes * 60
        if lead and (done % 50 == 0 or done == cfg.steps):
            elapsed = time.perf_counter() - t_window
            train_loss = float(torch.stack(losses).mean())
            sps, data_share = n_window / elapsed, t_data / elapsed  # data_share: the step waiting for its batch
            writer.add_scalar("train/loss", train_loss, done)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], done)
            writer.add_scalar("train/samples_per_s", sps, done)
            writer.add_scalar("train/data_share", data_share, done)
            bar.set_postfix(loss=f"{train_loss:.4f}", sps=f"{sps:.0f}", data=f"{data_share:.0%}")
            with (run / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"step": done, "train_loss": train_loss, "samples_per_s": sps,
                                    "data_share": data_share}) + "\n")
            losses, n_window, t_window, t_data = [], 0, time.perf_counter(), 0.0
        evaluate_now = (cfg.eval_every > 0 and done % cfg.eval_every == 0) or done == cfg.steps or out_of_time
        if evaluate_now:
            # every rank takes its part of the validation windows and of the rollouts
            row = {"step": done, "val_loss": None, "success_rate": None, "cpu_s": cpu()}
            policy = ema.module.eval()
            if val_set is not None and len(val_set):
                g = torch.Generator().manual_seed(0)
                idx = distributed.mine(torch.randperm(len(val_set), generator=g)[:512].tolist(), ranks)
                vals = []
                rng_state = torch.get_rng_state()  # the same noise at every evaluation; training's stream goes on
                torch.manual_seed(1234)
                with torch.no_grad():
                    for b in range(0, len(idx), cfg.batch_size):
                        chunk = idx[b:b + cfg.batch_size]
                        with autocast(device, precision):
                            loss_b = float(policy.loss(_to(_collate(val_set, chunk), device)))
                        vals.append((loss_b * len(chunk), len(chunk)))
                torch.set_rng_state(rng_state)
                vals = distributed.gather(vals, ranks)
                row["val_loss"] = sum(v for v, _ in vals) / max(1, sum(n for _, n in vals))
            if cfg.eval_episodes > 0 and task:
                from robot_learning.train.rollout import rollout

                seeds = distributed.mine([cfg.eval_seed + i for i in range(cfg.eval_episodes)], ranks)
                runner = DiffusionRunner(policy, device, noise_scale=cfg.eval_noise_scale)
                res = rollout(runner, recipe, task, seeds, progress=progress and lead,
                              max_steps=cfg.eval_max_steps) if seeds else []
                res = distributed.gather([(r.success, r.steps) for r in res], ranks)
                row["success_rate"] = float(np.mean([ok for ok, _ in res]))
                row["eval_steps"] = float(np.mean([n for _, n in res]))  # how long the rollouts ran
                row["eval_episodes"] = len(res)
        if lead and evaluate_now:
            for key, name in (("val_loss", "val/loss"), ("success_rate", "eval/success_rate")):
                if row[key] is not None:
                    writer.add_scalar(name, row[key], done)
            extra = {"recipe": recipe_raw, "train": {"step": done, "dataset": str(cfg.dataset), **row}}
            ckpt = save_checkpoint(policy, run / "checkpoints" / f"step_{done:07d}", extra)
            for name in ("last",):
                shutil.rmtree(run / "checkpoints" / name, ignore_errors=True)
                shutil.copytree(ckpt, run / "checkpoints" / name)
            score = row["success_rate"] if row["success_rate"] is not None else -(row["val_loss"] or 0.0)
            if score >= best["score"]:
                best = {"score": score, "step": done, **row}
                shutil.rmtree(run / "checkpoints" / "best", ignore_errors=True)
                shutil.copytree(ckpt, run / "checkpoints" / "best")
                best_path.write_text(json.dumps(best))
            _save_state(run, model, ema, opt, sched, done, {})
            with (run / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            msg = f"step {done}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step" and v is not None)
            tqdm.write(f"train: {msg}; saved {ckpt}")
        if out_of_time:
            if lead:
                tqdm.write(f"train: stopping at step {done}: the {cfg.max_minutes:g} min budget is spent")
            break
    bar.close()
    if lead:
        writer.close()
        _plot_curves(run)
        print(f"train: done; best checkpoint {run / 'checkpoints' / 'best'} (step {best.get('step')}); "
              f"TensorBoard: tensorboard --logdir {run / 'tb'}", flush=True)
    if world > 1:  # a rank whose weights drifted from the others' would show here
        print(f"train: rank {rank}: stopped after step {done}, weights checksum {distributed.checksum(ema.module)}",
              flush=True)
    distributed.close(ranks)
    return run
