"""torchrun with 2 CPU processes (gloo): identical weights on every rank."""

import json
import subprocess
import sys

import numpy as np
import pytest

from skuniad.distributed import DistributedContext, gather_shards

SCRIPT = """
import hashlib, json, os
import numpy as np
from skuniad import UniADDetector
X = np.random.default_rng(0).integers(0, 256, (7, 40, 40, 3), dtype=np.uint8)
det = UniADDetector(**{params!r}).fit(X)
state = det.model_.state_dict()
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
out = {{"digest": digest, "offset": det.offset_, "threshold": det.pixel_threshold_,
        "curve": det.loss_curve_, "scores": det.score_samples(X).tolist()}}
with open(os.path.join({out!r}, "rank" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump(out, f)
from skuniad.distributed import finish
finish()
"""


def test_torchrun_two_cpu_processes_train_identical_weights(tmp_path, tiny_params):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT.format(params=tiny_params, out=str(tmp_path)))
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
    assert rank0["digest"] == rank1["digest"]
    assert rank0["offset"] == rank1["offset"] and rank0["threshold"] == rank1["threshold"]
    assert rank0["curve"] == rank1["curve"] and len(rank0["curve"]) == 2
    np.testing.assert_array_equal(rank0["scores"], rank1["scores"])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_image_once_and_gather_in_order(world):
    contexts = [DistributedContext(rank, world, rank) for rank in range(world)]
    shards = [c.shard(10) for c in contexts]
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert gather_shards(np.arange(4.0), None).tolist() == [0, 1, 2, 3]


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
