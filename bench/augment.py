"""Throughput of batched CutPaste-3way views against the per-image PIL pipeline of public reimplementations.

One training step of the paper's 3-way preset sees ``--batch`` (96) images: ``--batch // 3`` (32) normal
images and their CutPaste and scar versions. Both paths produce exactly that from the same uint8 images:

* batched: ``uint8 (32, 3, S, S)`` on the device -> float -> :func:`cutpaste.augment.views.make_views`
  (translation, whole-image colour jitter, CutPaste, scar, all vectorised) -> ImageNet normalisation;
* PIL: per image, ``RandomCrop(padding, reflect)`` + ``ColorJitter`` as pre-augmentation, CutPaste by
  crop / ``ColorJitter`` / paste, scar by crop / ``ColorJitter`` / ``rotate(expand=True)`` / paste with
  the alpha mask, then ``ToTensor`` + ``Normalize`` of the three views and one ``torch.stack``.

Throughput is counted in training views (``--batch`` per step) per second, median over ``--repeats``
after warm-up; the paths alternate so that load from other processes hits all of them alike. On CPU the
batched path runs with torch's default thread count and with one thread (``--threads`` picks one), and
``batched_img_s`` is the faster of them; the PIL path runs with one torch thread, as in a DataLoader
worker (more threads make its single-image tensor ops slower, not faster). On CUDA the script also
reports ``cuda_aug_fraction``: the time of the batched augmentation divided by the time of one
paper-preset training step (ResNet-18, batch 96, AMP bf16, channels_last, SGD).

    python bench/augment.py --device auto --repeats 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from cutpaste.augment.ops import IMAGENET_MEAN, IMAGENET_STD
from cutpaste.augment.views import make_views
from cutpaste.config import AugmentConfig

# --------------------------------------------------------------------------- PIL reference


class PILCutPaste3Way:
    """The per-image PIL pipeline of the public reimplementations, with the paper's parameters."""

    def __init__(self, size: int, config: AugmentConfig) -> None:
        scale = size / 256.0
        jitter = config.pre_jitter
        self.config = config
        self.scale = scale
        self.pre = transforms.Compose(
            [
                transforms.RandomCrop(size, padding=round(config.pre_translate * scale), padding_mode="reflect"),
                transforms.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter),
            ]
        )
        j = config.patch_jitter
        self.patch_jitter = transforms.ColorJitter(brightness=j, contrast=j, saturation=j, hue=j)
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def cutpaste(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        area = random.uniform(*self.config.area_ratio) * width * height
        lo, hi = self.config.aspect_ratio
        aspect = math.exp(
            random.uniform(math.log(lo), 0.0) if random.random() < 0.5 else random.uniform(0.0, math.log(hi))
        )
        cut_h = min(height, max(1, round(math.sqrt(area * aspect))))
        cut_w = min(width, max(1, round(math.sqrt(area / aspect))))
        x0, y0 = random.randint(0, width - cut_w), random.randint(0, height - cut_h)
        patch = self.patch_jitter(image.crop((x0, y0, x0 + cut_w, y0 + cut_h)))
        x1, y1 = random.randint(0, width - cut_w), random.randint(0, height - cut_h)
        out = image.copy()
        out.paste(patch, (x1, y1))
        return out

    def scar(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        cut_w = max(1, round(random.uniform(*self.config.scar_width) * self.scale))
        cut_h = max(1, round(random.uniform(*self.config.scar_length) * self.scale))
        x0, y0 = random.randint(0, width - cut_w), random.randint(0, height - cut_h)
        patch = self.patch_jitter(image.crop((x0, y0, x0 + cut_w, y0 + cut_h)))
        angle = random.uniform(-self.config.scar_rotation, self.config.scar_rotation)
        patch = patch.convert("RGBA").rotate(angle, expand=True)
        x1 = random.randint(0, max(0, width - patch.size[0]))
        y1 = random.randint(0, max(0, height - patch.size[1]))
        mask = patch.split()[-1]
        out = image.copy()
        out.paste(patch.convert("RGB"), (x1, y1), mask=mask)
        return out

    def __call__(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        views: list[list[torch.Tensor]] = [[], [], []]
        for image in images:
            base = self.pre(image)
            views[0].append(self.to_tensor(base))
            views[1].append(self.to_tensor(self.cutpaste(base)))
            views[2].append(self.to_tensor(self.scar(base)))
        labels = torch.arange(3).repeat_interleave(len(images))
        return torch.stack(views[0] + views[1] + views[2]), labels


# --------------------------------------------------------------------------- batched path


def batched_step(
    images_u8: torch.Tensor, config: AugmentConfig, generator: torch.Generator, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(B, 3, S, S)`` -> normalised views ``(3B, 3, S, S)`` and labels ``(3B,)``.

    mean, std: ``(1, 3, 1, 1)`` ImageNet statistics already on the device (no host copy per step).
    """
    images = images_u8.float().div_(255.0)
    views, labels = make_views(images, variant="3way", config=config, generator=generator)
    return views.sub_(mean).div_(std), labels


def imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).to(device)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1).to(device)
    return mean, std


def synthetic_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``(count, S, S, 3)`` uint8: smooth colour gradients, blobs and noise (content barely matters)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        base = np.stack([np.sin(6 * xx * rng.uniform(0.5, 2) + c) * 0.3 + 0.5 for c in range(3)], axis=-1)
        cy, cx, radius = rng.uniform(0.2, 0.8, 3)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < (radius / 3) ** 2)[..., None] * rng.uniform(-0.3, 0.3, 3)
        noise = rng.normal(0, 0.03, (size, size, 3))
        out[i] = (np.clip(base + blob + noise, 0, 1) * 255).astype(np.uint8)
    return out


def _timed(fn: Callable[[], object], sync: Callable[[], None], threads: int | None = None) -> float:
    """Seconds for one call of ``fn``, with ``threads`` torch threads set outside the timed region."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def train_step_seconds(batch: int, size: int, repeats: int, warmup: int) -> float:
    """Median time of one paper-preset step: ResNet-18 fwd+bwd+SGD, AMP bf16, channels_last."""
    import torch.nn.functional as F
    import torchvision

    device = torch.device("cuda")
    model = torchvision.models.resnet18(num_classes=3).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=3e-5)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (batch,), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    return statistics.median(_timed(step, torch.cuda.synchronize) for _ in range(repeats))


def _measure_cpu(
    args: argparse.Namespace,
    arrays: np.ndarray,
    config: AugmentConfig,
    pil_run: Callable[[], object],
    views_per_step: int,
) -> tuple[dict, list[float]]:
    """Batched path at each CPU thread count, alternating with the PIL path; returns (entry, PIL times)."""
    default_threads = torch.get_num_threads()
    thread_counts = [args.threads] if args.threads else sorted({default_threads, 1}, reverse=True)
    images_u8 = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
    generator = torch.Generator().manual_seed(args.seed)
    stats = imagenet_stats(torch.device("cpu"))

    def run() -> object:
        return batched_step(images_u8, config, generator, *stats)

    views, labels = run()
    assert views.shape == (views_per_step, 3, args.size, args.size) and labels.shape == (views_per_step,)
    times: dict[int, list[float]] = {t: [] for t in thread_counts}
    pil_times: list[float] = []
    for repeat in range(args.warmup + args.repeats):
        for threads in thread_counts:  # alternate so that background load hits all paths alike
            elapsed = _timed(run, _no_sync, threads)
            if repeat >= args.warmup:
                times[threads].append(elapsed)
        elapsed = _timed(pil_run, _no_sync, 1)
        if repeat >= args.warmup:
            pil_times.append(elapsed)
    by_threads = {t: views_per_step / statistics.median(v) for t, v in times.items()}
    best = max(by_threads, key=by_threads.get)
    entry = {
        "batched_img_s": by_threads[best],
        "threads": best,
        "batched_img_s_by_threads": by_threads,
        "batched_s_per_step_by_threads": times,
    }
    return entry, pil_times


def _measure_cuda(args: argparse.Namespace, arrays: np.ndarray, config: AugmentConfig, views_per_step: int) -> dict:
    """The batched path on the GPU, and one paper-preset training step for ``cuda_aug_fraction``."""
    device = torch.device("cuda")
    images_u8 = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous().to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    stats = imagenet_stats(device)

    def run() -> object:
        return batched_step(images_u8, config, generator, *stats)

    for _ in range(args.warmup + 1):
        run()
    times = [_timed(run, torch.cuda.synchronize) for _ in range(args.repeats)]
    step_s = train_step_seconds(views_per_step, args.size, args.repeats, args.warmup)
    return {
        "batched_img_s": views_per_step / statistics.median(times),
        "batched_s_per_step": times,
        "train_step_s": step_s,
        "cuda_aug_fraction": statistics.median(times) / step_s,
        "device_name": torch.cuda.get_device_name(device),
    }


def _no_sync() -> None:
    pass


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The flags, and the devices measured (``auto``: the CPU, and the GPU when there is one)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--batch", type=int, default=96, help="training views per step (3 per input image)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU torch threads for the batched path (0: default and 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/augment.json"))
    args = parser.parse_args(argv)
    if args.batch < 3 or args.repeats < 1:
        parser.error("--batch must be >= 3 and --repeats >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "auto": ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]}
    return args, devices[args.device]


def _measure(args: argparse.Namespace, devices: list[str], views_per_step: int) -> tuple[dict[str, dict], list]:
    """Each device's batched path and the per-image PIL path (timed alongside the CPU's, else alone)."""
    inputs = views_per_step // 3
    config = AugmentConfig()
    arrays = synthetic_images(inputs, args.size, args.seed)
    pil_images = [Image.fromarray(a) for a in arrays]
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    pil = PILCutPaste3Way(args.size, config)

    def pil_run() -> object:
        return pil(pil_images)

    results: dict[str, dict] = {}
    pil_times: list[float] = []
    if "cpu" in devices:
        results["cpu"], pil_times = _measure_cpu(args, arrays, config, pil_run, views_per_step)
    else:
        for repeat in range(args.warmup + args.repeats):
            elapsed = _timed(pil_run, _no_sync, 1)
            if repeat >= args.warmup:
                pil_times.append(elapsed)
    if "cuda" in devices:
        results["cuda"] = _measure_cuda(args, arrays, config, views_per_step)
    return results, pil_times


def _print_table(args: argparse.Namespace, results: dict[str, dict], pil_img_s: float, views_per_step: int) -> None:
    print(f"CutPaste-3way, {views_per_step} views of {args.size} px per step, median of {args.repeats}")
    print(f"{'path':<12}{'device':<8}{'threads':>8}{'img/s':>10}{'speedup':>9}")
    print(f"{'PIL':<12}{'cpu':<8}{1:>8}{pil_img_s:>10.1f}{1.0:>9.2f}")
    for threads, img_s in results.get("cpu", {}).get("batched_img_s_by_threads", {}).items():
        print(f"{'make_views':<12}{'cpu':<8}{threads:>8}{img_s:>10.1f}{img_s / pil_img_s:>9.2f}")
    if "cuda" in results:
        cuda = results["cuda"]
        print(f"{'make_views':<12}{'cuda':<8}{'':>8}{cuda['batched_img_s']:>10.1f}{cuda['speedup']:>9.2f}")
        print(f"cuda_aug_fraction {cuda['cuda_aug_fraction']:.3f} (train step {cuda['train_step_s'] * 1e3:.1f} ms)")


def main(argv: list[str] | None = None) -> dict:
    args, devices = _parse_args(argv)
    inputs = args.batch // 3
    views_per_step = 3 * inputs
    results, pil_times = _measure(args, devices, views_per_step)
    pil_img_s = views_per_step / statistics.median(pil_times)
    for entry in results.values():
        entry["speedup"] = entry["batched_img_s"] / pil_img_s

    main_device = devices[-1]
    report = {
        "benchmark": "CutPaste-3way training views: batched make_views vs per-image PIL",
        "device": main_device,
        "batched_img_s": results[main_device]["batched_img_s"],
        "pil_img_s": pil_img_s,
        "speedup": results[main_device]["speedup"],
        "per_device": results,
        "pil_s_per_step": pil_times,
        "unit": "training views per second (3 per input image)",
        "batch": views_per_step,
        "inputs_per_step": inputs,
        "size": args.size,
        "repeats": args.repeats,
        "statistic": "median",
        "torch": torch.__version__,
        "threads": results["cpu"]["threads"] if "cpu" in results else torch.get_num_threads(),
        "default_threads": torch.get_num_threads(),
        "pil_threads": 1,
        "cpu_count": os.cpu_count(),
    }
    if "cuda" in results:
        report["cuda_aug_fraction"] = results["cuda"]["cuda_aug_fraction"]
    _print_table(args, results, pil_img_s, views_per_step)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
