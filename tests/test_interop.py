"""Reference checkpoints (import, export, round trip, refusal), static padding, ONNX."""

import copy
import dataclasses
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from reference_checkpoint import (
    B0_CHANNELS,
    DECODERS,
    ENCODERS,
    FFN,
    GRID,
    HEADS,
    HIDDEN,
    WINDOW,
    ReferenceReconstruction,
    fake_easydict,
    randomized,
    reference_arch,
    save_reference_checkpoint,
)
from sklearn.exceptions import NotFittedError

from skuniad import UniADDetector, interop
from skuniad.nn import UniADReconstruction
from skuniad.nn.padding import StaticSamePadConv2d
from skuniad.weights import timm_block_names


# ------------------------------------------------------------------ import
def test_loading_needs_no_easydict_and_reads_configs_as_dicts(reference):
    assert "easydict" not in sys.modules
    checkpoint = interop.read_reference_checkpoint(reference[0])
    assert "easydict" not in sys.modules
    assert [net["name"] for net in checkpoint.arch] == ["backbone", "neck", "reconstruction"]
    kwargs = checkpoint.arch[2]["kwargs"]
    assert type(kwargs) is dict and type(kwargs["neighbor_mask"]) is dict
    assert kwargs["neighbor_mask"]["neighbor_size"] == [WINDOW, WINDOW]
    assert checkpoint.epoch == 7


def test_hyper_parameters_come_from_the_arch(imported):
    p = imported.get_params()
    assert p["backbone"].startswith("tf_efficientnet_b0")
    assert p["out_indices"] == (0, 1, 2, 3) and p["image_size"] == GRID * 16
    assert (p["hidden_dim"], p["num_heads"], p["dim_feedforward"]) == (HIDDEN, HEADS, FFN)
    assert (p["num_encoder_layers"], p["num_decoder_layers"]) == (ENCODERS, DECODERS)
    assert (p["neighbor_size"], p["jitter_scale"], p["jitter_prob"]) == (WINDOW, 20.0, 1.0)
    assert p["static_padding_size"] == 224 and p["precision"] == "fp32"
    assert p["resize"] == "pil-uint8"
    assert imported.feature_shape_ == (B0_CHANNELS, GRID, GRID)
    assert imported.backbone_.mean == (0.485, 0.456, 0.406)
    assert imported.backbone_.std == (0.229, 0.224, 0.225)
    assert imported.n_epochs_ == 7 and imported.loss_curve_ == []


def test_every_tensor_lands_where_it_belongs(reference, imported):
    _, backbone, reconstruction = reference
    ours = imported.model_.state_dict()
    theirs = reconstruction.state_dict()
    expected = {
        "transformer.decoder.layers.1.learned_embed.weight": "decoder.1.layer_queries",
        "transformer.decoder.layers.0.multihead_attn.in_proj_weight": (
            "decoder.0.multihead_attn.in_proj_weight"
        ),
        "transformer.decoder.layers.1.linear2.bias": "decoder.1.ffn.linear2.bias",
        "transformer.decoder.layers.1.norm3.weight": "decoder.1.norm3.weight",
        "transformer.encoder.layers.0.linear1.weight": "encoder.0.ffn.linear1.weight",
        "transformer.encoder.layers.0.self_attn.out_proj.weight": (
            "encoder.0.self_attn.out_proj.weight"
        ),
        "transformer.decoder.norm.bias": "decoder_norm.bias",
        "pos_embed.row_embed.weight": "pos_embed.row_embed.weight",
        "input_proj.weight": "input_proj.weight",
    }
    for reference_name, our_name in expected.items():
        assert torch.equal(ours[our_name], theirs[reference_name]), reference_name
    # all of them: a bijection, every value where the mapping puts it
    mapped = interop.reconstruction_from_reference(theirs)
    assert set(mapped) == set(ours)
    assert all(torch.equal(ours[k], v) for k, v in mapped.items())
    body = imported.backbone_.body.state_dict()
    for reference_name, our_name in {
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.running_var": "bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
        "_blocks.0._se_reduce.bias": "blocks.0.0.se.conv_reduce.bias",
        "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
        "_blocks.1._bn0.weight": "blocks.1.0.bn1.weight",
        "_blocks.10._project_conv.weight": "blocks.4.2.conv_pwl.weight",
        "_blocks.10._bn2.running_mean": "blocks.4.2.bn3.running_mean",
    }.items():
        assert torch.equal(body[our_name], backbone[reference_name]), reference_name
    renamed = interop.backbone_from_reference(backbone, timm_block_names(imported.backbone_.body))
    assert set(renamed) == set(body)
    assert all(torch.equal(body[k], v) for k, v in renamed.items())


