"""The training loop: checkpoints and resume, out-of-memory messages."""

import gc
import pickle
import weakref

import numpy as np
import pytest
import torch

import skuniad.training as training
from skuniad import UniADDetector
from skuniad.device import DeviceOutOfMemoryError
from skuniad.nn.transformer import UniADReconstruction
from skuniad.training import FeatureFeed, TrainingInterrupted, features_fit_on_device


def _interrupt_at_step(monkeypatch, step: int) -> None:
    """Raise KeyboardInterrupt in the ``step``-th training step (6 images, batch 4: 2 per epoch)."""
    original = training.F.mse_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training.F, "mse_loss", loss)


def _fit_interrupted(params, images, monkeypatch, step):
    det = UniADDetector(**params)
    with monkeypatch.context() as patch:
        _interrupt_at_step(patch, step)
        with pytest.raises(TrainingInterrupted, match="interrupted"):
            det.fit(images)
    return det


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lr_schedule", "ema_decay"), [("step", None), ("cosine", None), ("cosine", 0.9)]
)
def test_resumed_training_equals_uninterrupted_training(
    tiny_params, images, tmp_path, lr_schedule, ema_decay
):
    params = {**tiny_params, "max_epochs": 4, "lr_schedule": lr_schedule, "ema_decay": ema_decay}
    uninterrupted = UniADDetector(**params).fit(images)
    params["checkpoint_interval"] = 0  # after every epoch

    checkpoint = tmp_path / "train.ckpt"
    params["checkpoint_path"] = str(checkpoint)
    with pytest.MonkeyPatch.context() as monkeypatch:
        first = _fit_interrupted(params, images, monkeypatch, step=5)  # in epoch 3
    assert first.n_epochs_ == 2 and checkpoint.exists()

    resumed = UniADDetector(**params).fit(images)  # a fresh detector, as in a new process
    assert resumed.n_epochs_ == 4
    assert resumed.loss_curve_ == uninterrupted.loss_curve_
    assert resumed.loss_curve_[:2] == first.loss_curve_
    expected = uninterrupted.model_.state_dict()
    for name, value in resumed.model_.state_dict().items():
        assert torch.equal(value, expected[name]), name
    np.testing.assert_array_equal(
        resumed.score_samples(images), uninterrupted.score_samples(images)
    )
    assert checkpoint.exists()  # until the model is written
    resumed.save(tmp_path / "model.skuniad")
    assert not checkpoint.exists()


def test_a_finished_fits_checkpoint_stays_until_save_has_written_the_model(
    tiny_params, images, tmp_path
):
    checkpoint, model = tmp_path / "train.ckpt", tmp_path / "model.skuniad"
    params = {**tiny_params, "checkpoint_path": checkpoint}
    det = UniADDetector(**params).fit(images)
    assert checkpoint.exists()  # a kill before the model file is written loses nothing
    again = UniADDetector(**params).fit(images)  # the rerun: no epoch trained again
    assert again.loss_curve_ == det.loss_curve_
    pickle.loads(pickle.dumps(again)).save(tmp_path / "copy.skuniad")
    assert checkpoint.exists()  # a copy does not own the run's checkpoint
    again.save(model)
    assert model.exists() and not checkpoint.exists()


