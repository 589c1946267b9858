"""The S3 endpoint of the checkpoint storage (--storage s3://...) stops in the middle of a checkpoint upload.

Data downloads through a dying endpoint are covered in tests/storage/test_s3_faults.py; a truncated
last.pt in tests/reliability/test_checkpoint_validation.py.
"""

from __future__ import annotations

import json
import time

import boto3
import pytest

from cutpaste.detector import Detector
from cutpaste.train.checkpoint import load_checkpoint
from tests.reliability.bench_thread import STEPS, BenchmarkThread
from tests.reliability.s3_proxy import CuttableProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _objects(bucket: str, prefix: str) -> dict[str, int]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", ())}


def test_an_endpoint_cut_mid_upload_and_back_loses_nothing(stack, tmp_path):
    proxy = CuttableProxy(stack.endpoint)
    prefix = "ckpt-outage"
    storage = f"s3://{stack.bucket}/{prefix}?endpoint_override=127.0.0.1:{proxy.port}&scheme=http"
    bench = BenchmarkThread(stack, "s3-outage", stack.categories[0], storage=storage)
    run_prefix = f"{prefix}/{bench.run_name}/"

    def checkpoint_sizes() -> list[int]:  # only complete objects are listed
        return [size for key, size in _objects(stack.bucket, run_prefix).items() if key.endswith("/last.pt")]

    try:
        bench.start()
        bench.wait(lambda: len(checkpoint_sizes()) >= 1, what="first checkpoint in S3")
        full = checkpoint_sizes()[0]
        proxy.cut_after(full // 3)  # a third into the next checkpoint's upload
        bench.wait(proxy.cut.is_set, what="cut")
        time.sleep(2.0)
        proxy.start()
        bench.join(timeout=600)
    finally:
        proxy.stop()
    assert bench.code == 0, bench.code
    # Whatever the cut left behind, every training checkpoint in S3 is complete (S3 writes are all-or-nothing;
    # an upload that failed left no object), and the run finished with every step.
    client = boto3.client("s3")
    stored = _objects(stack.bucket, run_prefix)
    for key in (k for k in stored if k.endswith("/last.pt")):
        client.download_file(stack.bucket, key, str(tmp_path / "last.pt"))
        assert load_checkpoint(tmp_path / "last.pt")["step"] % 5 == 0
    finals = [k for k in stored if k.endswith("/detector.pt")]
    assert len(finals) == 1
    client.download_file(stack.bucket, finals[0], str(tmp_path / "detector.pt"))
    summary = finals[0].replace("detector.pt", "detector.json")  # its digest record travels beside it
    client.download_file(stack.bucket, summary, str(tmp_path / "detector.json"))
    assert Detector.load(tmp_path / "detector.pt").meta["steps"] == STEPS
    log = client.get_object(Bucket=stack.bucket, Key=finals[0].replace("detector.pt", "train_log.jsonl"))["Body"]
    steps = [json.loads(line)["step"] for line in log.read().decode().splitlines()]
    assert steps == list(range(5, STEPS + 1, 5))