def test_imported_reconstruction_computes_what_the_reference_does(reference, imported):
    features = torch.randn(2, B0_CHANNELS, GRID, GRID, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference[2](features)
        actual = imported.model_(features)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_documented_b4_reconstruction_layout_loads_exactly():
    # the table of REFERENCE_CHECKPOINT.md: C = 272, 14 x 14 grid, hidden 256, FFN 1024, L = 4
    shapes = {
        "pos_embed.row_embed.weight": (14, 128),
        "pos_embed.col_embed.weight": (14, 128),
        "transformer.decoder.norm.weight": (256,),
        "transformer.decoder.norm.bias": (256,),
        "input_proj.weight": (256, 272),
        "input_proj.bias": (256,),
        "output_proj.weight": (272, 256),
        "output_proj.bias": (272,),
    }
    attention = {
        "in_proj_weight": (768, 256),
        "in_proj_bias": (768,),
        "out_proj.weight": (256, 256),
        "out_proj.bias": (256,),
    }
    ffn = {
        "linear1.weight": (1024, 256),
        "linear1.bias": (1024,),
        "linear2.weight": (256, 1024),
        "linear2.bias": (256,),
    }
    for i in range(4):
        for part, norms, attentions in (
            ("encoder", 2, ("self_attn",)),
            ("decoder", 3, ("self_attn", "multihead_attn")),
        ):
            prefix = f"transformer.{part}.layers.{i}."
            shapes.update({prefix + k: s for k, s in ffn.items()})
            shapes.update(
                {
                    f"{prefix}norm{n}.{w}": (256,)
                    for n in range(1, norms + 1)
                    for w in ("weight", "bias")
                }
            )
            for name in attentions:
                shapes.update({f"{prefix}{name}.{k}": s for k, s in attention.items()})
        shapes[f"transformer.decoder.layers.{i}.learned_embed.weight"] = (196, 256)
    state = {k: torch.randn(s) for k, s in shapes.items()}
    assert sum(t.numel() for t in state.values()) == 7_717_392
    model = UniADReconstruction(272, (14, 14))
    model.load_state_dict(interop.reconstruction_from_reference(state), strict=True)
    assert torch.equal(
        model.decoder[3].layer_queries, state["transformer.decoder.layers.3.learned_embed.weight"]
    )
    back = interop.reconstruction_to_reference(model.state_dict())
    assert set(back) == set(state)


# ------------------------------------------------------------- calibration
@pytest.mark.slow
def test_imported_model_needs_calibration_for_decisions(reference, reference_images, tmp_path):
    det = UniADDetector.from_reference_checkpoint(reference[0], device="cpu")
    scores = det.score_samples(reference_images)
    assert np.isfinite(scores).all() and det.anomaly_maps(reference_images).shape == (3, 50, 60)
    for call in (det.predict, det.decision_function, det.predict_masks):
        with pytest.raises(NotFittedError, match=r"calibrate\(X_normal\)"):
            call(reference_images)
    assert det.predict_masks(reference_images, threshold=1.0).shape == (3, 50, 60)
    det.save(tmp_path / "uncalibrated.skuniad")
    assert not hasattr(UniADDetector.load(tmp_path / "uncalibrated.skuniad"), "offset_")
    assert det.calibrate(reference_images) is det
    assert np.isfinite(det.offset_) and np.isfinite(det.pixel_threshold_)
    assert set(det.predict(reference_images)) <= {-1, 1}
    np.testing.assert_array_equal(det.score_samples(reference_images), scores)
    at_import = UniADDetector.from_reference_checkpoint(
        reference[0], device="cpu", calibration_images=reference_images
    )
    assert (at_import.offset_, at_import.pixel_threshold_) == (det.offset_, det.pixel_threshold_)


# ----------------------------------------------------------- preprocessing
def test_imported_model_reads_files_as_the_reference_does(tmp_path):
    import timm
    from PIL import Image

    # timm's initialisation (unit BatchNorm statistics) keeps the features sensitive to the
    # pixels, and a small output projection keeps the maps close to the features' norm
    with torch.random.fork_rng():
        torch.manual_seed(0)
        body = timm.create_model("tf_efficientnet_b0")
        reconstruction = randomized(ReferenceReconstruction(), seed=2).eval()
    with torch.no_grad():
        reconstruction.output_proj.weight.mul_(0.01)
        reconstruction.output_proj.bias.mul_(0.01)
    backbone = interop.backbone_to_reference(body.state_dict(), timm_block_names(body))
    state = {f"module.backbone.{k}": v for k, v in backbone.items()}
    state.update({f"module.reconstruction.{k}": v for k, v in reconstruction.state_dict().items()})
    save_reference_checkpoint(tmp_path / "ckpt.pth.tar", state)
    det = UniADDetector.from_reference_checkpoint(tmp_path / "ckpt.pth.tar", device="cpu")

    rng = np.random.default_rng(4)
    smooth = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    paths = []
    for name, image in (
        ("rgb.png", rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)),
        ("gray.png", rng.integers(0, 256, (70, 80), dtype=np.uint8)),
        # large enough for a reduced-scale JPEG decode in the float path
        ("photo.jpg", np.asarray(Image.fromarray(smooth).resize((200, 160)))),
    ):
        Image.fromarray(image).save(tmp_path / name, quality=90)
        paths.append(tmp_path / name)
    size = det.image_size
    # the reference: 8-bit RGB resized by Pillow's bilinear filter, then ToTensor and Normalize
    resized = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
            for p in paths
        ]
    )
    expected = det.anomaly_maps(resized, size="model")
    scale = float(expected.max())
    maps = det.anomaly_maps(paths, size="model")
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(det.score_samples(paths), det.score_samples(resized), rtol=1e-4)
    # resizing in float moves the maps of files well beyond that tolerance, not of 64-px arrays
    in_float = copy.deepcopy(det).set_params(resize="float")
    in_float.network_spec_ = dataclasses.replace(in_float.network_spec_, resize="float")
    np.testing.assert_array_equal(in_float.anomaly_maps(resized, size="model"), expected)
    assert np.abs(in_float.anomaly_maps(paths, size="model") - expected).max() > 1e-3 * scale


