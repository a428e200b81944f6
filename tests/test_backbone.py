import pytest
import torch

from skuniad.nn.backbone import FrozenBackbone


@pytest.fixture(scope="module")
def lite0():
    return FrozenBackbone("tf_efficientnet_lite0", (0, 1, 2, 3), "imagenet")


def test_lite0_stages_align_to_stride_16_grid(lite0):
    assert lite0.channels == [16, 24, 40, 112] and lite0.out_channels == 192
    assert lite0.stride == 16
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    features = lite0(torch.randn(2, 3, 224, 224))
    assert features.shape == (2, 192, 14, 14)


def test_stages_are_bilinear_aligned_with_corners(lite0):
    x = torch.randn(1, 3, 128, 128)
    stages = lite0.body(x)
    aligned = lite0(x)
    first = stages[0]  # 64x64 -> 8x8 with align_corners=True keeps the corner values
    torch.testing.assert_close(aligned[0, :16, 0, 0], first[0, :, 0, 0])
    torch.testing.assert_close(aligned[0, :16, -1, -1], first[0, :, -1, -1])
    torch.testing.assert_close(aligned[0, -112:], stages[-1][0])


def test_backbone_is_cut_after_the_last_needed_stage(lite0):
    assert len(lite0.body.blocks) == 5  # stride-16 stage ends at timm block 4 for lite0
    shallow = FrozenBackbone("tf_efficientnet_lite0", (0, 1), None)
    assert len(shallow.body.blocks) == 2 and shallow.stride == 4


def test_backbone_stays_frozen_in_eval_mode_while_training(lite0):
    lite0.train()
    assert all(not m.training for m in lite0.body.modules())
    assert not any(p.requires_grad for p in lite0.parameters())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert not lite0(x).requires_grad
    before = {k: v.clone() for k, v in lite0.state_dict().items() if "running" in k}
    lite0(torch.randn(2, 3, 64, 64) * 10)
    for key, value in lite0.state_dict().items():
        if "running" in key:
            assert torch.equal(value, before[key])


def test_random_init_differs_from_bundled_imagenet_weights(lite0):
    random = FrozenBackbone("tf_efficientnet_lite0", (0, 1, 2, 3), None)
    key = "conv_stem.weight"
    assert not torch.equal(random.body.state_dict()[key], lite0.body.state_dict()[key])
