"""Data-parallel workers change how fast a run trains, not what it produces: the configured batch stays
the global batch (each worker draws its share), the learning rate stays as configured, logged loss is
the run's (averaged over workers), and only rank 0 fits and saves. Two gloo processes on the CPU."""

from __future__ import annotations

import os
import statistics

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from cutpaste.config import TrainConfig
from cutpaste.errors import ConfigError
from cutpaste.presets import preset
from cutpaste.train.loop import TrainHooks, train_model
from infra.local.services import free_port

pytestmark = pytest.mark.slow
STEPS, LOG_EVERY = 60, 10
# Same seed, same global batch, different random streams per worker: the curves agree statistically.
# Measured: second-half mean loss 0.93 with 2 workers against 0.80 with 1 (seeds 0-2 of one worker
# spread 0.80-0.87); on CPU each worker normalises its own share (SyncBatchNorm is CUDA-only).
LOSS_TOLERANCE = 0.15


def _config() -> TrainConfig:
    return preset("ci").override({"steps": STEPS, "log_every": LOG_EVERY, "checkpoint_every": 10**6, "batch_size": 8})


def _images() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])
    noise = torch.rand(24, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.2
    return ((base + noise).clamp(0, 1) * 255).to(torch.uint8)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        hooks = TrainHooks(wrap_model=DistributedDataParallel, rank=rank, world_size=world)
        result = train_model(_config(), _images(), device="cpu", hooks=hooks, progress=False)
        state = {k.removeprefix("module."): v for k, v in result.model.state_dict().items()}
        torch.save({"history": result.history, "state": state, "local_batch": result.local_batch}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_workers_end_with_the_loss_curve_of_one(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train_model(_config(), _images(), device="cpu", progress=False).history
    finally:
        torch.set_num_threads(before)
    out = str(tmp_path / "run")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    double = ranks[0]["history"]
    assert [r["step"] for r in double] == [r["step"] for r in single]
    assert [r["lr"] for r in double] == pytest.approx([r["lr"] for r in single]), "the schedule is the configured one"
    # The logged loss is the run's: both ranks log the same averaged record.
    assert [r["loss"] for r in ranks[1]["history"]] == pytest.approx([r["loss"] for r in double])
    assert [r["local_batch"] for r in ranks] == [4, 4], "the configured batch of 8 is the global batch"
    half = len(single) // 2
    one = statistics.fmean(r["loss"] for r in single[half:])
    two = statistics.fmean(r["loss"] for r in double[half:])
    print(f"loss 1 worker {[round(r['loss'], 3) for r in single]}, 2 workers {[round(r['loss'], 3) for r in double]}")
    assert abs(one - two) <= LOSS_TOLERANCE
    for name, value in ranks[0]["state"].items():  # DDP keeps the workers' weights identical
        if "running_" not in name and value.is_floating_point():  # BN buffers: each worker's own share
            torch.testing.assert_close(ranks[1]["state"][name], value, rtol=1e-5, atol=1e-6)


def test_a_batch_too_small_to_share_is_refused():
    with pytest.raises(ConfigError, match="batch_size"):
        train_model(_config().override({"batch_size": 1}), _images(), hooks=TrainHooks(rank=0, world_size=2))


def test_only_rank_zero_fits_and_saves(tmp_path):
    from cutpaste.workflow import train_category
    from tests.conftest import write_tiny_category

    write_tiny_category(tmp_path / "data", size=64, train=6)
    config = preset("ci").override({"steps": 2, "checkpoint_every": 2, "log_every": 1, "batch_size": 4})
    run = train_category(config, tmp_path / "data", "widget", tmp_path / "r1", hooks=TrainHooks(rank=1, world_size=2))
    assert run.detector is None and run.training.local_batch == 2
    assert not (tmp_path / "r1" / "detector.pt").exists()
