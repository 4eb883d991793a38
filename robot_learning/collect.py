"""``robot-learning collect``: demonstrations into a dataset through launch/teleop_collect.launch.yaml.

With a device (spacemouse, gamepad, keyboard) a person drives and labels episodes with the
device's buttons until Ctrl-C; with ``--device scripted`` the workcell's expert plays the
operator through the same /teleop topics for a set number of episodes. Either way the
dataset's summary is printed at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from robot_learning.graph import SimGraph
from robot_learning.paths import project_root, resolve


def collect_scripted(task: str, episodes: int, dataset: str | Path, report_dir: Path, log_path: Path,
                     real_time_factor: float = 1.0, cameras: str = "front,wrist", seed: int = 0,
                     progress: bool = True, timeout: float = 3600.0) -> dict:
    """Scripted operator episodes recorded into ``dataset``; returns the operator's results.json."""
    report_dir.mkdir(parents=True, exist_ok=True)
    args = dict(task=task, device="scripted", episodes=episodes, dataset=resolve(dataset), report_dir=report_dir,
                real_time_factor=real_time_factor, cameras=cameras, seed=seed, noise_seed=seed)
    with SimGraph(log_path, "teleop_collect.launch.yaml", **args) as g:
        bar = tqdm(total=episodes, desc=f"collect {task}", unit="ep", disable=not progress)
        done, t0 = 0, time.monotonic()
        while g.alive() and time.monotonic() - t0 < timeout:
            results = sorted(report_dir.glob("episode_*/result.json"))
            if len(results) > done:
                bar.update(len(results) - done)
                done = len(results)
                ok = sum(json.loads(p.read_text())["success"] for p in results)
                bar.set_postfix(success=f"{ok}/{done}")
            time.sleep(0.3)
        bar.close()
        if g.alive():
            raise RuntimeError(f"collection did not finish within {timeout:.0f} s; see {log_path}")
        rc = g.proc.returncode
    summary = report_dir / "results.json"
    if rc != 0 or not summary.exists():
        raise RuntimeError(f"collection failed (exit {rc}); see {log_path}")
    return json.loads(summary.read_text())


def run_collect(device: str, task: str, episodes: int, dataset: str, real_time_factor: float, cameras: str,
                extra: list[str]) -> int:
    from robot_learning.data.cli import print_info
    from robot_learning.data.store import Dataset, DatasetError

    if device == "scripted":
        run_dir = Path("runs") / f"collect-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            s = collect_scripted(task, episodes, dataset, run_dir, run_dir / "graph.log", real_time_factor, cameras)
        except RuntimeError as e:
            print(f"collect: {e}")
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
        print(f"collect: {e}")
        return 1
    return 0
