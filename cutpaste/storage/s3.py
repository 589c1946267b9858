"""S3 access: URIs, one configured boto3 client, listing, and one-line errors for every failure.

The client follows the standard AWS chain for credentials and region. An S3-compatible store (MinIO,
Ceph, moto) is reached through an explicit ``endpoint_url`` or ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``,
which botocore reads itself. botocore retries each request (``AWS_MAX_ATTEMPTS``, default 3, standard
mode with exponential backoff); :mod:`cutpaste.storage.transfer` adds whole-object retries on top.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.exceptions as bexc
from botocore.config import Config

from cutpaste.errors import DataError

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "403",
    }
)
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    bexc.EndpointConnectionError,
    bexc.ConnectionClosedError,
    bexc.ReadTimeoutError,
    bexc.ConnectTimeoutError,
    bexc.ResponseStreamingError,
    bexc.IncompleteReadError,
    bexc.HTTPClientError,
    ConnectionError,
    TimeoutError,
)


class StorageError(DataError):
    """Object storage is unreachable, refuses access, or holds data that cannot be used."""


class BucketNotFoundError(StorageError):
    """The bucket does not exist at this endpoint."""


class PrefixNotFoundError(StorageError):
    """No object under the prefix, or no MVTec-layout category among them."""


class ObjectNotFoundError(StorageError):
    """A key listed in the manifest is gone."""


class AccessDeniedError(StorageError):
    """The credentials are missing, unknown, or not allowed to do this."""


class TransferError(StorageError):
    """The endpoint could not be reached or dropped the connection, after all retries."""


class CorruptObjectError(StorageError):
    """An object has the wrong size or is not a decodable image."""


class SizeMismatchError(CorruptObjectError):
    """Fewer or more bytes arrived than the manifest lists (a cut connection can also cause this)."""


class StaleManifestError(StorageError):
    """An object changed after the manifest was written."""


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/prefix``; ``prefix`` has no leading or trailing slash ("" for the bucket root)."""

    bucket: str
    prefix: str = ""

    def key(self, relative: str) -> str:
        relative = relative.lstrip("/")
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def relative(self, key: str) -> str:
        """The part of ``key`` below the prefix."""
        return key[len(self.prefix) + 1 :] if self.prefix else key

    @property
    def list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # without the surrounding quotes


def is_remote(data: str | Path) -> bool:
    """True for ``s3://...`` locations; a :class:`~pathlib.Path` is always local."""
    return isinstance(data, str) and data.startswith("s3://")


