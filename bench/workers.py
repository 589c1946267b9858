"""Step time of one run on 1 worker against 2 data-parallel workers (gloo on CPU, NCCL on GPUs), same
config and global batch, in one invocation; and how close the two loss curves end.

    .venv/bin/python bench/workers.py --preset short --steps 40

Each worker is a process with its own share of the global batch (``TrainHooks.world_size``); on a CPU
machine the threads are split between the workers, so the comparison is at equal hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from cutpaste.atomic import atomic_write_text
from cutpaste.config import TrainConfig
from cutpaste.presets import preset
from cutpaste.train.loop import TrainHooks, train_model


def _images(size: int) -> torch.Tensor:
    return torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _run(rank: int, world: int, port: int, config: dict, threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    hooks = TrainHooks(rank=rank, world_size=world)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        hooks.wrap_model = DistributedDataParallel
    try:
        cfg = TrainConfig.from_dict(config)
        started = time.perf_counter()
        result = train_model(cfg, _images(cfg.image_size), device="cpu", hooks=hooks, progress=False)
        wall = time.perf_counter() - started
        if rank == 0:
            torch.save({"history": result.history, "wall_s": wall}, out)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="short")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="bench/results/workers.json")
    args = parser.parse_args()
    config = preset(args.preset).override({"steps": args.steps, "log_every": max(1, args.steps // 4)})
    config = config.override({"checkpoint_every": 10**6})
    threads = max(1, os.cpu_count() or 1)
    result: dict = {"preset": config.preset, "steps": args.steps, "global_batch": config.batch_size, "cpus": threads}
    with tempfile.TemporaryDirectory(prefix="cutpaste-workers-") as tmp:
        for world in (1, 2):
            out = str(Path(tmp) / f"w{world}.pt")
            per_worker = max(1, threads // world)
            mp.spawn(_run, args=(world, _port(), config.to_dict(), per_worker, out), nprocs=world, join=True)
            run = torch.load(out, weights_only=False)
            history = run["history"]
            result[f"workers_{world}"] = {
                "wall_s": run["wall_s"],
                "step_s": run["wall_s"] / args.steps,
                "img_s": statistics.median(r["img_s"] for r in history[1:]) if len(history) > 1 else None,
                "loss": [r["loss"] for r in history],
                "threads_per_worker": per_worker,
            }
    one, two = result["workers_1"], result["workers_2"]
    result["step_time_ratio"] = two["step_s"] / one["step_s"]
    result["final_loss_gap"] = abs(one["loss"][-1] - two["loss"][-1])
    print(
        f"{config.preset}, {args.steps} steps, global batch {config.batch_size}x{config.num_classes}: "
        f"1 worker {one['step_s']:.3f} s/step, 2 workers {two['step_s']:.3f} s/step "
        f"(ratio {result['step_time_ratio']:.2f}); final loss {one['loss'][-1]:.3f} vs {two['loss'][-1]:.3f}"
    )
    atomic_write_text(json.dumps(result, indent=2), Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
