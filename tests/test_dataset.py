"""The dataset store on real zarr: round trip, step alignment, bad input, errors, repair."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from robot_learning.config import ConfigError
from robot_learning.data.convert import BadSample, to_sample
from robot_learning.data.recorder import Recorder
from robot_learning.data.repair import repair_path, validate_store
from robot_learning.data.schema import load_recipe, parse_recipe
from robot_learning.data.store import Dataset, DatasetError, DatasetWriter

RECIPE = load_recipe("datasets/recipes/workcell.yaml")


def stamp(t):
    return SimpleNamespace(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))


def image(t, w=64, h=48, enc="rgb8", value=0):
    ch, size = {"rgb8": (3, 1), "16UC1": (1, 2), "32FC3": (3, 4)}[enc]
    arr = np.full((h, w * ch), value, {1: np.uint8, 2: np.uint16, 4: np.float32}[size])
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp(t), frame_id="cam"), height=h, width=w, encoding=enc,
                           is_bigendian=0, step=w * ch * size, data=arr.tobytes())


def joints(t, q):
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp(t), frame_id=""), name=[f"j{i}" for i in range(len(q))],
                           position=list(q), velocity=[0.0] * len(q), effort=[0.0] * len(q))


def vec6(t, v, kind="twist"):
    a = SimpleNamespace(x=v[0], y=v[1], z=v[2])
    b = SimpleNamespace(x=v[3], y=v[4], z=v[5])
    body = SimpleNamespace(linear=a, angular=b) if kind == "twist" else SimpleNamespace(force=a, torque=b)
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp(t), frame_id="base"), **{kind: body})


def pose(t, x):
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp(t), frame_id="base"),
                           pose=SimpleNamespace(position=SimpleNamespace(x=x, y=0.0, z=0.3),
                                                orientation=SimpleNamespace(x=1.0, y=0.0, z=0.0, w=0.0)))


def record_episode(ep, t0=10.0, seconds=2.0, intervene=(0.8, 1.2), lose_joints=(0, 0), depth=False):
    """500 Hz joints, 100 Hz pose/wrench/tactile, 30 Hz camera (``depth``: with its aligned
    16-bit depth), 50 Hz commands (written as the recorder would); joint states number
    ``lose_joints[0]`` up to ``lose_joints[1]`` are lost."""
    add = ep.add_message

    n = int(seconds * 500)
    for k in range(n):
        t = t0 + k / 500
        if not lose_joints[0] <= k < lose_joints[1]:
            add("joint_states", joints(t, np.full(9, k, float)), t)
        if k % 5 == 0:
            add("ee_pose", pose(t, k / 1000), t)
            add("wrench", vec6(t, [0, 0, k, 0, 0, 0], "wrench"), t)
            add("gripper_state", joints(t, [0.04, 0.04]), t)
            add("tactile_left", image(t, 4, 4, "32FC3", value=k), t)
            add("tactile_right", image(t, 4, 4, "32FC3"), t)
        if k % 17 == 0:
            add("front_color", image(t, value=k % 256), t)
            if depth:
                add("front_depth", image(t, enc="16UC1", value=300 + 37 * k), t)
        if k % 10 == 0:
            add("cmd_twist", vec6(t, [k / 1000, 0, 0, 0, 0, 0]), t)
            add("cmd_gripper", SimpleNamespace(data=0.5), t)
            on = intervene[0] <= t - t0 < intervene[1]
            add("intervention", SimpleNamespace(data=on), t)
            add("control_source", SimpleNamespace(data="teleop" if on else "policy"), t)
        if k % 100 == 0:
            ep.flush()


_PRISTINE: list[Path] = []  # written once per test run; each test gets its own copy


def record_textured(path, depth=True, seconds=3.0):
    """One successful episode whose camera frames are noise: a resize by the wrong method, of
    the wrong row or of the wrong region of the view shows in every pixel."""
    rng = np.random.default_rng(0)
    w = DatasetWriter(path, RECIPE)
    ep = w.start_episode({"task": "pick_place"})
    add = ep.add_message

    def textured(stream, msg, t):
        if stream in ("front_color", "front_depth"):
            dtype = np.uint8 if stream == "front_color" else np.uint16
            msg.data = rng.integers(0, 250 if dtype == np.uint8 else 4000, len(msg.data) // dtype().itemsize,
                                    dtype=dtype).tobytes()
        add(stream, msg, t)

    ep.add_message = textured
    record_episode(ep, seconds=seconds, depth=depth)
    ep.finish(success=True)
    w.close()
    return path


@pytest.fixture
def store(tmp_path, tmp_path_factory):
    """Two recorded episodes (a failure, then a success) on real zarr, the test's own copy."""
    if not _PRISTINE:
        path = tmp_path_factory.mktemp("pristine") / "d.zarr"
        w = DatasetWriter(path, RECIPE)
        for i in range(2):
            ep = w.start_episode({"task": "pick_place", "operator": "test"})
            record_episode(ep, t0=10.0 + 10 * i)
            ep.finish(success=bool(i))
        w.close()
        _PRISTINE.append(path)
    shutil.copytree(_PRISTINE[0], tmp_path / "d.zarr")
    return tmp_path / "d.zarr"


