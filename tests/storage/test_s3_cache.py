"""The per-node object cache: atomic fills, size checks, several processes at once, LRU eviction."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from cutpaste.storage import CorruptObjectError, ObjectCache
from cutpaste.storage.s3 import ObjectInfo


def _obj(i: int, size: int = 1000) -> ObjectInfo:
    return ObjectInfo(f"k/{i}.png", size, f"etag{i:04d}")


def _writer(data: bytes):
    return lambda handle: handle.write(data)


def _cached(cache: ObjectCache) -> list[Path]:
    return sorted(cache.objects.glob("*/*"))


def test_fill_then_hit(tmp_path):
    cache = ObjectCache(tmp_path, max_bytes=10**9)
    obj = _obj(1, 5)
    path = cache.fill(obj, _writer(b"hello"), label="s3://b/k/1.png")
    assert path.read_bytes() == b"hello"
    assert not os.access(path, os.W_OK) or os.geteuid() == 0  # read-only: views hard-link it
    assert cache.lookup(obj) == path
    assert cache.fill(obj, lambda h: pytest.fail("hit must not download"), label="x") == path
    assert list(cache.tmp.iterdir()) == []


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    cache = ObjectCache(tmp_path, max_bytes=10**9)

    def dies_half_way(handle):
        handle.write(b"partial")
        raise ConnectionResetError("server went away")

    with pytest.raises(ConnectionResetError):
        cache.fill(_obj(1, 100), dies_half_way, label="s3://b/k/1.png")
    assert _cached(cache) == [] and list(cache.tmp.iterdir()) == []


def test_size_mismatch_names_the_key_and_is_not_cached(tmp_path):
    cache = ObjectCache(tmp_path, max_bytes=10**9)
    with pytest.raises(CorruptObjectError, match=r"s3://b/k/1.png: received 3 bytes, expected 100"):
        cache.fill(_obj(1, 100), _writer(b"abc"), label="s3://b/k/1.png")
    assert _cached(cache) == [] and list(cache.tmp.iterdir()) == []


def test_a_truncated_cache_file_counts_as_a_miss(tmp_path):
    cache = ObjectCache(tmp_path, max_bytes=10**9)
    obj = _obj(1, 5)
    path = cache.fill(obj, _writer(b"hello"), label="x")
    path.chmod(0o644)
    path.write_bytes(b"he")  # what a power loss after the rename could leave
    assert cache.lookup(obj) is None and not path.exists()


def test_sweep_removes_parts_of_dead_processes(tmp_path):
    cache = ObjectCache(tmp_path, max_bytes=10**9)
    dead = cache.tmp / "abc.999999999.deadbeef.part"
    mine = cache.tmp / f"abc.{os.getpid()}.cafe.part"
    dead.write_bytes(b"x")
    mine.write_bytes(b"x")
    assert cache.sweep_tmp() == 1
    assert not dead.exists() and mine.exists()


def test_lru_eviction_keeps_the_pinned_and_recent(tmp_path):
    cache = ObjectCache(tmp_path, max_bytes=5000)
    paths = []
    for i in range(8):
        paths.append(cache.fill(_obj(i), _writer(bytes(1000)), label="x"))
        os.utime(paths[-1], (time.time() - 100 + i, time.time() - 100 + i))
    cache.lookup(_obj(0))  # used just now: the newest
    freed = cache.evict(keep=[paths[1]])
    remaining = set(_cached(cache))
    assert cache.total_bytes() <= 4500 and freed == 4000
    assert {paths[0], paths[1], paths[7]} <= remaining
    assert paths[2] not in remaining and paths[3] not in remaining


def _fill_many(root: str, log: str, barrier) -> None:
    cache = ObjectCache(root, max_bytes=10**9)
    barrier.wait()

    def slow_writer(i: int):
        def write(handle):
            with open(log, "a") as f:
                f.write(f"{i}\n")
            for _ in range(10):
                handle.write(bytes([i]) * 100)
                time.sleep(0.001)

        return write

    for i in range(30):
        cache.fill(_obj(i), slow_writer(i), label=f"s3://b/k/{i}.png")


def test_several_processes_fill_one_cache_without_duplicates_or_half_files(tmp_path):
    ctx = multiprocessing.get_context("fork")
    log = tmp_path / "writes.log"
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_fill_many, args=(str(tmp_path / "c"), str(log), barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = ObjectCache(tmp_path / "c", max_bytes=10**9)
    assert sorted(log.read_text().split()) == sorted(str(i) for i in range(30))  # each object fetched once
    for i in range(30):
        assert cache.lookup(_obj(i)).read_bytes() == bytes([i]) * 1000
    assert list(cache.tmp.iterdir()) == []


def test_eviction_counts_uses_through_views(tmp_path):
    cache = ObjectCache(tmp_path, max_bytes=2500)
    paths = [cache.fill(_obj(i), _writer(bytes(1000)), label="x") for i in range(3)]
    for i, path in enumerate(paths):
        os.utime(path, (1000 + i, 1000 + i))
    # paths[0] is the oldest file, but a view holding it was used just now
    cache.evict(recent=lambda: {paths[0].stat().st_ino: time.time()})
    assert paths[0].exists() and not paths[1].exists() and paths[2].exists()
