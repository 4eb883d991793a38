"""Nothing outlives what started it: a launcher's nodes die with the launcher, even when it is
SIGKILLed, and a test run stopped with SIGTERM ends every process its tests started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.graph

TESTS = Path(__file__).resolve().parent


def still_running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those not yet dead (a zombie waiting for init to reap it counts as dead)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    end = time.monotonic() + timeout
    while (alive := still_running(procs)) and time.monotonic() < end:
        time.sleep(0.1)
    return alive


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def kill_all(procs: list[psutil.Process], popen: subprocess.Popen | None = None) -> None:
    """A test's clean-up: ``popen`` (a launcher, a pytest run) and ``procs``, whatever is left."""
    if popen is not None and popen.poll() is None:
        popen.kill()
        popen.wait()
    for p in still_running(procs):
        p.kill()


def test_nodes_die_with_a_sigkilled_launcher(tmp_path):
    """Each node runs in its own session, so nothing took it down with a SIGKILLed launcher: the
    sim node ran on at full speed, and a node hung on start-up (here one that ignores SIGINT and
    SIGTERM) would never have stopped."""
    prefix = tmp_path / "prefix"  # an ament package with that hung node
    index = prefix / "share/ament_index/resource_index/packages"
    index.mkdir(parents=True)
    (index / "hang_pkg").touch()
    hang = prefix / "lib/hang_pkg/hang_node"
    hang.parent.mkdir(parents=True)
    hang.write_text("#!/bin/sh\ntrap '' INT TERM\nexec sleep 600\n")
    hang.chmod(0o755)
    launch = tmp_path / "two.launch.yaml"
    launch.write_text("launch:\n- node: {pkg: robot_learning_ros, exec: sim_node, name: sim,\n"
                      "          param: [{name: cameras, value: none}]}\n"
                      "- node: {pkg: hang_pkg, exec: hang_node}\n")
    env = {**os.environ, "AMENT_PREFIX_PATH": f"{prefix}{os.pathsep}{os.environ['AMENT_PREFIX_PATH']}"}
    launcher = subprocess.Popen([sys.executable, "-m", "robot_learning.cli", "launch", "--builtin", str(launch)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    nodes: list[psutil.Process] = []
    try:
        out, end = [], time.monotonic() + 90
        while not any("workcell 'pick_place' up" in line for line in out):  # the sim node is running
            assert time.monotonic() < end and launcher.poll() is None, "".join(out)[-3000:]
            out.append(launcher.stdout.readline())
        pids = [m.group(1) for line in out if (m := re.search(r"started \S+ \(pid (\d+)\)", line))]
        nodes = [psutil.Process(int(pid)) for pid in pids]
        assert len(nodes) == 2
        launcher.kill()
        launcher.wait()
        alive = wait_gone(nodes, 5.0)
        assert not alive, f"outlived the launcher: {[cmdline(p) for p in alive]}"
    finally:
        kill_all(nodes, launcher)


INNER_TEST = '''
import os, subprocess, time
from pathlib import Path

import pytest

from robot_learning.graph import SimGraph
from robot_learning.launch import find_executable


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    with SimGraph(tmp_path_factory.mktemp("graph") / "sim.log", cameras="none") as g:
        yield g


def test_until_stopped(graph):
    # a node started by the test itself, in a session of its own, never handed to a fixture
    subprocess.Popen([find_executable("robot_learning_ros", "command_mux"), "--ros-args", "-r", "__node:=stray"],
                     start_new_session=True)
    Path(os.environ["READY_FILE"]).touch()
    time.sleep(600)
'''


def start_inner_run(tmp_path: Path, code: str, **env: str) -> tuple[subprocess.Popen, Path, Path]:
    """``pytest`` on ``code`` with this directory's conftest, in a session of its own (as CI
    runs it); the test touches the returned ready file once it is where SIGTERM should find it."""
    inner = tmp_path / "test_inner.py"
    inner.write_text(code)
    ready, log = tmp_path / "ready", tmp_path / "pytest.log"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "READY_FILE": str(ready), **env}
    with log.open("wb") as out:
        run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                                str(inner)], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    return run, ready, log