def test_round_trip_with_plain_zarr(store):
    root = zarr.open_group(str(store), mode="r")  # no robot-learning code involved
    assert root.attrs["schema"] == "robot_learning.dataset" and root.attrs["schema_version"] == 1
    ep = root["episodes"]["000000"]
    js = ep["streams"]["joint_states"]
    assert js["t"].shape == (1000,) and js["position"].shape == (1000, 9)
    assert np.all(np.diff(js["t"][:]) > 0)
    assert js["position"][123, 0] == 123
    assert ep["streams"]["front_color"]["data"].shape == (59, 48, 64, 3)
    assert ep.attrs["status"] == "complete" and ep.attrs["success"] is False
    assert ep.attrs["stream_counts"]["joint_states"] == 1000


def test_step_table_from_memory_equals_the_one_read_back_from_disk(store, monkeypatch):
    """Finishing builds the step table from what the writer still holds; a rebuild (repair,
    recovery) reads the stored streams: both must give the same table, and a stream too long
    to hold is read back."""
    import robot_learning.data.store as store_mod
    from robot_learning.data.steps import write_steps

    def steps_of(group):
        return {k: a[:] for k, a in group["steps"].members(max_depth=None) if isinstance(a, zarr.Array)}

    monkeypatch.setattr(store_mod, "HOLD_BYTES", 20_000)  # joint states exceed it: read back
    w = DatasetWriter(store.parent / "e.zarr", RECIPE)
    ep = w.start_episode({"task": "pick_place"})
    record_episode(ep)
    meta = ep.finish(success=True)
    w.close()
    assert ep.streams["joint_states"].held is None and ep.streams["ee_pose"].held is not None
    for path in (store / "episodes" / "000001", store.parent / "e.zarr" / "episodes" / "000000"):
        group = zarr.open_group(str(path), mode="r+")
        held = steps_of(group)
        again = write_steps(group, RECIPE, success=True, t_end=group.attrs["t_end"] + 1e-9)
        disk = steps_of(group)
        assert held.keys() == disk.keys() and len(held) > 20
        for k in held:
            assert np.array_equal(held[k], disk[k]), k
        assert again["n_steps"] == group.attrs["n_steps"]
        assert again["stream_counts"] == group.attrs["stream_counts"]
    assert meta["n_steps"] == 20


def test_steps_hold_the_newest_sample_and_never_look_ahead(store):
    ep = Dataset(store).episode(0)
    t = ep.steps["t"][:]
    assert np.allclose(np.diff(t), 0.1)
    js_t = ep.streams["joint_states"]["t"][:]
    idx = ep.steps["index"]["joint_states"][:]
    assert np.all(js_t[idx] <= t + 1e-9) and np.all(js_t[np.minimum(idx + 1, len(js_t) - 1)] > t - 1e-9)
    pos = ep.steps["obs"]["joint_states.position"][:]
    assert np.array_equal(pos[:, 0], idx.astype(float))  # the row it points at is the row it copied
    cam_idx = ep.steps["index"]["front_color"][:]
    assert np.all(cam_idx >= 0) and np.all(ep.streams["front_color"]["t"][:][cam_idx] <= t)
    act = ep.steps["action"][:]
    assert act.shape == (len(t), 7) and np.allclose(act[:, 6], 0.5)
    # action: newest command before the step ends (commands at 50 Hz: stamped within the last 20 ms)
    k = (t + 0.1 - 10.0) * 500
    assert np.allclose(act[:-1, 0], np.floor((k[:-1] - 1e-6) / 10) * 10 / 1000)


