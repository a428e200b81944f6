"""Dropout with a cheaper random mask than ``torch.bernoulli`` on CPUs.

On the 2-core CPUs we target, ``torch.nn.functional.dropout`` spends about
6 ns per element drawing Bernoulli variables, which made dropout (attention
weights and tokens) a third of a UniAD training step. Here the keep-mask
comes from 16-bit slices of 64-bit random integers (about 1.2 ns per
element): each element is dropped with probability ``round(p * 65536) / 65536``
(0.1 -> 0.100006). It draws from the global torch generator, so seeding
torch makes it reproducible.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element of ``x`` with probability ``p`` and scale the rest by ``1 / (1 - p)``."""
    if not training or p == 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, True)
    words = (x.numel() + 3) // 4
    bits = torch.empty(words, dtype=torch.int64).random_(-(2**63), None)
    noise = bits.view(torch.int16)[: x.numel()].view(x.shape)
    keep = torch.ge(noise, round(p * _LEVELS) - _LEVELS // 2)
    # 0/1 in x's dtype: multiplying by a bool tensor converts it on every use
    # (forward and backward), which cost more than the random draw itself.
    mask = keep.view(torch.uint8).to(x.dtype)
    return x.mul(mask).mul_(1.0 / (1.0 - p))


class FastDropout(nn.Module):
    """:class:`torch.nn.Dropout` drawing its mask with :func:`fast_dropout`."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
