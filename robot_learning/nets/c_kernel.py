"""Builds and loads the small C kernels next to this file (``groupnorm_cl.c``, ``maps_cl.c``, and
the ``bf16.h`` they share) with the system's C compiler on first use; they are called through
ctypes.

Why C at all: in a bf16 training step on a CPU, some of torch's kernels for channels-last maps
move several times the memory the operation needs (layout copies, int64 indices, separate passes
for what could be one); each module that loads a kernel says what it measured.

A library is built once per source and processor (``-march=native``) into the user's cache
directory; its threads are torch's own OpenMP pool (the libgomp torch has loaded, the same
soname): threads of their own competed with torch's, still spinning after the operation before.
Each kernel has an environment switch that turns it off (``=0``) to compare against torch's.
Without a C compiler (Debian: ``apt install gcc``, which ``make setup`` does) ``load`` returns
None, one log line says so, and the callers keep torch's kernels: the same results, a slower step."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC", "-fopenmp"]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robot_learning" / "kernels"


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the processor's model and flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))][:2]
    return "\n".join([platform.machine(), *lines])


def load(source: Path, switch: str, fallback: str) -> ctypes.CDLL | None:
    """``source`` built (if not already) and loaded, or None when the environment variable
    ``switch`` is "0" or it cannot be built; ``fallback`` says what runs instead, for the log."""
    if os.environ.get(switch, "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found (Debian: apt install gcc): %s, and image training steps are slower",
                    fallback)
        return None
    text = source.read_bytes() + b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))   # its includes
    key = hashlib.sha256(text + _cpu_key().encode() + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{key}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:   # atomic: ranks may build at once
                built = Path(tmp) / target.name
                out = subprocess.run([compiler, *FLAGS, str(source), "-o", str(built), "-lm"], capture_output=True,
                                     text=True)
                if out.returncode != 0:
                    raise OSError(out.stderr[-2000:])
                os.replace(built, target)
        return ctypes.CDLL(str(target))
    except OSError as e:
        log.warning("could not build %s into %s, so %s, and image training is slower: %s", source.name,
                    target.parent, fallback, e)
        return None


def takes(x: torch.Tensor) -> bool:
    """Whether ``x`` is a map the kernels take: 4-D bf16 on the CPU, channels-last in memory."""
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 4 and x.numel() > 0
            and x.is_contiguous(memory_format=torch.channels_last))
