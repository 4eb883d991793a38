"""A conditional MLP denoiser: the whole action chunk, flattened, goes through residual MLP
blocks with the diffusion step and the encoded observations concatenated to their input.

Why it exists beside the U-Net: for low-dimensional observations a chunk of 16 actions of 8
values is 128 numbers, and a 1-D U-Net spends most of its compute convolving such a short
sequence at several widths. On the demo's 2-core budget the U-Net gets a few thousand steps
and stays imprecise; this network costs a fraction of a step and so gets many more
(``docs/learning.md``, "A smaller denoiser"). Same interface as ``ConditionalUnet1D``."""

from __future__ import annotations

import torch
from torch import nn

from robot_learning.nets.unet1d import StepEmbedding


class ResidualMLPBlock(nn.Module):
    """LayerNorm, two linear layers with Mish between, added back to the input."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width + cond_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.Mish()

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(torch.cat([self.norm(h), cond], dim=-1))))


class ConditionalMLPDenoiser(nn.Module):
    """``forward(x [B, T, A], k [B], cond [B, C]) -> [B, T, A]`` for a fixed horizon T; the
    conditioning (step embedding and observations) enters every block."""

    def __init__(self, action_dim: int, horizon: int, cond_dim: int, width: int = 512, depth: int = 3,
                 step_dim: int = 64):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.step = StepEmbedding(step_dim)
        c = step_dim + cond_dim
        self.inp = nn.Linear(horizon * action_dim + c, width)
        self.blocks = nn.ModuleList([ResidualMLPBlock(width, c) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Mish(), nn.Linear(width, horizon * action_dim))

    def forward(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (self.horizon, self.action_dim):
            raise ValueError(f"chunk must be [B, {self.horizon}, {self.action_dim}], not {list(x.shape)}")
        if k.dim() == 0:
            k = k.expand(x.shape[0])
        g = torch.cat([self.step(k), cond], dim=-1)
        h = self.inp(torch.cat([x.flatten(1), g], dim=-1))
        for blk in self.blocks:
            h = blk(h, g)
        return self.out(h).reshape(x.shape)
