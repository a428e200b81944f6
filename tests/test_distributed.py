"""Data-parallel training: torchrun with 2 CPU processes (gloo), device and backend choice
on faked GPUs, DDP in a one-process gloo group."""

import inspect
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

from skuniad import distributed, training
from skuniad.device import DeviceOutOfMemoryError
from skuniad.distributed import DistributedContext, gather_shards

SCRIPT = """
import hashlib, json, os
import numpy as np
from skuniad import UniADDetector, _fitting
splits, split = [], _fitting.validation_split
def recorded_split(*args):
    splits.append([part.tolist() for part in split(*args)])
    return splits[-1]
_fitting.validation_split = recorded_split
X = np.random.default_rng(0).integers(0, 256, (12, 40, 40, 3), dtype=np.uint8)
det = UniADDetector(**{params!r}).fit(X)
state = {{**det.backbone_.state_dict(), **det.model_.state_dict()}}
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
out = {{"digest": digest, "offset": det.offset_, "threshold": det.pixel_threshold_,
        "curve": det.loss_curve_, "scores": det.score_samples(X).tolist(), "splits": splits}}
with open(os.path.join({out!r}, "rank" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump(out, f)
from skuniad.distributed import finish
finish()
"""


@pytest.mark.slow
def test_torchrun_ranks_hold_out_the_same_images_and_train_identical_weights_unseeded(
    tmp_path, tiny_params
):
    # no random_state: each rank's own draw would split and build the networks differently
    params = {**tiny_params, "random_state": None, "validation_fraction": 0.5}
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT.format(params=params, out=str(tmp_path)))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(script),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["splits"] == rank1["splits"] and len(rank0["splits"][0][1]) == 6
    assert rank0["digest"] == rank1["digest"]  # backbone (random weights) and model
    assert rank0["offset"] == rank1["offset"] and rank0["threshold"] == rank1["threshold"]
    assert rank0["curve"] == rank1["curve"] and len(rank0["curve"]) == 2
    np.testing.assert_array_equal(rank0["scores"], rank1["scores"])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_image_once_and_gather_in_order(world):
    contexts = [DistributedContext(rank, world, rank) for rank in range(world)]
    shards = [c.shard(10) for c in contexts]
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert gather_shards(np.arange(4.0), None).tolist() == [0, 1, 2, 3]


@pytest.mark.slow
def test_torchrun_cli_fit_writes_one_model_from_rank_zero(tmp_path):
    from PIL import Image

    from skuniad import UniADDetector

    data = tmp_path / "good"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / f"{i}.png")
    model = tmp_path / "model.skuniad"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "skuniad",
        "fit",
        str(data),
        "--output",
        str(model),
        "--epochs",
        "1",
        "--backbone",
        "tf_efficientnet_lite0",
        "--backbone-weights",
        "none",
        "--image-size",
        "64",
        "--hidden-dim",
        "32",
        "--num-heads",
        "2",
        "--encoder-layers",
        "1",
        "--decoder-layers",
        "1",
        "--feedforward-dim",
        "64",
        "--neighbor-size",
        "1",
        "--quiet",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("model written to") == 1
    assert UniADDetector.load(model).n_epochs_ == 1


# ------------------------------------------- torchrun devices and backends (CUDA faked)
@pytest.fixture
def torchrun_env(monkeypatch, recorder):
    """The environment torchrun gives a rank, and a recorded process-group start."""

    def setup(rank, world, local_rank, local_world=None):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        if local_world is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
        init, set_device = recorder(), recorder()
        monkeypatch.setattr(dist, "is_initialized", lambda: False)
        monkeypatch.setattr(dist, "init_process_group", init)
        monkeypatch.setattr(dist, "get_rank", lambda *a: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda *a: world)
        monkeypatch.setattr(torch.cuda, "set_device", set_device)
        return init, set_device

    return setup


def test_each_rank_uses_its_own_gpu_current_and_bound(gpus, torchrun_env):
    gpus(count=4, capabilities=[(8, 0)] * 4)
    init, set_device = torchrun_env(rank=5, world=8, local_rank=1, local_world=4)
    context = distributed.distributed_context(torch.device("cuda", 0))
    assert context.device == torch.device("cuda", 1)
    # the gather and the barrier after training run on the current device
    assert set_device == [((torch.device("cuda", 1),), {})]
    assert init == [((), {"backend": "nccl", "device_id": torch.device("cuda", 1)})]


def test_one_visible_gpu_per_process_is_cuda_0(gpus, torchrun_env):
    # per-task CUDA_VISIBLE_DEVICES: LOCAL_RANK 3 sees one GPU, index 0
    gpus(count=1)
    init, set_device = torchrun_env(rank=3, world=4, local_rank=3)
    context = distributed.distributed_context(torch.device("cuda", 0))
    assert context.device == torch.device("cuda", 0)
    assert init[0][1] == {"backend": "nccl", "device_id": torch.device("cuda", 0)}


def test_every_node_picks_nccl_whatever_its_gpu_and_process_counts(gpus, torchrun_env):
    # 4 processes on a node, each seeing only its own GPU (CUDA_VISIBLE_DEVICES per task)
    gpus(count=1)
    init, _ = torchrun_env(rank=5, world=8, local_rank=1, local_world=4)
    distributed.distributed_context(torch.device("cuda", 0))
    assert init == [((), {"backend": "nccl", "device_id": torch.device("cuda", 0)})]


