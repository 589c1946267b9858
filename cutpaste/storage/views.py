"""Local MVTec-layout views of cached S3 datasets, published atomically for several processes at once.

    <cache>/views/<bucket>-<prefix>-<hash>/          the root that ``materialize`` returns
        <category> -> .versions/<category>-<fp>       a symlink, swapped atomically to a newer version
        .versions/<category>-<fp>/train/good/...      hard links to cached objects (copies where links fail)

A version directory is built under a temporary name and renamed into place, so a reader sees either
no version or a complete one; ``<fp>`` is the fingerprint of the category's objects, so the same data
is published once and a changed dataset gets a new version while old readers keep the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cutpaste.storage.s3 import S3Uri, StorageError

VERSIONS = ".versions"
_MODE_FILE = ".cutpaste-view"
_OLD_VERSION_S = 3600  # a replaced version stays this long for processes still reading it


def view_root(views_dir: Path, endpoint: str, uri: S3Uri) -> Path:
    """The view directory of ``uri`` at ``endpoint`` (a URL, or "aws" for AWS S3 itself)."""
    digest = hashlib.sha256(f"{endpoint}|{uri.bucket}|{uri.prefix}".encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{uri.bucket}-{uri.prefix}".strip("-"))[:80]
    return views_dir / f"{slug}-{digest}"


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Hard link ``src`` at ``dst``; copy when the file system refuses. True when linked."""
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copyfile(src, dst)
        return False


def publish_category(root: Path, category: str, files: Sequence[tuple[str, Path]], fingerprint: str) -> Path:
    """Make ``root/<category>`` show ``files`` (path below the category, cached file); return the version dir."""
    versions = root / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    name = f"{category}-{fingerprint[:16]}"
    version = versions / name
    if not version.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=versions))
        try:
            linked = True
            for relative, source in files:
                target = tmp / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                linked &= _link_or_copy(source, target)
            (tmp / _MODE_FILE).write_text("link\n" if linked else "copy\n")
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, version)
            except OSError:
                if not version.is_dir():
                    raise
        except OSError as exc:
            raise StorageError(f"cannot build the local view {version}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    os.utime(version)
    link = root / category
    target = f"{VERSIONS}/{name}"
    if not (link.is_symlink() and os.readlink(link) == target):
        if link.exists() and not link.is_symlink():
            raise StorageError(f"{link} exists and is not a view link; remove it or choose another cache dir")
        tmp_link = root / f".{category}.{os.getpid()}.{time.monotonic_ns()}.link"
        os.symlink(target, tmp_link)
        os.replace(tmp_link, link)
    return version


def mark_verified(root: Path, category: str) -> None:
    """Record that the category's current version was just checked against S3 (the file's mtime says when)."""
    marker = root / f".verified-{category}"
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(os.readlink(root / category))
    os.replace(tmp, marker)


def recently_verified(root: Path, category: str, ttl: float) -> bool:
    """True when the category's view was checked against S3 less than ``ttl`` seconds ago and is still current.

    Marks the version as just used (eviction takes it into account) when it answers True.
    """
    marker = root / f".verified-{category}"
    try:
        if time.time() - marker.stat().st_mtime > ttl:
            return False
        target = os.readlink(root / category)
        if marker.read_text() != target:
            return False
        os.utime(root / target)
    except OSError:
        return False
    return True


def last_use_by_inode(views_dir: Path) -> dict[int, float]:
    """Inode -> the last time a view version holding it was used (its directory's mtime)."""
    out: dict[int, float] = {}
    for version in views_dir.glob(f"*/{VERSIONS}/*"):
        try:
            used = version.stat().st_mtime
            for path in version.rglob("*"):
                st = path.stat()
                out[st.st_ino] = max(used, out.get(st.st_ino, 0.0))
        except OSError:
            continue
    return out


def prune_views(views_dir: Path, pinned: Iterable[Path] = ()) -> int:
    """Remove versions whose cached objects were evicted, and replaced versions older than an hour.

    A linked version whose files have a link count of 1 no longer shares them with the cache. Returns
    how many versions were removed; ``pinned`` (this run's versions) stay.
    """
    pinned = {p.resolve() for p in pinned}
    removed = 0
    now = time.time()
    for root in (p for p in views_dir.glob("*") if (p / VERSIONS).is_dir()):
        current = {(root / os.readlink(p)).resolve() for p in root.iterdir() if p.is_symlink()}
        for version in (root / VERSIONS).iterdir():
            if version.name.startswith(".") or version.resolve() in pinned or not version.is_dir():
                continue
            old = version.resolve() not in current and now - version.stat().st_mtime > _OLD_VERSION_S
            if old or _orphaned(version):
                for link in root.iterdir():
                    if link.is_symlink() and (root / os.readlink(link)).resolve() == version.resolve():
                        link.unlink(missing_ok=True)
                shutil.rmtree(version, ignore_errors=True)
                removed += 1
    return removed


def _orphaned(version: Path) -> bool:
    with contextlib.suppress(OSError):
        if (version / _MODE_FILE).read_text().strip() != "link":
            return False
    return any(p.is_file() and p.name != _MODE_FILE and p.stat().st_nlink == 1 for p in version.rglob("*"))
