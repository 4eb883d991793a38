"""policy_evaluator: seeded episodes of the policy server's policy on the sim workcell.

Per episode: reset the sim (its ``seed`` parameter fixes the sequence of episode seeds),
optionally start a recorder episode, /policy/resume, wait for /sim/task/success or the
timeout (sim time), /policy/pause, label the recording. ``report_dir`` gets each episode's
trajectory, snapshots and results.json with the success rate.
"""

from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from std_srvs.srv import Trigger

from robot_learning.sim.tasks import SUCCESS_SETTLE_S
from robot_learning_ros.episodes import EpisodeNode, run_episodes
from robot_learning_ros.runtime import lenient_params


class PolicyEvaluator(EpisodeNode):
    operator = "policy"

    def __init__(self):
        super().__init__("policy_evaluator")
        self.settle = float(lenient_params(self)("settle", SUCCESS_SETTLE_S).value)
        self.pause_client = self.create_client(Trigger, "/policy/pause")
        self.resume_client = self.create_client(Trigger, "/policy/resume")
        self.diagnostics: dict[str, str] = {}
        self.create_subscription(DiagnosticArray, "/policy/diagnostics", self._on_diag, 10)
        # the sim's pace, once a wall second: behind the one asked for, the policy had less of
        # the machine than the evaluation meant to give it (evaluate says so)
        self.sim_pace: list[float] = []
        self.sim_pace_asked: float | None = None
        self.create_subscription(DiagnosticArray, "/sim/diagnostics", self._on_sim_diag, 10)

    def _on_diag(self, m: DiagnosticArray) -> None:
        for st in m.status:
            if st.name == "policy_server" and not self.diagnostics_frozen:
                self.diagnostics = {kv.key: kv.value for kv in st.values}

    def _on_sim_diag(self, m: DiagnosticArray) -> None:
        for st in m.status:
            if st.name == "sim" and not self.diagnostics_frozen:
                values = {kv.key: kv.value for kv in st.values}
                target = values.get("real_time_factor_target", "max")
                self.sim_pace_asked = None if target == "max" else float(target)
                self.sim_pace.append(float(values["real_time_factor"]))

    def drive(self, index: int, info: dict) -> None:
        with self.lock:
            released_at = self.tcp_now
        self.call(self.resume_client, Trigger.Request(), "policy server")
        # the first resume waits for the server to load and warm its policy up: the clock starts
        # once it answers, and the trajectory from where the arm was when the policy was released
        self.start_clock(released_at)
        t0, wall0 = self.t_now, time.monotonic()
        # a protective stop ends the episode: the arm refuses commands until the next reset
        while not self.success and not self.fault and self.t_now - t0 < self.timeout:
            if time.monotonic() - wall0 > self.timeout * 20 + 60:
                raise RuntimeError("the sim clock stopped: no /arm/ee_pose")
            time.sleep(0.01)
        self.stop_clock()
        if self.success:
            self.wait_sim(self.settle)   # success must hold, not flicker
        self.call(self.pause_client, Trigger.Request(), "policy server")
        self.wait_sim(0.5)  # the mux lets the last commands time out, so none reaches the next episode

    diagnostics_frozen = False

    def extra_results(self) -> dict:
        """The server's last diagnostics while it was running (latency and jitter of the
        evaluation), and the pace the sim kept against the one asked for."""
        self.diagnostics_frozen = True
        pace = np.asarray(self.sim_pace)
        sim_pace = {"asked": self.sim_pace_asked, "median": float(np.median(pace)),
                    "p10": float(np.percentile(pace, 10)), "reports": int(pace.size)} if pace.size else None
        return {"diagnostics": self.diagnostics, "sim_pace": sim_pace}

    def finish(self) -> None:
        """Leave the policy paused, best effort: on Ctrl-C, rclpy's signal handler may have shut
        the context down already (the whole graph is stopping then; nothing to pause)."""
        try:
            if self.context.ok() and self.pause_client.service_is_ready():
                self.pause_client.call_async(Trigger.Request())
        except RuntimeError:  # rclpy's RCLError: the context went invalid between the check and the call
            pass


def main(args=None) -> None:
    run_episodes(PolicyEvaluator, args)


if __name__ == "__main__":
    main()
