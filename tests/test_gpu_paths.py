"""The CUDA-only code paths, checked on a CPU (issue 16).

No GPU runs these tests: ``torch.cuda`` queries are monkeypatched, the
``meta`` device stands in for an accelerator (a tensor there has no values,
so any code that reads one back fails), and distributed behaviour runs in a
one-process gloo group or under torchrun with two CPU processes.
"""

import gc
import inspect
import os
import signal
import weakref

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from skuniad import UniADDetector, distributed, io, training
from skuniad.device import DeviceOutOfMemoryError, resolve_device, resolve_precision
from skuniad.nn.attention import MaskedMultiheadAttention, attention_bias, neighbor_mask
from skuniad.nn.jitter import feature_jitter
from skuniad.nn.transformer import UniADReconstruction
from skuniad.training import FeatureFeed, features_fit_on_device, train_reconstruction

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 16 GiB"


class Calls(list):
    """A stand-in function that records its calls and returns ``result``."""

    def __init__(self, result=None):
        super().__init__()
        self.result = result

    def __call__(self, *args, **kwargs):
        self.append((args, kwargs))
        return self.result


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has GPUs; returns a setter for their count and capabilities."""

    def setup(count=1, capabilities=((8, 0),), current=0):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)

        def capability(device=None):
            index = device if isinstance(device, int) else torch.device(device).index
            return capabilities[index]

        monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
        # emulated bf16 counts here: precision="auto" must not ask it
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    return setup


@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment torchrun gives a rank, and a recorded process-group start."""

    def setup(rank, world, local_rank, local_world=None):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        if local_world is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
        init, set_device = Calls(), Calls()
        monkeypatch.setattr(dist, "is_initialized", lambda: False)
        monkeypatch.setattr(dist, "init_process_group", init)
        monkeypatch.setattr(dist, "get_rank", lambda *a: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda *a: world)
        monkeypatch.setattr(torch.cuda, "set_device", set_device)
        return init, set_device

    return setup


# ----------------------------------------------------------- 1, 2: torchrun devices
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


def test_ranks_sharing_one_gpu_use_gloo(gpus, torchrun_env):
    gpus(count=1)
    init, _ = torchrun_env(rank=1, world=2, local_rank=1, local_world=2)
    assert distributed.distributed_context(torch.device("cuda", 0)).device.index == 0
    assert init == [((), {"backend": "gloo"})]  # NCCL rejects two ranks on one GPU


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


# ------------------------------------------------------------------ 6: precision
def test_auto_precision_uses_the_chosen_gpus_compute_capability(gpus):
    gpus(count=2, capabilities=[(9, 0), (7, 0)])  # an H100 and a V100
    assert resolve_precision("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert resolve_precision("auto", torch.device("cuda", 1)) is None  # emulated bf16: fp32
    assert resolve_precision("bf16", torch.device("cuda", 1)) is torch.bfloat16


def test_cuda_devices_resolve_to_an_index(gpus):
    gpus(count=3, capabilities=[(8, 0)] * 3, current=2)
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="has 3 CUDA device"):
        resolve_device("cuda:3")


def test_fit_forks_the_rng_of_the_gpu_in_use(gpus, monkeypatch, tiny_params, images):
    gpus(count=2, capabilities=[(8, 0)] * 2, current=1)
    forked = Calls()

    def fork_rng(*args, **kwargs):
        forked.append(kwargs)
        raise RuntimeError("stop here: the rest needs a real GPU")

    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    det = UniADDetector(**{**tiny_params, "device": "cuda", "precision": "fp32"})
    with pytest.raises(RuntimeError, match="stop here"):
        det.fit(images)
    assert forked[0]["devices"] == [1]


def test_info_reports_bf16_from_compute_capability(gpus, monkeypatch):
    from typer.testing import CliRunner

    from skuniad.cli import app

    gpus(count=2, capabilities=[(7, 0), (9, 0)])
    names = ["Tesla V100-SXM2-16GB", "NVIDIA H100"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: names[i])
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "cuda:0 Tesla V100-SXM2-16GB (compute capability 7.0, bf16: no)" in result.output
    assert "cuda:1 NVIDIA H100 (compute capability 9.0, bf16: yes)" in result.output


