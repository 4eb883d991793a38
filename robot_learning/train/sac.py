"""``robot-learning train sac``: the SAC learner on a gymnasium env, without ROS.

Two kinds of env:
- any gymnasium env with a Box action space and an array or dict observation
  (``--env Pendulum-v1``; dict keys chosen with ``--obs``), so the learner can be compared with
  other projects on their own envs;
- the workcell (``--env workcell/peg_in_hole``), observed through the *recipe's keys*
  (``ee_pose.data``, ``peg_pose.data``, ... from ``sim.topics``, the values the sim node
  publishes), so demonstrations from a recorded zarr dataset (``--demos``) and an online
  buffer from the env share one layout, and a policy trained here reads what the robot sends.
  ``--images front_color,wrist_color`` adds cameras (the recipe's image streams, rendered at
  the camera's resolution and shrunk to ``--image-size`` as the recorded frames are), with
  random-shift augmentation; ``--obs`` then usually keeps only what a robot knows of itself.

On the workcell, ``--intervene`` adds a scripted operator who takes over when the policy
strays (``rl.intervene``; its corrections join both buffers), ``--rlif`` makes each takeover
the reward, and ``--reward classifier:PATH`` a trained success classifier.

Demonstrations and online data are sampled half and half (RLPD); the online buffer and the
optimizers are saved with every checkpoint, so ``--resume RUN_DIR`` goes on where a killed run
stopped. Progress: a tqdm bar, TensorBoard scalars, ``metrics.jsonl``, ``curves.png`` and a
rollout video per evaluation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_learning.rl.replay import ObsSpec, ReplayBuffer, demo_buffer, rlpd_batch
from robot_learning.rl.rlif import RlifRewards, q_range

WORKCELL_OBS = {  # state keys per task: the arm, the gripper and the objects it works with
    "peg_in_hole": ["ee_pose.data", "gripper_state.position", "peg_pose.data", "hole_pose.data"],
    "peg_insert": ["ee_pose.data", "peg_pose.data", "hole_pose.data"],  # the gripper stays closed
    "pick_place": ["ee_pose.data", "gripper_state.position", "cube_pose.data", "target_pose.data"],
}


@dataclass
class SACTrainConfig:
    env: str = "Pendulum-v1"          # a gymnasium id, or workcell/<task>
    steps: int = 20000                # env steps (robot time = steps x the env's period)
    demos: str = ""                   # zarr dataset of demonstrations (workcell envs)
    demo_ratio: float = 0.5           # share of each batch drawn from the demonstrations
    demo_successes_only: bool = True  # leave out demonstrations that failed
    demo_drop_idle: bool = True       # leave out the demonstrations' idle steps (the operator's pauses)
    pretrain_steps: int = 0           # offline steps on the demos first: a BC actor and its critic (WSRL)
    bc_weight: float = 0.0            # behaviour cloning on the demo rows during online learning
    backup_entropy: bool = True       # the entropy bonus in the critic's target (SAC's default)
    intervene: bool = False           # workcell: a scripted operator takes over when the policy strays
    takeover_steps: int = 15          # with intervene: steps per takeover (0: until the operator's plan is done)
    rlif: bool = False                # with intervene: the reward is -1 when a takeover starts, else 0 (RLIF)
    max_episode_steps: int = 0        # the env's time limit (0: the task's own); long enough for the demos' pace
    reward: str = "sim"               # workcell: "sim" (the sim's success), or "classifier:PATH" (as on a robot)
    obs: list[str] = field(default_factory=list)   # state keys (default: the task's, or every Box of a dict env)
    images: list[str] = field(default_factory=list)  # workcell: camera streams of the recipe (front_color, ...)
    image_size: int = 64              # square frames the encoder sees (the recorded ones resized to it)
    randomization: str = ""           # workcell: domain randomization file (sim/randomization.yaml), train and eval
    start_steps: int = 1000           # uniform random actions first (without demonstrations)
    learning_starts: int = 500
    batch_size: int = 256
    utd: int = 1
    n_critics: int = 2                # 10 (RLPD) on a GPU
    discrete_gripper: bool = False    # the gripper by its own critic: open, stay or close (HIL-SERL's)
    target_subsample: int = 2
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    lr: float = 3e-4
    gamma: float = 0.99
    init_temperature: float = 0.1
    buffer_size: int = 200_000
    eval_every: int = 5000
    eval_episodes: int = 10
    video: bool = True
    seed: int = 0
    out: str = "runs"
    resume: str = ""
    threads: int = 0
    device: str = "auto"              # where the updates run: cuda (images want it), cpu; auto: the GPU if any


@dataclass
class DsrlTrainConfig(SACTrainConfig):
    """``train dsrl``: SAC in the noise space of a frozen diffusion policy, one step per chunk."""
    base: str = ""                    # the diffusion checkpoint to steer (its weights never change)
    noise_bound: float = 1.5          # the agent's noise stays within +-this (a standard normal's mostly does)
    # Potential-based shaping per chunk: the reward gains shaping x (gamma x the task's progress
    # after the chunk - before it), progress being minus the distances left (``Task.progress``)
    shaping: float = 0.0
    env: str = "workcell/pick_place"
    steps: int = 3000                 # agent steps, each one chunk of the base
    start_steps: int = 200
    learning_starts: int = 200
    eval_every: int = 500


@dataclass
class ResidualSacTrainConfig(SACTrainConfig):
    """``train residual-sac``: SAC learning a bounded correction of a frozen diffusion policy's
    action at every step (``rl.residual_env``); the off-policy counterpart of ``train residual``."""
    base: str = ""                    # the diffusion checkpoint to correct (its weights never change)
    scale: float = 0.1                # the largest correction, as a share of each action's half-range in the data
    noise_scale: float = 1.0          # the base samples from this much noise (a setting kept with the checkpoint)
    env: str = "workcell/pick_place"
    start_steps: int = 0              # the agent acts from the start: its untrained correction is zero
    centre_weight: float = 0.0        # pull of the correction's mean toward zero (SACConfig.centre_weight)
    # potential-based shaping per step: the reward gains shaping x (gamma x the task's progress after
    # the step - before it), progress being minus the distances left (``Task.progress``)
    shaping: float = 0.0
    eval_every: int = 3000
    # train (and evaluate) through the policy server's engine, the path the residual deploys on
    # (rl.residual_env.ServedResidualAdapter); off: the plain env, one chunk and one twist a step
    served: bool = False
    # served: seconds each chunk takes, drawn per chunk from LOW,HIGH (the graph's: 72 ms median, 140 ms p99)
    latency: str = "0.04,0.16"
    # served: OBS,CMD: the most seconds the transport adds to what the server reads and to the command's way
    lags: str = "0.01,0.02"
    # served: seconds a success must hold for the reward (the evaluations judge as the evaluator does, 0.5)
    hold: float = 1.0


class GymAdapter:
    """A gymnasium env with observations keyed for the buffer: array envs as ``obs``, dict envs by their keys."""

    def __init__(self, env_id: str, keys: list[str], render: bool, max_steps: int = 0):
        import gymnasium as gym

        self.env = gym.make(env_id, render_mode="rgb_array" if render else None, max_episode_steps=max_steps or None)
        space = self.env.observation_space
        if isinstance(space, gym.spaces.Dict):
            keys = keys or [k for k, s in space.spaces.items() if isinstance(s, gym.spaces.Box) and s.dtype != np.uint8]
            dims = tuple(int(np.prod(space[k].shape)) for k in keys)
            self.keyed = lambda o: {k: o[k] for k in keys}
        else:
            keys, dims = ["obs"], (int(np.prod(space.shape)),)
            self.keyed = lambda o: {"obs": o}
        self.spec = ObsSpec(tuple(keys), dims)
        box = self.env.action_space
        if not isinstance(box, gym.spaces.Box):
            raise SystemExit(f"train sac: {env_id} has a {type(box).__name__} action space; SAC needs a Box")
        self.low, self.high = box.low.astype(float).tolist(), box.high.astype(float).tolist()
        self.dt = 1.0 / float(self.env.metadata.get("render_fps") or 1)
        self.task = env_id

    def reset(self, seed: int):
        o, info = self.env.reset(seed=seed)
        return self.keyed(o), info

    def executed(self, a: np.ndarray) -> np.ndarray:
        return a

    def step(self, a):
        o, r, term, trunc, info = self.env.step(a)
        return self.keyed(o), float(r), bool(term), bool(trunc), info

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


class WorkcellAdapter:
    """The workcell env observed through the recipe's keys (what a recorded dataset holds)."""

    def __init__(self, task: str, keys: list[str], render: bool, max_steps: int = 0, reward: str = "sim",
                 images: list[str] = (), image_size: int = 64, randomization: str = ""):
        from robot_learning.sim.env import WorkcellEnv
        from robot_learning.sim.recipe_env import check_keys, workcell_recipe

        self.recipe = workcell_recipe()
        keys = keys or WORKCELL_OBS.get(task) or ["ee_pose.data", "gripper_state.position"]
        check_keys(self.recipe, keys, "train sac")
        cameras = [n for n, s in self.recipe.streams.items() if s.kind == "image" and s.encoding == "rgb8"]
        for cam in images:
            if cam not in cameras:
                raise SystemExit(f"train sac: --images takes the recipe's colour streams ({', '.join(cameras)}), "
                                 f"not '{cam}'")
        self.keys, self.images, self.image_size = keys, list(images), (int(image_size), int(image_size))
        self.classifier = None
        if reward.startswith("classifier:"):
            from robot_learning.policies.checkpoint import PolicyError
            from robot_learning.rl.classifier import LiveReward, load_classifier

            try:
                model, _ = load_classifier(reward.split(":", 1)[1])
            except PolicyError as e:
                raise SystemExit(f"train sac: --reward: {e}") from None
            if model.cfg.image_keys:
                raise SystemExit("train sac: in the env, --reward classifier takes a state classifier "
                                 "(an image one runs on the graph, in reward_node)")
            self.classifier = LiveReward(model)
        elif reward != "sim":
            raise SystemExit(f"train sac: --reward is 'sim' or 'classifier:PATH', not '{reward}'")
        self.env = WorkcellEnv(task, randomization=randomization or None)
        self.env.observe = self._obs  # the recipe's keys, at the moment the env's sensors take them
        if max_steps:
            self.env.cell.task.max_steps = max_steps
        self.task = task
        o, _ = self.reset(0)
        self.spec = ObsSpec(tuple(keys), tuple(int(np.size(o[k])) for k in keys), tuple(self.images),
                            (*self.image_size, 3))
        self.low = self.env.action_space.low.astype(float).tolist()
        self.high = self.env.action_space.high.astype(float).tolist()
        self.dt = 1.0 / self.env.control_hz
        self.action_dims = list(self.env.cell.task.action_dims)

    def _obs(self) -> dict[str, np.ndarray]:
        from robot_learning.sim.recipe_env import recipe_observation

        return recipe_observation(self.env, self.recipe, self.keys, self.images, self.image_size)

    def reset(self, seed: int):
        obs, info = self.env.reset(seed=seed)  # self._obs, taken by the env (env.observe)
        if self.classifier is not None:
            self.classifier.reset()
        return obs, info

    def executed(self, a: np.ndarray) -> np.ndarray:
        """The action as it will reach the arm: clipped to the action space and restricted as the
        task allows (peg_insert: gripper closed, roll and pitch held, the box). The buffers keep
        this one, and the intervening operator judges it."""
        c = self.env.cell
        return c.task.shape_action(np.clip(a, self.low, self.high), *c.tcp_pose(), self.dt).astype(np.float32)

    def step(self, a):
        obs, r, term, trunc, info = self.env.step(np.asarray(a, float))
        if self.classifier is not None:
            # the classifier's verdict is the reward and ends the episode, as on a robot;
            # info["success"] stays the sim's truth, which evaluation counts
            r = self._classify()
            term = r > 0 or "protective_stop" in info
        return obs, float(r), bool(term), bool(trunc), info

    def _classify(self) -> float:
        from robot_learning.sim.topics import topic_sample

        c = self.classifier
        for stream in c.streams:
            c.add(stream, self.env.cell.time, topic_sample(self.env.cell, self.recipe.streams[stream].topic))
        _, success = c.tick()
        return float(success)

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


