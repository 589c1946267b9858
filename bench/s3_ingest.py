"""S3 ingest benchmark against a local moto server: parallel cold download vs sequential GETs, warm cache vs disk.

    python bench/s3_ingest.py [--data DIR] [--workers 16] [--repeats 3]

Writes bench/results/s3_ingest.json (atomically) with ``parallel_mb_s``, ``sequential_mb_s``, ``speedup`` and
``warm_vs_local``. The data is one synthetic category written here (200 train PNGs of 256x256 plus its test
split and masks), uploaded with ``cutpaste data upload``'s code path.

- cold, parallel: ``localize`` into an empty cache (manifest, listing check, parallel GETs, view), MB/s of
  the category's bytes.
- cold, sequential: one ``get_object`` after another on one boto3 client, each body written to a file.
- warm: ``localize`` on a warm cache and then reading every file of the returned tree (``warm_read_s``),
  against reading the same files from the local source directory (``local_read_s``);
  ``warm_vs_local = local_read_s / warm_read_s``. ``warm_vs_local_decoded`` repeats this with the images
  decoded to tensors (``load_images``), which is what a training run does with them.

The moto server runs in its own process (so client and server do not share one GIL) at 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from infra.local import tcp_proxy
from infra.local.s3 import start_moto_process
from infra.local.services import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results" / "s3_ingest.json"
CATEGORY = "synth_weave"
LATENCY_S = 0.02


def _files(root: Path, category: str) -> list[Path]:
    return sorted(p for p in (root / category).rglob("*") if p.is_file() and not p.name.startswith("."))


def _read_all(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            total += len(handle.read())
    return total


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="reuse a dataset written by an earlier run")
    parser.add_argument("--workers", type=int, help="download threads (default: the library's, 4 per CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def _moto_environment(port: int) -> None:
    """Credentials and the endpoint of the local moto server, for every boto3 client of this process."""
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        }
    )


def _cold(uri: str, objects: list, client, work: Path, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Seconds of each cold download: parallel (``materialize`` into an empty cache) and sequential GETs."""
    from cutpaste.storage import materialize

    parallel, sequential = [], []
    for rep in range(args.repeats):
        cache = work / f"cache-{rep}"
        t0 = time.perf_counter()
        materialize(uri, [CATEGORY], cache_dir=cache, workers=args.workers)
        parallel.append(time.perf_counter() - t0)

        out = work / f"seq-{rep}"
        out.mkdir()
        t0 = time.perf_counter()
        for i, obj in enumerate(objects):
            body = client.get_object(Bucket="bench", Key=obj.key)["Body"].read()
            (out / f"{i}.bin").write_bytes(body)
        sequential.append(time.perf_counter() - t0)
        shutil.rmtree(out)
    return parallel, sequential


