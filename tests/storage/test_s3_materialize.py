"""Upload, index and localize against the real server: the local view equals the source, file for file."""

from __future__ import annotations

import filecmp
import os
import shutil
import threading
from pathlib import Path

import pytest

from cutpaste.data.layout import discover_categories, list_samples
from cutpaste.storage import ObjectCache, list_categories, materialize, upload
from cutpaste.storage.manifest import DATASET_MANIFEST


def _tree(root: Path, categories: list[str]) -> dict[str, Path]:
    """Relative path -> file for the images and masks of ``categories`` (hidden files left out)."""
    out = {}
    for category in categories:
        base = root / category
        for path in base.rglob("*"):
            rel = path.relative_to(root)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                out[rel.as_posix()] = path
    return out


def _same_tree(a: Path, b: Path, categories: list[str]) -> None:
    left, right = _tree(a, categories), _tree(b, categories)
    assert sorted(left) == sorted(right)
    for rel in left:
        assert filecmp.cmp(left[rel], right[rel], shallow=False), rel


def test_localize_gives_a_file_for_file_copy_of_the_uploaded_data(s3, uploaded, synth_root):
    categories = discover_categories(synth_root)
    assert list_categories(uploaded) == categories
    root = materialize(uploaded, progress=True)
    assert root.is_relative_to(s3.cache_dir)
    assert discover_categories(root) == categories
    _same_tree(synth_root, root, categories)
    for category in categories:
        for split in ("train", "test"):
            local = [
                (s.path.relative_to(synth_root), s.label, s.defect_type)
                for s in list_samples(synth_root, category, split)
            ]
            remote = [(s.path.relative_to(root), s.label, s.defect_type) for s in list_samples(root, category, split)]
            assert local == remote
        masks = [s.mask_path for s in list_samples(root, category, "test") if s.label]
        assert masks and all(m is not None and m.is_file() for m in masks)


def test_a_warm_cache_downloads_nothing(s3, uploaded, monkeypatch):
    first = materialize(uploaded)
    monkeypatch.setattr(ObjectCache, "fill", lambda *a, **k: pytest.fail("warm cache must not download"))
    assert materialize(uploaded) == first


def test_a_recently_verified_category_is_served_without_any_request(s3, uploaded, synth_root, monkeypatch):
    category = discover_categories(synth_root)[0]
    root = materialize(uploaded, [category], verify_ttl=300)

    def no_requests(*args, **kwargs):
        raise AssertionError("the fast path must not talk to S3")

    monkeypatch.setattr("cutpaste.storage.datasets.S3Connection", no_requests)
    assert materialize(uploaded, [category], verify_ttl=300) == root
    with pytest.raises(AssertionError, match="fast path"):
        materialize(uploaded, [category], verify_ttl=0)  # expired: S3 is checked again
    other = discover_categories(synth_root)[1]
    with pytest.raises(AssertionError, match="fast path"):
        materialize(uploaded, [category, other], verify_ttl=300)  # one category never checked here


def test_categories_are_fetched_on_demand_into_one_root(s3, uploaded, synth_root):
    cat_a, cat_b = discover_categories(synth_root)
    root = materialize(uploaded, [cat_a])
    assert discover_categories(root) == [cat_a]
    assert materialize(uploaded, cat_b) == root  # a single name works too
    assert discover_categories(root) == [cat_a, cat_b]
    _same_tree(synth_root, root, [cat_a, cat_b])


def test_concurrent_localize_calls_agree(s3, uploaded, synth_root):
    results, errors = [], []

    def run():
        try:
            results.append(materialize(uploaded, workers=4))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    _same_tree(synth_root, results[0], discover_categories(synth_root))
    assert list((s3.cache_dir / "tmp").iterdir()) == []


def test_a_changed_dataset_gets_a_new_view_and_old_readers_keep_theirs(s3, uploaded, synth_root):
    category = discover_categories(synth_root)[0]
    root = materialize(uploaded, [category])
    old_file = (root / category / "train/good/000.png").resolve()
    other = next(iter(sorted((synth_root / category / "test/good").iterdir())))
    bucket = uploaded.split("/")[2]
    s3.client.upload_file(str(other), bucket, f"mvtec/{category}/train/good/000.png")
    with pytest.warns(UserWarning, match="stale"):
        assert materialize(uploaded, [category]) == root
    assert (root / category / "train/good/000.png").read_bytes() == other.read_bytes()
    assert old_file.read_bytes() == (synth_root / category / "train/good/000.png").read_bytes()


def test_upload_skips_unchanged_objects_including_multipart_ones(s3, bucket, synth_root, tmp_path, fast_retry):
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    category = discover_categories(data)[0]
    big = data / category / "train" / "good" / "big.png"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # above the 8 MiB multipart threshold
    uri = f"s3://{bucket}/ds"
    first, manifest = upload(data, uri, retry=fast_retry)
    assert first.skipped == 0 and first.uploaded == len(_tree(data, discover_categories(data)))
    assert s3.client.head_object(Bucket=bucket, Key=f"ds/{category}/train/good/big.png")["ETag"].endswith('-2"')
    assert s3.client.head_object(Bucket=bucket, Key=f"ds/{DATASET_MANIFEST}")["ContentLength"] > 0
    assert len(manifest.entries) > 0

    again, _ = upload(data, uri, retry=fast_retry)
    assert (again.uploaded, again.skipped) == (0, first.uploaded)

    (data / category / "train/good/000.png").write_bytes((data / category / "test/good/000.png").read_bytes())
    changed, _ = upload(data, uri, retry=fast_retry)
    assert changed.uploaded == 1


def test_the_cache_limit_evicts_old_objects_and_their_views(s3, uploaded, synth_root):
    cat_a, cat_b = discover_categories(synth_root)
    size_b = sum(p.stat().st_size for p in _tree(synth_root, [cat_b]).values())
    root = materialize(uploaded, [cat_a], max_cache_bytes=size_b + 1000)
    version_a = (root / cat_a).resolve()
    materialize(uploaded, [cat_b], max_cache_bytes=size_b + 1000)
    cache = ObjectCache(s3.cache_dir, max_bytes=10**12)
    assert cache.total_bytes() <= size_b + 1000
    assert not version_a.exists() and not (root / cat_a).exists()  # its objects were evicted: view pruned
    _same_tree(synth_root, root, [cat_b])
    assert materialize(uploaded, [cat_a]) == root  # fetched again on demand
    _same_tree(synth_root, root, [cat_a, cat_b])
