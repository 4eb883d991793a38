"""Exports read back by other tools' documented layouts; MCAP import round trip; the viewer."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
from test_dataset import store  # noqa: F401  (fixture)

from robot_learning.data.cli import print_info
from robot_learning.data.export_lerobot import export_lerobot
from robot_learning.data.mcap_io import export_mcap, import_mcap
from robot_learning.data.repair import validate_store
from robot_learning.data.schema import load_recipe
from robot_learning.data.store import Dataset
from robot_learning.data.view import contact_sheet, video


def test_lerobot_export_follows_its_v21_layout(store, tmp_path):  # noqa: F811
    out = export_lerobot(store, tmp_path / "lr", progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_episodes"] == 2 and info["fps"] == 10.0
    eps = [json.loads(x) for x in (out / "meta" / "episodes.jsonl").read_text().splitlines()]
    tasks = [json.loads(x) for x in (out / "meta" / "tasks.jsonl").read_text().splitlines()]
    assert tasks == [{"task_index": 0, "task": "pick_place"}]
    ds = Dataset(store)
    total = 0
    for e in eps:
        i = e["episode_index"]
        src = ds.episode(ds.indices[i])
        pq_path = out / info["data_path"].format(episode_chunk=0, episode_index=i)
        table = pq.read_table(pq_path).to_pydict()
        assert len(table["action"]) == e["length"] == src.n_steps
        assert np.allclose(np.array(table["action"]), src.steps["action"][:], atol=1e-6)
        state = np.array(table["observation.state"])
        assert state.shape[1] == info["features"]["observation.state"]["shape"][0]
        assert table["index"][0] == total and table["frame_index"][-1] == e["length"] - 1
        total += e["length"]
        key = "observation.images.front_color"
        vid = out / info["video_path"].format(episode_chunk=0, episode_index=i, video_key=key)
        cap = cv2.VideoCapture(str(vid))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == e["length"]
        ok, frame = cap.read()
        assert ok and frame.shape == (48, 64, 3)
    assert info["total_frames"] == total


def test_mcap_export_reads_back_with_mcap_ros2(store, tmp_path):  # noqa: F811
    from mcap_ros2.reader import read_ros2_messages

    bag, = export_mcap(store, tmp_path / "bags", episodes=[0], progress=False)
    files = list(bag.glob("*.mcap"))
    assert len(files) == 1 and (bag / "metadata.yaml").exists()
    ep = Dataset(store).episode(0)
    js_t = ep.streams["joint_states"]["t"][:]
    seen = {"/joint_states": [], "/front/color/image_raw": [], "/gripper/command": []}
    for m in read_ros2_messages(str(files[0])):
        if m.channel.topic in seen:
            seen[m.channel.topic].append(m.ros_msg)
    js = seen["/joint_states"]
    assert len(js) == len(js_t)
    stamps = np.array([x.header.stamp.sec + x.header.stamp.nanosec * 1e-9 for x in js])
    assert np.allclose(stamps, js_t, atol=1e-6)
    assert np.allclose([x.position[0] for x in js], ep.streams["joint_states"]["position"][:, 0])
    assert list(js[0].name) == [f"j{i}" for i in range(9)]
    img = seen["/front/color/image_raw"][5]
    assert img.encoding == "rgb8" and (img.width, img.height) == (64, 48)
    assert np.array_equal(np.frombuffer(bytes(img.data), np.uint8).reshape(48, 64, 3),
                          ep.streams["front_color"]["data"][5])
    assert seen["/gripper/command"][0].data == 0.5


def test_mcap_import_round_trip(store, tmp_path):  # noqa: F811
    bags = export_mcap(store, tmp_path / "bags", progress=False)
    made = import_mcap(bags, tmp_path / "imported.zarr", load_recipe("datasets/recipes/workcell.yaml"),
                       task="pick_place", success=True, progress=False)
    assert made == [0, 1]
    ds, problems = validate_store(tmp_path / "imported.zarr")
    assert problems == []
    a, b = Dataset(store).episode(1), ds.episode(1)
    for name in ("joint_states", "front_color", "cmd_twist", "cmd_gripper", "intervention", "tactile_left"):
        sa, sb = a.stream(name), b.stream(name)
        assert np.allclose(sa["t"], sb["t"], atol=1e-6), name
        for k in sa:
            if k not in ("t", "t_recv"):
                assert np.array_equal(sa[k], sb[k]), (name, k)
    assert b.n_steps == a.n_steps
    assert np.allclose(a.steps["action"][:], b.steps["action"][:])
    assert np.allclose(b.meta["interventions"], a.meta["interventions"], atol=1e-6)


def test_viewer_writes_contact_sheet_and_video(store, tmp_path, capsys):  # noqa: F811
    ep = Dataset(store).episode(0)
    png = contact_sheet(ep, tmp_path / "sheet.png")
    assert png.stat().st_size > 10_000
    mp4 = video(ep, tmp_path / "ep.mp4")
    cap = cv2.VideoCapture(str(mp4))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == ep.n_steps
    print_info(Dataset(store))
    out = capsys.readouterr().out
    assert "pick_place" in out and "total: 2 episodes" in out
