"""Which torch device a trainer or learner runs on, from what the user asked for."""

from __future__ import annotations

import os


def pick_device(name: str) -> str:
    """``auto``: this process's GPU (``LOCAL_RANK`` under torchrun) when CUDA is there, else the
    CPU; anything else as given, refused in one sentence when it cannot run here (a learner told
    ``cuda`` on a machine without one would otherwise fail at its first update, minutes in)."""
    import torch

    if name == "auto":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device '{name}' is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}': this machine has no CUDA GPU torch can use; use cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return name
