"""A small ResNet-style image encoder with GroupNorm (batch statistics are a poor fit for
small robot batches and for inference on one frame), and the crop augmentation it trains with."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robot_learning.nets import group_norm_kernel, map_kernels
from robot_learning.nets.precision import cpu_computes_bf16


class ImageConv(nn.Conv2d):
    """A convolution of the image encoders. Forward and the input's gradient are oneDNN's kernels;
    on a CPU in bfloat16 the weight's gradient of the layers ``product_weight_grad`` names
    is one matrix product over the input's windows instead. oneDNN's bf16 weight-gradient kernel
    ran at 30-170 GFLOP/s on strided layers and 3x3 maps on a 2-core AMD EPYC (its forward and
    input-gradient kernels at 300-530); the product runs near the CPU's matrix rate, and ResNet18
    encoders train 7% faster for it (docs/learning.md, "GroupNorm on channels-last maps, and weight
    gradients as matrix products").
    Same weights and checkpoints; the gradients agree to bf16's rounding."""

    def product_weight_grad(self) -> bool:
        """Stride-2 layers from 64 input channels and every layer from 256 (ResNet18's last two
        stages, on maps of 6x6 and 3x3): where the product won, measured on the peers' encoder in
        whole training steps, alternating processes. On the narrower "tiny" and "small" encoders
        it changed nothing measurable; in float32 it was slower (5%), so float32 keeps the kernel."""
        return (self.stride[0] == 2 and self.in_channels >= 64) or self.in_channels >= 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bf16 = cpu_computes_bf16(x)
        if not (x.device.type == "cpu" and bf16 and torch.is_grad_enabled() and self.weight.requires_grad
                and self.product_weight_grad()):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return _WeightGradAsProduct.apply(x.to(torch.bfloat16), self.weight.to(torch.bfloat16),
                                              None if self.bias is None else self.bias.to(torch.bfloat16),
                                              self.stride[0], self.padding[0])


def _windows(x: torch.Tensor, k: int, stride: int, pad: int, ho: int, wo: int) -> torch.Tensor:
    """[N, C, H, W] (channels-last in memory) -> [N * Ho * Wo, k * k * C]: each output pixel's
    receptive field as one row, in the weight's channels-last order (kh, kw, C). In one pass in C
    where the kernel is built (3-4x faster than the padded copy and stacked slices below)."""
    if map_kernels.applies(x) and map_kernels.available():
        return map_kernels.windows_cl(x, k, stride, pad)
    xl = x.permute(0, 2, 3, 1)
    if pad:
        xl = F.pad(xl, (0, 0, pad, pad, pad, pad))
    span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    cols = torch.stack([xl[:, i:i + span_h:stride, j:j + span_w:stride] for i in range(k) for j in range(k)], 3)
    return cols.reshape(-1, k * k * x.shape[1])


class _WeightGradAsProduct(torch.autograd.Function):
    """conv2d (square kernel, equal stride and padding both ways, one group) whose backward takes
    the input's gradient from the convolution kernel and the weight's as one matrix product."""

    @staticmethod
    def forward(ctx, x, w, b, stride: int, pad: int):
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.pad, ctx.has_bias = stride, pad, b is not None
        return F.conv2d(x, w, b, stride, pad)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        s, p = ctx.stride, ctx.pad
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                                                         [True, False, False])[0]
        n, c_out, ho, wo = g.shape
        rows = g.permute(0, 2, 3, 1).reshape(-1, c_out)                 # one row per output pixel
        k = w.shape[-1]
        inside = (1 - _padding_share(k, p, x.shape[2], ho)) * (1 - _padding_share(k, p, x.shape[3], wo))
        if s == 1 and inside <= 0.7:   # ResNet18's 3x3 maps (60% inside), not its 6x6 ones (79%)
            grad_w = _weight_grad_per_tap(x, g, k, p)
        else:
            grad_w = (rows.t() @ _windows(x, k, s, p, ho, wo)).view(c_out, k, k, -1).permute(0, 3, 1, 2)
        return grad_x, grad_w, rows.sum(0) if ctx.has_bias else None, None, None