def test_ranks_sharing_one_gpu_need_gloo_named_and_are_told_so(gpus, torchrun_env, monkeypatch):
    gpus(count=1)
    init, _ = torchrun_env(rank=1, world=2, local_rank=1, local_world=2)

    def nccl_refuses(**options):
        raise dist.DistBackendError("ncclInvalidUsage: Duplicate GPU detected : rank 1 and rank 0")

    monkeypatch.setattr(dist, "init_process_group", nccl_refuses)
    with pytest.raises(ValueError, match="share one GPU.*SKUNIAD_DIST_BACKEND=gloo"):
        distributed.distributed_context(torch.device("cuda", 0))
    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setenv("SKUNIAD_DIST_BACKEND", "gloo")
    assert distributed.distributed_context(torch.device("cuda", 0)).device.index == 0
    assert init == [((), {"backend": "gloo"})]


class _GroupStarted(Exception):
    """Raised by a stand-in init_process_group: the test needs only its arguments."""


def test_torchrun_cli_fit_on_gpus_starts_nccl_bound_to_its_gpu(
    gpus, torchrun_env, monkeypatch, images, image_files, tmp_path, tiny_args
):
    from typer.testing import CliRunner

    from skuniad.cli import _common, app

    gpus(count=2, capabilities=[(8, 0)] * 2)
    _, set_device = torchrun_env(rank=1, world=2, local_rank=1, local_world=2)
    started = []

    def init_process_group(**options):
        started.append((options, list(set_device)))
        raise _GroupStarted

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(_common, "_tune_runtime", lambda threads=None: None)
    image_files(images)
    output = tmp_path / "out" / "model.skuniad"
    result = CliRunner().invoke(
        app, ["fit", str(tmp_path), "-o", str(output), "--device", "cuda", *tiny_args]
    )
    assert isinstance(result.exception, _GroupStarted), result.output
    cuda_1 = torch.device("cuda", 1)
    # the first group is the training's: NCCL on this rank's GPU, already made current
    assert started == [({"backend": "nccl", "device_id": cuda_1}, [((cuda_1,), {})])]


def test_backend_follows_the_device_not_the_machine(gpus, torchrun_env):
    gpus(count=2, capabilities=[(8, 0)] * 2)  # a GPU machine, but --device cpu
    init, set_device = torchrun_env(rank=0, world=2, local_rank=0, local_world=2)
    context = distributed.distributed_context(torch.device("cpu"))
    assert context.device == torch.device("cpu")
    assert init == [((), {"backend": "gloo"})] and set_device == []


def test_a_cpu_fit_in_an_nccl_group_says_why(gpus, torchrun_env, monkeypatch):
    torchrun_env(rank=0, world=2, local_rank=0)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    with pytest.raises(ValueError, match="nccl, which cannot train on the CPU"):
        distributed.distributed_context(torch.device("cpu"))


@pytest.fixture
def gloo_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_ddp_does_not_rebroadcast_the_constant_mask(gloo_group, monkeypatch, train_tiny_model):
    from torch.nn.parallel import DistributedDataParallel

    built = []

    class Recording(DistributedDataParallel):
        def __init__(self, *args, **kwargs):
            built.append(kwargs)
            super().__init__(*args, **kwargs)

    # keeps the real signature, which the training loop reads to name the option
    Recording.__signature__ = inspect.signature(DistributedDataParallel)

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", Recording)
    train_tiny_model(torch.randn(6, 8, 3, 3), distributed=True)
    options = built[0]
    assert options.get("forward_sync_buffers", options.get("broadcast_buffers")) is False


def test_ctrl_c_in_distributed_training_waits_for_the_epoch_end(gloo_group, train_tiny_model):
    epochs, after_signal = [], []

    def on_epoch_end(epoch, loss):
        epochs.append(epoch)
        os.kill(os.getpid(), signal.SIGINT)
        after_signal.append(epoch)  # not reached if the signal raised here

    handler = signal.getsignal(signal.SIGINT)
    try:
        train_tiny_model(torch.randn(6, 8, 3, 3), max_epochs=3, distributed=True,
               on_epoch_end=on_epoch_end)  # fmt: skip
    except KeyboardInterrupt:  # whether fit warns or re-raises is not decided here
        pass
    assert epochs == after_signal == [0]  # every rank stops after the same epoch
    assert signal.getsignal(signal.SIGINT) is handler
    assert dist.is_initialized()  # a coordinated stop keeps the group for calibration


def test_an_error_on_one_rank_aborts_its_process_group(
    gloo_group, monkeypatch, cuda_oom_message, train_tiny_model
):
    def failing_epoch(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(cuda_oom_message)

    monkeypatch.setattr(training, "_train_epoch", failing_epoch)
    with pytest.raises(DeviceOutOfMemoryError):
        train_tiny_model(torch.randn(6, 8, 3, 3), distributed=True)
    assert not dist.is_initialized()  # the peers' collectives fail instead of waiting


STOP_SCRIPT = """
import json, os, signal
import numpy as np
from skuniad import UniADDetector, training
from skuniad.distributed import finish

rank, epochs = int(os.environ["RANK"]), []
train_epoch = training._train_epoch

def epoch(*args, **kwargs):
    epochs.append(train_epoch(*args, **kwargs))
    if rank == 1 and len(epochs) == 1:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches this rank only
    return epochs[-1]

training._train_epoch = epoch
X = np.random.default_rng(0).integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)
outcome = "returned"
try:
    UniADDetector(**{params!r}).fit(X)
except KeyboardInterrupt:
    outcome = "raised"
with open(os.path.join({out!r}, "rank%d.json" % rank), "w") as f:
    json.dump({{"epochs": len(epochs), "outcome": outcome}}, f)
finish()
"""


@pytest.mark.slow
def test_torchrun_ctrl_c_on_one_rank_stops_every_rank_after_the_same_epoch(tmp_path, tiny_params):
    script = tmp_path / "stop.py"
    params = {**tiny_params, "max_epochs": 3}
    script.write_text(STOP_SCRIPT.format(params=params, out=str(tmp_path)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, "--standalone", str(script)], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["epochs"] == 1
