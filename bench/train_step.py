"""Training throughput, fp32 against bf16 autocast + channels_last, in one run; and the AUROC both reach.

    .venv/bin/python bench/train_step.py --preset short             # CPU: 128 px, batch 96
    .venv/bin/python bench/train_step.py --preset paper --device cuda

For each precision: the library's training loop as users run it (sampling + CutPaste on the device +
forward/backward/SGD, img/s from its own per-interval records) and the bare model step on a ready
batch (the ceiling), rounds interleaved so both precisions see the same machine state; medians are
reported with their ratio. bf16 is used where :mod:`cutpaste.model.precision` detects native support (CUDA,
AMX or AVX512-BF16 CPUs); elsewhere the "amp" column runs fp32 and says so. With ``--auroc`` (default
on) the same seed is trained in both precisions on a synthetic category and both image AUROCs are
reported: speed must not cost quality.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cutpaste.atomic import atomic_write_text
from cutpaste.config import TrainConfig
from cutpaste.data import list_samples, load_images
from cutpaste.data.synth import generate_dataset
from cutpaste.evaluation.evaluate import evaluate_detector
from cutpaste.fit import fit_detector
from cutpaste.model.network import build_model
from cutpaste.model.precision import cpu_has_native_bf16, use_amp, use_channels_last
from cutpaste.presets import preset
from cutpaste.scoring.baselines import untrained_detector
from cutpaste.train.loop import TrainHooks, optimisation_step, resolve_device, train_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_round(config: TrainConfig, device: torch.device, steps: int, state: dict) -> float:
    """One timed round of the model step alone on a batch already on the device (img/s)."""
    amp, channels_last = use_amp(device, config.amp), use_channels_last(device, config.channels_last)
    if "model" not in state:
        model = build_model(config).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        batch = config.batch_size * config.num_classes
        x = torch.rand(batch, 3, config.image_size, config.image_size, device=device)
        state.update(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum),
            x=x.contiguous(memory_format=torch.channels_last) if channels_last else x,
            y=torch.randint(config.num_classes, (batch,), device=device),
        )
    model, optimizer, x, y = state["model"], state["optimizer"], state["x"], state["y"]
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimisation_step(model, optimizer, x, y, amp=amp)
    _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - start)


def pipeline_round(config: TrainConfig, device: torch.device, steps: int) -> float:
    """The library's training loop for ``2 * steps`` steps; the second interval's img/s (the first warms up)."""
    images = torch.randint(0, 256, (64, 3, config.image_size, config.image_size), dtype=torch.uint8)
    records: list[dict] = []
    run = config.override({"steps": 2 * steps, "log_every": steps, "checkpoint_every": 10**9})
    train_model(run, images, device=device, hooks=TrainHooks(on_log=records.append), progress=False)
    return records[-1]["img_s"]


def auroc_check(config: TrainConfig, device: torch.device, steps: int, category: str) -> dict[str, float]:
    """Image AUROC of the same seed trained in fp32 and with amp on a synthetic category (and untrained)."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cutpaste-train-step-") as scratch:
        generate_dataset(scratch, categories=[category], size=config.image_size, seed=0)
        train = list_samples(scratch, category, "train")
        test = list_samples(scratch, category, "test")
        images = load_images([s.path for s in train], config.image_size)
        run = config.override({"steps": steps, "checkpoint_every": 10**9})
        out["untrained"] = evaluate_detector(untrained_detector(run, images), test, pixel=False).metrics.image_auroc
        for name, amp in (("fp32", False), ("amp", True)):
            trained = run.override({"amp": amp, "channels_last": amp})
            started = time.perf_counter()
            result = train_model(trained, images, device=device, progress=False)
            out[f"{name}_train_s"] = time.perf_counter() - started
            detector = fit_detector(result.model, images, trained)
            out[name] = evaluate_detector(detector, test, pixel=False).metrics.image_auroc
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="short")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, help="override the preset's image size")
    parser.add_argument("--auroc-steps", type=int, default=300, help="training steps of the AUROC check (0: skip)")
    parser.add_argument("--auroc-category", default="synth_disc")
    parser.add_argument("--out", default="bench/results/train_step.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    config = preset(args.preset)
    if args.size:
        config = config.override({"image_size": args.size})
    modes = {"fp32": config.override({"amp": False, "channels_last": False}), "amp": config}
    rates: dict[str, dict[str, list[float]]] = {m: {"bare": [], "pipeline": []} for m in modes}
    states: dict[str, dict] = {m: {} for m in modes}
    for mode, cfg in modes.items():  # warm-up round, not counted
        bare_round(cfg, device, 1, states[mode])
    for _ in range(args.repeats):  # interleaved: both precisions see the same machine state
        for mode, cfg in modes.items():
            rates[mode]["bare"].append(bare_round(cfg, device, args.steps, states[mode]))
            rates[mode]["pipeline"].append(pipeline_round(cfg, device, args.steps))
    median = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in rates.items()}
    result = {
        "fp32_pipeline_img_s": median["fp32"]["pipeline"],
        "amp_pipeline_img_s": median["amp"]["pipeline"],
        "speedup": median["amp"]["pipeline"] / median["fp32"]["pipeline"],
        "fp32_bare_img_s": median["fp32"]["bare"],
        "amp_bare_img_s": median["amp"]["bare"],
        "pipeline_efficiency_amp": median["amp"]["pipeline"] / median["amp"]["bare"],
        "amp_active": use_amp(device, True),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "preset": config.preset,
        "image_size": config.image_size,
        "batch": config.batch_size * config.num_classes,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rounds": rates,
    }
    print(
        f"{result['device']} ({config.preset}, {config.image_size}px, batch {result['batch']}): training loop "
        f"fp32 {result['fp32_pipeline_img_s']:.1f} img/s, amp {result['amp_pipeline_img_s']:.1f} img/s "
        f"({result['speedup']:.2f}x; bf16 {'on' if result['amp_active'] else 'not supported here, fp32 both'}); "
        f"bare model {result['fp32_bare_img_s']:.1f} / {result['amp_bare_img_s']:.1f} img/s"
    )
    if args.auroc_steps:
        check = auroc_check(config, device, args.auroc_steps, args.auroc_category)
        result["auroc"] = check
        print(
            f"{args.auroc_category}, {args.auroc_steps} steps, same seed: image AUROC fp32 {check['fp32']:.3f} "
            f"({check['fp32_train_s']:.0f}s), amp {check['amp']:.3f} ({check['amp_train_s']:.0f}s), "
            f"untrained {check['untrained']:.3f}"
        )
    out = Path(args.out)
    atomic_write_text(json.dumps(result, indent=2), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
