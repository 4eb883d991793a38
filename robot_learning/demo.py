"""``make demo`` / ``robot-learning demo``: the whole pipeline on the sim workcell.

1. collect: the scripted operator plays a person at a teleop device (launch/teleop_collect:
   sim, command mux, recorder); every episode lands in a zarr dataset under datasets/;
2. train: a low-dimensional diffusion policy on that dataset (``robot-learning train``),
   with env rollouts during training;
3. deploy and evaluate: launch/deploy_policy (sim, mux, policy server, policy evaluator)
   runs seeded episodes the policy has never seen, through real DDS;
4. report: runs/demo-<time>/report.md with success rates, the policy server's latency,
   training curves, trajectories, a rollout video and its contact sheet.

``--quick`` is the same pipeline cut down to run in the test suite.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

# what a low-dimensional policy observes: the TCP, the fingers, the objects (ground truth in sim)
LOWDIM_OBS = ["ee_pose.data", "gripper_state.position", "cube_pose.data", "target_pose.data"]
# and where the cube and the target are seen from the TCP (computed inside the policy)
RELATIVE = ["cube_pose.data-ee_pose.data", "target_pose.data-ee_pose.data"]


@dataclass
class DemoPlan:
    episodes: int = 40               # 50 left 5 min of training: 3229 steps, 50% (docs/learning.md)
    train_steps: int = 30000         # an upper bound: training stops when its share of the time is spent
    budget_min: float = 14.0         # the whole demo; training gets what collection and evaluation leave
    batch_size: int = 128
    # an MLP denoiser over the flattened chunk: 4-5x the U-Net's steps a second on 2 cores, and on
    # one collection 90% (10000 steps) and 98% (20000) in the env against the half-width U-Net's
    # 74% at the 4000 steps the budget gave it (docs/learning.md, "A smaller denoiser")
    denoiser: str = "mlp"
    down_dims: tuple[int, ...] = (32, 64, 128)  # the U-Net's widths, with denoiser="unet"
    lr: float = 1e-3
    # training's own evaluation, once at the end (the checkpoint deployed): a failing rollout
    # runs to its step limit, and at 1000-step intervals they took a quarter of the budget
    eval_every: int = 20000
    train_eval_episodes: int = 5
    train_eval_max_steps: int = 150  # policy steps per training-time rollout (the expert needs about 90)
    eval_episodes: int = 10
    episode_timeout: float = 20.0    # the expert takes about 9 s
    real_time_factor: float = 2.0    # collection (faster and the expert's own loop lags: it overshoots)
    eval_real_time_factor: float = 1.0  # deployment runs at real time, as on a robot
    state_rate: float = 100.0
    # tactile, wrench and object poses while collecting (the workcell's 125 Hz otherwise): the
    # policy reads the object poses at 10 Hz steps, and those streams were most of what the
    # recorder and the sim handled, time a loaded machine takes from training
    tactile_rate: float = 50.0
    # the operator's hand-like noise (1.0: a teleoperator's). Demonstrations that drift off the
    # path and come back teach the way back: on the same seeds and training, 0.5 gave 70% in the
    # env and 0.3 60-64%, against 32-44% with none (docs/learning.md, "Spread over collections")
    noise: float = 0.5
    action: str = "tcp_pose"         # TCP pose plans: robust to the inference latency a shared CPU adds
    # sampled from the initial noise's mode, in training's evaluations and when deployed: a policy
    # trained for minutes is far better there (docs/learning.md, "Sampling from lower noise")
    noise_scale: float = 0.0

    @classmethod
    def quick(cls) -> DemoPlan:
        return cls(episodes=3, train_steps=60, batch_size=64, eval_every=60, train_eval_episodes=1, eval_episodes=2,
                   train_eval_max_steps=30, episode_timeout=8.0, budget_min=0.0, eval_real_time_factor=2.0)


def plot_trajectories(episode_dir: Path, out: Path, title: str) -> Path | None:
    """Top view and height of each episode's TCP path (green: success)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = sorted(episode_dir.glob("episode_*/episode.npz"))
    if not eps:
        return None
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for p in eps:
        tr = np.load(p)["trajectory"]
        if tr.size == 0:
            continue
        ok = json.loads((p.parent / "result.json").read_text())["success"]
        ax[0].plot(tr[:, 2], tr[:, 1], color="tab:green" if ok else "tab:red", alpha=0.7)
        ax[1].plot(tr[:, 0], tr[:, 3], color="tab:green" if ok else "tab:red", alpha=0.7)
    ax[0].set(xlabel="y (m)", ylabel="x (m)", title=f"{title}: TCP path, top view (green: success)")
    ax[0].set_aspect("equal")
    ax[0].invert_xaxis()
    ax[1].set(xlabel="time in episode (s)", ylabel="TCP height (m)", title="TCP height")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def frames_sheet(frames: list[np.ndarray], out: Path, n: int = 6) -> Path:
    """``n`` frames spread over a rollout, side by side."""
    from PIL import Image

    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    Image.fromarray(np.concatenate([frames[i] for i in idx], axis=1)).save(out)
    return out


