"""The ONNX export against the PyTorch detector on the CPU: img/s at batch 1 and 32, file size, agreement.

    .venv/bin/python bench/export.py                      # writes bench/results/export.json
    .venv/bin/python bench/export.py --size 128 --repeats 7 --scorers global knn-relative

One process, the same images for both: a synthetic category is written, an encoder is trained for a few
steps at the ``ci`` preset (the point is the runtime, not the detector), each scorer is fitted on it and
exported with ``cutpaste.serving.export.export_model`` (which checks the graph on probe images first). Then, for
each batch size, PyTorch's ``Detector.anomaly_maps`` on ``(B, 3, S, S)`` uint8 and onnxruntime's session on
the same images as ``(B, S, S, 3)`` uint8 (both give the score and the map) are timed alternately: one
warm-up call, then the median of ``--repeats`` calls each. Both use the same number of threads. PyTorch's
``Detector.score`` (no map) is timed too, for scale. Temporary data is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from cutpaste.atomic import atomic_write_text
from cutpaste.data import list_samples, load_images
from cutpaste.data.synth import generate_dataset
from cutpaste.detector import Detector
from cutpaste.fit import fit_detector
from cutpaste.presets import preset
from cutpaste.serving.export import export_model
from cutpaste.serving.onnx_graph import max_difference
from cutpaste.train.loop import train_model

RESULTS = Path(__file__).resolve().parent / "results" / "export.json"
CATEGORY = "synth_disc"
# Scorers a detector resolves to (config changes); the default set: the paper's score with GradCAM maps,
# the feature-map Gaussians, the k-NN memory bank (the heaviest image-model graph), and the patch model.
SCORERS = {
    "global": {},
    "local": {"image_score": "local", "feature_density": "per_location"},
    "knn-relative": {"image_score": "local", "feature_density": "knn", "feature_score": "max-median"},
    "patch-knn": {"patch_size": 32, "patch_stride": 8, "local_density": "knn"},
}


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """One warm-up call, then the median wall time of ``repeats`` calls."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def images_of(batch: int, pool: torch.Tensor) -> torch.Tensor:
    """``batch`` images from ``pool`` (repeated where it holds fewer)."""
    index = torch.arange(batch) % pool.shape[0]
    return pool[index].contiguous()


def measure_scorer(detector: Detector, onnx_path: Path, pool: torch.Tensor, args: argparse.Namespace) -> dict:
    """img/s of both runtimes at each batch size, and their agreement on the largest batch."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    speed: dict[str, dict[str, float]] = {"onnxruntime": {}, "pytorch": {}, "pytorch_score_only": {}}
    for batch in args.batches:
        nchw = images_of(batch, pool)
        feed = {"images": nchw.permute(0, 2, 3, 1).contiguous().numpy()}
        calls = {
            "onnxruntime": lambda feed=feed: session.run(None, feed),
            "pytorch": lambda nchw=nchw: detector.anomaly_maps(nchw),
            "pytorch_score_only": lambda nchw=nchw: detector.score(nchw),
        }
        for runtime, call in calls.items():
            with torch.no_grad():
                seconds = median_seconds(call, args.repeats)
            speed[runtime][str(batch)] = round(batch / seconds, 2)
            print(f"  batch {batch:>3}  {runtime:<19} {batch / seconds:9.1f} img/s", flush=True)
    nchw = images_of(max(args.batches), pool)
    scores, maps = session.run(None, {"images": nchw.permute(0, 2, 3, 1).contiguous().numpy()})
    ref_scores, ref_maps = detector.anomaly_maps(nchw)
    return {
        "file_bytes": onnx_path.stat().st_size,
        "file_mb": round(onnx_path.stat().st_size / 1e6, 2),
        "img_per_s": speed,
        "onnx_over_pytorch": {b: round(speed["onnxruntime"][b] / speed["pytorch"][b], 3) for b in speed["pytorch"]},
        "max_rel_diff": {
            "score": float(f"{max_difference(scores, ref_scores.numpy()):.3g}"),
            "anomaly_map": float(f"{max_difference(maps, ref_maps.numpy()):.3g}"),
        },
    }


def run(work: Path, args: argparse.Namespace) -> dict[str, dict]:
    generate_dataset(work / "data", categories=[CATEGORY], size=args.size, train_count=16, test_good=4)
    config = preset("ci").override({"image_size": args.size, "steps": args.steps})
    train = load_images([s.path for s in list_samples(work / "data", CATEGORY, "train")], args.size)
    pool = load_images([s.path for s in list_samples(work / "data", CATEGORY, "test")], args.size)
    model = train_model(config, train, device="cpu", progress=False).model.eval()
    rows = {}
    for name in args.scorers:
        detector = fit_detector(model, train, config.override(SCORERS[name]), category=CATEGORY)
        detector.save(work / name)
        started = time.perf_counter()
        result = export_model(work / name, work / f"{name}.onnx")
        export_s = time.perf_counter() - started
        print(f"{name}: {result.scorer}; {result.size_bytes / 1e6:.1f} MB, exported in {export_s:.0f} s", flush=True)
        rows[name] = {"scorer": result.scorer, "export_s": round(export_s, 1)}
        rows[name] |= measure_scorer(Detector.load(work / name), work / f"{name}.onnx", pool, args)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="the detector's input size in px")
    parser.add_argument("--steps", type=int, default=10, help="training steps (the detector is not the point)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per batch size and runtime")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of both runtimes")
    parser.add_argument("--scorers", nargs="+", default=["global", "knn-relative"], choices=list(SCORERS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="cutpaste-bench-export-"))
    try:
        rows = run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": "python bench/export.py " + " ".join(sys.argv[1:]),
        "what": "img/s of the exported ONNX graph (onnxruntime, CPU) and of the PyTorch detector on the same "
        "uint8 images in one process (score + anomaly map each; PyTorch's score alone for scale), median of "
        f"{args.repeats} calls after one warm-up",
        "detector": {"preset": "ci", "image_size": args.size, "steps": args.steps, "category": CATEGORY},
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
        "rows": rows,
    }
    atomic_write_text(json.dumps(result, indent=2) + "\n", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
