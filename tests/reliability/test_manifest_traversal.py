"""A stored manifest is untrusted input: keys that would land outside the local view are refused.

Archive members (``../``, absolute paths, links out) are covered in tests/storage/test_fetch_mvtec.py;
this file covers the S3 manifest, whose keys become local paths when a dataset is localized.
"""

from __future__ import annotations

import dataclasses
import os
import uuid

import boto3
import pytest

from cutpaste.data.synth import generate_dataset
from cutpaste.storage import materialize, upload
from cutpaste.storage.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from cutpaste.storage.s3 import S3Connection, S3Uri, StorageError, parse_s3_uri
from infra.local.s3 import moto_s3_server, s3_env

URI = S3Uri("b", "ds")
GOOD = ManifestEntry("bottle", "train", 0, "good", "ds/bottle/train/good/000.png", 10, "e")
CRACK = ManifestEntry(
    "bottle", "test", 1, "crack", "ds/bottle/test/crack/000.png", 10, "e", "ds/bottle/ground_truth/crack/000_mask.png"
)


@pytest.mark.parametrize(
    "entry",
    [
        dataclasses.replace(GOOD, image_key="ds/bottle/train/good/../../../../../tmp/evil.png"),
        dataclasses.replace(GOOD, image_key="ds/../../evil/train/good/000.png", category=".."),
        dataclasses.replace(GOOD, image_key="/etc/bottle/train/good/000.png"),
        dataclasses.replace(GOOD, image_key="ds//bottle/train/good/000.png"),
        dataclasses.replace(GOOD, image_key="other/bottle/train/good/000.png"),
        dataclasses.replace(GOOD, image_key="ds/bottle/train/good/sub/000.png"),
        dataclasses.replace(GOOD, image_key="ds/other/train/good/000.png"),  # category column disagrees
        dataclasses.replace(GOOD, image_key="ds/bottle/train/good/..\\..\\evil.png"),
        dataclasses.replace(CRACK, mask_key="ds/bottle/ground_truth/crack/../../../../evil_mask.png"),
        dataclasses.replace(CRACK, mask_key="/abs/bottle/ground_truth/crack/000_mask.png"),
    ],
    ids=lambda e: e.mask_key or e.image_key,
)
def test_hostile_manifest_keys_are_refused(entry):
    data = Manifest(URI, [GOOD, entry]).to_parquet()
    with pytest.raises(StorageError, match=r"manifest s3://b/ds/_manifest\.parquet lists key .* refusing"):
        Manifest.from_parquet(URI, data)


def test_a_well_formed_manifest_round_trips():
    assert Manifest.from_parquet(URI, Manifest(URI, [GOOD, CRACK]).to_parquet()).entries == [GOOD, CRACK]


@pytest.mark.integration
def test_localize_refuses_a_planted_manifest_and_writes_nothing_outside(tmp_path, monkeypatch):
    """A manifest rewritten in the bucket to point out of the view: localize fails, nothing lands outside."""
    data = tmp_path / "data"
    generate_dataset(data, categories=1, size=32, train_count=2, test_good=1, test_defect_per_type=1)
    cache = tmp_path / "cache"
    with moto_s3_server() as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("CUTPASTE_CACHE_DIR", str(cache))
        monkeypatch.setenv("CUTPASTE_S3_VERIFY_TTL", "0")
        bucket = f"trav-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        uri = f"s3://{bucket}/mvtec"
        upload(data, uri, endpoint_url=endpoint)
        conn = S3Connection(endpoint)
        manifest = read_manifest(conn, parse_s3_uri(uri))
        first = manifest.entries[0]
        escape = "mvtec/" + first.category + "/train/good/../../../../../../../escaped.png"
        # The object exists too (S3 keys may hold ".."), so only the key check stands between it and the disk.
        body = boto3.client("s3").get_object(Bucket=bucket, Key=first.image_key)["Body"].read()
        etag = boto3.client("s3").put_object(Bucket=bucket, Key=escape, Body=body)["ETag"].strip('"')
        manifest.entries[0] = dataclasses.replace(first, image_key=escape, etag=etag)
        write_manifest(conn, manifest)
        for verify in (False, True):
            with pytest.raises(StorageError, match=r"escaped\.png.*refusing the manifest"):
                materialize(uri, endpoint_url=endpoint, verify_manifest=verify)
    written = [p for p in tmp_path.rglob("*") if "escaped" in p.name]
    assert written == [] and not os.path.exists(tmp_path.parent / "escaped.png")
