"""One (category, seed) run on Ray Train: a thin adapter around ``cutpaste.workflow``.

``train_loop_per_worker`` runs on each worker: it restores Ray's latest checkpoint into the library's
checkpoint directory, trains with the library loop (DDP when there are several workers), reports every
library checkpoint to Ray, then evaluates on rank 0 and reports the finished bundle as the last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cutpaste.atomic import atomic_write_text
from cutpaste.config import TrainConfig
from cutpaste.detector import BUNDLE_NAME, SUMMARY_NAME
from cutpaste.errors import ModelBundleError
from cutpaste.localization.heatmaps import save_png
from cutpaste.localization.localize import ReviewPicks, sample_heatmaps
from cutpaste.storage import materialize
from cutpaste.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from cutpaste.train.loop import TrainHooks
from cutpaste.workflow import CHECKPOINT_DIR, evaluate_category, train_category
from pipelines import faults
from pipelines.system_metrics import SystemSampler

RESULT_FILES = (BUNDLE_NAME, SUMMARY_NAME, "train_log.jsonl", "evaluation.json")
# Sample overlays (top-scoring defective images and the top-scoring good one), when maps exist.
HEATMAPS_NAME = "heatmaps.png"


@dataclass(frozen=True)
class RunSpec:
    """What one run needs; plain values only (it travels to workers as ``train_loop_config``)."""

    name: str
    category: str
    seed: int
    data: str
    train_config: dict[str, Any]
    s3_endpoint: str | None = None
    # Validation-report mode (Tune sweeps): {"ensemble_size", "rule", "folder", "holdout_fraction"}.
    # The run trains on train/good minus a held-out part, reports validation metrics at every
    # checkpoint step and never reads the test split.
    validation: dict[str, Any] | None = None
    system_metrics: bool = False
    # Which of the benchmark's attempts at this run this is (0 first).
    attempt: int = 0
    # A deterministic fault to inject (pipelines/faults.py), forwarded from the driver's CUTPASTE_FAULT.
    fault: str | None = None


def _restore_checkpoint(work: Path, rank: int) -> bool:
    """Puts Ray's latest checkpoint where the library resumes from it. True when the run had finished already:
    then its bundle is reported again as the final checkpoint, and nothing is trained twice."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as directory:
        if all((Path(directory) / name).is_file() for name in RESULT_FILES):
            # E.g. MLflow was down when it ended: the same benchmark id again logs this bundle, not a new one.
            final = Checkpoint.from_directory(directory) if rank == 0 else None
            ray.train.report({"done": 1, "reused": 1}, checkpoint=final)
            return True
        restore_library_checkpoint(Path(directory), work, origin=str(checkpoint.path))
    return False


def restore_library_checkpoint(directory: Path, work: Path, *, origin: str = "") -> int | None:
    """Copies ``last.pt`` from a restored Ray checkpoint into ``work``; returns its step, or None when unusable.

    Ray registers a checkpoint even when pyarrow failed to upload one of its files (it logs "Error ignored
    when destroying file" and goes on), so a registered checkpoint may lack ``last.pt`` or hold a broken one.
    Such a checkpoint is never resumed from: training starts over from step 0 (runs are deterministic, so it
    ends with the same model), with a warning instead of failing every retry on the same file.
    """
    source = directory / CHECKPOINT_NAME
    if not source.is_file():
        if not (directory / BUNDLE_NAME).is_file():
            where = origin or directory
            print(f"warning: checkpoint {where} has no {CHECKPOINT_NAME}; training starts over", flush=True)
        return None
    try:
        state = load_checkpoint(source)
    except ModelBundleError as exc:
        print(f"warning: {exc} (from {origin or directory}); training starts over", flush=True)
        return None
    target = work / CHECKPOINT_DIR / CHECKPOINT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    return int(state["step"])


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    spec = RunSpec(**loop_config["spec"])
    board = loop_config.get("status_board")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if board is not None and rank == 0 and (group := ray.util.get_current_placement_group()) is not None:
        # The driver removes it if this run's controller dies (Ray's own cleaner needs the State API).
        board.set_placement_group.remote(spec.name, group.id.hex())
    faults.inject("startup", spec.name, spec.fault or "")
    _run_worker(spec, board, rank, world)


