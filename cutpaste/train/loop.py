"""The training loop: the whole category lives on the device, CutPaste runs there, nothing waits on a loader.

One loop serves the CLI, the benchmarks and Ray Train: callers plug in through :class:`TrainHooks`
(progress records, checkpoint notifications, DDP wrapping) instead of copying the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cutpaste.atomic import atomic_torch_save
from cutpaste.augment.ops import REFERENCE_SIZE
from cutpaste.augment.views import make_views
from cutpaste.config import TrainConfig
from cutpaste.errors import ConfigError
from cutpaste.model.network import CutPasteNet, build_model
from cutpaste.model.patches import random_crops
from cutpaste.model.precision import use_amp, use_channels_last
from cutpaste.train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, check_same_run, load_checkpoint


@dataclass
class TrainHooks:
    """Optional callbacks; each runs on every worker (check ``rank`` yourself where that matters)."""

    # Called every ``log_every`` steps and at the end with {"step", "loss", "accuracy", "lr", "img_s"}.
    on_log: Callable[[dict[str, float]], None] | None = None
    # Called at every checkpoint step on every rank, with the file once it is complete (atomic rename
    # done) on rank 0 and None elsewhere.
    on_checkpoint: Callable[[int, Path | None], None] | None = None
    # E.g. DistributedDataParallel wrapping; the loop keeps the bare module for checkpoints.
    wrap_model: Callable[[nn.Module], nn.Module] | None = None
    rank: int = 0
    # Data-parallel workers of one run: the config's batch_size stays the global batch (each worker draws
    # and augments its share), and logged loss/accuracy are averaged over the workers.
    world_size: int = 1


@dataclass
class TrainResult:
    model: CutPasteNet
    config: TrainConfig
    steps_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    resumed_from_step: int = 0
    # Normal images this worker drew per step: its share of the configured (global) batch_size.
    local_batch: int = 0


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: CUDA was requested but no GPU is visible")
    return device


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, the paper's."""
    return torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """One cosine cycle over the run, the paper's."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)


def optimisation_step(
    runner: nn.Module, optimizer: torch.optim.Optimizer, views: torch.Tensor, labels: torch.Tensor, *, amp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward/backward/update of the proxy classifier (bf16 autocast when ``amp``); the loss and
    logits come back for the caller's running sums."""
    with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=amp):
        _, logits = runner(views)
        loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def train_model(
    config: TrainConfig,
    train_images: torch.Tensor,
    *,
    device: str | torch.device = "auto",
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    hooks: TrainHooks | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains the CutPaste proxy classifier on ``train_images`` ``(N, 3, S, S)`` uint8 (S = image_size).

    With ``checkpoint_dir`` a checkpoint is written every ``checkpoint_every`` steps; when one is
    there and ``resume`` is true, training continues from it and ends exactly where an uninterrupted
    run with the same seed ends (RNG state, optimiser and schedule are all restored).
    """
    hooks = hooks or TrainHooks()
    config.validate()
    device = resolve_device(device)
    share = _worker_share(config, train_images, hooks)
    run = _set_up(config, device, hooks, share, checkpoint_dir)
    if resume:
        _resume(run)
    resumed_from = run.start
    runner, images = _prepare(run, train_images)
    began = time.perf_counter()
    _loop(run, runner, images, progress)
    # Scoring runs in the default layout, as in a bundle loaded from disk: the same detector scores the same.
    run.model.to(memory_format=torch.contiguous_format).eval()
    return TrainResult(
        model=run.model,
        config=config,
        steps_done=config.steps,
        history=run.history,
        wall_s=time.perf_counter() - began,
        resumed_from_step=resumed_from,
        local_batch=share,
    )


@dataclass
class _Run:
    """What one worker's training carries from step to step, so that each step can be a function of its own."""

    config: TrainConfig
    hooks: TrainHooks
    device: torch.device
    # Normal images this worker draws per step.
    share: int
    amp: bool
    channels_last: bool
    model: CutPasteNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    checkpoint: Path | None
    start: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def world(self) -> int:
        return max(1, self.hooks.world_size)


def _worker_share(config: TrainConfig, train_images: torch.Tensor, hooks: TrainHooks) -> int:
    """Rejects unusable input before anything is built, and returns this worker's share of the global batch."""
    if train_images.ndim != 4 or train_images.shape[1:] != (3, config.image_size, config.image_size):
        raise ValueError(
            f"train_images must be (N, 3, {config.image_size}, {config.image_size}), got {tuple(train_images.shape)}"
        )
    if train_images.shape[0] < 2:
        raise ValueError(f"need at least 2 training images, got {train_images.shape[0]}")
    world = max(1, hooks.world_size)
    if config.batch_size < world:
        raise ConfigError(f"batch_size: {config.batch_size} normal images per step cannot be shared by {world} workers")
    # The first ranks take one more when the batch does not divide.
    return config.batch_size // world + (1 if hooks.rank < config.batch_size % world else 0)


def _set_up(
    config: TrainConfig, device: torch.device, hooks: TrainHooks, share: int, checkpoint_dir: str | Path | None
) -> _Run:
    """Model, optimiser, schedule and augmentation generator, seeded in this order so runs repeat bitwise."""
    amp = use_amp(device, config.amp)
    channels_last = use_channels_last(device, config.channels_last)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + hooks.rank)
    return _Run(
        config=config,
        hooks=hooks,
        device=device,
        share=share,
        amp=amp,
        channels_last=channels_last,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=generator,
        checkpoint=Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None,
    )


