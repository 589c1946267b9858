"""What a category holds, file by file, with a fingerprint per file: the record of what a model saw.

For ``s3://`` data the rows come from the Parquet manifest (ETags, no download); for a local root from
the files themselves (SHA-256 of the content), so a changed image changes the record either way.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from cutpaste.data.layout import list_samples
from cutpaste.storage.manifest import load_manifest
from cutpaste.storage.s3 import S3Connection, is_remote, parse_s3_uri

SPLITS = ("train", "test")


@dataclass(frozen=True)
class InventoryRow:
    split: str
    label: int
    defect_type: str
    file: str  # relative to the category
    size: int
    fingerprint: str  # S3 ETag, or SHA-256 of a local file
    mask: str | None = None
    mask_fingerprint: str | None = None


def category_inventory(data: str | Path, category: str, *, endpoint_url: str | None = None) -> list[dict]:
    """One row per sample of ``category`` under ``data`` (both splits), sorted by split and file."""
    rows = _remote_rows(str(data), category, endpoint_url) if is_remote(data) else _local_rows(Path(data), category)
    return [asdict(r) for r in sorted(rows, key=lambda r: (r.split, r.file))]


def _remote_rows(data: str, category: str, endpoint_url: str | None) -> list[InventoryRow]:
    uri = parse_s3_uri(data)
    manifest = load_manifest(S3Connection(endpoint_url), uri, [category], verify=False)
    prefix = uri.key(f"{category}/")
    return [
        InventoryRow(
            split=e.split,
            label=e.label,
            defect_type=e.defect_type,
            file=e.image_key.removeprefix(prefix),
            size=e.size,
            fingerprint=e.etag,
            mask=e.mask_key.removeprefix(prefix) if e.mask_key else None,
            mask_fingerprint=e.mask_etag,
        )
        for e in manifest.select([category])
    ]


def _local_rows(root: Path, category: str) -> list[InventoryRow]:
    base = root / category
    rows = []
    for split in SPLITS:
        for s in list_samples(root, category, split):
            rows.append(
                InventoryRow(
                    split=split,
                    label=s.label,
                    defect_type=s.defect_type,
                    file=str(s.path.relative_to(base)),
                    size=s.path.stat().st_size,
                    fingerprint=_sha256(s.path),
                    mask=str(s.mask_path.relative_to(base)) if s.mask_path else None,
                    mask_fingerprint=_sha256(s.mask_path) if s.mask_path else None,
                )
            )
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
