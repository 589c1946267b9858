"""Export a registered model: ``cutpaste export`` for a ``models:/`` URI.

    python pipelines/export_model.py --model models:/cutpaste-bottle@champion --out bottle.onnx

The version is resolved and downloaded as batch scoring does (``pipelines.batch_model``: the version's
``cutpaste.sha256`` tag must match the bundle and the model's own config), then exported by the library
(``cutpaste.serving.export.export_model``: checked against PyTorch before the atomic write). The graph's metadata
carries the same SHA-256 the registry tags the version with, so an edge box can tell which version it runs.
``--model`` also takes a local bundle directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from cutpaste.errors import CutPasteError
from cutpaste.serving.batch_scoring import write_bundle_files
from cutpaste.serving.export import FORMATS, ExportResult, check_writable, export_model
from pipelines.batch_model import resolve_model


def export_registered(
    spec: str, out: str | Path, *, fmt: str = "onnx", tracking_uri: str | None = None
) -> ExportResult:
    """The model ``spec`` names, exported to ``out``; refused before anything is written unless the bundle
    is the one its registry tag (or, for a local bundle, its own digest) pins."""
    check_writable(Path(out))  # before the download
    resolved = resolve_model(spec, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="cutpaste-export-") as tmp:
        bundle = write_bundle_files(resolved.files, tmp)
        return export_model(bundle, out, fmt=fmt, expected_sha256=resolved.info.sha256)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version> or a bundle")
    parser.add_argument("--out", required=True, help="file to write, e.g. bottle.onnx (replaced atomically)")
    parser.add_argument("--format", default="onnx", choices=FORMATS)
    parser.add_argument("--mlflow-uri", help="tracking URI holding the registry (default $MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)
    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    try:
        result = export_registered(args.model, args.out, fmt=args.format, tracking_uri=uri)
    except CutPasteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB) from {args.model}: {result.scorer}; "
        f"threshold {result.threshold:.6g}, SHA-256 {result.sha256} (in the graph's metadata)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
