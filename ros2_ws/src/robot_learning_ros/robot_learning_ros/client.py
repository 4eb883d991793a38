"""GraphClient: a ROS 2 client inside a script, a test or a benchmark, talking to the launched
nodes over real DDS with standard messages only. It runs its own context and spinning thread,
keeps what it subscribes to in memory (``msgs``), and calls services with a timeout."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data


class GraphClient:
    def __init__(self, name: str = "test_client"):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node(name, context=self.ctx)
        self.msgs: dict[str, list] = defaultdict(list)
        self.lock = threading.Lock()
        self._clients: dict[tuple, object] = {}  # (service type, name) -> its client, kept
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.ex.spin()
        except ExternalShutdownException:
            pass
        except (InvalidHandle, RCLError):
            # close() shut the context down while the executor was gathering a wait set: an
            # entity it was adding is being destroyed, or the wait set's context is no longer
            # valid. Anywhere else it is a real error.
            if rclpy.ok(context=self.ctx):
                raise

    def subscribe(self, topic: str, msg_type, sensor: bool = False, latched: bool = False, transform=None,
                  depth: int = 10):
        """Keep every message (or ``transform(message)``, to keep only what a test compares)."""
        if sensor:
            qos = qos_profile_sensor_data
        elif latched:
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        else:
            qos = depth

        def cb(m, topic=topic):
            v = transform(m) if transform else m
            with self.lock:
                self.msgs[topic].append(v)

        self.node.create_subscription(msg_type, topic, cb, qos)

    def publisher(self, topic: str, msg_type, latched: bool = False):
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL) if latched else 10
        return self.node.create_publisher(msg_type, topic, qos)

    def latest(self, topic: str):
        with self.lock:
            return self.msgs[topic][-1] if self.msgs[topic] else None

    def clear(self, topic: str | None = None):
        with self.lock:
            if topic:
                self.msgs[topic] = []
            else:
                self.msgs.clear()

    def wait_for(self, topic: str, n: int = 1, timeout: float = 30.0) -> list:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if len(self.msgs[topic]) >= n:
                    return list(self.msgs[topic])
            time.sleep(0.02)
        raise TimeoutError(f"fewer than {n} messages on {topic} within {timeout} s")

    def call(self, srv_type, name: str, timeout: float = 20.0, **fields):
        """Call a service once and return its response (None if it did not answer in time).

        One client per service, made on the first call and kept: each client is a request
        writer and a reply reader that every participant in the graph discovers and keeps track
        of, so a long-lived caller (the soak, a test calling in a loop) must not make one per
        call; and destroying one while the spinning thread waits on it kills that thread."""
        key = (srv_type, name)
        cli = self._clients.get(key)
        if cli is None:
            cli = self._clients[key] = self.node.create_client(srv_type, name)
        if not cli.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} not available")
        req = srv_type.Request()
        for k, v in fields.items():
            setattr(req, k, v)
        fut = cli.call_async(req)
        end = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < end:
            time.sleep(0.01)
        return fut.result()

    def topic_types(self) -> dict[str, list[str]]:
        return dict(self.node.get_topic_names_and_types())

    def close(self):
        rclpy.try_shutdown(context=self.ctx)
        self.thread.join(timeout=5)
        self.ex.shutdown(timeout_sec=1.0)  # not left to Executor.__del__ (see runtime.spin_main)
        self.node.destroy_node()
