"""What the benchmark and the sweep do before any work, in one place: their shared flags, the base config
(preset, file, ``--set``), the tracking URI with its credentials moved out of it, the categories found
under ``--data``, and Ray (connect to a cluster, or start a local one)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from cutpaste.config import TrainConfig
from cutpaste.errors import CutPasteError
from cutpaste.presets import load_config, parse_overrides, preset

RUNS_DIR = Path("runs")  # relative to where the job starts: the repository, or the job's working dir


class LaunchError(CutPasteError):
    """A flag names something that is not there (a category, a data root): nothing has started yet."""


def add_common_arguments(parser: argparse.ArgumentParser, *, experiment: str, data_help: str) -> None:
    """The flags both entry points take, with the same names, defaults and meaning."""
    parser.add_argument("--data", help=data_help)
    parser.add_argument("--categories", nargs="+", help="default: every category found under --data")
    parser.add_argument("--preset", default="demo", help="base config: paper, short, demo or ci (default: demo)")
    parser.add_argument("--config", help="JSON config file: a short difference from a preset")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="config field, e.g. steps=60")
    parser.add_argument("--mlflow-uri", help="tracking URI; default $MLFLOW_TRACKING_URI or a sqlite store in runs/")
    parser.add_argument("--experiment", default=experiment, help=f"MLflow experiment name (default {experiment})")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint (default $AWS_ENDPOINT_URL)")
    parser.add_argument("--ray-address", help="default $RAY_ADDRESS, else a local Ray is started")


def base_config(args: argparse.Namespace) -> TrainConfig:
    """The preset, then the ``--config`` file's difference, then ``--set`` fields (each validated)."""
    config = preset(args.preset)
    if args.config:
        config = load_config(args.config, base=config)
    if getattr(args, "set", None):
        config = config.override(parse_overrides(args.set), source="--set")
    return config


def tracking_uri(args: argparse.Namespace, runs_dir: Path) -> str:
    """``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite store under ``runs_dir``; credentials
    in the URI move to the environment (never printed, logged or stored inside the URI)."""
    from pipelines.tracking import credentials_to_env, default_tracking_uri

    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(runs_dir)
    return credentials_to_env(uri)


def absolute_data(data: str) -> str:
    """Workers run in another directory: a relative local path would name nothing there."""
    return data if "://" in data else str(Path(data).expanduser().resolve())


def resolve_categories(data: str, requested: Sequence[str] | None, s3_endpoint: str | None) -> list[str]:
    """The requested categories (default: all under ``data``); an unknown one is an error naming it."""
    from cutpaste.storage import list_categories

    found = list_categories(data, endpoint_url=s3_endpoint)
    categories = list(requested or found)
    unknown = sorted(set(categories) - set(found))
    if unknown:
        raise LaunchError(f"--categories: {', '.join(unknown)} not under {data} (found: {', '.join(found)})")
    return categories


def connect_ray(address: str | None) -> None:
    """Joins the cluster at ``address`` (or ``$RAY_ADDRESS``), else starts a local Ray. The project is an
    installed package, so workers import it without any path set here."""
    import ray

    from pipelines.console import job_runtime_env, quiet_driver

    quiet_driver()
    if ray.is_initialized():
        return
    # Every worker process of the job filters Ray's known-harmless warnings (pipelines/console.py); inside a
    # `ray job submit` job, Ray merges this with the job's own runtime env (its working dir).
    runtime_env = job_runtime_env()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    else:
        ray.init(include_dashboard=False, runtime_env=runtime_env)
