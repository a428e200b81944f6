"""Feature jittering (UniAD section 3.4): noise scaled by each token's norm."""

from __future__ import annotations

import torch


def feature_jitter(
    tokens: torch.Tensor,
    scale: float,
    prob: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Perturb feature tokens as UniAD does during training.

    With probability ``prob`` (one draw per call, i.e. per batch) every token
    ``f`` becomes ``f + eps * (||f||_2 / C) * scale`` with ``eps ~ N(0, I)``.

    Parameters
    ----------
    tokens : torch.Tensor, shape (..., C)
        Clean feature tokens; channels last.
    scale : float
        ``alpha`` in the paper (20 by default in UniAD).
    prob : float
        Probability of jittering this batch.
    generator : torch.Generator, optional
        Source of randomness; the global generators when None. Its draws are
        made on its own device and moved to ``tokens``' (a CPU generator
        works for CUDA tokens).

    Returns
    -------
    torch.Tensor
        Jittered tokens (a new tensor) or ``tokens`` itself when not jittered.
    """
    if scale == 0 or prob == 0:
        return tokens
    device = tokens.device if generator is None else generator.device
    # the coin is tossed on the CPU (the global CPU generator by default): reading a GPU
    # draw back would make the host wait for the GPU every step
    coin_device = "cpu" if generator is None else generator.device
    if prob < 1 and torch.rand((), generator=generator, device=coin_device) >= prob:
        return tokens
    channels = tokens.shape[-1]
    norms = tokens.norm(dim=-1, keepdim=True) / channels
    if generator is None:  # the same draws; and torch.compile traces it for any batch size
        noise = torch.randn_like(tokens)
    else:
        noise = torch.randn(tokens.shape, generator=generator, device=device, dtype=tokens.dtype)
    return tokens + noise.to(tokens.device) * norms * scale
