"""Behaviour kept across a refactoring: the same detectors give the same scores, maps and thresholds.

    .venv/bin/python bench/same_outputs.py snapshot /tmp/before     # on the old commit (a worktree)
    .venv/bin/python bench/same_outputs.py snapshot /tmp/after      # on the new one
    .venv/bin/python bench/same_outputs.py compare /tmp/before /tmp/after --out bench/results/same_outputs.json

Only the command line is used (``cutpaste train``, ``evaluate --json``, ``predict --json --heatmap``),
never a library import path, so the script runs unchanged on both sides of a change that moves modules.
Every scorer that stays is trained at the ``ci`` preset (fp32, deterministic on the CPU) on one synthetic
object and one texture; what is compared: the calibrated threshold and its calibration record, every
test image's score and the evaluation's metrics, the verdicts of ``predict``, and the bytes of each
heatmap PNG (the anomaly maps, quantised as shown).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cutpaste.data.synth import generate_dataset

CATEGORIES = ("synth_disc", "synth_weave")
SCORERS: dict[str, list[str]] = {
    "global": ["--image-score", "global"],
    "local": ["--image-score", "local"],
    "knn-relative": ["--image-score", "local", "--set", "feature_density=knn", "--set", "feature_score=max-median"],
    "auto": ["--image-score", "auto"],
    "patch": ["--patch-size", "32", "--stride", "8", "--local-density", "shared"],
}
# Run-dependent values that are not outputs: wall times, paths, versions.
VOLATILE = {"seconds", "wall_s", "elapsed_s", "model", "data", "path", "version", "started", "finished"}


def _cutpaste(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cutpaste.cli", *args], check=True, stdout=subprocess.DEVNULL)


def snapshot(out: Path, steps: int) -> None:
    data = out / "data"
    generate_dataset(data, categories=list(CATEGORIES), size=64, seed=0, train_count=24, test_good=6)
    for category in CATEGORIES:
        test = sorted((data / category / "test").rglob("*.png"))[:6]
        for name, flags in SCORERS.items():
            model = out / category / name
            common = ["--data", str(data), "--category", category]
            _cutpaste("train", *common, "--out", str(model), "--preset", "ci", "--steps", str(steps), *flags)
            _cutpaste("evaluate", "--model", str(model), *common, "--json", str(model / "evaluation.json"))
            command = [sys.executable, "-m", "cutpaste.cli", "predict", "--model", str(model), "--json"]
            predicted = subprocess.run(
                [*command, "--heatmap", str(model / "heatmaps"), *map(str, test)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (model / "predict.json").write_text(predicted)
            print(f"{category} {name}: done", flush=True)


def outputs(model: Path) -> dict[str, Any]:
    """What one detector gave, with run-dependent values left out."""
    summary = json.loads((model / "detector.json").read_text())
    heatmaps = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((model / "heatmaps").glob("*.png"))}
    return {
        "threshold": summary["threshold"],
        "calibration": summary["meta"].get("calibration"),
        "oof_scores": summary["meta"].get("oof_scores"),
        "auto": summary["meta"].get("image_score_selection"),
        "evaluation": _strip(json.loads((model / "evaluation.json").read_text())),
        "predict": _strip(json.loads((model / "predict.json").read_text())),
        "heatmaps": heatmaps,
    }


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = [f"{where}.{k}: only on one side" for k in sorted(set(a) ^ set(b))]
        return found + [d for k in sorted(set(a) & set(b)) for d in _differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _count(value: Any) -> int:
    """How many scalar values a comparison covered."""
    if isinstance(value, dict):
        return sum(_count(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count(v) for v in value)
    return 1


def compare(before: Path, after: Path, out: Path | None) -> int:
    report: dict[str, Any] = {"detectors": {}, "differences": []}
    for category in CATEGORIES:
        for name in SCORERS:
            a, b = outputs(before / category / name), outputs(after / category / name)
            report["detectors"][f"{category}/{name}"] = _count(a)
            report["differences"] += [f"{category}/{name}{d}" for d in _differences(a, b)]
    report["values_compared"] = sum(report["detectors"].values())
    print(json.dumps(report, indent=1))
    if out:
        out.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["differences"] else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot")
    snap.add_argument("out", type=Path)
    snap.add_argument("--steps", type=int, default=20)
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    cmp.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.command == "snapshot":
        snapshot(args.out, args.steps)
    else:
        raise SystemExit(compare(args.before, args.after, args.out))


if __name__ == "__main__":
    main()
