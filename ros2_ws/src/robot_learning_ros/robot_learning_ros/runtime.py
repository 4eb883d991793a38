"""Process plumbing shared by the nodes that run their own loop on the main thread."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


class BackgroundSpin:
    """Spins a node's callbacks on a daemon thread while the main thread runs the node's loop.

    ``close`` shuts the context down first, so the spinning thread wakes and leaves before the
    node and its C++ handles are destroyed (the other order aborts the process at exit).
    """

    def __init__(self, node: Node):
        self.node = node
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self._spin, daemon=True, name=f"{node.get_name()}-spin")
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass
        except Exception:
            # closing shuts the context down under the spinning thread; only a failure while
            # rclpy is still up is an error
            if rclpy.ok():
                raise

    def close(self) -> None:
        rclpy.try_shutdown()
        self.thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def spin_main(node: Node, on_shutdown=None) -> None:
    """Spin ``node`` on the main thread until Ctrl-C or SIGTERM, then clean up in the safe order."""
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # Ctrl-C/SIGTERM can invalidate a handle while a message is being taken; rclpy's
        # shutdown follows within moments. Anything else is a real error.
        time.sleep(0.5)
        if rclpy.ok():
            raise
    finally:
        if on_shutdown is not None:
            on_shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


def run_node(factory, args=None) -> None:
    """A node's ``main``: init rclpy, build the node, spin it on the main thread until shutdown."""
    rclpy.init(args=args)
    spin_main(factory())


def clean_stale_shared_memory() -> None:
    """Remove Fast DDS shared-memory ports and segments left by processes that died (SIGKILL,
    power cut), with Fast DDS's own ``fastdds shm clean``: it deletes only files whose lock no
    live process holds. A node restarted after a crash may otherwise fail to open its port and
    stay deaf. Does nothing when the tool is not installed or another RMW is in use."""
    if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return
    script = Path(sys.prefix) / "tools" / "fastdds" / "fastdds.py"  # the ros-fastdds wheel
    cmd = [sys.executable, str(script), "shm", "clean"] if script.is_file() else None
    if cmd is None and shutil.which("fastdds"):
        cmd = ["fastdds", "shm", "clean"]
    if cmd is not None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)


class _Value:
    def __init__(self, value):
        self.value = value


def lenient_params(node: Node):
    """``declare_parameter`` that takes ``rate:=100`` for a float parameter (and ``1.0`` for an int):
    the value is converted to the default's type instead of refused for its spelling."""
    from rcl_interfaces.msg import ParameterDescriptor

    def declare(name: str, default):
        v = node.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True)).value
        if isinstance(default, bool) or default is None or v is None:
            return _Value(v)
        if isinstance(default, (int, float)) and isinstance(v, (int, float)) and not isinstance(v, bool):
            return _Value(type(default)(v))
        return _Value(v)

    return declare
