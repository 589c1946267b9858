"""Entry points that take a data location: a local directory, or ``s3://bucket/prefix`` made local.

``materialize`` turns an S3 dataset into a local MVTec-layout directory that
:func:`cutpaste.data.layout.list_samples` reads: manifest (built or refreshed when stale), then parallel
downloads into the per-node cache, then an atomically published view of hard links.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cutpaste.data.layout import discover_categories
from cutpaste.storage.cache import ObjectCache, default_cache_dir
from cutpaste.storage.manifest import Manifest, ManifestDiff, build_index, fingerprint, load_manifest
from cutpaste.storage.s3 import S3Connection, StorageError, env_endpoint, is_remote, parse_s3_uri
from cutpaste.storage.transfer import RetryPolicy, UploadReport, default_workers, download_to_cache, upload_directory
from cutpaste.storage.views import (
    last_use_by_inode,
    mark_verified,
    prune_views,
    publish_category,
    recently_verified,
    view_root,
)

DEFAULT_VERIFY_TTL_S = 300.0


def list_categories(data: str | Path, *, endpoint_url: str | None = None) -> list[str]:
    """Categories of a local dataset root, or of ``s3://bucket/prefix`` (from its manifest)."""
    if not is_remote(data):
        return discover_categories(data)
    uri = parse_s3_uri(str(data))
    return load_manifest(S3Connection(endpoint_url), uri).categories()


def _verify_ttl(value: float | None) -> float:
    if value is not None:
        return value
    raw = os.environ.get("CUTPASTE_S3_VERIFY_TTL", "")
    try:
        return float(raw) if raw else DEFAULT_VERIFY_TTL_S
    except ValueError:
        raise StorageError(f"CUTPASTE_S3_VERIFY_TTL must be a number of seconds, got {raw!r}") from None


def materialize(
    data: str | Path,
    categories: Sequence[str] | None = None,
    *,
    endpoint_url: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    workers: int | None = None,
    retry: RetryPolicy | None = None,
    verify_manifest: bool | None = None,
    verify_ttl: float | None = None,
    max_cache_bytes: int | None = None,
) -> Path:
    """A local directory in MVTec layout holding ``categories`` (all when None) of ``data``.

    A local path comes back unchanged. For ``s3://bucket/prefix`` the objects are fetched through the
    cache in ``cache_dir`` (default ``$CUTPASTE_CACHE_DIR`` or ``~/.cache/cutpaste``) and the returned
    directory lives under it. Safe to call from several processes on one node at once.

    Staleness: the manifest is checked against a listing of the requested categories, unless
    ``verify_manifest`` is False (or ``CUTPASTE_S3_VERIFY_MANIFEST=0``). A category this node checked less
    than ``verify_ttl`` seconds ago (default ``$CUTPASTE_S3_VERIFY_TTL`` or 300; 0 = check every time) is
    served from its local view without any request, so many workers starting at once list S3 once.
    """
    if not is_remote(data):
        return Path(data)
    if isinstance(categories, str):
        categories = [categories]
    if verify_manifest is None:
        verify_manifest = os.environ.get("CUTPASTE_S3_VERIFY_MANIFEST", "1").lower() not in ("0", "false", "no")
    uri = parse_s3_uri(str(data))
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = view_root(cache_root / "views", endpoint_url or env_endpoint() or "aws", uri)
    ttl = _verify_ttl(verify_ttl)
    if categories and ttl > 0 and all(recently_verified(root, c, ttl) for c in categories):
        return root

    workers = workers or default_workers()
    conn = S3Connection(endpoint_url, max_pool_connections=max(10, workers))
    manifest = load_manifest(conn, uri, categories, verify=verify_manifest, progress=progress)
    wanted = list(categories) if categories is not None else manifest.categories()
    entries = manifest.select(wanted)
    cache = ObjectCache(cache_root, max_bytes=max_cache_bytes)
    cache.sweep_tmp()
    objects = [obj for entry in entries for obj in entry.objects()]
    paths = download_to_cache(conn, uri, objects, cache, workers=workers, retry=retry, progress=progress)
    versions = []
    for category in wanted:
        mine = [obj for entry in entries if entry.category == category for obj in entry.objects()]
        files = [(uri.relative(obj.key).split("/", 1)[1], paths[obj.key]) for obj in mine]
        versions.append(publish_category(root, category, files, fingerprint(mine)))
        if verify_manifest:
            mark_verified(root, category)
    root.mkdir(parents=True, exist_ok=True)
    views = cache.root / "views"
    if cache.filled_bytes and cache.evict(keep=paths.values(), recent=lambda: last_use_by_inode(views)):
        prune_views(views, pinned=versions)
    return root


def index(
    data: str, *, endpoint_url: str | None = None, progress: bool = False
) -> tuple[Manifest, ManifestDiff | None]:
    """Write (or rewrite) the manifest of ``s3://bucket/prefix``; also return its difference from the old one."""
    return build_index(S3Connection(endpoint_url), parse_s3_uri(data), progress=progress)


def upload(
    local_dir: str | Path,
    data: str,
    *,
    endpoint_url: str | None = None,
    workers: int = 8,
    retry: RetryPolicy | None = None,
    progress: bool = False,
) -> tuple[UploadReport, Manifest]:
    """Upload a local MVTec-layout dataset to ``s3://bucket/prefix`` (unchanged objects skipped), then index it."""
    uri = parse_s3_uri(data)
    conn = S3Connection(endpoint_url, max_pool_connections=max(10, workers * 4))
    report = upload_directory(conn, local_dir, uri, workers=workers, retry=retry, progress=progress)
    manifest, _ = build_index(conn, uri, progress=progress)
    return report, manifest
