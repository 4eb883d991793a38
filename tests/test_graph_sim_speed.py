"""The sim node tells a user when it runs slower than the real-time factor they asked for."""

from __future__ import annotations

import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from robot_learning_ros.client import GraphClient

from robot_learning.graph import SimGraph

pytestmark = pytest.mark.graph


def test_a_sim_that_cannot_keep_up_says_so(tmp_path):
    # 1000x real time with a camera at 640x480: no machine renders that fast
    with SimGraph(tmp_path / "sim.log", cameras="front", real_time_factor=1000.0) as g:
        client = GraphClient("sim_speed")
        try:
            client.subscribe("/sim/diagnostics", DiagnosticArray)
            st = client.wait_for("/sim/diagnostics", 2, timeout=60)[-1].status[0]
        finally:
            client.close()
        values = {kv.key: kv.value for kv in st.values}
        assert st.level == DiagnosticStatus.WARN
        assert "below the 1000x asked for" in st.message and "cameras:=none" in st.message
        assert values["real_time_factor_target"] == "1000" and 0 < float(values["real_time_factor"]) < 900
        end = time.monotonic() + 10  # and the log says it too (relayed by the launcher)
        while "cannot keep up" not in g.log_path.read_text() and time.monotonic() < end:
            time.sleep(0.1)
        assert "cannot keep up" in g.log_path.read_text()