def parse_s3_uri(uri: str) -> S3Uri:
    if not uri.startswith("s3://"):
        raise StorageError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise StorageError(f"invalid bucket name {bucket!r} in {uri!r}")
    prefix = "/".join(part for part in prefix.split("/") if part)
    if any(part in (".", "..") for part in prefix.split("/")):
        raise StorageError(f"prefix of {uri!r} may not contain '.' or '..' parts")
    return S3Uri(bucket, prefix)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class S3Connection:
    """One boto3 session and client (thread-safe), plus error translation that knows the endpoint."""

    def __init__(self, endpoint_url: str | None = None, *, max_pool_connections: int = 32) -> None:
        self.session = _session()
        retries = {
            "mode": os.environ.get("AWS_RETRY_MODE", "standard"),
            "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "3")),
        }
        config = Config(
            retries=retries,
            max_pool_connections=max_pool_connections,
            connect_timeout=float(os.environ.get("CUTPASTE_S3_CONNECT_TIMEOUT", "5")),
            read_timeout=float(os.environ.get("CUTPASTE_S3_READ_TIMEOUT", "30")),
            # moto, MinIO and Ceph endpoints are addressed by host:port, where virtual hosting cannot work.
            s3={"addressing_style": "path"} if endpoint_url or env_endpoint() else {},
        )
        try:
            with _SESSION_LOCK:
                self.client = self.session.client("s3", endpoint_url=endpoint_url or None, config=config)
        except ValueError as exc:  # botocore rejects a malformed endpoint URL this way
            raise StorageError(f"invalid S3 endpoint {endpoint_url!r}: {_one_line(exc)}") from None
        self.endpoint_url: str = self.client.meta.endpoint_url

    @property
    def credential_source(self) -> str:
        """Where the credentials came from (``env``, ``shared-credentials-file``, ``iam-role`` ...), never them."""
        try:
            creds = self.session.get_credentials()
        except bexc.BotoCoreError as exc:
            return f"unusable credential configuration ({_one_line(exc)})"
        if creds is None:
            return "none found"
        key = creds.access_key or ""
        shown = f", access key id ...{key[-4:]}" if len(key) >= 8 else ""
        return f"{creds.method}{shown}"

    def error(self, exc: BaseException, uri: S3Uri, key: str | None = None, *, action: str) -> StorageError:
        """A one-line :class:`StorageError` for ``exc`` raised while doing ``action`` on ``uri`` / ``key``."""
        where = f"s3://{uri.bucket}/{key}" if key is not None else str(uri)
        at = f" at {self.endpoint_url}"
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
            return AccessDeniedError(
                f"cannot {action} {where}: no usable AWS credentials ({_one_line(exc)}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role"
            )
        if isinstance(exc, bexc.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = _one_line(err.get("Message", "")) or code
            if code == "NoSuchBucket":
                return BucketNotFoundError(f"bucket {uri.bucket!r} not found{at} (while trying to {action} {where})")
            if code in ("NoSuchKey", "404") or status == 404:
                return ObjectNotFoundError(f"cannot {action} {where}: no such object{at}")
            if code in ("PreconditionFailed", "412") or status == 412:
                return StaleManifestError(
                    f"{where} changed after the manifest was written; run `cutpaste data index {uri}`"
                )
            if code in _AUTH_CODES or status == 403:
                return AccessDeniedError(
                    f"access denied to bucket {uri.bucket!r} ({where}){at}: {code}: {message}; "
                    f"credentials from {self.credential_source}"
                )
            return StorageError(f"cannot {action} {where}{at}: {code or status}: {message}")
        if isinstance(exc, _CONNECTION_ERRORS):
            return TransferError(f"cannot {action} {where}: connection to {self.endpoint_url} failed: {_one_line(exc)}")
        if isinstance(exc, bexc.BotoCoreError):
            return StorageError(f"cannot {action} {where}{at}: {_one_line(exc)}")
        return StorageError(f"cannot {action} {where}{at}: {type(exc).__name__}: {_one_line(exc)}")

    def iter_objects(self, uri: S3Uri, prefix: str | None = None) -> Iterator[ObjectInfo]:
        """Every object below ``prefix`` (default: the URI's prefix), page by page."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=uri.bucket, Prefix=uri.list_prefix if prefix is None else prefix):
                for item in page.get("Contents", ()):
                    yield ObjectInfo(item["Key"], int(item["Size"]), item.get("ETag", "").strip('"'))
        except Exception as exc:
            raise self.error(exc, uri, action="list") from None

    def list_objects(self, uri: S3Uri, prefix: str | None = None, *, progress: bool = False) -> list[ObjectInfo]:
        from tqdm import tqdm

        with tqdm(desc=f"list {uri}", unit=" obj", disable=not progress, leave=False) as bar:
            out = []
            for info in self.iter_objects(uri, prefix):
                out.append(info)
                bar.update(1)
        return out


_SESSION_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
_SESSION_LOCK = threading.Lock()
_SESSIONS: dict[tuple[str | None, ...], boto3.session.Session] = {}


def _session() -> boto3.session.Session:
    """One session per process and credential environment: creating one costs ~0.1 s of model loading."""
    key = tuple(os.environ.get(name) for name in _SESSION_ENV)
    with _SESSION_LOCK:
        if key not in _SESSIONS:
            _SESSIONS.clear()
            session = boto3.session.Session()
            # Keep timestamps as strings: nothing here reads them, and dateutil parsing a Last-Modified per
            # object is a fifth of the client's CPU per GET and most of a listing's (awscli does the same).
            factory = session._session.get_component("response_parser_factory")
            factory.set_parser_defaults(timestamp_parser=lambda value: value)
            _SESSIONS[key] = session
        return _SESSIONS[key]


def env_endpoint() -> str | None:
    """The endpoint botocore takes from the environment, if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