# ------------------------------------------------------------- 3: the feature cache
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


def test_a_failed_move_to_the_gpu_falls_back_to_the_host(monkeypatch):
    features = torch.zeros(10, 4)
    monkeypatch.setattr(training, "features_fit_on_device", lambda *a: True)
    to = torch.Tensor.to

    def out_of_memory(self, *args, **kwargs):
        if args and torch.device(args[0]).type == "cuda":
            raise torch.cuda.OutOfMemoryError(CUDA_OOM)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", out_of_memory)
    feed = FeatureFeed(features, torch.device("cuda", 0))
    assert feed.data is features and feed.staged


def _train(model, features, **options):
    settings = dict(
        max_epochs=1,
        batch_size=4,
        learning_rate=1e-3,
        weight_decay=0.0,
        grad_clip=0.1,
        device=torch.device("cpu"),
        amp_dtype=None,
    )
    return train_reconstruction(model, features, **{**settings, **options})


def _tiny_model(channels=8):
    return UniADReconstruction(
        channels,
        (3, 3),
        hidden_dim=8,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=16,
        neighbor_size=1,
    )


def test_placing_the_cache_is_inside_the_out_of_memory_guard(monkeypatch):
    def no_room(*args):
        raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(training, "FeatureFeed", no_room)
    with pytest.raises(DeviceOutOfMemoryError, match="batch_size=2"):
        _train(_tiny_model(), torch.randn(6, 8, 3, 3))


# ------------------------------------------------------------- 5: one copy per epoch
def test_the_shuffled_order_moves_once_per_epoch_not_per_step(monkeypatch):
    to, moved = torch.Tensor.to, []

    def counting(self, *args, **kwargs):
        if self.dtype == torch.int64:
            moved.append(len(self))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting)
    torch.manual_seed(0)
    _train(_tiny_model(), torch.randn(20, 8, 3, 3), max_epochs=2, batch_size=4)  # 5 steps each
    assert moved == [20, 20]


# ------------------------------------------------- out-of-memory: release everything
def test_out_of_memory_releases_the_failed_fits_tensors(monkeypatch, tiny_params, images):
    alive = {}

    def failing_epoch(model, data, *args, **kwargs):
        activations = torch.ones(1000)
        alive.update(activations=weakref.ref(activations), model=weakref.ref(model))
        alive["cache"] = weakref.ref(data.data)
        raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    emptied = Calls()
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


# --------------------------------------------------------------- latent defects
def test_attention_bias_is_built_on_the_masks_device():
    mask = neighbor_mask(3, 3, 1).to("meta")
    assert attention_bias(mask).device.type == "meta"


def test_shared_queries_reach_fused_attention_contiguous_off_the_cpu(monkeypatch):
    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        seen.append((q.device.type, q.stride()))
        return sdpa(q, k, v, **kwargs) if q.device.type == "cpu" else torch.empty_like(q)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    attention = MaskedMultiheadAttention(8, 2).eval()
    for device in ("cpu", "meta"):
        attention.to(device)
        query, memory = torch.randn(1, 9, 8, device=device), torch.randn(3, 9, 8, device=device)
        attention(query, memory, memory)
    (cpu, cpu_strides), (meta, meta_strides) = seen
    assert cpu_strides[0] == 0  # on the CPU the shared query is still not copied
    assert meta == "meta" and 0 not in meta_strides


def test_jitter_never_reads_back_from_the_device():
    tokens = torch.randn(2, 9, 8, device="meta")  # .item() on meta raises
    torch.manual_seed(0)
    results = [feature_jitter(tokens, 20.0, 0.5) for _ in range(8)]
    assert all(r.device.type == "meta" for r in results)
    assert any(r is tokens for r in results) and any(r is not tokens for r in results)


