"""Scores every image under a prefix with a registered (or local) detector, on Ray Data, into Parquet.

    ray job submit -- python pipelines/batch_score.py --model models:/cutpaste-<category>@champion \\
        --input s3://bucket/incoming/ --output s3://bucket/scores/<id>/ [--maps]

Ray Data lists and reads the objects (``read_binary_files`` with an Arrow S3 filesystem built from the
project's S3 settings), CPU tasks decode them (``decode_batch``: digest, resize flag, error rows), and a pool
of actors scores them (``score_batch``), each actor loading the model once. Rows stream to
``<output>/scores/*.parquet``; ``--maps`` adds anomaly-map overlays of anomalous images under
``<output>/maps/``. The same ``--output`` again skips every object already scored with the same content and
scores the rest. A lost scoring actor is restarted (``max_restarts``) and its batch retried
(``max_task_retries``), 3 times each; a lost read or decode task is rerun (Ray Data's ``max_retries=-1``).
See docs/batch_scoring.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from cutpaste.data.images import decode_image
from cutpaste.errors import ConfigError, CutPasteError
from cutpaste.serving.batch_scoring import (
    MAPS_DIR,
    OUTPUT_SCHEMA,
    SCORES_DIR,
    ModelInfo,
    ScoreSummary,
    decode_batch,
    done_key,
    load_bundle_files,
    top_scored_figure,
)
from cutpaste.storage.s3 import env_endpoint, parse_s3_uri

RETRIES = 3
# A scoring actor lost with its worker is restarted and its batch retried, a bounded number of times (Ray
# Data's default is forever): a model that kills every worker fails the job instead of looping. Ray 2.60
# deprecates passing these as remote args but names no replacement yet; its warning is filtered below.
ACTOR_RETRIES = {"max_restarts": RETRIES, "max_task_retries": RETRIES}
READ_BLOCK_BYTES = 256 * 1024
MIN_ROWS_PER_FILE = 1000
_DONE_CACHE: dict[str, frozenset[bytes]] = {}


class Location:
    """An ``s3://`` prefix or a local folder as Ray Data and Arrow address it: a filesystem and a path
    without scheme; ``uri`` puts the scheme back for what users read (the Parquet ``path`` column)."""

    def __init__(self, location: str, endpoint: str | None = None) -> None:
        self.remote = location.startswith("s3://")
        if self.remote:
            uri = parse_s3_uri(location)
            self.path = f"{uri.bucket}/{uri.prefix}".rstrip("/")
            self.fs: pafs.FileSystem = s3_filesystem(endpoint)
        else:
            self.path = str(Path(location).expanduser().resolve())
            self.fs = pafs.LocalFileSystem()

    def uri(self, path: str) -> str:
        return f"s3://{path}" if self.remote else path

    def child(self, name: str) -> str:
        return f"{self.path}/{name}"


def s3_filesystem(endpoint: str | None) -> pafs.S3FileSystem:
    """Arrow's S3 client with the project's settings: ``--s3-endpoint`` or ``AWS_ENDPOINT_URL``, the retry
    count and timeouts of ``cutpaste.storage.s3``. Credentials are not passed: each worker takes them from
    its own environment (the AWS chain), so none travel inside pickled tasks."""
    endpoint = endpoint or env_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    options: dict[str, Any] = {
        "region": region,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=int(os.environ.get("AWS_MAX_ATTEMPTS", "3"))),
        "connect_timeout": float(os.environ.get("CUTPASTE_S3_CONNECT_TIMEOUT", "5")),
        "request_timeout": float(os.environ.get("CUTPASTE_S3_READ_TIMEOUT", "30")),
    }
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    return pafs.S3FileSystem(**options)


def read_done(fs: pafs.FileSystem, scores: str) -> frozenset[bytes]:
    """(path, digest) keys of every row already under ``scores``; a file left half written by a killed job is
    skipped (its rows are scored again)."""
    try:
        if fs.get_file_info(scores).type == pafs.FileType.NotFound:
            return frozenset()
        dataset = pads.dataset(
            scores, filesystem=fs, format="parquet", schema=OUTPUT_SCHEMA, exclude_invalid_files=True
        )
    except (OSError, pa.ArrowInvalid):
        return frozenset()
    keys: set[bytes] = set()
    for batch in dataset.to_batches(columns=["path", "sha256"]):
        keys.update(done_key(p, d) for p, d in zip(*batch.to_pydict().values(), strict=True))
    return frozenset(keys)


def decode_step(
    batch: dict[str, np.ndarray], *, out: Location, source: Location, size: int, run: str, tally: Any
) -> dict[str, np.ndarray]:
    """Ray Data batch (``bytes``, ``path``) -> decoded columns, minus what an earlier run already scored.
    The resume index is read once per worker process (and run), not per batch."""
    if run not in _DONE_CACHE:
        _DONE_CACHE.clear()
        _DONE_CACHE[run] = read_done(out.fs, out.child(SCORES_DIR))
    paths = [source.uri(str(p)) for p in batch["path"]]
    columns, skipped = decode_batch(paths, list(batch["bytes"]), size, done=_DONE_CACHE[run])
    tally.add.remote(seen=len(paths), skipped=skipped)
    # Pixels travel as one bytes value per row: an Arrow tensor column cannot be built from an empty batch
    # (everything in it scored before), and Ray Data would fall back to pickling the column.
    columns["image"] = np.array([image.tobytes() for image in columns["image"]] or [], dtype=object)
    return columns


class Scorer:
    """A scoring actor: loads the model once (weights only, digest checked), then scores batch after batch."""

    def __init__(
        self, bundle: list, model: ModelInfo, *, run: str, threshold: float | None, out: Location, maps: bool
    ) -> None:
        import ray
        import torch

        from cutpaste.serving.batch_scoring import score_batch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.detector = load_bundle_files(ray.get(bundle[0]), model.sha256, device=device)
        self.model, self.run, self.threshold, self.out, self.maps = model, run, threshold, out, maps
        self.score_batch = score_batch

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        size = int(self.detector.config.image_size)
        pixels = [np.frombuffer(data, dtype=np.uint8) for data in batch["image"]]
        batch["image"] = (
            np.stack(pixels).reshape(-1, 3, size, size) if pixels else np.zeros((0, 3, size, size), np.uint8)
        )
        writer = self.write_map if self.maps else None
        return self.score_batch(
            self.detector, batch, self.model, run=self.run, threshold=self.threshold, write_map=writer
        )

    def write_map(self, name: str, png: bytes) -> str:
        path = self.out.child(f"{MAPS_DIR}/{name}")
        if not self.out.remote:
            self.out.fs.create_dir(self.out.child(MAPS_DIR), recursive=True)
        with self.out.fs.open_output_stream(path) as stream:  # S3: one PUT, complete or absent
            stream.write(png)
        return self.out.uri(path)


def make_tally():
    """A tiny actor counting what decode tasks saw and skipped (resumed rows are never written, so the
    Parquet cannot count them). A retried task counts again: the skipped count is at least the truth."""
    import ray

    @ray.remote(num_cpus=0)
    class Tally:
        def __init__(self) -> None:
            self.counts = {"seen": 0, "skipped": 0}

        def add(self, **counts: int) -> None:
            for key, value in counts.items():
                self.counts[key] += value

        def get(self) -> dict[str, int]:
            return dict(self.counts)

    return Tally.remote()


def run_pipeline(
    args: argparse.Namespace, model: Any, size: int, source: Location, out: Location, run: str, tally: Any
) -> None:
    """Read, decode and score as one streaming Ray Data pipeline, written to Parquet as it goes."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty()
    gpus = args.gpus_per_actor if ray.cluster_resources().get("GPU", 0) > 0 else None
    # Reading is latency-bound (a HEAD and a GET per object): small CPU shares and small blocks let several
    # read tasks wait on S3 at once; decoding fuses into the same tasks (same resources).
    context.target_min_block_size = READ_BLOCK_BYTES
    reader = {"num_cpus": args.cpus_per_reader}
    images = ray.data.read_binary_files(source.path, include_paths=True, filesystem=source.fs, ray_remote_args=reader)
    decoded = images.map_batches(
        decode_step,
        batch_size=None,  # whole read blocks: Ray Data then fuses reading and decoding into one task
        batch_format="numpy",
        fn_kwargs={"out": out, "source": source, "size": size, "run": run, "tally": tally},
        num_cpus=args.cpus_per_reader,  # Ray Data reruns a task lost with its worker (its default, max_retries=-1)
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=Warning)
        scored = decoded.map_batches(
            Scorer,
            batch_size=args.batch_size,
            batch_format="numpy",
            fn_constructor_args=([ray.put(model.files)], model.info),
            fn_constructor_kwargs={"run": run, "threshold": args.threshold, "out": out, "maps": args.maps},
            compute=ray.data.ActorPoolStrategy(size=args.actors),
            num_cpus=args.cpus_per_actor,
            num_gpus=gpus,
            **ACTOR_RETRIES,
        )
    scored.write_parquet(out.child(SCORES_DIR), filesystem=out.fs, min_rows_per_file=MIN_ROWS_PER_FILE)


