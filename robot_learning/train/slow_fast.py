"""``robot-learning train slow-fast --base CKPT --dataset D``: the fast half of a slow-fast
policy (``policies.slow_fast``) on a frozen diffusion policy, from the demonstrations.

1. The slow policy plans a chunk from every window of the demonstrations (batched, as it is
   deployed: its sampler, steps and noise scale), and its executed part is kept.
2. Each step a chunk covers becomes one example: the newest observations the fast policy reads
   at that step (state, wrench, taxel grids), the planned action due then, and the target
   correction, what the demonstrator did minus that plan, bounded by ``scale``. "What the
   demonstrator did" is what it commanded (``labels``: commanded, the default): the pose its
   twist asked for a step on. The pose the arm reached instead lags the command where contact
   resists, so as labels it taught the fast policy to ease off exactly where the plan had to
   push on (0 of 25, docs/learning.md).
3. The fast policy regresses the correction (mean squared error in units of the bound), on a
   held-out share of the episodes as well; then seeded env rollouts of the slow policy alone
   and of slow-fast, on the same seeds and the same execution path.

Progress: a tqdm bar, ``metrics.jsonl``; the checkpoint in ``<run>/checkpoints/last``, and the
untrained fast policy (no correction: the slow policy alone) in ``checkpoints/slow_alone``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm


@dataclass
class SlowFastTrainConfig:
    base: str = ""                    # the slow diffusion checkpoint (frozen)
    dataset: str = ""                 # demonstrations (with the fast policy's observations recorded)
    # what the fast policy reads: touch only by default. Cloned from demonstrations alone with the
    # TCP pose among them it copied their small last steps from wherever the arm was and held the
    # peg above the hole (0 of 25); with --dagger (the sim's expert labelling its own states) the
    # pose is what makes it work: 50 of 50, and 50 of 50 behind a 0.25 s late planner (docs/learning.md)
    obs: list[str] = field(default_factory=lambda: ["wrench.data", "tactile_left.data", "tactile_right.data"])
    labels: str = "commanded"         # the demonstrator's action: commanded (its twist, a step on) or reached
    scale: float = 0.25               # the largest correction, as a share of each action's half-range
    dims: list[int] = field(default_factory=list)   # the action dims it may correct (empty: all)
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    val_fraction: float = 0.1
    noise_scale: float = -1.0         # the slow policy's sampling noise (< 0: its checkpoint's default)
    # DAgger rounds after cloning (train.dagger): slow-fast rolled out on dagger_episodes seeded
    # episodes, every tick labelled by the scripted expert, then dagger_steps more updates on it all
    dagger: int = 0
    dagger_episodes: int = 10
    dagger_steps: int = 1500
    dagger_seed: int = 3_000_000
    eval_episodes: int = 20
    eval_seed: int = 2_000_000
    seed: int = 0
    threads: int = 0
    out: str = ""


def _plans(runner, sampler, batch_size: int, progress: bool) -> np.ndarray:
    """[N, horizon, A] the slow policy's executed actions from every window, in sampler order."""
    out = []
    for i in tqdm(range(0, len(sampler), batch_size), desc="slow plans", unit="batch", disable=not progress):
        items = [sampler[j] for j in range(i, min(i + batch_size, len(sampler)))]
        win = {k: np.stack([it[k] for it in items]) for k in items[0] if k.startswith(("obs/", "image/"))}
        out.append(runner.executed(runner.chunks(win)))
    return np.concatenate(out)


def examples(sampler, plans: np.ndarray, keys: list[str]) -> dict[str, np.ndarray]:
    """One row per (window, step of its executed chunk) inside the episode: the newest values of
    ``keys`` at that step, the planned action and the demonstrated one (its ``label``), and the
    episode."""
    horizon = plans.shape[1]
    obs, slow, demo, episode = [], [], [], []
    for i, (e, t) in enumerate(sampler.index):
        ep = sampler.episodes[e]
        for j in range(min(horizon, ep["n"] - t)):
            obs.append(np.concatenate([ep["obs"][k][t + j] for k in keys]))
            slow.append(plans[i, j])
            demo.append(ep["label"][t + j])
            episode.append(e)
    return {"obs": np.asarray(obs, np.float32), "slow": np.asarray(slow, np.float32),
            "demo": np.asarray(demo, np.float32), "episode": np.asarray(episode)}


