"""The built-in runner reads the project's YAML launch files as ``ros2 launch`` would, and runs
the nodes ``ros2 launch`` would run: the installed package's ``lib/robot_learning_ros/<exec>``."""

import os
import signal
import subprocess
import sys
import time
from importlib.metadata import distribution
from pathlib import Path

import pytest

from robot_learning.launch import LaunchError, find_executable, parse_launch_args, plan
from robot_learning.paths import project_root

SIM = project_root() / "launch" / "sim.launch.yaml"


def test_sim_launch_plans_the_sim_node_with_its_parameters():
    nodes = plan(SIM, {"task": "peg_in_hole"})
    assert [n.name for n in nodes] == ["sim"]
    cmd = nodes[0].cmd
    assert cmd[0].endswith("sim_node") and "--ros-args" in cmd
    assert "task:=peg_in_hole" in cmd and "real_time_factor:=1.0" in cmd and "__node:=sim" in cmd


def test_if_condition_adds_the_operator():
    nodes = plan(SIM, {"operator": "true", "episodes": "3"})
    assert [n.name for n in nodes] == ["sim", "scripted_operator"]
    assert "episodes:=3" in nodes[1].cmd


def test_include_group_namespace_and_remap(tmp_path):
    inner = tmp_path / "inner.launch.yaml"
    inner.write_text(
        "launch:\n- arg: {name: who}\n"
        "- node: {pkg: robot_learning_ros, exec: sim_node, name: '$(var who)',"
        " remap: [{from: /joint_states, to: /robot/joint_states}]}\n")
    outer = tmp_path / "outer.launch.yaml"
    outer.write_text(
        "launch:\n- let: {name: n, value: cell1}\n"
        "- group:\n    children:\n    - push-ros-namespace: {namespace: '$(var n)'}\n"
        "    - include: {file: '$(dirname)/inner.launch.yaml', arg: [{name: who, value: sim_$(var n)}]}\n")
    (node,) = plan(outer, {})
    assert node.name == "sim_cell1"
    assert "__ns:=/cell1" in node.cmd and "/joint_states:=/robot/joint_states" in node.cmd


def _by_name(nodes) -> dict:
    return {n.name: n.cmd for n in nodes}


@pytest.mark.parametrize("launch_file", ["teleop_collect", "deploy_policy", "hil_rl"])
def test_on_a_robot_the_cells_cameras_and_tactile_sensors_start_with_its_parameters_file(launch_file, tmp_path):
    cell = tmp_path / "my_cell.yaml"
    cell.write_text("front:\n  ros__parameters: {serial_no: '_128422271347'}\n")
    args = {"sim": "false", "sensors": str(cell), "tactile": "serial", "checkpoint": "x", "cameras": "front,wrist"}
    nodes = _by_name(plan(project_root() / "launch" / f"{launch_file}.launch.yaml", args))
    assert "sim" not in nodes and "arm" in nodes
    for name in ("front", "wrist", "left_finger", "right_finger"):
        cmd = nodes[name]
        assert cmd[cmd.index("--params-file") + 1] == str(cell)
    assert nodes["front"][0].endswith("camera_node") and "camera_name:=front" in nodes["front"]
    assert "software_source:=''" in nodes["front"]                        # a USB RealSense
    assert nodes["left_finger"][0].endswith("tactile_node") and "driver:=serial" in nodes["left_finger"]
    only_wrist = _by_name(plan(project_root() / "launch" / f"{launch_file}.launch.yaml",
                               {**args, "cameras": "wrist", "tactile": "none"}))
    assert "wrist" in only_wrist and not {"front", "left_finger", "right_finger"} & set(only_wrist)


def test_the_sim_as_hardware_streams_its_renders_through_camera_nodes():
    nodes = _by_name(plan(project_root() / "launch" / "teleop_collect.launch.yaml",
                          {"sim": "false", "sim_hardware": "true", "use_sim_time": "true", "cameras": "front,wrist"}))
    assert "hardware:=true" in nodes["sim"] and "camera_namespace:=sim" in nodes["sim"]
    for cam in ("front", "wrist"):
        assert "software_source:=/sim" in nodes[cam] and "use_sim_time:=true" in nodes[cam]
    assert "left_finger" not in nodes  # the sim's own tactile pads
    assert "reset:=home_sim" in nodes["scripted_operator"]  # never teleports the arm arm_node drives
    in_sim = _by_name(plan(project_root() / "launch" / "teleop_collect.launch.yaml", {}))
    assert "reset:=sim" in in_sim["scripted_operator"]
    rl = _by_name(plan(project_root() / "launch" / "hil_rl.launch.yaml",
                       {"sim": "false", "sim_hardware": "true", "use_sim_time": "true", "cameras": "wrist"}))
    assert "hardware:=true" in rl["sim"] and "software_source:=/sim" in rl["wrist"] and "arm" in rl
    assert "reset:=home_sim" in rl["rl_graph_actor"]


