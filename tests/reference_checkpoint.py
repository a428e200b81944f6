"""A synthetic checkpoint in the UniAD reference's format, written independently of skuniad.

Shared by ``test_interop.py`` and ``cli/test_cli_interop.py``; the fixtures that
build one (``reference``, ``imported``) are in ``conftest.py``.
"""

import contextlib
import sys
import types
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from skuniad import interop
from skuniad.weights import timm_block_names

GRID = 4  # 64 px at stride 16
HIDDEN, HEADS, FFN, ENCODERS, DECODERS, WINDOW = 32, 2, 64, 1, 2, 3
B0_CHANNELS = 16 + 24 + 40 + 112


@contextlib.contextmanager
def fake_easydict():
    """A module ``easydict`` whose ``EasyDict`` behaves (and pickles) like the real one."""

    class EasyDict(dict):
        def __init__(self, d=None, **kwargs):
            for key, value in {**(d or {}), **kwargs}.items():
                setattr(self, key, value)

        def __setattr__(self, name, value):
            if isinstance(value, (list, tuple)):
                value = type(value)(EasyDict(x) if isinstance(x, dict) else x for x in value)
            elif isinstance(value, dict) and not isinstance(value, EasyDict):
                value = EasyDict(value)
            super().__setattr__(name, value)
            super().__setitem__(name, value)

        __setitem__ = __setattr__

    module = types.ModuleType("easydict")
    EasyDict.__module__, EasyDict.__qualname__ = "easydict", "EasyDict"
    module.EasyDict = EasyDict
    sys.modules["easydict"] = module
    try:
        yield EasyDict
    finally:
        del sys.modules["easydict"]


def reference_arch(EasyDict, **reconstruction):
    """The arch the reference saves for b0, 64 px, after update_config and ModelHelper."""
    kwargs = dict(
        pos_embed_type="learned",
        hidden_dim=HIDDEN,
        nhead=HEADS,
        num_encoder_layers=ENCODERS,
        num_decoder_layers=DECODERS,
        dim_feedforward=FFN,
        dropout=0.1,
        activation="relu",
        normalize_before=False,
        feature_jitter={"scale": 20.0, "prob": 1.0},
        neighbor_mask={"neighbor_size": [WINDOW, WINDOW], "mask": [True, True, True]},
        save_recon={"save_dir": "result_recon"},
        initializer={"method": "xavier_uniform"},
        inplanes=[B0_CHANNELS],
        instrides=[16],
        feature_size=[GRID, GRID],
    )
    kwargs.update(reconstruction)
    return [
        EasyDict(
            name="backbone",
            type="models.backbones.efficientnet_b0",
            frozen=True,
            kwargs={"pretrained": True, "outblocks": [0, 2, 4, 10], "outstrides": [2, 4, 8, 16]},
        ),
        EasyDict(
            name="neck",
            prev="backbone",
            type="models.necks.MFCN",
            kwargs={
                "outstrides": [16],
                "outplanes": [B0_CHANNELS],
                "inplanes": [16, 24, 40, 112],
                "instrides": [2, 4, 8, 16],
            },
        ),
        EasyDict(
            name="reconstruction", prev="neck", type="models.reconstructions.UniAD", kwargs=kwargs
        ),
    ]


class _RefEncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(HIDDEN, HEADS)
        self.linear1, self.linear2 = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)
        self.norm1, self.norm2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)

    def forward(self, src, mask, pos):
        q = k = src + pos
        src = self.norm1(src + self.self_attn(q, k, value=src, attn_mask=mask)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class _RefDecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.learned_embed = nn.Embedding(GRID * GRID, HIDDEN)
        self.self_attn = nn.MultiheadAttention(HIDDEN, HEADS)
        self.multihead_attn = nn.MultiheadAttention(HIDDEN, HEADS)
        self.linear1, self.linear2 = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)
        self.norm1, self.norm2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
        self.norm3 = nn.LayerNorm(HIDDEN)

    def forward(self, out, memory, mask, pos):
        tgt = self.learned_embed.weight.unsqueeze(1).repeat(1, memory.shape[1], 1)
        tgt2 = self.self_attn(tgt + pos, memory + pos, value=memory, attn_mask=mask)[0]
        tgt = self.norm1(tgt + tgt2)
        tgt2 = self.multihead_attn(tgt + pos, out + pos, value=out, attn_mask=mask)[0]
        tgt = self.norm2(tgt + tgt2)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class ReferenceReconstruction(nn.Module):
    """The reference's UniAD reconstruction at inference, with its module names.

    Written from the authors' ``models/reconstructions/uniad.py`` (post-norm,
    sequence-first ``nn.MultiheadAttention``, float -inf mask), independently
    of skuniad's modules.
    """

    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Module()
        self.pos_embed.row_embed = nn.Embedding(GRID, HIDDEN // 2)
        self.pos_embed.col_embed = nn.Embedding(GRID, HIDDEN // 2)
        self.transformer = nn.Module()
        self.transformer.encoder = nn.Module()
        self.transformer.encoder.layers = nn.ModuleList(_RefEncoderLayer() for _ in range(ENCODERS))
        self.transformer.decoder = nn.Module()
        self.transformer.decoder.layers = nn.ModuleList(_RefDecoderLayer() for _ in range(DECODERS))
        self.transformer.decoder.norm = nn.LayerNorm(HIDDEN)
        self.input_proj = nn.Linear(B0_CHANNELS, HIDDEN)
        self.output_proj = nn.Linear(HIDDEN, B0_CHANNELS)

    def forward(self, feature_align):
        b, c, h, w = feature_align.shape
        tokens = self.input_proj(feature_align.flatten(2).permute(2, 0, 1))
        x_emb, y_emb = self.pos_embed.col_embed.weight, self.pos_embed.row_embed.weight
        pos = torch.cat(
            [x_emb.unsqueeze(0).repeat(h, 1, 1), y_emb.unsqueeze(1).repeat(1, w, 1)], dim=-1
        ).flatten(0, 1)
        pos = pos.unsqueeze(1).repeat(1, b, 1)
        mask = torch.ones(h, w, h, w)
        for i in range(h):
            for j in range(w):
                mask[
                    i,
                    j,
                    max(i - WINDOW // 2, 0) : i + WINDOW // 2 + 1,
                    max(j - WINDOW // 2, 0) : j + WINDOW // 2 + 1,
                ] = 0
        mask = mask.view(h * w, h * w)
        mask = mask.masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, 0.0)
        memory = tokens
        for layer in self.transformer.encoder.layers:
            memory = layer(memory, mask, pos)
        out = memory
        for layer in self.transformer.decoder.layers:
            out = layer(out, memory, mask, pos)
        out = self.output_proj(self.transformer.decoder.norm(out))
        return out.permute(1, 2, 0).reshape(b, c, h, w)


def randomized(module: nn.Module, seed: int) -> nn.Module:
    """Every floating tensor random (variances positive), so misplaced weights show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(values + 0.5 if name.endswith("running_var") else values - 0.5)
    return module


def lukemelas_b0_state() -> dict:
    """A whole lukemelas EfficientNet-B0 state dict (head included), random values."""
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = randomized(timm.create_model("tf_efficientnet_b0"), seed=1)
    return interop.backbone_to_reference(model.state_dict(), timm_block_names(model))


def save_reference_checkpoint(path, state_dict, **arch_changes):
    with fake_easydict() as EasyDict:
        checkpoint = {
            "epoch": 7,
            "arch": reference_arch(EasyDict, **arch_changes),
            "state_dict": OrderedDict(state_dict),
            "best_metric": 0.93,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999)}]},
        }
        torch.save(checkpoint, path)