def train_slow_fast(cfg: SlowFastTrainConfig, progress: bool = True) -> Path:
    import torch

    from robot_learning.data.sampler import WindowSampler, WindowSpec
    from robot_learning.data.schema import parse_recipe
    from robot_learning.data.store import Dataset
    from robot_learning.evaluate import evaluate_env
    from robot_learning.policies.registry import load_policy
    from robot_learning.policies.slow_fast import FastConfig, FastPolicy
    from robot_learning.runtime.actions import TCP_POSE_KEY, commanded_pose_actions, pose_actions
    from robot_learning.train.diffusion import taxel_grids

    if not cfg.base or not cfg.dataset:
        raise SystemExit("train slow-fast: --base (a diffusion checkpoint) and --dataset are both needed")
    if cfg.labels not in ("commanded", "reached"):
        raise SystemExit(f"train slow-fast: --labels is commanded or reached, not '{cfg.labels}'")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run = Path(cfg.out or f"runs/slow_fast-{time.strftime('%Y%m%d-%H%M%S')}")
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    options = {} if cfg.noise_scale < 0 else {"noise_scale": cfg.noise_scale}
    slow = load_policy(cfg.base, **options)
    if not hasattr(slow, "policy") or not hasattr(slow, "executed"):
        raise SystemExit(f"train slow-fast: {cfg.base} is not a diffusion policy (the slow half plans chunks)")
    dcfg = slow.policy.cfg
    ds = Dataset(cfg.dataset)
    eps = [i for i in ds.indices if ds.episode(i).meta.get("status") == "complete"
           and ds.episode(i).meta.get("success") is not False]
    steps_obs = ds.episode(eps[0]).steps["obs"]
    missing = [k for k in cfg.obs if k not in steps_obs]
    if missing:
        raise SystemExit(f"train slow-fast: {cfg.dataset} has no {', '.join(missing)} among its observations")
    keys = list(dict.fromkeys([*dcfg.obs_dims, *cfg.obs]))
    size = tuple(next(iter(dcfg.image_shapes.values()))[:2]) if dcfg.image_shapes else (96, 96)
    spec = WindowSpec(dcfg.obs_horizon, dcfg.pred_horizon, tuple(keys), tuple(dcfg.image_shapes), size)
    sampler = WindowSampler(ds, spec, eps, progress=progress)
    for ep in sampler.episodes:
        if dcfg.action_kind != "tcp_pose":
            ep["label"] = ep["action"]
            continue
        reached = pose_actions(ep["obs"][TCP_POSE_KEY], ep["action"])   # as the slow policy was trained on them
        ep["label"] = (commanded_pose_actions(ep["obs"][TCP_POSE_KEY], ep["action"], slow.spec.dt)
                       if cfg.labels == "commanded" else reached)
        ep["action"] = reached
    data = examples(sampler, _plans(slow, sampler, 64, progress), cfg.obs)

    lo, hi = slow.policy.action_bounds()
    scale = (cfg.scale * (hi - lo) / 2).astype(np.float32)
    if cfg.dims:   # the others keep the slow policy's value (a zero bound)
        scale[np.setdiff1d(np.arange(scale.size), cfg.dims)] = 0.0
    grids = taxel_grids(parse_recipe(ds.episode(eps[0]).meta["recipe"], "dataset recipe"), cfg.obs, steps_obs)
    dims = [int(np.prod(steps_obs[k].shape[1:])) for k in cfg.obs]
    fcfg = FastConfig(obs_keys=list(cfg.obs), obs_dims=dims, action_dim=int(lo.size), scale=scale.tolist(),
                      action_low=lo.tolist(), action_high=hi.tolist(), tactile_shapes=grids, hidden=list(cfg.hidden))
    model = FastPolicy(fcfg)
    mean, std = data["obs"].mean(0), data["obs"].std(0)
    at = 0
    for k, d in zip(cfg.obs, dims):   # a grid: one spread per force axis over all its taxels
        if k in grids:
            c = grids[k][2]
            v = data["obs"][:, at:at + d].reshape(-1, c)
            mean[at:at + d], std[at:at + d] = np.tile(np.zeros(c), d // c), np.tile(v.std(0), d // c)
        at += d
    model.set_obs_normalization(mean, std)
    # the untrained fast policy corrects nothing: the slow policy alone, through the same per-tick
    # path as slow-fast (a tcp_pose policy alone would go to the arm as timed plans instead)
    alone = model.save(run / "checkpoints" / "slow_alone", cfg.base)

    rng = np.random.default_rng(cfg.seed)
    n_eps = len(sampler.episodes)
    val_eps = set(rng.permutation(n_eps)[:int(round(n_eps * cfg.val_fraction))].tolist()) if n_eps >= 5 else set()
    free = scale > 1e-9   # a dimension the demonstrations never moved has no correction to learn
    bound, cols = torch.as_tensor(scale[free]), torch.as_tensor(np.flatnonzero(free))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    metrics = (run / "metrics.jsonl").open("a")
    done = 0   # updates so far, over every round

    def fit(data: dict[str, np.ndarray], steps: int, what: str) -> dict:
        """``steps`` updates on ``data`` (held-out episodes kept out); the first row is the
        plans' own error (no correction), the last the fast policy's."""
        nonlocal done
        is_val = np.isin(data["episode"], list(val_eps))
        target = np.clip((data["demo"] - data["slow"])[:, free] / scale[free], -1.0, 1.0)
        t = {k: torch.as_tensor(v) for k, v in (("obs", data["obs"]), ("slow", data["slow"]), ("u", target))}
        train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)

        def loss_on(idx) -> torch.Tensor:
            i = torch.as_tensor(idx)
            return torch.nn.functional.mse_loss(model(t["obs"][i], t["slow"][i])[:, cols] / bound, t["u"][i])

        with torch.no_grad():
            row = {"step": done, "train_loss": float(loss_on(train_idx)),
                   "val_loss": float(loss_on(val_idx)) if len(val_idx) else None, "examples": len(train_idx)}
        metrics.write(json.dumps(row) + "\n")
        held = "-" if row["val_loss"] is None else f"{row['val_loss']:.3f}"
        tqdm.write(f"train slow-fast: {what}: {len(data['obs'])} examples ({len(val_eps)} demonstrations held "
                   f"out); error now {row['train_loss']:.3f} (train), {held} (held out), in units of the bound")
        bar = tqdm(range(steps), desc="train slow-fast", unit="step", disable=not progress, dynamic_ncols=True)
        for i in bar:
            loss = loss_on(rng.choice(train_idx, min(cfg.batch_size, len(train_idx)), replace=False))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done % 100 == 0 or i + 1 == steps:
                row = {"step": done, "train_loss": float(loss.detach())}
                if len(val_idx):
                    with torch.no_grad():
                        row["val_loss"] = float(loss_on(val_idx))
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "step"})
        return row

    tqdm.write(f"train slow-fast: obs {', '.join(cfg.obs)} (grids: {', '.join(grids) or 'none'}), labels "
               f"{cfg.labels}, {n_eps} demonstrations")
    fit(data, cfg.steps, "from the demonstrations")
    if cfg.dagger:
        from robot_learning.policies.slow_fast import FastCorrection
        from robot_learning.train.dagger import expert_examples

        recipe = parse_recipe(ds.episode(eps[0]).meta["recipe"], "dataset recipe")
        task = ds.episode(eps[0]).meta.get("task") or slow.spec.task
        for r in range(cfg.dagger):
            seeds = [cfg.dagger_seed + r * cfg.dagger_episodes + i for i in range(cfg.dagger_episodes)]
            new, rate = expert_examples(slow, FastCorrection(model.eval()), list(cfg.obs), scale, recipe, task,
                                        seeds, progress)
            model.train()
            metrics.write(json.dumps({"step": done, "dagger_round": r + 1, "dagger_success": rate}) + "\n")
            data = {k: np.concatenate([data[k], new[k]]) for k in data}
            fit(data, cfg.dagger_steps, f"DAgger round {r + 1} (its rollouts: {rate:.0%} successful)")
    path = model.eval().save(run / "checkpoints" / "last", cfg.base,
                              extra={"train": {"steps": done, "dagger_rounds": cfg.dagger}})
    if cfg.eval_episodes:
        seeds = {"seed": cfg.eval_seed}
        res = {name: evaluate_env(ck, cfg.eval_episodes, **seeds, noise_scale=options.get("noise_scale"))
               for name, ck in (("slow", alone), ("slow_fast", path))}
        for k, v in res.items():   # each episode, for paired comparisons
            (run / f"eval_{k}.json").write_text(json.dumps({kk: vv for kk, vv in v.items() if kk != "frames"}))
        row = {"step": done, **{f"{k}_success": v["success_rate"] for k, v in res.items()}}
        metrics.write(json.dumps(row) + "\n")
        tqdm.write(f"train slow-fast: over {cfg.eval_episodes} seeded env episodes: slow alone "
                   f"{row['slow_success']:.0%}, slow-fast {row['slow_fast_success']:.0%}")
    metrics.close()
    tqdm.write(f"train slow-fast: {path}")
    return run
