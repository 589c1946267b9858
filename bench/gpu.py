"""GPU figures for the paper preset, ready for the day a GPU is lent:

    .venv/bin/python bench/gpu.py                  # results in bench/results/gpu.json
    .venv/bin/python bench/gpu.py --steps 20 --shares 1,2,4

1. training throughput (img/s) of the library's loop at the paper preset (256 px, 96 images per 3-way
   step), with AMP + channels_last and without, rounds interleaved;
2. ``cuda_aug_fraction``: the batched augmentation's time over one training step's (bench/augment.py);
3. throughput with 1, 2, 4 and 8 runs sharing the GPU (separate processes, as Ray packs
   ``--gpus-per-run 0.5 / 0.25 / 0.125`` runs), summed over the runs;
4. the projected wall time of the paper's Table 1 (15 categories x 5 seeds, the preset's steps each) on
   8 such GPUs at the best sharing, plus a fixed cost per run (start-up, evaluation, logging).

Without CUDA it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cutpaste.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
PAPER_RUNS = 15 * 5
FIXED_S_PER_RUN = 60.0  # start-up, density fit, evaluation and logging of one run, generous for 256 px


def throughput(amp: bool, steps: int) -> float:
    """img/s of the library's training loop at the paper preset (second half of ``2 * steps`` steps)."""
    from train_step import pipeline_round  # bench/train_step.py, next to this script

    from cutpaste.presets import preset

    config = preset("paper").override({"amp": amp, "channels_last": amp})
    return pipeline_round(config, torch.device("cuda"), steps)


def aug_fraction(repeats: int) -> dict:
    from augment import main as augment_main  # bench/augment.py, next to this script

    with tempfile.TemporaryDirectory(prefix="cutpaste-gpu-") as scratch:
        report = augment_main(
            ["--size", "256", "--repeats", str(repeats), "--device", "cuda", "--out", f"{scratch}/a.json"]
        )
    cuda = report["per_device"]["cuda"]
    return {k: cuda[k] for k in ("cuda_aug_fraction", "batched_img_s", "train_step_s")}


def shared(runs: int, steps: int) -> float:
    """Summed img/s of ``runs`` processes training at once on the one GPU."""
    command = [sys.executable, __file__, "--worker", "--steps", str(steps)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(runs)]
    rates = []
    for worker in workers:
        out, _ = worker.communicate(timeout=3600)
        if worker.returncode != 0:
            raise RuntimeError(f"a sharing worker failed with exit code {worker.returncode}")
        rates.append(float(out.strip().splitlines()[-1]))
    return sum(rates)


def projection(best_img_s_per_gpu: float, gpus: int = 8) -> dict:
    from cutpaste.presets import preset

    config = preset("paper")
    images_per_run = config.steps * config.batch_size * config.num_classes
    train_s = PAPER_RUNS * images_per_run / (best_img_s_per_gpu * gpus)
    return {
        "runs": PAPER_RUNS,
        "images_per_run": images_per_run,
        "gpus": gpus,
        "train_hours": train_s / 3600,
        "fixed_hours": PAPER_RUNS * FIXED_S_PER_RUN / gpus / 3600,
        "projected_wall_hours": (train_s + PAPER_RUNS * FIXED_S_PER_RUN / gpus) / 3600,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shares", default="1,2,4,8", help="runs sharing the GPU, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device on this machine; nothing to measure")
        return 0
    if args.worker:
        print(throughput(True, args.steps))
        return 0
    started = time.perf_counter()
    rounds: dict[str, list[float]] = {"amp": [], "fp32": []}
    for _ in range(args.repeats):  # interleaved: both see the same GPU state
        for name, amp in (("amp", True), ("fp32", False)):
            rounds[name].append(throughput(amp, args.steps))
    amp_s, fp32_s = statistics.median(rounds["amp"]), statistics.median(rounds["fp32"])
    print(f"paper preset on {torch.cuda.get_device_name()}: {amp_s:.0f} img/s AMP, {fp32_s:.0f} img/s fp32")
    sharing = {int(n): shared(int(n), args.steps) for n in args.shares.split(",")}
    for n, rate in sharing.items():
        print(f"{n} runs sharing the GPU: {rate:.0f} img/s in all ({rate / n:.0f} each)")
    fraction = aug_fraction(args.repeats)
    best = max(sharing.values())
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "amp_img_s": amp_s,
        "fp32_img_s": fp32_s,
        "amp_speedup": amp_s / fp32_s,
        "rounds": rounds,
        "sharing_img_s": sharing,
        **fraction,
        "projection_8_gpus": projection(best),
        "wall_s": time.perf_counter() - started,
    }
    print(f"cuda_aug_fraction {fraction['cuda_aug_fraction']:.3f}")
    print(f"projected paper benchmark on 8 GPUs: {result['projection_8_gpus']['projected_wall_hours']:.1f} h")
    atomic_write_text(json.dumps(result, indent=2) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