def test_checkpoints_follow_the_timer_not_the_epoch_count(monkeypatch, tmp_path, train_tiny_model):
    now, written = [0.0], []
    monkeypatch.setattr(training.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(
        training, "save_checkpoint", lambda path, fingerprint, curve, *a: written.append(len(curve))
    )

    def forty_seconds_per_epoch(epoch, loss):
        now[0] += 40.0

    train_tiny_model(torch.randn(6, 8, 3, 3), max_epochs=5, on_epoch_end=forty_seconds_per_epoch,
                     checkpoint_path=tmp_path / "c.ckpt", checkpoint_interval=60.0)  # fmt: skip
    assert written == [3, 5]  # 80 s after the start, then the last epoch


def test_checkpoint_holds_the_training_state_every_n_epochs(tiny_params, images, tmp_path):
    checkpoint = tmp_path / "train.ckpt"
    params = {**tiny_params, "max_epochs": 5, "checkpoint_path": checkpoint, "checkpoint_every": 2}
    with pytest.MonkeyPatch.context() as monkeypatch:
        det = _fit_interrupted(params, images, monkeypatch, step=7)  # in epoch 4
    assert det.n_epochs_ == 3
    state = torch.load(checkpoint, weights_only=True)
    assert state["format"] == "skuniad-checkpoint" and state["epoch"] == 2  # not 3
    assert state["loss_curve"] == det.loss_curve_[:2]
    assert {"model", "optimizer", "scheduler", "rng_cpu", "rng_cuda"} <= set(state)
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 2
    assert state["fingerprint"]["n_images"] == len(images)
    assert state["fingerprint"]["max_epochs"] == 5
    assert "device" not in state["fingerprint"] and "checkpoint_every" not in state["fingerprint"]
    assert [p.name for p in tmp_path.iterdir()] == ["train.ckpt"]  # no temporary left


def test_checkpoint_of_another_training_is_refused_and_kept(tiny_params, images, tmp_path):
    checkpoint = tmp_path / "train.ckpt"
    params = {**tiny_params, "max_epochs": 4, "checkpoint_path": str(checkpoint)}
    params["checkpoint_interval"] = 0
    with pytest.MonkeyPatch.context() as monkeypatch:
        _fit_interrupted(params, images, monkeypatch, step=3)
    saved = checkpoint.read_bytes()
    with pytest.raises(ValueError, match="different training.*n_images=6 there, 5 here"):
        UniADDetector(**params).fit(images[:5])
    with pytest.raises(ValueError, match="learning_rate=0.0001 there, 0.001 here"):
        UniADDetector(**{**params, "learning_rate": 1e-3}).fit(images)
    assert checkpoint.read_bytes() == saved


def test_unreadable_checkpoint_is_refused_without_running_code(tiny_params, images, tmp_path):
    sentinel = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    checkpoint = tmp_path / "train.ckpt"
    for content in (pickle.dumps(Payload(), protocol=2), b"not a checkpoint"):
        checkpoint.write_bytes(content)
        with pytest.raises(ValueError, match="cannot read the training checkpoint"):
            UniADDetector(**tiny_params, checkpoint_path=str(checkpoint)).fit(images)
    assert not sentinel.exists()


@pytest.mark.slow
def test_fused_adamw_trains_as_the_plain_for_loop_adamw(monkeypatch):
    def model():
        torch.manual_seed(0)
        return UniADReconstruction(
            8, (4, 4), hidden_dim=16, num_heads=2, dim_feedforward=32, neighbor_size=3
        )

    def train(**optimizer_options):
        trained, features = model(), torch.randn(10, 8, 4, 4)
        with monkeypatch.context() as patch:
            if optimizer_options:
                plain = torch.optim.AdamW
                patch.setattr(
                    torch.optim,
                    "AdamW",
                    lambda params, **kw: plain(params, **{**kw, **optimizer_options}),
                )
            curve = training.train_reconstruction(
                trained,
                features,
                max_epochs=3,
                batch_size=4,
                learning_rate=1e-3,
                weight_decay=1e-4,
                grad_clip=0.1,
                device=torch.device("cpu"),
                amp_dtype=None,
            )
        return trained.state_dict(), curve

    fused, fused_curve = train()
    plain, plain_curve = train(fused=False, foreach=False)
    initial = model().state_dict()
    # the same updates up to float rounding (Adam divides by sqrt(v): tiny gradients
    # amplify rounding), far below what the 9 steps moved the weights
    np.testing.assert_allclose(fused_curve, plain_curve, rtol=1e-4)
    moved = max(float((plain[k] - initial[k]).abs().max()) for k in initial)
    assert moved > 5e-3
    for k in initial:
        torch.testing.assert_close(fused[k], plain[k], rtol=0, atol=moved / 100)


@pytest.mark.parametrize("max_epochs", [1, 2, 5, 10, 60, 1000])
def test_learning_rate_drops_as_the_reference_steplr(max_epochs):
    """The reference: StepLR(int(0.8 * E)) stepped with ``step(epoch)`` after each epoch."""
    step_size = max(1, int(0.8 * max_epochs))
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    # step(epoch) is deprecated (a UserWarning): skuniad computes the same rule itself
    with pytest.warns(UserWarning):
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma=0.1)
        reference = []
        for epoch in range(max_epochs):
            reference.append(optimizer.param_groups[0]["lr"])
            scheduler.step(epoch)
    decay_at = training.lr_decay_epoch(max_epochs)
    ours = [0.1 if epoch >= decay_at else 1.0 for epoch in range(max_epochs)]
    np.testing.assert_allclose(ours, reference)
    if max_epochs == 1000:
        assert decay_at == 801


