"""A ten-minute check of skuniad on one GPU: the figures docs/performance.md lacks.

With CUDA (the full check: the paper's recipe, tf_efficientnet_b4 at 224 px,
batch 8, on 3,629 images as in MVTec AD, synthetic 256 px arrays):

1. feature extraction, images/s (resize + normalise + backbone, bf16; fp32 in
   reduced mode);
2. training, images/s, in bf16 and in fp32, each timed over the epoch after
   a warm-up epoch;
3. the projected wall time of the 1000-epoch recipe;
4. peak GPU memory of extraction and of each training;
5. fp32 against bf16 anomaly maps of the bf16-trained model: largest
   difference relative to the maps' range, and Pearson r;
6. a 2-process ``torchrun ... -m skuniad fit`` on two GPUs, or both
   processes on the one GPU there is (gloo then; NCCL refuses that);
7. scaled_dot_product_attention with a stride-0 (``expand()``ed) query against
   a contiguous one, for every attention backend, fp32 and bf16, with and
   without a mask, forward and backward.

Without CUDA the same steps run on the CPU in a reduced mode (a tiny model,
64 px, a few images) so that the test suite covers the script; the first
line says so, and its figures say nothing about GPUs. Usage::

    python benchmarks/gpu_check.py [--images N] [--device auto|cuda|cuda:1|cpu]

The backbone has random weights (no download; speed does not depend on
them). Prints one line per figure and ends with ``gpu check: ok`` or
``gpu check: FAILED (...)``, exiting 1 in the latter case.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

FULL = dict(
    backbone="tf_efficientnet_b4",
    image_size=224,
    images=3629,
    source_size=256,
    hidden_dim=256,
    num_heads=8,
    layers=4,
    dim_feedforward=1024,
    neighbor_size=7,
    agreement_images=256,
    torchrun_images=64,
)
REDUCED = dict(
    backbone="tf_efficientnet_lite0",
    image_size=64,
    images=24,
    source_size=72,
    hidden_dim=32,
    num_heads=2,
    layers=1,
    dim_feedforward=64,
    neighbor_size=1,
    agreement_images=8,
    torchrun_images=6,
)
BATCH_SIZE = 8
RECIPE_EPOCHS = 1000


def synthetic_images(n: int, size: int) -> list[np.ndarray]:
    """``n`` RGB uint8 images: 64 distinct synthetic ones, repeated (contents do not set speed)."""
    from skuniad.datasets import make_synthetic

    distinct = make_synthetic("train", n_per_category=16, image_size=size).images[:64]
    return [np.asarray(distinct[i % len(distinct)]) for i in range(n)]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a on the CPU"
    return f"{torch.cuda.max_memory_allocated(device) / 1024**3:.2f} GiB"


def extraction(settings: dict, X: list, device: torch.device, amp_dtype):
    from skuniad._inference import extract_features
    from skuniad.device import inference_batch_size
    from skuniad.nn.backbone import FrozenBackbone

    backbone = FrozenBackbone(settings["backbone"], (0, 1, 2, 3), None)
    backbone.to(device).to(memory_format=torch.channels_last)
    options = dict(
        image_size=settings["image_size"],
        batch_size=inference_batch_size(BATCH_SIZE),
        device=device,
        amp_dtype=amp_dtype,
    )
    extract_features(backbone, X[: 2 * inference_batch_size(BATCH_SIZE)], **options)  # warm-up
    reset_peak(device)
    start = time.perf_counter()
    features = extract_features(backbone, X, **options)
    seconds = time.perf_counter() - start
    return features, seconds, peak_gib(device)


def training_speed(settings: dict, features: torch.Tensor, device: torch.device, amp_dtype):
    """(model, seconds of the epoch after a warm-up epoch, peak memory)."""
    from skuniad.nn.transformer import UniADReconstruction
    from skuniad.training import train_reconstruction

    torch.manual_seed(0)
    model = UniADReconstruction(
        features.shape[1],
        tuple(features.shape[2:]),
        hidden_dim=settings["hidden_dim"],
        num_heads=settings["num_heads"],
        num_encoder_layers=settings["layers"],
        num_decoder_layers=settings["layers"],
        dim_feedforward=settings["dim_feedforward"],
        neighbor_size=settings["neighbor_size"],
    )
    ends = []
    reset_peak(device)
    start = time.perf_counter()
    train_reconstruction(
        model,
        features,
        max_epochs=2,
        batch_size=BATCH_SIZE,
        learning_rate=1e-4,
        weight_decay=1e-4,
        grad_clip=0.1,
        device=device,
        amp_dtype=amp_dtype,
        # the epoch's loss is a Python float: the GPU has finished the epoch's work
        on_epoch_end=lambda epoch, loss: ends.append(time.perf_counter()),
    )
    return model, ends[1] - ends[0], ends[0] - start, peak_gib(device)


def map_agreement(model, features: torch.Tensor, settings: dict, device: torch.device):
    from skuniad._inference import reconstruction_maps

    options = dict(image_size=settings["image_size"], batch_size=32, device=device)
    _, fp32 = reconstruction_maps(model, features, amp_dtype=None, **options)
    _, bf16 = reconstruction_maps(model, features, amp_dtype=torch.bfloat16, **options)
    spread = float(fp32.max() - fp32.min()) or 1.0
    relative = float(np.abs(bf16 - fp32).max()) / spread
    pearson = float(np.corrcoef(bf16.ravel(), fp32.ravel())[0, 1])
    return relative, pearson


def torchrun_fit(settings: dict, device: torch.device, n_images: int) -> tuple[bool, str]:
    """A 2-process ``skuniad fit`` under torchrun; (success, one-line summary)."""
    from PIL import Image

    from skuniad import UniADDetector

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    where = (
        "the CPU (gloo)"
        if device.type != "cuda"
        else "two GPUs (nccl)"
        if gpus >= 2
        else "one GPU shared by both processes (gloo)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "good"
        folder.mkdir()
        for i, image in enumerate(synthetic_images(n_images, settings["source_size"])):
            Image.fromarray(image).save(folder / f"{i:03d}.png")
        output = Path(tmp) / "model.skuniad"
        options = {
            "--output": output,
            "--epochs": 1,
            "--backbone": settings["backbone"],
            "--backbone-weights": "none",
            "--image-size": settings["image_size"],
            "--hidden-dim": settings["hidden_dim"],
            "--num-heads": settings["num_heads"],
            "--encoder-layers": settings["layers"],
            "--decoder-layers": settings["layers"],
            "--feedforward-dim": settings["dim_feedforward"],
            "--neighbor-size": settings["neighbor_size"],
            "--batch-size": BATCH_SIZE // 2 if device.type == "cpu" else BATCH_SIZE,
            "--device": "cuda" if device.type == "cuda" else "cpu",
        }
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command += ["--standalone", "-m", "skuniad", "fit", str(folder), "--quiet"]
        command += [str(v) for pair in options.items() for v in pair]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return False, f"on {where}: no result within 300 s (a hang)"
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            return False, f"on {where}: exit code {done.returncode}: {tail}"
        det = UniADDetector.load(output, device="cpu")
        written = done.stdout.count("model written to")
        ok = written == 1 and det.n_epochs_ == 1
        return ok, (
            f"on {where}: {n_images} images, 1 epoch, {seconds:.1f} s including start-up; "
            f"model written {written} time(s) (expected once), n_epochs_={det.n_epochs_}"
        )


def stride_zero_attention(device: torch.device, full: bool) -> tuple[bool, list[str]]:
    """Compare SDPA on an expand()ed query with a contiguous copy, per backend and dtype.

    UniAD's shapes (batch 8, 8 heads of 32 on 14 x 14 tokens, 7 x 7 neighbor
    mask) in the full check, a 6 x 6 grid with 2 heads of 8 in reduced mode.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from skuniad.nn.attention import attention_bias, neighbor_mask

    torch.manual_seed(0)
    batch, heads, grid, head_dim = (8, 8, 14, 32) if full else (2, 2, 6, 8)
    length = grid * grid
    bias = attention_bias(neighbor_mask(grid, grid, 7 if full else 3)).to(device)
    lines, ok = [], True
    names = ("MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
    for backend in [getattr(SDPBackend, name) for name in names if hasattr(SDPBackend, name)]:
        for dtype in (torch.float32, torch.bfloat16):
            for mask in (None, bias.to(dtype)):
                name = f"{backend.name.lower()} {str(dtype)[6:]} " + (
                    "no mask" if mask is None else "masked"
                )
                shared = torch.randn(1, heads, length, head_dim, device=device, dtype=dtype)
                k = torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype)
                v = torch.randn_like(k)
                results = []
                for contiguous in (False, True):
                    q = shared.clone().requires_grad_(True)
                    expanded = q.expand(batch, -1, -1, -1)  # stride 0 over the batch
                    try:
                        with sdpa_kernel(backend), warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # "kernel not used because ..."
                            out = F.scaled_dot_product_attention(
                                expanded.contiguous() if contiguous else expanded,
                                k,
                                v,
                                attn_mask=mask,
                            )
                        out.float().square().sum().backward()
                    except RuntimeError:  # this backend does not take these inputs
                        break
                    results.append((out.detach().float(), q.grad.float()))
                if len(results) < 2:
                    lines.append(f"{name}: not available")
                    continue
                (out0, grad0), (out1, grad1) = results
                tolerance = 1e-4 if dtype == torch.float32 else 2e-2
                d_out = float((out0 - out1).abs().max() / (out1.abs().max() + 1e-12))
                d_grad = float((grad0 - grad1).abs().max() / (grad1.abs().max() + 1e-12))
                same = d_out <= tolerance and d_grad <= tolerance
                ok &= same
                lines.append(
                    f"{name}: relative difference output {d_out:.1e}, query gradient "
                    f"{d_grad:.1e} ({'ok' if same else 'MISMATCH'})"
                )
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="training images (3,629 full)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cuda:N, cpu")
    parser.add_argument(
        "--no-torchrun", action="store_true", help="skip step 6 (the test suite runs it apart)"
    )
    args = parser.parse_args(argv)

    from skuniad.device import resolve_device, tune_cpu_runtime

    tune_cpu_runtime()
    device = resolve_device(args.device)
    full = device.type == "cuda"
    settings = dict(FULL if full else REDUCED)
    if args.images is not None:
        settings["images"] = args.images
    if full:
        print(f"gpu check: full mode on {device} ({torch.cuda.get_device_name(device)})")
    else:
        print(
            "gpu check: REDUCED MODE on the CPU (no CUDA device): a tiny model on a few "
            "images; these figures say nothing about a GPU"
        )
    print(f"machine: {machine()}")
    print(
        f"recipe: {settings['backbone']} (random weights) at {settings['image_size']} px, "
        f"{settings['images']} images, batch {BATCH_SIZE}, hidden {settings['hidden_dim']}, "
        f"{settings['layers']}+{settings['layers']} layers"
    )
    failures = []
    X = synthetic_images(settings["images"], settings["source_size"])
    # bf16 as precision="auto" on a GPU; fp32 in reduced mode, where CPU bf16 convolutions
    # of a random-weight backbone were seen 10-30x slower on a shared VM
    extract_dtype, extract_name = (torch.bfloat16, "bf16") if full else (None, "fp32")
    features, seconds, peak = extraction(settings, X, device, extract_dtype)
    print(
        f"feature extraction ({extract_name}): {len(X) / seconds:.1f} images/s "
        f"({seconds:.1f} s for {len(X)}), peak GPU memory {peak}"
    )
    epochs = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
        model, epoch_s, warmup_s, peak = training_speed(settings, features, device, dtype)
        epochs[name] = epoch_s
        print(
            f"training ({name}): {len(X) / epoch_s:.1f} images/s ({epoch_s:.2f} s per epoch "
            f"after a {warmup_s:.2f} s warm-up epoch), peak GPU memory {peak}"
        )
        if name == "bf16":
            trained = model
    for name, epoch_s in epochs.items():
        hours = (seconds + RECIPE_EPOCHS * epoch_s) / 3600
        print(f"projected {RECIPE_EPOCHS}-epoch recipe ({name}): {hours:.2f} h")
    subset = features[: settings["agreement_images"]]
    relative, pearson = map_agreement(trained, subset, settings, device)
    agree = relative <= 0.03 and pearson > 0.99
    print(
        f"fp32 vs bf16 maps ({len(subset)} images): largest difference {relative:.2%} of the "
        f"range, Pearson r {pearson:.5f} ({'ok' if agree else 'DISAGREE'})"
    )
    if not agree:
        failures.append("map agreement")
    del features, trained, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.no_torchrun:
        print("torchrun, 2 processes: skipped (--no-torchrun)")
    else:
        ok, summary = torchrun_fit(settings, device, settings["torchrun_images"])
        print(f"torchrun, 2 processes {summary} ({'ok' if ok else 'FAILED'})")
        if not ok:
            failures.append("torchrun")
    ok, lines = stride_zero_attention(device, full)
    print("stride-0 query in scaled_dot_product_attention (expanded vs contiguous):")
    for line in lines:
        print(f"  {line}")
    if not ok:
        failures.append("stride-0 attention")
    print("gpu check: ok" if not failures else f"gpu check: FAILED ({', '.join(failures)})")
    if not full:
        print("(reduced mode: rerun on a CUDA machine for the figures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
