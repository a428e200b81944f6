"""A reference-style UniAD training/inference path, for side-by-side timing only.

It mirrors how the authors' code runs the same model: the frozen backbone
recomputed on every step (full timm ``features_only`` network, fp32, not cut
after the last needed stage), ``nn.MultiheadAttention`` on sequence-first
tensors with a float mask rebuilt with Python loops on every forward, fp32
throughout. Same shapes and parameter count as :class:`UniADReconstruction`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def loop_mask(height: int, width: int, k: int) -> torch.Tensor:
    """The reference's per-forward mask construction (Python loops, float -inf/0)."""
    mask = torch.ones(height * width, height, width)
    for i in range(height):
        for j in range(width):
            mask[
                i * width + j,
                max(i - k // 2, 0) : i + k // 2 + 1,
                max(j - k // 2, 0) : j + k // 2 + 1,
            ] = 0
    mask = mask.view(height * width, height * width)
    return mask.float().masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, 0.0)


class _Encoder(nn.Module):
    def __init__(self, d, heads, ff, p):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=p)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop, self.drop1, self.drop2 = nn.Dropout(p), nn.Dropout(p), nn.Dropout(p)

    def forward(self, x, pos, mask):
        q = x + pos
        x = self.norm1(x + self.drop1(self.self_attn(q, q, x, attn_mask=mask)[0]))
        return self.norm2(x + self.drop2(self.linear2(self.drop(F.relu(self.linear1(x))))))


class _Decoder(nn.Module):
    def __init__(self, d, n, heads, ff, p):
        super().__init__()
        self.learned_embed = nn.Embedding(n, d)
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=p)
        self.multihead_attn = nn.MultiheadAttention(d, heads, dropout=p)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drops = nn.ModuleList(nn.Dropout(p) for _ in range(4))

    def forward(self, out, memory, pos, mask):
        tgt = self.learned_embed.weight.unsqueeze(1).repeat(1, memory.shape[1], 1)
        a = self.self_attn(tgt + pos, memory + pos, memory, attn_mask=mask)[0]
        tgt = self.norm1(tgt + self.drops[0](a))
        a = self.multihead_attn(tgt + pos, out + pos, out, attn_mask=mask)[0]
        tgt = self.norm2(tgt + self.drops[1](a))
        ffn = self.linear2(self.drops[2](F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.drops[3](ffn))


class ReferenceStyleUniAD(nn.Module):
    """Backbone + reconstruction, recomputed every call, as the reference trains."""

    def __init__(self, backbone: str, channels: int, grid=(14, 14), k=7, jitter=20.0):
        super().__init__()
        import timm

        self.backbone = timm.create_model(backbone, features_only=True, out_indices=(0, 1, 2, 3))
        self.backbone.eval().requires_grad_(False)
        self.grid, self.k, self.jitter = grid, k, jitter
        d, n = 256, grid[0] * grid[1]
        self.input_proj, self.output_proj = nn.Linear(channels, d), nn.Linear(d, channels)
        self.row_embed, self.col_embed = nn.Embedding(grid[0], 128), nn.Embedding(grid[1], 128)
        self.encoder = nn.ModuleList(_Encoder(d, 8, 1024, 0.1) for _ in range(4))
        self.decoder = nn.ModuleList(_Decoder(d, n, 8, 1024, 0.1) for _ in range(4))
        self.norm = nn.LayerNorm(d)

    def features(self, images):
        with torch.no_grad():
            stages = self.backbone(images)
            size = stages[-1].shape[-2:]
            return torch.cat(
                [F.interpolate(s, size=size, mode="bilinear", align_corners=True) for s in stages],
                dim=1,
            )

    def forward(self, images):
        feats = self.features(images)
        b, c, h, w = feats.shape
        tokens = feats.flatten(2).permute(2, 0, 1)  # (hw, b, c) as the reference
        if self.training:
            norms = tokens.norm(dim=2, keepdim=True) / c
            tokens = tokens + torch.randn_like(tokens) * norms * self.jitter
        pos = torch.cat(
            [
                self.col_embed.weight.unsqueeze(0).repeat(h, 1, 1),
                self.row_embed.weight.unsqueeze(1).repeat(1, w, 1),
            ],
            -1,
        ).flatten(0, 1)
        pos = pos.unsqueeze(1)
        mask = loop_mask(h, w, self.k).to(feats.device)  # the reference's .cuda()
        x = self.input_proj(tokens)
        memory = x
        for layer in self.encoder:
            memory = layer(memory, pos, mask)
        out = memory
        for layer in self.decoder:
            out = layer(out, memory, pos, mask)
        rec = self.output_proj(self.norm(out)).permute(1, 2, 0).view(b, c, h, w)
        return feats, rec
