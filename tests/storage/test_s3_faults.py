"""Bad input and faults against the real server: each ends in one clear StorageError, the cache stays clean."""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from cutpaste.data.layout import discover_categories
from cutpaste.errors import CutPasteError
from cutpaste.storage import (
    AccessDeniedError,
    BucketNotFoundError,
    CorruptObjectError,
    ObjectCache,
    PrefixNotFoundError,
    StaleManifestError,
    TransferError,
    list_categories,
    materialize,
)
from cutpaste.storage.cli import add_storage_commands
from cutpaste.storage.manifest import DATASET_MANIFEST, read_manifest, write_manifest
from cutpaste.storage.s3 import S3Connection, parse_s3_uri
from infra.local.s3 import enforce_auth, moto_s3_server


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of ``cutpaste <argv>``, the way the CLI's main reports a CutPasteError."""
    from cutpaste import cli

    parser = cli.build_parser()
    data = next(a for a in parser._subparsers._group_actions if "data" in a.choices).choices["data"]
    data_sub = data._subparsers._group_actions[0]
    if "index" not in data_sub.choices:  # not wired into cutpaste.cli yet
        add_storage_commands(data_sub)
    err = io.StringIO()
    with redirect_stderr(err):
        args = parser.parse_args(argv)
        try:
            code = args.func(args)
        except CutPasteError as exc:
            print(f"cutpaste: error: {exc}", file=sys.stderr)
            code = 2
    return code, err.getvalue()


def _assert_clean_cache(cache_dir: Path, sizes: set[int] | None = None) -> None:
    """No temporary file left, and every cached object complete (its size one the manifest lists)."""
    cache = ObjectCache(cache_dir, max_bytes=10**12)
    assert list(cache.tmp.iterdir()) == []
    if sizes is not None:
        for _, size, _ in cache.entries():
            assert size in sizes


def _sizes(uri: str) -> set[int]:
    return {o.size for o in read_manifest(S3Connection(), parse_s3_uri(uri)).objects()}


def test_missing_bucket(s3):
    with pytest.raises(BucketNotFoundError, match=r"bucket 'no-such-bucket-here' not found at http://127\.0\.0\.1"):
        materialize("s3://no-such-bucket-here/mvtec")


def test_missing_prefix(s3, uploaded):
    bucket = uploaded.split("/")[2]
    with pytest.raises(PrefixNotFoundError, match=rf"no objects under s3://{bucket}/not-there "):
        materialize(f"s3://{bucket}/not-there")


def test_no_category_under_the_prefix(s3, bucket):
    s3.client.put_object(Bucket=bucket, Key="junk/readme.txt", Body=b"hi")
    s3.client.put_object(Bucket=bucket, Key="junk/thing/test/good/000.png", Body=b"x")
    with pytest.raises(PrefixNotFoundError, match=rf"no category under s3://{bucket}/junk \(expected"):
        materialize(f"s3://{bucket}/junk")


def test_a_category_prefix_gets_a_hint(s3, uploaded):
    with pytest.raises(PrefixNotFoundError, match=rf"looks like one category: pass its parent {uploaded}\)"):
        materialize(f"{uploaded}/synth_disc")


def test_unknown_category_lists_the_known_ones(s3, uploaded):
    with pytest.raises(PrefixNotFoundError, match=r"category 'nope' not found under s3://.*/mvtec \(found: synth_"):
        materialize(uploaded, ["nope"])


def test_wrong_credentials_name_the_bucket_and_the_credential_source(s3, uploaded, monkeypatch):
    bucket = uploaded.split("/")[2]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY0000WXYZ")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-do-not-print")
    with enforce_auth(s3.endpoint):
        with pytest.raises(AccessDeniedError) as caught:
            materialize(uploaded)
        code, stderr = run_cli(["data", "index", uploaded, "--no-progress"])
    for text in (str(caught.value), stderr):
        assert f"bucket '{bucket}'" in text and "credentials from env" in text and "...WXYZ" in text
        assert "InvalidAccessKeyId" in text and "wrong-secret-do-not-print" not in text
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr


