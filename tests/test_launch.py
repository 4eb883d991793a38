"""The built-in runner reads the project's YAML launch files as ``ros2 launch`` would."""

import pytest

from robot_learning.launch import LaunchError, parse_launch_args, plan
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
