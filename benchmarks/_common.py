"""Shared helpers for the benchmark scripts: machine description, data, malloc."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

REAL_AD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-ad"


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, {gpu}"


def training_images(n: int) -> list:
    """``n`` real training images (real-ad, all categories) or synthetic ones if absent."""
    if REAL_AD.is_dir():
        from skuniad.datasets import load_mvtec

        paths = load_mvtec(REAL_AD, "train").paths
        step = max(1, len(paths) // n)
        return [str(p) for p in paths[::step][:n]]
    from skuniad.datasets import make_synthetic

    return make_synthetic("train", n_per_category=max(1, n // 4), image_size=224).images[:n]


def benchmark_device(name: str) -> str:
    """``--device`` resolved: ``"auto"`` is CUDA when available, else the CPU.

    Both sides of a ratio run on this device (a GPU against a CPU is no
    comparison), and the scripts print it.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_child(script: str, *args: str) -> dict:
    """Run ``script --child ARGS`` in a fresh process; it prints one JSON line last."""
    out = subprocess.run(
        [sys.executable, script, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
