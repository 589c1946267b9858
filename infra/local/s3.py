"""A real S3 HTTP endpoint on loopback (moto's threaded server, never the in-process mock), for the local
cluster rehearsal and the tests. moto comes with the ``dev`` extra.

    from infra.local.s3 import moto_s3_server, s3_env

    with moto_s3_server() as endpoint:            # "http://127.0.0.1:<port>"
        os.environ.update(s3_env(endpoint))       # or pass it to Ray workers as runtime_env env_vars

moto keeps its state per process: every server started here shares the same buckets, so tests use
their own bucket names. ``enforce_auth`` makes the server check credentials (unknown keys get
InvalidAccessKeyId); by default moto accepts any.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment variables that point boto3 (and MLflow) at ``endpoint`` with fake credentials."""
    return {
        **FAKE_CREDENTIALS,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }


@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """Start moto's server on 127.0.0.1 at a free port; yield its endpoint URL; stop it afterwards."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def start_moto_process(port: int, timeout_s: float = 90) -> subprocess.Popen:
    """moto's server in a process (and process group) of its own, for benchmarks: client and server then
    do not share one GIL. Returns once it answers; the caller stops it (``services.stop_process_group``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"moto server did not answer on 127.0.0.1:{port} within {timeout_s:.0f} s")


def _post(url: str, body: bytes = b"") -> None:
    # Not form-encoded (urllib's default), or Flask consumes the body as a form and moto reads nothing.
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10):
        pass


@contextlib.contextmanager
def enforce_auth(endpoint: str) -> Iterator[None]:
    """Within the block the server authenticates every request (and authorises it against moto's IAM)."""
    _post(f"{endpoint}/moto-api/reset-auth", b"0")
    try:
        yield
    finally:
        _post(f"{endpoint}/moto-api/reset-auth", b"inf")
