"""The success classifier: labels from a recorded dataset, held-out accuracy, a checkpoint
that loads without running code, and the reward it gives in the env."""

from __future__ import annotations

import json
import pickle
import time
from types import SimpleNamespace

import numpy as np
import pytest
from test_dataset import RECIPE, image, joints, pose, vec6

from robot_learning.data.store import DatasetWriter
from robot_learning.policies.checkpoint import PolicyError
from robot_learning.rl.classifier import load_classifier
from robot_learning.train.classifier import ClassifierTrainConfig, label_episode, train_classifier


def _frame(t: float, x: float, w: int = 64, h: int = 48):
    """A camera frame: a bright bar, as wide as the hand is far, grows from the left; once
    the hand is at the goal (x >= 0.45) a green block shows in the middle (the peg in its hole)."""
    msg = image(t, w, h, value=30)
    rgb = np.full((h, w, 3), 30, np.uint8)
    rgb[: h // 4, : int(w * 2 * x)] = 220
    if x >= 0.45:
        rgb[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = (40, 200, 60)
    msg.data = rgb.tobytes()
    return msg


def _record(ep, t0: float, reach: float, seconds: float = 3.0) -> None:
    """The hand moves from x=0 to ``reach`` and a bar on the front camera grows with it; a success
    is an episode that gets to 0.5 (the last frames are the only ones past 0.4)."""
    for k in range(int(seconds * 50)):
        t, x = t0 + k / 50, reach * k / (seconds * 50 - 1)
        ep.add_message("joint_states", joints(t, np.full(9, 0.1)), t)
        ep.add_message("ee_pose", pose(t, x), t)
        ep.add_message("gripper_state", joints(t, [0.04, 0.04]), t)
        if k % 5 == 0:
            ep.add_message("front_color", _frame(t, x), t)
            ep.add_message("cmd_twist", vec6(t, [0.1, 0, 0, 0, 0, 0]), t)
            ep.add_message("cmd_gripper", SimpleNamespace(data=0.0), t)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    path = tmp_path_factory.mktemp("cls") / "d.zarr"
    w = DatasetWriter(path, RECIPE)
    rng = np.random.default_rng(0)
    for i in range(12):
        success = i % 2 == 0
        ep = w.start_episode({"task": "pick_place", "operator": "test"})
        _record(ep, 10.0 + 10 * i, 0.5 if success else rng.uniform(0.1, 0.3))
        ep.finish(success=success)
    w.close()
    return path


@pytest.mark.compute
def test_labels_leave_a_margin_before_the_success_frames():
    assert label_episode(10, True, 3, 2).tolist() == [0] * 5 + [-1] * 2 + [1] * 3
    assert label_episode(4, False, 3, 2).tolist() == [0] * 4


@pytest.mark.compute
@pytest.mark.parametrize("looks_at", ["state", "images"])
def test_classifier_learns_success_and_its_checkpoint_loads_without_code(labelled, tmp_path, looks_at):
    cfg = ClassifierTrainConfig(dataset=[str(labelled)], positive_steps=3, margin=2, val_every=3, steps=250,
                                batch_size=64, hidden=[64, 64], out=str(tmp_path), image_size=[24, 32],
                                obs=["ee_pose.data"] if looks_at == "state" else [],
                                images=["front_color"] if looks_at == "images" else [])
    run = train_classifier(cfg, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    val = metrics["val"]
    assert val["positives"] == 2 * 3 and val["negatives"] > 50  # 4 held-out episodes, 2 of them successes
    assert val["accuracy"] >= 0.95 and val["recall"] >= 0.75, metrics
    model, meta = load_classifier(run / "checkpoint")
    assert meta["recipe"]["name"] == "workcell" and meta["config"]["obs_keys"] == cfg.obs
    if looks_at == "state":
        far = model.probability({"state": np.array([0.5, 0, 0.3, 1, 0, 0, 0], np.float32)})
        near = model.probability({"state": np.array([0.05, 0, 0.3, 1, 0, 0, 0], np.float32)})
        assert far > 0.5 > near
    # damage: weights that are a pickle, a config cut short, unknown fields: one sentence each
    ck = run / "checkpoint"
    (ck / "model.safetensors").write_bytes(pickle.dumps({"weights": 1}))
    with pytest.raises(PolicyError, match="model.safetensors"):
        load_classifier(ck)
    text = (ck / "config.json").read_text()
    (ck / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_classifier(ck)
    bad = json.loads(text)
    bad["config"]["layers"] = 3
    (ck / "config.json").write_text(json.dumps(bad))
    with pytest.raises(PolicyError, match="layers"):
        load_classifier(ck)


@pytest.mark.compute
def test_classifier_needs_both_kinds_of_episode(tmp_path):
    path = tmp_path / "only_failures.zarr"
    w = DatasetWriter(path, RECIPE)
    for i in range(2):
        ep = w.start_episode({"task": "pick_place", "operator": "test"})
        _record(ep, 10.0 + 10 * i, 0.2)
        ep.finish(success=False)
    w.close()
    with pytest.raises(SystemExit, match="both kinds"):
        train_classifier(ClassifierTrainConfig(dataset=[str(path)], obs=["ee_pose.data"], steps=1, out=str(tmp_path)),
                         progress=False)


def _pose_msg(x: float, stamp):
    from geometry_msgs.msg import PoseStamped

    m = PoseStamped()
    m.header.stamp, m.header.frame_id = stamp, "panda_link0"
    m.pose.position.x, m.pose.position.z, m.pose.orientation.x = float(x), 0.3, 1.0
    return m


@pytest.mark.graph
def test_reward_node_says_success_on_the_live_topic_once_it_holds(labelled, tmp_path):
    """reward_node (its own process, real DDS) reads /arm/ee_pose through the recipe in the
    classifier's checkpoint: far from the goal the probability stays low and success false;
    at the goal success turns true, but only after ``hold`` ticks in a row."""
    import subprocess

    from robot_learning_ros.client import GraphClient
    from std_msgs.msg import Bool, Float64

    from robot_learning.launch import find_executable

    run = train_classifier(ClassifierTrainConfig(dataset=[str(labelled)], obs=["ee_pose.data"], positive_steps=3,
                                                 margin=2, steps=250, batch_size=64, hidden=[64, 64],
                                                 out=str(tmp_path)), progress=False)
    log = (tmp_path / "reward.log").open("wb")
    proc = subprocess.Popen([find_executable("robot_learning_ros", "reward_node"), "--ros-args", "-p",
                             f"classifier:={run / 'checkpoint'}", "-p", "rate:=20.0", "-p", "hold:=5"],
                            stdout=log, stderr=subprocess.STDOUT)
    client = GraphClient("reward_probe")
    try:
        client.subscribe("/reward/success_probability", Float64, transform=lambda m: m.data, depth=1000)
        client.subscribe("/reward/success", Bool, transform=lambda m: m.data, depth=1000)
        pub = client.publisher("/arm/ee_pose", type(_pose_msg(0.0, client.node.get_clock().now().to_msg())))

        def drive(x: float, seconds: float) -> tuple[list, list]:
            with client.lock:
                client.msgs.clear()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                assert proc.poll() is None, (tmp_path / "reward.log").read_text()[-3000:]
                pub.publish(_pose_msg(x, client.node.get_clock().now().to_msg()))
                time.sleep(0.02)
            with client.lock:
                return list(client.msgs["/reward/success_probability"]), list(client.msgs["/reward/success"])

        deadline = time.monotonic() + 60
        while not drive(0.05, 0.5)[0]:  # until the node is up and has seen a pose
            assert time.monotonic() < deadline, (tmp_path / "reward.log").read_text()[-3000:]
        p_far, s_far = drive(0.05, 2.0)
        p_goal, s_goal = drive(0.5, 2.0)
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)
    assert len(p_far) > 20 and max(p_far) < 0.5 and not any(s_far)
    assert min(p_goal[-10:]) > 0.5 and s_goal[-1]
    assert s_goal.index(True) >= 4  # hold: 5 ticks above the threshold in a row before success


@pytest.mark.compute
def test_classifier_reward_ends_an_env_episode_as_on_a_robot(labelled, tmp_path):
    """``train sac --reward classifier:PATH``: the classifier's verdict is the reward and ends the
    episode; the sim's own success is still reported for evaluation."""
    from robot_learning.train.sac import WorkcellAdapter

    run = train_classifier(ClassifierTrainConfig(dataset=[str(labelled)], obs=["ee_pose.data"], positive_steps=3,
                                                 margin=2, steps=250, batch_size=64, hidden=[64, 64],
                                                 out=str(tmp_path)), progress=False)
    env = WorkcellAdapter("pick_place", [], False, reward=f"classifier:{run / 'checkpoint'}")
    try:
        obs, _ = env.reset(0)
        rewards, xs = [], []
        for _ in range(30):  # the hand moves +x at 0.1 m/s: past 0.45 the classifier says success
            obs, r, term, trunc, info = env.step(np.r_[0.1, 0, 0, 0, 0, 0, 0.0])
            rewards.append(r)
            xs.append(float(obs["ee_pose.data"][0]))
            if term:
                break
        assert term and rewards[-1] == 1.0 and not any(rewards[:-1]) and info["success"] is False
        assert 0.38 < xs[-1] < 0.6  # where the classifier's successes begin, not at the start
    finally:
        env.close()
    with pytest.raises(SystemExit, match="'sim' or 'classifier:PATH'"):
        WorkcellAdapter("pick_place", [], False, reward="shaped")