def _run_worker(spec: RunSpec, board: Any, rank: int, world: int) -> None:
    config = TrainConfig.from_dict(spec.train_config, source=f"run {spec.name}")
    data_root = materialize(spec.data, [spec.category], endpoint_url=spec.s3_endpoint)
    # Scratch space only: every checkpoint is in Ray's storage once report() returns (uploads are
    # synchronous), so the directory goes when the run ends. Left behind, each run would keep its
    # checkpoints on the node's disk for good; a worker killed before its `finally` leaves its directory,
    # which the run's next attempt on this node removes (one worker per run and rank on a node at a time).
    prefix = f"cutpaste-{spec.name}-r{rank}-"
    for stale in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if spec.validation is not None:
            _validation_loop(spec, config, data_root, work, world)
        elif not _restore_checkpoint(work, rank):
            _train_and_evaluate(spec, config, data_root, work, board, rank, world)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _train_and_evaluate(
    spec: RunSpec, config: TrainConfig, data_root: Path, work: Path, board: Any, rank: int, world: int
) -> None:
    sampler = SystemSampler() if spec.system_metrics else None

    def on_log(record: dict[str, float]) -> None:
        if board is not None and rank == 0:
            board.add_metrics.remote(spec.name, {**record, **(sampler.sample() if sampler else {})})
            board.update.remote(
                spec.name,
                "training",
                step=int(record["step"]),
                steps=config.steps,
                loss=record["loss"],
                img_s=record.get("img_s"),
            )

    def on_checkpoint(step: int, path: Path | None) -> None:
        checkpoint = Checkpoint.from_directory(str(path.parent)) if path is not None else None
        ray.train.report({"step": step}, checkpoint=checkpoint)
        if rank == 0 and path is not None:  # a registered checkpoint to resume from: mid-training, or density next
            faults.inject("training" if step < config.steps else "density", spec.name, spec.fault or "")

    hooks = TrainHooks(
        on_log=on_log,
        on_checkpoint=on_checkpoint,
        wrap_model=ray.train.torch.prepare_model if world > 1 else None,
        rank=rank,
        world_size=world,
    )
    if board is not None and rank == 0:
        board.update.remote(spec.name, "training", step=0, steps=config.steps)
    run = train_category(
        config,
        data_root,
        spec.category,
        work,
        device=_worker_device(),
        hooks=hooks,
        progress=False,
    )
    if rank != 0:
        ray.train.report({"done": 1})
        return
    _evaluate_and_report(spec, run.detector, data_root, work, board)


def _validation_loop(spec: RunSpec, config: TrainConfig, data_root: Path, work: Path, world: int) -> None:
    """Trains (an ensemble of) detectors on the validation split, reporting metrics per evaluation step."""
    from cutpaste.evaluation.validation import validate_config

    if world != 1:
        raise ValueError("validation-report mode trains on one worker; use workers=1")
    options = dict(spec.validation or {})
    # Every report names the worker's placement group, so a Tune driver can release it when a trial ends.
    group = ray.util.get_current_placement_group()
    group_hex = group.id.hex() if group else ""

    def report(record: dict[str, float]) -> None:
        # "done" is Tune's own key; "finished" says the whole (ensemble) run completed.
        ray.train.report({**record, "finished": 0, "placement_group": group_hex})

    run = validate_config(
        config,
        data_root,
        spec.category,
        ensemble_size=int(options.get("ensemble_size", 1)),
        rule=str(options.get("rule", "mean")),
        folder=options.get("folder"),
        holdout_fraction=float(options.get("holdout_fraction", 0.2)),
        device=_worker_device(),
        on_eval=report,
    )
    final = work / "final"
    run.detector.save(final)
    step = run.history[-1]["step"] if run.history else 0.0
    final_report = {**run.metrics, "step": step, "finished": 1, "placement_group": group_hex}
    ray.train.report(final_report, checkpoint=Checkpoint.from_directory(str(final)))