@pytest.mark.slow
@pytest.mark.parametrize("lr_schedule", ["step", "cosine"])
def test_every_step_trains_at_the_schedules_rate(tiny_params, images, monkeypatch, lr_schedule):
    rates = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(training.torch.optim, "AdamW", RecordingAdamW)
    params = {**tiny_params, "max_epochs": 10, "batch_size": 4, "lr_schedule": lr_schedule}
    det = UniADDetector(**params).fit(images)  # 6 images: 2 steps per epoch
    factor = training.lr_factor(lr_schedule, 10, 2)
    counted = range(20) if lr_schedule == "cosine" else [step // 2 for step in range(20)]
    expected = [det.learning_rate * factor(count) for count in counted]
    np.testing.assert_allclose(rates, expected, rtol=1e-12)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factor = training.lr_factor("cosine", max_epochs=20, steps_per_epoch=50)  # 1000 steps
    values = np.array([factor(step) for step in range(1000)])
    warmup = round(training.WARMUP_FRACTION * 1000)
    np.testing.assert_allclose(values[:warmup], np.arange(1, warmup + 1) / warmup)
    assert values[warmup] == 1.0
    assert np.all(np.diff(values[warmup:]) < 0)
    assert values[-1] < 1e-4 and values[(1000 + warmup) // 2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lr_schedule"):
        training.lr_factor("linear", 20, 50)


@pytest.mark.slow
def test_scoring_after_every_epoch_leaves_the_fit_unchanged(tiny_params, images):
    params = {**tiny_params, "max_epochs": 3, "dropout": 0.1, "jitter_prob": 0.5}
    plain = UniADDetector(**params).fit(images)
    seen = []

    def score_now(det, epoch, loss):
        seen.append((epoch, loss, det.score_samples(images), det.model_.training))

    observed = UniADDetector(**params).fit(images, on_epoch_end=score_now)
    assert [epoch for epoch, *_ in seen] == [1, 2, 3]
    assert [loss for _, loss, *_ in seen] == observed.loss_curve_ == plain.loss_curve_
    for name, value in plain.model_.state_dict().items():
        assert torch.equal(value, observed.model_.state_dict()[name]), name
    # the last epoch's scores are the fitted model's; earlier ones differ
    np.testing.assert_array_equal(seen[-1][2], plain.score_samples(images))
    assert not np.array_equal(seen[0][2], seen[-1][2])
    assert not any(training_mode for *_, training_mode in seen)


@pytest.mark.slow
def test_a_long_training_prints_its_estimated_duration_after_the_first_epoch(
    tiny_params, images, monkeypatch, capsys
):
    monkeypatch.setattr(training, "LONG_TRAINING_SECONDS", 0.0)
    UniADDetector(**{**tiny_params, "max_epochs": 3, "verbose": 1}).fit(images)
    out = capsys.readouterr().out
    assert out.count("estimated training time") == 1
    assert "(3 epochs at" in out and "lower max_epochs (skuniad: --epochs)" in out
    assert out.index("epoch 1/3") < out.index("estimated") < out.index("epoch 2/3")
    monkeypatch.setattr(training, "LONG_TRAINING_SECONDS", 1e9)  # a short run: no estimate
    UniADDetector(**{**tiny_params, "verbose": 1}).fit(images)
    assert "estimated" not in capsys.readouterr().out


# --------------------------------------- the feature cache on a GPU (faked), out of memory
def test_cache_goes_to_the_gpu_only_when_it_fits_comfortably(monkeypatch):
    features = torch.zeros(100, 10)  # 4,000 bytes
    asked = []

    def free_memory(free):
        def mem_get_info(device=None):
            asked.append(device)
            return free, 10 * free

        return mem_get_info

    gpu = torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", free_memory(10_000))
    assert features_fit_on_device(features, gpu)
    monkeypatch.setattr(torch.cuda, "mem_get_info", free_memory(6_000))
    assert not features_fit_on_device(features, gpu)  # would fit, but not comfortably
    assert asked == [gpu, gpu]

    def unknown(device=None):
        raise RuntimeError("no NVIDIA driver")

    monkeypatch.setattr(torch.cuda, "mem_get_info", unknown)
    assert not features_fit_on_device(features, gpu)
    assert not features_fit_on_device(features, torch.device("meta"))
    assert features_fit_on_device(features, torch.device("cpu"))


def test_a_cache_that_stays_on_the_host_is_fed_batch_by_batch():
    features = torch.arange(40.0).view(10, 4)
    feed = FeatureFeed(features, torch.device("meta"))  # no free-memory figure: stay home
    assert feed.data is features and len(feed) == 10
    order = feed.order(torch.tensor([3, 1, 4, 1, 5]))
    assert order.device.type == "cpu"  # indexes the host cache
    batch = feed.batch(order[:3])
    assert batch.device.type == "meta" and batch.shape == (3, 4)


def test_a_cache_on_the_gpu_is_indexed_there(monkeypatch):
    features = torch.zeros(10, 4, device="meta")  # as if moved to the GPU already
    monkeypatch.setattr(training, "features_fit_on_device", lambda *a: True)
    feed = FeatureFeed(features, torch.device("meta"))
    assert not feed.staged and feed.order(torch.arange(3)).device.type == "meta"


def test_a_failed_move_to_the_gpu_falls_back_to_the_host(monkeypatch, cuda_oom_message):
    features = torch.zeros(10, 4)
    monkeypatch.setattr(training, "features_fit_on_device", lambda *a: True)
    to = torch.Tensor.to

    def out_of_memory(self, *args, **kwargs):
        if args and torch.device(args[0]).type == "cuda":
            raise torch.cuda.OutOfMemoryError(cuda_oom_message)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", out_of_memory)
    feed = FeatureFeed(features, torch.device("cuda", 0))
    assert feed.data is features and feed.staged


def test_staged_batches_for_a_second_gpu_are_pinned_for_that_gpu(monkeypatch, current_gpu):
    monkeypatch.setattr(training, "features_fit_on_device", lambda *a: False)
    feed = FeatureFeed(torch.arange(20.0).reshape(10, 2), torch.device("cuda", 1))
    empty, pinned_on = torch.empty, []

    def host_buffer(*args, pin_memory=False, **kwargs):
        pinned_on.append((pin_memory, current_gpu[0]))
        return empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", host_buffer)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)  # no GPU to copy to
    assert feed.batch(torch.tensor([3, 1])).tolist() == [[6, 7], [2, 3]]
    assert pinned_on == [(True, 1)] and current_gpu == [0]


def test_placing_the_cache_is_inside_the_out_of_memory_guard(
    monkeypatch, cuda_oom_message, train_tiny_model
):
    def no_room(*args):
        raise torch.cuda.OutOfMemoryError(cuda_oom_message)

    monkeypatch.setattr(training, "FeatureFeed", no_room)
    with pytest.raises(DeviceOutOfMemoryError, match="batch_size=2"):
        train_tiny_model(torch.randn(6, 8, 3, 3))


def test_the_shuffled_order_moves_once_per_epoch_not_per_step(monkeypatch, train_tiny_model):
    to, moved = torch.Tensor.to, []

    def counting(self, *args, **kwargs):
        if self.dtype == torch.int64:
            moved.append(len(self))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting)
    torch.manual_seed(0)
    train_tiny_model(torch.randn(20, 8, 3, 3), max_epochs=2, batch_size=4)  # 5 steps each
    assert moved == [20, 20]


def test_out_of_memory_releases_the_failed_fits_tensors(
    monkeypatch, tiny_params, images, recorder, cuda_oom_message
):
    alive = {}

    def failing_epoch(model, data, *args, **kwargs):
        activations = torch.ones(1000)
        alive.update(activations=weakref.ref(activations), model=weakref.ref(model))
        alive["cache"] = weakref.ref(data.data)
        raise torch.cuda.OutOfMemoryError(cuda_oom_message)

    emptied = recorder()
    monkeypatch.setattr(training, "_train_epoch", failing_epoch)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", emptied)
    with pytest.raises(DeviceOutOfMemoryError, match="try batch_size=2") as error:
        UniADDetector(**tiny_params).fit(images)
    # the error is still held (as a notebook holds the last one), its tensors are not
    gc.collect()
    assert error.value is not None
    assert {name: ref() for name, ref in alive.items()} == dict.fromkeys(alive)
    assert emptied  # the cached GPU blocks went back to the driver


def test_a_diverged_fit_raises_and_keeps_no_model(tiny_params, images):
    from skuniad import UniADDetector
    from skuniad.errors import SkuniadError
    from skuniad.training import TrainingDiverged

    det = UniADDetector(**{**tiny_params, "learning_rate": 1e30})
    with pytest.raises(TrainingDiverged, match="training diverged in epoch") as caught:
        det.fit(images)
    assert isinstance(caught.value, SkuniadError) and "learning_rate" in str(caught.value)
    assert not hasattr(det, "model_")