@pytest.mark.parametrize("launch_file", ["teleop_collect", "deploy_policy", "hil_rl"])
def test_a_sim_parameter_file_reaches_the_sim_in_every_graph(launch_file):
    """Collecting, deploying and learning on a perturbed "real" sim or on sysid's fit."""
    f = project_root() / "launch" / f"{launch_file}.launch.yaml"
    for args in ({}, {"sim": "false", "sim_hardware": "true", "use_sim_time": "true"}):
        nodes = _by_name(plan(f, {**args, "randomization": "/cell/fitted.yaml", "checkpoint": "x"}))
        assert "randomization:=/cell/fitted.yaml" in nodes["sim"], (args, nodes["sim"])
    assert "randomization:=none" in _by_name(plan(f, {"checkpoint": "x"}))["sim"]


def test_errors_are_clear(tmp_path):
    with pytest.raises(LaunchError, match="not found"):
        plan(tmp_path / "missing.launch.yaml", {})
    bad = tmp_path / "bad.launch.yaml"
    bad.write_text("launch:\n- node: {pkg: robot_learning_ros, exec: sim_node, name: '$(var nope)'}\n")
    with pytest.raises(LaunchError, match="nope"):
        plan(bad, {})
    bad.write_text("launch:\n- node: {pkg: robot_learning_ros, exec: no_such_node}\n")
    with pytest.raises(LaunchError, match="no_such_node"):
        plan(bad, {})
    with pytest.raises(LaunchError, match="name:=value"):
        parse_launch_args(["task=pick_place"])


# --- the installed package, as `ros2 launch` finds it --------------------------------------------

VENV = Path(sys.executable).parent.parent
PKG = "robot_learning_ros"


def node_executables() -> list[str]:
    """Every node the package declares: its console-script entry points."""
    return sorted(e.name for e in distribution(PKG).entry_points if e.group == "console_scripts")


def test_every_node_is_installed_where_ros2_launch_looks():
    """ros2 launch runs ``<prefix>/lib/<package>/<exec>`` of the package's ament prefix; pip alone
    puts console scripts in bin/ only ("libexec directory ... does not exist")."""
    assert (VENV / "share/ament_index/resource_index/packages" / PKG).is_file()
    assert (VENV / "share" / PKG / "package.xml").is_file()
    assert (VENV / "share" / PKG / "launch" / "sim.launch.yaml").is_file()
    names = node_executables()
    assert "sim_node" in names and "recorder_node" in names
    for name in names:
        exe = VENV / "lib" / PKG / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing or not executable"
        assert find_executable(PKG, name) == str(exe)


def test_runner_resolves_executables_as_ros2_launch_does(tmp_path, monkeypatch):
    """The first prefix that registers the package is the only place looked in: no fallback to
    bin/ or PATH, which would run nodes `ros2 launch` cannot find."""
    launch = tmp_path / "all.launch.yaml"
    launch.write_text("launch:\n" + "".join(f"- node: {{pkg: {PKG}, exec: {n}}}\n" for n in node_executables()))
    assert [n.cmd[0] for n in plan(launch, {})] == [str(VENV / "lib" / PKG / n) for n in node_executables()]

    shadow = tmp_path / "shadow"  # registers the package first, but has no lib/<package>/
    (shadow / "share/ament_index/resource_index/packages").mkdir(parents=True)
    (shadow / "share/ament_index/resource_index/packages" / PKG).touch()
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{shadow}{os.pathsep}{VENV}")
    with pytest.raises(LaunchError, match="libexec directory .* does not exist"):
        plan(launch, {})
    (shadow / "lib" / PKG).mkdir(parents=True)
    with pytest.raises(LaunchError, match="sim_node"):
        find_executable(PKG, "sim_node")