def make_env(cfg: SACTrainConfig, render: bool = False, evaluation: bool = False):
    if isinstance(cfg, DsrlTrainConfig):
        if not cfg.base:
            raise SystemExit("train dsrl: --base is required: the diffusion checkpoint to steer")
        if not cfg.env.startswith("workcell/") or cfg.images or cfg.intervene or cfg.demos:
            raise SystemExit("train dsrl: runs on workcell/<task> from the state, without --images, --intervene "
                             "or --demos")
        from robot_learning.rl.dsrl_env import DsrlAdapter

        task = cfg.env.split("/", 1)[1]
        return DsrlAdapter(cfg.base, task, cfg.obs or WORKCELL_OBS.get(task) or ["ee_pose.data"],
                           cfg.max_episode_steps, cfg.randomization, cfg.noise_bound, cfg.shaping, cfg.gamma)
    if isinstance(cfg, ResidualSacTrainConfig):
        if not cfg.base:
            raise SystemExit("train residual-sac: --base is required: the diffusion checkpoint to correct")
        if not cfg.env.startswith("workcell/") or cfg.images or cfg.intervene or cfg.demos or cfg.reward != "sim":
            raise SystemExit("train residual-sac: runs on workcell/<task> from the state and the sim's reward, "
                             "without --images, --intervene, --demos or --reward")
        from robot_learning.rl.residual_env import ResidualAdapter, ServedResidualAdapter

        task = cfg.env.split("/", 1)[1]
        keys = cfg.obs or WORKCELL_OBS.get(task) or ["ee_pose.data"]
        if not cfg.served:
            return ResidualAdapter(cfg.base, task, keys, cfg.max_episode_steps, cfg.randomization, cfg.scale,
                                   cfg.noise_scale, cfg.shaping, cfg.gamma)
        from robot_learning.sim.tasks import SUCCESS_SETTLE_S
        from robot_learning.train.rollout import seconds_range

        try:
            timing = {"latency": seconds_range(cfg.latency), "lags": seconds_range(cfg.lags)}
        except ValueError as e:
            raise SystemExit(f"train residual-sac: --latency / --lags: {e}") from None
        return ServedResidualAdapter(cfg.base, task, keys, cfg.max_episode_steps, cfg.randomization, cfg.scale,
                                     cfg.noise_scale, cfg.shaping, cfg.gamma,
                                     settle=SUCCESS_SETTLE_S if evaluation else cfg.hold, **timing)
    if cfg.env.startswith("workcell/"):
        return WorkcellAdapter(cfg.env.split("/", 1)[1], cfg.obs, render, cfg.max_episode_steps, cfg.reward,
                               cfg.images, cfg.image_size, cfg.randomization)
    if cfg.images or cfg.randomization:
        raise SystemExit("train sac: --images and --randomization are for workcell envs")
    return GymAdapter(cfg.env, cfg.obs, render, cfg.max_episode_steps)


