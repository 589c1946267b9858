"""The named steps of the benchmark and sweep drivers, each alone: no Ray cluster, no MLflow server."""

import argparse
import dataclasses
import json
from types import SimpleNamespace

import pytest

from cutpaste.config import flatten
from cutpaste.presets import preset
from pipelines.benchmark import BenchmarkConfig
from pipelines.benchmark_plan import benchmark_params, plan_runs, run_params
from pipelines.benchmark_results import add_phases
from pipelines.search_space import SearchSpace
from pipelines.sweep_trial import SweepSettings
from pipelines.tune_sweep import SweepError, _max_iterations, _rank_trials, _sweep_params, _trial_row


def _bench(**overrides) -> BenchmarkConfig:
    values = dict(benchmark_id="b1", data="/data", categories=("bottle", "screw"), seeds=2, out="o", storage="s")
    values["mlflow_uri"] = "http://alice:s3cret@mlflow:5000"
    return BenchmarkConfig(**{**values, **overrides})


def test_plan_runs_queues_each_category_and_seed_under_a_stable_name():
    base = preset("demo").override({"seed": 7})
    plan = plan_runs(_bench(s3_endpoint="http://s3:9000"), base)
    names = [spec.name for spec, _ in plan]
    # Resuming finds runs by these names: category-major order, seed index (not the seed value) in the name.
    assert names == ["b1-bottle-seed0", "b1-bottle-seed1", "b1-screw-seed0", "b1-screw-seed1"]
    seeds = [(spec.category, spec.seed) for spec, _ in plan]
    assert seeds == [("bottle", 7), ("bottle", 8), ("screw", 7), ("screw", 8)]
    for spec, config in plan:
        assert config.seed == spec.seed
        assert spec.train_config == config.to_dict()
        assert (spec.data, spec.s3_endpoint) == ("/data", "http://s3:9000")
        # Only the seed differs from the benchmark's config.
        assert {**flatten(config), "seed": base.seed} == flatten(base)


def test_benchmark_params_redact_the_tracking_password_and_carry_the_config():
    config = preset("demo")
    params = benchmark_params(_bench(), config)
    assert params["benchmark.mlflow_uri"] == "http://alice:***@mlflow:5000"
    assert "s3cret" not in json.dumps(params, default=str)
    assert params["benchmark.seeds"] == 2
    assert params["benchmark.categories"] == ("bottle", "screw")
    assert {k: params[k] for k in flatten(config)} == flatten(config)


def test_run_params_name_what_the_run_trained_on():
    spec, config = plan_runs(_bench(), preset("demo"))[3]
    params = run_params(spec, config)
    assert (params["category"], params["data"], params["seed"]) == ("screw", "/data", 1)
    assert {k: v for k, v in params.items() if k not in ("category", "data")} == flatten(config)


def test_add_phases_gives_runs_without_a_board_entry_an_empty_one():
    records = [{"run_name": "a"}, {"run_name": "b"}, {"category": "mean"}]
    add_phases(records, {"a": {"training": 3.0}, "c": {"queued": 1.0}})
    assert [r["phases"] for r in records] == [{"training": 3.0}, {}, {}]


@pytest.mark.parametrize(
    ("steps", "ensemble_size", "expected"),
    [
        ((), (1,), 8),  # demo: 250 steps / 50 per checkpoint = 5 reports, +1 at the end, +2
        ((100, 400), (1, 3), 29),  # the longest searched run: 400 / 50 + 1 = 9 reports per member, 3 members
        ((260,), (2,), 16),  # a partial last interval still reports: ceil(5.2) + 1 = 7 per member
    ],
)
def test_max_iterations_covers_the_longest_trial(steps, ensemble_size, expected):
    space = SearchSpace(extra={"steps": steps} if steps else {}, ensemble_size=ensemble_size).validate()
    assert _max_iterations(space, preset("demo")) == expected


def _settings() -> SweepSettings:
    base = preset("demo").to_dict()
    return SweepSettings(sweep_id="s", category="bottle", data="/d", base_config=base, fixed={}, storage="/t")