def _resume(run: _Run) -> None:
    """Restores every piece of state the remaining steps depend on, so a resumed run ends where an
    uninterrupted one would."""
    path = run.checkpoint
    if path is None or not path.exists():
        return
    state = load_checkpoint(path)
    check_same_run(state["config"], run.config, path)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.generator.set_state(state["generator"])
    run.start, run.history = int(state["step"]), list(state["history"])


def _prepare(run: _Run, train_images: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """The images on the device, and the module the steps call (wrapped, e.g. for DDP); ``run.model``
    stays the bare module that checkpoints save."""
    images = train_images.to(run.device, non_blocking=True)
    if run.world > 1 and run.device.type == "cuda" and torch.distributed.is_initialized():
        # Batch statistics over the global batch, not each worker's share (SyncBatchNorm is CUDA-only:
        # CPU workers normalise their own share, one remaining difference from a single worker).
        run.model = nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
    runner = run.hooks.wrap_model(run.model) if run.hooks.wrap_model else run.model
    runner.train()
    return runner, images


def _loop(run: _Run, runner: nn.Module, images: torch.Tensor, progress: bool) -> None:
    """Steps from ``run.start`` to the end, logging and checkpointing at their intervals."""
    config = run.config
    window = _LogWindow.on(run.device)
    bar = tqdm(total=config.steps, initial=run.start, disable=not progress, desc="train", unit="step", leave=False)
    for step in range(run.start, config.steps):
        loss, logits, labels = _train_step(run, runner, images)
        window.add(loss, logits, labels)
        done = step + 1
        bar.update(1)
        if done % config.log_every == 0 or done == config.steps:
            record = window.record(done, run)
            run.history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
            if run.hooks.on_log:
                run.hooks.on_log(record)
            window.reset()
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save_checkpoint(run, done)
    bar.close()


def _train_step(run: _Run, runner: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draws a batch, makes its views and takes one optimisation step; every random number comes from
    ``run.generator`` in a fixed order, which is what makes a resumed run repeat an uninterrupted one."""
    config = run.config
    index = torch.randint(images.shape[0], (run.share,), device=run.device, generator=run.generator)
    batch = images[index].float().div_(255)
    if config.patch_size:
        # The patch-level model: CutPaste inside a random crop, sizes in the full image's pixels.
        batch = random_crops(batch, config.patch_size, run.generator)
    views, labels = make_views(
        batch,
        variant=config.variant,
        config=config.augment,
        generator=run.generator,
        pixel_scale=config.image_size / REFERENCE_SIZE,
    )
    if run.channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    loss, logits = optimisation_step(runner, run.optimizer, views, labels, amp=run.amp)
    run.scheduler.step()
    return loss, logits, labels


@dataclass
class _LogWindow:
    """Running sums over the steps since the last log record; they stay on the device, so the host reads
    them once per log interval, not every step."""

    loss_sum: torch.Tensor
    correct_sum: torch.Tensor
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def on(cls, device: torch.device) -> _LogWindow:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach()
        self.correct_sum += (logits.detach().argmax(1) == labels).float().mean()
        self.steps += 1

    def record(self, done: int, run: _Run) -> dict[str, float]:
        """The log record of this window (averaged over the workers when there are several)."""
        world = run.world
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank logs at the same steps, so this collective stays in step; the record is the run's.
            sums = torch.stack([self.loss_sum, self.correct_sum])
            torch.distributed.all_reduce(sums)
            self.loss_sum, self.correct_sum = sums[0] / world, sums[1] / world
        elapsed = time.perf_counter() - self.started
        return {
            "step": float(done),
            "loss": float(self.loss_sum) / self.steps,
            "accuracy": float(self.correct_sum) / self.steps,
            "lr": float(run.scheduler.get_last_lr()[0]),
            "img_s": self.steps * run.config.batch_size * run.config.num_classes / max(elapsed, 1e-9),
        }

    def reset(self) -> None:
        """Starts the next window; called after the log hook, so its time is not counted as training."""
        self.loss_sum.zero_()
        self.correct_sum.zero_()
        self.steps, self.started = 0, time.perf_counter()


def _save_checkpoint(run: _Run, step: int) -> None:
    """Rank 0 writes the checkpoint; every rank is told, so a distributed caller can keep its collective
    calls in step."""
    written = None
    if run.checkpoint is not None and run.hooks.rank == 0:
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": run.config.to_dict(),
                "step": step,
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "generator": run.generator.get_state(),
                "history": run.history,
            },
            run.checkpoint,
        )
        written = run.checkpoint
    if run.hooks.on_checkpoint:
        run.hooks.on_checkpoint(step, written)
