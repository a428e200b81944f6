import os
import socket
import subprocess
import sys
import time

import pytest
import timm
import torch

from skuniad.weights import (
    BackboneWeightsError,
    bundled_weights_path,
    cached_timm_weights,
    check_weights_available,
    create_timm_model,
    hub_reachable,
    load_state_dict_file,
    rename_lukemelas_efficientnet,
    timm_block_names,
    timm_weights_cached,
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


# --------------------------------------------------------------- no network: fail fast
TINY_TIMM = "test_efficientnet.r160_in1k"  # timm's own 82k-parameter test model


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """A hub that refuses connections (a closed local port) and empty caches."""
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    torch_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch"))
    yield tmp_path / "hf"
    torch.hub.set_dir(torch_hub)


def test_unreachable_hub_fails_at_once_without_building_the_model(no_hub, monkeypatch):
    built = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: built.append(a) or 1 / 0)
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsError) as info:
        create_timm_model("tf_efficientnet_b4.aa_in1k", "imagenet", features_only=True)
    assert time.perf_counter() - start < 2.0
    assert built == []
    message = str(info.value)
    assert "not in timm's local cache" in message and "http://127.0.0.1:9" in message
    assert "tf_efficientnet_lite0" in message and "backbone_weights=PATH" in message


def test_hf_hub_offline_set_after_import_is_honoured(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("connected"))
    assert hub_reachable() is False


def test_hub_probe_gives_up_after_its_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")

    def hang(*args, **kwargs):
        time.sleep(3)
        raise TimeoutError

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    assert hub_reachable(timeout=0.2) is False
    assert time.perf_counter() - start < 1.0


def test_hub_probe_connects_to_the_endpoint_or_the_proxy(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_reachable()
        # A proxy is where the first connection goes: here one that nothing serves.
        monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        assert not hub_reachable()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        assert hub_reachable()


def _cache_timm_weights(cache, name: str) -> dict:
    """Put weights for ``name`` in a Hugging Face cache laid out as the hub client does."""
    from safetensors.torch import save_file

    repo = cache / f"models--timm--{name}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    state = {
        k: torch.full_like(v, 0.25) if v.is_floating_point() else v
        for k, v in timm.create_model(name).state_dict().items()
    }
    save_file(state, str(snapshot / "model.safetensors"))
    return state


def test_cached_weights_load_without_a_network(no_hub):
    import huggingface_hub.constants

    offline_before = huggingface_hub.constants.HF_HUB_OFFLINE
    assert not timm_weights_cached(TINY_TIMM) and cached_timm_weights() == {}
    _cache_timm_weights(no_hub, TINY_TIMM)
    assert timm_weights_cached(TINY_TIMM)
    assert list(cached_timm_weights()) == [TINY_TIMM]
    start = time.perf_counter()
    model, state = create_timm_model(TINY_TIMM, "imagenet", features_only=True)
    assert time.perf_counter() - start < 2.0
    assert state is None  # timm loaded them itself
    assert torch.all(model.conv_stem.weight == 0.25)
    assert huggingface_hub.constants.HF_HUB_OFFLINE == offline_before  # restored


def test_weights_check_before_torch_is_imported(no_hub):
    probe = (
        "import sys\n"
        "from skuniad.weights import BackboneWeightsError, check_weights_available\n"
        "check_weights_available('tf_efficientnet_lite0', 'imagenet')\n"
        "check_weights_available('tf_efficientnet_b4', 'imagenet')  # untagged: timm decides\n"
        "check_weights_available('tf_efficientnet_b4.aa_in1k', None)\n"
        "try:\n"
        "    check_weights_available('tf_efficientnet_b4.aa_in1k', 'imagenet')\n"
        "except BackboneWeightsError as exc:\n"
        "    print('refused:', exc)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(no_hub)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "refused: no ImageNet weights found for backbone 'tf_efficientnet_b4.aa_in1k'" in (
        done.stdout
    )
    assert "torch imported: False" in done.stdout


def test_weights_check_passes_what_the_cache_holds(no_hub, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed"))
    snapshot = no_hub / "models--timm--tf_efficientnet_b4.aa_in1k" / "snapshots" / "0"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    check_weights_available("tf_efficientnet_b4.aa_in1k", "imagenet")
