"""Process plumbing shared by the nodes that run their own loop on the main thread."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from robot_learning.headless import HEADLESS_GL, headless_gl_works, use_headless_gl  # noqa: F401 (for nodes that render)
from robot_learning_ros.entry import restore_sigint


def _raise_in_main_thread(exc: type[BaseException]) -> None:
    """``exc`` is raised in the main thread at its next Python instruction, whatever its signals."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.main_thread().ident), ctypes.py_object(exc))


class BackgroundSpin:
    """Spins a node's callbacks on a daemon thread while the main thread runs the node's loop.

    ``close`` shuts the context down first, so the spinning thread wakes and leaves before the
    node and its C++ handles are destroyed (the other order aborts the process at exit).

    A callback that raises ends the spinning; the main thread would then wait forever on
    messages that no longer arrive (an operator node did, silently, for 14 minutes). So the
    error is logged, kept in ``failed``, and KeyboardInterrupt is raised in the main thread,
    which runs its usual shutdown path; ``main`` exits non-zero when ``failed`` is set. The
    exception is set on the thread directly, not by a signal, so it arrives whatever the
    process's signals are. A main thread blocked in a wait that runs no Python gets 2 s, then
    the context is shut down under it.

    It spins in the node's own context, so a test or benchmark can run a node in-process beside
    its clients (``rclpy.Context()``, as for a software RealSense that exists only there); there
    ``interrupt_main=False`` leaves a failure in ``failed`` without interrupting the test run.
    """

    def __init__(self, node: Node, interrupt_main: bool = True):
        self.node = node
        self.ctx = node.context
        self.interrupt_main = interrupt_main
        self.failed: BaseException | None = None
        self._closing = threading.Event()
        restore_sigint()  # a process started with SIGINT ignored: Ctrl-C must still stop it
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self._spin, daemon=True, name=f"{node.get_name()}-spin")
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass
        except Exception as e:
            # closing shuts the context down under the spinning thread; only a failure while
            # rclpy is still up is an error
            if rclpy.ok(context=self.ctx):
                import traceback

                self.failed = e
                self.node.get_logger().error("a callback failed, the node stops:\n" + traceback.format_exc())
                if self.interrupt_main:
                    _raise_in_main_thread(KeyboardInterrupt)
                    if not self._closing.wait(2.0):
                        rclpy.try_shutdown(context=self.ctx)  # wakes a main thread waiting in rclpy

    def close(self) -> None:
        self._closing.set()
        rclpy.try_shutdown(context=self.ctx)
        self.thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_stop_signals() -> None:
    """Call as a node's clean-up begins: a second Ctrl-C or SIGTERM must not cut it short.

    Second signals are common (a terminal's Ctrl-C reaches ``ros2 launch`` and its nodes, and
    the launcher then sends its own SIGINT). One landing in the sim node's clean-up left its
    render threads inside OpenGL and the interpreter aborted at exit (-6, or -11); after
    rclpy's shutdown, SIGTERM's default action would kill the node outright. SIGKILL still
    ends a clean-up that hangs; launchers escalate to it after their grace period."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def stop_on_first_signal() -> None:
    """The first SIGINT or SIGTERM raises KeyboardInterrupt in the main thread and turns both
    off (``ignore_stop_signals``), so no later one can interrupt the clean-up, however soon it
    follows. Call before ``rclpy.init``: rclpy's handlers shut its context down, then pass the
    signal on to these."""

    def first(signum: int, frame: object) -> None:
        ignore_stop_signals()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, first)


def init_with_graceful_stop(args=None) -> threading.Event:
    """``rclpy.init`` without rclpy's signal handlers: the first SIGINT or SIGTERM only sets the
    returned event, so the node can still talk over DDS while it stops (the RL actor hands its
    last transitions to the learner); a second one raises KeyboardInterrupt at once."""
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            ignore_stop_signals()
            raise KeyboardInterrupt(signal.Signals(signum).name)
        stop.set()

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    init_ros(args=args, signal_handler_options=SignalHandlerOptions.NO)
    return stop


def run_until_stopped(factory, args=None) -> None:
    """``main`` of a node whose ``run(running)`` loop owns the main thread and finishes its work
    over DDS when asked to stop (``init_with_graceful_stop``); exits 1 when a callback failed."""
    stop = init_with_graceful_stop(args)
    node = factory()
    spin = BackgroundSpin(node)
    run_then_clean_up(lambda: node.run(lambda: not stop.is_set() and rclpy.ok() and spin.failed is None),
                      spin.close)
    if spin.failed:
        raise SystemExit(1)


def run_then_clean_up(loop, clean_up, context=None) -> None:
    """Run a node's main-thread ``loop`` until a stop, then ``clean_up`` to its end, always.

    A stop signal reaches rclpy first, which shuts the context down at once, and Python's
    handler (the KeyboardInterrupt) only at the main thread's next Python call. A call in flight
    when the context goes down (a publish, a take) fails first ("context is invalid"), and the
    KeyboardInterrupt still due then landed in the clean-up: the sim node's spin thread was left
    running and a test found the traceback in the graph's log (the likely cause, too, of one
    abort at exit: -6, "terminate called without an active exception"). So an error raised once rclpy is down
    (or within 0.5 s of it: an invalidated handle can fail a take before the shutdown completes)
    is a stop; the clean-up starts by turning the stop signals off in a loop that takes the
    KeyboardInterrupt still due, wherever it lands; only then does the clean-up run, and no
    signal can cut it short (``ignore_stop_signals``). A real error is raised after it."""
    try:
        try:
            loop()
        except Exception:
            end = time.monotonic() + 0.5
            while rclpy.ok(context=context) and time.monotonic() < end:
                time.sleep(0.05)
            if rclpy.ok(context=context):
                raise
    except KeyboardInterrupt:
        pass
    finally:
        while True:
            try:
                ignore_stop_signals()  # Python runs a signal still due first, here at the latest
                break
            except KeyboardInterrupt:
                pass
        clean_up()


def spin_main(node: Node, on_shutdown=None) -> None:
    """Spin ``node`` on the main thread until Ctrl-C or SIGTERM, then clean up in the safe order."""
    # spun in short waits, not one endless one: Python runs a signal handler only between
    # instructions of the main thread, and a SIGINT that only Python handles (a process started
    # with SIGINT ignored, see BackgroundSpin) never woke an endless wait: the recorder hung
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)

    def spin() -> None:
        while rclpy.ok(context=node.context):
            executor.spin_once(timeout_sec=0.2)

    def clean_up() -> None:
        if on_shutdown is not None:
            on_shutdown()
        # shut down here, not in Executor.__del__: at exit the collector may free its signal
        # guard condition first, and the executor's own destroy of it then prints a traceback
        # into the node's log (seen in the camera node as "Exception ignored ... InvalidHandle")
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()

    run_then_clean_up(spin, clean_up, node.context)  # ExternalShutdownException too is a stop


def run_node(factory, args=None) -> None:
    """A node's ``main``: init rclpy, build the node, spin it on the main thread until shutdown."""
    init_ros(args=args)
    spin_main(factory())


