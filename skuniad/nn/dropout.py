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

The mask is handed out as 0/1 in the activations' dtype (:func:`keep_mask`)
so that the ``1 / (1 - p)`` rescaling can ride on an operation that runs
anyway: the residual add (:func:`dropout_add`, one fused ``addcmul``), the
next linear layer's weight, or a smaller tensor after the attention product.
Multiplying by a bool mask would convert it on every use, forward and
backward.

Inside ``torch.compile`` the mask is ``rand_like(x) >= p`` instead: the
compiler draws it from its own counter-based generator inside the kernel
that uses it (seeded from torch's generator), which SplitMix64's host-side
seed would split into many graphs.
"""

from __future__ import annotations

import torch

_LEVELS = 1 << 16


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN_GAMMA = _signed(0x9E3779B97F4A7C15)
_MIX = ((30, _signed(0xBF58476D1CE4E5B9)), (27, _signed(0x94D049BB133111EB)), (31, None))


_golden_multiples = torch.empty(0, dtype=torch.int64)  # i * golden_gamma, grown on demand


def random_words(n: int) -> torch.Tensor:
    """``n`` pseudo-random int64 words (SplitMix64 from a seed drawn from torch's generator)."""
    global _golden_multiples
    if len(_golden_multiples) < n:
        _golden_multiples = torch.arange(n, dtype=torch.int64).mul_(_GOLDEN_GAMMA)
    seed = int(torch.empty(1, dtype=torch.int64).random_(-(2**63), None))
    z = _golden_multiples[:n] + seed  # wraps mod 2**64
    shifted = torch.empty_like(z)  # one scratch buffer: fewer, cache-warm allocations
    for shift, multiplier in _MIX:
        torch.bitwise_right_shift(z, shift, out=shifted)
        z ^= shifted.bitwise_and_((1 << (64 - shift)) - 1)  # logical shift on int64
        if multiplier is not None:
            z *= multiplier
    return z


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask for ``x``: 1 with probability ``1 - p``, else 0, in ``x``'s dtype."""
    if torch.compiler.is_compiling():
        return torch.rand_like(x, dtype=torch.float32).ge(p).to(x.dtype)
    if x.device.type != "cpu":
        return torch.empty_like(x).bernoulli_(1 - p)
    noise = random_words((x.numel() + 3) // 4).view(torch.int16)[: x.numel()].view(x.shape)
    # int16 noise is uniform on [-32768, 32767]: keep the top 1 - p of it
    return torch.ge(noise, round(p * _LEVELS) - _LEVELS // 2, out=torch.empty_like(x))


def dropout_add(residual: torch.Tensor, x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``residual + dropout(x)``: mask, rescaling and add in one ``addcmul`` pass."""
    if not training or p == 0:
        return residual + x
    return torch.addcmul(residual, x, keep_mask(x, p), value=1 / (1 - p))
