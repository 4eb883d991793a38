"""Mixed precision where the hardware has it: bfloat16 autocast on CPUs with bf16 units (AMX,
AVX512-BF16) and on GPUs that support it, float32 elsewhere.

Weights, optimizer state, the EMA and the loss stay float32; only the matrix products and
convolutions run in bfloat16 (torch's autocast lists), so nothing needs a loss scale. On a CPU
without bf16 units bfloat16 is emulated and slower than float32, which is why "auto" looks at
the processor's flags rather than at what torch can do."""

from __future__ import annotations

import contextlib
from functools import cache
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")


@cache
def _cpu_has_bf16_units() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "amx_bf16" in flags or "avx512_bf16" in flags


def bf16_is_fast(device: str) -> bool:
    """Whether bfloat16 runs in hardware on ``device`` ("cpu", "cuda", "cuda:1")."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device == "cpu" and _cpu_has_bf16_units()


def resolve(precision: str, device: str, images: bool = True) -> str:
    """"fp32" or "bf16" for ``precision`` on ``device``; "auto" picks bf16 where it is fast and
    the network reads images. A policy without cameras is a few small products per step, where
    autocast's casts cost more than bf16 saves: the demo's low-dim policy trained 1.5x slower in
    bf16 on a CPU with AMX (``benchmarks/image_training.py`` has the image case). An unknown name
    is a ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision is one of {', '.join(PRECISIONS)}, not '{precision}'")
    if precision == "auto":
        return "bf16" if images and bf16_is_fast(device) else "fp32"
    return precision


def autocast(device: str, precision: str):
    """The context a forward pass runs in: bfloat16 autocast for "bf16", nothing for "fp32"."""
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def cpu_computes_bf16(x) -> bool:
    """Whether a CPU layer given ``x`` computes in bfloat16: ``x`` is bf16, or CPU autocast to bf16
    is on. The layers that pick a faster kernel for bf16 on a CPU (nets.unet1d, nets.vision) ask
    this, so they agree with what autocast will do."""
    import torch

    return x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)