# -------------------------------------------------------------- round trip
def test_export_then_import_gives_identical_outputs(imported, reference_images, tmp_path):
    path = tmp_path / "exported.pth.tar"
    imported.export_reference_checkpoint(path)
    again = UniADDetector.from_reference_checkpoint(path, device="cpu")
    assert again.get_params() == imported.get_params()
    np.testing.assert_array_equal(
        again.score_samples(reference_images), imported.score_samples(reference_images)
    )
    np.testing.assert_array_equal(
        again.anomaly_maps(reference_images), imported.anomaly_maps(reference_images)
    )


def test_exported_checkpoint_has_the_reference_layout(reference, imported, tmp_path):
    path = tmp_path / "exported.pth.tar"
    imported.export_reference_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # plain dicts: no allow-list needed
    assert set(checkpoint) == {"epoch", "arch", "state_dict", "best_metric", "optimizer"}
    assert checkpoint["epoch"] == 7
    original = interop.read_reference_checkpoint(reference[0])
    assert checkpoint["arch"][2]["kwargs"] == {
        **original.arch[2]["kwargs"],
        "save_recon": False,
    }
    assert checkpoint["arch"][0]["kwargs"]["outblocks"] == [0, 2, 4, 10]
    assert checkpoint["arch"][1]["kwargs"] == original.arch[1]["kwargs"]
    state = checkpoint["state_dict"]
    reconstruction = {k for k in state if k.startswith("module.reconstruction.")}
    assert reconstruction == {f"module.reconstruction.{k}" for k in reference[2].state_dict()}
    backbone = {
        k.removeprefix("module.backbone.") for k in state if k.startswith("module.backbone.")
    }
    # the stages up to stride 16 (blocks 0...10 of B0); no later blocks, no head
    assert backbone <= set(reference[1]) and "_blocks.10._bn2.weight" in backbone
    assert not any(k.startswith(("_blocks.11.", "_conv_head", "_fc")) for k in backbone)
    assert all(torch.equal(state[f"module.backbone.{k}"], reference[1][k]) for k in backbone)


