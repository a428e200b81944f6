"""Neighbor mask and the masked multi-head attention that uses it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skuniad.nn.dropout import keep_mask


def attention_bias(allowed: torch.Tensor) -> torch.Tensor:
    """Additive logits bias for a boolean ``allowed`` mask: 0 where allowed, -inf elsewhere."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


def neighbor_mask(height: int, width: int, neighbor_size: int) -> torch.Tensor:
    """Which keys each query may attend to on a ``height x width`` token grid.

    UniAD hides, for every query position, the ``neighbor_size x neighbor_size``
    window centred on it (its own position included, clipped at the borders),
    so that a token cannot be rebuilt by copying itself or its neighbours.

    Parameters
    ----------
    height, width : int
        Token grid size (14 x 14 for a 224 px input at stride 16).
    neighbor_size : int
        Odd window size ``k`` (7 in the paper).

    Returns
    -------
    allowed : torch.Tensor of bool, shape (height * width, height * width)
        ``allowed[q, k]`` is True when query ``q`` may see key ``k``. Positions
        are flattened row-major. This is the boolean ``attn_mask`` convention
        of :func:`torch.nn.functional.scaled_dot_product_attention`.

    Raises
    ------
    ValueError
        If the window is not a positive odd integer or hides every key of some
        query (the softmax would have nothing to attend to).
    """
    if height < 1 or width < 1:
        raise ValueError(f"grid must be at least 1x1, got {height}x{width}")
    if neighbor_size < 1 or neighbor_size % 2 == 0:
        raise ValueError(f"neighbor_size must be a positive odd integer, got {neighbor_size}")
    half = neighbor_size // 2
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= half
    near_cols = (cols[:, None] - cols[None, :]).abs() <= half
    allowed = ~(near_rows & near_cols)
    if not bool(allowed.any(dim=1).all()):
        # the query at the centre sees a key only beyond max(height, width) // 2 rows or columns
        largest = 2 * (max(height, width) // 2) - 1
        fits = f"at most {largest}, " if largest >= 1 else ""
        raise ValueError(
            f"neighbor_size={neighbor_size} hides every key of some query on a "
            f"{height}x{width} grid; use a smaller window ({fits}odd) or neighbor_size=None"
        )
    return allowed


class MaskedMultiheadAttention(nn.Module):
    """Multi-head attention with a fixed boolean mask, batch first.

    Parameters are laid out exactly as :class:`torch.nn.MultiheadAttention`
    (``in_proj_weight`` stacks the query, key and value projections), which is
    also the reference UniAD checkpoint layout. Like it, dropout acts on the
    attention weights. The attention runs in
    :func:`torch.nn.functional.scaled_dot_product_attention`, except on CPUs
    in bf16 or with dropout, where plain baddbmm/softmax/bmm with
    :func:`keep_mask` is faster (see :func:`_cpu_attention`). The mask is
    passed in, never rebuilt here.

    Parameters
    ----------
    embed_dim : int
        Token width.
    num_heads : int
        Number of heads; must divide ``embed_dim``.
    dropout : float
        Dropout on the attention weights while training.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend ``query`` (B, Lq, E) to ``key``/``value`` (B, Lk, E).

        ``attn_bias`` (Lq, Lk) is added to the attention logits: 0 where a
        key may be seen, -inf where it is hidden. A ``query`` of batch size 1
        is shared by the whole batch and projected once.
        """
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        batch, length = key.shape[0], query.shape[1]
        heads = self.num_heads

        def split(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            heads_first = F.linear(x, w, b).view(x.shape[0], -1, heads, self.embed_dim // heads)
            return heads_first.transpose(1, 2).expand(batch, -1, -1, -1)

        q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and (dropout > 0 or q.dtype != torch.float32):
            out = _cpu_attention(q, k, v, attn_bias, dropout)
        else:
            if q.device.type != "cpu" and 0 in q.stride():
                # a shared query is an expand()ed view (batch stride 0): fused GPU kernels
                # have mishandled such strides in torch versions we allow, so give them a copy
                q = q.contiguous()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))


def _cpu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_bias: torch.Tensor | None,
    dropout: float,
) -> torch.Tensor:
    """Attention as baddbmm -> softmax -> dropout -> bmm, all in ``q``'s dtype.

    Used on CPUs for bf16 and whenever attention dropout is on: for UniAD's
    shapes (196 tokens, head dim 32) PyTorch's fused CPU kernel is slower in
    bf16, forward and backward, and its dropout falls back to a slow unfused
    path. In fp32 without dropout the two were close, each faster in one of
    two sessions' runs, and the fused kernel is kept there
    (benchmarks/attention_speed.py, docs/performance.md). The bias is cast to
    the compute dtype so a bf16 attention never round-trips through fp32.
    """
    batch, heads, length, head_dim = q.shape
    q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)
    scale = head_dim**-0.5
    if attn_bias is None:
        logits = torch.bmm(q, k.transpose(1, 2)) * scale
    else:
        bias = attn_bias.to(q.dtype).expand(q.shape[0], -1, -1)
        logits = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)
    weights = logits.softmax(dim=-1)
    if dropout == 0:
        return torch.bmm(weights, v).view(batch, heads, length, head_dim)
    out = torch.bmm(weights * keep_mask(weights, dropout), v)
    # dropout's 1 / (1 - p) on the product, a sixth the size of the weights here
    return out.mul_(1 / (1 - dropout)).view(batch, heads, length, head_dim)
