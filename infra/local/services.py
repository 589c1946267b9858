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


class MlflowServer:
    """``mlflow server`` (sqlite backend) on a fixed loopback port, so it can be killed like a crashed host and
    started again at the same address, as a supervisor would (bench/chaos.py, the fault tests)."""

    def __init__(self, work: Path, env: dict[str, str], *, artifacts: str | None = None) -> None:
        self.work, self.env = work, env
        self.artifacts = artifacts or str(work / "mlartifacts")
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = open(work / "mlflow-server.log", "ab")  # noqa: SIM115 (closed in close())

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.work / 'mlflow.db'}"]
        command += ["--artifacts-destination", self.artifacts, "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", "1"]
        self.process = subprocess.Popen(
            command, env={**os.environ, **self.env}, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_http(f"{self.uri}/health", 90, self.process)

    def stop(self) -> None:
        """SIGKILL to the whole process group (the server and its workers), no goodbye."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        self.stop()
        self.log.close()


@contextlib.contextmanager
def mlflow_server(workdir: Path, *, env: dict[str, str], artifacts: str) -> Iterator[str]:
    """``mlflow server`` with a sqlite backend and proxied artifacts at ``artifacts`` (e.g. s3://...), stopped
    politely (SIGTERM) at the end."""
    server = MlflowServer(workdir, env, artifacts=artifacts)
    try:
        server.start()
        yield server.uri
    finally:
        if server.process is not None:
            stop_process_group(server.process)
        server.log.close()


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
def ray_head(
    workdir: Path, *, env: dict[str, str], num_cpus: int = 2, num_gpus: float = 0, temp_dir: Path | None = None
) -> Iterator[dict[str, str]]:
    """``ray start --head`` on loopback; yields the dashboard address and the environment to talk to it.
    ``num_gpus`` declares logical GPUs: Ray schedules on them, whatever the machine has. ``temp_dir`` (short:
    Ray's socket paths live in it) tells this cluster's processes from another's (:func:`ray_worker_pids`)."""
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
            *([f"--temp-dir={temp_dir}"] if temp_dir else []),
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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def ray_worker_pids(temp_dir: Path, title: str) -> list[int]:
    """Processes titled ``title`` (``ray::RayTrainWorker``, ``ray::TrainController``, ``ray::StatusBoard``)
    among the workers of the raylet whose command line names ``temp_dir``: this cluster's only (Linux /proc)."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    raylets = {pid for pid in pids if "raylet" in _cmdline(pid) and str(temp_dir) in _cmdline(pid)}
    return sorted(pid for pid in pids if _parent(pid) in raylets and _cmdline(pid).startswith(title))


def ray_job(head: dict, command: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``ray job <command> --address HEAD <args>``: the address before the args, which may end in an entrypoint."""
    return subprocess.run(
        [str(VENV_BIN / "ray"), "job", command, "--address", head["address"], *args],
        env=head["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit_job_no_wait(head: dict, entrypoint: list[str], submission_id: str, *, working_dir: Path) -> None:
    options = ["--no-wait", "--submission-id", submission_id, "--working-dir", str(working_dir)]
    deadline = time.monotonic() + 60
    # Right after `ray start` the dashboard may have no job agent yet ("No available agent to submit job").
    while (result := ray_job(head, "submit", *options, "--", *entrypoint)).returncode != 0:
        if "No available agent" not in result.stdout + result.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    if result.returncode != 0:
        raise RuntimeError(f"ray job submit failed: {result.stdout[-2000:]} {result.stderr[-2000:]}")


def job_status(head: dict, submission_id: str) -> str:
    """SUCCEEDED, FAILED, STOPPED, RUNNING, PENDING or UNKNOWN."""
    result = ray_job(head, "status", submission_id)
    out = (result.stdout + result.stderr).lower()
    for state in ("succeeded", "failed", "stopped", "running", "pending"):
        if state in out:
            return state.upper()
    return "UNKNOWN"


def submit_job(head: dict, entrypoint: list[str], *, working_dir: Path, timeout_s: float) -> tuple[str, str]:
    """``ray job submit`` and wait; returns (final status, job logs)."""
    result = ray_job(head, "submit", "--working-dir", str(working_dir), "--", *entrypoint, timeout=timeout_s)
    logs = result.stdout + result.stderr
    if result.returncode == 0 and "succeeded" in logs:
        return "SUCCEEDED", logs
    return ("FAILED" if "failed" in logs.lower() else f"exit {result.returncode}"), logs
