"""MLflow bookkeeping for benchmarks: reachability, parent/child runs, buffered metrics, artifacts, registry.

Everything that talks to MLflow goes through ``MlflowClient`` with explicit run ids, so the driver,
the per-run Ray tasks and the training workers can all log into the same runs concurrently.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, stop_after_delay, wait_exponential

from cutpaste.errors import CutPasteError

TAG_BENCHMARK = "cutpaste.benchmark_id"
TAG_RUN_KEY = "cutpaste.run_key"
TAG_ROLE = "cutpaste.role"
_PARAM_VALUE_LIMIT = 6000


class TrackingError(CutPasteError):
    """The MLflow server is unreachable or refused a request."""


# Opens the experiment in the UI's model-training view, with its runs table (see ../shared/DESIGN.md).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def redact_uri(uri: str) -> str:
    """``uri`` without the password of its userinfo (``http://user:***@host``): the form to log, print or store.

    >>> redact_uri("http://alice:s3cret@mlflow:5000/x")
    'http://alice:***@mlflow:5000/x'
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None and "@" not in parts.netloc:
        return uri
    host = parts.netloc.rpartition("@")[2]
    # A user without a password may itself be a token: only ``user:password`` keeps the user visible.
    shown = f"{parts.username}:***@{host}" if parts.username and parts.password is not None else f"***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=shown))


def credentials_to_env(uri: str) -> str:
    """``uri`` without userinfo; its user and password move to ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``.

    MLflow reads basic-auth credentials from those variables. Left inside the URI they would be printed
    (MLflow's "View run at <uri>" lines land in the job logs), logged as params and stored in results.
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    if parts.username:
        os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parts.username)
    if parts.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parts.password)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def check_reachable(uri: str, *, timeout_s: float = 10.0) -> None:
    """Fails fast, before any training, when an HTTP tracking server does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    shown = redact_uri(uri)
    parts = urllib.parse.urlsplit(uri)
    health = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/") + "/health"
    request = urllib.request.Request(health)
    # urllib takes no credentials from the URL: send them as MLflow's client does (basic auth).
    user = urllib.parse.unquote(parts.username) if parts.username else os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = (
        urllib.parse.unquote(parts.password) if parts.password else os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    )
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow server {shown} answered {response.status} on /health")
    except urllib.error.HTTPError as exc:
        raise TrackingError(f"MLflow server {shown} answered {exc.code} on /health") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow server {shown} is unreachable ({reason}); start it or pass --mlflow-uri") from None


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None = None) -> str:
    """The experiment, created when absent, marked as model training so the UI opens on its runs table
    (not the GenAI view)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        try:
            experiment_id = client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except Exception:
            # Another benchmark on the same server created it between our lookup and create.
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found is not None:
        experiment_id = found.experiment_id
        for key, value in EXPERIMENT_TAGS.items():
            if found.tags.get(key) != value:  # experiments made before this tag existed
                client.set_experiment_tag(experiment_id, key, value)
    return experiment_id


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1, order_by=["start_time DESC"])
    return runs[0].info.run_id if runs else None


def find_or_create_run(
    client: MlflowClient, experiment_id: str, *, name: str, tags: dict[str, str], parent_run_id: str | None = None
) -> tuple[str, bool]:
    """The run carrying ``tags`` (resumed benchmarks reuse it), else a new one. Returns (run_id, created)."""
    existing = find_run(client, experiment_id, tags)
    if existing is not None:
        return existing, False
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id, True


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Params are immutable in MLflow: re-logging the same value on resume is fine, a new value is not."""
    existing = client.get_run(run_id).data.params
    batch = [
        Param(k, str(v)[:_PARAM_VALUE_LIMIT]) for k, v in sorted(params.items()) if k not in existing and v is not None
    ]
    for start in range(0, len(batch), 90):
        client.log_batch(run_id, params=batch[start : start + 90])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