@pytest.mark.slow
def test_fitted_detector_round_trips_with_its_own_padding(
    tiny_params, reference_images, tmp_path, fitted_tiny
):
    params = {
        **tiny_params,
        "backbone": "tf_efficientnet_b0",
        "neighbor_size": WINDOW,
        "max_epochs": 1,
    }
    # the defaults build the reference's network: a fit round trips with the default import
    det = UniADDetector(**params, precision="fp32").fit(reference_images)
    assert det.static_padding_size == "auto" and det.resize == "pil-uint8"
    det.export_reference_checkpoint(tmp_path / "ckpt.pth.tar")
    again = UniADDetector.from_reference_checkpoint(tmp_path / "ckpt.pth.tar", device="cpu")
    assert again.static_padding_size == 224
    np.testing.assert_array_equal(
        again.anomaly_maps(reference_images), det.anomaly_maps(reference_images)
    )
    # timm's per-input padding round trips with reference_padding=False
    det = UniADDetector(**params, static_padding_size=None, precision="fp32").fit(reference_images)
    det.export_reference_checkpoint(tmp_path / "ckpt.pth.tar")
    again = UniADDetector.from_reference_checkpoint(
        tmp_path / "ckpt.pth.tar", device="cpu", reference_padding=False
    )
    assert again.static_padding_size is None
    np.testing.assert_array_equal(
        again.anomaly_maps(reference_images), det.anomaly_maps(reference_images)
    )
    with pytest.raises(ValueError, match="no reference checkpoint layout"):
        fitted_tiny[0].export_reference_checkpoint(tmp_path / "lite0.pth.tar")


# ----------------------------------------------------------------- refusal
class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def _write(kind: str, path, tmp_path, reference_path, fitted):
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "skuniad model":
        fitted.save(path)
    elif kind == "no arch":
        torch.save({"state_dict": {"module.backbone.x": torch.ones(1)}}, path)
    elif kind == "list":
        torch.save([torch.ones(1)], path)
    elif kind == "foreign tensors":
        torch.save({"arch": [], "state_dict": {"module.head.fc.weight": torch.ones(1)}}, path)
    elif kind == "no reconstruction":
        torch.save({"arch": [], "state_dict": {"module.backbone.x": torch.ones(1)}}, path)
    elif kind == "code":
        with open(path, "wb") as f:
            pickle.dump(
                {"arch": _Payload(str(tmp_path / "pwned")), "state_dict": {}}, f, protocol=2
            )
    elif kind == "truncated":
        path.write_bytes(reference_path.read_bytes()[:1000])


