"""A conditional 1-D temporal U-Net: denoises an action sequence given a diffusion step and a
global conditioning vector (the encoded observations), which modulates every residual block
through FiLM (a per-channel scale and shift)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from robot_learning.nets import group_norm_kernel
from robot_learning.nets.precision import cpu_computes_bf16


class TemporalConv(nn.Conv1d):
    """A same-padded 1-D convolution over the action sequence. On a CPU it runs as matrix
    products where that is faster than the convolution kernel (same weights, same result):

    - inference on one or two windows (the policy server, one env's rollout), from 128 input
      channels: at so small a batch torch takes its slow reference convolution, 2.3-4x slower
      than the product in float32 at batch 1 and 1.3-1.7x in bfloat16 (one thread;
      docs/learning.md, "A U-Net step at batch 1"; at batch 4 the widest layers were already
      faster as convolutions);
    - bfloat16 at any batch from 512 channels (the peers' 512- and 1024-channel levels over 4-8
      steps): oneDNN's direct bf16 kernel for such short sequences takes about 1.4x as long
      forward and backward (docs/learning.md, "The training step against LeRobot again").

    Training takes one product per tap (``_ConvPerTap``), inference one over the unfolded windows.
    The weight is stored tap-major for both. Float32 training batches, GPUs and narrower layers
    keep the direct kernel (which reads either layout as fast)."""

    GEMM_FROM_CHANNELS = 512            # bfloat16, any batch
    SMALL_BATCH, SMALL_FROM_CHANNELS = 2, 128

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__(c_in, c_out, kernel, padding=kernel // 2)   # stride 1, one group: what forward unfolds
        # tap-major in memory ([C_out, k, C] under the usual [C_out, C, k] shape and checkpoint
        # key): each tap's [C_out, C] is a matrix the products read and write as it lies
        self.weight = nn.Parameter(self.weight.detach().transpose(1, 2).contiguous().transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        bf16 = cpu_computes_bf16(x)
        small = x.shape[0] <= self.SMALL_BATCH and self.in_channels >= self.SMALL_FROM_CHANNELS
        if not (small or (bf16 and self.in_channels >= self.GEMM_FROM_CHANNELS)):
            return super().forward(x)
        dtype = torch.bfloat16 if bf16 else x.dtype
        with torch.autocast("cpu", enabled=False):
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return _ConvPerTap.apply(x, self.weight, self.bias, self.padding[0], dtype)
            return _conv_over_windows(x, self.weight, self.bias, self.padding[0], dtype)


def _conv_over_windows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pad: int,
                       dtype: torch.dtype) -> torch.Tensor:
    """Inference: one product over the unfolded windows ([B * L, C * k]), the weight read as it
    lies (a per-tap product would need it copied into another order at every call)."""
    b, c, length = x.shape
    c_out, _, k = weight.shape
    seq = F.pad(x.transpose(1, 2).to(dtype), (0, 0, pad, pad))          # [B, L + 2 pad, C]
    # one row per output step, in the weight's tap-major (k, C) order
    cols = seq.unfold(1, k, 1).transpose(2, 3).reshape(b * length, k * c)
    y = torch.addmm(bias.to(dtype), cols, weight.transpose(1, 2).reshape(c_out, k * c).to(dtype).t())
    return y.view(b, length, c_out).transpose(1, 2)


def _tap_spans(length: int, k: int, pad: int) -> list[tuple[int, int, int]]:
    """For each tap j of a same-padded kernel: (j, first, end) of the output steps whose window
    has that tap inside the sequence (input step = output step + j - pad)."""
    spans = [(j, max(0, pad - j), min(length, length + pad - j)) for j in range(k)]
    return [(j, first, end) for j, first, end in spans if end > first]   # a sequence shorter than the kernel


class _ConvPerTap(torch.autograd.Function):
    """``TemporalConv``'s product form for training: one product per tap, over the output steps
    whose window has that tap inside the sequence, summed in float32. Over 4 steps with k = 5,
    30% of the unfolded windows' taps are padding; the one product over the windows this replaced
    multiplied those zeros too, and its backward folded the windows' gradients back with k shifted
    sums over the whole sequence. The peers' U-Net (256/512/1024, batch 64, bf16) trains 1.10x as
    fast per tap (docs/learning.md, "Pooling, windows and taps").

    Each tap's [C_out, C] must be a matrix the products read as it lies, hence ``TemporalConv``'s
    tap-major weight: with the plain layout, casting the weight into tap order at every step and
    writing the gradient back out of it cost what the products saved. The sequence is read as
    [B, L, C] in memory, the layout the products leave, so a chain of such layers (with the
    GroupNorm kernel between them) moves no layouts."""

    @staticmethod
    def forward(ctx, x, weight, bias, pad: int, dtype: torch.dtype):
        b, c, length = x.shape
        c_out, _, k = weight.shape
        seq = x.transpose(1, 2).to(dtype)                                # [B, L, C]
        taps = weight.detach().to(dtype)                                 # tap j: [:, :, j], [C_out, C]
        y = bias.detach().float().expand(b, length, c_out).clone()
        for j, o0, o1 in _tap_spans(length, k, pad):
            rows = seq[:, o0 + j - pad:o1 + j - pad].reshape(-1, c)
            y[:, o0:o1] += (rows @ taps[:, :, j].t()).view(b, o1 - o0, c_out)
        ctx.save_for_backward(seq, taps)
        ctx.pad, ctx.x_dtype = pad, x.dtype
        return y.to(dtype).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):
        seq, taps = ctx.saved_tensors
        b, length, c = seq.shape
        c_out, _, k = taps.shape
        g = grad.transpose(1, 2).to(seq.dtype)                          # [B, L, C_out]
        grad_x = torch.zeros(b, length, c) if ctx.needs_input_grad[0] else None   # float32: k terms a step
        spans = _tap_spans(length, k, ctx.pad)
        per_tap = None   # the weight's gradient tap by tap, [k, C_out, C]: each product written where it lands
        if ctx.needs_input_grad[1]:   # (a tap that never meets the sequence has a gradient of zero)
            per_tap = (torch.empty if len(spans) == k else torch.zeros)(k, c_out, c, dtype=seq.dtype)
        for j, o0, o1 in spans:
            rows = g[:, o0:o1].reshape(-1, c_out)
            i0, i1 = o0 + j - ctx.pad, o1 + j - ctx.pad
            if grad_x is not None:
                grad_x[:, i0:i1] += (rows @ taps[:, :, j]).view(b, o1 - o0, c)
            if per_tap is not None:
                torch.mm(rows.t(), seq[:, i0:i1].reshape(-1, c), out=per_tap[j])
        grad_w = None
        if per_tap is not None:   # float32, in the weight's own layout (autograd would copy it into that)
            grad_w = torch.empty_like(taps, dtype=torch.float32).copy_(per_tap.permute(1, 2, 0))
        grad_b = g.float().sum((0, 1)) if ctx.needs_input_grad[2] else None
        return None if grad_x is None else grad_x.transpose(1, 2).to(ctx.x_dtype), grad_w, grad_b, None, None


class StepEmbedding(nn.Module):
    """Sinusoidal features of the diffusion step followed by a small MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=k.device, dtype=torch.float32) / (half - 1))
        ang = k.float()[:, None] * freq[None]
        return self.mlp(torch.cat([ang.sin(), ang.cos()], dim=-1))


