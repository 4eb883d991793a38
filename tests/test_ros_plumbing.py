"""The message and process plumbing every node relies on: images built in one copy, stamps
that never step back, and a node restarted after SIGKILL that its peers can still reach."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from robot_learning_ros.client import GraphClient
from robot_learning_ros.msgs import image_from_msg, image_msg, stamp_of_serialized, to_stamp
from robot_learning_ros.runtime import MAX_PARTICIPANT_ID, unused_participant_id
from std_srvs.srv import Trigger


def test_image_msg_copies_flipped_views_upright_and_refills_its_buffer():
    rng = np.random.default_rng(0)
    gl = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)  # as read back from OpenGL: bottom row first
    m = image_msg(gl[::-1], "rgb8", 10.25, "cam")
    assert np.array_equal(image_from_msg(m), gl[::-1]) and m.step == 64 * 3
    buf = m.data
    gl2 = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    assert image_msg(gl2[::-1], "rgb8", 10.5, "cam", reuse=m) is m
    assert m.data is buf  # same size: refilled in place, no new buffer
    assert np.array_equal(image_from_msg(m), gl2[::-1]) and m.header.stamp.nanosec == 500_000_000
    depth = rng.integers(0, 4000, (24, 32), dtype=np.uint16)
    image_msg(depth, "16UC1", 11.0, "cam", reuse=m)  # another size and encoding: a new buffer
    assert np.array_equal(image_from_msg(m), depth) and m.step == 64


def test_the_stamp_of_a_serialized_frame_is_read_without_decoding_it():
    """A raw subscription (the evaluator's thumbnails) picks frames by stamp from the bytes."""
    for t in (0.004, 1795307318.25):
        data = serialize_message(image_msg(np.zeros((4, 6, 3), np.uint8), "rgb8", t, "cam"))
        assert stamp_of_serialized(data) == pytest.approx(t, abs=1e-9)


def test_stamps_never_step_back_a_second():
    for t in (1.9999999999, 1795307318.9999999999, 5.0, 0.1234567891):
        s = to_stamp(t)
        assert 0 <= s.nanosec < 1_000_000_000
        assert abs(s.sec + s.nanosec * 1e-9 - t) < 1e-6


def test_participant_id_above_every_port_live_or_dead(tmp_path):
    base = 7411 + 250 * 3
    for name in (f"fastdds_port{base}", f"fastdds_port{base + 2}", f"fastdds_port{base + 10}",
                 f"fastdds_port{base + 10}_el", f"fastdds_port{base + 250}", "fastdds_3f2a"):
        (tmp_path / name).touch()
    assert unused_participant_id(3, tmp_path) == 6  # ids 0, 1 and 5 in domain 3; the next domain's ignored
    assert unused_participant_id(4, tmp_path) == 1
    (tmp_path / f"fastdds_port{base + 238}").touch()  # id 119, the last: ids with no port are taken again
    assert unused_participant_id(3, tmp_path) == 2
    assert unused_participant_id(3, tmp_path, taken={2, 3}) == 4  # locked by nodes still starting
    for i in range(120):
        (tmp_path / f"fastdds_port{base + 2 * i}").touch()
    assert unused_participant_id(3, tmp_path) is None  # every id has a port: Fast DDS picks


TALKER = textwrap.dedent("""
    import sys, time, rclpy
    from std_msgs.msg import String
    rclpy.init()
    node = rclpy.create_node(f"id_{sys.argv[1]}")
    heard = set()
    node.create_subscription(String, "/plumbing/ids", lambda m: heard.add(m.data), 10)
    pub = node.create_publisher(String, "/plumbing/ids", 10)
    end = time.monotonic() + 40
    while time.monotonic() < end and not heard - {sys.argv[1]}:
        pub.publish(String(data=sys.argv[1]))
        rclpy.spin_once(node, timeout_sec=0.1)
    # the other one may not have matched this one yet: discovery is not symmetric in time, and a
    # busy machine once left it 2 s short (it heard nothing while this one had heard it). The tail
    # is counted in seconds: spin_once returns at each of the other's messages, and a tail of 80
    # spins once ended within a second, long before the other had matched this one
    tail_end = time.monotonic() + 8
    while time.monotonic() < tail_end:
        pub.publish(String(data=sys.argv[1]))
        rclpy.spin_once(node, timeout_sec=0.1)
        time.sleep(0.02)
    print(sorted(heard - {sys.argv[1]}), flush=True)
""")


@pytest.mark.graph
def test_participants_at_the_top_of_the_id_range_find_each_other(tmp_path):
    """Node ids climb through a long run (every id stays used while its port is in /dev/shm, and
    a crashed node's stays there): the project's profile must let the last two ids reach each
    other. With rmw's own localhost discovery ids above 31 never met, and a test run that had
    used 32 ids saw its next graph's services as unreachable.

    The pair runs in a domain of its own: in the run's domain the climbing ids of the suite's
    other nodes had reached 118 by the time this test ran in CI, and the pinned 118 heard
    nothing (a live or dead participant already held its port)."""
    profile = Path(os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]).read_text()
    domain = next(d for d in range(231, 214, -1)  # no process has a port there; its ports above the ephemeral range
                  if unused_participant_id(d) == 0 and d != int(os.environ["ROS_DOMAIN_ID"]))
    procs = []
    for pid in (MAX_PARTICIPANT_ID - 1, MAX_PARTICIPANT_ID):
        pinned = tmp_path / f"p{pid}.xml"
        pinned.write_text(profile.replace("<rtps>", f"<rtps><participantID>{pid}</participantID>", 1))
        procs.append(subprocess.Popen([sys.executable, "-c", TALKER, str(pid)], stdout=subprocess.PIPE, text=True,
                                      env={**os.environ, "FASTDDS_DEFAULT_PROFILES_FILE": str(pinned),
                                           "ROS_DOMAIN_ID": str(domain)}))
    heard = [p.communicate(timeout=90)[0].strip() for p in procs]
    assert heard == [f"['{MAX_PARTICIPANT_ID}']", f"['{MAX_PARTICIPANT_ID - 1}']"], heard