class MetricBuffer:
    """Step metrics that survive a tracking outage: kept in a bounded queue and sent when MLflow answers.

    Training never waits on MLflow for more than one attempt per flush; :meth:`close` retries with
    backoff and reports what could not be written instead of raising into the training loop. MLflow's
    async logging (``synchronous=False``) also returns at once, but a batch that fails is reported on its
    future and not kept: after an outage its metrics would be gone, where this buffer still holds them.
    """

    def __init__(self, uri: str, run_id: str, *, max_pending: int = 100_000, prefix: str = "") -> None:
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.prefix = prefix
        self.pending: deque[Metric] = deque(maxlen=max_pending)
        self.dropped = 0
        self.last_error: str = ""

    def log(self, values: dict[str, float], step: int, *, flush: bool = True) -> None:
        now = int(time.time() * 1000)
        for key, value in values.items():
            if value is None or not math.isfinite(float(value)):
                continue
            if len(self.pending) == self.pending.maxlen:
                self.dropped += 1
            self.pending.append(Metric(self.prefix + key, float(value), now, int(step)))
        if flush:
            self.flush()

    def flush(self) -> bool:
        while self.pending:
            batch = [self.pending[i] for i in range(min(500, len(self.pending)))]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                return False
            for _ in batch:
                self.pending.popleft()
        return True

    def close(self, *, attempts: int = 5, backoff_s: float = 1.0, timeout_s: float | None = None) -> None:
        """Writes what is pending, retrying with exponential backoff (at most 15 s apart): ``attempts`` times,
        or, with ``timeout_s``, until that long has passed (a restarting server may need a minute or more)."""
        if not close_policy(attempts=attempts, backoff_s=backoff_s, timeout_s=timeout_s)(self.flush):
            raise TrackingError(
                f"could not write {len(self.pending)} metrics to MLflow run {self.run_id}: {self.last_error}"
            )


def close_policy(*, attempts: int, backoff_s: float, timeout_s: float | None) -> Retrying:
    """Flushing a :class:`MetricBuffer` until it succeeds: exponential backoff capped at 15 s, ``attempts``
    times, or until ``timeout_s`` has passed (the last pause is shortened to end at that deadline, where one
    more attempt is made). Returns the last flush's result instead of raising.

    MLflow's own HTTP retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) cover one request for seconds; a server
    restarting takes longer, and the metrics must outlive it in the buffer, not in a blocked request."""
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    backoff = wait_exponential(multiplier=backoff_s, max=15.0)

    def pause(state: RetryCallState) -> float:
        seconds = backoff(state)
        return seconds if deadline is None else min(seconds, max(0.0, deadline - time.monotonic()))

    return Retrying(
        stop=stop_after_attempt(attempts) if timeout_s is None else stop_after_delay(timeout_s),
        wait=pause,
        retry=retry_if_result(lambda flushed: not flushed),
        retry_error_callback=lambda state: state.outcome.result(),
    )


def log_json_artifact(
    client: MlflowClient, run_id: str, data: Any, name: str, artifact_path: str | None = None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(data, indent=2, default=str))
        client.log_artifact(run_id, str(path), artifact_path)


def finish_run(client: MlflowClient, run_id: str, *, failed: bool = False) -> None:
    status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
    client.set_terminated(run_id, status=status)


def register_champion(
    client: MlflowClient,
    name: str,
    run_id: str,
    *,
    model_uri: str,
    aliases: tuple[str, ...],
    tags: dict[str, str] | None = None,
) -> str:
    """Registers ``model_uri`` as a new version of ``name`` (unless this run already has one) and moves aliases.

    Only called after the run's artifacts are complete, so no version ever points at a partial model.
    """
    try:
        client.get_registered_model(name)
    except Exception:
        try:
            client.create_registered_model(name, tags={"source": "cutpaste"})
        except Exception:
            # Another benchmark created it in the meantime (two benchmarks sharing one registry).
            client.get_registered_model(name)
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if versions:
        version = str(max(int(v.version) for v in versions))
    else:
        # mlflow.register_model resolves MLflow 3 logged-model URIs (models:/m-...) to their source. It prints
        # "already exists, creating a new version" to stderr; the caller prints what was registered.
        with contextlib.redirect_stderr(io.StringIO()):
            version = mlflow.register_model(model_uri, name, await_registration_for=120, tags=tags).version
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    return str(version)
