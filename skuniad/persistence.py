"""Safe save / load of a fitted detector, and its pickle state.

A model file (``.skuniad`` by convention) is ONE safetensors file:

- tensors: the frozen backbone's state dict under ``backbone.`` and the
  reconstruction network's under ``model.``, all CPU and contiguous;
- safetensors metadata: one key, ``"skuniad"``, holding a JSON object::

      {"format": "skuniad", "format_version": 2,
       "params": {...get_params(), JSON-safe...},
       "fitted": {"offset_", "pixel_threshold_", "n_epochs_", "loss_curve_",
                  "feature_shape_", "group_thresholds"},
       "backbone": {"mean": [...], "std": [...]},
       "versions": {"skuniad", "torch", "timm"}}

``offset_`` and ``pixel_threshold_`` are null in a model not calibrated yet
(imported from a reference checkpoint). ``group_thresholds`` (format 2) is a
list of ``[group, image_threshold, pixel_threshold]``, the group a JSON
string or integer, as set by ``groups=``; empty without groups. Format 1
files have none and load with empty group tables.

The metadata's ``"sha256"`` entry holds :func:`content_digest` of the rest of
the metadata (as sorted-key JSON) and of the tensors; a file whose digest no
longer matches (damaged, or edited without recomputing it) is refused. Files written before
digests have none and load as before: the digest finds damage and careless
edits, it does not authenticate the author.

Reading uses safetensors and ``json`` only, so a file never runs code when
loaded. The backbone is rebuilt with random weights (no network, no weights
search) and then gets the saved tensors, so a model file is self-contained.
Files of format versions 1 to :data:`FORMAT_VERSION` load; parameters a
file lacks (added to skuniad after it was written) take their defaults, except
those in :data:`LEGACY_DEFAULTS`, which take the behaviour the file was
fitted with.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import uuid
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from skuniad._model_checks import check_fitted, check_tensors
from skuniad._spec import CHECKPOINT_SETTINGS, NetworkSpec, check_params, json_safe_params
from skuniad._thresholds import ThresholdTable
from skuniad.errors import ModelFileError

FORMAT = "skuniad"
# 2: per-group thresholds; an older reader would silently apply the pooled ones instead
FORMAT_VERSION = 2
METADATA_KEY = "skuniad"
DIGEST_KEY = "sha256"
"""Header key of the SHA-256 of the metadata and every tensor; files from before it have none."""
LEGACY_DEFAULTS = {"resize": "float", "static_padding_size": None}
"""Parameters whose default changed when they were added: their value for older files."""
RUNTIME_PARAMS = frozenset({"compile", *CHECKPOINT_SETTINGS})
"""Parameters of how one process runs, not of the model (compiling, where its checkpoint
goes): not written to a file, ignored in older files; a loaded model takes the defaults."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds.

    The file is flushed to disk before ``os.replace``, so ``path`` holds
    either its old content or the complete new one, never a partial write.
    On any failure (KeyboardInterrupt included) the temporary file is removed.
    Temporary files of earlier writes to ``path`` that a killed process left
    are reported with a warning, never deleted: one may be the only complete
    copy of its content.
    """
    path = Path(path)
    leftovers = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    if leftovers:
        warnings.warn(
            f"{len(leftovers)} temporary file(s) of an interrupted earlier write to {path} "
            f"remain ({', '.join(p.name for p in leftovers)}): each may hold a complete copy; "
            "keep or delete them yourself",
            UserWarning,
            stacklevel=3,
        )
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# a finished fit's checkpoint, kept until its model file is written: detector -> path.
# Keyed by the object itself, so copies (pickles, clones) never delete the run's checkpoint.
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def keep_until_saved(detector, checkpoint) -> None:
    """Remember the ``checkpoint`` that ``detector``'s finished fit leaves (None: forget)."""
    if checkpoint is None:
        _KEPT.pop(detector, None)
    else:
        _KEPT[detector] = checkpoint


def release_after_save(detector) -> None:
    """``detector``'s model file is written: delete the checkpoint its fit kept, if any."""
    checkpoint = _KEPT.pop(detector, None)
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)


def available_device(device: torch.device) -> torch.device:
    """``device`` if this machine has it, else the CPU (a GPU-fitted model on a CPU-only host)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if (device.index or 0) >= torch.cuda.device_count():
            return torch.device("cuda")
    return device


def module_tensors(detector) -> dict[str, torch.Tensor]:
    """The fitted networks' state dicts, prefixed ``backbone.`` / ``model.``, as CPU tensors."""
    tensors = {}
    for prefix, module in (("backbone", detector.backbone_), ("model", detector.model_)):
        for name, value in module.state_dict().items():
            tensors[f"{prefix}.{name}"] = value.detach().cpu().contiguous()
    return tensors


