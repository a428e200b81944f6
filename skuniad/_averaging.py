"""An exponential moving average of the weights, for ``UniADDetector(ema_decay=...)``.

Training updates the average after every optimizer step; the detector then
scores with the averaged weights instead of the last step's. The training
state (checkpoints, the optimizer) keeps the raw weights: the average is a
second copy, saved beside them in a checkpoint so that a resumed training
averages exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """A shadow copy of ``model``'s state, pulled towards it by :meth:`update`.

    After ``t`` updates the pull uses the decay ``min(decay, (1 + t) / (10 + t))``:
    the early average follows the fast-changing first steps instead of
    remembering the random initialisation for ``1 / (1 - decay)`` steps.
    Floating-point parameters are averaged; buffers (the neighbor mask) and
    integer tensors are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the averaging decay must be in (0, 1), got {decay!r}")
        self.model = model
        self.decay = decay
        self.updates = 0
        self.shadow = {name: value.detach().clone() for name, value in model.state_dict().items()}
        self._averaged = {name for name, _ in model.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights by one step."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for name, value in self.model.state_dict().items():
            if name in self._averaged and value.is_floating_point():
                self.shadow[name].lerp_(value, 1.0 - decay)
            else:
                self.shadow[name].copy_(value)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own after it."""
        own = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            self.model.load_state_dict(own)

    def state_dict(self) -> dict:
        """What a checkpoint stores to resume the average."""
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
