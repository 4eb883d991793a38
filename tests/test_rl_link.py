"""The actor -> learner link without ROS: exactly once, in order, across restarts of either side."""

from __future__ import annotations

import numpy as np

from robot_learning.rl.link import Inbox, Outbox, decode


def arrays(i: int) -> dict[str, np.ndarray]:
    return {"obs/state": np.full(3, i, np.float32), "action": np.array([i * 0.5]), "reward": np.float32(i)}


def test_every_transition_is_stored_once_in_order_across_restarts(tmp_path):
    out = Outbox(tmp_path / "outbox", "a-1", resend_s=1.0)
    inbox = Inbox(tmp_path / "journal")
    stored = []
    sent = [out.push(arrays(i))[1] for i in range(6)]
    # delivered out of order and twice; 3 lost for now
    for data in (sent[0], sent[2], sent[1], sent[1], sent[4], sent[5]):
        stored += inbox.offer(data)
    assert [t.seq for t in stored] == [0, 1, 2] and inbox.duplicates == 1
    out.ack(inbox.commit())
    assert sorted(k[1] for k in out.pending) == [3, 4, 5]
    # the learner dies before 3 arrives; the new one reads its journal back
    inbox.close()
    inbox = Inbox(tmp_path / "journal")
    assert [t.seq for t in inbox.replay()] == [0, 1, 2]
    # the actor dies too; its next run finds 3, 4, 5 on disk and sends them again, then goes on
    out = Outbox(tmp_path / "outbox", "a-2", resend_s=1.0)
    for data in out.due():
        stored += inbox.offer(data)
    _, data = out.push(arrays(6))
    stored += inbox.offer(data)
    out.ack(inbox.commit())
    assert [(t.actor, t.seq) for t in stored] == [("a-1", i) for i in range(6)] + [("a-2", 0)]
    assert not out.pending and not list((tmp_path / "outbox").glob("*.tr"))
    assert [float(t.arrays["obs/state"][0]) for t in stored] == [0, 1, 2, 3, 4, 5, 6]


def test_a_new_learner_starts_at_the_actors_floor_and_a_torn_record_is_dropped(tmp_path):
    out = Outbox(tmp_path / "outbox", "a", resend_s=0.0)
    first = Inbox(tmp_path / "j1")
    for i in range(4):
        first.offer(out.push(arrays(i))[1])
    out.ack(first.commit())       # 0..3 stored by the first learner and forgotten by the actor
    _, data = out.push(arrays(4))
    fresh = Inbox(tmp_path / "j2")  # a learner with a new journal: starts at 4, does not wait for 0..3
    assert [t.seq for t in fresh.offer(data)] == [4]
    fresh.close()
    journal = next((tmp_path / "j2").glob("*.journal"))
    journal.write_bytes(journal.read_bytes() + b"\x40\x00\x00\x00cut")  # killed mid-append
    again = Inbox(tmp_path / "j2")
    assert [t.seq for t in again.replay()] == [4]
    assert decode(data).floor == 4
