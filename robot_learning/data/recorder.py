"""The recorder's engine, independent of ROS: messages in (from any thread), episodes out.

Message callbacks only enqueue; one writer thread converts, validates and appends, and
flushes every ``flush_interval`` seconds, which bounds what a crash can cost. Input that
does not fit its stream (wrong size or encoding, stamps out of order or repeated) is
refused with a reason, counted per stream, and never reaches the store.

The queue between the two is memory, and a stop waits for it to be written. A writer that
cannot keep up (a slow disk, compression starved of CPU) once grew it to 12 GB and held the
stop service for minutes, so it is bounded: past ``max_backlog_bytes`` queued, or with the
writer more than ``max_behind_s`` behind, large messages (camera frames) are shed until it
is back under both, counted per stream in the episode's metadata (``shed``) and reported as
they happen. Small messages
(joint states, wrenches, commands) are never shed: they are what a policy learns from,
and all of them together are a few MB a second.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_learning.data.convert import BadSample, has_header
from robot_learning.data.schema import Recipe
from robot_learning.data.store import DatasetError, DatasetWriter, EpisodeWriter
from robot_learning.heap import release_free_memory


@dataclass
class _Stop:
    success: bool | None
    t_end: float | None
    discard: bool
    done: threading.Event
    result: dict | None = None
    error: str | None = None


# A message larger than this is bulk (a camera frame) and may be shed past the bound; a
# tactile grid is an Image too, of a few hundred bytes, and is never shed.
LARGE_MESSAGE = 64 * 1024
# 2 GiB: about 20 s of two 640x480 RGB-D cameras at 30 Hz, far beyond the second or two a
# healthy writer falls behind at an episode's first chunks or a slow fsync. Frames the writer
# has taken wait in its per-stream chunk buffers (a chunk's worth each) outside this bound.
MAX_BACKLOG_BYTES = 2 << 30
# A stop waits for the backlog, and a service client waits about a minute: a writer this far
# behind sheds frames even under the byte bound, so a stop is answered in time.
MAX_BEHIND_S = 20.0


def message_bytes(msg) -> int:
    """The payload a queued message holds: its ``data`` buffer (images), else nothing worth
    counting. Cheap: it runs in the subscription callback."""
    try:
        return memoryview(msg.data).nbytes
    except (AttributeError, TypeError):  # no data, or a number or a string: a small message
        return 0


class Recorder:
    def __init__(self, path: str | Path, recipe: Recipe, log: Callable[[str, str], None] | None = None,
                 flush_interval: float = 0.5, name: str = "", max_backlog_bytes: int = MAX_BACKLOG_BYTES,
                 max_behind_s: float = MAX_BEHIND_S):
        self.recipe = recipe
        self.max_backlog_bytes = max_backlog_bytes
        self.max_behind_s = max_behind_s
        self.log = log or (lambda level, msg: print(f"[{level}] {msg}"))
        self.flush_interval = flush_interval
        self.writer = DatasetWriter(path, recipe, name=name)
        for idx, action in self.writer.recovered.items():
            self.log("warn", f"episode {idx} was interrupted by a crash: {action} (up to its last flushed chunk)")
        self.queue: queue.Queue = queue.Queue()
        self.episode: EpisodeWriter | None = None
        self.lock = threading.Lock()
        self.last_seen: dict[str, float] = {}
        self.last_stamp: dict[str, float] = {}  # newest header stamp per stamped stream
        self._stamped = {n: has_header(spec) for n, spec in recipe.streams.items()}
        self._t_start: float | None = None
        self.t_created = time.monotonic()
        self.state: dict[str, object] = {}  # newest headerless message per stream (a state, e.g. who controls)
        self.rejected_logged: dict[tuple[str, str], float] = {}
        self.error: str | None = None
        self.finished = 0
        self.received: Counter[str] = Counter()  # messages queued in the current episode, per stream
        self.backlog_max = 0  # the deepest the queue got since ``stats`` last reset it
        # payload queued, and payload the writer has taken: each written by one thread only
        self._bytes_in = self._bytes_out = 0
        self.backlog_bytes_max = 0
        self._oldest: float | None = None  # when the message the writer is on was queued
        self.shed: Counter[str] = Counter()  # large messages shed past the bound, this episode
        self._shed_logged = -1e9
        self._stopping = False  # a stop is queued: what arrives now is past its end
        self._stop_thread = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="recorder-writer")
        self.thread.start()

    @property
    def recording(self) -> bool:
        return self.episode is not None

    @property
    def backlog_bytes(self) -> int:
        return self._bytes_in - self._bytes_out

    @property
    def behind_s(self) -> float:
        """How long ago the oldest message not yet written was queued: how far behind the
        recording the writer is (0 with nothing waiting)."""
        t = self._oldest  # the one the writer is on, else the head of the queue
        if t is None:
            try:
                head = self.queue.queue[0]
            except IndexError:
                return 0.0
            t = None if isinstance(head, _Stop) else head[3]
        return 0.0 if t is None else max(0.0, time.monotonic() - t)

    def on_message(self, stream: str, msg, t_recv: float) -> None:
        """Called from the subscription callback; cheap, never blocks."""
        self.last_seen[stream] = time.monotonic()
        if self._stamped[stream]:
            try:
                self.last_stamp[stream] = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            except AttributeError:
                pass  # not the recipe's type: the writer refuses it with a reason
        else:
            self.state[stream] = msg
        if self.episode is not None:
            n = message_bytes(msg)
            if n > LARGE_MESSAGE and (self.backlog_bytes + n > self.max_backlog_bytes
                                      or self.behind_s > self.max_behind_s):
                if not self._stopping:  # frames after a stop's end would not be kept anyway
                    self._shed_one(stream)
                return
            self._bytes_in += n
            self.backlog_bytes_max = max(self.backlog_bytes_max, self.backlog_bytes)
            self.queue.put((stream, msg, t_recv, time.monotonic(), n))
            self.received[stream] += 1

    def _shed_one(self, stream: str) -> None:
        self.shed[stream] += 1
        now = time.monotonic()
        if now - self._shed_logged > 5.0:  # one line per 5 s while it lasts
            self._shed_logged = now
            topics = ", ".join(f"{self.recipe.streams[n].topic} {c}" for n, c in sorted(self.shed.items()))
            self.log("warn", f"the writer is {self.behind_s:.1f} s behind with {self.backlog_bytes >> 20} MiB "
                             f"queued (bounds {self.max_behind_s:g} s, {self.max_backlog_bytes >> 20} MiB): shedding "
                             "camera frames until it "
                             f"catches up (this episode: {topics}). This machine cannot write what it records: "
                             "record fewer or smaller camera streams, or free a core")

    def stats(self, reset_max: bool = True) -> dict:
        """What the writer is behind by (messages queued now, and the most since the last call)
        and what the current episode has taken, per stream. A backlog that keeps growing means
        this machine cannot write what it records; it is memory, and a stop waits for it."""
        backlog, nbytes = self.queue.qsize(), self.backlog_bytes
        out = {"recording": self.recording, "episode": self.episode.index if self.episode else None,
               "backlog": backlog, "backlog_max": max(self.backlog_max, backlog),
               "backlog_mib": round(nbytes / 2**20, 1),
               "backlog_mib_max": round(max(self.backlog_bytes_max, nbytes) / 2**20, 1),
               "behind_s": round(self.behind_s, 3), "finished": self.finished,
               "received": dict(self.received), "shed": dict(self.shed) if self.recording else {},
               "error": self.error}
        if reset_max:
            self.backlog_max, self.backlog_bytes_max = backlog, nbytes
        return out

    def silent_streams(self, within: float = 2.0) -> list[str]:
        now = time.monotonic()
        return [n for n, s in self.recipe.streams.items()
                if s.required and s.continuous and now - self.last_seen.get(n, self.t_created) > within]

    def start(self, meta: dict) -> int:
        with self.lock:
            if self.episode is not None:
                raise DatasetError(f"episode {self.episode.index} is still recording: stop or discard it first")
            if self.error:
                raise DatasetError(f"the recorder stopped after a storage error: {self.error}")
            self.received.clear()
            self.shed.clear()
            self._shed_logged, self._stopping = -1e9, False
            self.episode = self.writer.start_episode(meta)
            t0 = self._t_start = meta.get("t_start_clock")
            for stream, msg in list(self.state.items()):  # states in force when the episode starts
                self.queue.put((stream, msg, t0 if t0 is not None else time.time(), time.monotonic(), 0))
            return self.episode.index

    def stop(self, success: bool | None, t_end: float | None = None, discard: bool = False,
             timeout: float = 600.0, drain: float = 3.0) -> dict:
        """Finish (or discard) the current episode once everything stamped before ``t_end`` has
        arrived (up to ``drain`` seconds) and is written.

        A busy machine leaves the subscriptions seconds behind the publishers: finishing with
        what had been taken when the stop came cut 2-4 s off the end of the steady streams (and
        made them end at different times). Messages keep being taken while this waits."""
        ep = self.episode
        if ep is None:
            raise DatasetError("no episode is recording")
        if t_end is not None and not discard:
            self._drain(t_end, drain)
        req = _Stop(success, t_end, discard, threading.Event())
        idx, queued, mib = ep.index, self.queue.qsize(), self.backlog_bytes / 2**20
        if mib > 64:
            self.log("info", f"finishing episode {idx} once {queued} queued messages ({mib:.0f} MiB, "
                             f"{self.behind_s:.1f} s behind) are written")
        self._stopping = True
        self.queue.put(req)
        if not req.done.wait(timeout):
            raise DatasetError(
                f"finishing episode {idx} took longer than {timeout:.0f} s: the writer still has "
                f"{self.queue.qsize()} messages ({self.backlog_bytes / 2**20:.0f} MiB) to write, {self.behind_s:.0f} s "
                "behind. It finishes the episode when it reaches the stop (the recorder's status says when)")
        if req.error:
            raise DatasetError(req.error)
        return req.result or {}

    def _drain(self, t_end: float, limit: float) -> None:
        """Wait until every steady stamped stream that published during the episode has
        delivered a message stamped at or after ``t_end``, or ``limit`` seconds pass."""
        t_start = self._t_start
        active = [n for n, st in self.last_stamp.items() if self.recipe.streams[n].continuous
                  and (t_start is None or st >= t_start)]
        deadline = time.monotonic() + limit
        behind = active
        while time.monotonic() < deadline:
            behind = [n for n in active if self.last_stamp.get(n, -np.inf) < t_end]
            if not behind:
                return
            time.sleep(0.01)
        topics = ", ".join(self.recipe.streams[n].topic for n in behind)
        self.log("warn", f"finishing the episode without the last {limit:.0f} s of {topics}: nothing stamped "
                         "at the stop time arrived (a publisher stopped, or this machine is overloaded)")

    def _reject(self, stream: str, reason: str, message: str) -> None:
        key = (stream, reason)
        now = time.monotonic()
        if now - self.rejected_logged.get(key, -1e9) > 5.0:  # one line per stream and reason per 5 s
            self.rejected_logged[key] = now
            topic = self.recipe.streams[stream].topic
            self.log("warn", f"dropped a message on {topic} (stream '{stream}'): {message}")

    def _handle(self, item) -> None:
        ep = self.episode
        if isinstance(item, _Stop):
            self._finish(item)
            return
        stream, msg, t_recv, _, nbytes = item
        self._bytes_out += nbytes
        if ep is None:
            return
        try:
            ep.add_message(stream, msg, t_recv)
        except BadSample as e:
            self._reject(stream, e.reason, str(e))

    def _finish(self, req: _Stop) -> None:
        ep = self.episode
        try:
            if ep is None:
                req.error = "no episode is recording"
            elif req.discard:
                ep.discard()
                req.result = {"index": ep.index, "discarded": True}
            else:
                shed = {"shed": dict(self.shed)} if self.shed else None
                req.result = ep.finish(req.success, req.t_end, extra=shed)
                self.finished += 1
        except DatasetError as e:
            req.error = str(e)
            self.error = str(e)
            self.log("error", str(e))
        except Exception as e:  # a bug must not kill the writer thread and report the episode saved
            req.error = (f"finishing episode {ep.index if ep else '?'} failed ({type(e).__name__}: {e}); its "
                         "flushed part is recovered on the next open; please report this")
            self.log("error", req.error)
        finally:
            with self.lock:
                self.episode = None
            req.done.set()

    def _run(self) -> None:
        while not self._stop_thread.is_set():
            try:
                item = self.queue.get(timeout=0.05)
            except queue.Empty:
                item = None
            if item is not None:
                # the depth is sampled here, on the writer's thread: the callbacks only enqueue
                self.backlog_max = max(self.backlog_max, self.queue.qsize() + 1)
                self._oldest = None if isinstance(item, _Stop) else item[3]  # until the next is taken:
                self._handle(item)  # flushing it may be where the time goes
                if isinstance(item, _Stop):  # the episode's buffers are garbage now
                    ep = item = None
                    release_free_memory()
            else:
                self._oldest = None
            ep = self.episode
            if ep is not None and time.monotonic() - ep.last_flush >= self.flush_interval:
                try:
                    ep.flush()
                except DatasetError as e:
                    self.error = str(e)
                    self.log("error", f"{e} The episode is abandoned; its flushed part is recovered on next open.")
                    with self.lock:
                        self.episode = None

    def close(self) -> None:
        """Stop the writer thread. An episode still recording stays as is (recovered on next open)."""
        self._stop_thread.set()
        self.thread.join(timeout=10)
        self.writer.close()
