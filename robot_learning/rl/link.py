"""The actor -> learner link: every transition delivered exactly once, across restarts of either side.

Pure logic and files, no ROS: the nodes move the bytes (``/rl/transitions`` one way,
``/rl/acks`` and ``/rl/policy_weights`` the other) and call these.

- Each actor *run* has its own id (``<name>-<start time>-<pid>``) and numbers its transitions
  0, 1, 2, ... The pair (actor id, seq) names a transition for ever, so a restarted actor never
  reuses a number that the learner has already seen.
- ``Outbox`` (actor side) writes each transition to a file before sending it and deletes the
  file only when the learner acknowledges it. Unacknowledged transitions are sent again every
  ``resend_s`` (a learner that was down, or a message lost). A restarted actor finds the files
  of its earlier runs and sends them again under their own ids: a kill loses nothing that was
  stepped.
- ``Inbox`` (learner side) accepts each actor's transitions in order and each once: a number it
  has stored is a duplicate (dropped), one beyond a gap waits for the gap to fill. Each payload
  also carries the actor's *floor*, its oldest unacknowledged number: everything below it was
  stored by some learner (the actor deletes nothing else), so a learner meeting an actor for
  the first time starts there instead of waiting for numbers that will never come. Accepted
  transitions are appended to a journal file per actor (flushed and fsynced before they are
  acknowledged), which a restarted learner reads back: its online buffer is exactly what the
  actors sent, nothing counted twice.
"""

from __future__ import annotations

import io
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def new_actor_id(name: str = "actor") -> str:
    return f"{name}-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"


@dataclass
class Transition:
    actor: str
    seq: int
    arrays: dict[str, np.ndarray]   # obs/<key>, next_obs/<key>, action, reward, terminal, intervention, ...
    floor: int = 0                  # the actor's oldest unacknowledged seq when this was sent


def encode(tr: Transition) -> bytes:
    """One transition as bytes: its id, then its arrays as an .npz (no pickles: loading runs no code)."""
    buf = io.BytesIO()
    np.savez(buf, **tr.arrays)
    head = tr.actor.encode()
    return _HEAD.pack(len(head), tr.seq, tr.floor) + head + buf.getvalue()


_HEAD = struct.Struct("<IQQ")


def peek(data: bytes) -> tuple[str, int, int]:
    """(actor, seq, floor) of an encoded transition, without reading its arrays."""
    n, seq, floor = _HEAD.unpack_from(data)
    return bytes(data[_HEAD.size:_HEAD.size + n]).decode(), int(seq), int(floor)