def _warm(uri: str, data: Path, warm_cache: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds of reading (and decoding) the category from the warm cache against the local source."""
    from cutpaste.data.images import load_images
    from cutpaste.data.layout import list_samples
    from cutpaste.storage import materialize

    train = [s.path for s in list_samples(data, CATEGORY, "train")]
    timings: dict[str, list[float]] = {k: [] for k in ("local", "warm", "warm_checked", "local_dec", "warm_dec")}

    def timed(key: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        timings[key].append(time.perf_counter() - t0)

    def warm_read(ttl: float | None) -> None:
        _read_all(_files(materialize(uri, [CATEGORY], cache_dir=warm_cache, verify_ttl=ttl), CATEGORY))

    def warm_decode() -> None:
        root = materialize(uri, [CATEGORY], cache_dir=warm_cache)
        load_images([s.path for s in list_samples(root, CATEGORY, "train")], 256)

    for _ in range(3 * repeats):  # a few milliseconds each: more repeats against noise
        timed("local", lambda: _read_all(_files(data, CATEGORY)))
        timed("warm", lambda: warm_read(None))  # default: checked by the cold run moments ago
        timed("warm_checked", lambda: warm_read(0))  # manifest + listing checked on this call
    for _ in range(repeats):
        timed("local_dec", lambda: load_images(train, 256))
        timed("warm_dec", warm_decode)
    return timings


def _with_latency(port: int, uri: str, objects: list, work: Path, workers: int | None) -> tuple[float, float]:
    """The same cold comparison with 20 ms of first-byte latency per request, as from a node to real S3:
    (parallel seconds, sequential seconds)."""
    import boto3

    from cutpaste.storage import materialize

    proxy, proxy_port = tcp_proxy.start(port, LATENCY_S)
    try:
        via = f"http://127.0.0.1:{proxy_port}"
        t0 = time.perf_counter()
        materialize(uri, [CATEGORY], cache_dir=work / "cache-latency", endpoint_url=via, verify_ttl=0, workers=workers)
        latency_parallel = time.perf_counter() - t0
        slow_client = boto3.client("s3", endpoint_url=via)
        t0 = time.perf_counter()
        for obj in objects:
            slow_client.get_object(Bucket="bench", Key=obj.key)["Body"].read()
        latency_sequential = time.perf_counter() - t0
    finally:
        proxy.terminate()
        proxy.wait(10)
    return latency_parallel, latency_sequential


def _measure(args: argparse.Namespace, data: Path, work: Path, port: int) -> dict:
    """Every measurement against the running moto server; the warm tree is checked to equal the source."""
    import boto3

    from cutpaste.storage import materialize, upload
    from cutpaste.storage.manifest import read_manifest
    from cutpaste.storage.s3 import S3Connection, parse_s3_uri

    client = boto3.client("s3")
    client.create_bucket(Bucket="bench")
    uri = "s3://bench/mvtec"
    t0 = time.perf_counter()
    report, _ = upload(data, uri, workers=8)
    upload_s = time.perf_counter() - t0
    objects = read_manifest(S3Connection(), parse_s3_uri(uri)).objects([CATEGORY])
    parallel, sequential = _cold(uri, objects, client, work, args)
    warm_cache = work / "cache-0"
    timings = _warm(uri, data, warm_cache, args.repeats)
    latency = _with_latency(port, uri, objects, work, args.workers)
    root = materialize(uri, [CATEGORY], cache_dir=warm_cache)
    assert [p.read_bytes() for p in _files(root, CATEGORY)] == [p.read_bytes() for p in _files(data, CATEGORY)]
    return {
        "objects": objects,
        "upload_s": upload_s,
        "uploaded_files": report.uploaded,
        "parallel": parallel,
        "sequential": sequential,
        "timings": timings,
        "latency": latency,
    }


def _result(m: dict, args: argparse.Namespace) -> dict:
    """The results file's content from the measurements (medians, ratios and every repeat)."""
    objects, timings, (latency_parallel, latency_sequential) = m["objects"], m["timings"], m["latency"]
    mb = sum(o.size for o in objects) / 1e6
    par, seq = statistics.median(m["parallel"]), statistics.median(m["sequential"])

    def med(key: str) -> float:
        return statistics.median(timings[key])

    return {
        "parallel_mb_s": round(mb / par, 2),
        "sequential_mb_s": round(mb / seq, 2),
        "speedup": round(seq / par, 2),
        "warm_vs_local": round(med("local") / med("warm"), 3),
        "warm_vs_local_checked": round(med("local") / med("warm_checked"), 3),
        "warm_vs_local_decoded": round(med("local_dec") / med("warm_dec"), 3),
        "targets": {"speedup": 3.0, "warm_vs_local": 0.9},
        "with_20ms_latency": {
            "parallel_mb_s": round(mb / latency_parallel, 2),
            "sequential_mb_s": round(mb / latency_sequential, 2),
            "speedup": round(latency_sequential / latency_parallel, 2),
        },
        "detail": _detail(m, args, mb),
    }


def _detail(m: dict, args: argparse.Namespace, mb: float) -> dict:
    timings, (latency_parallel, latency_sequential) = m["timings"], m["latency"]
    return {
        "category": CATEGORY,
        "objects": len(m["objects"]),
        "megabytes": round(mb, 2),
        "workers": args.workers or "default",
        "latency_s": {
            "added_per_request": LATENCY_S,
            "parallel": round(latency_parallel, 3),
            "sequential": round(latency_sequential, 3),
        },
        "repeats": args.repeats,
        "parallel_s": [round(x, 3) for x in m["parallel"]],
        "sequential_s": [round(x, 3) for x in m["sequential"]],
        "local_read_s": [round(x, 4) for x in timings["local"]],
        "warm_localize_and_read_s": [round(x, 4) for x in timings["warm"]],
        "warm_checked_localize_and_read_s": [round(x, 4) for x in timings["warm_checked"]],
        "local_decode_s": [round(x, 3) for x in timings["local_dec"]],
        "warm_localize_and_decode_s": [round(x, 3) for x in timings["warm_dec"]],
        "upload_s": round(m["upload_s"], 2),
        "uploaded_files": m["uploaded_files"],
        "server": "moto.server subprocess on 127.0.0.1",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> None:
    args = _parse_args()

    from cutpaste.atomic import atomic_write_text
    from cutpaste.data.synth import generate_dataset

    work = Path(tempfile.mkdtemp(prefix="s3-ingest-"))
    data = args.data or work / "data"
    started = time.perf_counter()
    generate_dataset(data, categories=[CATEGORY], size=256, train_count=200)
    print(f"data ready in {time.perf_counter() - started:.1f}s: {data}", file=sys.stderr)

    port = free_port()
    server = start_moto_process(port)
    _moto_environment(port)
    try:
        measured = _measure(args, data, work, port)
    finally:
        stop_process_group(server)
        shutil.rmtree(work, ignore_errors=True)
    result = _result(measured, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=2) + "\n", RESULTS)
    print(json.dumps({k: v for k, v in result.items() if k != "detail"}, indent=2))


if __name__ == "__main__":
    main()