def _result(trial_id: str, value: float | None, *, finished: bool = True, error: str | None = None, **params):
    metrics = {"trial_id": trial_id, "val_auroc": value, "finished": finished, "training_iteration": 4}
    return SimpleNamespace(metrics=metrics, config=params, error=RuntimeError(error) if error else None)


def test_trial_row_resolves_the_sampled_point():
    row = _trial_row(_settings(), _result("t1", 0.9, learning_rate=0.05, ensemble_size=3), "val_auroc")
    assert row["trial_id"] == "t1"
    assert row["learning_rate"] == 0.05 and row["steps"] == 250 and row["image_size"] == 64
    assert (row["ensemble_size"], row["ensemble_rule"]) == (3, "mean")
    assert (row["val_auroc"], row["iterations"], row["outcome"], row["error"]) == (0.9, 4, "finished", "")
    assert row["params"] == {"learning_rate": 0.05, "ensemble_size": 3}
    sampled = {"image_score": "local", "feature_density": "knn", "feature_score": "max-median", "feature_stages": 2}
    scored = _trial_row(_settings(), _result("t4", 0.8, **sampled, pre_jitter=0.2), "val_auroc")
    assert {k: scored[k] for k in sampled} == sampled, "scoring is searchable"
    assert scored["pre_jitter"] == 0.2, "the whole-image jitter is searchable, and the table shows it"
    failed = _trial_row(_settings(), _result("t2", None, error="boom"), "val_auroc")
    assert (failed["outcome"], failed["error"]) == ("failed", "boom")
    stopped = _trial_row(_settings(), _result("t3", 0.99, finished=False), "val_auroc")
    assert stopped["outcome"] == "stopped early"


def test_rank_trials_puts_finished_trials_first_best_first():
    results = [
        _result("early", 0.99, finished=False),
        _result("low", 0.6),
        _result("failed", None, error="boom"),
        _result("high", 0.8),
    ]
    rows = [_trial_row(_settings(), r, "val_auroc") for r in results]
    ranked = _rank_trials(rows, "val_auroc", "bottle")
    # A trial stopped early is never chosen, however high its last report.
    assert [r["trial_id"] for r in ranked] == ["high", "low", "early", "failed"]


def test_rank_trials_without_a_finished_trial_names_the_errors():
    rows = [
        _trial_row(_settings(), r, "val_auroc")
        for r in (_result("a", None, error="out of memory"), _result("b", 0.7, finished=False))
    ]
    with pytest.raises(SweepError, match=r"^no trial of bottle finished \(2 trials\): out of memory$"):
        _rank_trials(rows, "val_auroc", "bottle")


def test_sweep_params_hold_the_space_base_config_and_flags():
    space = SearchSpace(extra={"steps": (100, 200)}).validate()
    base = preset("demo")
    args = argparse.Namespace(search="grid", scheduler="fifo", metric="val_aupr", num_samples=4)
    params = _sweep_params(args, space, base, ["bottle", "screw"])
    assert json.loads(params["space.steps"]) == [100, 200]
    assert params["base.steps"] == 250 and params["base.preset"] == "demo"
    assert (params["sweep.search"], params["sweep.scheduler"], params["sweep.metric"]) == ("grid", "fifo", "val_aupr")
    assert (params["sweep.num_samples"], params["sweep.categories"]) == (4, "bottle,screw")
    dimensions = (set(space.to_dict()) - {"extra"}) | set(space.extra)
    assert {k for k in params if k.startswith("space.")} == {f"space.{k}" for k in dimensions}


def _session(board, buffers, **bench_changes):
    from unittest.mock import MagicMock

    from pipelines.benchmark_config import Session
    from pipelines.status import Announcer

    bench = dataclasses.replace(_bench(), **bench_changes)
    return Session(bench, MagicMock(), "1", "parent", Announcer(board), preset("demo"), buffers=buffers)


