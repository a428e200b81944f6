"""The paper's published numbers, as the reports compare against them."""

import numpy as np
import pytest

from skuniad.paper import MVTEC_AD, paper_aurocs


def test_paper_numbers_average_to_the_papers_means():
    unified = paper_aurocs(MVTEC_AD, "unified")
    assert len(unified) == 15
    assert np.mean([v["image_auroc"] for v in unified.values()]) == pytest.approx(96.5, abs=0.05)
    assert np.mean([v["pixel_auroc"] for v in unified.values()]) == pytest.approx(96.8, abs=0.05)
    assert paper_aurocs(["grid"], "separate") == {
        "grid": {"image_auroc": 98.5, "pixel_auroc": 94.6}
    }
