"""UniAD's reconstruction network: encoder, layer-wise-query decoder, scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skuniad._choices import IMAGE_SCORES, LAYER_QUERIES
from skuniad.nn.attention import MaskedMultiheadAttention, attention_bias, neighbor_mask
from skuniad.nn.dropout import dropout_add, keep_mask
from skuniad.nn.jitter import feature_jitter


class PositionEmbedding2d(nn.Module):
    """Learned, factorised 2-D position embedding (column half, row half)."""

    def __init__(self, height: int, width: int, dim: int) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(height, dim // 2)
        self.col_embed = nn.Embedding(width, dim - dim // 2)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self) -> torch.Tensor:
        """Return the (height * width, dim) table, positions row-major."""
        height, width = self.row_embed.num_embeddings, self.col_embed.num_embeddings
        cols = self.col_embed.weight.unsqueeze(0).expand(height, -1, -1)
        rows = self.row_embed.weight.unsqueeze(1).expand(-1, width, -1)
        return torch.cat([cols, rows], dim=-1).flatten(0, 1)


class FeedForward(nn.Module):
    """Linear, ReLU, dropout, linear (named as in the reference).

    The dropout's ``1 / (1 - p)`` is folded into ``linear2``'s weight for the
    step instead of being a pass over the hidden activations. The dropout
    after ``linear2`` belongs to the residual add of the calling layer.
    """

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.linear1(x)
        weight = self.linear2.weight
        if self.training and self.dropout > 0:
            # masking before the ReLU is the same as after it (mask >= 0)
            hidden = hidden.mul_(keep_mask(hidden, self.dropout))
            weight = weight * (1 / (1 - self.dropout))
        return F.linear(F.relu_(hidden), weight, self.linear2.bias)


class _PostNormLayer(nn.Module):
    """Residual add with dropout on the added branch, shared by both layer kinds."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.dropout = dropout

    def _add(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return dropout_add(residual, x, self.dropout, self.training)


class EncoderLayer(_PostNormLayer):
    """Masked self-attention then FFN, each followed by add & LayerNorm."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__(dropout)
        self.self_attn = MaskedMultiheadAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None):
        q = x + pos
        x = self.norm1(self._add(x, self.self_attn(q, q, x, mask)))
        return self.norm2(self._add(x, self.ffn(x)))


class DecoderLayer(_PostNormLayer):
    """Layer-wise-query decoder layer.

    Each layer starts from its own learned queries (``layer_queries``):
    attention 1 reads the encoder output, attention 2 reads the previous
    decoder layer's output (the encoder output for the first layer).
    ``own_queries=False`` (the paper's ablations) drops the table: the layer
    starts from the previous layer's output instead, as in a plain
    transformer decoder whose target flows from layer to layer.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float,
        own_queries: bool = True,
    ) -> None:
        super().__init__(dropout)
        queries = nn.Parameter(torch.empty(num_tokens, dim)) if own_queries else None
        self.register_parameter("layer_queries", queries)
        self.self_attn = MaskedMultiheadAttention(dim, num_heads, dropout)
        self.multihead_attn = MaskedMultiheadAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        memory: torch.Tensor,
        previous: torch.Tensor,
        pos: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.layer_queries is None:
            queries = previous
        else:  # the same for every image: attention 1 projects them once per batch
            queries = self.layer_queries.to(memory.dtype).unsqueeze(0)
        x = self.norm1(
            self._add(queries, self.self_attn(queries + pos, memory + pos, memory, mask))
        )
        x = self.norm2(self._add(x, self.multihead_attn(x + pos, previous + pos, previous, mask)))
        return self.norm3(self._add(x, self.ffn(x)))


class UniADReconstruction(nn.Module):
    """The trainable part of UniAD: rebuilds feature tokens from a masked view.

    Parameters
    ----------
    in_channels : int
        Feature channels ``C`` of the aligned backbone map.
    grid_size : tuple of int
        Token grid ``(h, w)`` (14 x 14 for 224 px input).
    hidden_dim, num_heads, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout
        Transformer shape; defaults are the paper's.
    neighbor_size : int or None
        Window of the neighbor mask; None disables masking.
    jitter_scale, jitter_prob : float
        Feature jittering, applied in training mode only.
    layer_queries : {"every", "first", "none"}
        Which decoder layers own a learned query table: every layer (the
        paper's layer-wise queries), the first only, or none (the decoder
        then starts from the encoder output). The last two are the paper's
        ablations.

    Notes
    -----
    Input and output are feature maps ``(B, C, h, w)``. The neighbor mask is a
    buffer built once here, with its additive form ``attn_bias``. With
    ``in_channels=272`` on 14 x 14 and the defaults the module has 7,717,392
    parameters, as the reference.
    """

    def __init__(
        self,
        in_channels: int,
        grid_size: tuple[int, int] = (14, 14),
        *,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        neighbor_size: int | None = 7,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        layer_queries: str = "every",
    ) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if layer_queries not in LAYER_QUERIES:
            raise ValueError(f"layer_queries must be one of {LAYER_QUERIES}, got {layer_queries!r}")
        height, width = grid_size
        self.grid_size = (height, width)
        self.jitter_scale = jitter_scale
        self.jitter_prob = jitter_prob
        mask = None if neighbor_size is None else neighbor_mask(height, width, neighbor_size)
        self.register_buffer("neighbor_mask", mask, persistent=False)
        bias = None if mask is None else attention_bias(mask)
        self.register_buffer("attn_bias", bias, persistent=False)
        self.input_proj = nn.Linear(in_channels, hidden_dim)
        self.pos_embed = PositionEmbedding2d(height, width, hidden_dim)
        self.encoder = nn.ModuleList(
            EncoderLayer(hidden_dim, num_heads, dim_feedforward, dropout)
            for _ in range(num_encoder_layers)
        )
        owners = {"every": num_decoder_layers, "first": 1, "none": 0}[layer_queries]
        self.decoder = nn.ModuleList(
            DecoderLayer(
                hidden_dim, height * width, num_heads, dim_feedforward, dropout, i < owners
            )
            for i in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, in_channels)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, MaskedMultiheadAttention):
                nn.init.xavier_uniform_(module.in_proj_weight)
                nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, DecoderLayer) and module.layer_queries is not None:
                nn.init.normal_(module.layer_queries)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``features`` (B, C, h, w); jitter the input when training."""
        batch, channels, height, width = features.shape
        if (height, width) != self.grid_size:
            raise ValueError(
                f"feature grid {height}x{width} does not match the model's "
                f"{self.grid_size[0]}x{self.grid_size[1]}"
            )
        # one memory layout whatever the input's (channels_last from the backbone,
        # contiguous from the cache), so that both give the same bf16 results
        tokens = features.flatten(2).transpose(1, 2).contiguous()
        if self.training:
            tokens = feature_jitter(tokens, self.jitter_scale, self.jitter_prob)
        x = self.input_proj(tokens)
        # Under CPU autocast x is bf16: keep the whole token stream in it, so that
        # residual adds and LayerNorms do not bounce activations through fp32.
        # (CUDA autocast runs LayerNorm in fp32 whatever its input: there the
        # stream is fp32 after the first norm and only the matmuls run in bf16.)
        pos = self.pos_embed().to(x.dtype).unsqueeze(0)
        mask = self.attn_bias
        memory = x
        for layer in self.encoder:
            memory = layer(memory, pos, mask)
        out = memory
        for layer in self.decoder:
            out = layer(memory, out, pos, mask)
        out = self.output_proj(self.decoder_norm(out))
        return out.transpose(1, 2).reshape(batch, channels, height, width)


def anomaly_map(
    features: torch.Tensor, reconstruction: torch.Tensor, size: int | tuple[int, int] | None
) -> torch.Tensor:
    """Per-location reconstruction error, higher = more anomalous.

    The L2 norm over channels of ``reconstruction - features`` (B, C, h, w),
    upsampled bilinearly (``align_corners=True``) to ``size`` when given.
    Returns (B, H, W).
    """
    error = (reconstruction.float() - features.float()).pow(2).sum(dim=1).sqrt()
    return error if size is None else upsample_map(error, size)


def upsample_map(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(B, h, w) token-grid maps to (B, *size), bilinear with aligned corners as the reference."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


def image_score(maps: torch.Tensor, window: int = 16, method: str = "max") -> torch.Tensor:
    """Image anomaly score of (B, H, W) maps at model resolution, higher = more anomalous.

    ``method`` is one of the reference evaluation's three: ``"max"`` (UniAD's
    MVTec score: max of the ``window`` x ``window`` average-pooled map, stride
    1, no padding; maps smaller than the window are pooled over their whole
    extent), ``"mean"`` (its CIFAR-10 score) or ``"std"`` (population standard
    deviation of the map).
    """
    if method == "mean":
        return maps.flatten(1).mean(dim=1)
    if method == "std":
        return maps.flatten(1).std(dim=1, correction=0)
    if method != "max":
        raise ValueError(f"method must be one of {IMAGE_SCORES}, got {method!r}")
    height, width = maps.shape[-2:]
    # the box filter is separable: two 1-D passes instead of one 2-D window
    pooled = F.avg_pool2d(maps.unsqueeze(1), kernel_size=(min(window, height), 1), stride=1)
    pooled = F.avg_pool2d(pooled, kernel_size=(1, min(window, width)), stride=1)
    return pooled.flatten(1).amax(dim=1)
