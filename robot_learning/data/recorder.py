"""The recorder's engine, independent of ROS: messages in (from any thread), episodes out.

Message callbacks only enqueue; one writer thread converts, validates and appends, and
flushes every ``flush_interval`` seconds, which bounds what a crash can cost. Input that
does not fit its stream (wrong size or encoding, stamps out of order or repeated) is
refused with a reason, counted per stream, and never reaches the store.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robot_learning.data.convert import BadSample, has_header
from robot_learning.data.schema import Recipe
from robot_learning.data.store import DatasetError, DatasetWriter, EpisodeWriter


@dataclass
class _Stop:
    success: bool | None
    t_end: float | None
    discard: bool
    done: threading.Event
    result: dict | None = None
    error: str | None = None


class Recorder:
    def __init__(self, path: str | Path, recipe: Recipe, log: Callable[[str, str], None] | None = None,
                 flush_interval: float = 0.5, name: str = ""):
        self.recipe = recipe
        self.log = log or (lambda level, msg: print(f"[{level}] {msg}"))
        self.flush_interval = flush_interval
        self.writer = DatasetWriter(path, recipe, name=name)
        for idx, action in self.writer.recovered.items():
            self.log("warn", f"episode {idx} was interrupted by a crash: {action} (up to its last flushed chunk)")
        self.queue: queue.Queue = queue.Queue()
        self.episode: EpisodeWriter | None = None
        self.lock = threading.Lock()
        self.last_seen: dict[str, float] = {}
        self.t_created = time.monotonic()
        self.state: dict[str, object] = {}  # newest headerless message per stream (a state, e.g. who controls)
        self.rejected_logged: dict[tuple[str, str], float] = {}
        self.error: str | None = None
        self.finished = 0
        self._stop_thread = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="recorder-writer")
        self.thread.start()

    @property
    def recording(self) -> bool:
        return self.episode is not None

    def on_message(self, stream: str, msg, t_recv: float) -> None:
        """Called from the subscription callback; cheap, never blocks."""
        self.last_seen[stream] = time.monotonic()
        if not has_header(self.recipe.streams[stream]):
            self.state[stream] = msg
        if self.episode is not None:
            self.queue.put((stream, msg, t_recv))

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
            self.episode = self.writer.start_episode(meta)
            t0 = meta.get("t_start_clock")
            for stream, msg in list(self.state.items()):  # states in force when the episode starts
                self.queue.put((stream, msg, t0 if t0 is not None else time.time()))
            return self.episode.index

    def stop(self, success: bool | None, t_end: float | None = None, discard: bool = False,
             timeout: float = 600.0) -> dict:
        """Finish (or discard) the current episode once everything received before now is written."""
        if self.episode is None:
            raise DatasetError("no episode is recording")
        req = _Stop(success, t_end, discard, threading.Event())
        self.queue.put(req)
        if not req.done.wait(timeout):
            raise DatasetError(f"finishing the episode took longer than {timeout:.0f} s")
        if req.error:
            raise DatasetError(req.error)
        return req.result or {}

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
        stream, msg, t_recv = item
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
                req.result = ep.finish(req.success, req.t_end)
                self.finished += 1
        except DatasetError as e:
            req.error = str(e)
            self.error = str(e)
            self.log("error", str(e))
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
                self._handle(item)
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
