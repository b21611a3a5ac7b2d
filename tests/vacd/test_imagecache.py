"""Remote root images over real HTTP on loopback: cached, revalidated, never half-written (§1.12)."""

from __future__ import annotations

import email.utils
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from vacd.imagecache import ImageCache, ImageFetchError
from vacd.paths import Paths

IMAGE_TIME = 1_700_000_000


class ImageServer:
    def __init__(self) -> None:
        self.body = b"\x00qcow2 image bytes" * 1000
        self.last_modified: Optional[str] = email.utils.formatdate(IMAGE_TIME, usegmt=True)
        self.requests: list[Optional[str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                since = self.headers.get("If-Modified-Since")
                server.requests.append(since)
                if since and server.last_modified and email.utils.parsedate_to_datetime(since) >= \
                        email.utils.parsedate_to_datetime(server.last_modified):
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                if server.last_modified:
                    self.send_header("Last-Modified", server.last_modified)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args: Any) -> None:
                return None

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/images/root.qcow2"


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    try:
        yield server
    finally:
        server.http.shutdown()
        server.http.server_close()


def test_image_is_downloaded_with_the_servers_time_and_vacs_name(tmp_path: Path, image_server: ImageServer) -> None:
    cache = ImageCache(Paths(tmp_path))
    path = cache.fetch(image_server.url)
    assert path.read_bytes() == image_server.body
    assert path.name == "http%3A%2F%2F127.0.0.1%3A" + str(image_server.http.server_address[1]) + "%2Fimages%2Froot.qcow2"
    assert int(path.stat().st_mtime) == IMAGE_TIME
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]  # no temp file left


def test_unchanged_image_is_revalidated_not_downloaded_again(tmp_path: Path, image_server: ImageServer) -> None:
    cache = ImageCache(Paths(tmp_path))
    cache.fetch(image_server.url)
    image_server.body = b"would be a different image"
    path = cache.fetch(image_server.url)
    assert image_server.requests[1] is not None  # If-Modified-Since was sent
    assert path.read_bytes().startswith(b"\x00qcow2")


def test_newer_image_on_the_server_replaces_the_cached_one(tmp_path: Path, image_server: ImageServer) -> None:
    cache = ImageCache(Paths(tmp_path))
    cache.fetch(image_server.url)
    image_server.body = b"newer image"
    image_server.last_modified = email.utils.formatdate(IMAGE_TIME + 3600, usegmt=True)
    assert cache.fetch(image_server.url).read_bytes() == b"newer image"


def test_answer_without_last_modified_is_refused(tmp_path: Path, image_server: ImageServer) -> None:
    image_server.last_modified = None
    with pytest.raises(ImageFetchError, match="Last-Modified"):
        ImageCache(Paths(tmp_path)).fetch(image_server.url)


def test_unreachable_server_uses_the_cached_image_or_fails_clearly(tmp_path: Path, image_server: ImageServer) -> None:
    cache = ImageCache(Paths(tmp_path))
    url = image_server.url
    cache.fetch(url)
    image_server.http.shutdown()
    image_server.http.server_close()
    assert cache.fetch(url).read_bytes().startswith(b"\x00qcow2")
    with pytest.raises(ImageFetchError, match="never.qcow2"):
        cache.fetch(url.replace("root.qcow2", "never.qcow2"))