def test_sources_interventions_reward_done(store):
    ds = Dataset(store)
    ep = ds.episode(0)
    src, inter = ep.steps["source"][:], ep.steps["intervention"][:]
    assert set(src.tolist()) == {0, 1}
    assert np.array_equal(src == 1, inter)
    (a, b), = ep.meta["interventions"]
    assert a == pytest.approx(10.8, abs=0.021) and b == pytest.approx(11.2, abs=0.021)
    assert ep.steps["done"][:].sum() == 1 and ep.steps["done"][-1]
    assert ds.episode(1).steps["reward"][-1] == 1.0 and ep.steps["reward"][-1] == 0.0
    assert ds.summary()["success_rate"] == 0.5


def test_bad_input_is_refused_and_never_reaches_the_store(tmp_path):
    logs = []
    rec = Recorder(tmp_path / "b.zarr", RECIPE, log=lambda lvl, m: logs.append(m), flush_interval=0.05)
    rec.start({"task": "t"})
    rec.on_message("front_color", image(1.0), 1.0)
    rec.on_message("front_color", image(1.1, w=16), 1.1)              # size changes mid-stream
    rec.on_message("front_color", image(1.2, enc="16UC1"), 1.2)        # wrong encoding
    bad = image(1.3)
    bad.data = bad.data[:-5]                                            # truncated buffer
    rec.on_message("front_color", bad, 1.3)
    rec.on_message("front_color", image(1.0), 1.4)                     # duplicate stamp
    rec.on_message("front_color", image(0.5), 1.5)                     # out of order
    rec.on_message("tactile_left", image(1.0, 5, 4, "32FC3"), 1.0)     # 5x4 where the recipe says 4x4
    rec.on_message("front_color", image(1.6), 1.6)
    for k in range(60):
        t = 1.0 + k * 0.01
        rec.on_message("joint_states", joints(t, np.zeros(9)), t)
        rec.on_message("ee_pose", pose(t, 0.0), t)
    meta = rec.stop(success=True)
    rec.close()
    assert meta["stream_counts"]["front_color"] == 2
    assert meta["rejected_samples"]["front_color"] == {"bad_size": 2, "bad_encoding": 1, "stamp_order": 2}
    assert meta["rejected_samples"]["tactile_left"] == {"bad_size": 1}
    text = "\n".join(logs)
    assert "/front/color/image_raw" in text and "size 16x48" in text
    assert "out of order or duplicate" in text and "encoding '16UC1', expected 'rgb8'" in text
    ds, problems = validate_store(tmp_path / "b.zarr")
    assert problems == [] and len(ds) == 1


def test_missing_topics_are_reported_in_the_metadata(tmp_path):
    rec = Recorder(tmp_path / "m.zarr", RECIPE, log=lambda *a: None)
    assert "front_color" in rec.silent_streams(within=-1.0)
    rec.start({})
    for k in range(30):
        rec.on_message("joint_states", joints(k * 0.01, np.zeros(9)), k * 0.01)
        rec.on_message("ee_pose", pose(k * 0.01, 0.0), k * 0.01)
    meta = rec.stop(success=None)
    rec.close()
    assert "front_color" in meta["missing_streams"] and "joint_states" not in meta["missing_streams"]


def test_one_writer_at_a_time_and_foreign_stores_refused(tmp_path, store):
    w = DatasetWriter(store, RECIPE)
    with pytest.raises(DatasetError, match="being written by another process"):
        DatasetWriter(store, RECIPE)
    w.close()
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(DatasetError, match="not a robot-learning dataset"):
        Dataset(tmp_path / "other.zarr")
    root = zarr.open_group(str(store), mode="r+")
    root.attrs["schema_version"] = 99
    with pytest.raises(DatasetError, match="schema version 99"):
        Dataset(store)


def test_interrupted_episode_is_recovered_up_to_its_last_flush(tmp_path):
    path = tmp_path / "r.zarr"
    w = DatasetWriter(path, RECIPE)
    ep = w.start_episode({"task": "t"})
    record_episode(ep, seconds=1.0)          # flushed every 100 joint samples
    ep.flush()
    ep.add("joint_states", 99.0, 99.0, {"position": np.zeros(9), "velocity": np.zeros(9), "effort": np.zeros(9)})
    w.close()                                 # no finish: as if the process died here
    with pytest.warns(UserWarning, match="interrupted"):
        ds = Dataset(path)
    assert len(ds) == 0 and ds.incomplete == [0]
    assert repair_path(path) == {0: "recovered"}
    ds, problems = validate_store(path)
    assert problems == []
    ep = ds.episode(0)
    assert ep.meta["status"] == "recovered" and ep.meta["success"] is None
    assert ep.streams["joint_states"]["t"].shape[0] == 500  # the unflushed sample is gone, the rest is there


