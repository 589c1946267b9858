"""URIs, client setup and the one-line error messages (unit tests, no server)."""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions as bexc
import pytest

from cutpaste.errors import DataError
from cutpaste.storage import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectNotFoundError,
    S3Uri,
    StaleManifestError,
    StorageError,
    TransferError,
    is_remote,
    list_categories,
    materialize,
    parse_s3_uri,
)
from cutpaste.storage.s3 import S3Connection


def test_is_remote():
    assert is_remote("s3://bucket/prefix")
    assert not is_remote("/data/mvtec")
    assert not is_remote(Path("s3:/bucket"))


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://bucket", "bucket", ""),
        ("s3://bucket/", "bucket", ""),
        ("s3://bucket/mvtec/", "bucket", "mvtec"),
        ("s3://my.bucket/a//b/", "my.bucket", "a/b"),
    ],
)
def test_parse_s3_uri(uri, bucket, prefix):
    parsed = parse_s3_uri(uri)
    assert (parsed.bucket, parsed.prefix) == (bucket, prefix)
    assert parsed.key("x/y.png") == (f"{prefix}/x/y.png" if prefix else "x/y.png")
    assert parsed.relative(parsed.key("x/y.png")) == "x/y.png"


@pytest.mark.parametrize("uri", ["/local/path", "s3://", "s3://B!/x", "s3://bucket/a/../b"])
def test_parse_s3_uri_rejects(uri):
    with pytest.raises(StorageError):
        parse_s3_uri(uri)


def test_storage_error_is_a_data_error():
    assert issubclass(StorageError, DataError)


def test_local_paths_pass_through(tmp_path, tiny_root):
    assert materialize(str(tiny_root)) == tiny_root
    assert materialize(tiny_root, ["widget"]) == tiny_root
    assert list_categories(tiny_root) == ["widget"]


def _client_error(code: str, status: int, message: str = "msg") -> bexc.ClientError:
    return bexc.ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.fixture
def conn(monkeypatch, tmp_path) -> S3Connection:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY1234")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    return S3Connection("http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (_client_error("NoSuchBucket", 404), BucketNotFoundError, ["bucket 'bkt' not found", "127.0.0.1:9"]),
        (_client_error("NoSuchKey", 404), ObjectNotFoundError, ["s3://bkt/p/k.png", "no such object"]),
        (_client_error("PreconditionFailed", 412), StaleManifestError, ["s3://bkt/p/k.png", "cutpaste data index"]),
        (
            _client_error("InvalidAccessKeyId", 403, "The AWS Access Key Id you provided\ndoes not exist"),
            AccessDeniedError,
            ["bucket 'bkt'", "credentials from env", "...1234", "InvalidAccessKeyId"],
        ),
        (_client_error("AccessDenied", 403), AccessDeniedError, ["credentials from env"]),
        (bexc.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), TransferError, ["connection to"]),
        (bexc.NoCredentialsError(), AccessDeniedError, ["no usable AWS credentials", "AWS_ACCESS_KEY_ID"]),
    ],
)
def test_error_messages_are_one_line_and_name_the_place(conn, exc, kind, words):
    error = conn.error(exc, S3Uri("bkt", "p"), "p/k.png", action="download")
    assert type(error) is kind
    text = str(error)
    assert "\n" not in text
    for word in words:
        assert word in text
    assert "very-secret-value" not in text


def test_credential_source_names_the_method_not_the_secret(conn):
    assert conn.credential_source.startswith("env")
    assert "very-secret-value" not in conn.credential_source


def test_bad_endpoint_is_a_storage_error():
    with pytest.raises(StorageError, match="invalid S3 endpoint"):
        S3Connection("not a url")