def test_jitter_accepts_a_cpu_generator_for_device_tokens():
    tokens = torch.randn(2, 9, 8, device="meta")
    generator = torch.Generator().manual_seed(0)
    assert feature_jitter(tokens, 20.0, 1.0, generator).device.type == "meta"
    cpu = torch.randn(2, 9, 8)
    first = feature_jitter(cpu, 20.0, 0.5, torch.Generator().manual_seed(3))
    again = feature_jitter(cpu, 20.0, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_decoded_images_are_pinned_for_a_gpu(monkeypatch):
    made = []

    class Loader(torch.utils.data.DataLoader):
        def __init__(self, *args, pin_memory=False, **kwargs):
            made.append(pin_memory)
            super().__init__(*args, pin_memory=False, **kwargs)  # no GPU to pin for here

    monkeypatch.setattr(torch.utils.data, "DataLoader", Loader)
    X = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    for device in ("cuda", "cpu"):
        list(io.iter_batches(X, 16, (0.5,) * 3, (0.5,) * 3, 2, torch.device(device)))
    assert made == [True, False]


def test_torchrun_ranks_decode_on_their_own_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert io.decoding_cores() == [4, 5, 6, 7]
    assert io.decoding_workers("cuda") == 3  # 4 cores, one for the rank's own process
    pinned = Calls()
    monkeypatch.setattr(os, "sched_setaffinity", pinned, raising=False)
    io._keep_worker_on([4, 5, 6, 7], worker_id=0)
    assert pinned == [((0, [4, 5, 6, 7]), {})]
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert io.decoding_cores() == list(range(16))


# ------------------------------------------- DDP in a one-process gloo group (CPU)
@pytest.fixture
def gloo_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_ddp_does_not_rebroadcast_the_constant_mask(gloo_group, monkeypatch):
    from torch.nn.parallel import DistributedDataParallel

    built = []

    class Recording(DistributedDataParallel):
        def __init__(self, *args, **kwargs):
            built.append(kwargs)
            super().__init__(*args, **kwargs)

    # keeps the real signature, which the training loop reads to name the option
    Recording.__signature__ = inspect.signature(DistributedDataParallel)

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", Recording)
    _train(_tiny_model(), torch.randn(6, 8, 3, 3), distributed=True)
    options = built[0]
    assert options.get("forward_sync_buffers", options.get("broadcast_buffers")) is False


def test_ctrl_c_in_distributed_training_waits_for_the_epoch_end(gloo_group):
    epochs, after_signal = [], []

    def on_epoch_end(epoch, loss):
        epochs.append(epoch)
        os.kill(os.getpid(), signal.SIGINT)
        after_signal.append(epoch)  # not reached if the signal raised here

    handler = signal.getsignal(signal.SIGINT)
    try:
        _train(_tiny_model(), torch.randn(6, 8, 3, 3), max_epochs=3, distributed=True,
               on_epoch_end=on_epoch_end)  # fmt: skip
    except KeyboardInterrupt:  # whether fit warns or re-raises is not decided here
        pass
    assert epochs == after_signal == [0]  # every rank stops after the same epoch
    assert signal.getsignal(signal.SIGINT) is handler
    assert dist.is_initialized()  # a coordinated stop keeps the group for calibration


def test_an_error_on_one_rank_aborts_its_process_group(gloo_group, monkeypatch):
    def failing_epoch(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(training, "_train_epoch", failing_epoch)
    with pytest.raises(DeviceOutOfMemoryError):
        _train(_tiny_model(), torch.randn(6, 8, 3, 3), distributed=True)
    assert not dist.is_initialized()  # the peers' collectives fail instead of waiting


STOP_SCRIPT = """
import json, os, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
from conftest import TINY
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
    UniADDetector(**{{**TINY, "max_epochs": 3}}).fit(X)
except KeyboardInterrupt:
    outcome = "raised"
with open(os.path.join({out!r}, "rank%d.json" % rank), "w") as f:
    json.dump({{"epochs": len(epochs), "outcome": outcome}}, f)
finish()
"""


def test_torchrun_ctrl_c_on_one_rank_stops_every_rank_after_the_same_epoch(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, "--standalone", str(script)], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["epochs"] == 1
