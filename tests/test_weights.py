import pytest
import timm
import torch

from skuniad.weights import (
    BackboneWeightsError,
    bundled_weights_path,
    create_timm_model,
    load_state_dict_file,
    rename_lukemelas_efficientnet,
    timm_block_names,
)

# ImageNet indices: 281 tabby, 282 tiger cat, 285 Egyptian cat
CAT_CLASSES = {281, 282, 283, 284, 285}


def test_bundled_lite0_weights_classify_a_cat_photo():
    skimage_data = pytest.importorskip("skimage.data")
    model, state = create_timm_model("tf_efficientnet_lite0", "imagenet")
    model.load_state_dict(state)  # strict: every tensor, classifier included
    model.eval()
    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        probs = model((image - 0.5) / 0.5).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in CAT_CLASSES, f"top-1 class {top} is not a cat"
    assert float(probs[sorted(CAT_CLASSES)].sum()) > 0.5


def test_bundled_weights_only_for_lite_models():
    assert bundled_weights_path("tf_efficientnet_lite0") is not None
    assert bundled_weights_path("tf_efficientnet_lite0.in1k") is not None
    assert bundled_weights_path("tf_efficientnet_b4.aa_in1k") is None
    assert bundled_weights_path("resnet18") is None


def test_missing_weights_error_lists_the_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-skuniad-test")
    monkeypatch.setattr(timm, "create_model", _fail_pretrained(timm.create_model))
    with pytest.raises(BackboneWeightsError) as info:
        create_timm_model("resnet18", "imagenet", features_only=True)
    message = str(info.value)
    for option in ("tf_efficientnet_lite0", "backbone_weights=PATH", "backbone_weights=None"):
        assert option in message


def _fail_pretrained(create):
    def wrapped(name, pretrained=False, **kwargs):
        if pretrained:
            raise RuntimeError("hub unreachable")
        return create(name, pretrained=False, **kwargs)

    return wrapped


def test_lukemelas_names_round_trip_to_timm(tmp_path):
    model = timm.create_model("tf_efficientnet_b0")
    theirs = _to_lukemelas(model)
    renamed = rename_lukemelas_efficientnet(theirs, timm_block_names(model))
    assert renamed.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(renamed[key], value)
    path = tmp_path / "b0.pth"
    torch.save(theirs, path)
    loaded = load_state_dict_file(path, model)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def _to_lukemelas(model) -> dict:
    top = {
        "conv_stem": "_conv_stem",
        "bn1": "_bn0",
        "conv_head": "_conv_head",
        "bn2": "_bn1",
        "classifier": "_fc",
    }
    plain = {
        "conv_dw": "_depthwise_conv",
        "bn1": "_bn1",
        "conv_pw": "_project_conv",
        "bn2": "_bn2",
        "se.conv_reduce": "_se_reduce",
        "se.conv_expand": "_se_expand",
    }
    expanded = {
        "conv_pw": "_expand_conv",
        "bn1": "_bn0",
        "conv_dw": "_depthwise_conv",
        "bn2": "_bn1",
        "conv_pwl": "_project_conv",
        "bn3": "_bn2",
        "se.conv_reduce": "_se_reduce",
        "se.conv_expand": "_se_expand",
    }
    names = timm_block_names(model)
    out = {}
    for key, value in model.state_dict().items():
        head, _, rest = key.partition(".")
        if head in top:
            out[f"{top[head]}.{rest}"] = value
            continue
        prefix = ".".join(key.split(".")[:3])
        index = names.index(prefix)
        layer, param = key[len(prefix) + 1 :].rsplit(".", 1)
        table = expanded if f"{prefix}.conv_pwl.weight" in model.state_dict() else plain
        out[f"_blocks.{index}.{table[layer]}.{param}"] = value
    return out


def test_unreadable_weights_file_is_refused(tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a checkpoint")
    model = timm.create_model("tf_efficientnet_lite0")
    with pytest.raises(BackboneWeightsError, match="cannot read"):
        load_state_dict_file(bad, model)
    with pytest.raises(BackboneWeightsError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pth", model)
