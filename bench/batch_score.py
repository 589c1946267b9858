"""Batch scoring benchmark: Ray Data (1 and 2 scoring actors) against a plain loop of `cutpaste predict`, and the
peak memory of the driver and the workers at 1,000 and 10,000 images (streaming: it must not grow with N).

    nice -n 19 python bench/batch_score.py [--sizes 1000,10000] [--image-size 64]

The bucket is moto's server in its own process behind ``infra.local.tcp_proxy``, which holds the first
response bytes of every connection for 20 ms (moto answers one request per connection, so every GET pays
it: the first-byte latency of a real S3 GET; ``first_byte_ms`` checks it with sequential GETs). The model is
the ``ci`` preset's network, untrained, at the image size, saved as a local bundle. Ray is started in this
process (``ray.init``); each scoring is ``python pipelines/batch_score.py --ray-address ...`` in a process of
its own (the driver), and a sampler reads the RSS of the driver and of every ``ray::`` worker of that head
from /proc every 0.25 s. Writes bench/results/batch_score.json atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import numpy as np
import torch
from PIL import Image

from cutpaste.atomic import atomic_write_text
from infra.local import tcp_proxy
from infra.local.s3 import FAKE_CREDENTIALS, start_moto_process
from infra.local.services import VENV_BIN, free_port, ray_worker_pids, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "batch_score.json"
BUCKET = "bench-batch-score"
LATENCY_S = 0.02


def save_bundle(folder: Path, size: int) -> Path:
    from cutpaste.detector import Detector, embed_images
    from cutpaste.model.network import build_model
    from cutpaste.presets import preset
    from cutpaste.scoring.gaussian import GaussianDensity

    config = preset("ci").override({"image_size": size})
    torch.manual_seed(0)
    model = build_model(config).eval()
    normals = torch.randint(90, 150, (24, 3, size, size), dtype=torch.uint8)
    embeddings = embed_images(model, normals, batch_size=8, size=size)
    density = GaussianDensity.fit(embeddings)
    threshold = float(density.score(embeddings).max())
    Detector(model=model, density=density, threshold=threshold, config=config, category="bench").save(folder)
    return folder


def png(seed: int, size: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(90, 150, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(s3, prefix: str, count: int, size: int) -> None:
    """Straight to moto (no latency): setting up is not what is measured."""
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{i:05d}.png", Body=png(i, size)), range(count)
            )
        )


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    """Peak RSS of one driver process and of the head's ``ray::`` workers (each, and all together)."""

    def __init__(self, driver: int, temp_dir: Path) -> None:
        super().__init__(daemon=True)
        self.driver, self.temp_dir = driver, temp_dir
        self.peaks = {"driver_mb": 0.0, "worker_max_mb": 0.0, "workers_total_mb": 0.0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            workers = [rss_mb(pid) for pid in ray_worker_pids(self.temp_dir, "ray::")]
            for key, value in (
                ("driver_mb", rss_mb(self.driver)),
                ("worker_max_mb", max(workers, default=0.0)),
                ("workers_total_mb", sum(workers)),
            ):
                self.peaks[key] = max(self.peaks[key], round(value, 1))


@contextlib.contextmanager
def local_ray(env: dict, cpus: int):
    """A Ray started in this process (stopped by ``ray.shutdown``, which touches no other cluster on the
    machine, unlike ``ray stop``); each scoring driver joins it by its GCS address."""
    import ray

    temp_dir = Path(tempfile.mkdtemp(prefix="rbs", dir="/tmp"))
    os.environ.update(env)
    ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=str(temp_dir), object_store_memory=500_000_000)
    try:
        gcs = ray.get_runtime_context().gcs_address
        yield {"gcs": gcs, "env": dict(os.environ), "temp_dir": temp_dir}
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_data_run(head: dict, env: dict, bundle: Path, prefix: str, out: str, actors: int, work: Path) -> dict:
    summary = work / f"summary-{prefix}-{actors}.json"
    command = [str(VENV_BIN / "python"), str(ROOT / "pipelines" / "batch_score.py"), "--model", str(bundle)]
    command += ["--input", f"s3://{BUCKET}/{prefix}/", "--output", out, "--actors", str(actors)]
    command += ["--batch-size", "64", "--ray-address", head["gcs"], "--summary-json", str(summary)]
    started = time.monotonic()
    log = open(work / f"driver-{prefix}-{actors}.log", "wb")  # noqa: SIM115 (closed below)
    driver_env = {k: v for k, v in {**head["env"], **env}.items() if k != "MLFLOW_TRACKING_URI"}  # no MLflow run
    proc = subprocess.Popen(command, env=driver_env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    sampler = Sampler(proc.pid, head["temp_dir"])
    sampler.start()
    code = proc.wait(timeout=3600)
    sampler.stop.set()
    sampler.join()
    log.close()
    if code != 0:
        raise RuntimeError(f"batch_score exited {code}: {(work / f'driver-{prefix}-{actors}.log').read_text()[-3000:]}")
    result = json.loads(summary.read_text())
    return {
        "images": int(result["images_scored"]),
        "actors": actors,
        "pipeline_s": round(result["wall_s"], 2),
        "images_per_s": round(result["images_per_s"], 1),
        "job_wall_s": round(time.monotonic() - started, 2),
        "peak_rss": sampler.peaks,
    }


def predict_loop(s3_slow, bundle: Path, prefix: str, count: int, work: Path) -> dict:
    """``cutpaste predict``'s code path, one image after another: GET through the same latency, write the file,
    load_image, score. The model is loaded once (a shell loop of the CLI would reload it per image)."""
    from cutpaste.data.images import load_image
    from cutpaste.ensemble import load_detector

    detector = load_detector(bundle)
    size = detector.config.image_size
    folder = work / "loop"
    folder.mkdir(exist_ok=True)
    started = time.monotonic()
    for i in range(count):
        path = folder / f"{i:05d}.png"
        path.write_bytes(s3_slow.get_object(Bucket=BUCKET, Key=f"{prefix}/{i:05d}.png")["Body"].read())
        detector.score(load_image(path, size)[None])
    wall = time.monotonic() - started
    return {"images": count, "wall_s": round(wall, 2), "images_per_s": round(count / wall, 1)}


def cli_loop(bundle: Path, work: Path, count: int) -> dict:
    """A literal shell loop: one ``cutpaste predict`` process per image (local files from predict_loop)."""
    started = time.monotonic()
    for i in range(count):
        subprocess.run(
            [str(VENV_BIN / "cutpaste"), "predict", "--model", str(bundle), str(work / "loop" / f"{i:05d}.png")],
            check=True,
            capture_output=True,
        )
    wall = time.monotonic() - started
    return {"images": count, "wall_s": round(wall, 2), "images_per_s": round(count / wall, 2)}


def first_byte_ms(s3_slow, prefix: str) -> float:
    started = time.monotonic()
    for i in range(10):
        s3_slow.get_object(Bucket=BUCKET, Key=f"{prefix}/{i:05d}.png")["Body"].read()
    return round((time.monotonic() - started) * 100, 1)


def client(endpoint: str):
    keys = {"aws_access_key_id": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]}
    keys["aws_secret_access_key"] = FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)