def _latency_rows(diag: dict) -> list[str]:
    names = {"align": "observation window built", "infer": "inference (policy call)",
             "obs_to_chunk": "observation to chunk ready (sim time)", "tick": "control tick",
             "tick_interval": "control period (wall clock; 50 Hz of sim time)"}
    rows = ["| stage | p50 (ms) | p99 (ms) | max (ms) |", "|---|---|---|---|"]
    for k, label in names.items():
        if f"{k}.p50_ms" in diag:
            rows.append(f"| {label} | {float(diag[f'{k}.p50_ms']):.1f} | {float(diag[f'{k}.p99_ms']):.1f} | "
                        f"{float(diag[f'{k}.max_ms']):.1f} |")
    if "jitter_ms" in diag:
        rows.append(f"\nCommand jitter (std of the control period): {float(diag['jitter_ms']):.1f} ms; stale actions "
                    f"dropped: {diag.get('dropped_stale_actions')}, chunks refused: {diag.get('rejected_chunks')}.")
    return rows


def _outcome(ep: dict) -> str:
    if ep.get("protective_stop"):
        return f"failure: protective stop ({ep['protective_stop']})"
    return "success" if ep["success"] else "failure"


def _stops(episodes: list[dict]) -> str:
    """Episodes the arm ended itself (blocked or collided) are worth a look, not only a count."""
    n = sum(bool(e.get("protective_stop")) for e in episodes)
    return f" ({n} ended by a protective stop)" if n else ""


