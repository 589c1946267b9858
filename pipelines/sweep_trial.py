"""One Tune trial of a sweep: the driver function that launches a ``TorchTrainer``, and the callbacks the
sweep's driver process runs per trial (MLflow child runs, releasing the trainer's placement group).

The trial reuses the benchmark's training function (``pipelines/train_run.py``) in validation-report
mode; ``TuneReportCallback`` forwards its reports to Tune.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import tune

from cutpaste.config import TrainConfig, flatten
from pipelines.search_space import METRICS, trial_overrides

# Tune cannot schedule a trial with zero resources; its driver function only waits on the trainer.
TRIAL_DRIVER_CPU = 0.01


@dataclass(frozen=True)
class SweepSettings:
    """Everything a trial needs besides its sampled point; plain values (it travels to the trial actors)."""

    sweep_id: str
    category: str
    data: str
    base_config: dict[str, Any]
    fixed: dict[str, Any]
    storage: str
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    validation_folder: str | None = None
    holdout_fraction: float = 0.2
    s3_endpoint: str | None = None


def trial_config(settings: SweepSettings, params: dict[str, Any]) -> tuple[TrainConfig, int, str]:
    """The resolved config, ensemble size and rule of one trial."""
    point = trial_overrides({**settings.fixed, **params})
    base = TrainConfig.from_dict(settings.base_config, source="sweep base config")
    return base.override(point.overrides, source="sampled point"), point.ensemble_size, point.ensemble_rule


def run_trial(params: dict[str, Any], settings: SweepSettings) -> None:
    """One Tune trial: a ``TorchTrainer`` over the benchmark's training function, reports forwarded to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train_run import RunSpec, build_trainer

    config, size, rule = trial_config(settings, params)
    trial_id = tune.get_context().get_trial_id()
    spec = RunSpec(
        name=f"{settings.sweep_id}-{settings.category}-{trial_id}",
        category=settings.category,
        seed=config.seed,
        data=settings.data,
        train_config=config.to_dict(),
        s3_endpoint=settings.s3_endpoint,
        validation={
            "ensemble_size": size,
            "rule": rule,
            "folder": settings.validation_folder,
            "holdout_fraction": settings.holdout_fraction,
        },
    )
    trainer = build_trainer(
        spec,
        storage_path=settings.storage,
        workers=1,
        gpus_per_worker=settings.gpus_per_trial,
        # The trial's driver function holds a sliver of a CPU: the worker gets the rest, so N trials fit N CPUs.
        cpus_per_worker=settings.cpus_per_trial - TRIAL_DRIVER_CPU,
        max_failures=0,
        callbacks=[TuneReportCallback()],
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


class ReleaseTrainerGroups(tune.Callback):
    """Removes a trial's Ray Train placement group when the trial ends (finished, stopped early or failed).

    Observed with Ray 2.60 when several Ray instances share a machine: the trainer's group outlives its
    Tune trial (the controller dies with the trial actor and Train's PlacementGroupCleaner cannot reach
    the state API), so its CPUs stay reserved and later trials never start. Workers name their group
    in every report.
    """

    def _release(self, trial) -> None:
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

        group_hex = str((trial.last_result or {}).get("placement_group") or "")
        if not group_hex:
            return
        group = PlacementGroup(PlacementGroupID(bytes.fromhex(group_hex)))
        if placement_group_table(group).get("state") not in (None, "REMOVED"):
            remove_placement_group(group)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._release(trial)


class MlflowTrials(tune.Callback):
    """Runs in the driver: a child MLflow run per trial (params, validation metrics per step, outcome)."""

    def __init__(self, uri: str, experiment_id: str, parent_id: str, settings: SweepSettings, metric: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(uri)
        self.uri, self.experiment_id, self.parent_id = uri, experiment_id, parent_id
        self.settings, self.metric = settings, metric
        self.runs: dict[str, str] = {}
        self.buffers: dict[str, Any] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        from pipelines import tracking

        config, size, rule = trial_config(self.settings, trial.config)
        name = f"{self.settings.sweep_id}-{self.settings.category}-{trial.trial_id}"
        run_id = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                "mlflow.parentRunId": self.parent_id,
                tracking.TAG_BENCHMARK: self.settings.sweep_id,
                tracking.TAG_ROLE: "trial",
                "cutpaste.trial_id": trial.trial_id,
                "cutpaste.category": self.settings.category,
            },
        ).info.run_id
        params = {**flatten(config), "ensemble.size": size, "ensemble.rule": rule}
        params |= {f"sampled.{k}": v for k, v in trial.config.items()}
        tracking.log_params(self.client, run_id, params)
        self.runs[trial.trial_id] = run_id
        self.buffers[trial.trial_id] = tracking.MetricBuffer(self.uri, run_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        buffer = self.buffers.get(trial.trial_id)
        if buffer is not None:
            values = {k: result[k] for k in (*METRICS, "loss", "accuracy", "member") if k in result}
            buffer.log(values, int(result.get("step", result.get("training_iteration", 0))))

    def _end(self, trial, *, failed: bool) -> None:
        from pipelines import tracking

        run_id = self.runs.pop(trial.trial_id, None)
        if run_id is None:
            return
        self.buffers.pop(trial.trial_id).close()
        finished = bool((trial.last_result or {}).get("finished"))
        tracking.set_tags(self.client, run_id, {"cutpaste.trial_outcome": trial_outcome(failed, finished)})
        tracking.finish_run(self.client, run_id, failed=failed)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, failed=True)


def trial_outcome(failed: bool, finished: bool) -> str:
    if failed:
        return "failed"
    return "finished" if finished else "stopped early"
