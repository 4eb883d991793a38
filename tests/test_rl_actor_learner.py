"""Actor and learner as separate processes over real DDS (issue 13): SIGKILL either side and
no transition is lost or stored twice (sequence numbers in the learner's journal), the actor
goes on with its last policy while no learner is up, and the policy it runs comes from the learner."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from robot_learning.launch import die_with_parent, find_executable
from robot_learning.rl.link import read_journal

pytestmark = pytest.mark.graph


def start(exe: str, log, **params) -> subprocess.Popen:
    args = [find_executable("robot_learning_ros", exe), "--ros-args"]
    for k, v in params.items():
        args += ["-p", f"{k}:={v}"]
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())


def journal(run) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    for f in sorted((run / "journal").glob("*.journal")):
        for tr in read_journal(f)[0]:
            seqs.setdefault(tr.actor, []).append(tr.seq)
    return seqs


def wait_until(cond, what: str, timeout: float = 90.0, logs: tuple = ()) -> None:
    """Poll ``cond``; on time-out, fail with the end of each of ``logs`` (paths), so that a
    failure on a machine nobody can log in to says what the processes were doing."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            tails = "".join(f"\n--- {Path(f).name} ---\n{Path(f).read_text(errors='replace')[-3000:]}"
                            for f in logs if Path(f).exists())
            raise AssertionError(f"timed out waiting for {what}{tails}")
        time.sleep(0.2)


def stop_in_order(actor, learner, actor_timeout: float = 30.0) -> None:
    """SIGINT to the actor (it drains what is pending to the learner), then to the learner: both
    end cleanly."""
    actor.send_signal(signal.SIGINT)
    assert actor.wait(timeout=actor_timeout) == 0
    learner.send_signal(signal.SIGINT)
    assert learner.wait(timeout=30) == 0


def kill_left(procs) -> None:
    """Whatever a failed test left running."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def stored(run) -> int:
    return sum(len(v) for v in journal(run).values()) if (run / "journal").exists() else 0


def test_killing_learner_and_actor_loses_and_repeats_no_transition(tmp_path):
    run, outbox = tmp_path / "learner", tmp_path / "outbox"
    llog, alog = (tmp_path / "learner.log").open("w"), (tmp_path / "actor.log").open("w")
    learner_params = dict(run_dir=str(run), batch_size=32, hidden="32,32", learning_starts=50, publish_every=10,
                          updates_per_transition=0.2,
                          checkpoint_every=100)
    actor_params = dict(env="Pendulum-v1", outbox=str(outbox), rate=100.0, learner_timeout=1.5)
    procs = []
    try:
        learner = start("rl_learner", llog, **learner_params)
        actor = start("rl_actor", alog, **actor_params)
        procs += [learner, actor]
        wait_until(lambda: stored(run) >= 100 and "policy version" in (tmp_path / "actor.log").read_text(),
                   "100 stored transitions and a policy at the actor")
        learner.send_signal(signal.SIGKILL)
        learner.wait()
        time.sleep(2.5)  # the actor goes on with its last policy; its transitions wait on disk
        waiting = len(list(outbox.glob("*.tr")))
        before = stored(run)
        learner = start("rl_learner", llog, **learner_params)
        procs.append(learner)
        wait_until(lambda: stored(run) >= before + waiting + 50, "the restarted learner to catch up")
        actor.send_signal(signal.SIGKILL)
        actor.wait()
        actor = start("rl_actor", alog, **actor_params)
        procs.append(actor)
        wait_until(lambda: len(journal(run)) == 2 and min(len(v) for v in journal(run).values()) >= 50,
                   "the second actor run's transitions")
        stop_in_order(actor, learner)
    finally:
        kill_left(procs)
    alog_text, llog_text = (tmp_path / "actor.log").read_text(), (tmp_path / "learner.log").read_text()
    assert "Traceback" not in alog_text + llog_text, alog_text[-2000:] + llog_text[-2000:]
    seqs = journal(run)
    assert len(seqs) == 2
    for actor_id, s in seqs.items():
        assert s == list(range(len(s))), actor_id  # from 0, in order, none missing, none twice
    assert waiting > 0                              # there was something to lose while no learner ran
    assert not list(outbox.glob("*.tr"))            # everything stepped was stored
    assert "going on with the last policy" in alog_text and alog_text.count("is up") >= 2
    restarted = re.search(r"learning for Pendulum-v1: (\d+) transitions from the journal", llog_text.split(
        "waiting for an actor")[2])
    assert restarted and int(restarted.group(1)) >= 100
    total = int(re.findall(r"stopped: (\d+) transitions stored", llog_text)[-1])
    assert total == sum(len(s) for s in seqs.values())
