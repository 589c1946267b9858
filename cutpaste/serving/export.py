"""``cutpaste export``: a trained detector in a serving format (ONNX), checked before it is written.

Light on purpose: the CLI builds its parser from here without importing torch, and the format's module
(:mod:`cutpaste.serving.onnx_graph`) and its optional packages (the ``onnx`` extra) are imported only when a
model is exported, so the core install works without them. Every bad input is checked before the slow
part (loading, tracing): the model directory, the format, where the file goes, the packages.
"""

from __future__ import annotations

import argparse
import importlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cutpaste.errors import ConfigError, ExportError, ModelBundleError

FORMATS = ("onnx",)
# What each format needs at export time: onnxscript for torch's exporter, onnxruntime for the check.
REQUIRED_PACKAGES = {"onnx": ("onnx", "onnxscript", "onnxruntime")}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    size_bytes: int
    sha256: str
    scorer: str
    threshold: float


def add_export_command(sub: Any) -> None:
    """Registers ``cutpaste export`` on the CLI's subparsers."""
    export = sub.add_parser("export", help="write a detector as one graph: uint8 images -> scores and anomaly maps")
    export.add_argument("--model", required=True, help="model directory (detector.pt and detector.json)")
    export.add_argument("--format", default="onnx", help=f"one of: {', '.join(FORMATS)} (default onnx)")
    export.add_argument("--out", required=True, help="file to write, e.g. model.onnx (replaced atomically)")
    export.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    result = export_model(args.model, args.out, fmt=args.format)
    print(
        f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB): {result.scorer}; "
        f"threshold {result.threshold:.6g}, model SHA-256 {result.sha256} (in the graph's metadata)"
    )
    return 0


def export_model(
    model: str | Path,
    out: str | Path,
    *,
    fmt: str = "onnx",
    verify: bool = True,
    expected_sha256: str | None = None,
) -> ExportResult:
    """Loads the detector in ``model`` (its SHA-256 checked as every load does, and refused unless it is
    ``expected_sha256`` when given, before anything is written) and writes it to ``out`` in ``fmt``; with
    ``verify`` the graph must first score probe images as PyTorch does."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown {fmt!r}; choose one of {', '.join(FORMATS)}")
    model, out = Path(model), Path(out)
    if not model.exists():
        raise ModelBundleError(f"--model: model directory not found: {model}")
    check_writable(out)
    require_packages(fmt)
    from cutpaste.ensemble import bundle_digest, load_detector
    from cutpaste.serving.onnx_graph import export_onnx, scorer_name

    detector = load_detector(model, expected_sha256=expected_sha256)
    sha256 = bundle_digest(model)
    try:
        path = export_onnx(detector, out, sha256=sha256, verify=verify)
    except OSError as exc:
        raise ExportError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
    return ExportResult(path, path.stat().st_size, sha256, scorer_name(detector), float(detector.threshold))


def check_writable(out: Path) -> None:
    """Fails before any work when ``out`` could not be written: a directory, or a parent that cannot hold it."""
    if out.is_dir():
        raise ExportError(f"--out: {out} is a directory; give a file name, e.g. {out / 'model.onnx'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ExportError(f"--out: cannot write {out}: {exc.strerror or exc}") from None


def require_packages(fmt: str) -> None:
    """The optional packages ``fmt`` needs, each imported once here so a missing one is named."""
    for name in REQUIRED_PACKAGES[fmt]:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ExportError(
                f"--format {fmt}: needs the Python package {name!r}, which is not installed; "
                f"install the extra: pip install 'cutpaste[{fmt}]'"
            ) from None
