"""Training throughput: skuniad's path vs a reference-style path, side by side.

(a) skuniad: ``UniADDetector.fit`` (backbone features computed once, cached,
    bf16 autocast where the CPU has it, CPU attention path, fast dropout):
    training images/s from the median epoch time, and images/s over the whole
    fit including the one-off feature extraction and calibration.
(b) reference-style: the same transformer fed by the frozen backbone
    recomputed every step, fp32, mask rebuilt every forward, batch 8.

Each path runs in its own process (clean peak RSS), both on ``--device``
(default ``cpu``; ``cuda`` or ``auto`` on a GPU machine), which is printed
with the ratio. Usage::

    python benchmarks/train_speed.py [--images 96] [--epochs 3] [--steps 8] [--repeats 3]
                                     [--device cpu]
    python benchmarks/train_speed.py --full      # unified fit on all of real-ad, 2 epochs
    python benchmarks/train_speed.py --breakdown # + the step alone, in phases and variants
    python benchmarks/train_speed.py --compile [--batch-size 8] [--steps 20]
                                     # the step alone, eager against torch.compile

(a) and (b) alternate for ``--repeats`` rounds, so that drifts in the speed of
a shared VM hit both alike. Prints the machine, each round, and ends with
``ratio: <a/b>``, the median of the rounds' ratios, steady state against
steady state (b's median step also leaves out its warm-up steps); the
whole-fit ratio is printed above it.

``--compile`` instead times skuniad's transformer training step alone
(forward, loss, backward, clipping, AdamW; C = 192 on 14 x 14 tokens) eagerly
and through ``torch.compile`` (``UniADDetector(compile=True)``), in fp32 and,
where the device computes it fast, in bf16: the median of ``--steps`` steps
each, the two alternating step by step, after warm-up steps that hold the
compilation (timed apart, never in the medians). It ends with
``compile ratio: fp32 <eager/compiled>, bf16 <...>``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
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


def skuniad_path(n_images: int, epochs: int, device: str = "cpu") -> dict:
    from skuniad import UniADDetector, training
    from skuniad.device import tune_cpu_runtime

    tune_cpu_runtime()
    epoch_s = []
    train_epoch = training._train_epoch

    def timed_epoch(*args, **kwargs):
        start = time.perf_counter()
        loss = train_epoch(*args, **kwargs)  # returns a float: the GPU work is done
        epoch_s.append(time.perf_counter() - start)
        return loss

    training._train_epoch = timed_epoch
    X = training_images(n_images)
    det = UniADDetector(
        backbone=BACKBONE, max_epochs=epochs, batch_size=8, device=device, random_state=0
    )
    start = time.perf_counter()
    det.fit(X)
    wall = time.perf_counter() - start
    return {
        "images": len(X),
        "epochs": epochs,
        "fit_s": wall,
        "fit_images_per_s": len(X) * epochs / wall,
        "epoch_s": statistics.median(epoch_s),
        "images_per_s": len(X) / statistics.median(epoch_s),
        "peak_rss_gb": peak_rss_gb(),
    }


def reference_path(n_images: int, steps: int, device: str = "cpu") -> dict:
    import torch
    import torch.nn.functional as F
    from _reference_style import ReferenceStyleUniAD

    from skuniad.device import tune_cpu_runtime
    from skuniad.io import check_images, iter_batches

    tune_cpu_runtime()
    torch.manual_seed(0)
    X = check_images(training_images(max(n_images, 8 * (steps + 2))))
    batches = [b for b, _ in iter_batches(X, 224, (0.5,) * 3, (0.5,) * 3, 8)]
    model = ReferenceStyleUniAD(BACKBONE, 192).to(device).train()
    model.backbone.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        feats, rec = model(batches[step % len(batches)].to(device))
        loss = F.mse_loss(rec, feats)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[2:])
    return {"step_s": step_s, "images_per_s": 8 / step_s, "peak_rss_gb": peak_rss_gb()}


_OP_GROUPS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "softmax": ("aten::_softmax", "aten::_softmax_backward_data"),
    "layer norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
}


def step_breakdown() -> dict:
    """skuniad's transformer training step alone, batch 8, split into phases.

    Variants: bf16; bf16 with each dropout mask drawn once and reused (what
    drawing the masks costs); bf16 without dropout; fp32. Phases: forward and
    loss, backward, gradient clipping and AdamW (median ms of 20 steps each).
    Then 5 bf16 steps under ``torch.profiler``: ms per step of the matrix
    products (and their GFLOP/s), softmax and LayerNorm, and a large bf16
    product's GFLOP/s for comparison.
    """
    import torch
    import torch.nn.functional as F
    from torch.profiler import profile

    from skuniad.device import flushing_denormals, tune_cpu_runtime
    from skuniad.nn import attention, dropout, transformer
    from skuniad.nn.transformer import UniADReconstruction

    tune_cpu_runtime()
    torch.manual_seed(0)
    features = torch.randn(64, 192, 14, 14)
    draw, drawn = dropout.keep_mask, {}

    def reused(x, p):
        key = (x.shape, x.dtype)
        if key not in drawn:
            drawn[key] = draw(x, p)
        return drawn[key]

    def train_step(model, optimizer, dtype, step) -> tuple[float, float, float]:
        batch = features[(step * 8) % 64 :][:8]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            reconstruction = model(batch)
        loss = F.mse_loss(reconstruction.float(), batch)
        forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        return forward - start, backward - forward, time.perf_counter() - backward

    result = {}
    for name, dtype, p, keep_mask in (
        ("bf16_masks_reused", torch.bfloat16, 0.1, reused),
        ("bf16_no_dropout", torch.bfloat16, 0.0, draw),
        ("fp32", None, 0.1, draw),
        ("bf16", torch.bfloat16, 0.1, draw),  # last: the profile below continues it
    ):
        for module in (attention, dropout, transformer):
            module.keep_mask = keep_mask
        model = UniADReconstruction(192, dropout=p).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
        with flushing_denormals():
            phases = [train_step(model, optimizer, dtype, step) for step in range(22)][2:]
        forward, backward, clip_adamw = (statistics.median(v) for v in zip(*phases, strict=True))
        result[name] = {
            "step": statistics.median(sum(phase) for phase in phases),
            "forward": forward,
            "backward": backward,
            "clip_adamw": clip_adamw,
        }
    # times from a plain profile (counting FLOPs slows the profiled ops), FLOPs from another
    with flushing_denormals():
        with profile() as timed:
            for step in range(5):
                train_step(model, optimizer, torch.bfloat16, step)
        with profile(with_flops=True) as counted:
            train_step(model, optimizer, torch.bfloat16, 5)
    result["profile_ms_per_step"] = {
        group: sum(e.self_cpu_time_total for e in timed.key_averages() if e.key in ops) / 5e3
        for group, ops in _OP_GROUPS.items()
    }
    products = _OP_GROUPS["matrix products"]
    flops = sum(e.flops for e in counted.key_averages() if e.key in products)
    result["products_gflop_per_step"] = flops / 1e9
    result["products_gflop_per_s"] = flops / result["profile_ms_per_step"]["matrix products"] / 1e6
    large = torch.randn(4096, 4096, dtype=torch.bfloat16)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        large @ large
        timings.append(time.perf_counter() - start)
    result["large_bf16_product_gflop_per_s"] = 2 * 4096**3 / statistics.median(timings) / 1e9
    return result


def steady_epoch_seconds(epoch_ends: list[float]) -> float:
    """Median seconds of the epochs after the first, from their end times.

    The first epoch warms up (kernels, allocator, the cache's copy to the
    GPU): it ends the timing's start, it is not one of the timed epochs.
    """
    return statistics.median(end - start for start, end in itertools.pairwise(epoch_ends))


def compile_speed(
    batch_size: int = 8,
    steps: int = 20,
    device: str = "cpu",
    *,
    warmup: int = 3,
    channels: int = 192,
    grid: int = 14,
    **model_options,
) -> dict:
    """The transformer training step, eager against compiled, per precision (see the docstring).

    Returns, per precision name, the median ``eager`` and ``compiled`` step
    seconds, their ``ratio`` and the compiled side's ``warmup_s`` (its first
    ``warmup`` steps: the compilation).
    """
    import torch
    import torch.nn.functional as F

    from skuniad.device import (
        autocast,
        flushing_denormals,
        resolve_device,
        resolve_precision,
        tune_cpu_runtime,
    )
    from skuniad.nn.transformer import UniADReconstruction

    tune_cpu_runtime()
    where = resolve_device(device)
    precisions = {"fp32": None}
    if resolve_precision("auto", where) is not None:  # bf16 only where it is fast
        precisions["bf16"] = torch.bfloat16
    torch.manual_seed(0)
    features = torch.randn(4 * batch_size, channels, grid, grid, device=where)

    def trainer(compiled: bool):
        torch.manual_seed(0)
        model = UniADReconstruction(channels, (grid, grid), **model_options).to(where).train()
        network = torch.compile(model) if compiled else model
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=1e-4, weight_decay=1e-4, fused=where.type in ("cpu", "cuda")
        )

        def step(index: int, dtype) -> float:
            batch = features[(index % 4) * batch_size :][:batch_size]
            synchronize(str(where))
            start = time.perf_counter()
            with autocast(where, dtype):
                reconstruction = network(batch)
            loss = F.mse_loss(reconstruction.float(), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()
            synchronize(str(where))
            return time.perf_counter() - start

        return step

    result = {}
    with flushing_denormals():
        for name, dtype in precisions.items():
            eager, compiled = trainer(False), trainer(True)
            for index in range(warmup):
                eager(index, dtype)
            warmup_s = sum(compiled(index, dtype) for index in range(warmup))
            times = {"eager": [], "compiled": []}
            for index in range(warmup, warmup + steps):  # alternating: drifts hit both alike
                times["eager"].append(eager(index, dtype))
                times["compiled"].append(compiled(index, dtype))
            medians = {side: statistics.median(t) for side, t in times.items()}
            result[name] = {
                **medians,
                "ratio": medians["eager"] / medians["compiled"],
                "warmup_s": warmup_s,
            }
    return result


def gpu_projection() -> dict:
    """On CUDA: epoch time for 3,629 images at 224 px with tf_efficientnet_b4 (random)."""
    import torch

    from skuniad.nn.backbone import FrozenBackbone
    from skuniad.nn.transformer import UniADReconstruction
    from skuniad.training import train_reconstruction

    device = torch.device("cuda")
    n = 3629
    backbone = FrozenBackbone("tf_efficientnet_b4", (0, 1, 2, 3), None).to(device)
    backbone.to(memory_format=torch.channels_last)
    images = torch.randn(64, 3, 224, 224, device=device)
    torch.cuda.synchronize()
    start = time.perf_counter()
    feats = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range((n + 63) // 64):
            feats.append(backbone(images.contiguous(memory_format=torch.channels_last)).float())
    torch.cuda.synchronize()
    extract_s = time.perf_counter() - start
    features = torch.cat(feats)[:n].cpu()
    model = UniADReconstruction(features.shape[1])
    epoch_ends: list[float] = []  # the loss is read back after each epoch: the GPU is done
    train_reconstruction(
        model,
        features,
        max_epochs=3,
        batch_size=8,
        learning_rate=1e-4,
        weight_decay=1e-4,
        grad_clip=0.1,
        device=device,
        amp_dtype=torch.bfloat16,
        on_epoch_end=lambda epoch, loss: epoch_ends.append(time.perf_counter()),
    )
    epoch_s = steady_epoch_seconds(epoch_ends)
    return {
        "extract_s": extract_s,
        "epoch_s": epoch_s,
        "projected_1000_epochs_min": (extract_s + 1000 * epoch_s) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps: 8 for (b), 20 with --compile"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (a) then (b)")
    parser.add_argument("--full", action="store_true", help="all of real-ad, 2 epochs, (a) only")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time skuniad's step alone: phases; masks reused, no dropout, fp32",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="only time the transformer step eager against torch.compile (fp32, bf16)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="with --compile")
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda or auto: both (a) and (b) run there"
    )
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        fn = {
            "a": skuniad_path,
            "b": reference_path,
            "s": step_breakdown,
            "gpu": gpu_projection,
            "compile": compile_speed,
        }[kind]
        device = [rest.pop()] if kind in ("a", "b", "compile") else []
        print(json.dumps(fn(*map(int, rest), *device)))
        return

    import torch

    device = benchmark_device(args.device)
    print(f"machine: {machine()}")
    print(f"device: {device} for (a) and (b)")
    if args.compile:
        steps = args.steps or 20
        r = run_child(__file__, "compile", str(args.batch_size), str(steps), device)
        print(
            f"transformer training step, batch {args.batch_size}, C 192, 14 x 14 tokens: "
            f"median of {steps} steps, eager and compiled alternating, after 3 warm-up steps "
            "(the compilation, not in the medians):"
        )
        for name, t in r.items():
            print(
                f"  {name}: eager {t['eager'] * 1000:.1f} ms, compiled {t['compiled'] * 1000:.1f} "
                f"ms per step -> ratio {t['ratio']:.2f} (compilation and warm-up "
                f"{t['warmup_s']:.0f} s)"
            )
        ratios = ", ".join(f"{name} {t['ratio']:.2f}" for name, t in r.items())
        print(f"compile ratio: {ratios} (eager / compiled step time, on {device})")
        return
    steps = args.steps or 8
    if args.full:
        a = run_child(__file__, "a", "100000", "2", device)
        print(
            f"unified fit on {a['images']} images: {a['epoch_s']:.1f} s per epoch "
            f"(median; whole fit incl. features and calibration {a['fit_s']:.1f} s "
            f"for 2 epochs), peak RSS {a['peak_rss_gb']:.2f} GB"
        )
        return
    rounds = []
    for round_ in range(1, args.repeats + 1):  # a and b alternate: drifts in machine speed
        a = run_child(__file__, "a", str(args.images), str(args.epochs), device)  # hit both alike
        b = run_child(__file__, "b", str(args.images), str(steps), device)
        rounds.append((a, b))
        print(
            f"round {round_}: (a) skuniad fit, {a['images']} images x {a['epochs']} epochs in "
            f"{a['fit_s']:.1f} s -> {a['fit_images_per_s']:.1f} images/s over the whole fit; "
            f"training {a['epoch_s']:.2f} s per epoch (median) -> {a['images_per_s']:.1f} "
            f"images/s; peak RSS {a['peak_rss_gb']:.2f} GB | (b) reference-style "
            f"{b['step_s']:.3f} s per batch-8 step (median of {steps}) -> "
            f"{b['images_per_s']:.1f} images/s, peak RSS {b['peak_rss_gb']:.2f} GB | "
            f"ratio {a['images_per_s'] / b['images_per_s']:.2f}"
        )
    if args.breakdown:
        s = run_child(__file__, "s")
        print("transformer step alone (skuniad), batch 8, median ms of 20 steps:")
        for name in ("bf16", "bf16_masks_reused", "bf16_no_dropout", "fp32"):
            t = s[name]
            print(
                f"  {name}: step {t['step'] * 1000:.0f} ({8 / t['step']:.1f} images/s) = "
                f"forward {t['forward'] * 1000:.0f} + backward {t['backward'] * 1000:.0f} + "
                f"clip and AdamW {t['clip_adamw'] * 1000:.0f}"
            )
        print(
            "  bf16 profile, ms per step: "
            + ", ".join(f"{k} {v:.0f}" for k, v in s["profile_ms_per_step"].items())
            + f"; the products ({s['products_gflop_per_step']:.0f} GFLOP) at "
            f"{s['products_gflop_per_s']:.0f} GFLOP/s, a 4096 x 4096 bf16 product at "
            f"{s['large_bf16_product_gflop_per_s']:.0f}"
        )
    if torch.cuda.is_available():
        g = run_child(__file__, "gpu")
        print(
            f"GPU: features for 3,629 images {g['extract_s']:.1f} s, epoch {g['epoch_s']:.1f} s, "
            f"projected 1000-epoch recipe {g['projected_1000_epochs_min']:.1f} min"
        )
    whole_fit = statistics.median(a["fit_images_per_s"] / b["images_per_s"] for a, b in rounds)
    a_speed = statistics.median(a["images_per_s"] for a, _ in rounds)
    b_speed = statistics.median(b["images_per_s"] for _, b in rounds)
    print(
        f"median over {len(rounds)} rounds: (a) {a_speed:.1f} images/s, (b) {b_speed:.1f} "
        f"images/s; whole-fit ratio (one-off feature extraction and calibration included) "
        f"{whole_fit:.2f}"
    )
    ratio = statistics.median(a["images_per_s"] / b["images_per_s"] for a, b in rounds)
    print(f"ratio: {ratio:.2f} (both on {device})")


if __name__ == "__main__":
    main()
