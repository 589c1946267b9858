"""The Parquet manifest: parsing keys, round trip, writing it next to the data, and staleness."""

from __future__ import annotations

import io
import warnings

import pyarrow.parquet as pq
import pytest

from cutpaste.storage import DATASET_MANIFEST, StaleManifestWarning, index, list_categories
from cutpaste.storage.manifest import Manifest, load_manifest, manifest_from_listing, read_manifest
from cutpaste.storage.s3 import ObjectInfo, S3Connection, S3Uri


def _obj(key: str, size: int = 10, etag: str = "e") -> ObjectInfo:
    return ObjectInfo(key, size, etag)


LISTING = [
    _obj("ds/bottle/train/good/000.png"),
    _obj("ds/bottle/train/good/001.PNG"),
    _obj("ds/bottle/test/good/000.png"),
    _obj("ds/bottle/test/crack/000.png"),
    _obj("ds/bottle/test/crack/001.png"),  # no mask
    _obj("ds/bottle/ground_truth/crack/000_mask.png", 7, "m"),
    _obj("ds/bottle/.hidden/good/x.png"),
    _obj("ds/bottle/train/good/notes.txt"),
    _obj("ds/bottle/train/good/deeper/x.png"),
    _obj("ds/nocat/test/good/000.png"),  # a folder without train/good is not a category
    _obj("ds/_manifest.parquet"),
    _obj("other/bottle/train/good/000.png"),
]


def test_manifest_from_listing_parses_the_mvtec_layout():
    manifest = manifest_from_listing(S3Uri("b", "ds"), LISTING)
    assert manifest.categories() == ["bottle"]
    rows = {e.image_key: e for e in manifest.entries}
    assert sorted(rows) == [
        "ds/bottle/test/crack/000.png",
        "ds/bottle/test/crack/001.png",
        "ds/bottle/test/good/000.png",
        "ds/bottle/train/good/000.png",
        "ds/bottle/train/good/001.PNG",
    ]
    crack = rows["ds/bottle/test/crack/000.png"]
    assert (crack.split, crack.label, crack.defect_type) == ("test", 1, "crack")
    assert (crack.mask_key, crack.mask_size, crack.mask_etag) == ("ds/bottle/ground_truth/crack/000_mask.png", 7, "m")
    assert rows["ds/bottle/test/crack/001.png"].mask_key is None
    assert rows["ds/bottle/test/good/000.png"].label == 0


def test_parquet_round_trip_keeps_every_column():
    manifest = manifest_from_listing(S3Uri("b", "ds"), LISTING)
    data = manifest.to_parquet()
    table = pq.read_table(io.BytesIO(data))
    expected = ["category", "split", "label", "defect_type", "image_key", "mask_key", "size", "etag"]
    assert expected == table.column_names[: len(expected)]
    assert table.schema.metadata[b"cutpaste.fingerprint"].decode() == manifest.fingerprint()
    again = Manifest.from_parquet(S3Uri("b", "ds"), data)
    assert again.entries == manifest.entries


def test_index_writes_the_manifest_next_to_the_data(s3, uploaded, synth_root):
    manifest, changes = index(uploaded)
    assert changes is not None and not changes  # upload already indexed it: nothing changed
    bucket = uploaded.split("/")[2]
    stored = pq.read_table(
        io.BytesIO(s3.client.get_object(Bucket=bucket, Key=f"mvtec/{DATASET_MANIFEST}")["Body"].read())
    )
    assert stored.num_rows == len(manifest.entries)
    assert list_categories(uploaded) == sorted(p.name for p in synth_root.iterdir() if (p / "train").is_dir())
    local_images = [p for p in synth_root.rglob("*.png") if "ground_truth" not in p.parts]
    assert len(manifest.entries) == len(local_images)
    assert sum(e.mask_key is not None for e in manifest.entries) == len(list(synth_root.rglob("*_mask.png")))


@pytest.mark.parametrize("change", ["added", "removed", "changed"])
def test_a_stale_manifest_is_detected_and_rebuilt(s3, uploaded, change):
    bucket = uploaded.split("/")[2]
    uri = S3Uri(bucket, "mvtec")
    conn = S3Connection()
    category = read_manifest(conn, uri).categories()[0]
    key = f"mvtec/{category}/train/good/000.png"
    if change == "added":
        body = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        s3.client.put_object(Bucket=bucket, Key=f"mvtec/{category}/train/good/999.png", Body=body)
        key = f"mvtec/{category}/train/good/999.png"
    elif change == "removed":
        s3.client.delete_object(Bucket=bucket, Key=key)
    else:
        s3.client.put_object(Bucket=bucket, Key=key, Body=b"\x89PNG different bytes")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trusted = load_manifest(conn, uri, [category], verify=False)  # no listing, no warning
    assert trusted.fingerprint() == read_manifest(conn, uri).fingerprint()

    with pytest.warns(StaleManifestWarning, match=rf"1 {change}.*{key}"):
        fresh = load_manifest(conn, uri, [category])
    stored = read_manifest(conn, uri)
    assert stored.fingerprint() == fresh.fingerprint() != trusted.fingerprint()
    keys = {e.image_key for e in fresh.entries}
    assert (key in keys) == (change != "removed")


def test_a_fresh_manifest_is_used_without_rebuilding(s3, uploaded):
    bucket = uploaded.split("/")[2]
    before = s3.client.head_object(Bucket=bucket, Key=f"mvtec/{DATASET_MANIFEST}")["LastModified"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_manifest(S3Connection(), S3Uri(bucket, "mvtec"))
    assert s3.client.head_object(Bucket=bucket, Key=f"mvtec/{DATASET_MANIFEST}")["LastModified"] == before


def test_a_missing_manifest_is_built_on_first_use(s3, uploaded):
    bucket = uploaded.split("/")[2]
    s3.client.delete_object(Bucket=bucket, Key=f"mvtec/{DATASET_MANIFEST}")
    assert list_categories(uploaded)
    s3.client.head_object(Bucket=bucket, Key=f"mvtec/{DATASET_MANIFEST}")
