"""Masked attention on the CPU: PyTorch's fused SDPA kernel vs skuniad's CPU path.

UniAD's shapes: 8 heads, 196 tokens (14 x 14), head dim 32, the 7 x 7 neighbor
mask as an additive bias. Times the attention core alone (no projections):
inference (forward) and training (forward + backward) without and with
attention dropout 0.1, in fp32 and bf16, batch 8 and 32. Usage::

    python benchmarks/attention_speed.py

Prints the machine, a line per case (median milliseconds), and ends with
``ratio: <SDPA / skuniad>`` for bf16 training with dropout at batch 8 (UniAD's
training case).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402


def median_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def time_case(dtype, batch: int) -> dict:
    """Median ms of SDPA and skuniad's CPU path, inference and training, for one case."""
    import torch
    import torch.nn.functional as F

    from skuniad.nn.attention import _cpu_attention, attention_bias, neighbor_mask

    bias = attention_bias(neighbor_mask(14, 14, 7)).to(dtype)
    q, k, v = (torch.randn(batch, 8, 196, 32, dtype=dtype) for _ in range(3))
    grad = torch.randn_like(q)
    result = {}
    with torch.inference_mode():
        result["sdpa_inference"] = median_ms(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        )
        result["ours_inference"] = median_ms(lambda: _cpu_attention(q, k, v, bias, 0.0))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    for p in (0.0, 0.1):
        result[f"sdpa_training_p{p}"] = median_ms(
            lambda p=p: F.scaled_dot_product_attention(
                qg, kg, vg, attn_mask=bias, dropout_p=p
            ).backward(grad),
            15,
        )
        result[f"ours_training_p{p}"] = median_ms(
            lambda p=p: _cpu_attention(qg, kg, vg, bias, p).backward(grad), 15
        )
    return result


def main() -> None:
    import torch

    from skuniad.device import tune_cpu_runtime

    tune_cpu_runtime()
    torch.manual_seed(0)
    print(f"machine: {machine()}")
    ratio = None
    for dtype in (torch.float32, torch.bfloat16):
        for batch in (8, 32):
            r = time_case(dtype, batch)
            name = str(dtype).removeprefix("torch.")
            print(
                f"{name} batch {batch}: inference SDPA {r['sdpa_inference']:.2f} ms, "
                f"skuniad {r['ours_inference']:.2f} ms; training without dropout SDPA "
                f"{r['sdpa_training_p0.0']:.2f} ms, skuniad {r['ours_training_p0.0']:.2f} ms; "
                f"with dropout 0.1 SDPA {r['sdpa_training_p0.1']:.2f} ms, "
                f"skuniad {r['ours_training_p0.1']:.2f} ms"
            )
            if dtype == torch.bfloat16 and batch == 8:
                ratio = r["sdpa_training_p0.1"] / r["ours_training_p0.1"]
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