def _padding_share(k: int, pad: int, size: int, out: int) -> float:
    """The share of stride-1 windows' taps along one side (``size`` in, ``out`` out) that fall on
    the padding."""
    return sum(max(0, pad - i) + max(0, i - pad + k - size) for i in range(out)) / (k * out)


def _weight_grad_per_tap(x: torch.Tensor, g: torch.Tensor, k: int, pad: int) -> torch.Tensor:
    """A stride-1 weight gradient as k * k products, one per tap over the output pixels whose
    window has that tap inside the map. On ResNet18's last 3x3 maps 40% of the windows' taps are
    padding, and the one product over all windows multiplies those zeros too: this takes 11.6 ms
    where it took 15.5 for [128, 512, 3, 3] (at 6x6, with 21% padding, the two are equal)."""
    _, c, h, w = x.shape
    xl, gl = x.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1)                # [N, H, W, C] in memory
    grad = torch.empty(g.shape[1], k, k, c, dtype=g.dtype)
    for i in range(k):
        y0, y1 = max(0, pad - i), min(h, h + pad - i)
        for j in range(k):
            x0, x1 = max(0, pad - j), min(w, w + pad - j)
            grad[:, i, j] = (gl[:, y0:y1, x0:x1].reshape(-1, g.shape[1]).t()
                             @ xl[:, y0 + i - pad:y1 + i - pad, x0 + j - pad:x1 + j - pad].reshape(-1, c))
    return grad.permute(0, 3, 1, 2)


class ImageGroupNorm(nn.GroupNorm):
    """GroupNorm over the encoders' channels-last maps, with the ReLU after it (``relu``) and a
    residual block's sum (``residual``) folded in: ``relu(group_norm(x) + residual)``.

    On a CPU in bf16 it runs ``group_norm_kernel``'s C kernel: one pass each way over the map where
    it lies. torch's channels-last bf16 kernel took 3-10x the time of its plain-layout one on maps
    with 8 or fewer channels per group (the tiny encoder's every map, ResNet18's 64-channel ones),
    and going through the plain layout cost two copies each way, 7% of the peers' training step;
    the separate sum and ReLU were more passes. The kernel made that step 7-9% faster
    (docs/learning.md, "A GroupNorm kernel of our own"). Without a C compiler, and in float32 or
    on a GPU, torch's kernels run (in bf16 through the plain layout where groups are narrow, which
    made the tiny encoder's steps 1.6-2.1x as fast as torch's channels-last kernel). Same
    parameters, same result to bf16's rounding."""

    def __init__(self, num_groups: int, num_channels: int, relu: bool = False):
        super().__init__(num_groups, num_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if group_norm_kernel.applies(x) and group_norm_kernel.available():
            return group_norm_kernel.group_norm_cl(x, self.num_groups, self.weight, self.bias, self.eps,
                                                   "relu" if self.relu else None, residual)
        if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and self.num_channels // self.num_groups <= 8
                and x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
            y = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            y = y.contiguous(memory_format=torch.channels_last)
        else:
            y = super().forward(x)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


class ImageMaxPool(nn.MaxPool2d):
    """``nn.MaxPool2d`` (square window, no dilation, floor mode) that pools channels-last bf16
    maps on a CPU with ``map_kernels``' C kernel (an eighth of torch's index memory, no separate
    zeroing pass); elsewhere torch's. Same maxima, same gradients."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = (self.kernel_size, self.stride, self.padding)
        if (all(isinstance(v, int) for v in window) and self.dilation == 1 and not self.ceil_mode
                and not self.return_indices and self.kernel_size <= 16 and map_kernels.applies(x)
                and map_kernels.available()):
            return map_kernels.max_pool_cl(x, *window)
        return super().forward(x)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, groups: int = 8):
        super().__init__()
        self.conv1 = ImageConv(c_in, c_out, 3, stride, 1, bias=False)
        self.n1 = ImageGroupNorm(groups, c_out, relu=True)
        self.conv2 = ImageConv(c_out, c_out, 3, 1, 1, bias=False)
        self.n2 = ImageGroupNorm(groups, c_out, relu=True)
        self.skip = (nn.Sequential(ImageConv(c_in, c_out, 1, stride, bias=False), ImageGroupNorm(groups, c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.n1(self.conv1(x))
        return self.n2(self.conv2(h), residual=self.skip(x))


class SpatialSoftmax(nn.Module):
    """Expected image coordinates of each feature map's softmax: where things are, not what.
    [B, C, H, W] -> [B, 2C]: the C expected rows (in [-1, 1], top to bottom), then the C columns.

    The softmax runs over the map's positions as they lie in a channels-last map ([B, H*W, C] is
    a view of it), and the expectation is one product with the grid, in float32: the sums over
    the strided dimensions of the map it replaced took 22-25 ms a step, forward and backward, for
    two ResNet18 encoders' 3x3 maps in bf16 on a 2-core CPU, this 6 (same result to float32's
    rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = F.softmax(x.permute(0, 2, 3, 1).reshape(b, h * w, c), dim=1)
        ys = torch.linspace(-1, 1, h, device=x.device)
        xs = torch.linspace(-1, 1, w, device=x.device)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(h * w, 2)
        with torch.autocast(x.device.type, enabled=False):   # coordinates to float32's precision, not bf16's
            return (p.float().transpose(1, 2) @ grid).transpose(1, 2).reshape(b, 2 * c)


