"""The recorder takes every message a reliable publisher sent, even while it is stalled.

A sensor stream is subscribed reliably when every publisher offers it (a best-effort reader
loses whatever arrives while its thread is starved), and best-effort when one does not (a
reliable reader would not match it at all and the stream would go unrecorded).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from geometry_msgs.msg import WrenchStamped
from rclpy.qos import ReliabilityPolicy
from robot_learning_ros.client import GraphClient
from robot_learning_ros.msgs import SENSOR_QOS, STATE_QOS, wrench_msg
from std_srvs.srv import SetBool, Trigger

from robot_learning.data.store import Dataset
from robot_learning.launch import die_with_parent, find_executable

pytestmark = pytest.mark.graph

RECIPE = {
    "name": "qos",
    "min_steps": 1,
    "streams": {
        "wrench": {"topic": "/qos_test/wrench", "type": "WrenchStamped", "sensor": True},
        "wrench_be": {"topic": "/qos_test/wrench_best_effort", "type": "WrenchStamped", "sensor": True},
    },
    "steps": {"rate": 10.0, "observations": ["wrench.data"], "action": [{"array": "wrench_be.data"}]},
}


STALL_S = 3.0


def _recorder_reliability(client: GraphClient, topic: str) -> ReliabilityPolicy | None:
    subs = [s for s in client.node.get_subscriptions_info_by_topic(topic) if s.node_name == "recorder"]
    return subs[0].qos_profile.reliability if subs else None


def _ranges(xs: list[int]) -> str:
    """Sorted integers as runs: [1, 2, 3, 7] -> "1-3, 7"."""
    runs = [[x for _, x in g] for _, g in itertools.groupby(enumerate(xs), key=lambda ix: ix[1] - ix[0])]
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _shut_down(client: GraphClient, proc: subprocess.Popen) -> None:
    """The test's client, then the recorder with SIGINT as a launcher stops it (killed after 30 s)."""
    client.close()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.05)


