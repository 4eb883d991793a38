"""``robot-learning evaluate``: a checkpoint's success rate over seeded sim episodes.

``--where graph`` (the default) deploys it with launch/deploy_policy.launch.yaml (sim,
command mux, policy server, policy evaluator) and measures it as it runs on a robot:
real DDS, latency, chunk scheduling. ``--where env`` rolls it out in the gymnasium env
through the same server engine, without ROS (fast; what training reports).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from robot_learning.graph import run_graph_episodes
from robot_learning.paths import resolve


def evaluate_graph(checkpoint: str | Path, task: str, episodes: int, report_dir: Path, log_path: Path,
                   real_time_factor: float = 1.0, cameras: str = "none", seed: int = 1000, blend: str = "ensemble",
                   state_rate: float = 0.0, episode_timeout: float = 30.0, record: bool = False,
                   dataset: str = "datasets/deployments.zarr", progress: bool = True, sampler: str = "",
                   inference_steps: int = 0, noise_scale: float | None = None, **launch_args: object) -> dict:
    """Seeded episodes through the ROS graph; returns the evaluator's results.json. A graph a
    signal broke (the sim's software renderer has segfaulted once in about a day of runs here)
    is started again for the episodes left, twice at most (``graph.run_graph_episodes``).
    ``launch_args``: more deploy_policy.launch.yaml arguments (``sim="false", sim_hardware="true"``:
    the real-robot path, arm_node and camera nodes, on the sim as hardware)."""
    return run_graph_episodes("deploy_policy.launch.yaml", episodes, report_dir, log_path, f"evaluate {task}",
                              progress, timeout=episodes * (episode_timeout * 10 + 30) + 120, restarts=2,
                              checkpoint=resolve(checkpoint), task=task, real_time_factor=real_time_factor,
                              cameras=cameras, seed=seed, blend=blend, state_rate=state_rate,
                              episode_timeout=episode_timeout, record=str(record).lower(),
                              dataset=resolve(dataset), sampler=sampler, inference_steps=inference_steps,
                              noise_scale=-1.0 if noise_scale is None else noise_scale, **launch_args)


def evaluate_env(checkpoint: str | Path, episodes: int, seed: int = 1000, task: str = "",
                 blend: str = "ensemble", video: Path | None = None, sampler: str = "",
                 inference_steps: int = 0, latency: float | tuple[float, float] = 0.0, max_steps: int = 0,
                 noise_scale: float | None = None, randomization: str = "",
                 lags: tuple[float, float] = (0.0, 0.0)) -> dict:
    """Seeded episodes in the gymnasium env; with ``video`` the first one is filmed (and its
    frames returned under "frames"). ``latency``: seconds each chunk takes to arrive, as the
    robot's inference would (0: instantaneous, which flatters twist policies); a (low, high)
    range is drawn per chunk, and ``lags`` are the transport's (``train.rollout.ServedSim``). ``max_steps``:
    policy steps before an episode counts as failed (0: the task's limit). ``randomization``: a sim
    parameter file the episodes' physics is drawn from (a perturbed "real" sim, sysid's fit)."""
    from robot_learning.policies.registry import checkpoint_recipe, load_policy, read_checkpoint
    from robot_learning.train.rollout import rollout

    meta = read_checkpoint(resolve(checkpoint))
    policy = load_policy(meta, sampler=sampler, inference_steps=inference_steps, noise_scale=noise_scale)
    recipe = checkpoint_recipe(meta)
    task = task or policy.spec.task
    res = rollout(policy, recipe, task, [seed + i for i in range(episodes)], blend=blend,
                  replan_every=4, record_video=1 if video else 0, progress=True, latency=latency,
                  max_steps=max_steps, randomization=randomization or None, lags=lags)
    if video and res and res[0].frames:
        from robot_learning.data.view import write_video

        write_video(res[0].frames, video, 1.0 / policy.spec.dt)
    eps = [{"seed": r.seed, "success": r.success, "steps": r.steps}
           | ({"protective_stop": r.fault} if r.fault else {})
           | ({"refused_chunks": r.refused, "last_refusal": r.refusal} if r.refused else {}) for r in res]
    out = {"task": task, "success_rate": sum(r.success for r in res) / max(len(res), 1), "episodes": eps}
    refused = [r for r in res if r.refused]
    if refused:   # a policy whose every chunk is refused holds the arm still and fails without a word
        print(f"evaluate: the policy server refused {sum(r.refused for r in refused)} chunks in {len(refused)} of "
              f"{len(res)} episodes, the arm holding meanwhile (last: {refused[-1].refusal}); see the policy's "
              "action bounds in its config.json", file=sys.stderr)
    if video:
        out["frames"] = res[0].frames if res else []
    return out


def policy_cameras(policy, recipe) -> dict[str, str]:
    """The sim's ``cameras`` and ``depth`` launch arguments for ``policy``: the cameras whose
    images it reads (``/front/color/image_raw`` is camera ``front``), in its order, or ``none``;
    depth only when it reads a depth image. On a small machine every frame rendered and
    published that no one reads is time the policy server waits for a core."""
    streams = [recipe.streams[k] for k in policy.spec.image_keys]
    cams = [s.topic.strip("/").split("/")[0] for s in streams]
    depth = any("depth" in s.topic for s in streams)
    return {"cameras": ",".join(dict.fromkeys(cams)) or "none", "depth": str(depth).lower()}


def _seconds(text: str) -> tuple[float, float]:
    import argparse

    from robot_learning.train.rollout import seconds_range

    try:
        return seconds_range(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_evaluate(a) -> int:
    from robot_learning.config import ConfigError
    from robot_learning.launch import LaunchError, parse_launch_args
    from robot_learning.policies.checkpoint import PolicyError

    out = Path(a.out) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    cameras = "none"   # what the sim renders (the graph's)
    try:
        if a.where == "env":
            r = evaluate_env(a.checkpoint, a.episodes, a.seed, a.task, a.blend, out / "rollout.mp4",
                             sampler=a.sampler, inference_steps=a.inference_steps, latency=a.latency,
                             noise_scale=a.noise_scale, randomization=a.randomization, lags=a.lags)
            r.pop("frames", None)
        else:
            from robot_learning.policies.registry import checkpoint_recipe, load_policy, read_checkpoint

            # a damaged checkpoint is refused here, in one sentence, not after the graph has started
            meta = read_checkpoint(resolve(a.checkpoint))
            policy = load_policy(meta, sampler=a.sampler, inference_steps=a.inference_steps,
                                 noise_scale=a.noise_scale)
            task = a.task or policy.spec.task
            rendered = policy_cameras(policy, checkpoint_recipe(meta))
            cameras = a.cameras or rendered["cameras"]
            more = parse_launch_args(a.launch_args)
            # cameras named by hand (to record them, say) come with their depth, as in a collection
            more.setdefault("depth", rendered["depth"] if not a.cameras else "true")
            for k in more.keys() & vars(a).keys():
                raise LaunchError(f"{k}:= has its own option: pass --{k.replace('_', '-')} instead")
            r = evaluate_graph(a.checkpoint, task, a.episodes, out, out / "graph.log", a.real_time_factor,
                               cameras, a.seed, a.blend, a.state_rate, record=a.record, dataset=a.dataset,
                               sampler=a.sampler, inference_steps=a.inference_steps, noise_scale=a.noise_scale,
                               **more)
    except (PolicyError, RuntimeError, FileNotFoundError, LaunchError, ConfigError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    # what was evaluated, with the deploy-time settings (defaults: the checkpoint's own)
    r |= {"checkpoint": str(resolve(a.checkpoint)), "where": a.where,
          "randomization": a.randomization or None,
          "sampling": {"sampler": a.sampler or None, "inference_steps": a.inference_steps or None,
                       "noise_scale": a.noise_scale}}
    (out / "results.json").write_text(json.dumps(r, indent=1))
    print(f"evaluate: {r['task']}: success rate {r['success_rate']:.0%} over {len(r['episodes'])} seeded episodes "
          f"({a.where}); results in {out}")
    note = sim_pace_note(r, rendered=cameras not in ("", "none"))
    if note:
        print(note, file=sys.stderr)
    return 0


def sim_pace_note(results: dict, rendered: bool, prog: str = "evaluate") -> str:
    """One sentence when the sim kept well below the pace asked for (``results['sim_pace']``,
    the evaluator's record of the sim's diagnostics), else "". Every node runs on sim time, so a
    sim behind real time means the machine was full and the policy's inference waited for a
    core: the success rate then measures this machine's load as much as the policy."""
    pace = results.get("sim_pace") or {}
    asked, median = pace.get("asked"), pace.get("median")
    if not asked or median is None or median >= 0.9 * asked:
        return ""
    if prog == "evaluate":
        cheaper = "color_profile:=320x240x30 renders the cameras in half the CPU, and " if rendered else ""
        advice = f"{cheaper}--real-time-factor {0.7 * asked:g} slows the whole graph to leave it room"
    else:
        advice = "with a core to spare (no other work running) the figure would be fairer to the policy"
    return (f"{prog}: the sim kept {median:.2f}x real time (median; {asked:g}x asked): this machine could not "
            f"run the graph at that pace, so the policy's inference waited for a core; {advice}")


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="success rate of a checkpoint over seeded sim episodes")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--episodes", type=int, default=20)
    ev.add_argument("--where", choices=("graph", "env"), default="graph",
                    help="graph: through the ROS 2 graph (policy server); env: gymnasium env, no ROS")
    ev.add_argument("--task", default="", help="default: the task the checkpoint was trained on")
    ev.add_argument("--seed", type=int, default=1000, help="first episode seed")
    ev.add_argument("--blend", default="ensemble", choices=("ensemble", "crossfade", "replace"))
    ev.add_argument("--sampler", default="", help="ddim, dpmsolver or ddpm (default: the checkpoint's)")
    ev.add_argument("--inference-steps", type=int, default=0, help="denoising steps (default: the checkpoint's)")
    ev.add_argument("--noise-scale", type=float, default=None,
                    help="diffusion: scale of the initial noise, 0..2 (default 1, as trained; 0 with DDIM: the "
                         "most typical chunk, no sampling diversity)")
    ev.add_argument("--latency", type=_seconds, default=(0.0, 0.0),
                    help="env: seconds of sim time each chunk takes to arrive (inference latency); LOW,HIGH: "
                         "drawn per chunk (the graph's varies: see the policy server's obs_to_chunk diagnostics)")
    ev.add_argument("--lags", type=_seconds, default=(0.0, 0.0),
                    help="env: OBS,CMD: the most seconds the transport adds to the observations' age and to the "
                         "commands' way to the arm (DDS hops, the mux's timer), drawn per episode")
    ev.add_argument("--randomization", default="",
                    help="env: a sim parameter file the physics is drawn from per episode (sim/randomization.yaml's "
                         "terms, or sysid's fit); graph: pass randomization:=FILE to the sim node instead")
    ev.add_argument("--real-time-factor", type=float, default=1.0)
    ev.add_argument("--cameras", default="",
                    help="graph: cameras the sim renders, with depth (default: those whose images the policy reads, "
                         "depth only if it reads depth; depth:=false to leave it out), or none")
    ev.add_argument("--state-rate", type=float, default=100.0,
                    help="graph: Hz of the sim's /joint_states, /arm/ee_pose and /clock (0: every 4 ms control "
                         "step). 100, as the demo and the collections use, leaves the policy server its share of a "
                         "small machine: on 2 cores the control rate doubled its p99 inference time")
    ev.add_argument("--record", action="store_true", help="graph: record the episodes into --dataset")
    ev.add_argument("--dataset", default="datasets/deployments.zarr")
    ev.add_argument("--out", default="runs")
    ev.add_argument("launch_args", nargs="*",
                    help="graph: more name:=value launch arguments (sim:=false sim_hardware:=true use_sim_time:=true: "
                         "the real-robot path on the sim)")
