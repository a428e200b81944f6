"""The weight average (``ema_decay``): its arithmetic, and what a fit does with it."""

import numpy as np
import pytest
import torch

from skuniad import UniADDetector
from skuniad._averaging import WeightAverage


def test_the_average_follows_the_warmed_up_decay():
    model = torch.nn.Linear(2, 1)
    model.register_buffer("counter", torch.zeros(()))
    average = WeightAverage(model, decay=0.5)
    expected = model.weight.detach().clone()
    for t in range(4):
        with torch.no_grad():
            model.weight.add_(1.0)
            model.counter.fill_(t)
        average.update()
        decay = min(0.5, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * model.weight.detach()
    torch.testing.assert_close(average.shadow["weight"], expected)
    assert average.shadow["counter"] == 3  # buffers are copied, not averaged
    assert not torch.equal(average.shadow["weight"], model.weight)


def test_applied_swaps_the_average_in_and_back():
    model = torch.nn.Linear(2, 1)
    own = model.weight.detach().clone()
    average = WeightAverage(model, decay=0.9)
    average.shadow["weight"].fill_(7.0)
    with average.applied():
        assert torch.all(model.weight == 7.0)
    assert torch.equal(model.weight, own)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_the_open_unit_interval_is_refused(decay, images):
    with pytest.raises(ValueError, match="ema_decay"):
        UniADDetector(ema_decay=decay).fit(images)


def test_a_fit_scores_with_the_average_and_trains_as_without_it(tiny_params, images):
    params = {**tiny_params, "max_epochs": 2}
    plain = UniADDetector(**params).fit(images)
    seen = []
    averaged = UniADDetector(**params, ema_decay=0.9).fit(
        images, on_epoch_end=lambda det, epoch, loss: seen.append(det.score_samples(images))
    )
    # the average only watches the training: the same steps, the same losses
    assert averaged.loss_curve_ == plain.loss_curve_
    # ... but the model keeps the averaged weights, which score differently
    weights = [name for name, _ in averaged.model_.named_parameters()]
    differing = [
        name
        for name in weights
        if not torch.equal(averaged.model_.state_dict()[name], plain.model_.state_dict()[name])
    ]
    assert differing
    scores = averaged.score_samples(images)
    assert not np.array_equal(scores, plain.score_samples(images))
    np.testing.assert_array_equal(seen[-1], scores)  # the epoch hook saw the averaged weights