def test_episode_killed_while_being_created_is_dropped_by_repair(tmp_path):
    """The recorder killed between creating an episode's group and writing its attributes
    leaves a group with no status: the store reads it as interrupted, and repair drops it."""
    path = tmp_path / "c.zarr"
    w = DatasetWriter(path, RECIPE)
    ep = w.start_episode({"task": "t"})
    record_episode(ep, seconds=0.5)
    ep.finish(success=True)
    w.root["episodes"].create_group("000001")   # then the process died
    w.close()
    with pytest.warns(UserWarning, match="interrupted"):
        assert Dataset(path).incomplete == [1]
    assert repair_path(path) == {1: "dropped"}
    ds, problems = validate_store(path)
    assert problems == [] and ds.indices == [0]


def test_permission_error_is_clear_and_loses_nothing(tmp_path, store):
    ro = tmp_path / "readonly"
    ro.mkdir()
    os.chmod(ro, 0o555)
    os.chmod(tmp_path, 0o755)
    # imports first: after dropping root this user may not read the interpreter's own files
    code = ("import sys, os\n"
            "from robot_learning.data.store import DatasetWriter, DatasetError\n"
            "import robot_learning.data.repair, robot_learning.data.steps\n"
            "from robot_learning.data.schema import load_recipe\n"
            "recipe = load_recipe('datasets/recipes/workcell.yaml')\n")
    if os.geteuid() == 0:
        code += "os.setgid(65534); os.setuid(65534)\n"
    code += ("try:\n"
             f"    DatasetWriter('{ro}/x.zarr', recipe)\n"
             "except DatasetError as e:\n"
             "    print(e); sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(),
                       env={**os.environ, "ROBOT_LEARNING_HOME": os.getcwd()})
    assert r.returncode == 3, r.stderr
    assert "permission" in r.stdout and "choose a writable directory" in r.stdout, r.stdout
    assert not (ro / "x.zarr").exists()


