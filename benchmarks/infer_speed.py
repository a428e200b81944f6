"""End-to-end inference throughput (decode -> image score + anomaly map).

(a) skuniad: ``UniADDetector`` scoring image files (parallel decoding, backbone
    cut after the last stage, channels_last, inference mode, the CPU attention
    path, bf16 where the CPU has it), scoring in batches of the stated size.
(b) reference-style: sequential PIL decoding, full backbone, fp32,
    ``nn.MultiheadAttention`` with the mask rebuilt every forward.
(c) ONNX Runtime: the same fitted detector exported with ``export_onnx``
    (fp32), images decoded and normalized by ``skuniad.io``; on a GPU through
    its CUDA execution provider, skipped when that is not installed.

Each at batch 8 and 32, each in its own process (clean peak RSS), all on
``--device`` (default ``cpu``; ``cuda`` or ``auto`` on a GPU machine), which is
printed with the ratios. Usage::

    python benchmarks/infer_speed.py [--images 128] [--device cpu]

Prints the machine and device, a line per batch size for (a) vs (b) and for
(c) vs (a), and ends with ``ratio: <a/b>`` (batch 32).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    benchmark_device,
    machine,
    peak_rss_gb,
    run_child,
    synchronize,
    training_images,
)

BACKBONE = "tf_efficientnet_lite0"


def _fitted_detector(paths: list, batch: int, device: str = "cpu"):
    """A one-epoch detector that scores in batches of ``batch`` images."""
    from skuniad import UniADDetector
    from skuniad.device import inference_batch_size

    train_batch = max(1, batch // 4)  # scoring runs 4 x the training batch
    assert inference_batch_size(train_batch) == batch
    det = UniADDetector(
        backbone=BACKBONE, max_epochs=1, batch_size=train_batch, device=device, random_state=0
    )
    return det.fit(paths)


def skuniad_path(n_images: int, batch: int, device: str = "cpu") -> dict:
    from skuniad.device import tune_cpu_runtime

    tune_cpu_runtime()
    paths = training_images(n_images)
    det = _fitted_detector(paths[:16], batch, device)
    det.predict_all(paths[:batch], size="model")  # warm-up
    start = time.perf_counter()
    det.predict_all(paths, size="model")  # scores and model-size maps, one pass
    wall = time.perf_counter() - start
    return {"images_per_s": len(paths) / wall, "peak_rss_gb": peak_rss_gb()}


def reference_path(n_images: int, batch: int, device: str = "cpu") -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from _reference_style import ReferenceStyleUniAD
    from PIL import Image

    from skuniad.device import tune_cpu_runtime

    tune_cpu_runtime()
    paths = training_images(n_images)
    model = ReferenceStyleUniAD(BACKBONE, 192).to(device).eval()

    def run(chunk):
        images = []
        for path in chunk:
            img = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
            images.append(torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255)
        x = ((torch.stack(images) - 0.5) / 0.5).to(device)
        with torch.no_grad():
            feats, rec = model(x)
            pred = (feats - rec).pow(2).sum(1, keepdim=True).sqrt()
            pred = F.interpolate(pred, size=224, mode="bilinear", align_corners=True)
            F.avg_pool2d(pred, 16, 1).flatten(1).amax(1).cpu()  # as skuniad: scores on the host

    run(paths[:batch])
    start = time.perf_counter()
    for begin in range(0, len(paths), batch):
        run(paths[begin : begin + batch])
    synchronize(device)
    wall = time.perf_counter() - start
    return {"images_per_s": len(paths) / wall, "peak_rss_gb": peak_rss_gb()}


def onnx_runtime_path(n_images: int, batch: int, device: str = "cpu") -> dict:
    import tempfile

    import onnxruntime
    import torch

    from skuniad.device import tune_cpu_runtime
    from skuniad.io import iter_batches

    tune_cpu_runtime()
    paths = training_images(n_images)
    det = _fitted_detector(paths[:16], batch, device)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
    with tempfile.TemporaryDirectory() as tmp:
        det.export_onnx(f"{tmp}/uniad.onnx")
        session = onnxruntime.InferenceSession(f"{tmp}/uniad.onnx", options, providers=[provider])
    mean, std = det.backbone_.mean, det.backbone_.std

    def run(chunk):
        for images, _ in iter_batches(chunk, det.image_size, mean, std, batch):
            session.run(None, {"images": images.numpy()})

    run(paths[:batch])  # warm-up
    start = time.perf_counter()
    run(paths)
    wall = time.perf_counter() - start
    return {"images_per_s": len(paths) / wall, "peak_rss_gb": peak_rss_gb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda or auto: (a), (b) and (c) all run there"
    )
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, n, batch, device = args.child
        fn = {"a": skuniad_path, "b": reference_path, "c": onnx_runtime_path}[kind]
        print(json.dumps(fn(int(n), int(batch), device)))
        return
    device = benchmark_device(args.device)
    print(f"machine: {machine()}")
    print(f"device: {device} for (a), (b) and (c)")
    onnx_on_device = device == "cpu" or _onnx_runtime_has_cuda()
    ratio = None
    for batch in (8, 32):
        a = run_child(__file__, "a", str(args.images), str(batch), device)
        b = run_child(__file__, "b", str(args.images), str(batch), device)
        ratio = a["images_per_s"] / b["images_per_s"]
        print(
            f"batch {batch}: skuniad {a['images_per_s']:.1f} images/s "
            f"(peak RSS {a['peak_rss_gb']:.2f} GB), reference-style {b['images_per_s']:.1f} "
            f"images/s (peak RSS {b['peak_rss_gb']:.2f} GB), ratio {ratio:.2f} ({device})"
        )
        if not onnx_on_device:
            print(f"batch {batch}: ONNX Runtime skipped: no CUDA execution provider installed")
            continue
        c = run_child(__file__, "c", str(args.images), str(batch), device)
        print(
            f"batch {batch}: ONNX Runtime {device} fp32 {c['images_per_s']:.1f} images/s "
            f"(peak RSS {c['peak_rss_gb']:.2f} GB), skuniad PyTorch {a['images_per_s']:.1f} "
            f"images/s, ratio {c['images_per_s'] / a['images_per_s']:.2f} ({device})"
        )
    print(f"ratio: {ratio:.2f} (both on {device})")


def _onnx_runtime_has_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


if __name__ == "__main__":
    main()
