"""A per-node object cache keyed by ETag: atomic fills, size-verified hits, LRU eviction under a size limit.

    <cache>/objects/ab/<sha256(etag:size)>   complete objects, read-only, mtime = last use
    <cache>/tmp/<name>.<pid>.<rand>.part     downloads in progress (never read; swept when their process is gone)
    <cache>/locks/<abc>.lock                 4096 lock stripes, so two processes never fetch one object twice at once

A file appears under ``objects/`` only by ``os.replace`` of a fully written and verified temporary file,
so a crash or a kill leaves at most a ``.part`` file, never a half object. Every hit checks the size, which
also catches a file truncated by a power loss. Several processes (Ray workers on one node) may fill the
cache at once: the stripe locks serialize work on one object, and the rename makes the last writer win
with identical bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from cutpaste.storage.s3 import ObjectInfo, SizeMismatchError, StorageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: single-process use only
    fcntl = None  # type: ignore[assignment]

DEFAULT_MAX_GB = 50.0
_LOW_WATER = 0.9  # evict down to 90% of the limit, so a full cache does not evict on every run
_STALE_TMP_S = 24 * 3600


def default_cache_dir() -> Path:
    return Path(os.environ.get("CUTPASTE_CACHE_DIR") or Path.home() / ".cache" / "cutpaste").expanduser()


def default_max_bytes() -> int:
    raw = os.environ.get("CUTPASTE_CACHE_MAX_GB", "")
    try:
        return int(float(raw or DEFAULT_MAX_GB) * 1024**3)
    except ValueError:
        raise StorageError(f"CUTPASTE_CACHE_MAX_GB must be a number of GiB, got {raw!r}") from None


class ObjectCache:
    def __init__(self, root: str | Path | None = None, *, max_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        try:
            for folder in (self.objects, self.tmp, self.locks):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cache directory {self.root} is not usable: {exc.strerror or exc}") from None
        self.filled_bytes = 0  # bytes this instance added (eviction only runs after a fill)

    @staticmethod
    def name_for(obj: ObjectInfo) -> str:
        return hashlib.sha256(f"{obj.etag}:{obj.size}".encode()).hexdigest()

    def path_for(self, obj: ObjectInfo) -> Path:
        name = self.name_for(obj)
        return self.objects / name[:2] / name

    def lookup(self, obj: ObjectInfo) -> Path | None:
        """The cached file of ``obj`` if present with the right size; marks it as just used."""
        path = self.path_for(obj)
        try:
            size = path.stat().st_size
            if size != obj.size:  # only a crash of the file system itself can leave this
                path.unlink(missing_ok=True)
                return None
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        fd = os.open(self.locks / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def fill(
        self,
        obj: ObjectInfo,
        write: Callable[[BinaryIO], None],
        *,
        label: str,
        check: Callable[[Path], None] | None = None,
    ) -> Path:
        """Cached path of ``obj``; on a miss ``write`` streams its bytes into a temporary file first.

        The temporary file is checked (size, then ``check``) and renamed into place; on any error it is
        removed and nothing enters the cache. ``label`` (the object's URL) names it in errors.
        """
        hit = self.lookup(obj)
        if hit is not None:
            return hit
        name = self.name_for(obj)
        with self._lock(name[:3]):
            hit = self.lookup(obj)  # another process may have fetched it while we waited
            if hit is not None:
                return hit
            final = self.path_for(obj)
            tmp = self.tmp / f"{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
            try:
                with open(tmp, "wb") as handle:
                    write(handle)
                size = tmp.stat().st_size
                if size != obj.size:
                    raise SizeMismatchError(f"{label}: received {size} bytes, expected {obj.size}")
                if check is not None:
                    check(tmp)
                tmp.chmod(0o444)  # views hard-link these files: nobody should edit them in place
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
        self.filled_bytes += obj.size
        return final

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every cached object."""
        return [(used, size, path) for used, size, _, path in self._scan()]

    def _scan(self) -> list[tuple[float, int, int, Path]]:
        out = []
        for path in self.objects.glob("*/*"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, st.st_ino, path))
        return out

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: Iterable[Path] = (), recent: Callable[[], dict[int, float]] | None = None) -> int:
        """Remove least recently used objects until the cache is under 90% of its limit; return bytes freed.

        Objects in ``keep`` (the ones the current run uses) stay even if that leaves the cache over its limit.
        ``recent()`` maps inodes to later uses than their mtime says (views used without touching each file).
        """
        with self._lock("evict"):
            entries = self._scan()
            total = sum(size for _, size, _, _ in entries)
            if total <= self.max_bytes:
                return 0
            keep = set(keep)
            recent = recent() if recent is not None else {}
            target = int(self.max_bytes * _LOW_WATER)
            freed = 0
            ranked = sorted((max(used, recent.get(ino, 0.0)), size, path) for used, size, ino, path in entries)
            for _, size, path in ranked:
                if total - freed <= target:
                    break
                if path in keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    freed += size
            return freed

    def sweep_tmp(self) -> int:
        """Delete ``.part`` files of processes that no longer run (or older than a day); return how many."""
        removed = 0
        now = time.time()
        for path in self.tmp.glob("*.part"):
            try:
                pid = int(path.name.split(".")[1])
                age = now - path.stat().st_mtime
            except (IndexError, ValueError, FileNotFoundError):
                continue
            if age > _STALE_TMP_S or not _alive(pid):
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
