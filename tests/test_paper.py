"""The paper's published numbers, as the reports compare against them."""

import numpy as np
import pytest

from skuniad.paper import (
    EIGHT_GPU_RECIPE,
    MVTEC_AD,
    paper_aurocs,
    reference_steps_per_epoch,
)


def test_paper_numbers_average_to_the_papers_means():
    unified = paper_aurocs(MVTEC_AD, "unified")
    assert len(unified) == 15
    assert np.mean([v["image_auroc"] for v in unified.values()]) == pytest.approx(96.5, abs=0.05)
    assert np.mean([v["pixel_auroc"] for v in unified.values()]) == pytest.approx(96.8, abs=0.05)
    assert paper_aurocs(["grid"], "separate") == {
        "grid": {"image_auroc": 98.5, "pixel_auroc": 94.6}
    }


def test_eight_gpu_recipe_is_the_defaults_with_the_global_batch_of_64():
    from skuniad import UniADDetector

    defaults = UniADDetector().get_params()
    assert EIGHT_GPU_RECIPE["batch_size"] == 64 == 8 * defaults["batch_size"]
    assert {k: v for k, v in EIGHT_GPU_RECIPE.items() if k != "batch_size"} == {
        k: defaults[k] for k in EIGHT_GPU_RECIPE if k != "batch_size"
    }


def test_one_batch_of_64_takes_the_references_steps_for_any_number_of_images():
    assert reference_steps_per_epoch(3629) == 57  # MVTec AD's training set
    for n in range(1, 2000):
        assert len(range(0, n, 64)) == reference_steps_per_epoch(n), n


def test_eight_gpu_recipe_trains_with_the_references_steps_per_epoch(fast_params):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from skuniad import UniADDetector

    X = np.random.default_rng(0).integers(0, 256, size=(65, 32, 32, 3), dtype=np.uint8)
    steps = []
    hook = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: steps.append(optimizer.param_groups[0]["lr"])
    )
    try:
        det = UniADDetector(**{**fast_params, **EIGHT_GPU_RECIPE, "max_epochs": 2}).fit(X)
    finally:
        hook.remove()
    assert len(steps) == 2 * reference_steps_per_epoch(65) == 4  # 8 ranks x 9 images: 2 steps
    assert steps == [1e-4] * 4  # the step schedule drops after epoch 0.8 * 2 + 1
    assert det.n_epochs_ == 2
