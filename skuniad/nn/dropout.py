"""Dropout with a cheaper random mask than ``torch.bernoulli`` on CPUs.

On the 2-core CPUs we target, ``torch.nn.functional.dropout`` spends about
4 ns per element drawing Bernoulli variables, and even ``random_`` (the
Mersenne Twister, one thread) made dropout the largest cost of a UniAD
training step after the matrix products. Here the random bits come from
SplitMix64 (Steele, Lea & Flood, OOPSLA 2014), a counter-based generator
that passes BigCrush, evaluated with whole-tensor integer operations (so on
all threads): word ``i`` of a call is ``mix(seed + i * golden_gamma)`` with a
fresh 64-bit ``seed`` drawn from the global torch generator, so seeding torch
makes dropout reproducible. Each element uses 16 bits of a word and is dropped
with probability ``round(p * 65536) / 65536`` (0.1 -> 0.100006).
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN_GAMMA = _signed(0x9E3779B97F4A7C15)
_MIX = ((30, _signed(0xBF58476D1CE4E5B9)), (27, _signed(0x94D049BB133111EB)), (31, None))


def random_words(n: int) -> torch.Tensor:
    """``n`` pseudo-random int64 words (SplitMix64 from a seed drawn from torch's generator)."""
    seed = int(torch.empty(1, dtype=torch.int64).random_(-(2**63), None))
    z = torch.arange(n, dtype=torch.int64).mul_(_GOLDEN_GAMMA).add_(seed)  # wraps mod 2**64
    for shift, multiplier in _MIX:
        z ^= (z >> shift) & ((1 << (64 - shift)) - 1)  # logical shift on int64
        if multiplier is not None:
            z *= multiplier
    return z


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element of ``x`` with probability ``p`` and scale the rest by ``1 / (1 - p)``."""
    if not training or p == 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, True)
    noise = random_words((x.numel() + 3) // 4).view(torch.int16)[: x.numel()].view(x.shape)
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
