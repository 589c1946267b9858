"""Fixtures: small MVTec-layout datasets written by the tests themselves (never ../shared)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# MLflow's telemetry client, created where mlflow is first imported (at collection, before pytest marks the
# process as a test), sets and unsets _MLFLOW_TELEMETRY_SESSION_ID in os.environ; a request iterating the
# environment at that moment failed with KeyError (seen once in CI, in tests/infra/test_mlflow_local.py).
# Off for the suite and the servers it starts; nothing here may call out anyway.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


def write_tiny_category(root: Path, category: str = "widget", *, size: int = 48, train: int = 6, seed: int = 0) -> Path:
    """A minimal category: random smooth images, one defect type with masks. For layout/IO tests."""
    rng = np.random.default_rng(seed)
    base = root / category

    def image() -> Image.Image:
        arr = rng.integers(80, 160, size=(size, size, 3), dtype=np.uint8)
        return Image.fromarray(arr)

    for split, defect, count in (("train", "good", train), ("test", "good", 3), ("test", "crack", 3)):
        folder = base / split / defect
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = image()
            if defect != "good":
                arr = np.asarray(img).copy()
                arr[10:20, 10:30] = 0
                img = Image.fromarray(arr)
                mask = np.zeros((size, size), np.uint8)
                mask[10:20, 10:30] = 255
                (base / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(base / "ground_truth" / defect / f"{i:03d}_mask.png")
            img.save(folder / f"{i:03d}.png")
    return base


def load_bench_module(name: str):
    """A script of bench/ as a module (bench/ is not a package): its pure functions are tested directly.
    bench/ goes on sys.path as it is for a script run from there, so its sibling imports resolve."""
    import importlib

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.append(bench)
    return importlib.import_module(name)


@pytest.fixture(scope="session", autouse=True)
def _ray_sessions_in_a_folder_the_suite_removes():
    """Ray started in-process (ray.init) keeps its session logs under $RAY_TMPDIR/ray, /tmp/ray by default,
    and never removes them: the suite gives it a folder of its own and removes it at the end."""
    folder = tempfile.mkdtemp(prefix="cr-")  # short: Ray's socket paths must fit in 107 characters
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = folder
    yield
    if before is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = before
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_registry_uri_leaks_between_tests():
    """A test that sets MLflow's registry URI (``mlflow.set_registry_uri`` also exports
    ``MLFLOW_REGISTRY_URI``) must not redirect a later test's clients: every MlflowClient built without an
    explicit registry reads it (seen: the reliability stack's champions registered into a deleted sqlite file)."""
    before = os.environ.get("MLFLOW_REGISTRY_URI")
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils

        utils._registry_uri = None
    if before is None:
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    else:
        os.environ["MLFLOW_REGISTRY_URI"] = before


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    write_tiny_category(tmp_path / "data")
    return tmp_path / "data"


def pytest_collection_modifyitems(config, items) -> None:
    """Runs tests/reliability last: its stack (moto, an MLflow server, a local Ray) is shared by the whole
    folder and lives until the session ends, so tests that start their own Ray must come before it."""
    reliability = [item for item in items if "/tests/reliability/" in str(item.path)]
    if reliability:
        items[:] = [item for item in items if item not in reliability] + reliability
