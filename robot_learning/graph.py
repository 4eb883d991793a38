"""Start and stop the sim graph from Python (demo, benchmarks, tests): the launch file run
by ``robot-learning launch`` in its own process group, its output kept in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from robot_learning.launch import die_with_parent
from robot_learning.paths import project_root


class SimGraph:
    """``robot-learning launch launch/<launch_file>`` as a child process (the sim graph by default)."""

    def __init__(self, log_path: str | Path, launch_file: str = "sim.launch.yaml", **launch_args: object):
        self.launch_file = launch_file
        self.log_path = Path(log_path)
        self.args = [f"{k}:={v}" for k, v in launch_args.items()]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> SimGraph:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "robot_learning.cli", "launch", "--builtin",
               str(project_root() / "launch" / self.launch_file), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent())
        return self

    def wait(self, timeout: float) -> int | None:
        """Wait for the launch to end by itself (a node with on_exit: shutdown finished)."""
        try:
            return self.proc.wait(timeout) if self.proc else None
        except subprocess.TimeoutExpired:
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextmanager
    def coming_up(self, client: object | None = None) -> Iterator[SimGraph]:
        """Wrap the waits for a graph to come up: if one fails (or is interrupted), the client
        is closed and the graph stopped before the error goes on. A module fixture whose setup
        failed is never torn down by pytest, so without this its launcher and nodes ran on
        beside the next modules' graphs, in the same DDS domain."""
        try:
            yield self
        except BaseException:
            if client is not None:
                client.close()
            self.stop()
            raise


def run_graph_episodes(launch_file: str, episodes: int, report_dir: Path, log_path: Path, desc: str,
                       progress: bool = True, timeout: float = 3600.0, **launch_args: object) -> dict:
    """Runs a launch file whose episode node (scripted operator, policy evaluator) writes
    ``report_dir/episode_*/result.json`` per episode and ``results.json`` at the end, with a
    progress bar; returns results.json."""
    import json
    import time

    from tqdm import tqdm

    randomization = str(launch_args.get("randomization", "none"))
    if randomization not in ("", "none"):  # a bad file is one sentence here, not a sim node dying in the log
        from robot_learning.sim.randomize import load_randomization

        try:
            load_randomization(randomization)
        except ValueError as e:  # ConfigError
            raise RuntimeError(str(e)) from None
    report_dir.mkdir(parents=True, exist_ok=True)
    with SimGraph(log_path, launch_file, episodes=episodes, report_dir=report_dir, **launch_args) as g:
        bar = tqdm(total=episodes, desc=desc, unit="ep", disable=not progress)
        done, t0 = 0, time.monotonic()
        while g.alive() and time.monotonic() - t0 < timeout:
            results = sorted(report_dir.glob("episode_*/result.json"))
            if len(results) > done:
                bar.update(len(results) - done)
                done = len(results)
                ok = sum(json.loads(p.read_text())["success"] for p in results)
                bar.set_postfix(success=f"{ok}/{done}")
            time.sleep(0.3)
        bar.close()
        if g.alive():
            raise RuntimeError(f"{desc} did not finish within {timeout:.0f} s; see {log_path}")
        rc = g.proc.returncode
    summary = report_dir / "results.json"
    if rc != 0 or not summary.exists():
        raise RuntimeError(f"{desc} failed (exit {rc}); see {log_path}")
    return json.loads(summary.read_text())
