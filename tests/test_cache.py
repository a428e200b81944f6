import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skuniad import UniADDetector
from skuniad._inference import extract_features
from skuniad._spec import NetworkSpec
from skuniad.cache import FeatureCache
from skuniad.io import check_images, iter_batches
from skuniad.training import lr_decay_epoch, train_reconstruction


def test_disk_backed_cache_trains_exactly_like_the_in_memory_one(
    tiny_params, images, tmp_path, monkeypatch
):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    in_memory = UniADDetector(**tiny_params).fit(images)
    on_disk = UniADDetector(**tiny_params, cache_max_gb=0).fit(images)
    assert on_disk.loss_curve_ == in_memory.loss_curve_
    np.testing.assert_array_equal(on_disk.score_samples(images), in_memory.score_samples(images))
    assert not list(tmp_path.glob("skuniad-features-*"))  # the mapped file was unlinked


def test_cache_location_and_dtype():
    small = FeatureCache(4, (3, 2, 2), "float32", max_gb=1.0)
    assert not small.on_disk and small.nbytes == 4 * 12 * 4
    half = FeatureCache(4, (3, 2, 2), "bfloat16", max_gb=0.0)
    assert half.on_disk and half.nbytes == 4 * 12 * 2
    values = torch.randn(4, 3, 2, 2)
    half.append(values[:3])
    half.append(values[3:])
    torch.testing.assert_close(half.data.float(), values, atol=0.02, rtol=0.01)
    with pytest.raises(ValueError, match="cache dtype"):
        FeatureCache(1, (1,), "int8")


def test_half_precision_cache_stays_close_to_float32(tiny_params, images):
    full = UniADDetector(**tiny_params).fit(images)
    half = UniADDetector(**tiny_params, cache_dtype="float16").fit(images)
    np.testing.assert_allclose(half.loss_curve_, full.loss_curve_, rtol=1e-2)


def test_cached_training_equals_recomputing_the_backbone_every_step(tiny_params, images):
    """The cache changes nothing in the maths: same weights as the reference's loop."""
    det = UniADDetector(**tiny_params)
    spec = NetworkSpec.from_params(det.get_params())
    backbone = spec.build_backbone(weights=None)
    training = dict(dropout=det.dropout, jitter_scale=det.jitter_scale, jitter_prob=det.jitter_prob)
    model = spec.build_model((192, 4, 4), **training)
    fresh = spec.build_model((192, 4, 4), **training)
    fresh.load_state_dict(model.state_dict())
    X = check_images(images)
    cpu = torch.device("cpu")
    features = extract_features(
        backbone, X, image_size=64, batch_size=32, device=cpu, amp_dtype=None
    )
    torch.manual_seed(0)
    train_reconstruction(
        model,
        features,
        max_epochs=2,
        batch_size=4,
        learning_rate=1e-4,
        weight_decay=1e-4,
        grad_clip=0.1,
        device=cpu,
        amp_dtype=None,
    )

    images_tensor = torch.cat([b for b, _ in iter_batches(X, 64, backbone.mean, backbone.std, 8)])
    optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-4, weight_decay=1e-4)
    torch.manual_seed(0)
    fresh.train()
    for epoch in range(2):
        for group in optimizer.param_groups:
            # x 0.1 after the reference's StepLR(int(0.8 * 2)) step: not within 2 epochs
            group["lr"] = 1e-4 if epoch < lr_decay_epoch(2) else 1e-5
        order = torch.randperm(len(images_tensor))
        for begin in range(0, len(order), 4):
            target = backbone(images_tensor[order[begin : begin + 4]])  # recomputed every step
            loss = F.mse_loss(fresh(target), target)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(fresh.parameters(), 0.1)
            optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
