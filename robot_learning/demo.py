"""``make demo``: the scripted expert drives the sim workcell through the ROS 2 graph.

Brings the sim graph up with the launch file, runs the scripted operator as its own
process (it only uses the standard command topics), then writes a report under runs/:
success rates, camera snapshots and TCP trajectory plots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_learning.graph import SimGraph
from robot_learning.launch import find_executable


def run_operator(task: str, episodes: int, report_dir: Path, log_path: Path, progress: bool = True,
                 timeout: float = 1800.0) -> dict:
    """Run the scripted operator process against a running sim; returns its results.json."""
    cmd = [find_executable("robot_learning_ros", "scripted_operator"), "--ros-args",
           "-p", f"task:={task}", "-p", f"episodes:={episodes}", "-p", f"report_dir:={report_dir}"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        bar = tqdm(total=episodes, desc=f"{task} episodes", unit="ep", disable=not progress)
        done, t0 = 0, time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            n = len(list(report_dir.glob("episode_*/result.json")))
            if n > done:
                bar.update(n - done)
                done = n
                ok = sum(json.loads(p.read_text())["success"] for p in report_dir.glob("episode_*/result.json"))
                bar.set_postfix(success=f"{ok}/{n}")
            time.sleep(0.2)
        bar.close()
        if proc.poll() is None:
            proc.kill()
            raise RuntimeError(f"scripted operator did not finish within {timeout:.0f} s; see {log_path}")
    results = report_dir / "results.json"
    if proc.returncode != 0 or not results.exists():
        raise RuntimeError(f"scripted operator failed (exit {proc.returncode}); see {log_path}")
    return json.loads(results.read_text())


def write_report(run_dir: Path, summaries: dict[str, dict]) -> Path:
    """report.md with success rates, camera contact sheets and TCP trajectory plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"# Sim workcell demo, {datetime.now():%Y-%m-%d %H:%M}", "",
             "The scripted expert drove the MuJoCo workcell only through the standard ROS 2 command "
             "topics (`/arm/command/twist`, `/gripper/command`).", "",
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
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def run_demo(tasks: list[str], episodes: int, rtf: float, out: str) -> int:
    run_dir = Path(out) / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    print(f"demo: writing to {run_dir}", flush=True)
    summaries = {}
    for task in tasks:
        print(f"demo: bringing up the sim workcell ({task}) with launch/sim.launch.yaml", flush=True)
        with SimGraph(run_dir / f"{task}_sim.log", task=task, real_time_factor=rtf, cameras="front,wrist") as g:
            try:
                s = run_operator(task, episodes, run_dir / task, run_dir / f"{task}_operator.log")
            except RuntimeError as e:
                print(f"demo: {e}", file=sys.stderr)
                return 1
            if not g.alive():
                print(f"demo: the sim graph died; see {g.log_path}", file=sys.stderr)
                return 1
        summaries[task] = s
        print(f"demo: {task}: success rate {s['success_rate']:.0%} over {len(s['episodes'])} episodes", flush=True)
    report = write_report(run_dir, summaries)
    print(f"demo: report written to {report}", flush=True)
    return 0
