"""What the reference's fixed B4 padding changes at 224 px, and what it costs.

The reference's EfficientNet fixes its TF "same" padding for the native
resolution (380 px for B4); at 224 px the stride-2 5 x 5 depthwise
convolution opening the 56-channel stage then pads (2, 2) where timm's
per-input padding pads (1, 2). ``UniADDetector(static_padding_size="auto")``
builds the reference's network. Measured here:

1. B4 with timm's random initialisation (no B4 ImageNet weights offline):
   which convolutions pad differently, the relative L2 difference of the
   aligned features (and per stage), how many of the 272 channels change, and
   the backbone's time per batch of 32 images both ways.
2. The same one-layer change with real ImageNet weights, on
   ``tf_efficientnet_lite0`` (its stem and stages have the same strides and
   kernels, so fixing its padding for 380 px changes exactly the same layer):
   the feature difference, and the test AUROCs of two detectors that differ
   only in the padding (``--epochs`` epochs, each seed), per data set;
   ``--epochs 0`` skips these fits.

Usage::

    python benchmarks/b4_padding.py [--images 32] [--epochs 10] [--seeds 0]
        [--data ../shared/data/mvtec-ad/bottle ../shared/data/real-ad/tire]

Prints the machine and one line per measurement; writes JSON to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402
from resize_choice import DEFAULT_DATA, _test_metrics  # noqa: E402

PADDINGS = {"reference (380)": 380, "timm (per input)": None}


def _backbones(name: str, weights):
    import torch

    from skuniad import UniADDetector
    from skuniad._spec import NetworkSpec

    built = {}
    for label, size in PADDINGS.items():
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same random weights both ways
            params = UniADDetector(backbone=name, static_padding_size=size).get_params()
            built[label] = NetworkSpec.from_params(params).build_backbone(weights)
    return built


def _padding_changes(name: str) -> list[str]:
    """Convolutions whose padding at 224 px differs between the two ways."""
    import timm
    import torch

    from skuniad.nn import padding

    with torch.device("meta"):
        body = timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3))
    body.blocks = body.blocks[:5]
    sizes = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, a, n=n: sizes.__setitem__(n, a[0].shape[-2:]))
        for n, m in body.named_modules()
        if type(m).__name__ == "Conv2dSame"
    ]
    body(torch.empty(1, 3, 224, 224, device="meta"))
    for hook in hooks:
        hook.remove()
    static = padding.use_static_same_padding(body, 380)
    changed = []
    for layer, fixed in static.items():
        conv = body.get_submodule(layer)
        dynamic = padding.same_padding(sizes[layer], conv.kernel_size, conv.stride)
        if dynamic != fixed:
            changed.append(f"{layer} {dynamic} -> {fixed}")
    return changed


def _features(backbone, images):
    import torch

    with torch.inference_mode():
        return backbone(images)


def _compare(name: str, weights, images) -> dict:
    import torch

    backbones = _backbones(name, weights)
    reference, timm_way = (_features(b, images) for b in backbones.values())
    channels = backbones["timm (per input)"].channels
    bounds = [0, *torch.tensor(channels).cumsum(0).tolist()]
    per_stage = [
        float((reference[:, a:b] - timm_way[:, a:b]).norm() / timm_way[:, a:b].norm())
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    changed = (reference != timm_way).flatten(2).any(2).any(0)
    times = {}
    for label, backbone in backbones.items():
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            _features(backbone, images)
            runs.append(time.perf_counter() - start)
        times[label] = statistics.median(runs)
    return {
        "changed_layers": _padding_changes(name),
        "feature_difference": float((reference - timm_way).norm() / timm_way.norm()),
        "per_stage": per_stage,
        "changed_channels": int(changed.sum()),
        "channels": int(sum(channels)),
        "seconds_per_batch": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", type=Path, default=Path("b4_padding.json"))
    args = parser.parse_args()

    import torch

    from skuniad import UniADDetector
    from skuniad.datasets import load_mvtec
    from skuniad.device import tune_cpu_runtime
    from skuniad.io import iter_batches
    from skuniad.nn.backbone import IMAGENET_MEAN, IMAGENET_STD

    tune_cpu_runtime()
    print(machine(), flush=True)
    train = [str(p) for p in load_mvtec(args.data[0], "train").paths][: args.images]
    results = {"machine": machine(), "backbones": {}, "fits": {}}
    for name, weights in (("tf_efficientnet_b4", None), ("tf_efficientnet_lite0", "imagenet")):
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if name.endswith("lite0"):
            mean = std = (0.5, 0.5, 0.5)
        images = torch.cat([b for b, _ in iter_batches(train, 224, mean, std, args.images)])
        entry = _compare(name, weights, images)
        results["backbones"][name] = entry
        stages = ", ".join(f"{100 * d:.2f}" for d in entry["per_stage"])
        speed = ", ".join(f"{k} {v:.3f} s" for k, v in entry["seconds_per_batch"].items())
        print(
            f"{name} ({weights or 'random'} weights), {len(images)} images of {args.data[0].name}: "
            f"changed {entry['changed_layers']}; features {100 * entry['feature_difference']:.2f} "
            f"% apart (relative L2; per stage {stages} %), {entry['changed_channels']} of "
            f"{entry['channels']} channels change; backbone per batch: {speed}",
            flush=True,
        )
    for root in args.data if args.epochs > 0 else []:
        train = [str(p) for p in load_mvtec(root, "train").paths]
        test = load_mvtec(root, "test")
        runs = []
        for seed in args.seeds:
            for label, size in PADDINGS.items():
                det = UniADDetector(
                    backbone="tf_efficientnet_lite0",
                    static_padding_size=size,
                    max_epochs=args.epochs,
                    precision="fp32",
                    random_state=seed,
                ).fit(train)
                run = {"seed": seed, "padding": label, **_test_metrics(det, test)}
                runs.append(run)
                print(
                    f"  {root.name} seed {seed} lite0 padding {label:17s} image AUROC "
                    f"{100 * run['image_auroc']:.1f}  pixel AUROC {100 * run['pixel_auroc']:.1f}",
                    flush=True,
                )
        results["fits"][root.name] = runs
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
