"""A real HTTP server on 127.0.0.1 (port 0) whose answers a test scripts, for the fetch tests.

`respond(request)` is called on the server's thread for each GET; it writes whatever it likes
to `request.wfile` (slowly, partially, or not at all). `Hold` makes a respond function wait
until the test releases it, so a test can observe a client while the server holds its request.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional



class ScriptedRequest(BaseHTTPRequestHandler):
    """A request handler that hands each GET to the server's respond function."""

    protocol_version = "HTTP/1.1"
    owner: "LoopbackServer"

    @property
    def stopping(self) -> threading.Event:
        """Set when the test stops the server: a respond function that drips must end then."""
        return self.owner.stopping

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        self.owner.paths.append(self.path)
        self.owner.headers.append(dict(self.headers))
        try:
            self.owner.respond(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client cut us off, which is what several tests want
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        return None


Respond = Callable[[ScriptedRequest], None]


class LoopbackServer:
    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.stopping = threading.Event()
        handler = type("Handler", (ScriptedRequest,), {"owner": self})
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.http.daemon_threads = True
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), name="loopback-http", daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}{path}"

    def stop(self) -> None:
        self.stopping.set()
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(timeout=10)


def answer(request: ScriptedRequest, body: bytes, status: int = 200,
           headers: Optional[dict[str, str]] = None) -> None:
    request.send_response(status)
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


class Hold:
    """Wraps a respond function: each request is held (unanswered) until `release()`."""

    def __init__(self, then: Respond) -> None:
        self.then = then
        self.arrived = threading.Semaphore(0)
        self.released = threading.Event()
        self.held = 0
        self._lock = threading.Lock()

    def __call__(self, request: ScriptedRequest) -> None:
        with self._lock:
            self.held += 1
        self.arrived.release()
        self.released.wait(timeout=60)
        with self._lock:
            self.held -= 1
        self.then(request)

    def wait_for_arrivals(self, count: int, timeout_seconds: float = 10.0) -> bool:
        return all(self.arrived.acquire(timeout=timeout_seconds) for _ in range(count))

    def release(self) -> None:
        self.released.set()