def summarize(out: Location, run: str) -> ScoreSummary:
    """This run's rows read back column by column, batch by batch: the driver never holds them all."""
    summary = ScoreSummary()
    scores = out.child(SCORES_DIR)
    if out.fs.get_file_info(scores).type == pafs.FileType.NotFound:
        return summary
    dataset = pads.dataset(
        scores, filesystem=out.fs, format="parquet", schema=OUTPUT_SCHEMA, exclude_invalid_files=True
    )
    columns = ["path", "score", "verdict", "resized"]
    for batch in dataset.to_batches(columns=columns, filter=pads.field("run") == run):
        summary.add(batch)
    return summary


def top_sample(detector: Any, summary: ScoreSummary, source: Location, threshold: float):
    """The highest-scored images with their maps (refetched: a handful of objects), or None."""
    top = summary.highest()
    if not top or not hasattr(detector, "anomaly_maps"):
        return None
    import torch

    size = int(detector.config.image_size)
    paths = [path for _, path in top]
    images = []
    for path in paths:
        local = path.removeprefix("s3://")
        with source.fs.open_input_stream(local) as stream:
            images.append(decode_image(stream.read(), size, name=path)[0])
    return top_scored_figure(detector, torch.stack(images), paths, [s for s, _ in top], threshold)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version> or a bundle dir"
    )
    parser.add_argument("--input", required=True, help="s3://bucket/prefix/ or a local folder of images")
    parser.add_argument("--output", required=True, help="s3://bucket/prefix/ or a local folder (scores/, maps/)")
    parser.add_argument("--maps", action="store_true", help="write anomaly-map overlays of anomalous images")
    parser.add_argument("--threshold", type=float, help="override the model's calibrated threshold")
    parser.add_argument("--actors", type=int, default=2, help="scoring actors (each loads the model once)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--cpus-per-reader", type=float, default=0.25, help="CPU share of a read+decode task")
    parser.add_argument("--gpus-per-actor", type=float, default=0.25, help="used only where the cluster has GPUs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mlflow-uri", help="tracking URI; default $MLFLOW_TRACKING_URI (see docs/batch_scoring.md)")
    parser.add_argument("--experiment", default="cutpaste-batch-score")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint (default $AWS_ENDPOINT_URL)")
    parser.add_argument("--ray-address", help="default $RAY_ADDRESS, else a local Ray is started")
    parser.add_argument("--summary-json", help="also write the run's summary here (a local file)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = score(args)
    except CutPasteError as exc:
        print(f"batch_score: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def score(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve and check the model, score, then summarise into the MLflow run (when tracking) and the output."""
    import ray
    from mlflow import MlflowClient

    from pipelines import batch_model, tracking
    from pipelines.console import quiet_driver
    from pipelines.launcher import connect_ray

    quiet_driver()
    uri = tracking_uri(args)
    if uri:
        tracking.check_reachable(uri)
    model = batch_model.resolve_model(args.model, uri)
    detector = batch_model.check_loadable(model)
    check_args(args, detector)
    source, out = Location(args.input, args.s3_endpoint), Location(args.output, args.s3_endpoint)
    connect_ray(args.ray_address)
    run, client = new_run_id(), MlflowClient(uri) if uri else None
    params = {k: getattr(args, k) for k in ("model", "input", "output", "maps", "actors", "batch_size", "threshold")}
    run_id = (
        batch_model.start_run(client, model, experiment=args.experiment, run=run, params=params) if client else None
    )
    try:
        tally, started = make_tally(), time.monotonic()
        run_pipeline(args, model, int(detector.config.image_size), source, out, run, tally)
        wall_s = time.monotonic() - started
        counts = ray.get(tally.get.remote())
        summary = summarize(out, run)
        threshold = float(detector.threshold if args.threshold is None else args.threshold)
        metrics = {**summary.metrics(), "images_skipped": float(counts["skipped"]), "wall_s": wall_s}
        metrics["images_per_s"] = metrics["images_scored"] / wall_s if wall_s > 0 else 0.0
        if client:
            sample = top_sample(detector, summary, source, threshold)
            batch_model.log_results(client, run_id, summary, metrics, threshold, sample)
            tracking.finish_run(client, run_id)
    except BaseException:
        if client:
            tracking.finish_run(client, run_id, failed=True)
        raise
    result = {"run": run, "mlflow_run_id": run_id, "model": vars(model.info), "output": args.output, **metrics}
    write_summary(out, run, result, args.summary_json)
    return result


def tracking_uri(args: argparse.Namespace) -> str | None:
    """``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``; a registry model without either uses the project's
    default store (runs/mlflow.db, as the benchmark does). A local bundle without either logs no run."""
    from pipelines.batch_model import is_registry_uri
    from pipelines.launcher import RUNS_DIR
    from pipelines.tracking import credentials_to_env, default_tracking_uri

    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None and is_registry_uri(args.model):
        uri = default_tracking_uri(RUNS_DIR)
    return credentials_to_env(uri) if uri else None


def write_summary(out: Location, run: str, result: dict[str, Any], local_copy: str | None) -> None:
    """``<output>/runs/<run>.json`` beside the scores (S3: one PUT), and a local copy when asked."""
    text = json.dumps(result, indent=2, default=str)
    if not out.remote:
        out.fs.create_dir(out.child("runs"), recursive=True)
    with out.fs.open_output_stream(out.child(f"runs/{run}.json")) as stream:
        stream.write(text.encode())
    if local_copy:
        from cutpaste.atomic import atomic_write_text

        atomic_write_text(text, Path(local_copy))


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def check_args(args: argparse.Namespace, detector: Any) -> None:
    if args.maps and not hasattr(detector, "anomaly_maps"):
        raise ConfigError(f"--maps: {args.model} is an ensemble, which gives scores but no anomaly maps")
    if args.actors < 1 or args.batch_size < 1:
        raise ConfigError("--actors and --batch-size must be at least 1")


if __name__ == "__main__":
    sys.exit(main())