def write_report(run_dir: Path, dataset: Path, collected: dict, train_run: Path, evaluated: dict,
                 plan: DemoPlan, timings: dict[str, float]) -> Path:
    from robot_learning.data.store import Dataset
    from robot_learning.evaluate import evaluate_env
    from robot_learning.policies.registry import read_checkpoint

    best = json.loads((train_run / "best.json").read_text()) if (train_run / "best.json").exists() else {}
    ckpt = train_run / "checkpoints" / "best"
    last_step = read_checkpoint(train_run / "checkpoints" / "last").train["step"]
    env = evaluate_env(ckpt, 1, seed=2000, video=run_dir / "rollout.mp4", noise_scale=plan.noise_scale)
    ds = Dataset(dataset).summary()
    lines = [f"# Sim workcell demo, {datetime.now():%Y-%m-%d %H:%M}", "",
             "Demonstrations collected through ROS 2, a diffusion policy trained on them, deployed with "
             "`launch/deploy_policy.launch.yaml` and evaluated on seeded episodes it never saw.", "",
             "| stage | result | time |", "|---|---|---|",
             f"| collect (scripted operator at the teleop topics, hand noise {plan.noise:g}) | "
             f"{collected['success_rate']:.0%} successful over "
             f"{len(collected['episodes'])} episodes; dataset `{dataset}` ({ds['episodes']} episodes, {ds['steps']} "
             f"steps) | {timings['collect'] / 60:.1f} min |",
             f"| train (low-dim diffusion, {plan.denoiser} denoiser, {last_step} steps) | "
             f"best checkpoint at step {best.get('step')}: "
             f"env success {best.get('success_rate') if best.get('success_rate') is not None else 'n/a'} | "
             f"{timings['train'] / 60:.1f} min |",
             f"| deploy + evaluate through the ROS graph | **{evaluated['success_rate']:.0%}** over "
             f"{len(evaluated['episodes'])} seeded episodes{_stops(evaluated['episodes'])} | "
             f"{timings['evaluate'] / 60:.1f} min |", "",
             f"Observations: {', '.join(LOWDIM_OBS)}; relative positions {', '.join(RELATIVE)}; "
             f"actions: {plan.action}; sampled with noise scale {plan.noise_scale:g} (1: as trained). "
             f"Checkpoint: `{ckpt}`.", "",
             "## Policy server latency (from /policy/diagnostics during the evaluation)", ""]
    lines += _latency_rows(evaluated.get("diagnostics", {})) or ["(no diagnostics received)"]
    lines += ["", "## Training", "", "![training curves](train_curves.png)", ""]
    if (train_run / "curves.png").exists():
        (run_dir / "train_curves.png").write_bytes((train_run / "curves.png").read_bytes())
    for name, d in (("collected", run_dir / "collect"), ("evaluated", run_dir / "evaluate")):
        if plot_trajectories(d, run_dir / f"{name}_trajectories.png", name):
            lines += [f"![{name} trajectories]({name}_trajectories.png)", ""]
    if env["frames"]:
        frames_sheet(env["frames"], run_dir / "rollout_sheet.png")
        lines += ["## A rollout (gymnasium env, same server engine)", "",
                  f"Seed 2000: {_outcome(env['episodes'][0])}. Video: `rollout.mp4`.", "",
                  "![rollout](rollout_sheet.png)", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def run_demo(quick: bool = False, out: str = "runs", dataset: str | None = None, plan: DemoPlan | None = None,
             task: str = "pick_place") -> int:
    from robot_learning.collect import collect_scripted
    from robot_learning.data.cli import print_info
    from robot_learning.data.store import Dataset
    from robot_learning.evaluate import evaluate_graph, sim_pace_note
    from robot_learning.paths import resolve
    from robot_learning.train.diffusion import TrainConfig, train

    plan = plan or (DemoPlan.quick() if quick else DemoPlan())
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = resolve(out) / f"demo-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ds_path = resolve(dataset or f"datasets/demo-{stamp}.zarr")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    timings: dict[str, float] = {}
    t_demo = time.monotonic()
    print(f"demo: report -> {run_dir}, dataset -> {ds_path}", flush=True)
    try:
        print(f"demo [1/4] collect: launch/teleop_collect.launch.yaml (sim, mux, recorder), scripted operator "
              f"at the teleop topics, {plan.episodes} episodes of {task}", flush=True)
        t0 = time.monotonic()
        collected = collect_scripted(task, plan.episodes, ds_path, run_dir / "collect", run_dir / "collect.log",
                                     real_time_factor=plan.real_time_factor, cameras="none",
                                     state_rate=plan.state_rate, noise=plan.noise, tactile_rate=plan.tactile_rate)
        timings["collect"] = time.monotonic() - t0
        print_info(Dataset(ds_path))
        print(f"demo [2/4] train: diffusion policy on {', '.join(LOWDIM_OBS)}", flush=True)
        t0 = time.monotonic()
        spent = (t0 - t_demo) / 60
        # what is left, minus evaluation (a success takes ~11 s of wall time, a failure the timeout) and the report
        eval_min = plan.eval_episodes * (0.5 * plan.episode_timeout + 4.0) / plan.eval_real_time_factor / 60 + 0.3
        minutes = max(2.0, plan.budget_min - spent - eval_min - 0.7) if plan.budget_min else 0.0
        train_run = train(TrainConfig(dataset=str(ds_path), out=str(run_dir / "train"), obs=list(LOWDIM_OBS),
                                      relative=list(RELATIVE), action=plan.action, lr=plan.lr, val_fraction=0.05,
                                      down_dims=list(plan.down_dims), denoiser=plan.denoiser,
                                      steps=plan.train_steps, batch_size=plan.batch_size, eval_every=plan.eval_every,
                                      eval_episodes=plan.train_eval_episodes, eval_max_steps=plan.train_eval_max_steps,
                                      eval_noise_scale=plan.noise_scale,
                                      warmup_steps=min(200, plan.train_steps // 5), max_minutes=minutes,
                                      threads=-1))   # one thread when another process keeps a core busy
        timings["train"] = time.monotonic() - t0
        print(f"demo [3/4] deploy + evaluate: launch/deploy_policy.launch.yaml (sim, mux, policy server, "
              f"evaluator), {plan.eval_episodes} seeded episodes", flush=True)
        t0 = time.monotonic()
        evaluated = evaluate_graph(train_run / "checkpoints" / "best", task, plan.eval_episodes,
                                   run_dir / "evaluate", run_dir / "evaluate.log",
                                   real_time_factor=plan.eval_real_time_factor, state_rate=plan.state_rate,
                                   episode_timeout=plan.episode_timeout, noise_scale=plan.noise_scale)
        timings["evaluate"] = time.monotonic() - t0
    except (RuntimeError, SystemExit) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    print("demo [4/4] report", flush=True)
    report = write_report(run_dir, ds_path, collected, train_run, evaluated, plan, timings)
    (run_dir / "summary.json").write_text(json.dumps(
        {"collect_success_rate": collected["success_rate"], "eval_success_rate": evaluated["success_rate"],
         "eval_episodes": len(evaluated["episodes"]), "timings_s": timings}, indent=1))
    print(f"demo: policy success rate through the ROS graph: {evaluated['success_rate']:.0%} over "
          f"{len(evaluated['episodes'])} seeded episodes; report written to {report}", flush=True)
    note = sim_pace_note(evaluated, rendered=False, prog="demo")
    if note:
        print(note, file=sys.stderr)
    return 0