def test_a_test_run_stopped_with_sigterm_leaves_no_process_behind(tmp_path):
    """A pytest run (with this directory's conftest) holding a launched sim graph and a node of
    its own is sent SIGTERM, as a CI job's timeout does: it must end, and all it started with it."""
    run, ready, log = start_inner_run(tmp_path, INNER_TEST)
    started: list[psutil.Process] = []
    try:
        end = time.monotonic() + 120
        while True:  # the launcher, its sim node and the test's own node are all up
            assert run.poll() is None and time.monotonic() < end, log.read_text()[-3000:]
            started = psutil.Process(run.pid).children(recursive=True)
            names = " ".join(cmdline(p) for p in started)
            if ready.exists() and "robot_learning.cli launch" in names and "sim_node" in names \
                    and "command_mux" in names:
                break
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        try:
            assert run.wait(90) != 0
        except subprocess.TimeoutExpired:  # say where it hung (a busy run hung here twice, unexplained)
            stacks = subprocess.run(["ps", "-o", "pid,stat,etime,args", "--ppid", str(run.pid)],
                                    capture_output=True, text=True).stdout
            pytest.fail(f"the run did not end within 90 s of SIGTERM; its children:\n{stacks}\n"
                        f"its output:\n{log.read_text()[-3000:]}")
        alive = wait_gone(started, 10.0)
        assert not alive, f"outlived the test run: {[cmdline(p) for p in alive]}\n{log.read_text()[-3000:]}"
        if "after SIGTERM; its threads" in log.read_text():  # ended by the last resort: say where it hung
            warnings.warn(f"the clean stop hung; conftest's last resort ended it:\n{log.read_text()[-3000:]}",
                          stacklevel=1)
    finally:
        kill_all(started, run)


HUNG_TEARDOWN = '''
import os, subprocess, time
from pathlib import Path

import pytest


@pytest.fixture
def stuck():
    subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield
    time.sleep(600)  # a teardown that never ends (a wait with no timeout on a process that hangs)


def test_until_stopped(stuck):
    Path(os.environ["READY_FILE"]).touch()
    time.sleep(600)
'''


def test_a_test_run_whose_clean_stop_hangs_still_ends_with_all_it_started(tmp_path):
    """When the teardown after SIGTERM hangs, pytest sat in it until a CI job's timeout
    SIGKILLed it, and what the tests had started ran on. conftest's last resort says where every
    thread was, kills what the tests started and exits (the grace is shortened here)."""
    run, ready, log = start_inner_run(tmp_path, HUNG_TEARDOWN, ROBOT_LEARNING_TEST_SIGTERM_GRACE="3")
    started: list[psutil.Process] = []
    try:
        end = time.monotonic() + 60
        while not (ready.exists() and (started := psutil.Process(run.pid).children(recursive=True))):
            assert run.poll() is None and time.monotonic() < end, log.read_text()[-3000:]
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        try:
            assert run.wait(60) == 128 + signal.SIGTERM
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end within 60 s of SIGTERM:\n{log.read_text()[-3000:]}")
        text = log.read_text()
        assert "has not ended 3 s after SIGTERM; its threads" in text and "in stuck" in text, text[-3000:]
        assert not wait_gone(started, 5.0), [cmdline(p) for p in started]
    finally:
        kill_all(started, run)


LATE_SIGNAL = """
import itertools, os, subprocess, sys
import rclpy
from robot_learning_ros.runtime import run_then_clean_up, stop_on_first_signal

stop_on_first_signal()  # as the sim node: rclpy's handler first, then ours (KeyboardInterrupt)
rclpy.init()

def loop():
    # SIGINT while the main thread is inside one C call that then fails, as a publish does once
    # rclpy's handler has shut the context down: Python's handler is still due when it fails
    subprocess.Popen(["sh", "-c", f"sleep 0.2; kill -INT {os.getpid()}"])
    sum(itertools.chain(range(2 * 10**8), [None]))

def clean_up():
    for step in ("executor", "node", "cell"):
        print(f"closed the {step}", flush=True)
    print(f"clean-up ran to its end; rclpy up: {rclpy.ok()}", flush=True)

if sys.argv[1] == "naive":  # the sim node's main before run_then_clean_up
    try:
        loop()
    except KeyboardInterrupt:
        pass
    finally:
        clean_up()
else:
    run_then_clean_up(loop, clean_up)
"""


@pytest.mark.parametrize("main", ["naive", "run_then_clean_up"])
def test_a_stop_signal_still_due_when_a_call_fails_under_the_shutdown_does_not_cut_the_clean_up_short(main):
    """A stop signal shuts rclpy's context down at once and raises KeyboardInterrupt only at the
    main thread's next Python call: a publish in flight fails first, and the interrupt still due
    landed in the sim node's clean-up (its spin thread was left running; a test found the
    traceback, another run aborted at exit). The naive main shows the race is real here."""
    out = subprocess.run([sys.executable, "-c", LATE_SIGNAL, main], capture_output=True, text=True, timeout=120)
    if main == "naive":
        assert "KeyboardInterrupt" in out.stderr and "clean-up ran" not in out.stdout, (out.stdout, out.stderr)
    else:
        assert out.returncode == 0, out.stderr[-2000:]
        assert "clean-up ran to its end; rclpy up: False" in out.stdout, (out.stdout, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr[-2000:]