def test_server_dying_mid_download_leaves_no_partial_file(s3, uploaded, flaky_proxy, fast_retry):
    bucket = uploaded.split("/")[2]
    manifest_size = s3.client.head_object(Bucket=bucket, Key=f"mvtec/{DATASET_MANIFEST}")["ContentLength"]
    proxy = flaky_proxy(budget=manifest_size + 30_000)  # dies part-way through the image downloads
    started = time.monotonic()
    with pytest.raises(TransferError, match=rf"s3://{bucket}/mvtec/.*gave up after 2 attempts"):
        materialize(uploaded, endpoint_url=proxy.endpoint, retry=fast_retry, verify_manifest=False, workers=4)
    assert proxy.dead.is_set()
    assert time.monotonic() - started < 20  # bounded retries
    _assert_clean_cache(s3.cache_dir, _sizes(uploaded))
    root = materialize(uploaded)  # the server is back: the run completes from where the cache stands
    assert discover_categories(root) == list_categories(uploaded)
    _assert_clean_cache(s3.cache_dir, _sizes(uploaded))


def test_a_stopped_server_fails_fast_with_a_clear_message(s3, uploaded, fast_retry):
    with moto_s3_server() as endpoint:  # moto shares state between servers: this one sees the bucket too
        pass
    started = time.monotonic()
    with pytest.raises(TransferError, match=rf"connection to {endpoint}.* failed"):
        materialize(uploaded, endpoint_url=endpoint, retry=fast_retry)
    assert time.monotonic() - started < 15
    _assert_clean_cache(s3.cache_dir)


def test_a_killed_process_leaves_no_half_object(s3, uploaded, flaky_proxy):
    proxy = flaky_proxy(delay=0.02)  # slow enough to kill the process during the downloads
    code = f"from cutpaste.storage import materialize; materialize({uploaded!r}, endpoint_url={proxy.endpoint!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    tmp = s3.cache_dir / "tmp"
    deadline = time.monotonic() + 30
    while not (tmp.is_dir() and any(tmp.glob("*.part"))):
        assert proc.poll() is None and time.monotonic() < deadline, "no download started"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sizes = _sizes(uploaded)
    assert all(size in sizes for _, size, _ in ObjectCache(s3.cache_dir, max_bytes=10**12).entries())
    materialize(uploaded)  # completes, and sweeps the dead process's .part files
    _assert_clean_cache(s3.cache_dir, sizes)


def test_an_undecodable_image_names_its_key(s3, uploaded):
    bucket = uploaded.split("/")[2]
    key = "mvtec/synth_disc/train/good/001.png"
    s3.client.put_object(Bucket=bucket, Key=key, Body=b"\x89PNG\r\n\x1a\n this is not an image")
    with (
        pytest.warns(UserWarning, match="stale"),
        pytest.raises(CorruptObjectError, match=rf"s3://{bucket}/{key} is not"),
    ):
        materialize(uploaded, workers=2)
    _assert_clean_cache(s3.cache_dir)
    assert all(size != 30 for _, size, _ in ObjectCache(s3.cache_dir, max_bytes=10**12).entries())


def test_a_size_mismatch_names_its_key(s3, uploaded, fast_retry):
    conn = S3Connection()
    uri = parse_s3_uri(uploaded)
    manifest = read_manifest(conn, uri)
    entry = manifest.entries[0]
    manifest.entries[0] = type(entry)(**{**entry.__dict__, "size": entry.size + 5})
    write_manifest(conn, manifest)
    with pytest.raises(CorruptObjectError, match=rf"{entry.image_key}: received {entry.size} bytes, expected"):
        materialize(uploaded, verify_manifest=False, retry=fast_retry)
    _assert_clean_cache(s3.cache_dir)


def test_an_object_changed_after_indexing_is_refused_when_the_manifest_is_trusted(s3, uploaded):
    bucket = uploaded.split("/")[2]
    key = "mvtec/synth_disc/test/good/000.png"
    body = s3.client.get_object(Bucket=bucket, Key="mvtec/synth_disc/train/good/000.png")["Body"].read()
    s3.client.put_object(Bucket=bucket, Key=key, Body=body)
    with pytest.raises(StaleManifestError, match=rf"s3://{bucket}/{key} changed after the manifest was written"):
        materialize(uploaded, verify_manifest=False)


def test_cli_index_upload_and_materialize(s3, bucket, synth_root, capsys):
    uri = f"s3://{bucket}/cli"
    code, _ = run_cli(["data", "upload", str(synth_root), uri, "--s3-endpoint", s3.endpoint, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "uploaded" in out and "skipped 0 unchanged" in out
    code, _ = run_cli(["data", "index", uri, "--no-progress"])
    assert code == 0 and "changes since the previous manifest: none" in capsys.readouterr().out
    code, _ = run_cli(["data", "materialize", uri, "--category", "synth_disc", "--no-progress"])
    root = Path(capsys.readouterr().out.strip())
    assert code == 0 and (root / "synth_disc" / "train" / "good").is_dir()
    assert argparse  # the parser is argparse-based; run_cli reaches the data sub-parser
