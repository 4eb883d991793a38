"""Max pooling and a convolution's windows for channels-last bfloat16 maps on a CPU, in a small C
kernel (``maps_cl.c``, built and loaded by ``c_kernel``).

Why, measured in the peers' bf16 training step (two ResNet18-size encoders, 84x84 frames, a
2-core CPU; docs/learning.md, "Pooling, windows and taps"):

- Max pooling (ResNet18's stem pools its largest map, 64 channels at 42x42). torch's kernel
  stores an int64 index for every output element, and its backward zeroes the whole input
  gradient in a pass of its own before scattering into it: 37 ms of the step's profile. The
  kernel keeps one byte an element (the window offset of the maximum), accumulates each sample's
  gradient in float in the core's cache and writes it once: 13 ms. Same maxima, the same
  elements picked (ties and NaNs as torch picks them); where windows overlap the gradient is the
  exact sum rounded once.
- Windows (``nets.vision``'s weight gradients as matrix products multiply each output pixel's
  receptive field as a row): torch padded a copy of the map and stacked k * k strided slices,
  30-35 ms a step; the kernel writes the rows in one pass, 3-4x faster.

``ROBOT_LEARNING_MAP_KERNELS=0`` turns them off; without a C compiler ``available()`` is False and
the callers keep torch's operations."""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch

from robot_learning.nets import c_kernel

SOURCE = Path(__file__).with_name("maps_cl.c")


@cache
def _library() -> ctypes.CDLL | None:
    lib = c_kernel.load(SOURCE, "ROBOT_LEARNING_MAP_KERNELS", "max pooling and convolution windows use torch's "
                        "operations")
    if lib is None:
        return None
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.mp_forward.argtypes = lib.mp_backward.argtypes = [ptr, ptr, ptr, i64, *[i32] * 9]
    lib.windows.argtypes = [ptr, ptr, i64, *[i32] * 9]
    lib.mp_forward.restype = lib.mp_backward.restype = lib.windows.restype = None
    return lib


def available() -> bool:
    """Whether the kernels are built (or can be) on this machine."""
    return _library() is not None


applies = c_kernel.takes   # the maps the kernel takes


def _dims(shape: torch.Size, out: tuple[int, int], kernel: int, stride: int, padding: int) -> list[int]:
    n, c, h, w = shape
    return [n, h, w, c, kernel, stride, padding, *out, torch.get_num_threads()]


def _out(shape: torch.Size, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    return tuple((size + 2 * padding - kernel) // stride + 1 for size in shape[2:])


def windows_cl(x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """[N, C, H, W] (a map ``applies`` accepts) -> [N * Ho * Wo, kernel * kernel * C]: each output
    pixel's receptive field as one row, in a channels-last weight's order (kh, kw, C), zeros
    where the window hangs over the edge."""
    out = _out(x.shape, kernel, stride, padding)
    rows = torch.empty(x.shape[0] * out[0] * out[1], kernel * kernel * x.shape[1], dtype=torch.bfloat16)
    _library().windows(x.data_ptr(), rows.data_ptr(), *_dims(x.shape, out, kernel, stride, padding))
    return rows


def max_pool_cl(x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """``F.max_pool2d(x, kernel, stride, padding)`` for a map ``applies`` accepts (no dilation,
    floor mode), channels-last bf16 out."""
    if not 0 <= padding <= kernel // 2:   # torch's own rule: a window must see the map
        raise ValueError(f"max pooling's padding must lie in [0, {kernel // 2}] for a {kernel}x{kernel} window, "
                         f"not {padding}")
    if kernel * kernel > 256:
        raise ValueError(f"the kernel keeps a window offset in a byte: windows up to 16x16, not {kernel}x{kernel}")
    return _MaxPoolCL.apply(x, kernel, stride, padding)


class _MaxPoolCL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel: int, stride: int, padding: int):
        out = _out(x.shape, kernel, stride, padding)
        y = torch.empty(x.shape[0], x.shape[1], *out, dtype=x.dtype, memory_format=torch.channels_last)
        arg = torch.empty(x.shape[0], *out, x.shape[1], dtype=torch.uint8)
        _library().mp_forward(x.data_ptr(), y.data_ptr(), arg.data_ptr(), *_dims(x.shape, out, kernel, stride, padding))
        ctx.save_for_backward(arg)
        ctx.shape, ctx.window = x.shape, (kernel, stride, padding)
        return y

    @staticmethod
    def backward(ctx, dy):
        (arg,) = ctx.saved_tensors
        dy = dy.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        dx = torch.empty(ctx.shape, dtype=torch.bfloat16, memory_format=torch.channels_last)
        _library().mp_backward(dy.data_ptr(), arg.data_ptr(), dx.data_ptr(),
                               *_dims(ctx.shape, tuple(arg.shape[1:3]), *ctx.window))
        return dx, None, None, None
