"""A TCP forwarder on loopback, in a process of its own: latency in front of an S3 server (bench/s3_ingest.py),
or an S3 endpoint that can be SIGKILLed and started again on the same port while the data behind it stays
(bench/chaos.py: the endpoint dies, S3 itself keeps its objects).

    python -m infra.local.tcp_proxy LISTEN_PORT TARGET_PORT [DELAY_S]
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from infra.local.services import free_port


def serve(listen_port: int, target_port: int, delay_s: float = 0.0) -> None:
    """Forward 127.0.0.1:listen_port to target_port, holding each connection's first response bytes delay_s.

    moto closes every connection after one response, so this adds ``delay_s`` to every request, like the
    first-byte latency of a real S3 GET (tens of milliseconds), while moto itself stays on loopback.
    """
    import asyncio

    async def pipe(src, dst, delay: float) -> None:
        try:
            while data := await src.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                    delay = 0.0
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.close()

    async def handle(reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer, 0.0), pipe(up_reader, writer, delay_s))

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=256, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


def start(target_port: int, delay_s: float = 0.0, *, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """The forwarder in its own process (its own event loop and GIL), once it accepts; returns it and its port."""
    port = port or free_port()
    command = [sys.executable, "-m", "infra.local.tcp_proxy", str(port), str(target_port), str(delay_s)]
    proc = subprocess.Popen(command, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tcp proxy on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("tcp proxy did not start")


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
