"""Test-wide environment: ROS 2 from the venv, DDS kept on loopback, one domain per run; and
nothing a test started outlives the run, even one stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

VENV = Path(sys.executable).parent.parent
os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(
    p for p in (str(VENV), os.environ.get("AMENT_PREFIX_PATH", "")) if p)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 5))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ["PATH"] = f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(
    Path(__file__).resolve().parents[1] / "ros2_ws/src/robot_learning_ros/config/fastdds_localhost.xml")

try:  # property tests: a quick search in the suite, a long one on request
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("suite", max_examples=60)
    _hypothesis_settings.register_profile("thorough", max_examples=2000)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
except ImportError:
    pass


# s: the teardown's own waits add up to 35 s (a graph's 20, then 15 for the rest); a test of the
# last resort itself sets less
SIGTERM_GRACE = float(os.environ.get("ROBOT_LEARNING_TEST_SIGTERM_GRACE", "60"))
_config: list[pytest.Config] = []


def pytest_configure(config: pytest.Config) -> None:
    _config.append(config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``compute`` tests run beside the graph tests (scripts/test.sh): one that is both would put
    two graphs on the machine at once."""
    both = [i.nodeid for i in items if i.get_closest_marker("graph") and i.get_closest_marker("compute")]
    if both:
        raise pytest.UsageError(f"marked both graph and compute (a compute test starts no ROS graph): {both}")


def _last_resort(grace: float) -> None:
    """A clean stop that has not ended the run ``grace`` s after SIGTERM never will: a busy run
    twice hung there with its launcher and a node alive, cause not found. A CI job's timeout
    would then SIGKILL pytest and leave its processes running. So: print where every thread is
    (for the report), kill everything the tests started and exit, as SIGTERM's default would."""
    import faulthandler
    import time

    time.sleep(grace)
    capman = _config[0].pluginmanager.getplugin("capturemanager") if _config else None
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    sys.stderr.write(f"\nconftest: the run has not ended {grace:.0f} s after SIGTERM; its threads:\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    for p in psutil.Process().children(recursive=True):
        try:
            p.kill()
        except psutil.Error:
            pass
    os._exit(128 + signal.SIGTERM)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """pytest has no SIGTERM handler: the default action ended it on the spot, with no teardown,
    and the graph processes it had started (each launcher in a session of its own) ran on at full
    speed. As a KeyboardInterrupt, pytest stops as on Ctrl-C: fixtures are torn down, stopping
    their graphs, and ``pytest_sessionfinish`` ends whatever is left; ``_last_resort`` ends a
    teardown that hangs. Later SIGTERMs do nothing, so the clean-up finishes (a no-op handler
    rather than SIG_IGN, which children would inherit)."""
    import threading

    signal.signal(signal.SIGTERM, lambda *_: None)
    threading.Thread(target=_last_resort, args=(SIGTERM_GRACE,), daemon=True, name="sigterm-last-resort").start()
    raise KeyboardInterrupt("SIGTERM")


signal.signal(signal.SIGTERM, _stop_on_sigterm)  # conftest is imported in pytest's main thread


@pytest.hookimpl(trylast=True)  # after the fixtures' teardown
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After an interrupted run (SIGTERM, Ctrl-C), end every process the tests started that the
    teardown did not: a fixture interrupted before its ``yield`` is never torn down, and a test
    interrupted between starting a process and handing it to a ``with`` leaks it."""
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        stop_processes(psutil.Process().children(recursive=True))


@pytest.fixture(scope="session")
def scripted_pick_place(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two scripted pick-and-place episodes (seeds 4 and 5, the front camera only) collected
    through the ROS graph, and what a separate client received from the same topics meanwhile.
    Collected once for two tests: test_graph_collect checks the store against the topics, and
    test_graph_real_path compares the real-robot path's recording of seed 4 with it."""
    import hashlib

    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import TwistStamped
    from robot_learning_ros.client import GraphClient
    from robot_learning_ros.msgs import from_stamp
    from sensor_msgs.msg import Image, JointState

    from robot_learning.collect import collect_scripted

    def stamp(m) -> float:
        return from_stamp(m.header.stamp)

    d = tmp_path_factory.mktemp("scripted_pick_place")
    client = GraphClient("collect_observer")
    client.subscribe("/joint_states", JointState, transform=lambda m: (stamp(m), tuple(m.position)), depth=2000)
    client.subscribe("/arm/command/twist", TwistStamped,
                     transform=lambda m: (stamp(m), m.twist.linear.x, m.twist.linear.z, m.twist.angular.z),
                     depth=2000)
    client.subscribe("/front/color/image_raw", Image, sensor=True,
                     transform=lambda m: (stamp(m), hashlib.md5(bytes(m.data)).hexdigest()))
    client.subscribe("/diagnostics", DiagnosticArray, depth=100, transform=lambda m: [
        {kv.key: kv.value for kv in st.values} for st in m.status if st.name == "recorder"])
    try:
        res = collect_scripted("pick_place", 2, d / "demo.zarr", d / "report", d / "collect.log", cameras="front",
                               seed=3, progress=False, timeout=600)
        with client.lock:
            msgs = {k: list(v) for k, v in client.msgs.items()}
    finally:
        client.close()
    return {"path": d / "demo.zarr", "log": d / "collect.log", "result": res, "msgs": msgs}


def stop_processes(procs: list[psutil.Process], grace: float = 15.0) -> None:
    """SIGTERM (nodes and launchers shut down cleanly on it), then SIGKILL after ``grace`` s."""
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _ignored_signals() -> set[int]:
    """Signals this process ignores at the OS level (children inherit exactly these)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return {s for s in (signal.SIGINT, signal.SIGTERM) if mask >> (s - 1) & 1}
    return set()


@pytest.fixture(autouse=True)
def _no_ignored_stop_signals():
    """A test that leaves SIGINT or SIGTERM ignored in pytest's process hands that to every
    process started after it (ignored signals survive exec): a node in a later test then never
    hears its Ctrl-C. Name the test that does it and undo it, so the rest of the run is sound."""
    before = _ignored_signals()
    yield
    leaked = _ignored_signals() - before
    for s in leaked:
        signal.signal(s, signal.default_int_handler if s == signal.SIGINT else _stop_on_sigterm)
    assert not leaked, f"this test left {sorted(signal.Signals(s).name for s in leaked)} ignored in pytest's process"


def _started_by_tests() -> set[psutil.Process]:
    """pytest's descendants, less Python's own helpers: multiprocessing's resource tracker and
    fork-started workers (a pool kept alive has pytest's own command line)."""
    me = psutil.Process()
    own = me.cmdline()
    out = set()
    for p in me.children(recursive=True):
        try:
            cmd = p.cmdline()
            if not any("multiprocessing" in a for a in cmd) and cmd != own:
                out.add(p)
        except psutil.Error:  # gone, or a zombie
            pass
    return out


@pytest.fixture(scope="module", autouse=True)
def _no_process_outlives_its_module():
    """Every process a module's tests started has ended when its last fixture is torn down. A
    node left running (a learner, an actor, a sim) talks to the next module's graph on the same
    domain: an actor of an earlier test sending the next test's learner transitions is a failure
    far from its cause. Name what was left, then end it, so the rest of the run is sound."""
    before = _started_by_tests()
    yield
    left = _started_by_tests() - before
    if left:
        _, alive = psutil.wait_procs(list(left), timeout=5.0)  # a clean exit may be under way
        names = []
        for p in alive:
            try:
                names.append(" ".join(p.cmdline()[:4]))
            except psutil.Error:
                pass
        stop_processes(alive)
        assert not names, f"processes this module started are still running: {names}"