def _evaluate_and_report(spec: RunSpec, detector: Any, data_root: Path, work: Path, board: Any) -> None:
    """Rank 0, after training: the test split scored once, the result files and the review figure reported
    to Ray as the run's final checkpoint."""
    if board is not None:
        board.update.remote(spec.name, "evaluating")
    faults.inject("evaluation", spec.name, spec.fault or "")
    # The figure's four images are kept as the maps stream by; pixel metrics never hold the split's pixels.
    picks = ReviewPicks()
    evaluation = evaluate_category(detector, data_root, spec.category, on_maps=picks)
    atomic_write_text(json.dumps(evaluation.to_dict()), work / "evaluation.json")
    final = work / "final"
    final.mkdir()
    for name in RESULT_FILES:
        shutil.copy2(work / name, final / name)
    title = f"{spec.category}, seed {spec.seed}: best and worst of the test split ({_map_kind(detector)} maps)"
    strip = sample_heatmaps(picks, detector.map_range, title=title)
    if strip is not None:
        save_png(strip, final / HEATMAPS_NAME)
    summary = {
        "done": 1,
        "image_auroc": evaluation.metrics.image_auroc,
        "aupr": evaluation.metrics.aupr,
        "f1_max": evaluation.metrics.f1_max,
        "threshold": detector.threshold,
    }
    if evaluation.pixel is not None and evaluation.pixel.aupro is not None:
        summary.update(pixel_auroc=evaluation.pixel.pixel_auroc, aupro=evaluation.pixel.aupro)
    faults.inject("final_checkpoint", spec.name, spec.fault or "")
    ray.train.report(summary, checkpoint=Checkpoint.from_directory(str(final)))


def _worker_device() -> str:
    """Ray's device for this worker; the CPU where a GPU slot has no CUDA behind it (a logical GPU, as in a
    rehearsal of the cluster's schedule on a machine without one)."""
    import torch

    return str(ray.train.torch.get_device()) if torch.cuda.is_available() else "cpu"


def _map_kind(detector: Any) -> str:
    """What the review figure's maps are, as the detector draws them by default."""
    if detector.is_patch_model:
        return "patch-model"
    return "feature-map scorer" if detector.grid is not None else "GradCAM"


def build_trainer(
    spec: RunSpec,
    *,
    storage_path: str,
    workers: int,
    gpus_per_worker: float,
    cpus_per_worker: float,
    max_failures: int,
    status_board: Any = None,
    callbacks: list[Any] | None = None,
) -> TorchTrainer:
    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.__dict__, "status_board": status_board},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources),
        # NCCL only where several workers share gradients on GPUs; one worker needs no collective on the GPU,
        # and gloo also starts where a GPU slot is logical (no CUDA behind it).
        torch_config=TorchConfig(backend="nccl" if workers > 1 and gpus_per_worker else "gloo"),
        run_config=RunConfig(
            name=spec.name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


def fetch_result_files(checkpoint: Checkpoint, target: Path) -> Path:
    """Copies the final bundle files of a finished run out of Ray's checkpoint storage."""
    target.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as directory:
        for name in RESULT_FILES:
            source = Path(directory) / name
            if not source.is_file():
                raise FileNotFoundError(f"finished checkpoint {checkpoint.path} lacks {name}")
            shutil.copy2(source, target / name)
        if (Path(directory) / HEATMAPS_NAME).is_file():
            shutil.copy2(Path(directory) / HEATMAPS_NAME, target / HEATMAPS_NAME)
    return target