def restore_modules(
    detector,
    tensors: dict[str, torch.Tensor],
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> None:
    """Rebuild ``backbone_`` and ``model_`` from ``network_spec_`` and load ``tensors`` strictly.

    Needs ``network_spec_`` and ``feature_shape_``; sets ``backbone_``, ``model_`` and
    ``device_``.
    The global torch RNG is left untouched by the throwaway initialisation.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "model": {}}
    for key, value in tensors.items():
        prefix, _, name = key.partition(".")
        if prefix not in parts:
            raise ValueError(f"unexpected tensor {key!r}: names start with 'backbone.' or 'model.'")
        parts[prefix][name] = value
    with torch.random.fork_rng(devices=[]):
        backbone = detector.network_spec_.build_backbone(weights=None)
        model = detector.network_spec_.build_model(
            detector.feature_shape_,
            dropout=detector.dropout,
            jitter_scale=detector.jitter_scale,
            jitter_prob=detector.jitter_prob,
        )
    for prefix, module in (("backbone", backbone), ("model", model)):
        try:
            module.load_state_dict(parts[prefix], strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"the saved {prefix} tensors do not fit the saved parameters: {exc}"
            ) from None
    backbone.mean, backbone.std = tuple(mean), tuple(std)
    detector.backbone_ = backbone.to(device).to(memory_format=torch.channels_last)
    detector.model_ = model.to(device).eval()
    detector.device_ = device


def save_detector(detector, path: str | os.PathLike) -> None:
    """Write a fitted ``detector`` to ``path`` atomically (see the module docstring)."""
    import timm

    import skuniad

    thresholds = getattr(detector, "thresholds_", None)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        # the networks' parameters as fitted, whatever set_params changed since
        "params": {
            **{
                name: value
                for name, value in json_safe_params(detector.get_params()).items()
                if name not in RUNTIME_PARAMS
            },
            **detector.network_spec_.as_params(),
        },
        "fitted": {
            # None: not calibrated yet (a model imported from a reference checkpoint)
            **_UNCALIBRATED,
            **(thresholds.to_metadata() if thresholds is not None else {}),
            "n_epochs_": int(detector.n_epochs_),
            "loss_curve_": [float(v) for v in detector.loss_curve_],
            "feature_shape_": [int(v) for v in detector.feature_shape_],
        },
        "backbone": {"mean": list(detector.backbone_.mean), "std": list(detector.backbone_.std)},
        "versions": {
            "skuniad": skuniad.__version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
    }
    tensors = module_tensors(detector)
    # inside the one metadata entry: safetensors writes several in a random order, and the
    # same model must give the same bytes
    digest = content_digest(json.dumps(metadata, sort_keys=True), tensors)
    header = {METADATA_KEY: json.dumps({**metadata, DIGEST_KEY: digest}, sort_keys=True)}
    with atomic_write(path) as temporary:
        save_file(tensors, temporary, metadata=header)
    release_after_save(detector)  # the finished training's checkpoint, kept until now


def load_detector(cls, path: str | os.PathLike, device: torch.device):
    """Read a file written by :func:`save_detector`; the networks go to ``device``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    metadata, tensors, digest = _read(path)
    check_fitted(path, metadata)
    params = dict(metadata["params"])
    unknown = sorted(set(params) - set(cls().get_params()))
    if unknown:
        raise ModelFileError(
            f"{path} was written by skuniad {_writer(metadata)} with parameters this skuniad "
            f"does not know: {unknown}; upgrade skuniad to load it"
        )
    # older files kept the checkpoint settings of the run that wrote them
    params = {k: v for k, v in {**LEGACY_DEFAULTS, **params}.items() if k not in RUNTIME_PARAMS}
    if isinstance(params.get("out_indices"), list):
        params["out_indices"] = tuple(params["out_indices"])
    detector = cls(**params)
    try:  # the rules fit applies, before the parameters build anything
        check_params(detector.get_params())
    except ValueError as exc:
        raise ModelFileError(f"{path}: invalid parameters: {exc}") from None
    detector.network_spec_ = NetworkSpec.from_params(detector.get_params())
    _check_finite(path, metadata, tensors)
    fitted = metadata["fitted"]
    thresholds = ThresholdTable.from_metadata(fitted)
    if thresholds is not None:
        detector.thresholds_ = thresholds
    detector.n_epochs_ = int(fitted["n_epochs_"])
    detector.loss_curve_ = [float(v) for v in fitted["loss_curve_"]]
    detector.feature_shape_ = tuple(int(v) for v in fitted["feature_shape_"])
    check_tensors(path, detector.network_spec_, detector.feature_shape_, tensors)
    if digest is not None and digest[0] != content_digest(digest[1], tensors):
        raise ModelFileError(
            f"{path} fails its integrity check: its tensors or metadata changed after skuniad "
            "wrote it (a damaged copy or an edit); use an intact copy"
        )
    norm = metadata["backbone"]
    restore_modules(detector, tensors, device, norm["mean"], norm["std"])
    return detector


def read_metadata(path: str | os.PathLike) -> dict:
    """The validated JSON metadata of a model file (params, fitted values, versions)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return _read(path)[0]


def content_digest(metadata: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a model file's metadata text and of each tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(metadata.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


_UNCALIBRATED = {"offset_": None, "pixel_threshold_": None, "group_thresholds": []}


_EXPECTED = "a skuniad model file (safetensors with skuniad metadata, written by det.save)"


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor], tuple[str, str] | None]:
    """Validated metadata, the tensors and ``(digest, metadata text)`` of a model file.

    The digest part is None for a file written before digests. Never unpickles.
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a model file"
        raise ModelFileError(f"{path} is not {_EXPECTED}: {_what_instead(path, exc)}") from None
    if METADATA_KEY not in header:
        raise ModelFileError(
            f"{path} is a safetensors file but not {_EXPECTED}: no {METADATA_KEY!r} metadata"
        )
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the skuniad metadata is not valid JSON ({exc})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: the skuniad metadata is nested too deeply") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not {_EXPECTED}: its metadata names another format")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: invalid skuniad format_version {version!r}")
    if version > FORMAT_VERSION:
        import skuniad

        raise ModelFileError(
            f"{path} has model format version {version}, written by skuniad "
            f"{_writer(metadata)}; this skuniad ({skuniad.__version__}) reads format versions "
            f"up to {FORMAT_VERSION}. Upgrade skuniad to load it."
        )
    missing = [k for k in ("params", "fitted", "backbone") if not isinstance(metadata.get(k), dict)]
    if missing:
        raise ModelFileError(f"{path}: the skuniad metadata lacks {missing}")
    if DIGEST_KEY not in metadata:
        return metadata, tensors, None
    digest = metadata.pop(DIGEST_KEY)
    return metadata, tensors, (digest, json.dumps(metadata, sort_keys=True))