def test_recorder_keeps_every_reliable_sensor_message_through_a_stall(tmp_path):
    recipe = tmp_path / "qos.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    log = (tmp_path / "recorder.log").open("wb")
    proc = subprocess.Popen([find_executable("robot_learning_ros", "recorder_node"), "--ros-args",
                             "-p", f"recipe:={recipe}", "-p", f"dataset:={tmp_path / 'qos.zarr'}"],
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    client = GraphClient("qos_test")
    try:
        reliable = client.node.create_publisher(WrenchStamped, "/qos_test/wrench", STATE_QOS)
        best_effort = client.node.create_publisher(WrenchStamped, "/qos_test/wrench_best_effort", SENSOR_QOS)
        _wait(lambda: _recorder_reliability(client, "/qos_test/wrench") is not None
              and _recorder_reliability(client, "/qos_test/wrench_best_effort") is not None, 60,
              "the recorder did not subscribe to both streams: " + (tmp_path / "recorder.log").read_text())
        assert _recorder_reliability(client, "/qos_test/wrench") == ReliabilityPolicy.RELIABLE
        assert _recorder_reliability(client, "/qos_test/wrench_best_effort") == ReliabilityPolicy.BEST_EFFORT
        _wait(lambda: reliable.get_subscription_count() and best_effort.get_subscription_count(), 30,
              "the publishers never matched the recorder")
        res = client.call(Trigger, "/recorder/start_episode", timeout=30)
        assert res.success, res.message

        def send(i: int) -> None:
            reliable.publish(wrench_msg([float(i), 0.0, 0.0, 0.0, 0.0, 0.0], 1000.0 + i * 0.004, "ft_sensor"))
            best_effort.publish(wrench_msg([float(i), 0.0, 0.0, 0.0, 0.0, 0.0], 1000.0 + i * 0.004, "ft_sensor"))

        sent = 0
        for _ in range(100):  # flowing
            send(sent)
            sent += 1
            time.sleep(0.004)
        # a recorder starved for three seconds: far beyond a 100-deep queue, and past Fast DDS's
        # default shared-memory health check (1 s) and the profile's former 2 s lease
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            end = time.monotonic() + STALL_S
            while time.monotonic() < end:
                send(sent)
                sent += 1
                time.sleep(0.004)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        for _ in range(100):
            send(sent)
            sent += 1
            time.sleep(0.004)
        n = sent
        time.sleep(1.0)
        res = client.call(SetBool, "/recorder/stop_episode", timeout=60, data=True)
        assert res.success, res.message
        saved = json.loads(res.message)
        print("STOP", res.message)
    finally:
        _shut_down(client, proc)
    ep = Dataset(tmp_path / "qos.zarr").episode(saved.get("index", 0))
    got = set(ep.stream("wrench")["data"][:, 0].astype(int).tolist())
    lost = [i for i in range(n) if i not in got]
    assert not lost, (f"{len(lost)} of {n} messages lost (sent before the stall: 0-99, during: 100-{n - 101}; "
                      f"lost: {_ranges(lost)})")
    assert len(ep.stream("wrench_be")["data"]) > 0  # matched and recorded, though not all of it


STALLED_READER = """
import os, sys, threading, time
import rclpy
from sensor_msgs.msg import JointState
from robot_learning.data.schema import StreamSpec
from robot_learning_ros.recorder_node import record_qos
from robot_learning_ros.runtime import init_ros

init_ros(release_reader_memory=True)
node = rclpy.create_node("stalled_reader")
got = set()

def take(m):
    got.add(m.header.stamp.sec)
    if len(got) == 250:
        time.sleep(12.0)  # the taking thread stalls; DDS's own threads keep receiving

spec = StreamSpec("joint_states", "/qos_test/joint_states", "sensor_msgs/msg/JointState")
node.create_subscription(JointState, spec.topic, take, record_qos(spec, reliable=True))
threading.Thread(target=rclpy.spin, args=(node,), daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()  # the publisher is done
time.sleep(2.0)
print(len(got), flush=True)
os._exit(0)
"""


def test_recorder_queues_keep_a_long_stall_of_small_high_rate_messages():
    """The soak's worst stall of the recorder's taking thread (about 8 s while DDS kept
    receiving) overflowed 1000-deep queues at 250 Hz. At the recorder's depth for small
    messages, a reader whose taking stalls 12 s keeps all 4,000 joint states sent at 250 Hz."""
    from rclpy.qos import HistoryPolicy, QoSProfile
    from sensor_msgs.msg import JointState
    reader = subprocess.Popen([sys.executable, "-c", STALLED_READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    client = GraphClient("joint_state_publisher")
    try:
        assert reader.stdout.readline().strip() == "ready"
        pub = client.node.create_publisher(JointState, "/qos_test/joint_states", QoSProfile(
            depth=1000, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST))
        _wait(lambda: pub.get_subscription_count() > 0, 30, "the reader to match")
        m = JointState(name=[f"j{i}" for i in range(7)], position=[0.1] * 7)
        t_next = time.monotonic()
        for k in range(4000):
            m.header.stamp.sec = k
            pub.publish(m)
            t_next += 0.004
            time.sleep(max(0.0, t_next - time.monotonic()))
        out, _ = reader.communicate("done\n", timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
        client.close()
    assert int(out.split()[-1]) == 4000, f"the stalled reader kept {out.split()[-1]} of 4000"


def test_the_recorder_node_sheds_frames_past_its_backlog_bound_and_says_so(tmp_path):
    """``max_backlog_mb`` reaches the writer, and shedding is seen where a user looks: the stop
    service's answer, the episode's metadata, a WARN on /diagnostics and the log. A bound below
    one frame sheds every frame (the writer's own bounding is tested on the Recorder); every
    wrench is still kept."""
    import numpy as np
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from robot_learning_ros.msgs import image_msg
    from sensor_msgs.msg import Image

    raw = {"name": "shed", "min_steps": 1,
           "streams": {"wrench": {"topic": "/shed_test/wrench", "type": "WrenchStamped"},
                       "cam": {"topic": "/shed_test/image", "type": "Image", "encoding": "rgb8"}},
           "steps": {"rate": 10.0, "observations": ["wrench.data"], "action": [{"array": "wrench.data"}]}}
    recipe = tmp_path / "shed.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    log_path = tmp_path / "recorder.log"
    proc = subprocess.Popen([find_executable("robot_learning_ros", "recorder_node"), "--ros-args",
                             "-p", f"recipe:={recipe}", "-p", f"dataset:={tmp_path / 'shed.zarr'}",
                             "-p", "max_backlog_mb:=0.1"],
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    client = GraphClient("shed_test")
    try:
        client.subscribe("/diagnostics", DiagnosticArray)
        wrench = client.node.create_publisher(WrenchStamped, "/shed_test/wrench", STATE_QOS)
        cam = client.node.create_publisher(Image, "/shed_test/image", STATE_QOS)
        _wait(lambda: wrench.get_subscription_count() and cam.get_subscription_count(), 60,
              "the recorder did not subscribe: " + log_path.read_text())
        res = client.call(Trigger, "/recorder/start_episode", timeout=30)
        assert res.success, res.message
        frame = np.zeros((240, 320, 3), np.uint8)  # 225 KiB: larger than the bound
        for i in range(300):
            t = 1000.0 + i * 0.01
            wrench.publish(wrench_msg([float(i), 0.0, 0.0, 0.0, 0.0, 0.0], t, "ft_sensor"))
            if i % 3 == 0:
                cam.publish(image_msg(frame, "rgb8", t, "cam"))
            time.sleep(0.01)

        def shed_warning():
            return [st for arr in client.msgs["/diagnostics"] for st in arr.status
                    if st.name == "recorder" and st.level == DiagnosticStatus.WARN and "shed" in st.message]

        def values():
            return {kv.key: kv.value for kv in shed_warning()[-1].values} if shed_warning() else {}

        # every message taken (queued or shed) before the stop
        _wait(lambda: values().get("received/wrench") == "300" and values().get("shed/cam") == "100", 30,
              f"the recorder did not report 300 wrenches and 100 shed frames: {values()}")
        assert "backlog_mib" in values() and "behind_s" in values()
        # its heap's account, for a soak to tell a leak from fragmentation (what the numbers mean:
        # test_heap.py): a node with DDS readers and frames passing through holds tens of MiB
        assert float(values()["heap_mib/in_use"]) > 10 and "heap_mib/free_held" in values(), values()
        res = client.call(SetBool, "/recorder/stop_episode", timeout=60, data=True)
        assert res.success, res.message
        saved = json.loads(res.message)
    finally:
        _shut_down(client, proc)
    assert saved["shed"] == {"cam": 100}, saved
    ep = Dataset(tmp_path / "shed.zarr").episode(saved["index"])
    assert ep.meta["shed"] == {"cam": 100}
    assert sorted(ep.stream("wrench")["data"][:, 0].astype(int).tolist()) == list(range(300))
    log = log_path.read_text()
    assert "shedding camera frames" in log and "100 frame(s) of /shed_test/image shed" in log, log


def test_the_recorder_logs_at_every_level_without_dying():
    """rclpy keys a logging call by the line it is made from and raises when one line logs at
    two severities: the recorder logged every level from one line, and a soak's recorder died
    the first time it shed frames (a warning where it had logged info), mid-episode."""
    import rclpy
    from robot_learning_ros.recorder_node import RecorderNode

    ctx = rclpy.Context()
    ctx.init()
    node = rclpy.create_node("recorder_log_levels", context=ctx)
    try:
        for level in ("info", "warn", "error", "info", "warn"):
            RecorderNode._log(node, level, f"a message at {level}")
    finally:
        node.destroy_node()
        ctx.shutdown()