SHM_DIR = Path("/dev/shm")
MAX_PARTICIPANT_ID = 119  # RTPS port mapping: 250 ports per domain, 2 per participant


def unused_participant_id(domain: int, shm_dir: Path | None = None, taken: set[int] = frozenset()) -> int | None:
    """A participant id above every id that has a Fast DDS shared-memory port in ``domain``,
    live or left by a process that died; once the range is used up, the lowest id with no port
    at all (None when every id has one).

    Fast DDS names a participant's port after its id (``fastdds_port<7411 + 250 domain + 2 id>``),
    and a process started after a crash gets the lowest free id: the dead one's. Peers that
    have not yet noticed the death still hold the old port's memory and keep writing there, so
    nothing they send reaches the new process (eProsima/Fast-DDS#5053, #5469; seen here as a
    restarted recorder that never answered a service call). A name no process has used cannot
    be held by anyone. A process that exits cleanly removes its port and tells its peers, so
    its id is safe to take again once ids run out (a long test run, a robot PC up for weeks).
    ``taken``: ids to count as used besides the ports (locked by a node still starting)."""
    base = 7411 + 250 * domain
    used = set(taken)
    for f in (shm_dir or SHM_DIR).glob("fast*_port*"):
        m = re.fullmatch(r"fast(?:dds|rtps)_port(\d+)", f.name)
        if m and base <= int(m.group(1)) <= base + 2 * MAX_PARTICIPANT_ID:
            used.add((int(m.group(1)) - base) // 2)
    pid = max(used, default=-1) + 1
    if pid <= MAX_PARTICIPANT_ID:
        return pid
    return next((i for i in range(MAX_PARTICIPANT_ID + 1) if i not in used), None)


_RESERVED: list[int] = []  # lock files held for the life of the process (one per pinned id)


def _id_file(domain: int, pid: int | str, suffix: str) -> Path:
    """This user's file for participant id ``pid`` in ``domain`` (its lock, its profile copy)."""
    return Path(tempfile.gettempdir()) / f"robot_learning_fastdds_{os.getuid()}_d{domain}_p{pid}{suffix}"


def _reserve(domain: int, pid: int) -> bool:
    """Hold a lock on ``pid`` in ``domain`` until this process ends: two nodes started at the same
    moment see the same ports in /dev/shm, and only one of them may take the id they compute."""
    fd = os.open(_id_file(domain, pid, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _RESERVED.append(fd)
    return True


def join_with_fresh_participant_id(log=print, shm_healthy_check_ms: int | None = None,
                                   release_reader_memory: bool = False) -> int | None:
    """Call before ``rclpy.init`` (``init_ros`` does): pins this process's participant id to one
    no process has used (see ``unused_participant_id``), through a copy of the Fast DDS profile
    in use, so that a node restarted after a crash (SIGKILL, power cut) is heard at once by
    peers that still hold its dead predecessor's port. Only with Fast DDS and a profile file
    (the project's set-up always has one); otherwise a no-op.

    ``shm_healthy_check_ms`` sets how long this process's shared-memory port may go unread
    before writers take it for dead and drop what is queued there (Fast DDS's
    ``healthy_check_timeout_ms``, 1 s by default; the port's creator sets it for everyone).
    Only a node that must not lose messages while starved needs more: a port opened inside
    that window blocks its opener for a third of it, which slows discovery of this node.

    ``release_reader_memory``: see ``_release_reader_memory``."""
    profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
    if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp" or not profile:
        return None
    try:
        tree = ElementTree.parse(profile)
    except (OSError, ElementTree.ParseError) as e:
        log(f"not pinning the DDS participant id: cannot read {profile} ({e})")
        return None
    ns = tree.getroot().tag[:tree.getroot().tag.index("}") + 1] if tree.getroot().tag.startswith("{") else ""
    default = next((p for p in tree.getroot().iter(f"{ns}participant") if p.get("is_default_profile") == "true"),
                   None)
    if default is None:
        return None
    domain = int(os.environ.get("ROS_DOMAIN_ID", "0") or 0)
    locked: set[int] = set()
    pid = unused_participant_id(domain)
    while pid is not None and not _reserve(domain, pid):
        locked.add(pid)
        pid = unused_participant_id(domain, taken=locked)
    rtps = default.find(f"{ns}rtps")
    if rtps is None:
        rtps = ElementTree.SubElement(default, f"{ns}rtps")
    inherited = rtps.find(f"{ns}participantID")  # a parent's pinned copy: that id is in use
    if inherited is not None:
        rtps.remove(inherited)
    if pid is not None:
        el = ElementTree.Element(f"{ns}participantID")
        el.text = str(pid)
        rtps.insert(0, el)
    else:
        # every id has a port (a long test run with crashed nodes, a robot PC up for weeks):
        # Fast DDS picks the id, but the recorder still needs its longer shared-memory check.
        # Without it a full busy test run's recorder lost everything after a 3 s stall.
        log(f"every DDS participant id in domain {domain} has a port in {SHM_DIR}: Fast DDS picks "
            "this process's id (a peer that still holds a crashed node's port may not reach it)")
    if shm_healthy_check_ms is not None:
        _set_shm_healthy_check(tree, ns, shm_healthy_check_ms)
    if release_reader_memory:
        _release_reader_memory(tree, ns, rtps)
    if ns:
        ElementTree.register_namespace("", ns[1:-1])
    # one file per domain and id (bounded, overwritten on reuse; a killed node leaves nothing else);
    # with no id, one per set of tunings
    out = _id_file(domain, pid, ".xml") if pid is not None else _id_file(
        domain, f"any_hc{shm_healthy_check_ms}_rm{int(release_reader_memory)}", ".xml")
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tree.write(tmp, encoding="UTF-8", xml_declaration=True)
    os.replace(tmp, out)
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(out)
    return pid


def _set_shm_healthy_check(tree: ElementTree.ElementTree, ns: str, ms: int) -> None:
    """``healthy_check_timeout_ms`` of every shared-memory transport in the profile."""
    for td in tree.getroot().iter(f"{ns}transport_descriptor"):
        if (td.findtext(f"{ns}type") or "").strip() == "SHM":
            hc = td.find(f"{ns}healthy_check_timeout_ms")
            if hc is None:
                hc = ElementTree.SubElement(td, f"{ns}healthy_check_timeout_ms")
            hc.text = str(int(ms))


def _release_reader_memory(tree: ElementTree.ElementTree, ns: str, rtps: ElementTree.Element) -> None:
    """Subscriptions that give back the memory of the samples they queued, once taken.

    rmw_fastrtps gives every reader a payload pool that grows to the most samples its history
    ever held and keeps them (PREALLOCATED_WITH_REALLOC): a node whose taking thread fell behind
    for a while keeps that backlog's memory for good. The recorder's reliable queues are 1000
    deep and carry camera frames, so its memory ratcheted up in steps, one per deeper backlog
    (159 -> 397 MiB private in a one-hour soak; a subscriber 20 s behind on 30 Hz frames kept
    380 MiB after catching up, 37 MiB with this). DYNAMIC allocates each sample and frees it.

    rmw_fastrtps only leaves the reader's memory policy to the profile when told to take all QoS
    from XML (RMW_FASTRTPS_USE_QOS_FROM_XML=1, for this process only); so the profile also
    states what rmw sets otherwise: growable discovery histories (messages over 5000 bytes),
    writers with reallocating histories, data sharing off."""
    def child(parent: ElementTree.Element, tag: str) -> ElementTree.Element:
        el = parent.find(f"{ns}{tag}")
        return el if el is not None else ElementTree.SubElement(parent, f"{ns}{tag}")

    builtin = child(rtps, "builtin")
    for tag in ("readerHistoryMemoryPolicy", "writerHistoryMemoryPolicy"):
        child(builtin, tag).text = "PREALLOCATED_WITH_REALLOC"
    profiles = next(tree.getroot().iter(f"{ns}profiles"))
    for kind, policy in (("data_writer", "PREALLOCATED_WITH_REALLOC"), ("data_reader", "DYNAMIC")):
        ep = ElementTree.SubElement(profiles, f"{ns}{kind}",
                                    {"profile_name": f"robot_learning_{kind}", "is_default_profile": "true"})
        qos = ElementTree.SubElement(ep, f"{ns}qos")
        if kind == "data_writer":  # rmw's default publishing mode
            ElementTree.SubElement(ElementTree.SubElement(qos, f"{ns}publishMode"), f"{ns}kind").text = "SYNCHRONOUS"
        ElementTree.SubElement(ElementTree.SubElement(qos, f"{ns}data_sharing"), f"{ns}kind").text = "OFF"
        ElementTree.SubElement(ep, f"{ns}historyMemoryPolicy").text = policy
    os.environ["RMW_FASTRTPS_USE_QOS_FROM_XML"] = "1"


def init_ros(args=None, shm_healthy_check_ms: int | None = None, release_reader_memory: bool = False,
             **kwargs) -> None:
    """``rclpy.init`` for a node's process, under a participant id no process has used: any node
    may be killed and restarted (by a supervisor, a launch respawn, a test). The other arguments
    tune this process's copy of the DDS profile (``join_with_fresh_participant_id``)."""
    join_with_fresh_participant_id(shm_healthy_check_ms=shm_healthy_check_ms,
                                   release_reader_memory=release_reader_memory)
    rclpy.init(args=args, **kwargs)


class _Value:
    def __init__(self, value):
        self.value = value


def lenient_params(node: Node):
    """``declare_parameter`` that takes ``rate:=100`` for a float parameter (and ``1.0`` for an int):
    the value is converted to the default's type instead of refused for its spelling."""
    from rcl_interfaces.msg import ParameterDescriptor

    def declare(name: str, default):
        # a second read of the same parameter gets its value (rclpy refuses a second declaration)
        v = (node.get_parameter(name) if node.has_parameter(name) else
             node.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True))).value
        if isinstance(default, bool) or default is None or v is None:
            return _Value(v)
        if isinstance(default, (int, float)) and isinstance(v, (int, float)) and not isinstance(v, bool):
            return _Value(type(default)(v))
        return _Value(v)

    return declare
