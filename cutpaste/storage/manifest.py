"""The Parquet manifest of an MVTec-layout dataset in S3: one row per sample, written next to the data.

``s3://bucket/prefix/_manifest.parquet`` holds category, split, label, defect type, image key, mask key,
sizes and ETags of every sample, so a run reads one small object instead of parsing a listing. The
schema metadata keeps a fingerprint of all indexed objects; a fresh listing with another fingerprint
means the manifest is stale (objects added, removed or changed).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from cutpaste.data.layout import IMAGE_SUFFIXES
from cutpaste.storage.s3 import ObjectInfo, ObjectNotFoundError, PrefixNotFoundError, S3Connection, S3Uri, StorageError

DATASET_MANIFEST = "_manifest.parquet"
MANIFEST_VERSION = "1"

SCHEMA = pa.schema(
    [
        ("category", pa.string()),
        ("split", pa.string()),
        ("label", pa.int8()),
        ("defect_type", pa.string()),
        ("image_key", pa.string()),
        ("mask_key", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("mask_size", pa.int64()),
        ("mask_etag", pa.string()),
    ]
)


class StaleManifestWarning(UserWarning):
    """The manifest no longer matched the objects under its prefix and was rebuilt."""


@dataclass(frozen=True)
class ManifestEntry:
    category: str
    split: str
    label: int
    defect_type: str
    image_key: str
    size: int
    etag: str
    mask_key: str | None = None
    mask_size: int | None = None
    mask_etag: str | None = None

    def objects(self) -> list[ObjectInfo]:
        out = [ObjectInfo(self.image_key, self.size, self.etag)]
        if self.mask_key is not None:
            out.append(ObjectInfo(self.mask_key, int(self.mask_size or 0), self.mask_etag or ""))
        return out


@dataclass
class ManifestDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        parts = [
            f"{len(v)} {k}" for k, v in (("added", self.added), ("removed", self.removed), ("changed", self.changed))
        ]
        first = (self.added + self.removed + self.changed)[:1]
        return ", ".join(parts) + (f" (e.g. {first[0]})" if first else "")


@dataclass
class Manifest:
    uri: S3Uri
    entries: list[ManifestEntry]

    @property
    def key(self) -> str:
        return self.uri.key(DATASET_MANIFEST)

    def categories(self) -> list[str]:
        return sorted({e.category for e in self.entries if e.split == "train"})

    def select(self, categories: Sequence[str] | None = None) -> list[ManifestEntry]:
        """Entries of ``categories`` (all when None); an unknown category is a :class:`PrefixNotFoundError`."""
        known = self.categories()
        if categories is None:
            return list(self.entries)
        missing = [c for c in categories if c not in known]
        if missing:
            raise PrefixNotFoundError(
                f"category {missing[0]!r} not found under {self.uri} (found: {', '.join(known) or 'none'})"
            )
        wanted = set(categories)
        return [e for e in self.entries if e.category in wanted]

    def objects(self, categories: Sequence[str] | None = None) -> list[ObjectInfo]:
        return [obj for entry in self.select(categories) for obj in entry.objects()]

    def fingerprint(self, categories: Sequence[str] | None = None) -> str:
        return fingerprint(self.objects(categories))

    def to_parquet(self) -> bytes:
        columns = {name: [getattr(e, name) for e in self.entries] for name in SCHEMA.names}
        table = pa.table(columns, schema=SCHEMA).replace_schema_metadata(
            {"cutpaste.manifest_version": MANIFEST_VERSION, "cutpaste.fingerprint": self.fingerprint()}
        )
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()

    @classmethod
    def from_parquet(cls, uri: S3Uri, data: bytes) -> Manifest:
        table = pq.read_table(io.BytesIO(data))
        missing = [n for n in SCHEMA.names if n not in table.column_names]
        if missing:
            raise StorageError(f"manifest s3://{uri.bucket}/{uri.key(DATASET_MANIFEST)} lacks columns {missing}")
        rows = table.select(SCHEMA.names).to_pylist()
        entries = [ManifestEntry(**row) for row in rows]
        for entry in entries:
            _check_entry(uri, entry)
        return cls(uri, entries)


def _check_entry(uri: S3Uri, entry: ManifestEntry) -> None:
    """A stored manifest is input like any other: its keys must lie in the layout under its own prefix.

    Keys become local paths (``<view>/<category>/<split>/<defect>/<file>``), so a key with ``..``, an
    absolute part, an empty part or another prefix would write outside the view; the whole manifest is refused.
    """
    where = f"manifest s3://{uri.bucket}/{uri.key(DATASET_MANIFEST)}"
    folder = "good" if entry.split == "train" else entry.defect_type
    expected = [(entry.image_key, (entry.category, entry.split, folder))]
    if entry.mask_key is not None:
        expected.append((entry.mask_key, (entry.category, "ground_truth", entry.defect_type)))
    for key, dirs in expected:
        rel = uri.relative(key) if key.startswith(uri.list_prefix) else None
        parts = rel.split("/") if rel is not None else []
        if (
            rel is None
            or len(parts) != 4
            or tuple(parts[:3]) != dirs
            or entry.split not in ("train", "test")
            or any(not p or p.startswith(".") or "\\" in p for p in parts)
        ):
            raise StorageError(
                f"{where} lists key {key!r}, which is not <category>/<split>/<folder>/<file> under {uri}; "
                "refusing the manifest (rebuild it with `cutpaste data index`)"
            )


def fingerprint(objects: Iterable[ObjectInfo]) -> str:
    digest = hashlib.sha256()
    for obj in sorted(objects, key=lambda o: o.key):
        digest.update(f"{obj.key}\t{obj.size}\t{obj.etag}\n".encode())
    return digest.hexdigest()


def manifest_from_listing(uri: S3Uri, objects: Iterable[ObjectInfo]) -> Manifest:
    """Parse ``<category>/{train/good, test/<defect>, ground_truth/<defect>}/<file>`` keys into entries.

    Hidden files (a part starting with ``.``), non-image files and deeper nesting are ignored, exactly as
    :func:`cutpaste.data.layout.list_samples` ignores them locally.
    """
    images: list[tuple[str, str, str, ObjectInfo]] = []
    masks: dict[str, ObjectInfo] = {}
    for obj in objects:
        if not obj.key.startswith(uri.list_prefix):
            continue
        rel = PurePosixPath(uri.relative(obj.key))
        parts = rel.parts
        if len(parts) != 4 or any(p.startswith(".") for p in parts) or rel.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        category, split, folder, _ = parts
        if split == "ground_truth":
            masks[obj.key] = obj
        elif (split == "train" and folder == "good") or split == "test":
            images.append((category, split, folder, obj))
    with_train = {c for c, s, _, _ in images if s == "train"}
    entries = []
    for category, split, defect, obj in sorted(images, key=lambda t: t[3].key):
        if category not in with_train:
            continue
        label = 0 if defect == "good" else 1
        mask = None
        if label:
            stem = PurePosixPath(obj.key).stem
            mask = masks.get(uri.key(f"{category}/ground_truth/{defect}/{stem}_mask.png"))
        entries.append(
            ManifestEntry(
                category=category,
                split=split,
                label=label,
                defect_type=defect,
                image_key=obj.key,
                size=obj.size,
                etag=obj.etag,
                mask_key=mask.key if mask else None,
                mask_size=mask.size if mask else None,
                mask_etag=mask.etag if mask else None,
            )
        )
    return Manifest(uri, entries)


def _objects_of(manifest: Manifest, categories: Sequence[str] | None) -> dict[str, ObjectInfo]:
    wanted = None if categories is None else set(categories)
    return {o.key: o for e in manifest.entries if wanted is None or e.category in wanted for o in e.objects()}


def diff(old: Manifest, new: Manifest, categories: Sequence[str] | None = None) -> ManifestDiff:
    """Objects added, removed and changed from ``old`` to ``new`` (within ``categories`` when given)."""
    before, after = _objects_of(old, categories), _objects_of(new, categories)
    return ManifestDiff(
        added=sorted(after.keys() - before.keys()),
        removed=sorted(before.keys() - after.keys()),
        changed=sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
    )


def read_manifest(conn: S3Connection, uri: S3Uri) -> Manifest | None:
    """The stored manifest, or None when there is none (a missing bucket still raises)."""
    key = uri.key(DATASET_MANIFEST)
    try:
        data = conn.client.get_object(Bucket=uri.bucket, Key=key)["Body"].read()
    except Exception as exc:
        error = conn.error(exc, uri, key, action="read manifest")
        if isinstance(error, ObjectNotFoundError):
            return None
        raise error from None
    try:
        return Manifest.from_parquet(uri, data)
    except (pa.ArrowException, OSError, TypeError, ValueError) as exc:
        warnings.warn(
            f"ignoring unreadable manifest s3://{uri.bucket}/{key}: {exc}", StaleManifestWarning, stacklevel=2
        )
        return None


def write_manifest(conn: S3Connection, manifest: Manifest) -> None:
    try:
        conn.client.put_object(Bucket=manifest.uri.bucket, Key=manifest.key, Body=manifest.to_parquet())
    except Exception as exc:
        raise conn.error(exc, manifest.uri, manifest.key, action="write manifest") from None


def scan(conn: S3Connection, uri: S3Uri, *, progress: bool = False) -> Manifest:
    """List the prefix and parse it; errors name the bucket and prefix when there is nothing to use."""
    objects = conn.list_objects(uri, progress=progress)
    if not objects:
        raise PrefixNotFoundError(f"no objects under {uri} (bucket {uri.bucket!r} exists; is the prefix right?)")
    manifest = manifest_from_listing(uri, objects)
    if not manifest.entries:
        hint = f"found {len(objects)} other objects"
        if uri.prefix and any(uri.relative(o.key).startswith("train/good/") for o in objects):
            parent = S3Uri(uri.bucket, uri.prefix.rpartition("/")[0])
            hint = f"it looks like one category: pass its parent {parent}"
        raise PrefixNotFoundError(f"no category under {uri} (expected <category>/train/good/<image> keys; {hint})")
    return manifest


def build_index(conn: S3Connection, uri: S3Uri, *, progress: bool = False) -> tuple[Manifest, ManifestDiff | None]:
    """List, parse and write the manifest; also return how it differs from the one it replaces (None if new)."""
    old = read_manifest(conn, uri)
    new = scan(conn, uri, progress=progress)
    write_manifest(conn, new)
    return new, (diff(old, new) if old is not None else None)


def load_manifest(
    conn: S3Connection,
    uri: S3Uri,
    categories: Sequence[str] | None = None,
    *,
    verify: bool = True,
    progress: bool = False,
) -> Manifest:
    """The manifest of ``uri``, built when absent and rebuilt (with a :class:`StaleManifestWarning`) when stale.

    With ``verify`` the objects of the requested categories are listed (one request per 1000 keys) and
    compared with the manifest; without it the manifest is trusted, and an object changed since then
    still fails the download (If-Match) with a :class:`StaleManifestError`.
    """
    manifest = read_manifest(conn, uri)
    if manifest is None:
        manifest = scan(conn, uri, progress=progress)
        _write_best_effort(conn, manifest)
        return manifest
    if not verify:
        return manifest
    known = manifest.categories()
    if categories is not None and all(c in known for c in categories):
        listed = []
        for category in categories:
            listed += conn.list_objects(uri, uri.key(f"{category}/"), progress=progress)
        fresh = manifest_from_listing(uri, listed)
        if fresh.fingerprint(categories) == manifest.fingerprint(categories):
            return manifest
        fresh = scan(conn, uri, progress=progress)
    else:
        fresh = scan(conn, uri, progress=progress)
        if fresh.fingerprint() == manifest.fingerprint():
            return manifest
    changes = diff(manifest, fresh, categories)
    warnings.warn(
        f"manifest of {uri} was stale ({changes.summary() if changes else 'other categories changed'}); rebuilt it",
        StaleManifestWarning,
        stacklevel=2,
    )
    _write_best_effort(conn, fresh)
    return fresh


def _write_best_effort(conn: S3Connection, manifest: Manifest) -> None:
    """Readers may lack write access: they still work from the listing, with a warning."""
    try:
        write_manifest(conn, manifest)
    except StorageError as exc:
        warnings.warn(f"could not save the manifest ({exc}); using the listing", StaleManifestWarning, stacklevel=3)