# The encoders a policy can have. "small": half a ResNet18's widths and a 5x5 stem without pooling
# (the default; what the results in docs/learning.md used). "resnet18": ResNet18's layout (7x7
# stem, max-pool, 64-512 wide), GroupNorm instead of batch statistics: the size the peers train
# (LeRobot's and Diffusion Policy's image encoder), for comparisons at the same network. "tiny":
# half the small one's widths, for training on a CPU: with 64x64 frames a step of two cameras is
# 2.7x the small one's at 96x96 on 2 cores (docs/learning.md, "From pixels on a CPU").
ENCODERS = {"tiny": {"widths": (16, 32, 64, 128), "stem_kernel": 5, "stem_pool": False},
            "small": {"widths": (32, 64, 128, 256), "stem_kernel": 5, "stem_pool": False},
            "resnet18": {"widths": (64, 128, 256, 512), "stem_kernel": 7, "stem_pool": True}}


class ImageEncoder(nn.Module):
    """[B, C, H, W] uint8 or float in [0, 1] -> [B, out_dim]. ``channels`` 3 for RGB, 1 for depth."""

    def __init__(self, channels: int = 3, out_dim: int = 64, widths: tuple[int, ...] = (32, 64, 128, 256),
                 groups: int = 8, stem_kernel: int = 5, stem_pool: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, widths[0], stem_kernel, 2, stem_kernel // 2, bias=False),
                                  ImageGroupNorm(groups, widths[0], relu=True),
                                  *([ImageMaxPool(3, 2, 1)] if stem_pool else []))
        layers, c = [], widths[0]
        for i, w in enumerate(widths):
            layers += [BasicBlock(c, w, 1 if i == 0 else 2, groups), BasicBlock(w, w, 1, groups)]
            c = w
        self.blocks = nn.Sequential(*layers)
        self.pool = SpatialSoftmax()
        self.proj = nn.Sequential(nn.Linear(2 * c, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.blocks(self.stem(x))))


def crop(images: torch.Tensor, size: tuple[int, int], train: bool) -> torch.Tensor:
    """Random crop per sample while training, centre crop otherwise. ``images`` [B, C, H, W]."""
    b, _, h, w = images.shape
    ch, cw = size
    if (ch, cw) == (h, w):
        return images
    if not train:
        y, x = (h - ch) // 2, (w - cw) // 2
        return images[:, :, y:y + ch, x:x + cw]
    ys = torch.randint(0, h - ch + 1, (b,), device=images.device)
    xs = torch.randint(0, w - cw + 1, (b,), device=images.device)
    if images.device.type == "cpu":
        # one slice a sample, stacked: 14x faster than the gather below on a CPU (0.7 against 9.5
        # ms for 128 frames of 96x96), the same pixels
        hwc = images.permute(0, 2, 3, 1)
        return torch.stack([hwc[i, y:y + ch, x:x + cw] for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist()))]
                           ).permute(0, 3, 1, 2)
    iy = ys[:, None] + torch.arange(ch, device=images.device)[None]
    ix = xs[:, None] + torch.arange(cw, device=images.device)[None]
    bi = torch.arange(b, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)
