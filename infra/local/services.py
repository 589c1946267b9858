"""Real components on loopback, for the local cluster rehearsal and the integration tests alike: a Ray
head, an MLflow tracking server, a job submission, free ports and HTTP waits.

Each is started by its caller and stopped afterwards; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout_s: float, process: subprocess.Popen | None = None, *, any_status: bool = False) -> None:
    """Until ``url`` answers 200 (or anything at all with ``any_status``: Ray's token auth answers 401)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError:
            if any_status:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


@contextlib.contextmanager
def mlflow_server(workdir: Path, *, env: dict[str, str], artifacts: str) -> Iterator[str]:
    """``mlflow server`` with a sqlite backend and proxied artifacts at ``artifacts`` (e.g. s3://...)."""
    port = free_port()
    log = open(workdir / "mlflow-server.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination",
            artifacts,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", 90, process)
        yield uri
    finally:
        stop_process_group(process)
        log.close()


def stop_process_group(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM to the process's group (a server and the workers it forked), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


@contextlib.contextmanager
def ray_head(workdir: Path, *, env: dict[str, str], num_cpus: int = 2, num_gpus: float = 0) -> Iterator[dict[str, str]]:
    """``ray start --head`` on loopback; yields the dashboard address and the environment to talk to it.
    ``num_gpus`` declares logical GPUs: Ray schedules on them, whatever the machine has."""
    gcs_port, dashboard_port = free_port(), free_port()
    # Token authentication stays on (the default since Ray 2.59); start and submit must agree on it.
    full_env = {**os.environ, **env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    ray = str(VENV_BIN / "ray")
    subprocess.run(
        [
            ray,
            "start",
            "--head",
            f"--port={gcs_port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus:g}",
            "--object-store-memory=200000000",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            "--disable-usage-stats",
        ],
        env=full_env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_http(f"{address}/api/version", 90, any_status=True)
        yield {"address": address, "gcs": f"127.0.0.1:{gcs_port}", "env": full_env}
    finally:
        subprocess.run([ray, "stop", "--force"], env=full_env, capture_output=True, timeout=120)


def submit_job(head: dict, entrypoint: list[str], *, working_dir: Path, timeout_s: float) -> tuple[str, str]:
    """``ray job submit`` and wait; returns (final status, job logs)."""
    ray = str(VENV_BIN / "ray")
    result = subprocess.run(
        [ray, "job", "submit", "--address", head["address"], "--working-dir", str(working_dir), "--", *entrypoint],
        env=head["env"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    logs = result.stdout + result.stderr
    if result.returncode == 0 and "succeeded" in logs:
        return "SUCCEEDED", logs
    return ("FAILED" if "failed" in logs.lower() else f"exit {result.returncode}"), logs
