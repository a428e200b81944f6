"""A six-minute check of skuniad on one GPU: the figures docs/performance.md lacks.

Run it from the repository root; the GPU machines are offline and have no
skuniad installed (``pip install -e .`` fails there: a bundled weights
package is missing), so the package comes from the checkout::

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py [--images N] [--device cuda:1]
                                                    [--budget-s 330] [--no-compile]

With CUDA (the full check: the paper's network, tf_efficientnet_b4 at
224 px, on 3,629 images as in MVTec AD, synthetic 256 px arrays):

0. Python, torch, CUDA, cuDNN, numpy, scikit-learn, timm and scipy versions,
   then ``import skuniad`` (a clear failure when it is not importable);
1. feature extraction, images/s (resize + normalise + backbone, bf16; fp32 in
   reduced mode);
2. a training sweep over batch 8, 32, 64 and 128 (bf16), each eager and
   with ``torch.compile`` (``compile=True``): images/s from the median of 3
   timed epochs after a warm-up epoch (which holds the compilation, timed
   apart), the projected 1000-epoch recipe in minutes, peak GPU memory; and
   fp32 eager at batch 8;
3. 20 training steps under ``torch.profiler`` at batch 8 and 64 (bf16,
   eager): GPU kernel time against wall time per step, and kernels per step;
4. fp32 against bf16: the backbone's features (relative L2), the anomaly
   maps of the bf16-trained model (largest difference relative to the range,
   Pearson r) and the Spearman correlation of its image scores, each
   precision end to end (backbone and transformer);
5. a one-rank NCCL smoke test in this process: a process group, one epoch
   of ``train_reconstruction(distributed=True)``, ``gather_shards``,
   ``finish()`` (gloo in reduced mode);
6. a 2-process ``torchrun ... -m skuniad fit`` on two GPUs, or both
   processes on the one GPU there is (gloo then; NCCL refuses that); if it
   outlives its time, torchrun gets SIGTERM and its workers' process groups
   (torchrun starts each worker in a session of its own) SIGKILL, so nothing
   is left on the GPU;
7. scaled_dot_product_attention with a stride-0 (``expand()``ed) query against
   a contiguous one, for every attention backend, fp32 and bf16, with and
   without a mask, forward and backward.

``--budget-s`` (default 330 s) bounds the whole run: sweep arms that would
leave too little time for the later steps are skipped, and say so. Expect
about 4-6 minutes on one H100.

Without CUDA the same steps run on the CPU in a reduced mode (a tiny model,
64 px, a few images) so that the test suite covers the script; the first
line says so, and its figures say nothing about GPUs.

The backbone has random weights (no download; speed does not depend on
them). Prints one line per figure and ends with ``gpu check: ok`` or
``gpu check: FAILED (...)``, exiting 1 in the latter case.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
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
SWEEP_BATCH_SIZES = (8, 32, 64, 128)
PROFILED_BATCH_SIZES = (8, 64)
TIMED_EPOCHS = 3  # after one warm-up epoch
PROFILED_STEPS = 20
RECIPE_EPOCHS = 1000
RESERVED_S = 150  # for the steps after the sweep: profiler, agreement, NCCL, torchrun, SDPA


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
    return backbone, features, seconds, peak_gib(device)


def versions() -> list[str]:
    """The versions of what the check runs on, read before skuniad is imported."""

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "MISSING"

    cuda = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return [
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {cuda}, "
        f"cuDNN {cudnn or 'none'}), numpy {np.__version__}",
        f"scikit-learn {version('scikit-learn')} (skuniad needs >= 1.6), timm {version('timm')}, "
        f"scipy {version('scipy')}",
    ]


def new_model(settings: dict, features: torch.Tensor):
    from skuniad.nn.transformer import UniADReconstruction

    torch.manual_seed(0)
    return UniADReconstruction(
        features.shape[1],
        tuple(features.shape[2:]),
        hidden_dim=settings["hidden_dim"],
        num_heads=settings["num_heads"],
        num_encoder_layers=settings["layers"],
        num_decoder_layers=settings["layers"],
        dim_feedforward=settings["dim_feedforward"],
        neighbor_size=settings["neighbor_size"],
    )


def training_speed(
    settings: dict,
    features: torch.Tensor,
    device: torch.device,
    amp_dtype,
    batch_size: int = BATCH_SIZE,
    compile: bool = False,
):
    """(model, median seconds of the timed epochs, seconds of the warm-up epoch, peak memory).

    ``train_reconstruction`` as ``fit`` runs it, for 1 + :data:`TIMED_EPOCHS`
    epochs; the warm-up epoch holds the compilation (of the short last batch
    too) and is left out of the median.
    """
    from skuniad.training import train_reconstruction

    model = new_model(settings, features)
    ends = []
    reset_peak(device)
    start = time.perf_counter()
    train_reconstruction(
        model,
        features,
        max_epochs=1 + TIMED_EPOCHS,
        batch_size=batch_size,
        learning_rate=1e-4,
        weight_decay=1e-4,
        grad_clip=0.1,
        device=device,
        amp_dtype=amp_dtype,
        compile=compile,
        # the epoch's loss is a Python float: the GPU has finished the epoch's work
        on_epoch_end=lambda epoch, loss: ends.append(time.perf_counter()),
    )
    epochs = [ends[i + 1] - ends[i] for i in range(TIMED_EPOCHS)]
    return model, statistics.median(epochs), ends[0] - start, peak_gib(device)


def profiled_steps(settings, features, device, amp_dtype, batch_size: int) -> dict:
    """:data:`PROFILED_STEPS` eager training steps under torch.profiler, after 3 warm-up steps.

    Wall time per step (synchronised), device kernel time per step (the CPU
    operators' own time in reduced mode) and device kernels per step.
    """
    from torch.profiler import ProfilerActivity, profile

    from skuniad.device import autocast

    model = new_model(settings, features).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
    data = features[: 4 * batch_size].to(device)

    def step(index: int) -> None:
        batch = data[(index * batch_size) % len(data) :][:batch_size].float()
        with autocast(device, amp_dtype):
            reconstruction = model(batch)
        loss = F.mse_loss(reconstruction.float(), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    for index in range(3):
        step(index)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for index in range(PROFILED_STEPS):
            step(index)
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    averages = prof.key_averages()
    if cuda:
        own = (
            "self_device_time_total"
            if hasattr(averages[0], "self_device_time_total")
            else ("self_cuda_time_total")
        )
        busy_us = sum(getattr(e, own) for e in averages)
        kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        busy_us = sum(e.self_cpu_time_total for e in averages)
        kernels = 0
    return {
        "wall_ms": wall / PROFILED_STEPS * 1e3,
        "busy_ms": busy_us / PROFILED_STEPS / 1e3,
        "kernels": kernels / PROFILED_STEPS,
    }


def map_agreement(model, features: torch.Tensor, settings: dict, device: torch.device):
    from skuniad._inference import reconstruction_maps

    options = dict(image_size=settings["image_size"], batch_size=32, device=device)
    _, fp32 = reconstruction_maps(model, features, amp_dtype=None, **options)
    _, bf16 = reconstruction_maps(model, features, amp_dtype=torch.bfloat16, **options)
    spread = float(fp32.max() - fp32.min()) or 1.0
    relative = float(np.abs(bf16 - fp32).max()) / spread
    pearson = float(np.corrcoef(bf16.ravel(), fp32.ravel())[0, 1])
    return relative, pearson


def precision_agreement(backbone, model, X: list, settings: dict, device: torch.device):
    """fp32 against bf16, each end to end: (backbone relative L2, image-score Spearman rho)."""
    from scipy.stats import spearmanr

    from skuniad._inference import extract_features, reconstruction_maps

    options = dict(image_size=settings["image_size"], batch_size=32, device=device)
    features, scores = {}, {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        features[name] = extract_features(backbone, X, amp_dtype=dtype, **options)
        scores[name], _ = reconstruction_maps(model, features[name], amp_dtype=dtype, **options)
    difference = (features["bf16"].float() - features["fp32"]).norm()
    relative_l2 = float(difference / features["fp32"].norm())
    rho = float(spearmanr(scores["fp32"], scores["bf16"]).statistic)
    return relative_l2, rho


def nccl_smoke(settings: dict, features: torch.Tensor, device: torch.device) -> tuple[bool, str]:
    """One rank in this process: process group, a distributed epoch, a gather, finish()."""
    import torch.distributed as dist

    from skuniad.distributed import DistributedContext, finish, gather_shards
    from skuniad.training import train_reconstruction

    backend = "nccl" if device.type == "cuda" else "gloo"
    options = {"device_id": device} if backend == "nccl" else {}
    start = time.perf_counter()
    try:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **options)
        try:
            curve = train_reconstruction(
                new_model(settings, features),
                features[:64],
                max_epochs=1,
                batch_size=BATCH_SIZE,
                learning_rate=1e-4,
                weight_decay=1e-4,
                grad_clip=0.1,
                device=device,
                amp_dtype=None,
                distributed=True,
            )
            context = DistributedContext(0, 1, 0, device)
            gathered = gather_shards(np.arange(4.0), context)
            used = dist.get_backend()
        finally:
            finish()
    except Exception as exc:  # noqa: BLE001 - report any failure as the check's result
        return False, f"{backend}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    ok = used == backend and len(curve) == 1 and math.isfinite(curve[0])
    ok &= gathered.tolist() == [0.0, 1.0, 2.0, 3.0]
    return ok, (
        f"{used}: 1 epoch on {min(64, len(features))} features (loss {curve[0]:.4f}), "
        f"gather_shards, finish() in {time.perf_counter() - start:.1f} s"
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: Linux, where the GPU machines run)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_bounded(command: list[str], timeout: float) -> tuple[int | None, str, str]:
    """Run ``command``; (exit code or None after ``timeout``, stdout, stderr).

    On timeout the command gets SIGTERM (torchrun forwards it to its
    workers), then, after at most 30 s, SIGKILL goes to its own process group
    and to those of every process it started: torchrun's workers run in
    sessions of their own, and a plain kill of torchrun would leave them on
    the GPU.
    """
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        groups = {process.pid}  # its own session: its group id is its pid
        for pid in descendants(process.pid):  # before they are re-parented
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                pass
        groups.discard(os.getpgrp())
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:  # the workers held the pipes too: they close once the workers are gone
            out, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        return None, out, err


def torchrun_fit(
    settings: dict, device: torch.device, n_images: int, timeout: float = 300
) -> tuple[bool, str]:
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
        returncode, stdout, stderr = run_bounded(command, timeout)
        seconds = time.perf_counter() - start
        if returncode is None:
            return False, f"on {where}: no result within {timeout:.0f} s (a hang); workers killed"
        if returncode != 0:
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            return False, f"on {where}: exit code {returncode}: {tail}"
        det = UniADDetector.load(output, device="cpu")
        written = stdout.count("model written to")
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
        "--budget-s", type=float, default=330, help="the whole run's time (default 330 s)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled sweep arms")
    parser.add_argument(
        "--no-torchrun", action="store_true", help="skip step 6 (the test suite runs it apart)"
    )
    args = parser.parse_args(argv)
    deadline = time.perf_counter() + args.budget_s

    for line in versions():
        print(line)
    try:
        import skuniad
    except ImportError as exc:
        print(
            f"cannot import skuniad ({exc}): run from the repository root as "
            "PYTHONPATH=$PWD python3 benchmarks/gpu_check.py"
        )
        print("gpu check: FAILED (import skuniad)")
        return 1
    print(f"skuniad {skuniad.__version__} from {Path(skuniad.__file__).parent}")

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
        f"{settings['images']} images, hidden {settings['hidden_dim']}, "
        f"{settings['layers']}+{settings['layers']} layers"
    )
    failures = []
    X = synthetic_images(settings["images"], settings["source_size"])
    # bf16 as precision="auto" on a GPU; fp32 in reduced mode, where CPU bf16 convolutions
    # of a random-weight backbone were seen 10-30x slower on a shared VM
    extract_dtype, extract_name = (torch.bfloat16, "bf16") if full else (None, "fp32")
    backbone, features, extract_s, peak = extraction(settings, X, device, extract_dtype)
    print(
        f"feature extraction ({extract_name}): {len(X) / extract_s:.1f} images/s "
        f"({extract_s:.1f} s for {len(X)}), peak GPU memory {peak}"
    )

    def report(name: str, epoch_s: float, warmup_s: float, peak: str) -> None:
        minutes = (extract_s + RECIPE_EPOCHS * epoch_s) / 60
        print(
            f"training ({name}): {len(X) / epoch_s:.1f} images/s ({epoch_s:.2f} s per epoch, "
            f"median of {TIMED_EPOCHS} after a {warmup_s:.2f} s warm-up epoch), projected "
            f"{RECIPE_EPOCHS}-epoch recipe {minutes:.1f} min, peak GPU memory {peak}"
        )

    print(
        f"training sweep ({', '.join(map(str, SWEEP_BATCH_SIZES))}; bf16, eager and compiled; "
        f"lr 1e-4 at every batch size):"
    )
    trained, model, eager_s = None, None, {}
    arms = [(b, False) for b in SWEEP_BATCH_SIZES]
    if not args.no_compile:
        arms += [(b, True) for b in SWEEP_BATCH_SIZES]
    for batch_size, compiled in arms:
        name = f"bf16, batch {batch_size}, {'compiled' if compiled else 'eager'}"
        if deadline - time.perf_counter() < RESERVED_S:
            print(f"training ({name}): skipped (time budget, --budget-s {args.budget_s:.0f})")
            continue
        model, epoch_s, warmup_s, peak = training_speed(
            settings, features, device, torch.bfloat16, batch_size, compiled
        )
        report(name, epoch_s, warmup_s, peak)
        if compiled and batch_size in eager_s:
            print(f"  compile ratio, batch {batch_size}: {eager_s[batch_size] / epoch_s:.2f}")
        elif not compiled:
            eager_s[batch_size] = epoch_s
        if trained is None:
            trained = model  # batch 8, eager: the model of the agreement checks
    if deadline - time.perf_counter() >= RESERVED_S:
        model, epoch_s, warmup_s, peak = training_speed(settings, features, device, None)
        report(f"fp32, batch {BATCH_SIZE}, eager", epoch_s, warmup_s, peak)
        if trained is None:
            trained = model
    if trained is None:
        trained = new_model(settings, features)
    for batch_size in PROFILED_BATCH_SIZES:
        p = profiled_steps(settings, features, device, torch.bfloat16, batch_size)
        if full:
            print(
                f"profiler, bf16 batch {batch_size}, {PROFILED_STEPS} eager steps: wall "
                f"{p['wall_ms']:.2f} ms per step, GPU kernels {p['busy_ms']:.2f} ms "
                f"({p['busy_ms'] / p['wall_ms']:.0%} busy), {p['kernels']:.0f} kernels per step"
            )
        else:
            print(
                f"profiler, bf16 batch {batch_size}, {PROFILED_STEPS} eager steps: wall "
                f"{p['wall_ms']:.2f} ms per step, CPU operators {p['busy_ms']:.2f} ms "
                "(no GPU kernels on the CPU)"
            )
    subset = features[: settings["agreement_images"]]
    relative, pearson = map_agreement(trained, subset, settings, device)
    agree = relative <= 0.03 and pearson > 0.99
    print(
        f"fp32 vs bf16 maps ({len(subset)} images): largest difference {relative:.2%} of the "
        f"range, Pearson r {pearson:.5f} ({'ok' if agree else 'DISAGREE'})"
    )
    if not agree:
        failures.append("map agreement")
    relative_l2, rho = precision_agreement(
        backbone, trained, X[: settings["agreement_images"]], settings, device
    )
    print(
        f"fp32 vs bf16 end to end ({settings['agreement_images']} images): backbone features "
        f"{relative_l2:.2%} apart (relative L2), image scores Spearman rho {rho:.4f}"
    )
    ok, summary = nccl_smoke(settings, features, device)
    print(f"one-rank process group: {summary} ({'ok' if ok else 'FAILED'})")
    if not ok:
        failures.append("one-rank process group")
    del features, trained, model, backbone
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.no_torchrun:
        print("torchrun, 2 processes: skipped (--no-torchrun)")
    else:
        timeout = max(60.0, min(300.0, deadline - time.perf_counter() - 30))
        ok, summary = torchrun_fit(settings, device, settings["torchrun_images"], timeout)
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