@pytest.mark.parametrize(
    "kind, message",
    [
        ("text", "UniAD reference checkpoint .* not a torch.save file"),
        ("skuniad model", "UniADDetector.load"),
        ("no arch", r"keys \['state_dict'\]"),
        ("list", "it holds list"),
        ("foreign tensors", "unexpected tensor 'module.head.fc.weight'"),
        ("no reconstruction", "no 'module.reconstruction"),
        ("code", "never unpickled"),
        ("truncated", "UniAD reference checkpoint"),
    ],
)
def test_files_that_are_not_reference_checkpoints_are_refused(
    kind, message, tmp_path, reference, fitted_tiny
):
    path = tmp_path / "file.pth.tar"
    _write(kind, path, tmp_path, reference[0], fitted_tiny[0])
    with pytest.raises(ValueError, match=message):
        UniADDetector.from_reference_checkpoint(path, device="cpu")
    assert not (tmp_path / "pwned").exists()


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        UniADDetector.from_reference_checkpoint(tmp_path / "nope.pth.tar")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"pos_embed_type": "sine"}, "pos_embed_type='sine'"),
        ({"normalize_before": True}, "normalize_before=True"),
        (
            {"neighbor_mask": {"neighbor_size": [3, 3], "mask": [True, False, True]}},
            "some attentions",
        ),
        ({"neighbor_mask": {"neighbor_size": [3, 5], "mask": [True] * 3}}, "odd square"),
        ({"hidden_dim": None}, "lacks reconstruction.kwargs.hidden_dim"),
        ({"num_decoder_layers": 1}, "unexpected tensors"),
    ],
)
def test_unsupported_or_inconsistent_arch_is_refused(changes, message, reference, tmp_path):
    state = interop.read_reference_checkpoint(reference[0])
    tensors = {f"module.backbone.{k}": v for k, v in state.backbone.items()}
    tensors.update({f"module.reconstruction.{k}": v for k, v in state.reconstruction.items()})
    save_reference_checkpoint(tmp_path / "ckpt.pth.tar", tensors, **changes)
    with pytest.raises(ValueError, match=message):
        UniADDetector.from_reference_checkpoint(tmp_path / "ckpt.pth.tar", device="cpu")


def test_arch_without_mask_or_jitter_disables_them():
    with fake_easydict() as EasyDict:
        arch = interop.reference._plain(
            reference_arch(EasyDict, neighbor_mask=None, feature_jitter=None)
        )
    params, native = interop.detector_params(arch)
    assert params["neighbor_size"] is None and params["jitter_prob"] == 0.0 and native == 224


# ---------------------------------------------------------- static padding
def test_static_padding_survives_save_and_pickle(imported, reference_images, tmp_path):
    imported.save(tmp_path / "model.skuniad")
    loaded = UniADDetector.load(tmp_path / "model.skuniad", device="cpu")
    assert loaded.static_padding_size == 224 and loaded.resize == "pil-uint8"
    assert any(isinstance(m, StaticSamePadConv2d) for m in loaded.backbone_.modules())
    np.testing.assert_array_equal(
        loaded.anomaly_maps(reference_images), imported.anomaly_maps(reference_images)
    )
    clone = pickle.loads(pickle.dumps(imported))
    np.testing.assert_array_equal(
        clone.score_samples(reference_images), imported.score_samples(reference_images)
    )


# ------------------------------------------------------------------- ONNX
def test_onnx_graph_matches_pytorch(imported, reference_images, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from skuniad.io import iter_batches

    path = tmp_path / "uniad.onnx"
    imported.export_onnx(path)
    graph = onnx.load(str(path))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    batch, _ = next(
        iter_batches(reference_images, 64, imported.backbone_.mean, imported.backbone_.std, 8)
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps, scores = session.run(None, {"images": batch.numpy()})  # batch of 3; exported with 2
    expected_maps = imported.anomaly_maps(reference_images, size="model")
    # fp32 on both sides; different kernels (fused attention, conv algorithms)
    scale = float(np.abs(expected_maps).max())
    np.testing.assert_allclose(maps, expected_maps, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(
        scores, -imported.score_samples(reference_images), rtol=1e-4, atol=1e-4 * scale
    )