def measure(args: argparse.Namespace, work: Path, slow_endpoint: str, fast) -> dict:
    env = {**FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": slow_endpoint}
    bundle = save_bundle(work / "bundle", args.image_size)
    report: dict = {"throughput": {}, "memory": {}, "notes": []}
    upload(fast, f"in{args.sizes[0]}", args.sizes[0], args.image_size)
    slow = client(slow_endpoint)
    report["first_byte_ms"] = first_byte_ms(slow, f"in{args.sizes[0]}")
    with local_ray(env, args.ray_cpus) as head:
        first = args.sizes[0]
        for actors in (1, 2):
            out = f"s3://{BUCKET}/out/t{actors}/"
            report["throughput"][f"ray_data_{actors}_actor"] = ray_data_run(
                head, env, bundle, f"in{first}", out, actors, work
            )
        rate = report["throughput"]["ray_data_2_actor"]["images_per_s"]
        report["memory"][str(first)] = report["throughput"]["ray_data_2_actor"]  # the same run
        for count in args.sizes[1:]:
            estimate = count / max(rate, 1e-6)
            if estimate > args.budget_s:
                report["memory"][str(count)] = {"skipped": f"~{estimate:.0f} s at {rate} img/s > --budget-s"}
                report["notes"].append(f"{count} images not run: about {estimate:.0f} s on this machine")
                continue
            upload(fast, f"in{count}", count, args.image_size)
            out = f"s3://{BUCKET}/out/m{count}/"
            report["memory"][str(count)] = ray_data_run(head, env, bundle, f"in{count}", out, 2, work)
    report["throughput"]["predict_loop"] = predict_loop(slow, bundle, f"in{first}", args.loop_images, work)
    report["throughput"]["cli_process_per_image"] = cli_loop(bundle, work, args.cli_images)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="image counts (the first also for throughput)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--ray-cpus", type=int, default=3, help="logical CPUs of the head (2 actors + decoding)")
    parser.add_argument("--cli-images", type=int, default=10)
    parser.add_argument("--loop-images", type=int, default=200, help="images of the predict loop (its rate)")
    parser.add_argument("--budget-s", type=float, default=1200, help="skip a memory size expected to take longer")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-batch-score-"))
    moto_port = free_port()
    moto = start_moto_process(moto_port)
    proxy, proxy_port = tcp_proxy.start(moto_port, LATENCY_S)
    try:
        fast = client(f"http://127.0.0.1:{moto_port}")
        fast.create_bucket(Bucket=BUCKET)
        report = measure(args, work, f"http://127.0.0.1:{proxy_port}", fast)
    finally:
        stop_process_group(proxy)
        stop_process_group(moto)
        shutil.rmtree(work, ignore_errors=True)
    report.update(
        {
            "image_size": args.image_size,
            "model": "ci preset network (untrained), local bundle",
            "latency": f"{LATENCY_S * 1000:.0f} ms first-byte per request (infra.local.tcp_proxy in front of moto)",
            "ray_logical_cpus": args.ray_cpus,
            "load_average_end": os.getloadavg(),  # other work on the machine skews every number here
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    atomic_write_text(json.dumps(report, indent=2) + "\n", RESULTS)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