def _check_finite(path: Path, metadata: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a model that would score NaN: non-finite weights, thresholds or normalisation."""
    fitted, norm = metadata["fitted"], metadata["backbone"]
    values = {
        "offset_": fitted.get("offset_"),
        "pixel_threshold_": fitted.get("pixel_threshold_"),
        **{
            f"{kind} threshold of group {g!r}": v
            for g, *pair in fitted.get("group_thresholds", [])
            for kind, v in zip(("image", "pixel"), pair, strict=True)
        },
        **{f"backbone mean {i}": v for i, v in enumerate(norm.get("mean", []))},
        **{f"backbone std {i}": v for i, v in enumerate(norm.get("std", []))},
    }
    for name, value in values.items():
        if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value)):
            raise ModelFileError(f"{path}: {name} is {value!r}, not a finite number")
    if any(v <= 0 for v in norm.get("std", [])):
        raise ModelFileError(f"{path}: the backbone's std must be positive, got {norm['std']}")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(
                f"{path}: tensor {name!r} holds NaN or infinite values (a diverged training?)"
            )


def _writer(metadata: dict) -> str:
    versions = metadata.get("versions")
    return str(versions.get("skuniad", "?")) if isinstance(versions, dict) else "?"


def _what_instead(path: Path, error: Exception) -> str:
    """What ``path`` seems to be, from its first bytes, for the error message."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":
        return (
            "it looks like a pickle (joblib.dump / pickle.dump), which a model path never "
            "unpickles; use joblib.load for it, and only on files you trust"
        )
    if head == b"PK\x03\x04":
        return "it looks like a zip archive (e.g. written by torch.save)"
    return f"it is truncated or of another kind (safetensors: {error})"


def pickle_state(detector, state: dict) -> dict:
    """``__getstate__``: the networks as CPU state dicts (a GPU-fitted model unpickles anywhere)."""
    if "model_" in state:
        del state["backbone_"], state["model_"]
        state["_module_tensors"] = module_tensors(detector)
        state["_backbone_norm"] = (detector.backbone_.mean, detector.backbone_.std)
    return state


def unpickle_state(detector, state: dict, set_attributes) -> None:
    """``__setstate__``: today's attributes from a state pickled by any skuniad version.

    ``set_attributes`` is the estimator's base ``__setstate__``; the networks
    are rebuilt after it, on this machine's device.
    """
    # pickled before a parameter existed: the behaviour it was fitted with, else its default
    state = {**type(detector)().get_params(), **LEGACY_DEFAULTS, **state}
    if "offset_" in state:  # pickled before ThresholdTable existed
        groups = zip(
            state.pop("group_image_thresholds_", {}).items(),
            state.pop("group_pixel_thresholds_", {}).values(),
            strict=True,
        )
        state["thresholds_"] = ThresholdTable(
            -state.pop("offset_"),
            state.pop("pixel_threshold_"),
            {group: (image, pixel) for (group, image), pixel in groups},
        )
    snapshot = state.pop("_network_params_", None)  # pickled before NetworkSpec existed
    if snapshot is not None:
        state["network_spec_"] = NetworkSpec.from_params(snapshot)
    elif "_module_tensors" in state:
        state.setdefault("network_spec_", NetworkSpec.from_params(state))
    tensors = state.pop("_module_tensors", None)
    norm = state.pop("_backbone_norm", None)
    set_attributes(state)
    if tensors is not None:
        restore_modules(detector, tensors, available_device(detector.device_), *norm)
