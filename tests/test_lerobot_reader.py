"""Our LeRobot v3.0 export, loaded by LeRobot's own reader (``lerobot-dataset``) in its own
environment: ``make test-lerobot`` builds it (scripts/lerobot_env.sh) and runs this file with
LEROBOT_ENV set. Every frame is read through LeRobotDataset: the task text, the actions, the
video frames (decoded by torchcodec, as OpenCV decodes them) and the depth, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_dataset import RECIPE, record_episode

from robot_learning.data.export_lerobot import export_lerobot
from robot_learning.data.store import DatasetWriter

ENV = os.environ.get("LEROBOT_ENV", "")
pytestmark = pytest.mark.skipif(not ENV, reason="needs LeRobot's environment: run `make test-lerobot`")

CHECK = r'''
import os, sys, json
os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np, pyarrow.parquet as pq, cv2
from ledataset.datasets.lerobot_dataset import LeRobotDataset
root = sys.argv[1]
ds = LeRobotDataset("local/robot_learning", root=root, video_backend="torchcodec")
data = pq.read_table(f"{root}/data/chunk-000/file-000.parquet").to_pydict()
cap = cv2.VideoCapture(f"{root}/videos/observation.images.front_color/chunk-000/file-000.mp4")
frames = []
while (f := cap.read())[0]:
    frames.append(f[1][..., ::-1])
out = {"frames": len(ds), "episodes": ds.num_episodes, "tasks": set(), "action": 0.0, "rgb": 0.0, "depth": 0}
for i in range(len(ds)):
    it = ds[i]
    out["tasks"].add(it["task"])
    out["action"] = max(out["action"], float(np.abs(it["action"].numpy() - data["action"][i]).max()))
    rgb = it["observation.images.front_color"].numpy().transpose(1, 2, 0) * 255
    out["rgb"] = max(out["rgb"], float(np.abs(rgb - frames[i]).mean()))
    png = np.frombuffer(data["observation.images.front_depth"][i]["bytes"], np.uint8)
    want = cv2.imdecode(png, cv2.IMREAD_UNCHANGED).astype(np.int64)
    got = it["observation.images.front_depth"].numpy()[0].astype(np.int64)
    out["depth"] += int((got != want).sum())
out["tasks"] = sorted(out["tasks"])
print(json.dumps(out))
'''


def test_lerobots_own_reader_loads_every_frame(tmp_path):
    path = tmp_path / "src.zarr"
    w = DatasetWriter(path, RECIPE)
    for i in range(2):
        ep = w.start_episode({"task": "pick_place", "operator": "test"})
        record_episode(ep, t0=10.0 + 10 * i, depth=True, seconds=1.5)  # depth up to 28 m: LeRobot 0.4 reads int16
        ep.finish(success=bool(i))
    w.close()
    out = export_lerobot(path, tmp_path / "lr", progress=False)
    r = subprocess.run([str(Path(ENV) / "bin" / "python"), "-c", CHECK, str(out)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    info = json.loads((out / "meta" / "info.json").read_text())
    assert got["frames"] == info["total_frames"] and got["episodes"] == 2 and got["tasks"] == ["pick_place"]
    assert got["action"] < 1e-6 and got["rgb"] < 1.0 and got["depth"] == 0, got
