"""Parallel downloads into the cache and parallel multipart uploads, with progress bars and retries.

botocore retries each request (its own ``Config(retries=...)``, set in :mod:`cutpaste.storage.s3`); on top
of that a whole object is retried (:class:`RetryPolicy`, a ``tenacity`` policy: exponential backoff with
jitter) when the connection fails or drops mid-body, which no single request's retry can recover. Errors
that retrying cannot fix (access denied, missing or changed object, corrupt image) stop at once. After the
first object gives up, the others stop retrying and the pending ones are cancelled, so a dead endpoint
fails fast with one message.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from boto3.s3.transfer import TransferConfig
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt
from tqdm import tqdm

from cutpaste.data.layout import IMAGE_SUFFIXES, discover_categories
from cutpaste.storage.cache import ObjectCache
from cutpaste.storage.s3 import (
    CorruptObjectError,
    ObjectInfo,
    S3Connection,
    S3Uri,
    SizeMismatchError,
    StorageError,
    TransferError,
)

MULTIPART_CHUNK = 8 * 1024 * 1024
_T = TypeVar("_T")


def default_workers() -> int:
    """Downloads at once: 4 per CPU, 16 to 64 (S3 GETs mostly wait on the network, so more than the CPUs)."""
    return min(64, max(16, 4 * (os.cpu_count() or 2)))


@dataclass(frozen=True)
class RetryPolicy:
    """Whole-object attempts; the n-th retry waits about ``base_delay * 2**(n-1)`` seconds (capped)."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, retry: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)

    def retrying(
        self, retryable: tuple[type[BaseException], ...], *, sleep: Callable[[float], None] = time.sleep
    ) -> Retrying:
        """This policy as a ``tenacity`` retrier of ``retryable`` errors; the last one is raised as it is."""
        return Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=lambda state: self.delay(state.attempt_number),
            retry=retry_if_exception_type(retryable),
            sleep=sleep,
            reraise=True,
        )


class _Aborted(Exception):
    """Another object already failed for good: stop this one quietly."""