SERVER = textwrap.dedent("""
    import os, rclpy
    from std_srvs.srv import Trigger
    from robot_learning_ros.runtime import join_with_fresh_participant_id
    print(join_with_fresh_participant_id(), flush=True)
    rclpy.init()
    node = rclpy.create_node("restarted_server")
    def answer(req, res):
        res.success, res.message = True, str(os.getpid())
        return res
    node.create_service(Trigger, "/plumbing/whoami", answer)
    rclpy.spin(node)
""")


@pytest.mark.graph
def test_a_node_restarted_after_sigkill_is_reached_by_a_long_lived_peer():
    """The peer keeps running across the crash, as an operator console does; each restart is
    immediate, while the peer still counts the dead server as alive."""
    client = GraphClient("plumbing_peer")
    cli = client.node.create_client(Trigger, "/plumbing/whoami")
    ids = []
    try:
        for _ in range(4):
            proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
            ids.append(proc.stdout.readline().strip())
            answered, end = None, time.monotonic() + 30
            while answered is None and time.monotonic() < end:
                if not cli.wait_for_service(timeout_sec=1.0):
                    continue
                fut = cli.call_async(Trigger.Request())
                sent = time.monotonic()
                while not fut.done() and time.monotonic() - sent < 1.5:
                    time.sleep(0.01)
                if fut.done() and fut.result().message == str(proc.pid):
                    answered = fut.result()
                else:
                    cli.remove_pending_request(fut)
            proc.kill()
            proc.wait()
            assert answered is not None, f"the restarted server (participant id {ids[-1]}) was never reached"
    finally:
        client.close()
    assert len(set(ids)) == len(ids) and "None" not in ids, ids  # every restart joined under a new id


