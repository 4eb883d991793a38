"""``robot-learning collect``: demonstrations into a dataset through launch/teleop_collect.launch.yaml.

With a device (spacemouse, gamepad, keyboard) a person drives and labels episodes with the
device's buttons until Ctrl-C; with ``--device scripted`` the workcell's expert plays the
operator through the same /teleop topics for a set number of episodes. Either way the
dataset's summary is printed at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from robot_learning.graph import run_graph_episodes
from robot_learning.paths import project_root, resolve


def collect_scripted(task: str, episodes: int, dataset: str | Path, report_dir: Path, log_path: Path,
                     real_time_factor: float = 1.0, cameras: str = "front,wrist", seed: int = 0,
                     progress: bool = True, timeout: float = 3600.0, state_rate: float = 0.0,
                     noise: float = 1.0, restarts: int = 2, **launch_args: object) -> dict:
    """Scripted operator episodes recorded into ``dataset``; returns the operator's results.json.

    ``restarts``: a graph a signal ended (the sim's renderer segfaulted once in a day of runs)
    is started again for the episodes left, as an evaluation is (``run_graph_episodes``). The
    episode under way is recorded again from its start, with the same seed and the same hand
    noise (the operator draws it from the episode's seed), so the partial one the recorder
    saved at shutdown is discarded first: the dataset ends as an uninterrupted run leaves it."""
    from robot_learning.data.layout import episode_dirs, next_episode_index
    from robot_learning.data.store import discard_episodes

    path = resolve(dataset)
    first = next_episode_index(path)   # episodes before this collection are not this collection's to discard

    def discard_interrupted(finished: list[dict]) -> dict:
        kept = {e.get("dataset_episode") for e in finished}
        drop = [i for i, _ in episode_dirs(path) if i >= first and i not in kept]
        discard_episodes(path, drop)
        if drop:
            print(f"collect {task}: discarded the interrupted episode(s) {drop} of {path}; they are recorded "
                  "again from their start", file=sys.stderr, flush=True)
        return {"discarded_dataset_episodes": drop}

    return run_graph_episodes("teleop_collect.launch.yaml", episodes, report_dir, log_path, f"collect {task}",
                              progress, timeout, restarts=restarts, before_restart=discard_interrupted, task=task,
                              device="scripted", dataset=path, real_time_factor=real_time_factor, cameras=cameras,
                              seed=seed, noise_seed=seed, state_rate=state_rate, noise=noise, **launch_args)


def run_collect(device: str, task: str, episodes: int, dataset: str, real_time_factor: float, cameras: str,
                extra: list[str]) -> int:
    from robot_learning.data.cli import print_info
    from robot_learning.data.store import Dataset, DatasetError
    from robot_learning.launch import LaunchError, parse_launch_args

    if device == "scripted":
        run_dir = Path("runs") / f"collect-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            more = parse_launch_args(extra)
            for k in more.keys() & {"task", "episodes", "dataset", "real_time_factor", "cameras", "device"}:
                raise LaunchError(f"{k}:= has its own option: pass --{k.replace('_', '-')} instead")
            s = collect_scripted(task, episodes, dataset, run_dir, run_dir / "graph.log", real_time_factor, cameras,
                                 **more)
        except (RuntimeError, LaunchError) as e:
            print(f"collect: {e}", file=sys.stderr)
            return 1
        print(f"collect: {task}: operator success {s['success_rate']:.0%} over {len(s['episodes'])} episodes")
    else:
        from robot_learning.launch import main as launch_main

        print("collect: drive with the device; its buttons start, label (success/failure) and discard "
              "episodes (see hardware/teleop/). Ctrl-C when done.")
        launch_main(str(project_root() / "launch" / "teleop_collect.launch.yaml"),
                    [f"device:={device}", f"task:={task}", f"dataset:={resolve(dataset)}",
                     f"real_time_factor:={real_time_factor}", f"cameras:={cameras}", *extra])
    try:
        print_info(Dataset(resolve(dataset)))
    except DatasetError as e:
        print(f"collect: {e}", file=sys.stderr)
        return 1
    return 0