def evaluate(agent, env, episodes: int, seed: int, video: Path | None = None) -> dict:
    """Deterministic episodes (the actor's mean action): success rate, return, length; the first one on video."""
    returns, successes, lengths, frames = [], [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed + i)
        total, done, n, info, grip = 0.0, False, 0, {}, env.low[-1]
        while not done:
            a = agent.act(env.spec.agent_obs(obs), deterministic=True, gripper_now=grip)
            grip = float(a[-1])
            obs, r, term, trunc, info = env.step(a)
            total, n, done = total + r, n + 1, term or trunc
            if video is not None and i == 0:
                frames.append(env.render())
        returns.append(total)
        successes.append(bool(info.get("success", False)))
        lengths.append(n)
    if video is not None and frames and frames[0] is not None:
        from robot_learning.data.view import write_video

        write_video(frames, video, max(1.0, 1.0 / env.dt))
    return {"eval_return": float(np.mean(returns)), "eval_success": float(np.mean(successes)),
            "eval_length": float(np.mean(lengths))}


def _plot(run: Path) -> Path | None:
    from robot_learning.train.compare import moving_average, read_metrics

    rows = read_metrics(run)
    ev = [r for r in rows if "eval_return" in r]
    if not ev:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 3.6))
    t = [r["robot_time_s"] / 60 for r in ev]
    ax[0].plot(t, [r["eval_success"] for r in ev], "o-", color="tab:green")
    ax[0].set(xlabel="robot time (min)", ylabel="success rate", ylim=(-0.05, 1.05), title="evaluation")
    ax[1].plot(t, [r["eval_return"] for r in ev], "o-")
    ax[1].set(xlabel="robot time (min)", ylabel="return", title="evaluation return")
    tr = [r for r in rows if "q_mean" in r]
    ax[2].plot([r["robot_time_s"] / 60 for r in tr], [r["q_mean"] for r in tr], alpha=0.8)
    ax[2].set(xlabel="robot time (min)", ylabel="Q", title="mean Q of sampled transitions")
    eps = [r for r in rows if "episode_success" in r]
    key, label = ("intervention_rate", "share of steps intervened") if any("intervention_rate" in r for r in eps) \
        else ("episode_success", "training episode success")
    te = [r["robot_time_s"] / 60 for r in eps]
    vals = np.array([r.get(key, 0.0) for r in eps])
    if len(vals):
        ax[3].plot(te, vals, ".", alpha=0.3)
        ax[3].plot(te, moving_average(vals, 10), "-")
    ax[3].set(xlabel="robot time (min)", ylabel=label, ylim=(-0.05, 1.05), title="training episodes")
    fig.tight_layout()
    out = run / "curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _to_torch(batch: dict[str, np.ndarray], device: str):
    import torch

    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