def test_nodes_started_together_take_different_participant_ids():
    """A launch file starts its nodes at the same moment: each computes "above every port in
    /dev/shm" before any has created its port, and only the lock keeps them apart."""
    script = textwrap.dedent("""
        import os, sys, time
        from robot_learning_ros.runtime import join_with_fresh_participant_id
        pid = join_with_fresh_participant_id(shm_healthy_check_ms=4000)
        profile = open(os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]).read()
        print(pid, "<healthy_check_timeout_ms>4000</healthy_check_timeout_ms>" in profile, flush=True)
        time.sleep(3.0)  # holds its id while the others start
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    out = [p.communicate(timeout=60)[0].split() for p in procs]
    ids = [o[0] for o in out]
    assert "None" not in ids and len(set(ids)) == 4, ids
    assert all(o[1] == "True" for o in out)  # the recorder's longer shared-memory check is in its profile


def test_a_recorder_started_when_every_id_has_a_port_still_gets_its_longer_shared_memory_check(
        tmp_path, monkeypatch):
    """A long busy test run had used all 120 ids (crashed nodes leave their ports): the recorder
    then joined with the stock profile, Fast DDS's 1 s check, and lost everything after a 3 s
    stall. Fast DDS may pick the id, but the tuning must still be in the profile it reads."""
    from robot_learning_ros import runtime
    domain = int(os.environ["ROS_DOMAIN_ID"])
    for i in range(MAX_PARTICIPANT_ID + 1):
        (tmp_path / f"fastdds_port{7411 + 250 * domain + 2 * i}").touch()
    monkeypatch.setattr(runtime, "SHM_DIR", tmp_path)
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", os.environ["FASTDDS_DEFAULT_PROFILES_FILE"])
    monkeypatch.delenv("RMW_FASTRTPS_USE_QOS_FROM_XML", raising=False)
    said = []
    assert runtime.join_with_fresh_participant_id(said.append, shm_healthy_check_ms=4000) is None
    profile = Path(os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]).read_text()
    assert "<healthy_check_timeout_ms>4000</healthy_check_timeout_ms>" in profile
    assert "participantID" not in profile and "Fast DDS picks" in said[0]


def test_a_callback_that_raises_stops_the_node_with_an_error_instead_of_a_silent_hang():
    """A node whose main thread waits for its callbacks (the scripted operator, the arm node)
    must not wait forever once a callback has died: it logs the traceback and exits non-zero."""
    script = textwrap.dedent("""
        import time
        import rclpy
        from rclpy.node import Node
        from robot_learning_ros.runtime import BackgroundSpin

        rclpy.init()
        node = Node("doomed")
        node.create_timer(0.1, lambda: {}["peg"])
        spin = BackgroundSpin(node)
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            pass
        finally:
            spin.close()
        raise SystemExit(1 if spin.failed else 0)
    """)
    for inherited in (signal.SIG_DFL, signal.SIG_IGN):  # SIG_IGN: started by nohup, or with `&` in a script
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                           preexec_fn=lambda h=inherited: signal.signal(signal.SIGINT, h))
        assert r.returncode == 1, r.stderr[-2000:]
        assert "a callback failed" in r.stderr and "KeyError: 'peg'" in r.stderr


READER = textwrap.dedent("""
    import sys, threading, time
    import psutil, rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from robot_learning_ros.runtime import init_ros
    from robot_learning.heap import release_free_memory

    init_ros(release_reader_memory=sys.argv[1] == "release")
    node = rclpy.create_node("slow_reader")
    slow, taken, lags = [0.0], [0], []

    def take(m):
        taken[0] += 1
        lags.append(time.time() - (m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec))
        time.sleep(slow[0])

    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    node.create_subscription(Image, "/plumbing/frames", take, qos)
    threading.Thread(target=rclpy.spin, args=(node,), daemon=True).start()
    proc = psutil.Process()
    private = lambda: (proc.memory_info().rss - proc.memory_info().shared) / 2**20
    while taken[0] < 30:
        time.sleep(0.1)
    before = private()
    slow[0] = 0.1  # takes 10 frames a second of the 30 that come: DDS queues the rest
    time.sleep(8.0)
    peak = private()
    slow[0] = 0.0
    # caught up when the frames taken are the ones just sent (each carries its sending time):
    # on a busy machine a take is slower and the queue drains for longer
    end = time.monotonic() + 60.0
    while time.monotonic() < end:
        time.sleep(0.5)
        if len(lags) > 10 and max(lags[-10:]) < 0.25:
            break
    time.sleep(1.0)
    release_free_memory()  # what the recorder does once a burst is over (its episode's end)
    print(f"{before:.0f} {peak:.0f} {private():.0f}", flush=True)
    import os; os._exit(0)
""")


@pytest.mark.parametrize("release", [True, False])
def test_a_reader_that_fell_behind_gives_the_backlogs_memory_back_when_told_to(release):
    """The recorder's subscriptions queue seconds of camera frames when its taking thread is
    starved; with ``release_reader_memory`` (the recorder's) that memory goes back once the
    frames are taken, without it (rmw's default: the control case) the reader keeps it."""
    reader = subprocess.Popen([sys.executable, "-c", READER, "release" if release else "keep"],
                              stdout=subprocess.PIPE, text=True)
    client = GraphClient("frames_publisher")
    try:
        frame = image_msg(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8), "rgb8", 0.0, "cam")
        pub = client.node.create_publisher(type(frame), "/plumbing/frames", 100)
        t_end = time.monotonic() + 90.0
        while reader.poll() is None and time.monotonic() < t_end:
            frame.header.stamp = to_stamp(time.time())
            pub.publish(frame)
            time.sleep(1 / 30)
        out = reader.communicate(timeout=10)[0].split()
    finally:
        if reader.poll() is None:
            reader.kill()
        client.close()
    before, peak, after = (float(v) for v in out)
    assert peak - before > 40, f"no backlog built up (private memory {before:.0f} -> {peak:.0f} MiB)"
    if release:
        assert after - before < 0.25 * (peak - before), f"kept {after - before:.0f} of {peak - before:.0f} MiB"
    else:
        assert after - before > 0.75 * (peak - before), f"the control case gave memory back: {before, peak, after}"
