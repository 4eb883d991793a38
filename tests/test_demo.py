"""``robot-learning demo --quick``: the whole pipeline (collect through the teleop topics,
train, deploy with the policy server, evaluate through the ROS graph, report), as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from robot_learning.data.store import Dataset

pytestmark = pytest.mark.graph


def test_quick_demo_runs_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "robot_learning.cli", "demo", "--quick", "--out", str(tmp_path / "runs"),
           "--dataset", str(tmp_path / "demo.zarr")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = next((tmp_path / "runs").glob("demo-*"))
    summary = json.loads((run / "summary.json").read_text())
    # the evaluation ran through the graph: two seeded episodes, each a success or run to its
    # 8 s timeout, with the policy inferring; the summary reports what the evaluator measured
    results = json.loads((run / "evaluate" / "results.json").read_text())
    eps = results["episodes"]
    assert summary["eval_episodes"] == len(eps) == 2 and len({e["seed"] for e in eps}) == 2
    # (or ended early by the arm's protective stop, which the results name)
    assert all(e["success"] or e["duration"] >= 7.9 or e.get("protective_stop") for e in eps), eps
    assert summary["eval_success_rate"] == sum(e["success"] for e in eps) / 2
    assert float(results["diagnostics"]["infer.n"]) > 0
    assert len(Dataset(tmp_path / "demo.zarr")) == 3
    report = (run / "report.md").read_text()
    assert "inference (policy call)" in report          # the server's diagnostics reached the report
    for f in ("train_curves.png", "rollout.mp4", "rollout_sheet.png", "evaluated_trajectories.png"):
        assert (run / f).stat().st_size > 0, f
    assert (run / "train" / "checkpoints" / "best" / "model.safetensors").exists()
    assert "success rate through the ROS graph" in r.stdout