def test_finishing_one_run_forwards_every_run_s_pending_records(monkeypatch):
    """At 20 concurrent runs the board's drain held another run's records when one finished (a KeyError
    ended the driver); every drained record must reach its own run's buffer."""
    from unittest.mock import MagicMock

    from pipelines import benchmark_queue

    monkeypatch.setattr(benchmark_queue.ray, "get", lambda value: value)
    drained = {"a": [{"step": 3, "loss": 0.5}], "b": [{"step": 4, "loss": 0.4}]}
    board = MagicMock()
    board.drain_metrics.remote.side_effect = [drained, {}]
    buffers = {name: MagicMock() for name in ("a", "b")}
    spec = next(spec for spec, _ in plan_runs(_bench(), preset("demo")))
    buffers[spec.name] = buffers.pop("a")
    drained[spec.name] = drained.pop("a")
    outcome = {"status": "failed", "error": "worker lost", "retryable": False}
    record = benchmark_queue.finish(_session(board, buffers), spec, "run-id", outcome)
    assert record["status"] == "failed"
    buffers[spec.name].log.assert_called_once_with({"loss": 0.5}, 3, flush=False)
    buffers["b"].log.assert_called_once_with({"loss": 0.4}, 4, flush=False)


def test_infrastructure_faults_are_retried_within_the_budget_and_bad_data_never(monkeypatch):
    from unittest.mock import MagicMock

    from pipelines import benchmark_queue

    monkeypatch.setattr(benchmark_queue.ray, "get", lambda value: value)
    released = []
    monkeypatch.setattr(benchmark_queue.placement, "release", released.append)
    monkeypatch.setattr(benchmark_queue.tracking, "MetricBuffer", lambda *a, **k: MagicMock())
    board = MagicMock()
    board.drain_metrics.remote.return_value = {}
    spec = next(spec for spec, _ in plan_runs(_bench(), preset("demo")))
    session = _session(board, {spec.name: MagicMock()}, max_failures=2)
    session.groups[spec.name] = "ab12"
    lost = {"status": "failed", "error": "ControllerError > ActorDiedError: worker died", "retryable": True}
    assert benchmark_queue.finish(session, spec, "run-id", lost) is None  # attempt 2 of 3
    assert released == ["ab12"]  # the dead controller's placement group
    assert benchmark_queue.finish(session, spec, "run-id", lost) is None  # attempt 3 of 3
    record = benchmark_queue.finish(session, spec, "run-id", lost)  # the budget is spent
    assert record["status"] == "failed" and record["retries"] == 2
    assert record["faults"] == "; ".join([lost["error"]] * 2)
    states = [call.args[1] for call in board.update.remote.call_args_list]
    assert states == ["retrying", "retrying", "failed"]
    assert "attempt 3 of 3 after ControllerError" in board.update.remote.call_args_list[1].kwargs["detail"]

    bad = {"status": "failed", "error": "WorkerGroupError > DataError: 000.png is not an image", "retryable": False}
    other = dataclasses.replace(spec, name="other")
    session.buffers[other.name] = MagicMock()
    record = benchmark_queue.finish(session, other, "run-2", bad)
    assert record["status"] == "failed" and record["retries"] == 0 and "DataError" in record["error"]


def test_mlflow_steps_are_tried_again_after_a_lost_connection_only(monkeypatch):
    from pipelines import benchmark_retries
    from pipelines.tracking import TrackingError

    waits = []
    monkeypatch.setattr(benchmark_retries, "wait_for_tracking", waits.append)
    bench = dataclasses.replace(_bench(), max_failures=2)
    calls = []

    def flaky(value, *, times):
        calls.append(value)
        if len(calls) <= times:
            raise TrackingError("MLflow server http://127.0.0.1:5000 is unreachable")
        return value

    assert benchmark_retries.with_tracking_retries(bench, "registering x", flaky, "v", times=2) == "v"
    assert len(calls) == 3 and len(waits) == 2
    calls.clear()
    with pytest.raises(TrackingError):  # the budget is spent: the last error is raised
        benchmark_retries.with_tracking_retries(bench, "registering x", flaky, "v", times=3)
    assert len(calls) == 3

    def bad():
        calls.append("bad")
        raise ValueError("registered model name is invalid")

    calls.clear()
    with pytest.raises(ValueError):
        benchmark_retries.with_tracking_retries(bench, "registering x", bad)
    assert calls == ["bad"]