def train_sac(cfg: SACTrainConfig, progress: bool = True) -> Path:
    """Trains and returns the run directory (``checkpoints/last``, ``best``, curves, videos)."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from robot_learning.nets.device import pick_device
    from robot_learning.policies.registry import base_ref
    from robot_learning.policies.sac import SAC, SACConfig, load_sac
    from robot_learning.train.cpu_clock import CpuClock
    from robot_learning.train.resume import resumed_config, save_config

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    resume = Path(cfg.resume) if cfg.resume else None
    trainer = {DsrlTrainConfig: "dsrl", ResidualSacTrainConfig: "residual-sac"}.get(type(cfg), "sac")
    try:
        device = pick_device(cfg.device)
    except ValueError as e:
        raise SystemExit(f"train {trainer}: {e}") from None
    if resume:
        cfg = resumed_config(cfg, resume, trainer)
        run = resume
    else:
        run = Path(cfg.out) / f"{trainer.replace('-', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    env = make_env(cfg, render=cfg.video)
    eval_env = make_env(cfg, render=cfg.video, evaluation=True)
    spec = env.spec
    demo = None
    if cfg.demos:
        try:  # room for the operator's corrections, which join the demonstrations
            demo = demo_buffer(cfg.demos, spec, env.low, env.high, cfg.demo_successes_only, cfg.demo_drop_idle,
                               room=cfg.steps if cfg.intervene else 0, progress=progress, rlif=cfg.rlif)
        except ValueError as e:
            raise SystemExit(f"train sac: --demos: {e}") from None
    online = ReplayBuffer(cfg.buffer_size, spec, len(env.low))
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    start, episode, best = 0, 0, {"eval_success": -1.0, "eval_return": -np.inf}
    if resume:
        agent, meta = load_sac(resume / "checkpoints" / "last", device, optimizers=True)
        online.load(resume / "checkpoints" / "last" / "online.npz")
        if demo is not None:  # the operator's corrections belong with the demonstrations again
            kept = online.in_order()
            demo.add_batch({k: v[kept["intervention"]] for k, v in kept.items()})
        start, episode = int(meta["env_steps"]), int(meta["episodes"])
        best = meta.get("best", best)
        rng = np.random.default_rng(cfg.seed + start)
    else:
        scfg = SACConfig(obs_dim=spec.state_dim, action_low=env.low, action_high=env.high, hidden=list(cfg.hidden),
                         n_critics=cfg.n_critics, target_subsample=cfg.target_subsample, gamma=cfg.gamma, lr=cfg.lr,
                         init_temperature=cfg.init_temperature, utd=cfg.utd, bc_weight=cfg.bc_weight,
                         discrete_gripper=cfg.discrete_gripper,
                         centre_weight=getattr(cfg, "centre_weight", 0.0),
                         backup_entropy=cfg.backup_entropy, q_range=q_range(cfg.gamma) if cfg.rlif else [],
                         image_keys=list(spec.image_keys),
                         image_size=list(spec.image_shape[:2]),
                         action_dims=getattr(env, "action_dims", []))  # a workcell task's free dims
        if getattr(env, "return_range", None) and not cfg.rlif:  # an env on a base: its returns' range
            scfg.bound_to_returns(env.return_range)
        agent = SAC(scfg, device)
        if isinstance(cfg, ResidualSacTrainConfig):
            agent.actor.zero_mean()  # no correction until it learns one: the base, exactly
        if demo is not None:  # normalize by what the demonstrations span
            st = demo.in_order()["state"]
            agent.set_obs_normalization(st.mean(0), st.std(0))
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(run, cfg, trainer)
    writer = SummaryWriter(str(run / "tb"))
    cpu = CpuClock(run / "metrics.jsonl")
    metrics = (run / "metrics.jsonl").open("a")
    print(f"train sac: {cfg.env}, obs {', '.join(spec.state_keys)} ({spec.state_dim}), action {len(env.low)}; "
          f"{'demos ' + cfg.demos + f' ({len(demo)} transitions); ' if demo is not None else ''}"
          f"utd {cfg.utd}, {cfg.n_critics} critics; run dir {run}", flush=True)

    def log(row: dict, step: int) -> None:
        row = {"env_steps": step, "robot_time_s": step * env.dt, "cpu_s": cpu(), **row}
        for k, v in row.items():
            if k not in ("env_steps",) and isinstance(v, (int, float)):
                writer.add_scalar(k, v, step)
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()

    kind = {"dt": env.dt}
    if isinstance(cfg, DsrlTrainConfig):
        kind = {"policy": "dsrl", "base": base_ref(cfg.base), "dt": env.base.spec.dt}
    elif isinstance(cfg, ResidualSacTrainConfig):  # the agent's state is obs_keys and the base's action
        kind = {"policy": "residual_sac", "base": base_ref(cfg.base), "dt": env.dt, "obs_keys": env.keys,
                "bound": env.bound.tolist(), "base_options": {"noise_scale": float(cfg.noise_scale)}}

    def checkpoint(step: int, name: str = "last") -> None:
        d = agent.save(run / "checkpoints" / name, extra={"env": cfg.env, "obs_keys": list(spec.state_keys),
                                                          "env_steps": step, "episodes": episode, "best": best,
                                                          **kind}, optimizers=name == "last")
        if name == "last":
            online.save(d / "online.npz")

    if cfg.pretrain_steps and start == 0 and not resume:
        if demo is None:
            raise SystemExit("train sac: --pretrain-steps needs --demos (it learns from them before any robot time)")
        for _ in tqdm(range(cfg.pretrain_steps), desc="pretrain on demos", unit="step", disable=not progress,
                      dynamic_ncols=True):
            upd = agent.pretrain(_to_torch(demo.sample(cfg.batch_size, rng), device))
        video = run / "videos" / "pretrained.mp4" if cfg.video else None
        ev = evaluate(agent, eval_env, cfg.eval_episodes, 1_000_000, video)
        log({**upd, **ev}, 0)
        tqdm.write(f"train sac: after {cfg.pretrain_steps} offline steps on the demos (no robot time): "
                   f"success {ev['eval_success']:.0%}, return {ev['eval_return']:.2f}")
        checkpoint(0, "pretrained")
    warm = demo is not None   # the agent starts from data: it acts from the first step, normalized by the demos
    if warm and cfg.pretrain_steps and cfg.demo_ratio == 0 and not cfg.intervene:
        # WSRL: online without retaining the offline data (also after a resume)
        tqdm.write(f"train sac: --demo-ratio 0 after pretraining: the {len(demo)} demonstration transitions are "
                   "let go")
        demo = None
    if isinstance(cfg, ResidualSacTrainConfig) and start == 0:  # the untrained residual: the base alone
        ev = evaluate(agent, eval_env, cfg.eval_episodes, 1_000_000)
        log(ev, 0)
        tqdm.write(f"train residual-sac: the base alone: success {ev['eval_success']:.0%}")
        best = {**ev, "env_steps": 0}   # a residual that ends worse than the base leaves the base as best
        checkpoint(0, "best")
    operator = None
    if cfg.intervene or cfg.rlif:
        if not isinstance(env, WorkcellAdapter):
            raise SystemExit("train sac: --intervene needs a workcell env (its operator is the workcell's expert)")
        if cfg.rlif and not cfg.intervene:
            raise SystemExit("train sac: --rlif rewards interventions; add --intervene")
        from robot_learning.rl.intervene import InterveningOperator
        from robot_learning.sim.env import expert_obs_from_env

        operator = InterveningOperator(env.task, takeover_steps=cfg.takeover_steps)
    rlif = RlifRewards() if cfg.rlif else None
    obs, _ = env.reset(cfg.seed * 100_000 + episode)
    ep_return, ep_len, grip, ep_takeovers, ep_intervened = 0.0, 0, env.low[-1], 0, 0
    upd: dict = {}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train sac", unit="step",
               disable=not progress, dynamic_ncols=True)
    try:
        for step in bar:
            if not warm and step < cfg.start_steps:
                a = rng.uniform(env.low, env.high).astype(np.float32)
            else:
                a = agent.act(env.spec.agent_obs(obs), gripper_now=grip)
            a = env.executed(a)  # what the arm would get: what the operator judges and the buffers keep
            intervening = started = False
            if operator is not None:
                a, intervening, started = operator.step(expert_obs_from_env(env.env, ep_len * env.dt), a)
                a = env.executed(a)
            nobs, r, term, trunc, info = env.step(a)
            ready = [{"obs": obs, "action": a, "reward": r, "next_obs": nobs, "terminal": term,
                      "intervention": intervening, "grip_before": grip, "seq": step}]
            if rlif is not None:  # each step held back one, for the takeover's -1 to land on it
                ready = rlif.step(ready[0], started, "protective_stop" in info) + (
                    rlif.flush() if term or trunc else [])
            for tr in ready:
                online.add(**tr)
                if tr["intervention"] and demo is not None:
                    demo.add(**tr)
                ep_return += float(tr["reward"])
            grip = float(a[-1])
            obs, ep_len = nobs, ep_len + 1
            ep_takeovers, ep_intervened = ep_takeovers + started, ep_intervened + intervening
            if term or trunc:
                episode += 1
                row = {"episode_return": ep_return, "episode_length": ep_len,
                       "episode_success": float(bool(info.get("success", False)))}
                if operator is not None:
                    row.update(intervention_rate=ep_intervened / ep_len, takeovers=ep_takeovers)
                    operator.reset()
                log(row, step + 1)
                bar.set_postfix(ret=f"{ep_return:.1f}", ep=episode)
                obs, _ = env.reset(cfg.seed * 100_000 + episode)
                ep_return, ep_len, grip, ep_takeovers, ep_intervened = 0.0, 0, env.low[-1], 0, 0
            if step + 1 >= cfg.learning_starts and len(online) + (len(demo) if demo else 0) >= cfg.batch_size:
                if not warm and step + 1 == cfg.learning_starts:  # normalize by the first data
                    st = online.in_order()["state"]
                    agent.set_obs_normalization(st.mean(0), st.std(0))
                upd = agent.update(_to_torch(rlpd_batch(online, demo, cfg.demo_ratio, cfg.batch_size * cfg.utd, rng),
                                             device))
                if (step + 1) % 250 == 0:
                    log(upd, step + 1)
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                video = run / "videos" / f"step_{step + 1:07d}.mp4" if cfg.video else None
                ev = evaluate(agent, eval_env, cfg.eval_episodes, 1_000_000, video)
                log(ev, step + 1)
                tqdm.write(f"train sac: step {step + 1} ({(step + 1) * env.dt / 60:.1f} min of robot time): "
                           f"success {ev['eval_success']:.0%}, return {ev['eval_return']:.2f}")
                if (ev["eval_success"], ev["eval_return"]) > (best["eval_success"], best["eval_return"]):
                    best = {**ev, "env_steps": step + 1}
                    checkpoint(step + 1, "best")
                checkpoint(step + 1)
                _plot(run)
    finally:
        bar.close()
        metrics.close()
        writer.close()
        env.close()
        eval_env.close()
    (run / "best.json").write_text(json.dumps(best, indent=1))
    print(f"train sac: done; best {best}; curves {run / 'curves.png'}", flush=True)
    return run

