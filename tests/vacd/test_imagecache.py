"""Remote root images over real HTTP on loopback: cached, revalidated, never half-written (§1.12)."""

from __future__ import annotations

import email.utils
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from vacd.fetch import IMAGE_LIMITS, FetchError, FetchLimits
from vacd.imagecache import ImageCache, remote_image_urls
from tests.vacd.loopback_http import Hold, LoopbackServer, ScriptedRequest, answer
from vacd.config import Machinetype
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
    with pytest.raises(FetchError, match="Last-Modified"):
        ImageCache(Paths(tmp_path)).fetch(image_server.url)


def test_unreachable_server_uses_the_cached_image_or_fails_clearly(tmp_path: Path, image_server: ImageServer) -> None:
    cache = ImageCache(Paths(tmp_path))
    url = image_server.url
    cache.fetch(url)
    image_server.http.shutdown()
    image_server.http.server_close()
    assert cache.fetch(url).read_bytes().startswith(b"\x00qcow2")
    with pytest.raises(FetchError, match="never.qcow2"):
        cache.fetch(url.replace("root.qcow2", "never.qcow2"))


def test_an_answer_without_last_modified_keeps_the_cached_image(tmp_path: Path, image_server: ImageServer) -> None:
    cache = ImageCache(Paths(tmp_path))
    url = image_server.url
    cache.fetch(url)
    image_server.body = b"newer"
    image_server.last_modified = None  # a 200 the cache must refuse
    assert cache.fetch(url).read_bytes().startswith(b"\x00qcow2")


def image_answer(request: ScriptedRequest) -> None:
    answer(request, b"image " + request.path.encode(), headers={"Last-Modified": email.utils.formatdate(IMAGE_TIME,
                                                                                                     usegmt=True)})


def test_image_fetch_while_two_slow_downloads_hold_the_image_pool_takes_no_action_worker(tmp_path: Path) -> None:
    hold = Hold(image_answer)
    server = LoopbackServer(hold)
    images = ImageCache(Paths(tmp_path), workers=2)
    action_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-act")
    try:
        slow = [images.prefetch([server.url(f"/slow-{number}.img")]) for number in (1, 2)]
        assert hold.wait_for_arrivals(2)
        created: Future[dict[str, Path]] = Future()
        # The factory's wiring: the creation goes to the action pool only once its images are here.
        third = images.prefetch([server.url("/third.img")])
        third.add_done_callback(lambda done: action_pool.submit(lambda: created.set_result(done.result())))
        destroyed = action_pool.submit(lambda: "hard destroy done")
        assert destroyed.result(timeout=10) == "hard destroy done"
        assert hold.held == 2 and not third.done()  # the destroy ran while both downloads were held
        assert "/third.img" not in server.paths  # queued behind them on the image pool, not on the action pool
        hold.release()
        paths = created.result(timeout=10)
        assert paths[server.url("/third.img")].read_bytes() == b"image /third.img"
        assert [download.result(timeout=10)[server.url(f"/slow-{number}.img")].read_bytes()
                for number, download in zip((1, 2), slow)] == [b"image /slow-1.img", b"image /slow-2.img"]
    finally:
        hold.release()
        action_pool.shutdown(wait=True)
        images.close()
        server.stop()


def test_two_creations_needing_one_image_share_one_download(tmp_path: Path) -> None:
    hold = Hold(image_answer)
    server = LoopbackServer(hold)
    images = ImageCache(Paths(tmp_path))
    try:
        first = images.prefetch([server.url("/root.img")])
        assert hold.wait_for_arrivals(1)
        second = images.prefetch([server.url("/root.img")])
        hold.release()
        assert first.result(timeout=10) == second.result(timeout=10)
        assert server.paths == ["/root.img"]
    finally:
        hold.release()
        images.close()
        server.stop()


