"""The local multi-node rehearsal: two Ray nodes on this machine, runs spread over both, data and
checkpoints through S3 (moto on loopback), each node with its own Ray temp dir and data cache."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from infra.local.multinode import rehearse
from infra.local.s3 import moto_s3_server, s3_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def short_work():
    # Ray's unix sockets live under each node's temp dir: pytest's tmp paths are too long for them.
    with tempfile.TemporaryDirectory(prefix="cp-mn-", dir="/tmp") as work:
        yield Path(work)


def test_runs_spread_over_two_nodes_without_a_shared_directory(short_work, monkeypatch):
    with moto_s3_server() as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        report = rehearse(short_work, s3_endpoint=endpoint, bucket="cutpaste-multinode", steps=30, timeout_s=400)
    assert report.status == "SUCCEEDED", report.logs[-6000:]
    # One Ray Train worker per run, one run on each node (Ray's state API, by node id).
    assert sorted(report.run_nodes.values()) == ["a", "b"], report.run_nodes
    assert len(set(report.node_ids.values())) == 2
    # Each node fetched its own run's category into its own cache; neither saw the other's.
    cached = report.cached_categories
    assert len(cached["a"]) == 1 and len(cached["b"]) == 1 and cached["a"] != cached["b"], cached
    # Each node trained from its own copy of the job's working directory, under its own Ray temp dir.
    dirs = report.working_dirs
    assert dirs["a"] and dirs["b"] and not set(dirs["a"]) & set(dirs["b"]), dirs
    assert all((d / "pipelines" / "full_benchmark.py").is_file() for d in dirs["a"] + dirs["b"])
    # Checkpoints went to S3, not to a node's disk, and the driver read the finished ones back from there.
    assert any(key.endswith("detector.pt") for key in report.checkpoint_keys), report.checkpoint_keys
    results = (report.out / "results.md").read_text()
    for category in cached["a"] + cached["b"]:
        assert category in results
