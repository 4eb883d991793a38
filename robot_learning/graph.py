"""Start and stop the sim graph from Python (demo, benchmarks, tests): the launch file run
by ``robot-learning launch`` in its own process group, its output kept in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
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
                       progress: bool = True, timeout: float = 3600.0, restarts: int = 0,
                       before_restart: Callable[[list[dict]], dict | None] | None = None,
                       **launch_args: object) -> dict:
    """Runs a launch file whose episode node (scripted operator, policy evaluator) writes
    ``report_dir/episode_*/result.json`` per episode and ``results.json`` at the end, with a
    progress bar; returns results.json.

    ``restarts``: how many times a graph whose node was killed by a signal (the software
    renderer's rare segfault in the sim node, the kernel's OOM killer) is started again for
    the episodes still to run, from the seed where it stopped (``seed`` is the launch
    argument the episodes' seeds count up from). The episodes finished before stay as they
    were; the one under way is run again from its start, so a crash costs no data and no
    policy a failure. A node that exits with an error of its own is a fault to fix, not
    luck: that ends the run, as does a restart that finishes no episode. ``before_restart``
    is called with the finished episodes' results before each restart (a collection discards
    the interrupted episode from its dataset there); what it returns is added to that restart's
    entry in ``results.json``."""
    import json

    randomization = str(launch_args.get("randomization", "none"))
    if randomization not in ("", "none"):  # a bad file is one sentence here, not a sim node dying in the log
        from robot_learning.sim.randomize import load_randomization

        try:
            load_randomization(randomization)
        except ValueError as e:  # ConfigError
            raise RuntimeError(str(e)) from None
    report_dir.mkdir(parents=True, exist_ok=True)
    seed = launch_args.pop("seed", None)
    restarts = restarts if seed is not None else 0   # no seed to go on from
    eps: list[dict] = []   # the finished episodes' results, in order
    history: list[dict] = []
    while True:
        part, done = len(history), len(eps)
        part_dir = report_dir / f"restart-{part}" if part else report_dir
        part_log = _part_log(log_path, part)
        more = {"seed": int(seed) + done} if seed is not None else {}
        rc = _run_part(launch_file, episodes - done, part_dir, part_log, desc, progress, timeout,
                       (done, sum(e["success"] for e in eps)), episodes, **more, **launch_args)
        summary = part_dir / "results.json"
        results = json.loads(summary.read_text()) if rc == 0 and summary.exists() else None
        eps = _adopt(part_dir, report_dir, done)
        if results is not None:
            break
        killed = _killed_nodes(part_log)
        if not killed or len(history) >= restarts or (part and len(eps) == done):
            raise RuntimeError(f"{desc} failed (exit {rc}); see {part_log}")
        history.append({"after_episodes": len(eps), "why": killed})
        if before_restart is not None:
            history[-1] |= before_restart(eps) or {}
        print(f"{desc}: {killed} after {len(eps)} of {episodes} episodes; starting the graph again for the other "
              f"{episodes - len(eps)} (seeds from {int(seed) + len(eps) + 1}); its log: "
              f"{_part_log(log_path, part + 1)}", file=sys.stderr, flush=True)
    if history:   # the last part's summary (its server's diagnostics), over every episode
        results |= {"episodes": eps, "success_rate": sum(e["success"] for e in eps) / max(len(eps), 1),
                    "restarts": history}
        (report_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _part_log(log_path: Path, part: int) -> Path:
    """The log of the graph's ``part``-th restart (``log_path`` itself for its first start)."""
    return log_path.with_name(f"{log_path.stem}-restart-{part}{log_path.suffix}") if part else log_path


def _run_part(launch_file: str, episodes: int, report_dir: Path, log_path: Path, desc: str, progress: bool,
              timeout: float, before: tuple[int, int], total: int, **launch_args: object) -> int:
    """One launch of the graph for ``episodes`` episodes, the bar counting on from ``before``
    (episodes, successes) of ``total``; its exit code (timeouts raise)."""
    import json
    import time

    from tqdm import tqdm

    done, ok_before = before
    with SimGraph(log_path, launch_file, episodes=episodes, report_dir=report_dir, **launch_args) as g:
        bar = tqdm(total=total, initial=done, desc=desc, unit="ep", disable=not progress)
        seen, t0 = 0, time.monotonic()
        while g.alive() and time.monotonic() - t0 < timeout:
            results = sorted(report_dir.glob("episode_*/result.json"))
            if len(results) > seen:
                bar.update(len(results) - seen)
                seen = len(results)
                ok = ok_before + sum(json.loads(p.read_text())["success"] for p in results)
                bar.set_postfix(success=f"{ok}/{done + seen}")
            time.sleep(0.3)
        bar.close()
        if g.alive():
            raise RuntimeError(f"{desc} did not finish within {timeout:.0f} s; see {log_path}")
        return g.proc.returncode


def _adopt(part_dir: Path, report_dir: Path, done: int) -> list[dict]:
    """Moves a restarted graph's finished episodes (numbered from 0) into ``report_dir`` after
    the ``done`` there, renumbered, and removes the rest of ``part_dir``: the episode a crash
    interrupted has no result.json (it is run again, not counted). Returns the results of
    every episode ``report_dir`` then holds, in order."""
    import json
    import shutil

    for src in sorted(part_dir.glob("episode_*")):
        if not (src / "result.json").exists():
            shutil.rmtree(src)
        elif part_dir != report_dir:
            index = done + int(src.name.split("_")[1])
            result = json.loads((src / "result.json").read_text()) | {"episode": index}
            (src / "result.json").write_text(json.dumps(result))
            src.rename(report_dir / f"episode_{index:03d}")
    if part_dir != report_dir:
        shutil.rmtree(part_dir)
    return sorted((json.loads(p.read_text()) for p in report_dir.glob("episode_*/result.json")),
                  key=lambda e: e["episode"])


def _killed_nodes(log_path: Path) -> str:
    """The launcher's report of nodes a signal ended (``died with exit code -11``), as a
    sentence, or "" when none was."""
    import re

    found = re.findall(r"node '([^']+)' \(pid \d+\) died with exit code (-\d+)", log_path.read_text(errors="replace"))
    names = []
    for node, code in found:
        try:
            sig = signal.Signals(-int(code)).name
        except ValueError:
            sig = f"signal {-int(code)}"
        names.append(f"node '{node}' was killed by {sig}")
    return "; ".join(names)
