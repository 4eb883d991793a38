"""The scripted expert through the ROS graph: its own process, standard command topics only."""

import json

import pytest

from robot_learning.graph import SimGraph

pytestmark = pytest.mark.graph


@pytest.mark.parametrize("task", ["pick_place", "peg_in_hole"])
def test_scripted_expert_succeeds_through_the_graph(task, tmp_path):
    # Cameras off and 3x real time: the expert needs poses only. 5 episodes here, at most one
    # failed (20 each in the env test, test_workcell.py, which the graph must match): the graph
    # adds DDS, the mux and a separate process.
    report = tmp_path / "report"
    with SimGraph(tmp_path / "sim.log", task=task, cameras="", real_time_factor=3.0, operator="true",
                  episodes=5, report_dir=report) as g:
        rc = g.wait(900)  # the operator's exit ends the launch
    assert rc == 0, g.log_path.read_text()[-3000:]
    res = json.loads((report / "results.json").read_text())
    rate = res["success_rate"]
    assert len(res["episodes"]) == 5
    assert rate >= 4 / 5, json.dumps(res, indent=1)
    # Seeds run 1..5 after the launch seed 0, as documented for /sim/reset.
    assert [e["seed"] for e in res["episodes"]] == list(range(1, 6))
