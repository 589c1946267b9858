"""A TCP proxy in front of the S3 server that can be cut mid-upload and brought back on the same port.

Unlike tests/storage/conftest.py's FlakyProxy (which dies after a number of *response* bytes, for downloads),
this one counts *request* bytes, so it can stop the endpoint in the middle of a checkpoint upload.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from infra.local.services import free_port


class CuttableProxy:
    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.rsplit("/", 1)[-1].rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.budget: int | None = None
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        """Listen (again) on the same port; forget any earlier cut."""
        self.budget = None
        self.cut.clear()
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut_after(self, request_bytes: int) -> None:
        """Stop like a crashed server once ``request_bytes`` more bytes were sent towards it."""
        with self._lock:
            self.budget = request_bytes

    def stop(self) -> None:
        self.cut.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, request: bool) -> None:
        try:
            while data := src.recv(65536):
                if request:
                    with self._lock:
                        if self.budget is not None:
                            self.budget -= len(data)
                            exhausted = self.budget <= 0
                        else:
                            exhausted = False
                    if exhausted:
                        self.stop()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
