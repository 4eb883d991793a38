"""The nodes' console-script entry points: ``sim_node = robot_learning_ros.entry:sim_node``.

A node takes seconds to import (rclpy, MuJoCo, torch) before its ``main`` can install any
signal handler. Started with SIGINT ignored (``nohup``, ``&`` in a script) it would ignore a
SIGINT sent in that time, and a script that stops it with one would wait on it forever. So the
entry point, in this module that imports nothing heavy, makes SIGINT interrupt first, then
imports the node; an interrupt during the import ends the node at once, with 0 as a stop does.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys


def restore_sigint() -> None:
    """SIGINT raises KeyboardInterrupt, as in a process started normally, where no handler of
    Python's is installed: started with it ignored (only from the main thread, where Python
    allows it)."""
    if not callable(signal.getsignal(signal.SIGINT)):
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except ValueError:  # not the main thread
            pass


def _entry(name: str):
    def run() -> None:
        restore_sigint()
        try:
            main = importlib.import_module(f"robot_learning_ros.{name}").main
        except KeyboardInterrupt:
            sys.exit(0)  # stopped before it started: nothing to clean up
        main()

    run.__name__ = run.__qualname__ = name
    return run


def __getattr__(name: str):
    """``entry.<node>`` for every node module of the package (setup.py lists them)."""
    if not name.startswith("_") and importlib.util.find_spec(f"robot_learning_ros.{name}") is not None:
        return _entry(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
