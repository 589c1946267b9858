"""Fixtures for the storage tests: a real S3 server (moto's, on loopback), buckets, synthetic data, a flaky proxy."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from cutpaste.storage import RetryPolicy
from infra.local.s3 import moto_s3_server, s3_env

FAST_RETRY = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def fast_retry() -> RetryPolicy:
    """Two whole-object attempts with a few milliseconds between them."""
    return FAST_RETRY


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    with moto_s3_server() as endpoint:
        yield endpoint


@dataclass
class S3Env:
    endpoint: str
    client: object
    cache_dir: Path


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Env:
    """The server's endpoint and fake credentials in the environment; a fresh cache dir; few retries."""
    import boto3

    for name, value in s3_env(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("CUTPASTE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CUTPASTE_S3_VERIFY_TTL", "0")  # every call checks S3; the fast path has its own test
    return S3Env(s3_endpoint, boto3.client("s3"), tmp_path / "cache")


@pytest.fixture
def bucket(s3: S3Env) -> str:
    """A new bucket per test: moto's state is shared by every server in this process."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small synthetic categories (64 px; 4 train, 2 good + 1 per defect type in test, with masks)."""
    from cutpaste.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, categories=2, size=64, train_count=4, test_good=2, test_defect_per_type=1)
    return root


@pytest.fixture
def uploaded(s3: S3Env, bucket: str, synth_root: Path) -> str:
    """``synth_root`` uploaded and indexed at ``s3://<bucket>/mvtec``."""
    from cutpaste.storage import upload

    upload(synth_root, f"s3://{bucket}/mvtec", retry=FAST_RETRY)
    return f"s3://{bucket}/mvtec"


class FlakyProxy:
    """A TCP proxy in front of the S3 server that can die like a crashed server.

    After ``budget`` response bytes (in total, over all connections) it cuts every connection mid-stream
    and closes its port, so later connections are refused. ``delay`` slows each forwarded chunk.
    """

    def __init__(self, endpoint: str, *, budget: int | None = None, delay: float = 0.0) -> None:
        host, port = endpoint.rsplit("/", 1)[-1].rsplit(":", 1)
        self.target = (host, int(port))
        self.budget, self.delay = budget, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.dead = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.dead.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        try:
            while data := src.recv(16384):
                if response and self.budget is not None:
                    with self._lock:
                        allowed = min(len(data), self.budget)
                        self.budget -= allowed
                    if allowed < len(data):
                        dst.sendall(data[:allowed])
                        self.kill()
                        return
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def kill(self) -> None:
        """Stop like a crashed server: refuse new connections, reset the open ones."""
        self.dead.set()
        self.listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()


@pytest.fixture
def flaky_proxy(s3_endpoint: str):
    proxies: list[FlakyProxy] = []

    def make(**kwargs) -> FlakyProxy:
        proxies.append(FlakyProxy(s3_endpoint, **kwargs))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.kill()
