"""fetch-mvtec against an archive served on loopback: checksum, resume with Range, safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from cutpaste.data.layout import discover_categories, list_samples
from cutpaste.storage import RetryPolicy
from cutpaste.storage.fetch import FetchError, download_file, fetch_mvtec, safe_extract

NO_WAIT = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)


class ArchiveServer:
    """Serves ``payload`` at /mvtec.tar.gz with Range support; can cut the first response short."""

    def __init__(self, payload: bytes) -> None:
        self.payload, self.cut_after, self.honour_range = payload, None, True
        self.ranges: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                wanted = self.headers.get("Range")
                server.ranges.append(wanted)
                start = 0
                if wanted and server.honour_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(server.payload):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(server.payload)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                else:
                    self.send_response(200)
                body = server.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mvtec.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mvtec_archive(tmp_path_factory) -> bytes:
    """A tiny MVTec-layout category as a .tar.gz (plus the licence file the real archive has)."""
    src = tmp_path_factory.mktemp("archive")
    from PIL import Image

    members = {"license.txt": b"CC BY-NC-SA 4.0\n"}
    for rel in ("train/good/000.png", "train/good/001.png", "test/good/000.png", "test/crack/000.png"):
        path = src / rel.replace("/", "_")
        Image.new("RGB", (32, 32), (len(rel) * 5, 40, 90)).save(path)
        members[f"widget/{rel}"] = path.read_bytes()
    Image.new("L", (32, 32), 255).save(src / "mask.png")
    members["widget/ground_truth/crack/000_mask.png"] = (src / "mask.png").read_bytes()
    return _tar(members)


@pytest.fixture
def server(mvtec_archive):
    srv = ArchiveServer(mvtec_archive)
    yield srv
    srv.close()


def test_fetch_downloads_verifies_and_extracts(server, mvtec_archive, tmp_path):
    sha = hashlib.sha256(mvtec_archive).hexdigest()
    added = fetch_mvtec(tmp_path / "mvtec", url=server.url, sha256=sha, retry=NO_WAIT)
    assert added == ["license.txt", "widget"]
    assert discover_categories(tmp_path / "mvtec") == ["widget"]
    defective = [s for s in list_samples(tmp_path / "mvtec", "widget", "test") if s.label]
    assert defective[0].mask_path is not None
    assert not (tmp_path / "mvtec" / ".downloads").exists()  # the archive is removed after extraction
    assert [p.name for p in (tmp_path / "mvtec").iterdir() if p.name.startswith(".")] == []


def test_a_checksum_mismatch_is_refused_and_removed(server, tmp_path):
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(
        FetchError, match=rf"checksum mismatch for {server.url}: expected sha256 0+, got [0-9a-f]{{64}}"
    ):
        download_file(server.url, dest, sha256="0" * 64, retry=NO_WAIT)
    assert not dest.exists() and not dest.with_name("a.tar.gz.part").exists()


def test_an_interrupted_download_resumes_with_a_range_request(server, mvtec_archive, tmp_path):
    dest = tmp_path / "a.tar.gz"
    half = len(mvtec_archive) // 2
    server.cut_after = half
    with pytest.raises(FetchError, match=rf"after 1 attempts.*{half} bytes kept in .*a.tar.gz.part, run again"):
        download_file(server.url, dest, sha256=None, retry=RetryPolicy(attempts=1))
    assert dest.with_name("a.tar.gz.part").stat().st_size == half
    download_file(server.url, dest, sha256=hashlib.sha256(mvtec_archive).hexdigest(), retry=NO_WAIT)
    assert server.ranges == [None, f"bytes={half}-"]
    assert dest.read_bytes() == mvtec_archive


def test_a_dropped_connection_is_retried_within_one_call(server, mvtec_archive, tmp_path):
    server.cut_after = 100
    path = download_file(
        server.url, tmp_path / "a.tar.gz", sha256=hashlib.sha256(mvtec_archive).hexdigest(), retry=NO_WAIT
    )
    assert path.read_bytes() == mvtec_archive and server.ranges == [None, "bytes=100-"]


def test_a_server_without_range_support_restarts_from_zero(server, mvtec_archive, tmp_path):
    dest = tmp_path / "a.tar.gz"
    dest.with_name("a.tar.gz.part").write_bytes(b"stale partial bytes")
    server.honour_range = False
    download_file(server.url, dest, sha256=hashlib.sha256(mvtec_archive).hexdigest(), retry=NO_WAIT)
    assert dest.read_bytes() == mvtec_archive


def test_a_complete_partial_file_is_finished_without_refetching(server, mvtec_archive, tmp_path):
    dest = tmp_path / "a.tar.gz"
    dest.with_name("a.tar.gz.part").write_bytes(mvtec_archive)
    download_file(server.url, dest, sha256=hashlib.sha256(mvtec_archive).hexdigest(), retry=NO_WAIT)
    assert server.ranges == [f"bytes={len(mvtec_archive)}-"] and dest.read_bytes() == mvtec_archive


@pytest.mark.parametrize(
    ("members", "links", "match"),
    [
        ({"widget/ok.txt": b"ok", "../evil.txt": b"x"}, None, r"'\.\./evil\.txt' climbs out"),
        ({"widget/ok.txt": b"ok", "widget/../../evil.txt": b"x"}, None, "climbs out"),
        ({"widget/ok.txt": b"ok", "/tmp/evil-absolute.txt": b"x"}, None, "has an absolute path"),
        ({"widget/ok.txt": b"ok"}, {"widget/passwd": "/etc/passwd"}, "points outside"),
        ({"widget/ok.txt": b"ok"}, {"widget/up": "../../outside"}, "points outside"),
    ],
)
def test_extraction_refuses_unsafe_members(tmp_path, members, links, match):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar(members, links))
    dest = tmp_path / "out" / "mvtec"
    with pytest.raises(FetchError, match=match):
        safe_extract(archive, dest)
    assert list(dest.iterdir()) == []  # nothing reached the destination, not even the safe member
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil-absolute.txt").exists()


def test_extraction_allows_links_that_stay_inside(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_tar({"widget/a.txt": b"a"}, {"widget/b.txt": "a.txt"}))
    assert safe_extract(archive, tmp_path / "out") == ["widget"]
    assert (tmp_path / "out" / "widget" / "b.txt").read_bytes() == b"a"


def test_cli_fetch_mvtec(server, mvtec_archive, tmp_path, capsys):
    import argparse

    from cutpaste.storage.cli import add_storage_commands

    parser = argparse.ArgumentParser()
    add_storage_commands(parser.add_subparsers().add_parser("data").add_subparsers())
    sha = hashlib.sha256(mvtec_archive).hexdigest()
    args = parser.parse_args(["data", "fetch-mvtec", str(tmp_path / "d"), "--url", server.url, "--sha256", sha])
    assert args.func(args) == 0
    assert "extracted into" in capsys.readouterr().out and (tmp_path / "d" / "widget" / "train").is_dir()
