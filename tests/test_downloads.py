"""Resumable, verified downloads against a local HTTP server (no internet needed)."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sd_webui_sam import downloads
from sd_webui_sam.errors import DownloadError

PAYLOAD = os.urandom(3 * downloads.CHUNK_BYTES + 12345)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves PAYLOAD at /model.pth with Range support; can cut the connection after N bytes."""

    def __init__(self):
        self.requests = []  # (path, Range header)
        self.cut_after = None  # bytes of body to send before dropping the connection
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                if self.path != "/model.pth":
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match and server.honour_range:
                    start = int(match.group(1))
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    instance = _Server()
    yield instance
    instance.close()


def _download(server, dest, **kwargs):
    kwargs.setdefault("size", len(PAYLOAD))
    kwargs.setdefault("sha256", PAYLOAD_SHA)
    kwargs.setdefault("console_progress", False)
    return downloads.download_file(server.url, dest, "model.pth", **kwargs)


def test_full_download_reports_progress_and_verifies(server, tmp_path):
    seen = []
    path = _download(server, tmp_path / "models", progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "models" / "model.pth"
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "models" / "model.pth.part").exists()
    assert seen[0] == (0, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    server.cut_after = downloads.CHUNK_BYTES + 777
    with pytest.raises(DownloadError) as raised:
        _download(server, tmp_path)
    assert "resumes next time" in str(raised.value)
    part = tmp_path / "model.pth.part"
    assert part.exists() and not (tmp_path / "model.pth").exists()
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD)

    server.cut_after = None
    path = _download(server, tmp_path)
    assert server.requests[-1] == ("/model.pth", f"bytes={kept}-")
    assert path.read_bytes() == PAYLOAD
    assert not part.exists()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    (tmp_path / "model.pth.part").write_bytes(PAYLOAD[:1000])
    server.honour_range = False
    assert _download(server, tmp_path, console_progress=True).read_bytes() == PAYLOAD  # the console bar restarts too


def test_complete_part_file_is_verified_and_finished(server, tmp_path):
    (tmp_path / "model.pth.part").write_bytes(PAYLOAD)
    assert _download(server, tmp_path).read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    with pytest.raises(DownloadError, match="failed verification"):
        _download(server, tmp_path, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_from_server_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="does not serve the expected file"):
        _download(server, tmp_path, size=len(PAYLOAD) + 1)
    assert not (tmp_path / "model.pth").exists()


def test_size_only_verification_when_no_hash_is_known(server, tmp_path):
    assert _download(server, tmp_path, sha256=None).read_bytes() == PAYLOAD


def test_existing_identical_file_is_kept_without_network(server, tmp_path):
    (tmp_path / "model.pth").write_bytes(PAYLOAD)
    assert _download(server, tmp_path) == tmp_path / "model.pth"
    assert server.requests == []


def test_existing_different_file_is_never_overwritten(server, tmp_path):
    mine = b"my own fine-tuned model" * 100
    (tmp_path / "model.pth").write_bytes(mine)
    with pytest.raises(DownloadError, match="left untouched"):
        _download(server, tmp_path)
    assert (tmp_path / "model.pth").read_bytes() == mine
    assert server.requests == []


def test_unreachable_host_fails_fast_with_instructions(tmp_path):
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/sam_vit_b_01ec64.pth"
    started = time.monotonic()
    with pytest.raises(DownloadError) as raised:
        downloads.download_file(url, tmp_path / "models" / "sam", "sam_vit_b_01ec64.pth", size=10, console_progress=False)
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert "sam_vit_b_01ec64.pth" in message and url in message and str(tmp_path / "models" / "sam") in message
    assert not (tmp_path / "models" / "sam" / "sam_vit_b_01ec64.pth").exists()


def test_silent_server_times_out(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection in the backlog, never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/model.pth"
        started = time.monotonic()
        with pytest.raises(DownloadError, match="Could not download model.pth"):
            downloads.download_file(url, tmp_path, "model.pth", connect_timeout=0.5, read_timeout=0.5, console_progress=False)
        assert time.monotonic() - started < 5
    finally:
        listener.close()


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        downloads.download_file(server.url.replace("model.pth", "missing.pth"), tmp_path, "missing.pth", console_progress=False)


def test_catalogue_entries_are_complete_and_unique():
    names = [entry.file_name for entry in downloads.CATALOGUE]
    assert len(names) == len(set(names))
    assert {"sam_vit_h_4b8939.pth", "sam_vit_l_0b3195.pth", "sam_vit_b_01ec64.pth", "sam_hq_vit_h.pth",
            "sam_hq_vit_l.pth", "sam_hq_vit_b.pth", "sam_hq_vit_tiny.pth", "mobile_sam.pt"} <= set(names)
    sam2_files = {f"sam2{version}_hiera_{size}.pt" for version in ("", ".1") for size in ("tiny", "small", "base_plus", "large")}
    assert sam2_files <= set(names)
    # every SAM 2 file is verified by its sha256, not only its size
    assert all(entry.sha256 and entry.family == "sam2" for entry in downloads.CATALOGUE if entry.file_name in sam2_files)
    for entry in downloads.CATALOGUE:
        assert entry.url.startswith("https://") and entry.url.endswith("/" + entry.file_name)
        assert entry.size > 10_000_000
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    with pytest.raises(DownloadError, match="Known files"):
        downloads.catalogue_entry("sam3.pt")


def test_download_model_uses_the_catalogue(server, tmp_path, monkeypatch):
    entry = downloads.CatalogueEntry("model.pth", server.url, len(PAYLOAD), PAYLOAD_SHA, "Test", "sam", "custom")
    monkeypatch.setattr(downloads, "CATALOGUE", (entry,))
    assert downloads.download_model("model.pth", tmp_path, console_progress=False).read_bytes() == PAYLOAD


@pytest.mark.parametrize("name", ["../evil.pth", "a/b.pth", "", ".."])
def test_file_names_with_paths_are_refused(tmp_path, name):
    with pytest.raises(DownloadError):
        downloads.download_file("http://127.0.0.1:1/x", tmp_path, name, console_progress=False)
