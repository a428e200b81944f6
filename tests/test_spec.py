import pytest
import torch

from skuniad import UniADDetector
from skuniad._spec import NetworkSpec


def _spec(**params) -> NetworkSpec:
    return NetworkSpec.from_params(UniADDetector(**params).get_params())


@pytest.mark.parametrize(
    ("params", "grid"),
    [
        ({"backbone": "tf_efficientnet_lite0", "image_size": 72}, (5, 5)),  # "same" padding
        ({"backbone": "resnet18", "image_size": 100, "out_indices": (1, 2)}, (13, 13)),
    ],
)
def test_token_grid_on_the_meta_device_is_the_built_backbones(params, grid):
    spec = _spec(**params)
    built = spec.build_backbone(None)(torch.zeros(1, 3, spec.image_size, spec.image_size))
    assert tuple(built.shape[-2:]) == spec.token_grid() == grid


def test_check_buildable_refuses_a_window_that_hides_the_grid():
    _spec(backbone="tf_efficientnet_lite0", image_size=96, neighbor_size=5).check_buildable()
    with pytest.raises(ValueError, match="neighbor_size=7 hides every key of some query on a 6x6"):
        _spec(backbone="tf_efficientnet_lite0", image_size=96, neighbor_size=7).check_buildable()
