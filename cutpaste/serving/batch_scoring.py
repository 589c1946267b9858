"""Batch scoring's per-batch logic, free of Ray and MLflow so it is tested (and reused) on its own.

``pipelines/batch_score.py`` streams objects through two steps of this module: :func:`decode_batch` (bytes
to same-size images, with a digest per object, a flag for images resized to the detector's size, and an
error row for anything that does not decode) and :func:`score_batch` (images to output rows, in
:data:`OUTPUT_SCHEMA`). Bad input never raises here: it becomes a row that names the object. Images are
decoded and resized exactly as ``cutpaste predict`` and training do (:func:`cutpaste.data.images.decode_image`),
so a score here equals the bundle's own ``predict`` score for the same file.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from cutpaste.data.images import decode_image
from cutpaste.errors import CutPasteError, ModelBundleError
from cutpaste.localization.heatmaps import colour_bar, grid_figure, overlay_panel, stack, to_hwc

NORMAL, ANOMALOUS, ERROR = "normal", "anomalous", "error"
SCORES_DIR = "scores"  # under --output: the Parquet files, one set per submission
MAPS_DIR = "maps"  # under --output: anomaly-map overlays of anomalous images (--maps)

OUTPUT_SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # the object as listed: s3://bucket/key, or a local file path
        ("sha256", pa.string()),  # content digest of the bytes scored: with path, what resume skips on
        ("size_bytes", pa.int64()),
        ("width", pa.int32()),  # original size; null for error rows
        ("height", pa.int32()),
        ("resized", pa.bool_()),  # the original was not the detector's size, resized as at training
        ("score", pa.float64()),  # null for error rows
        ("threshold", pa.float64()),
        ("verdict", pa.string()),  # normal, anomalous or error
        ("anomalous", pa.bool_()),  # null for error rows
        ("error", pa.string()),  # null unless the object could not be scored; names it
        ("map_path", pa.string()),  # the anomaly-map overlay written for an anomalous image (--maps)
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("model_sha256", pa.string()),
        ("run", pa.string()),  # the submission that scored this row
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class ModelInfo:
    """Which model scored a row: registry name and version (a local bundle: its path and ``local``)."""

    name: str
    version: str
    sha256: str


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def done_key(path: str, digest: str) -> bytes:
    """16 bytes per scored object: a resume index of a million rows stays near 100 MB per process."""
    return hashlib.blake2b(f"{path}\0{digest}".encode(), digest_size=16).digest()


def decode_batch(
    paths: Sequence[str], blobs: Sequence[bytes], size: int, *, done: Container[bytes] = frozenset()
) -> tuple[dict[str, np.ndarray], int]:
    """Objects -> columns ``path, sha256, size_bytes, width, height, resized, error, image`` (``image``
    ``(N, 3, size, size)`` uint8, zeros on error rows), and how many were skipped as already in ``done``.

    A corrupt, truncated, empty or non-image object is an error row; nothing here raises for bad input.
    """
    rows: list[dict[str, Any]] = []
    images: list[torch.Tensor] = []
    blank = torch.zeros((3, size, size), dtype=torch.uint8)
    for path, data in zip(paths, blobs, strict=True):
        data = bytes(data) if data is not None else b""
        digest = content_digest(data)
        if done_key(path, digest) in done:
            continue
        row: dict[str, Any] = {"path": path, "sha256": digest, "size_bytes": len(data), "width": -1, "height": -1}
        try:
            image, (width, height) = decode_image(data, size, name=path)
            row.update(width=width, height=height, resized=(width, height) != (size, size), error="")
        except CutPasteError as exc:
            image, row["resized"], row["error"] = blank, False, str(exc)
        except Exception as exc:  # a decoder bug on hostile bytes is still one bad object, not a failed job
            image, row["resized"], row["error"] = blank, False, f"cannot decode image {path}: {exc!r}"
        rows.append(row)
        images.append(image)
    skipped = len(paths) - len(rows)
    columns = {key: np.array([r[key] for r in rows], dtype=kind) for key, kind in _DECODED_KINDS.items()}
    columns["image"] = torch.stack(images).numpy() if images else np.zeros((0, 3, size, size), np.uint8)
    return columns, skipped


_DECODED_KINDS = {
    "path": object,
    "sha256": object,
    "size_bytes": np.int64,
    "width": np.int32,
    "height": np.int32,
    "resized": bool,
    "error": object,
}


def map_name(path: str, digest: str) -> str:
    """A map's file name: the object's stem and digest, unique per content and stable across resumes."""
    return f"{PurePosixPath(path).stem}-{digest[:12]}.png"


def score_batch(
    detector: Any,
    batch: Mapping[str, np.ndarray],
    model: ModelInfo,
    *,
    run: str,
    threshold: float | None = None,
    write_map: Callable[[str, bytes], str] | None = None,
) -> pa.Table:
    """Decoded columns (:func:`decode_batch`) -> rows in :data:`OUTPUT_SCHEMA`, in input order.

    Scores come from ``detector.score`` on the uint8 images, as ``cutpaste predict`` computes them. With
    ``write_map`` each anomalous image's overlay is rendered and handed to it (name, PNG bytes); it returns
    where it wrote it.
    """
    threshold = float(detector.threshold if threshold is None else threshold)
    errors = [str(e) for e in batch["error"]]
    ok = np.array([not e for e in errors], dtype=bool)
    n = len(errors)
    scores = np.full(n, np.nan)
    if ok.any():
        images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok]))
        scores[ok] = detector.score(images).double().numpy()
    anomalous = ok & (scores >= threshold)
    map_paths: list[str | None] = [None] * n
    if write_map is not None and anomalous.any():
        _write_maps(detector, batch, np.flatnonzero(anomalous), scores, threshold, write_map, map_paths)
    now = datetime.now(UTC)
    valid = ok.tolist()
    columns = {
        "path": [str(p) for p in batch["path"]],
        "sha256": [str(d) for d in batch["sha256"]],
        "size_bytes": batch["size_bytes"].astype(np.int64).tolist(),
        "width": _masked(batch["width"], valid),
        "height": _masked(batch["height"], valid),
        "resized": [bool(r) for r in batch["resized"]],
        "score": _masked(scores, valid),
        "threshold": [threshold] * n,
        "verdict": [ERROR if not v else ANOMALOUS if a else NORMAL for v, a in zip(valid, anomalous, strict=True)],
        "anomalous": _masked(anomalous, valid),
        "error": [e or None for e in errors],
        "map_path": map_paths,
        "model_name": [model.name] * n,
        "model_version": [model.version] * n,
        "model_sha256": [model.sha256] * n,
        "run": [run] * n,
        "scored_at": [now] * n,
    }
    return pa.Table.from_pydict(columns, schema=OUTPUT_SCHEMA)


def _write_maps(
    detector: Any,
    batch: Mapping[str, np.ndarray],
    picked: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    write_map: Callable[[str, bytes], str],
    map_paths: list[str | None],
) -> None:
    images = torch.from_numpy(np.ascontiguousarray(batch["image"][picked]))
    pngs = map_pngs(detector, images, batch["path"][picked], scores[picked], threshold)
    for i, png in zip(picked, pngs, strict=True):
        map_paths[i] = write_map(map_name(str(batch["path"][i]), str(batch["sha256"][i])), png)


def _masked(values: np.ndarray, valid: list[bool]) -> list[Any]:
    return [v if keep else None for v, keep in zip(values.tolist(), valid, strict=True)]


def map_pngs(
    detector: Any, images: torch.Tensor, paths: Sequence[str], scores: Sequence[float], threshold: float
) -> list[bytes]:
    """One overlay (image, map, blend) per image as PNG bytes, on the detector's fixed colour scale."""
    import io

    _, maps = detector.anomaly_maps(images)
    out = []
    for image, heatmap, path, score in zip(images, maps, paths, scores, strict=True):
        caption = f"{PurePosixPath(str(path)).name}  score {score:.3f}  (threshold {threshold:.3f})"
        picture, values = _display_size(to_hwc(image), heatmap.numpy())
        panel = overlay_panel(picture, values, detector.map_range, None, caption)
        buffer = io.BytesIO()
        panel.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def _display_size(image: np.ndarray, heatmap: np.ndarray, min_side: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Small images (tens of pixels) enlarged by a whole factor, so a panel is readable and its caption fits."""
    factor = -(-min_side // max(heatmap.shape))
    if factor <= 1:
        return image, heatmap
    return np.kron(image, np.ones((factor, factor, 1), image.dtype)), np.kron(heatmap, np.ones((factor, factor)))


def top_scored_figure(
    detector: Any, images: torch.Tensor, paths: Sequence[str], scores: Sequence[float], threshold: float
) -> Image.Image:
    """The highest-scored images with their maps, one panel a row, over the colour scale."""
    import io

    panels = [Image.open(io.BytesIO(png)) for png in map_pngs(detector, images, paths, scores, threshold)]
    title = f"highest-scored images (threshold {threshold:.3f})"
    grid = grid_figure(panels, columns=1, title=title)
    return stack([grid, colour_bar(detector.map_range, grid.width)])


@dataclass
class ScoreSummary:
    """Counts, a bounded sample of scores (for the distribution figure) and the top-k rows of one
    submission, accumulated batch by batch: memory stays flat however many rows it reads."""

    top_k: int = 8
    sample_size: int = 50_000
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("rows", ERROR, ANOMALOUS, "resized"), 0))
    sample: list[float] = field(default_factory=list)
    top: list[tuple[float, str]] = field(default_factory=list)
    _seen_scores: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, table: pa.Table | pa.RecordBatch) -> None:
        columns = table.to_pydict()
        for path, score, verdict, resized in zip(
            columns["path"], columns["score"], columns["verdict"], columns["resized"], strict=True
        ):
            self.counts["rows"] += 1
            self.counts["resized"] += bool(resized)
            if verdict in (ERROR, ANOMALOUS):
                self.counts[verdict] += 1
            if score is None:
                continue
            self._keep(float(score))
            item = (float(score), str(path))
            if len(self.top) < self.top_k:
                heapq.heappush(self.top, item)
            elif item > self.top[0]:
                heapq.heapreplace(self.top, item)

    def _keep(self, score: float) -> None:
        """Reservoir sampling: every score has the same chance to be in the figure's sample."""
        self._seen_scores += 1
        if len(self.sample) < self.sample_size:
            self.sample.append(score)
        elif (j := self._rng.randrange(self._seen_scores)) < self.sample_size:
            self.sample[j] = score

    def metrics(self) -> dict[str, float]:
        scored = self.counts["rows"] - self.counts[ERROR]
        return {
            "images_scored": float(self.counts["rows"]),
            "errors": float(self.counts[ERROR]),
            "resized": float(self.counts["resized"]),
            "anomalous": float(self.counts[ANOMALOUS]),
            "anomaly_rate": self.counts[ANOMALOUS] / scored if scored else 0.0,
        }

    def highest(self) -> list[tuple[float, str]]:
        return sorted(self.top, reverse=True)


def read_bundle_files(directory: str | Path) -> dict[str, bytes]:
    """Every file of a bundle directory (a detector, or an ensemble with its members), by relative path: what
    the driver hands each scoring worker, which may be on a node that cannot see ``directory``."""
    root = Path(directory)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_bundle_files(files: Mapping[str, bytes], sha256: str, *, device: str = "cpu") -> Any:
    """The detector in ``files``, loaded as data only and refused unless it matches ``sha256`` (the digest the
    registry's version is tagged with): the same loader and checks as ``cutpaste predict --sha256``."""
    import tempfile

    from cutpaste.ensemble import load_detector

    with tempfile.TemporaryDirectory(prefix="cutpaste-bundle-") as tmp:
        root = write_bundle_files(files, tmp)
        return load_detector(root, device=device, expected_sha256=sha256)


def write_bundle_files(files: Mapping[str, bytes], directory: str | Path) -> Path:
    """``files`` (from :func:`read_bundle_files`) as a bundle directory again; a name that would land outside
    ``directory`` is refused before anything is written."""
    root = Path(directory).resolve()
    targets = {name: (root / name).resolve() for name in files}
    for name, target in targets.items():
        if root not in target.parents:
            raise ModelBundleError(f"bundle file {name!r} would land outside the bundle: refused")
    for name, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[name])
    return root
