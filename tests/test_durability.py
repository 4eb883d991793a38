"""Durability: the recorder is SIGKILLed at random moments while recording the sim workcell.

Every episode the recorder reported as saved before a kill must be intact and valid after
it, and the store must open after every kill. Kills land anywhere: during recording, while
an episode is being finished, while one is being started, while the store is being opened.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import warnings

import numpy as np
import pytest
from robot_learning_ros.client import GraphClient
from std_srvs.srv import SetBool, Trigger

from robot_learning.data.repair import repair_path, validate_episode, validate_store
from robot_learning.data.store import Dataset
from robot_learning.graph import SimGraph
from robot_learning.launch import die_with_parent, find_executable

pytestmark = pytest.mark.graph

# 6 kills in the suite (about 9 s each): one while starting, two after an episode was saved,
# two while recording, one at random; DURABILITY_TRIALS=50 or more for a long run
TRIALS = int(os.environ.get("DURABILITY_TRIALS", "6"))


def call(cli, proc: subprocess.Popen, timeout: float = 30.0, resend: float = 0.0, **fields):
    """A service call that gives up as soon as the recorder process is gone.

    With ``resend``, an unanswered request is sent again after that many seconds: a killed
    recorder stays discovered for a while, so the first request may only reach the dead one.
    Clients are made once and never destroyed while the client's executor spins."""
    end = time.monotonic() + timeout
    while not cli.service_is_ready():
        if proc.poll() is not None or time.monotonic() > end:
            return None
        time.sleep(0.01)
    req = cli.srv_type.Request()
    for k, v in fields.items():
        setattr(req, k, v)
    fut, sent = cli.call_async(req), time.monotonic()
    while not fut.done():
        if proc.poll() is not None or time.monotonic() > end:
            return None
        if resend and time.monotonic() - sent > resend:
            cli.remove_pending_request(fut)
            fut, sent = cli.call_async(req), time.monotonic()
        time.sleep(0.005)
    return fut.result()


def test_recorder_killed_at_random_keeps_every_finished_episode(tmp_path):
    path = tmp_path / "durable.zarr"
    rng = np.random.default_rng(2026)
    saved: dict[int, dict] = {}
    validated: set[int] = set()  # episodes whose every chunk was read after a kill
    log = (tmp_path / "recorder.log").open("wb")
    client = GraphClient("durability")
    exe = find_executable("robot_learning_ros", "recorder_node")
    start = client.node.create_client(Trigger, "/recorder/start_episode")
    stop = client.node.create_client(SetBool, "/recorder/stop_episode")
    kills_while = {"recording": 0, "finishing": 0, "idle or starting": 0}
    with SimGraph(tmp_path / "sim.log", "teleop_collect.launch.yaml", device="scripted", record="false",
                  episodes=10_000, cameras="front") as g:
        for trial in range(TRIALS):
            proc = subprocess.Popen([exe, "--ros-args", "-r", "__node:=recorder", "-p", f"dataset:={path}",
                                     "-p", "use_sim_time:=true", "-p", "flush_interval:=0.3"],
                                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
            # every 10th trial: killed while starting up (opening and repairing the store); of the
            # rest, one in three at a random moment after its first episode was saved, so finished
            # episodes pile up however slow the machine is, one in three while it records (0.1 to
            # 0.4 s into an episode of at least 0.5 s), the others 0.3..4 s after its first start
            early, late, recording = trial % 10 == 0, trial % 3 == 1, trial % 3 == 2
            state = {"phase": "idle or starting"}

            def kill(proc=proc, state=state):
                state["killed_in"] = state["phase"]
                proc.kill()

            delay = rng.uniform(0.3, 2.0) if early else rng.uniform(0.1, 0.4) if recording else rng.uniform(0.3, 4.0)
            killer = threading.Timer(delay, kill)
            if early:
                killer.start()
            deadline, saved_here, last = time.monotonic() + 120, 0, "no answer to start_episode"
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    log.flush()
                    tail = (tmp_path / "recorder.log").read_text(errors="replace")[-3000:]
                    pytest.fail(f"trial {trial}: no episode saved in 120 s (last: {last}; start service "
                                f"ready: {start.service_is_ready()}); recorder log:\n{tail}")
                state["phase"] = "idle or starting"
                res = call(start, proc, timeout=60, resend=1.5)
                if res is None:
                    continue
                last = f"start_episode: {res.message}"
                if not res.success and "still recording" not in res.message:  # a resent start found it started
                    continue
                if not killer.is_alive() and not killer.finished.is_set() and not (late and not saved_here):
                    killer.start()
                state["phase"] = "recording"
                time.sleep(rng.uniform(0.5, 2.5))
                state["phase"] = "finishing"
                res = call(stop, proc, timeout=60, data=bool(rng.integers(2)))
                last = f"stop_episode: {res.message if res is not None else 'no answer'}"
                if res is not None and res.success:
                    info = json.loads(res.message)
                    saved[info["index"]] = info
                    saved_here += 1
            proc.wait()
            killer.cancel()
            # restarted at once, while the peers still think the dead recorder is alive: the new
            # one joins under a participant id (and shared-memory port) no process has used
            kills_while[state.get("killed_in", state["phase"])] += 1
            if not (path / "zarr.json").exists():
                assert not saved  # killed before it ever created the store
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = Dataset(path)  # the store opens after every kill
            for idx, info in saved.items():
                ep = ds.episode(idx)
                assert ep.meta["status"] == "complete", (trial, idx)
                assert ep.n_steps == info["n_steps"] and ep.meta["success"] == info["success"], (trial, idx)
                # every chunk is read once, after the first kill that follows the save: a finished
                # episode is never written again, and the final validate_store reads them all again
                if idx not in validated:
                    assert validate_episode(ep) == [], (trial, idx)
                    validated.add(idx)
            assert g.alive(), g.log_path.read_text()[-2000:]
    client.close()
    log.close()
    assert len(saved) >= TRIALS // 5, f"only {len(saved)} episodes finished: is the recorder starting?"
    assert kills_while["recording"] > 0 and kills_while["finishing"] + kills_while["idle or starting"] > 0
    repair_path(path)
    ds, problems = validate_store(path)
    assert problems == [], problems
    assert set(saved) <= set(ds.indices)
    recovered = [i for i in ds.infos if i.status == "recovered"]
    print(f"{TRIALS} kills ({kills_while}); {len(saved)} finished episodes intact; "
          f"{len(recovered)} interrupted episodes recovered, {len(ds) - len(saved) - len(recovered)} other")