class GroupNormMish(nn.GroupNorm):
    """GroupNorm then Mish over [B, C, L] sequences. On a CPU in bf16 both run as one pass each
    way of ``group_norm_kernel``'s C kernel over the sequence stored as [B, L, C] (the layout
    ``TemporalConv``'s products leave; a sequence in the other layout is copied once): torch's
    GroupNorm and Mish cost about 45 ms of the peers' 0.65 s U-Net step, mostly Mish's
    transcendental functions. Elsewhere torch's. Same parameters (checkpoints load as before)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and cpu_computes_bf16(x) and x.dim() == 3 and group_norm_kernel.available():
            seq = x.transpose(1, 2).to(torch.bfloat16).contiguous()      # [B, L, C]: a [B, C, L, 1] map
            y = group_norm_kernel.group_norm_cl(seq.transpose(1, 2).unsqueeze(-1), self.num_groups, self.weight,
                                                self.bias, self.eps, "mish")
            return y.squeeze(-1)
        return F.mish(super().forward(x))


class ConvNormAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__(TemporalConv(c_in, c_out, kernel), GroupNormMish(groups, c_out))


class FiLMBlock(nn.Module):
    """Two conv layers; between them the conditioning scales and shifts every channel."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv1 = ConvNormAct(c_in, c_out, kernel, groups)
        self.conv2 = ConvNormAct(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        scale, shift = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.conv2(h * (1 + scale) + shift)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """``forward(x [B, T, A], k [B], cond [B, C]) -> noise estimate [B, T, A]``.

    T must be divisible by 2 ** (len(down_dims) - 1)."""

    def __init__(self, action_dim: int, cond_dim: int, down_dims: tuple[int, ...] = (128, 256, 512),
                 step_dim: int = 128, kernel: int = 5, groups: int = 8):
        super().__init__()
        self.step = StepEmbedding(step_dim)
        c = step_dim + cond_dim
        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(down_dims) - 1
            self.down.append(nn.ModuleList([FiLMBlock(a, b, c, kernel, groups), FiLMBlock(b, b, c, kernel, groups),
                                            nn.Conv1d(b, b, 3, 2, 1) if not last else nn.Identity()]))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([FiLMBlock(mid, mid, c, kernel, groups), FiLMBlock(mid, mid, c, kernel, groups)])
        self.up = nn.ModuleList()
        for a, b in zip(reversed(down_dims[1:]), reversed(down_dims[:-1])):
            self.up.append(nn.ModuleList([FiLMBlock(a * 2, b, c, kernel, groups), FiLMBlock(b, b, c, kernel, groups),
                                          nn.ConvTranspose1d(b, b, 4, 2, 1)]))
        self.out = nn.Sequential(ConvNormAct(down_dims[0], down_dims[0], kernel, groups),
                                 nn.Conv1d(down_dims[0], action_dim, 1))
        self.levels = len(down_dims)

    def forward(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % (2 ** (self.levels - 1)):
            raise ValueError(f"horizon {x.shape[1]} must be divisible by {2 ** (self.levels - 1)}")
        if k.dim() == 0:
            k = k.expand(x.shape[0])
        g = torch.cat([self.step(k), cond], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for b1, b2, down in self.down:
            h = b2(b1(h, g), g)
            skips.append(h)
            h = down(h)
        for blk in self.mid:
            h = blk(h, g)
        for b1, b2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = up(b2(b1(h, g), g))
        return self.out(h).transpose(1, 2)
