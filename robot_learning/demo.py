"""``make demo``: demonstrations collected on the sim workcell through the ROS 2 graph.

Brings up launch/teleop_collect.launch.yaml (sim, command mux, recorder) with the scripted
operator playing a person at a teleop device: it drives only the /teleop topics, and the
recorder writes every episode into a zarr dataset under datasets/. Then prints the
dataset's summary and writes a report under runs/: success rates, camera snapshots, TCP
trajectory plots and an episode's contact sheet rendered from the dataset.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

from robot_learning.collect import collect_scripted


def write_report(run_dir: Path, summaries: dict[str, dict], dataset: Path | None = None) -> Path:
    """report.md with success rates, camera contact sheets and TCP trajectory plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"# Sim workcell demo, {datetime.now():%Y-%m-%d %H:%M}", "",
             "The scripted expert played an operator at a teleop device: it drove the MuJoCo workcell only "
             "through `/teleop/twist`, `/teleop/gripper` and `/teleop/engaged` (with hand-like noise and "
             "pauses), through the command mux, while the recorder wrote every episode to "
             f"`{dataset}`." if dataset else "", "",
             "| task | episodes | success rate | mean duration (s) |", "|---|---|---|---|"]
    for task, s in summaries.items():
        d = np.mean([e["duration"] for e in s["episodes"]]) if s["episodes"] else 0.0
        lines.append(f"| {task} | {len(s['episodes'])} | {s['success_rate']:.0%} | {d:.1f} |")
    for task in summaries:
        tdir = run_dir / task
        eps = sorted(tdir.glob("episode_*/episode.npz"))
        if not eps:
            continue
        fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
        for p in eps:
            tr = np.load(p)["trajectory"]
            if tr.size == 0:
                continue
            ok = json.loads((p.parent / "result.json").read_text())["success"]
            ax[0].plot(tr[:, 2], tr[:, 1], color="tab:green" if ok else "tab:red", alpha=0.7)
            ax[1].plot(tr[:, 0], tr[:, 3], color="tab:green" if ok else "tab:red", alpha=0.7)
        ax[0].set(xlabel="y (m)", ylabel="x (m)", title="TCP path, top view (green: success)")
        ax[0].set_aspect("equal")
        ax[0].invert_xaxis()
        ax[1].set(xlabel="time in episode (s)", ylabel="TCP height (m)", title="TCP height")
        fig.tight_layout()
        fig.savefig(tdir / "trajectories.png", dpi=90)
        plt.close(fig)
        rows = []
        for p in eps[:3]:
            z = np.load(p)
            row = [z[k] for k in ("start_front", "grasp_front", "end_front", "grasp_wrist") if k in z.files]
            if row:
                rows.append(np.concatenate(row, axis=1))
        lines += ["", f"## {task}", "", f"![trajectories]({task}/trajectories.png)"]
        if rows:
            width = max(r.shape[1] for r in rows)
            sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
            from PIL import Image

            Image.fromarray(sheet).save(tdir / "contact_sheet.png")
            lines += ["", "Front camera at start, at grasp and at the end; wrist camera at grasp "
                      "(one row per episode):", "", f"![contact sheet]({task}/contact_sheet.png)"]
    if dataset is not None:
        from robot_learning.data.store import Dataset
        from robot_learning.data.view import contact_sheet

        ds = Dataset(dataset)
        s = ds.summary()
        lines += ["", "## Dataset", "", f"`{dataset}`: {s['episodes']} episodes, {s['steps']} control steps, "
                  f"{s['duration_s'] / 60:.1f} min; inspect with `robot-learning dataset info {dataset}`.", ""]
        if len(ds):
            sheet = contact_sheet(ds.episode(ds.indices[-1]), run_dir / "dataset_episode.png")
            lines += ["The last recorded episode, rendered from the dataset:", "", f"![episode]({sheet.name})"]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def run_demo(tasks: list[str], episodes: int, rtf: float, out: str, dataset: str | None = None) -> int:
    from robot_learning.data.cli import print_info
    from robot_learning.data.store import Dataset
    from robot_learning.paths import resolve

    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(out) / f"demo-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ds_path = resolve(dataset or f"datasets/demo-{stamp}.zarr")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    print(f"demo: writing the report to {run_dir} and the dataset to {ds_path}", flush=True)
    summaries = {}
    for task in tasks:
        print(f"demo: launch/teleop_collect.launch.yaml: sim workcell ({task}), command mux, recorder, "
              "scripted operator at the teleop topics", flush=True)
        try:
            s = collect_scripted(task, episodes, ds_path, run_dir / task, run_dir / f"{task}_graph.log",
                                 real_time_factor=rtf)
        except RuntimeError as e:
            print(f"demo: {e}", file=sys.stderr)
            return 1
        summaries[task] = s
        print(f"demo: {task}: success rate {s['success_rate']:.0%} over {len(s['episodes'])} episodes", flush=True)
    print_info(Dataset(ds_path))
    report = write_report(run_dir, summaries, ds_path)
    print(f"demo: report written to {report}", flush=True)
    return 0
