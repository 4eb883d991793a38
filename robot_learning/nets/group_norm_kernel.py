"""GroupNorm on channels-last bfloat16 maps, with the activation after it (ReLU or Mish) and a
residual block's sum folded in, in one pass each way: a small C kernel (``groupnorm_cl.c``) built with the system's C
compiler on first use and called through ctypes.

Why a kernel of our own: in the image encoders' bf16 training step on a CPU, torch's
channels-last GroupNorm is slow where groups hold few channels, so ``ImageGroupNorm`` normalized
such maps in the plain layout between two copies, and the sum and ReLU after it were more passes
each way. At the peers' network (two ResNet18-size encoders) those copies alone were 7% of the
step. This kernel reads the map where it lies, normalizes each sample while it is still in the
core's cache, adds the residual and clamps in the same pass, and in the backward pass recomputes
the ReLU's mask from the input (or reads it from the output where a residual was added). The
U-Net's sequences ([B, C, L] stored as [B, L, C]) are such maps too, [B, C, L, 1]: there it folds
in the Mish after each GroupNorm, which torch computes in two more passes each way with three
transcendental functions an element where the kernel needs one exponential.

Built and loaded by ``c_kernel`` (its threads are torch's OpenMP pool);
``ROBOT_LEARNING_GROUPNORM_KERNEL=0`` turns it off, and without a C compiler ``available()`` is
False and ``ImageGroupNorm`` keeps torch's kernels: the same results, a slower step."""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch

from robot_learning.nets import c_kernel

SOURCE = Path(__file__).with_name("groupnorm_cl.c")


@cache
def _library() -> ctypes.CDLL | None:
    lib = c_kernel.load(SOURCE, "ROBOT_LEARNING_GROUPNORM_KERNEL",
                        "GroupNorm on channels-last bf16 maps uses torch's kernels")
    if lib is None:
        return None
    i64, i32, f32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.gn_forward.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i32, i32, f32, i32, i32]
    lib.gn_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i32, i32, i32, i32]
    lib.gn_forward.restype = lib.gn_backward.restype = None
    return lib


def available() -> bool:
    """Whether the kernel is built (or can be) on this machine."""
    return _library() is not None


applies = c_kernel.takes   # the maps the kernel takes


ACTIVATIONS = {None: 0, "relu": 1, "mish": 2}   # the C file's ACT_* codes


def group_norm_cl(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                  activation: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``activation(group_norm(x) + residual)`` (``None``, ``"relu"`` or ``"mish"``; a residual
    only without Mish) for a map ``applies`` accepts; float32 affine parameters, bf16 result in the
    same layout."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation after GroupNorm must be one of {list(ACTIVATIONS)}, not {activation!r}")
    if activation == "mish" and residual is not None:
        raise ValueError("the kernel adds a residual before a ReLU only; add it after Mish outside the kernel")
    return _GroupNormCL.apply(x, weight, bias, groups, eps, activation, residual)


def _p(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _GroupNormCL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float, activation: str | None, residual):
        n, c, h, w = x.shape
        gamma, beta = weight.detach().float().contiguous(), bias.detach().float().contiguous()
        if residual is not None:
            if residual.shape != x.shape:   # the kernel reads it element for element with x
                raise ValueError(f"the residual added after GroupNorm has the shape {tuple(residual.shape)}, "
                                 f"not the map's {tuple(x.shape)}")
            residual = residual.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean = torch.empty(n, groups)
        rstd = torch.empty(n, groups)
        _library().gn_forward(_p(x), _p(residual), _p(gamma), _p(beta), _p(y), _p(mean), _p(rstd), n, h * w, c,
                              groups, eps, ACTIVATIONS[activation], torch.get_num_threads())
        # with a residual the ReLU's mask is read from the output (which the next layer keeps
        # anyway); without one it (or Mish's derivative) is recomputed from x
        ctx.save_for_backward(x, gamma, beta, mean, rstd, y if residual is not None and activation == "relu" else None)
        ctx.groups, ctx.act, ctx.residual = groups, ACTIVATIONS[activation], residual is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, gamma, beta, mean, rstd, y = ctx.saved_tensors
        n, c, h, w = x.shape
        dy = dy.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        dres = torch.empty_like(x, memory_format=torch.channels_last) if ctx.residual else None
        dgamma_n = torch.empty(n, c)
        dbeta_n = torch.empty(n, c)
        _library().gn_backward(_p(dy), _p(x), _p(y), _p(mean), _p(rstd), _p(gamma), _p(beta), _p(dx), _p(dres),
                               _p(dgamma_n), _p(dbeta_n), n, h * w, c, ctx.groups, ctx.act,
                               torch.get_num_threads())
        return dx, dgamma_n.sum(0), dbeta_n.sum(0), None, None, None, dres
