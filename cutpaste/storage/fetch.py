"""``cutpaste data fetch-mvtec``: download the MVTec AD archive (checksum, resume) and extract it safely.

The download goes to ``<dir>/.downloads/<name>.part``; an interrupted one resumes with an HTTP Range
request (a server that ignores Range restarts it from zero). The SHA-256 is checked before the file
takes its final name. Extraction refuses the whole archive, before anything reaches ``<dir>``, when a
member is absolute, climbs out with ``..``, links outside, or is a device: it is unpacked in a hidden
temporary folder inside ``<dir>`` and its top-level entries are renamed into place only at the end.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from cutpaste.storage.s3 import StorageError
from cutpaste.storage.transfer import RetryPolicy

# The official archive (all 15 categories, 5,264,982,680 bytes), as linked from mvtec.com.
MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/"
    "download/420938113-1629952094/mvtec_anomaly_detection.tar.xz"
)
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
_CHUNK = 1 << 20
_RETRYABLE_HTTP = frozenset({408, 429, 500, 502, 503, 504})


class FetchError(StorageError):
    """The archive could not be downloaded, failed its checksum, or is unsafe to extract."""


class _Retryable(Exception):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the partial file is complete
            return
        if exc.code in _RETRYABLE_HTTP:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise FetchError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retryable(str(getattr(exc, "reason", exc))) from None
    with response:
        resumed = have > 0 and response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise FetchError(f"cannot resume {url}: unexpected Content-Range {response.headers.get('Content-Range')!r}")
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = 0
        with (
            open(part, "ab" if resumed else "wb") as handle,
            tqdm(
                desc=f"download {PurePosixPath(url).name}",
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
            ) as bar,
        ):
            try:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    handle.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise _Retryable(f"connection dropped after {start + received} bytes: {exc}") from None
        if length is not None and received < int(length):
            raise _Retryable(f"connection closed after {start + received} of {total} bytes")


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    retry: RetryPolicy | None = None,
    timeout: float = 30.0,
    progress: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check its SHA-256, and return ``dest``."""
    retry = retry or RetryPolicy(attempts=5, base_delay=1.0, max_delay=30.0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        retry.retrying((_Retryable,))(_download_once, url, part, timeout, progress)
    except _Retryable as exc:
        kept = part.stat().st_size if part.exists() else 0
        raise FetchError(
            f"cannot download {url} after {retry.attempts} attempts: {exc}; {kept} bytes kept in {part}, "
            "run again to resume"
        ) from None
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink(missing_ok=True)
            raise FetchError(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}; removed it")
    os.replace(part, dest)
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise FetchError(f"refusing to extract {archive}: member {name!r} has an absolute path")
    if ".." in parts:
        raise FetchError(f"refusing to extract {archive}: member {name!r} climbs out with '..'")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = PurePosixPath(name).parent if member.issym() else PurePosixPath()
        if target.is_absolute() or not _inside(base / target):
            raise FetchError(f"refusing to extract {archive}: link {name!r} points outside ({member.linkname!r})")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise FetchError(f"refusing to extract {archive}: member {name!r} is a device or fifo")


def _inside(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return True


def safe_extract(archive: Path, dest: Path, *, progress: bool = False) -> list[str]:
    """Extract ``archive`` into ``dest`` in one streaming pass; return the top-level names it added.

    Top-level entries already in ``dest`` are kept as they are (a rerun does not overwrite them).
    """
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with (
                tarfile.open(archive, "r|*") as tar,
                tqdm(desc=f"extract {archive.name}", unit=" files", disable=not progress) as bar,
            ):
                for member in tar:
                    _check_member(member, archive)
                    tar.extract(member, staging, filter="data")
                    bar.update(1)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise FetchError(f"cannot extract {archive}: {exc}") from None
        added = []
        for entry in sorted(staging.iterdir()):
            target = dest / entry.name
            if target.exists():
                warnings.warn(f"{target} already exists; kept it", UserWarning, stacklevel=2)
                continue
            os.rename(entry, target)
            added.append(entry.name)
        return added
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_mvtec(
    dest: str | Path,
    *,
    url: str = MVTEC_URL,
    sha256: str | None = None,
    keep_archive: bool = False,
    retry: RetryPolicy | None = None,
    progress: bool = False,
) -> list[str]:
    """Download the MVTec AD archive into ``dest`` and extract it there; return what was added.

    ``sha256`` defaults to the official archive's checksum when ``url`` is the official one; for
    another URL without ``sha256`` the download is not verified (a warning says so).
    """
    dest = Path(dest)
    if sha256 is None and url == MVTEC_URL:
        sha256 = MVTEC_SHA256
    if sha256 is None:
        warnings.warn(f"no --sha256 given for {url}: the download is not verified", UserWarning, stacklevel=2)
    name = PurePosixPath(urllib.request.urlparse(url).path).name or "archive.tar"
    archive = download_file(url, dest / ".downloads" / name, sha256=sha256, retry=retry, progress=progress)
    added = safe_extract(archive, dest, progress=progress)
    if not keep_archive:
        archive.unlink(missing_ok=True)
        if not any(archive.parent.iterdir()):
            archive.parent.rmdir()
    return added
