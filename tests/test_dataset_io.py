"""Exports read back by other tools' documented layouts; MCAP import round trip; the viewer."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from test_dataset import store  # noqa: F401  (fixture)

from robot_learning.data.cli import print_info
from robot_learning.data.export_lerobot import export_lerobot
from robot_learning.data.mcap_io import export_mcap, import_mcap
from robot_learning.data.repair import validate_store
from robot_learning.data.schema import load_recipe
from robot_learning.data.store import Dataset
from robot_learning.data.view import contact_sheet, video

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest


def test_lerobot_export_follows_its_v30_layout(tmp_path):
    """The v3.0 layout read back with pyarrow and OpenCV alone: every frame's row, its episode's
    span in the shared data file and in each camera's shared video, the task index, stats, and
    depth bit-exact."""
    from test_dataset import RECIPE, record_episode

    from robot_learning.data.store import DatasetWriter

    path = tmp_path / "depth.zarr"
    w = DatasetWriter(path, RECIPE)
    for i in range(2):
        ep = w.start_episode({"task": "pick_place", "operator": "test"})
        record_episode(ep, t0=10.0 + 10 * i, depth=True)
        ep.finish(success=bool(i))
    w.close()
    out = export_lerobot(path, tmp_path / "lr", progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2 and info["fps"] == 10.0
    eps = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    tasks = pq.read_table(out / "meta" / "tasks.parquet")
    assert tasks.column("task").to_pylist() == ["pick_place"] and tasks.column("task_index").to_pylist() == [0]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    data = pq.read_table(out / info["data_path"].format(chunk_index=0, file_index=0)).to_pydict()
    assert data["index"] == list(range(info["total_frames"]))
    ds = Dataset(path)
    key, depth_key = "observation.images.front_color", "observation.images.front_depth"
    cap = cv2.VideoCapture(str(out / info["video_path"].format(video_key=key, chunk_index=0, file_index=0)))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == info["total_frames"]
    for e in eps:
        i, a, b = e["episode_index"], e["dataset_from_index"], e["dataset_to_index"]
        src = ds.episode(ds.indices[i])
        assert b - a == e["length"] == src.n_steps and e["tasks"] == ["pick_place"]
        assert np.allclose(np.array(data["action"][a:b]), src.steps["action"][:], atol=1e-6)
        assert data["episode_index"][a:b] == [i] * e["length"] and data["frame_index"][a:b] == list(range(b - a))
        assert np.allclose(data["timestamp"][a:b], np.arange(b - a) / 10.0, atol=1e-5)
        # the episode's frames sit at from_timestamp + k / fps in the camera's shared video
        assert e[f"videos/{key}/to_timestamp"] - e[f"videos/{key}/from_timestamp"] == pytest.approx((b - a) / 10.0)
        assert round(e[f"videos/{key}/from_timestamp"] * 10) == a
        idx = src.steps["index"]["front_color"][:]
        cap.set(cv2.CAP_PROP_POS_FRAMES, a + 5)
        ok, frame = cap.read()
        want = src.streams["front_color"]["data"][int(idx[5])]
        assert ok and np.abs(frame[..., ::-1].astype(int) - want).mean() < 8.0   # lossy MPEG-4, same picture
        # depth: lossless, 16-bit PNG in the parquet
        didx = src.steps["index"]["front_depth"][:]
        png = data[depth_key][a + 3]["bytes"]
        depth = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16 and np.array_equal(depth, src.streams["front_depth"]["data"][int(didx[3])])
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert {"min", "max", "mean", "std", "count", "q01", "q50", "q99"} <= set(stats["action"])
    assert np.array(stats[key]["mean"]).shape == (3, 1, 1)
    assert info["features"][depth_key]["dtype"] == "image" and info["features"][key]["dtype"] == "video"


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


def test_shrink_keeps_the_steps_and_resizes_only_the_frames_they_use(tmp_path):
    from test_dataset import record_textured

    from robot_learning.data.sampler import WindowSampler, WindowSpec, resize_frame
    from robot_learning.data.shrink import shrink_dataset
    from robot_learning.data.store import DatasetError

    record_textured(tmp_path / "d.zarr")
    src, out = tmp_path / "d.zarr", tmp_path / "small.zarr"
    sizes = shrink_dataset(src, out, (24, 32), drop=("wrench",), progress=False)
    assert validate_store(out)[1] == [] and sizes["after"] < sizes["before"]
    a, b = Dataset(src).episode(0), Dataset(out).episode(0)
    assert "wrench" not in b.streams and "wrench.data" not in b.steps["obs"]
    assert not (out.parent / "small.zarr.partial").exists()
    for cam, method in (("front_color", cv2.INTER_AREA), ("front_depth", cv2.INTER_NEAREST)):
        old, new = a.steps["index"][cam][:], b.steps["index"][cam][:]
        used = np.unique(old[old >= 0])
        assert b.streams[cam]["data"].shape[:3] == (len(used), 24, 32) < a.streams[cam]["data"].shape[:3]
        assert np.array_equal(new >= 0, old >= 0)
        for s in np.flatnonzero(old >= 0):
            want = cv2.resize(a.streams[cam]["data"][old[s]], (32, 24), interpolation=method)
            assert np.array_equal(b.streams[cam]["data"][new[s]], want)
            assert b.streams[cam]["t"][new[s]] == a.streams[cam]["t"][old[s]]
    for k in ("action", "obs/ee_pose.data", "obs/joint_states.position"):
        assert np.array_equal(a.steps[k][:], b.steps[k][:])

    # a policy's training windows are the same from either copy
    spec = WindowSpec(obs_keys=("ee_pose.data",), image_keys=("front_color",), image_size=(24, 32))
    wa, wb = WindowSampler(Dataset(src), spec), WindowSampler(Dataset(out), spec)
    assert len(wa) == len(wb) > 0
    for i in (0, len(wa) // 2, len(wa) - 1):
        for k, v in wa[i].items():
            assert np.array_equal(v, wb[i][k]), k
    assert resize_frame(b.streams["front_color"]["data"][0], (24, 32)).shape == (24, 32, 3)

    with pytest.raises(DatasetError, match="exists"):
        shrink_dataset(src, out, (24, 32), progress=False)
    with pytest.raises(DatasetError, match="no episode"):
        shrink_dataset(src, tmp_path / "x.zarr", (24, 32), drop=("front_dept",), progress=False)
