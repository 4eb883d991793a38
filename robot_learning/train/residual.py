"""``robot-learning train residual --base CKPT``: a residual policy on a frozen diffusion
policy, trained with PPO in parallel workcell envs (``policies.residual``).

``--envs`` envs step together (``rl.base_envs``): the base's chunks for all of them come from
one batched inference, the residual's corrections from one batched forward. The reward is
the sim's success (1 on the step it is reached, which ends the episode), so PPO learns to
succeed where the base fails, and sooner; ``--shaping`` adds the change in the task's progress
measure at each step (potential-based shaping: the best policy stays the same, the signal
dense). Evaluation runs the deterministic residual (no exploration) on seeded episodes; step 0
is the base alone, on the same seeds.

Progress: a tqdm bar, TensorBoard scalars, ``metrics.jsonl``, ``curves.png`` and a video per
evaluation; ``checkpoints/last`` (with the optimizer) after each evaluation, so ``--resume
RUN_DIR`` goes on where a killed run stopped, and ``checkpoints/best``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

WARMUP_STEPS = 20   # per env: the base alone, to fit the residual's input normalization


@dataclass
class ResidualTrainConfig:
    base: str = ""                    # the diffusion checkpoint to correct (its weights never change)
    task: str = "pick_place"               # the workcell task the envs run
    obs: list[str] = field(default_factory=list)   # state keys the residual sees (default: the task's)
    scale: float = 0.1                # the largest correction, as a share of each action's half-range in the data
    envs: int = 8                     # envs stepped together
    steps: int = 200_000              # env steps, all envs together
    rollout: int = 64                 # steps per env between PPO updates
    epochs: int = 4                   # passes over each rollout per PPO update
    minibatches: int = 4              # per epoch
    lr: float = 3e-4                  # Adam, for the actor and the critic
    gamma: float = 0.99               # discount per control step
    gae_lambda: float = 0.95          # GAE's lambda (advantages)
    clip: float = 0.2                 # PPO's ratio clip (and the value clip)
    ent_coef: float = 0.0             # entropy bonus in the loss
    # An update's epochs stop once the policy has moved this far (approximate KL); 0.03-0.04 per
    # update with clip fractions near 0.3 went with the drift after the best evaluation.
    target_kl: float = 0.05
    anneal_lr: bool = False           # the learning rate falls linearly to 0 at ``steps`` (as CleanRL's PPO)
    noise_scale: float = 1.0          # the base samples from this much noise (a setting kept with the checkpoint)
    # Potential-based shaping: each step's reward gains shaping x the change in the task's progress
    # measure (minus the distances left, metres; ``Task.progress``), discounted as the return is.
    # 0: the success reward alone, which gave PPO too little to climb on the weak pick_place base.
    shaping: float = 0.0
    init_log_std: float = -1.0        # exploration at the start, in units of the bound
    hidden: list[int] = field(default_factory=lambda: [256, 256])   # the residual's MLP (actor and critic)
    max_episode_steps: int = 0        # the episodes' time limit (0: the task's own)
    randomization: str = ""           # domain randomization file (sim/randomization.yaml), train and eval
    eval_every: int = 20_000          # env steps between evaluations (seeded episodes, the best kept)
    eval_episodes: int = 20           # per evaluation, seeds 1,000,000 on
    video: bool = True                # an MP4 of each evaluation's first episode
    seed: int = 0                     # envs' and the sampling's seed
    out: str = "runs"                 # a run directory is made under it
    resume: str = ""                  # a run directory to continue, with its own config (a longer --steps applies)
    threads: int = 0                  # torch CPU threads (0: torch's default)


def _states(obs: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    n = len(next(iter(obs.values())))
    return np.concatenate([np.asarray(obs[k], np.float32).reshape(n, -1) for k in keys], axis=1)


def evaluate(model, base, cfg: ResidualTrainConfig, keys: list[str], episodes: int, seed: int,
             video: Path | None = None) -> dict:
    """Success rate and mean length of ``episodes`` seeded episodes with the deterministic correction."""
    import torch

    from robot_learning.rl.base_envs import BaseDrivenEnvs

    n = max(1, min(cfg.envs, episodes))
    envs = BaseDrivenEnvs(base, cfg.task, n, keys, cfg.randomization, cfg.max_episode_steps)
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    done_eps = np.zeros(n, int)
    steps = np.zeros(n, int)
    results: list[tuple[bool, int]] = []
    frames = []
    obs = envs.reset(seed)
    try:
        while (done_eps < quota).any():
            base_a = envs.base_actions()
            with torch.no_grad():
                x = model.inputs(torch.as_tensor(_states(obs, keys)), torch.as_tensor(base_a, dtype=torch.float32))
                corr = model.correction(model.actor(x)).double().numpy()
            st = envs.step(base_a + corr)
            if video is not None and done_eps[0] == 0:
                frames.append(envs.vec.envs[0].unwrapped.render())
            steps += 1
            for i in np.flatnonzero(st.terminated | st.truncated):
                if done_eps[i] < quota[i]:
                    results.append((bool(st.success[i]), int(steps[i])))
                done_eps[i] += 1
                steps[i] = 0
            obs = st.obs
    finally:
        envs.close()
    if video is not None and frames:
        from robot_learning.data.view import write_video

        write_video(frames, video, 1.0 / base.spec.dt)
    return {"eval_success": float(np.mean([s for s, _ in results])),
            "eval_length": float(np.mean([n for _, n in results]))}


def _plot(run: Path) -> Path | None:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    ev = [r for r in rows if "eval_success" in r]
    if not ev:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    ax[0].plot([r["env_steps"] for r in ev], [r["eval_success"] for r in ev], "o-", color="tab:green",
               label="base + residual")
    ax[0].axhline(ev[0]["eval_success"], color="gray", ls="--", label="base alone")
    ax[0].set(xlabel="env steps", ylabel="success rate", ylim=(-0.05, 1.05), title="evaluation")
    ax[0].legend()
    tr = [r for r in rows if "train_success" in r]
    ax[1].plot([r["env_steps"] for r in tr], [r["train_success"] for r in tr], ".-", alpha=0.8)
    ax[1].set(xlabel="env steps", ylabel="success rate", ylim=(-0.05, 1.05), title="training episodes (exploring)")
    up = [r for r in rows if "value_loss" in r]
    ax[2].plot([r["env_steps"] for r in up], [r["correction_rms"] for r in up], label="correction rms / bound")
    ax[2].plot([r["env_steps"] for r in up], [r["std"] for r in up], label="exploration std / bound")
    ax[2].set(xlabel="env steps", title="the residual")
    ax[2].legend()
    fig.tight_layout()
    out = run / "curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def train_residual(cfg: ResidualTrainConfig, progress: bool = True) -> Path:
    """Trains and returns the run directory (``checkpoints/last``, ``best``, curves, videos)."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from robot_learning.policies.residual import ResidualConfig, ResidualPolicy, load_residual
    from robot_learning.rl.base_envs import BaseDrivenEnvs, observed_keys, shaping_reward
    from robot_learning.rl.ppo import PPOConfig, Rollout, ppo_update
    from robot_learning.rl.residual_env import base_action_range, load_base
    from robot_learning.sim.tasks import make_task
    from robot_learning.train.cpu_clock import CpuClock
    from robot_learning.train.resume import resumed_config, save_config
    from robot_learning.train.sac import WORKCELL_OBS

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    resume = Path(cfg.resume) if cfg.resume else None
    if resume:
        cfg = resumed_config(cfg, resume, "residual")
    if not cfg.base:
        raise SystemExit("train residual: --base is required: the diffusion checkpoint to correct")
    base = load_base(cfg.base, cfg.noise_scale, "train residual")
    keys = cfg.obs or WORKCELL_OBS.get(cfg.task) or ["ee_pose.data"]
    task = make_task(cfg.task)
    env_keys = observed_keys(task, keys, cfg.shaping, "train residual")
    run = resume or Path(cfg.out) / f"residual-{time.strftime('%Y%m%d-%H%M%S')}"
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    envs = BaseDrivenEnvs(base, cfg.task, cfg.envs, env_keys, cfg.randomization, cfg.max_episode_steps)
    obs = envs.reset(cfg.seed * 100_000)
    start, best = 0, {"eval_success": -1.0}
    if resume:
        model, meta = load_residual(resume / "checkpoints" / "last")
        start, best = int(meta["env_steps"]), meta.get("best", best)
        model.train()
    else:
        lo, hi = base.policy.action_bounds()
        scale = cfg.scale * base_action_range(base)[1]
        states = []
        for _ in range(WARMUP_STEPS):  # the base alone, for the input normalization
            states.append(_states(obs, keys))
            obs = envs.step(envs.base_actions()).obs
        states = np.concatenate(states)
        model = ResidualPolicy(ResidualConfig(list(keys), states.shape[1], base.spec.action_dim, scale.tolist(),
                                              lo.tolist(), hi.tolist(), list(cfg.hidden), cfg.init_log_std))
        model.set_obs_normalization(states.mean(0), states.std(0))
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(run, cfg, "residual")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-5)
    if resume and (resume / "checkpoints" / "last" / "optim.pt").exists():
        opt.load_state_dict(torch.load(resume / "checkpoints" / "last" / "optim.pt", weights_only=True))
    ppo = PPOConfig(cfg.epochs, cfg.minibatches, cfg.clip, 0.5, cfg.ent_coef, 0.5, cfg.gamma, cfg.gae_lambda,
                    cfg.target_kl)
    writer = SummaryWriter(str(run / "tb"))
    cpu = CpuClock(run / "metrics.jsonl")
    metrics = (run / "metrics.jsonl").open("a")
    print(f"train residual: {cfg.task} on top of {cfg.base}; residual sees {', '.join(keys)}; bound "
          f"{cfg.scale:g} of each action's half-range; {cfg.envs} envs; run dir {run}", flush=True)

    def log(row: dict, step: int) -> None:
        row = {"env_steps": step, "robot_time_s": step * base.spec.dt, "cpu_s": cpu(), **row}
        for k, v in row.items():
            if k != "env_steps" and isinstance(v, (int, float)):
                writer.add_scalar(k, v, step)
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()

    def checkpoint(step: int, name: str) -> None:
        d = model.save(run / "checkpoints" / name, cfg.base,
                       extra={"env": f"workcell/{cfg.task}", "env_steps": step, "best": best,
                              "base_options": {"noise_scale": float(cfg.noise_scale)},
                              "train": {"step": step, "algorithm": "ppo"}})
        if name == "last":
            torch.save(opt.state_dict(), d / "optim.pt.partial")
            (d / "optim.pt.partial").replace(d / "optim.pt")

    def run_eval(step: int) -> dict:
        model.eval()
        video = run / "videos" / f"step_{step:07d}.mp4" if cfg.video else None
        ev = evaluate(model, base, cfg, keys, cfg.eval_episodes, 1_000_000, video)
        model.train()
        log(ev, step)
        tqdm.write(f"train residual: {step} env steps: success {ev['eval_success']:.0%} "
                   f"(mean length {ev['eval_length']:.0f})")
        return ev

    if start == 0:
        ev = run_eval(0)  # the zero-initialized residual: the base alone
        best = {**ev, "env_steps": 0}
        checkpoint(0, "best")
    per_update = cfg.rollout * cfg.envs
    step = start
    bar = tqdm(total=cfg.steps, initial=start, desc="train residual", unit="step", disable=not progress,
               dynamic_ncols=True)
    ro = Rollout(cfg.rollout, cfg.envs, model.cfg.obs_dim + model.cfg.action_dim, model.cfg.action_dim)
    base_a = envs.base_actions()
    ended, succeeded = 0, 0
    try:
        while step < cfg.steps:
            ro.t = 0
            corr_sq = []
            for _ in range(cfg.rollout):
                with torch.no_grad():
                    x = model.inputs(torch.as_tensor(_states(obs, keys)), torch.as_tensor(base_a, dtype=torch.float32))
                    d = model.dist(x)
                    u = d.sample()
                    logp = d.log_prob(u).sum(-1)
                    v = model.value(x)
                    corr = model.correction(u).double().numpy()
                st = envs.step(base_a + corr)
                corr_sq.append(np.mean((corr / np.asarray(model.cfg.scale)) ** 2))
                done = st.terminated | st.truncated
                # an ended episode's own last state (st.obs holds the next one's first)
                shaped = shaping_reward(task, obs, st.final, cfg.shaping, cfg.gamma)
                ro.add(x.numpy(), u.numpy(), logp.numpy(), st.reward + shaped, done, v.numpy())
                ended += int(done.sum())
                succeeded += int(st.success.sum())
                obs = st.obs
                base_a = envs.base_actions()
            with torch.no_grad():
                last_v = model.value(model.inputs(torch.as_tensor(_states(obs, keys)),
                                                  torch.as_tensor(base_a, dtype=torch.float32))).numpy()
            if cfg.anneal_lr:  # from the step, so a resumed run continues the same schedule
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * max(0.0, 1.0 - step / cfg.steps)
            upd = ppo_update(model, opt, ro, last_v, ppo, rng)
            step += per_update
            bar.update(per_update)
            row = {**upd, "lr": opt.param_groups[0]["lr"], "correction_rms": float(np.sqrt(np.mean(corr_sq))),
                   "std": float(model.log_std.exp().mean().detach())}
            if ended:
                row["train_success"] = succeeded / ended
                bar.set_postfix(success=f"{succeeded / ended:.0%}")
                ended = succeeded = 0
            log(row, step)
            if step // cfg.eval_every != (step - per_update) // cfg.eval_every or step >= cfg.steps:
                ev = run_eval(step)
                if ev["eval_success"] > best["eval_success"]:
                    best = {**ev, "env_steps": step}
                    checkpoint(step, "best")
                checkpoint(step, "last")
                _plot(run)
    finally:
        bar.close()
        metrics.close()
        writer.close()
        envs.close()
    (run / "best.json").write_text(json.dumps(best, indent=1))
    print(f"train residual: done; best {best}; curves {run / 'curves.png'}", flush=True)
    return run