def test_disk_full_is_reported_and_finished_episodes_stay(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        logs = []
        rec = Recorder(mnt / "f.zarr", RECIPE, log=lambda lvl, m: logs.append(m), flush_interval=0.01)
        rec.start({})
        for k in range(20):
            t = k * 0.05
            rec.on_message("joint_states", joints(t, np.zeros(9)), t)
            rec.on_message("ee_pose", pose(t, 0.0), t)
        first = rec.stop(success=True)
        assert first["status"] == "complete"
        rec.start({})
        rng = np.random.default_rng(0)
        for k in range(400):  # incompressible frames: the disk fills up
            m = image(10 + k * 0.03, 320, 240)
            m.data = rng.integers(0, 255, len(m.data), dtype=np.uint8).tobytes()
            rec.on_message("front_color", m, 10 + k * 0.03)
        import time

        deadline = time.monotonic() + 30
        while rec.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        rec.close()
        assert rec.error and "disk is full" in rec.error
        assert any("disk is full" in m for m in logs)
        ds, problems = validate_store(mnt / "f.zarr")
        assert len(ds) == 1 and ds.episode(0).meta["n_steps"] == first["n_steps"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_to_sample_refuses_mismatched_joint_arrays():
    m = joints(1.0, [0.0, 1.0])
    m.velocity = [0.0]
    with pytest.raises(BadSample, match="2 joint names but 2 positions, 1 velocities"):
        to_sample(RECIPE.streams["joint_states"], m, 1.0)


def test_gaps_in_a_steady_stream_are_counted_in_the_episode(tmp_path):
    """A recorder that fell behind (or a publisher that stalled) leaves a hole: the episode's
    metadata says which stream, how many messages and how long, judged from the stream's own rate."""
    w = DatasetWriter(tmp_path / "g.zarr", RECIPE)
    ep = w.start_episode({"task": "pick_place"})
    record_episode(ep, lose_joints=(400, 500))  # 0.2 s of 500 Hz joint states
    meta = ep.finish(success=True)
    w.close()
    assert set(meta["gaps"]) == {"joint_states"}, meta["gaps"]
    g = meta["gaps"]["joint_states"]
    assert g["gaps"] == 1 and g["missing"] == 100 and g["rate_hz"] == 500.0 and abs(g["longest_s"] - 0.202) < 1e-6
    assert Dataset(tmp_path / "g.zarr").episode(0).meta["gaps"] == meta["gaps"]


def test_stop_waits_for_what_was_published_before_it(tmp_path):
    """A recorder seconds behind its publishers (a busy machine) still ends each steady stream
    at the stop time; a stream that went silent costs at most the drain time, and is named."""
    import threading

    logs: list[str] = []
    rec = Recorder(tmp_path / "late.zarr", RECIPE, log=lambda lvl, m: logs.append(m), flush_interval=0.05)
    rec.start({"task": "pick_place", "t_start_clock": 100.0})
    for k in range(250):  # 1 s of joint states and poses that arrived in time
        t = 100.0 + k / 250
        rec.on_message("joint_states", joints(t, np.zeros(9)), t)
        rec.on_message("ee_pose", pose(t, 0.1), t)

    def late():  # the second up to the stop time comes in while stop() waits; poses stopped
        for k in range(250, 500):
            t = 100.0 + k / 250
            rec.on_message("joint_states", joints(t, np.zeros(9)), t)
            time.sleep(0.001)

    feeder = threading.Thread(target=late)
    feeder.start()
    t0 = time.monotonic()
    meta = rec.stop(success=True, t_end=101.99, drain=1.0)
    waited = time.monotonic() - t0
    feeder.join()
    rec.close()
    ep = Dataset(tmp_path / "late.zarr").episode(meta["index"])
    assert ep.streams["joint_states"]["t"][-1] >= 101.99       # nothing cut off the end
    assert ep.streams["ee_pose"]["t"][-1] < 101.0 and waited < 3.0
    assert any("/arm/ee_pose" in m and "without the last" in m for m in logs), logs


def test_the_recorder_reports_its_backlog_and_what_each_stream_took(tmp_path):
    """What /diagnostics shows: messages taken but not yet written (a writer that falls behind
    is seen, not silent) and each stream's count in the current episode."""
    import threading

    rec = Recorder(tmp_path / "s.zarr", RECIPE, log=lambda *a: None, flush_interval=0.05)
    gate, handle = threading.Event(), rec._handle
    rec._handle = lambda item: (gate.wait(), handle(item))  # a writer stuck on a slow disk
    rec.start({})
    for k in range(50):
        rec.on_message("joint_states", joints(k * 0.01, np.zeros(9)), k * 0.01)
    rec.on_message("ee_pose", pose(0.0, 0.1), 0.0)
    s = rec.stats()
    assert s["recording"] and s["received"] == {"joint_states": 50, "ee_pose": 1}
    assert s["backlog"] >= 50 and s["backlog_max"] >= 50
    gate.set()
    meta = rec.stop(success=True)
    assert rec.stats()["backlog_max"] >= 50  # the deepest since the last look
    s = rec.stats()
    rec.close()
    assert meta["stream_counts"]["joint_states"] == 50
    assert not s["recording"] and s["backlog"] == 0 and s["backlog_max"] == 0


def test_a_writer_that_falls_behind_sheds_camera_frames_past_its_bound_and_keeps_every_small_message(tmp_path):
    """The queue is memory and a stop waits for it: a writer stuck behind (here on a gate) once
    grew it to 12 GB and held the stop for minutes. Past the bound, frames are shed, counted in
    the episode and reported as it happens; joint states are all kept."""
    import threading

    logs: list[str] = []
    rec = Recorder(tmp_path / "shed.zarr", RECIPE, log=lambda lvl, m: logs.append(m), flush_interval=0.05,
                   max_backlog_bytes=3 << 20)  # three 640x480 RGB frames (0.88 MiB each)
    gate, handle = threading.Event(), rec._handle
    rec._handle = lambda item: (gate.wait(), handle(item))
    rec.start({})
    for k in range(200):
        t = 10.0 + k * 0.002
        rec.on_message("joint_states", joints(t, np.full(9, k, float)), t)
        if k % 10 == 0:
            rec.on_message("front_color", image(t, w=640, h=480, value=k), t)
            rec.on_message("tactile_left", image(t, 4, 4, "32FC3"), t)
    time.sleep(0.1)
    s = rec.stats(reset_max=False)
    assert s["shed"] == {"front_color": 17} and s["received"]["front_color"] == 3
    assert 2.5 < s["backlog_mib"] <= 3.0 and s["backlog"] >= 222  # the writer holds one at its gate
    assert s["behind_s"] >= 0.1  # the writer has held the first message since it was queued
    assert any("shedding camera frames" in m and "/front/color/image_raw" in m for m in logs), logs
    gate.set()
    meta = rec.stop(success=True)
    s = rec.stats()
    rec.close()
    assert meta["shed"] == {"front_color": 17}
    assert meta["stream_counts"]["joint_states"] == 200 and meta["stream_counts"]["tactile_left"] == 20
    assert meta["stream_counts"]["front_color"] == 3
    assert s["backlog_mib"] == 0.0 and s["shed"] == {}  # the next episode starts with a clean count
    ep = Dataset(tmp_path / "shed.zarr").episode(meta["index"])
    assert ep.meta["shed"] == {"front_color": 17}


def test_a_writer_stuck_for_longer_than_its_time_bound_sheds_frames_and_takes_them_again_once_caught_up(tmp_path):
    """A stop waits for the backlog and a service client waits about a minute, so a writer
    that far behind sheds frames even under the byte bound. Here it is stuck flushing (where
    a slow disk holds it), with nothing left in its queue: it still counts as behind."""
    import threading

    rec = Recorder(tmp_path / "behind.zarr", RECIPE, log=lambda *a: None, flush_interval=0.01, max_behind_s=0.3)
    rec.start({})
    ep, gate = rec.episode, threading.Event()
    flush = ep.flush
    ep.flush = lambda *a, **k: (gate.wait(), flush(*a, **k))
    rec.on_message("front_color", image(10.0, w=640, h=480), 10.0)  # taken, then the writer sticks in flush
    time.sleep(0.2)
    rec.on_message("joint_states", joints(10.0, np.zeros(9)), 10.0)  # waits in the queue from now
    time.sleep(0.4)
    assert rec.stats(reset_max=False)["behind_s"] >= 0.4
    for k in range(1, 4):
        rec.on_message("joint_states", joints(10.0 + k * 0.01, np.zeros(9)), 10.0 + k * 0.01)
        rec.on_message("front_color", image(10.0 + k * 0.01, w=640, h=480), 10.0 + k * 0.01)
    assert rec.stats(reset_max=False)["shed"] == {"front_color": 3}
    gate.set()
    deadline = time.monotonic() + 10
    while rec.stats(reset_max=False)["behind_s"] > 0.0 and time.monotonic() < deadline:
        time.sleep(0.01)
    rec.on_message("front_color", image(10.1, w=640, h=480), 10.1)  # caught up: frames are taken again
    meta = rec.stop(success=True)
    rec.close()
    assert meta["shed"] == {"front_color": 3}
    assert meta["stream_counts"]["front_color"] == 2 and meta["stream_counts"]["joint_states"] == 4


def test_an_action_default_must_have_the_width_the_message_type_gives():
    raw = {"streams": {"cmd": {"topic": "/c", "type": "TwistStamped"}},
           "steps": {"rate": 10, "action": [{"array": "cmd.data", "default": [0.0]}]}}
    with pytest.raises(ConfigError, match="'cmd.data' has 6 values per sample but its default has 1"):
        parse_recipe(raw)
    del raw["steps"]["action"][0]["default"]
    assert parse_recipe(raw).steps.action[0].default == [0.0] * 6  # none given: zeros of the right width


def test_a_recipe_that_does_not_fit_the_data_fails_the_stop_with_what_to_change(tmp_path):
    raw = {"streams": {"joint_states": {"topic": "/joint_states", "type": "JointState"}},
           "steps": {"rate": 10, "observations": ["joint_states.position"],
                     "action": [{"array": "joint_states.position", "default": [0.0, 0.0]}]}}
    logs: list[str] = []
    rec = Recorder(tmp_path / "w.zarr", parse_recipe(raw, "narrow.yaml"), log=lambda lvl, m: logs.append(m))
    rec.start({})
    for k in range(30):
        rec.on_message("joint_states", joints(k * 0.01, np.zeros(9)), k * 0.01)
    msg = "narrow.yaml: steps.action 'joint_states.position' has 9 values per sample but its default has 2"
    with pytest.raises(DatasetError, match=msg):  # not reported saved with a dead writer thread
        rec.stop(success=True)
    with pytest.raises(DatasetError, match="give a default of 9 values"):  # every episode would fail alike
        rec.start({})
    rec.close()
