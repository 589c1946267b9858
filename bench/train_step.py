"""Training throughput of the real step (sampling + CutPaste on the device + forward/backward/SGD)
against the bare model step on ready tensors, same batch and size, same process.

    .venv/bin/python bench/train_step.py --preset demo            # CPU
    .venv/bin/python bench/train_step.py --preset paper --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cutpaste.atomic import atomic_write_text
from cutpaste.config import preset
from cutpaste.model import build_model
from cutpaste.train import TrainHooks, resolve_device, train_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_img_s(config, device: torch.device, steps: int, repeats: int) -> list[float]:
    """The model step alone, on a batch that is already on the device: the ceiling for the pipeline."""
    model = build_model(config).to(device)
    on_cuda = device.type == "cuda"
    if config.channels_last and on_cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum)
    batch = config.batch_size * config.num_classes
    x = torch.rand(batch, 3, config.image_size, config.image_size, device=device)
    if config.channels_last and on_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(config.num_classes, (batch,), device=device)
    rates = []
    for repeat in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and on_cuda):
                _, logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        if repeat:  # the first round warms up
            rates.append(steps * batch / (time.perf_counter() - start))
    return rates


def pipeline_img_s(config, device: torch.device, steps: int, repeats: int) -> list[float]:
    """The library's training loop as users run it, timed from its own per-interval records."""
    images = torch.randint(0, 256, (64, 3, config.image_size, config.image_size), dtype=torch.uint8)
    records: list[dict] = []
    run = config.override({"steps": steps * (repeats + 1), "log_every": steps, "checkpoint_every": 10**9})
    train_model(run, images, device=device, hooks=TrainHooks(on_log=records.append), progress=False)
    return [r["img_s"] for r in records[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, help="override the preset's image size")
    parser.add_argument("--out", default="bench/results/train_step.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    config = preset(args.preset)
    if args.size:
        config = config.override({"image_size": args.size})
    # Interleave so that both sides see the same machine state.
    bare = bare_img_s(config, device, args.steps, args.repeats)
    pipeline = pipeline_img_s(config, device, args.steps, args.repeats)
    result = {
        "pipeline_img_s": statistics.median(pipeline),
        "bare_img_s": statistics.median(bare),
        "efficiency": statistics.median(pipeline) / statistics.median(bare),
        "preset": config.preset,
        "image_size": config.image_size,
        "batch": config.batch_size * config.num_classes,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rounds": {"pipeline": pipeline, "bare": bare},
    }
    print(
        f"{result['device']}: pipeline {result['pipeline_img_s']:.1f} img/s, bare model {result['bare_img_s']:.1f} "
        f"img/s, efficiency {result['efficiency']:.3f} "
        f"({config.preset}, {config.image_size}px, batch {result['batch']})"
    )
    out = Path(args.out)
    atomic_write_text(json.dumps(result, indent=2), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