class _Bar:
    """A byte bar (so tqdm shows MB/s) with a file count in its postfix; safe to update from threads."""

    def __init__(self, desc: str, total_bytes: int, total_files: int, enabled: bool) -> None:
        self._bar = tqdm(
            desc=desc, total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled
        )
        self._files, self._total_files, self._lock = 0, total_files, threading.Lock()
        self._bar.set_postfix_str(f"0/{total_files} files", refresh=False)

    def bytes(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def file_done(self, skipped_bytes: int = 0) -> None:
        with self._lock:
            self._files += 1
            if skipped_bytes:
                self._bar.total = max(0, (self._bar.total or 0) - skipped_bytes)
            self._bar.set_postfix_str(f"{self._files}/{self._total_files} files", refresh=False)
            self._bar.update(0)  # redraws at most every tqdm.mininterval

    def close(self) -> None:
        self._bar.close()


def _with_retries(action: Callable[[], _T], retry: RetryPolicy, abort: threading.Event) -> _T:
    """``action()`` under ``retry``; once ``abort`` is set (another object gave up) it stops quietly."""

    def sleep(seconds: float) -> None:
        if abort.wait(seconds):
            raise _Aborted

    if abort.is_set():
        raise _Aborted
    try:
        return retry.retrying((TransferError, SizeMismatchError), sleep=sleep)(action)
    except (TransferError, SizeMismatchError) as exc:
        raise type(exc)(f"{exc} (gave up after {retry.attempts} attempts)") from None


def _run_all(jobs: Sequence[Callable[[], None]], workers: int, abort: threading.Event) -> None:
    """Run ``jobs`` on a bounded pool; on the first failure cancel the rest and raise that failure."""
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: stop the workers instead of waiting for every pending job
            abort.set()
            for future in futures:
                future.cancel()
            raise
        failed = [f for f in done if f.exception() is not None and not isinstance(f.exception(), _Aborted)]
        if failed:
            abort.set()
            for future in pending:
                future.cancel()
            wait(pending)
            first = failed[0].exception()
            others = sum(
                1
                for f in futures
                if f is not failed[0] and not f.cancelled() and not isinstance(f.exception(), _Aborted | type(None))
            )
            if others > 0 and isinstance(first, StorageError):
                raise type(first)(f"{first} (and {others} more objects failed)") from None
            raise first  # type: ignore[misc]


def check_image(path: Path, label: str) -> None:
    """Raise :class:`CorruptObjectError` naming ``label`` unless ``path`` parses as an image.

    Pillow's ``verify`` walks the whole file (for PNG: every chunk's CRC) without decoding pixels.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:
        raise CorruptObjectError(f"{label} is not a decodable image: {' '.join(str(exc).split())}") from None


def download_to_cache(
    conn: S3Connection,
    uri: S3Uri,
    objects: Sequence[ObjectInfo],
    cache: ObjectCache,
    *,
    workers: int | None = None,
    retry: RetryPolicy | None = None,
    progress: bool = False,
    check_images: bool = True,
) -> dict[str, Path]:
    """Key -> cached file for every object, fetching misses in parallel (``workers`` threads).

    Each GET carries ``If-Match`` with the manifest's ETag, so an object replaced since indexing fails
    with a :class:`~cutpaste.storage.s3.StaleManifestError` instead of mixing versions.
    """
    unique = list({o.key: o for o in objects}.values())
    download = _Download(
        conn,
        uri,
        cache,
        retry or RetryPolicy(),
        threading.Event(),
        _Bar(f"download {uri}", sum(o.size for o in unique), len(unique), progress),
        check_images,
    )
    try:
        _run_all([lambda o=o: download.fetch(o) for o in unique], workers or default_workers(), download.abort)
    finally:
        download.bar.close()
    return download.paths


@dataclass
class _Download:
    """What the download threads share (connection, cache, progress, the abort flag and the results), so
    fetching one object is a method instead of closures nested three deep."""

    conn: S3Connection
    uri: S3Uri
    cache: ObjectCache
    retry: RetryPolicy
    abort: threading.Event
    bar: _Bar
    check_images: bool
    paths: dict[str, Path] = field(default_factory=dict)

    def fetch(self, obj: ObjectInfo) -> None:
        """A cache hit costs no request; a miss is filled with retries and, for images, checked to decode."""
        label = f"s3://{self.uri.bucket}/{obj.key}"
        hit = self.cache.lookup(obj)
        if hit is not None:
            self.paths[obj.key] = hit
            self.bar.file_done(skipped_bytes=obj.size)
            return
        check = (
            (lambda p: check_image(p, label))
            if self.check_images and Path(obj.key).suffix.lower() in IMAGE_SUFFIXES
            else None
        )
        self.paths[obj.key] = _with_retries(
            lambda: self.cache.fill(obj, lambda handle: self._write(obj, handle), label=label, check=check),
            self.retry,
            self.abort,
        )
        self.bar.file_done()

    def _write(self, obj: ObjectInfo, handle: BinaryIO) -> None:
        """Streams the object's body into ``handle``; a failed attempt takes its bytes off the bar again."""
        written = 0
        try:
            extra = {"IfMatch": f'"{obj.etag}"'} if obj.etag else {}
            body = self.conn.client.get_object(Bucket=self.uri.bucket, Key=obj.key, **extra)["Body"]
            for chunk in body.iter_chunks(1 << 20):
                if self.abort.is_set():
                    raise _Aborted
                handle.write(chunk)
                written += len(chunk)
                self.bar.bytes(len(chunk))
        except _Aborted:
            raise
        except Exception as exc:
            self.bar.bytes(-written)
            raise self.conn.error(exc, self.uri, obj.key, action="download") from None


def local_etag(path: Path, *, chunk_size: int = MULTIPART_CHUNK) -> str:
    """The ETag S3 gives ``path`` when uploaded with our TransferConfig (MD5, or MD5 of part MD5s + "-N")."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size < chunk_size:
            return hashlib.md5(handle.read(), usedforsecurity=False).hexdigest()
        digests = [
            hashlib.md5(block, usedforsecurity=False).digest() for block in iter(lambda: handle.read(chunk_size), b"")
        ]
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def dataset_files(local_dir: Path) -> list[tuple[str, Path]]:
    """(key below the prefix, file) of every image and mask of every category under ``local_dir``."""
    out = []
    for category in discover_categories(local_dir):
        for path in sorted((local_dir / category).rglob("*")):
            rel = path.relative_to(local_dir)
            if (
                path.is_file()
                and path.suffix.lower() in IMAGE_SUFFIXES
                and not any(p.startswith(".") for p in rel.parts)
            ):
                out.append((rel.as_posix(), path))
    return out


@dataclass
class UploadReport:
    uploaded: int
    skipped: int
    bytes_uploaded: int


def upload_directory(
    conn: S3Connection,
    local_dir: str | Path,
    uri: S3Uri,
    *,
    workers: int = 8,
    retry: RetryPolicy | None = None,
    progress: bool = False,
) -> UploadReport:
    """Upload the MVTec-layout images and masks under ``local_dir``, skipping objects already identical.

    An object counts as identical when its size and ETag match the local file's (see :func:`local_etag`).
    Large files go up as parallel multipart uploads (8 MiB parts).
    """
    local_dir = Path(local_dir)
    retry = retry or RetryPolicy()
    files = dataset_files(local_dir)
    todo = _changed_files(conn, uri, files, progress)
    upload = _Upload(
        conn,
        uri,
        retry,
        threading.Event(),
        _Bar(f"upload {uri}", sum(p.stat().st_size for _, p in todo), len(todo), progress),
    )
    try:
        _run_all([lambda k=k, p=p: upload.put(k, p) for k, p in todo], workers, upload.abort)
    finally:
        upload.bar.close()
    return UploadReport(
        uploaded=len(todo), skipped=len(files) - len(todo), bytes_uploaded=sum(p.stat().st_size for _, p in todo)
    )


def _changed_files(
    conn: S3Connection, uri: S3Uri, files: Sequence[tuple[str, Path]], progress: bool
) -> list[tuple[str, Path]]:
    """(key, file) of the files whose object is missing or differs, so that a repeated upload sends nothing."""
    remote = {o.key: o for o in conn.list_objects(uri, progress=progress)}
    todo = []
    for rel, path in files:
        key = uri.key(rel)
        have = remote.get(key)
        if have is not None and have.size == path.stat().st_size and have.etag == local_etag(path):
            continue
        todo.append((key, path))
    return todo


@dataclass
class _Upload:
    """What the upload threads share, so uploading one file is a method instead of nested closures."""

    conn: S3Connection
    uri: S3Uri
    retry: RetryPolicy
    abort: threading.Event
    bar: _Bar
    # Multipart parts of MULTIPART_CHUNK, so local_etag can predict the ETag S3 gives the object.
    config: TransferConfig = field(
        default_factory=lambda: TransferConfig(
            multipart_threshold=MULTIPART_CHUNK,
            multipart_chunksize=MULTIPART_CHUNK,
            max_concurrency=4,
            use_threads=True,
        )
    )

    def put(self, key: str, path: Path) -> None:
        _with_retries(lambda: self._attempt(key, path), self.retry, self.abort)
        self.bar.file_done()

    def _attempt(self, key: str, path: Path) -> None:
        """One upload; a failed attempt takes its bytes off the bar again and reports the underlying error
        (boto3 wraps it in S3UploadFailedError)."""
        sent = [0]

        def callback(n: int) -> None:
            sent[0] += n
            self.bar.bytes(n)

        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            self.conn.client.upload_file(
                str(path),
                self.uri.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=self.config,
                Callback=callback,
            )
        except Exception as exc:
            self.bar.bytes(-sent[0])
            cause = exc.__cause__ if type(exc).__name__ == "S3UploadFailedError" and exc.__cause__ else exc
            raise self.conn.error(cause, self.uri, key, action="upload") from None