def decode(data: bytes) -> Transition:
    n, seq, floor = _HEAD.unpack_from(data)
    start = _HEAD.size
    actor = bytes(data[start:start + n]).decode()
    with np.load(io.BytesIO(bytes(data[start + n:])), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return Transition(actor, int(seq), arrays, int(floor))


class Outbox:
    """The actor's side: transitions kept on disk until the learner has stored them."""

    def __init__(self, folder: str | Path, actor: str, resend_s: float = 3.0, resend_batch: int = 200):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.actor = actor
        self.resend_s = resend_s
        self.resend_batch = resend_batch  # at most this many per call: a returning learner is not flooded
        self.next_seq = 0
        self.pending: dict[tuple[str, int], tuple[bytes, float]] = {}  # id -> (payload, last sent)
        for f in sorted(self.folder.glob("*.tr")):  # an earlier run's unacknowledged transitions
            try:
                data = f.read_bytes()
                tr = decode(data)
            except (OSError, ValueError, struct.error, EOFError):
                f.unlink(missing_ok=True)  # cut short by the kill while being written: never sent
                continue
            self.pending[(tr.actor, tr.seq)] = (data, -np.inf)

    def _file(self, actor: str, seq: int) -> Path:
        return self.folder / f"{actor}_{seq:012d}.tr"

    def push(self, arrays: dict[str, np.ndarray]) -> tuple[int, bytes]:
        """Numbers and stores a new transition; returns (seq, payload to send now)."""
        seq = self.next_seq
        self.next_seq += 1
        # pending keeps insertion order and acks remove a prefix: this run's first key is its floor
        floor = next((s for a, s in self.pending if a == self.actor), seq)
        data = encode(Transition(self.actor, seq, arrays, floor))
        f = self._file(self.actor, seq)
        tmp = f.with_suffix(".partial")
        tmp.write_bytes(data)
        tmp.replace(f)
        self.pending[(self.actor, seq)] = (data, time.monotonic())
        return seq, data

    def ack(self, stored: dict[str, int]) -> int:
        """The learner has stored each actor's transitions up to ``stored[actor]``: forget them."""
        done = [k for k in self.pending if k[0] in stored and k[1] <= stored[k[0]]]
        for actor, seq in done:
            del self.pending[(actor, seq)]
            self._file(actor, seq).unlink(missing_ok=True)
        return len(done)

    def resend_all(self) -> None:
        """Make every unacknowledged transition due now (a new learner appeared, or the actor stops)."""
        for key, (data, _) in self.pending.items():
            self.pending[key] = (data, -np.inf)

    def due(self, now: float | None = None) -> list[bytes]:
        """Payloads not acknowledged ``resend_s`` after they were last sent (marked sent now),
        oldest first, at most ``resend_batch``."""
        now = time.monotonic() if now is None else now
        out = []
        for key, (data, sent) in list(self.pending.items()):  # oldest first: insertion order
            if now - sent >= self.resend_s:
                out.append(data)
                self.pending[key] = (data, now)
                if len(out) >= self.resend_batch:
                    break
        return out


class Inbox:
    """The learner's side: each actor's transitions stored once, in order, in a journal."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stored: dict[str, int] = {}         # actor -> highest seq stored (-1: none)
        self.waiting: dict[str, dict[int, Transition]] = {}
        self.duplicates = 0
        self._files: dict[str, object] = {}

    def replay(self) -> list[Transition]:
        """Every journaled transition, in order (a restarted learner's online buffer); a record
        cut short by a crash is cut from the journal (it was never acknowledged)."""
        out = []
        for f in sorted(self.folder.glob("*.journal")):
            records, good = read_journal(f)
            for tr in records:
                self.stored[tr.actor] = tr.seq
            out += records
            if good < f.stat().st_size:
                with f.open("r+b") as fh:
                    fh.truncate(good)
        return out

    def offer(self, data: bytes) -> list[Transition]:
        """A received payload; returns the transitions it makes storable, in order (none for a
        duplicate or one that waits for a gap to fill). Call ``commit`` before acknowledging."""
        actor, seq, floor = peek(data)  # a duplicate is dropped before its arrays are read
        last = max(self.stored.get(actor, -1), floor - 1)
        if seq <= last or seq in self.waiting.get(actor, {}):
            self.duplicates += 1
            return []
        tr = decode(data)
        wait = self.waiting.setdefault(tr.actor, {})
        wait[tr.seq] = tr
        out = []
        while last + 1 in wait:
            last += 1
            out.append(wait.pop(last))
        if out:
            fh = self._files.get(tr.actor)
            if fh is None:
                fh = self._files[tr.actor] = (self.folder / f"{_safe(tr.actor)}.journal").open("ab")
            for t in out:
                payload = encode(t)
                fh.write(struct.pack("<I", len(payload)) + payload)
            self.stored[tr.actor] = last
        return out

    def commit(self) -> dict[str, int]:
        """Makes what was stored durable (flush + fsync); returns what may be acknowledged."""
        for fh in self._files.values():
            fh.flush()
            os.fsync(fh.fileno())
        return dict(self.stored)

    def close(self) -> None:
        self.commit()
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def read_journal(path: str | Path) -> tuple[list[Transition], int]:
    """The whole records of a journal file and the byte length they span (a torn tail is left out)."""
    data = Path(path).read_bytes()
    out, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        if pos + 4 + n > len(data):
            break
        try:
            out.append(decode(data[pos + 4:pos + 4 + n]))
        except (ValueError, struct.error, EOFError, OSError):
            break
        pos += 4 + n
    return out, pos


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