_PARAM_SERVICES = {"describe_parameters", "get_parameter_types", "get_parameters", "list_parameters",
                   "set_parameters", "set_parameters_atomically", "get_type_description"}


def _own_endpoints(node, name: str) -> int:
    """Topics, services and clients a node made itself (rclpy gives every node the others);
    0 while it is not discovered."""
    from rclpy.node import NodeNameNonExistentError

    try:
        topics = [t for get in (node.get_publisher_names_and_types_by_node,
                                node.get_subscriber_names_and_types_by_node)
                  for t, _ in get(name, "/") if t not in ("/rosout", "/parameter_events")]
        services = [s for get in (node.get_service_names_and_types_by_node, node.get_client_names_and_types_by_node)
                    for s, _ in get(name, "/") if s.rsplit("/", 1)[-1] not in _PARAM_SERVICES]
    except NodeNameNonExistentError:
        return 0
    return len(topics) + len(services)


# what a node needs to start on its own, without hardware or a dataset of the user's
START_ARGS = {
    "sim_node": ["-p", "cameras:=none"],
    "teleop_node": ["-p", "device:=gamepad"],
    "bench_publisher": ["-p", "frames:=1"],
}


@pytest.mark.graph
def test_every_node_executable_starts_and_stops_cleanly(tmp_path):
    """Each ``lib/robot_learning_ros/<exec>`` runs its node: it joins the ROS graph, builds its
    interfaces, and exits with 0 on SIGINT (what ros2 launch sends on Ctrl-C). One at a time, so
    that none finds another to work with (an evaluator would start episodes with a sim)."""
    from robot_learning_ros.client import GraphClient

    from robot_learning.config import load_yaml
    from robot_learning.rl.classifier import ClassifierConfig, SuccessClassifier

    classifier = SuccessClassifier(ClassifierConfig(obs_keys=["ee_pose.data"], obs_dim=7)).save(
        tmp_path / "classifier", {"recipe": load_yaml("datasets/recipes/workcell.yaml")})
    args = {**START_ARGS, "recorder_node": ["-p", f"dataset:={tmp_path / 'probe.zarr'}"],
            "reward_node": ["-p", f"classifier:={classifier}"]}
    client = GraphClient("exec_probe")
    try:
        for name in node_executables():
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                # started with SIGINT ignored, as under nohup or `&` in a script: rclpy still
                # takes SIGINT (the recorder did not once, and hung in background test runs)
                proc = subprocess.Popen([str(VENV / "lib" / PKG / name), "--ros-args", "-r", f"__node:=probe_{name}",
                                         *args.get(name, [])], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            try:
                end = time.monotonic() + 90
                while not _own_endpoints(client.node, f"probe_{name}"):
                    assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}"
                    assert time.monotonic() < end, f"{name} not up in 90 s:\n{log.read_text()[-2000:]}"
                    time.sleep(0.1)
                time.sleep(1.0)  # past the rest of its constructor
                proc.send_signal(signal.SIGINT)
                rc = proc.wait(30)
                assert rc == 0, f"{name} exited with {rc} on SIGINT:\n{log.read_text()[-2000:]}"
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        client.close()


def _mapped(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.graph
def test_a_node_started_with_sigint_ignored_stops_on_a_sigint_sent_while_it_imports(tmp_path):
    """Under ``nohup`` or ``&`` in a script a node starts with SIGINT ignored, and its imports
    (rclpy, MuJoCo, torch) take seconds before ``main`` can handle one. A script that stops it
    with a SIGINT in that time must not wait on it forever: the SIGINT is sent as soon as
    rclpy's library is loaded, while the sim node is still importing."""
    log = tmp_path / "sim_node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(VENV / "lib" / PKG / "sim_node"), "--ros-args", "-p", "cameras:=none"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        end = time.monotonic() + 60
        while not _mapped(proc.pid, "librcl.so") and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.005)
        assert proc.poll() is None, f"sim_node exited with {proc.returncode} before it was stopped:\n{log.read_text()}"
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"sim_node ignored the SIGINT sent while it imported:\n{log.read_text()[-2000:]}")
        assert rc == 0, f"sim_node exited with {rc}:\n{log.read_text()[-2000:]}"
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