def test_close_cuts_a_download_in_progress_and_leaves_no_partial_image(tmp_path: Path) -> None:
    hold = Hold(image_answer)
    server = LoopbackServer(hold)
    images = ImageCache(Paths(tmp_path))
    try:
        download = images.prefetch([server.url("/root.img")])
        assert hold.wait_for_arrivals(1)
        images.close()
        with pytest.raises(FetchError, match="vacd is stopping"):
            download.result(timeout=10)
        assert not Paths(tmp_path).imagecache_dir.exists() or list(Paths(tmp_path).imagecache_dir.iterdir()) == []
    finally:
        hold.release()
        server.stop()


def test_remote_image_urls_are_the_files_a_creation_uses(tmp_path: Path) -> None:
    machinetype = Machinetype(name="remote", machinegroup="remote", machinetype_path=tmp_path,
                              root_image="https://images.example.org/root.img")
    assert remote_image_urls(machinetype) == ("https://images.example.org/root.img",)
    kernel_boot = replace(machinetype, root_kernel="https://images.example.org/vmlinuz", root_initrd="initrd.img")
    assert remote_image_urls(kernel_boot) == ("https://images.example.org/vmlinuz",)  # root_image is not used then
    assert remote_image_urls(replace(machinetype, root_image="/var/lib/vac/root.img")) == ()


def test_image_downloads_have_a_30_minute_total_deadline_and_a_20_gib_cap(tmp_path: Path) -> None:
    # Vac 03 had only a 120 s per-read timeout (§1.12): a dripping server held a creation forever.
    assert IMAGE_LIMITS == FetchLimits(deadline_seconds=30 * 60.0, max_bytes=20 * 1024**3)
    assert ImageCache(Paths(tmp_path)).limits == IMAGE_LIMITS


def test_image_larger_than_the_cap_is_cut_and_nothing_is_cached(tmp_path: Path, image_server: ImageServer) -> None:
    image_server.body = b"\0" * 100_000
    images = ImageCache(Paths(tmp_path), limits=FetchLimits(deadline_seconds=10.0, max_bytes=50_000))
    try:
        with pytest.raises(FetchError, match="larger than the cap of 50000 bytes"):
            images.fetch(image_server.url)
    finally:
        images.close()
    assert not Paths(tmp_path).imagecache_dir.exists() or list(Paths(tmp_path).imagecache_dir.iterdir()) == []


def drip_image(request: ScriptedRequest) -> None:
    """Promises a 10,000-byte image and sends a byte every 50 ms until the client goes."""
    request.send_response(200)
    request.send_header("Content-Length", "10000")
    request.send_header("Last-Modified", email.utils.formatdate(IMAGE_TIME, usegmt=True))
    request.end_headers()
    while not request.stopping.wait(0.05):
        request.wfile.write(b"x")
        request.wfile.flush()


def test_image_dripping_past_the_total_deadline_is_cut_and_nothing_is_cached(tmp_path: Path) -> None:
    server = LoopbackServer(drip_image)
    images = ImageCache(Paths(tmp_path), limits=FetchLimits(deadline_seconds=0.5, max_bytes=1_000_000))
    try:
        with pytest.raises(FetchError, match=r"deadline of 0.5 s exceeded"):
            images.fetch(server.url("/root.img"))
    finally:
        images.close()
        server.stop()
    assert not Paths(tmp_path).imagecache_dir.exists() or list(Paths(tmp_path).imagecache_dir.iterdir()) == []


def test_a_pipes_image_is_not_downloaded_from_a_loopback_address_and_the_sites_is(
    tmp_path: Path, image_server: ImageServer,
) -> None:
    images = ImageCache(Paths(tmp_path))
    try:
        with pytest.raises(FetchError, match="not a global address"):
            images.prefetch([image_server.url], public_only=True).result(timeout=10)
        assert not images.path_for(image_server.url).exists() and image_server.requests == []
        assert images.prefetch([image_server.url]).result(timeout=10)[image_server.url].exists()
    finally:
        images.close()
