"""Malformed HTTP requests over real TCP loopback to the real guest API server in its own process.

Issue 11: "10,000 malformed HTTP requests: 0 crashes, RSS flat". The server is
vacd.guestapi.server.GuestApiServer, unchanged, in a child process of its own
(`python -m tests.hostile_http serve PREFIX`) so that its memory and descriptors are
measured alone: metadata on 127.0.0.254, MJF and $JOBOUTPUTS on 127.0.0.253, ports the
kernel chooses, 127.0.0.N standing for slot N's guest (tests/vacd/guestapi/conftest.py), with
machines running in slots 2 to 9 of a real Store under PREFIX.

The corpus (`hostile_requests`) is seeded: bad request lines, huge heads, folded headers,
bad or repeated Content-Length, Transfer-Encoding with or without Content-Length
(smuggling), NULs and control characters, non-UTF-8, pipelined garbage, heads sent a byte
at a time, early closes and resets, PUTs whose body is shorter or longer than they say,
hostile upload names, mutations of valid requests, and random bytes; from slots with a
machine, from a slot without one and from an address that is no slot.

The runner sends each case on its own connection, WORKERS at a time, and reads what comes
back until the server closes or a short silence. It records every status line: a 500 would
be a handler that raised. After a warm-up and at the end, once the server has closed what
it should, it reads the child's RSS and /proc/PID/fd.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import psutil

from vacd.recordformats import SHUTDOWN_RECEIPT_FILE

REPOSITORY = Path(__file__).resolve().parents[1]
METADATA_HOST = "127.0.0.254"
MJF_HOST = "127.0.0.253"
SLOTS_WITH_MACHINES = range(2, 10)
SOURCES = tuple(f"127.0.0.{ordinal}" for ordinal in SLOTS_WITH_MACHINES) + ("127.0.0.1", "127.0.0.200")
WORKERS = 16
# How long a case waits for more bytes once the server has gone quiet.
QUIET_SECONDS = 0.25
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
VALID_GETS = (b"/latest/meta-data/instance-id", b"/latest/user-data", b"/openstack/latest/meta_data.json",
              b"/latest/meta-data/", b"/openstack/latest/user_data")
VALID_MJF_GETS = (b"/jobfeatures/job_id", b"/machinefeatures/hs06", b"/jobfeatures/", b"/machinefeatures/")


@dataclass(frozen=True)
class HttpCase:
    """One connection's worth of hostile bytes: chunks sent with `pause` between them, then `ending`."""

    part: str  # "metadata" or "mjf"
    source: str
    chunks: tuple[bytes, ...]
    pause: float = 0.0
    # "read": send, then read until the server closes or goes quiet; "half": shut down our
    # side after sending, then read; "close": close at once; "reset": close with an RST.
    ending: str = "read"


# The corpus
def _valid_request(rng: random.Random) -> tuple[str, bytes]:
    if rng.random() < 0.6:
        part, target = "metadata", rng.choice(VALID_GETS)
    else:
        part, target = "mjf", rng.choice(VALID_MJF_GETS)
    version = rng.choice((b"HTTP/1.0", b"HTTP/1.1"))
    return part, b"GET " + target + b" " + version + b"\r\nHost: 169.254.169.254\r\nUser-Agent: fuzz\r\n\r\n"


def _put(name: bytes, body: bytes, length: Optional[bytes] = None, extra: bytes = b"") -> bytes:
    declared = str(len(body)).encode() if length is None else length
    return (b"PUT /joboutputs/" + name + b" HTTP/1.1\r\nHost: 169.254.169.253\r\nContent-Length: " + declared
            + b"\r\n" + extra + b"\r\n" + body)


def _bad_request_line(rng: random.Random) -> bytes:
    return rng.choice((
        b"GET\r\n\r\n", b"GET /\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n", b"GET / HTTP/1.1 extra\r\n\r\n",
        b"get / HTTP/1.1\r\n\r\n", b"G\xc3\x89T / HTTP/1.1\r\n\r\n", b" GET / HTTP/1.1\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\r\n\r\n", b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"GET http://169.254.169.254/latest/user-data HTTP/1.1\r\n\r\n", b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n", b"TRACE / HTTP/1.1\r\n\r\n",
        b"DELETE /joboutputs/x HTTP/1.1\r\n\r\n",
        b"POST /latest/user-data HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"HEAD /latest/user-data HTTP/1.0\r\n\r\n",
        # Distinct long targets: each must cost a parse, never memory kept.
        b"GET /%d" % rng.getrandbits(64) + b"a" * rng.choice((500, 8000, 9000, 70000)) + b" HTTP/1.1\r\n\r\n",
        b"GET /../../../etc/passwd HTTP/1.1\r\n\r\n", b"GET /%2e%2e/%2e%2e/etc/shadow HTTP/1.1\r\n\r\n",
        b"GET /latest/meta-data/../../../../var/lib/vac HTTP/1.0\r\n\r\n", b"GET /latest//user-data HTTP/1.0\r\n\r\n",
        b"GET /%00 HTTP/1.1\r\n\r\n", b"GET /%ff%fe HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1000000000000\r\n\r\n",
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\n\n", b"GET / HTTP/1.1\n\r\n",
    ))


def _hostile_headers(rng: random.Random) -> bytes:
    start = b"GET /latest/user-data HTTP/1.1\r\n"
    return start + rng.choice((
        b"X: " + b"v" * rng.choice((8200, 20000)) + b"\r\n\r\n",
        b"".join(b"X-%d: v\r\n" % number for number in range(rng.choice((65, 100, 1000)))) + b"\r\n",
        b"X-Folded: a\r\n b\r\n\r\n", b"X-Folded: a\r\n\tb\r\n\r\n", b" leading: space\r\n\r\n",
        b"No-Colon\r\n\r\n", b": empty-name\r\n\r\n", b"Na me: v\r\n\r\n", b"X: a\x00b\r\n\r\n", b"X: \x7f\r\n\r\n",
        b"X: \xff\xfe\xfd\r\n\r\n", b"Host: a\r\nHost: b\r\n\r\n", b"Connection: close, keep-alive, upgrade\r\n\r\n",
        b"Upgrade: h2c\r\nConnection: Upgrade\r\n\r\n", b"Expect: 100-continue\r\n\r\n", b"X: v\r\n" * 64 + b"\r\n",
        b"X: " + b"\r\n" * 10,
    ))


def _bad_lengths(rng: random.Random) -> bytes:
    length = rng.choice((b"-1", b"1e3", b"0x10", b" 5", b"5 ", b"5, 5", b"+5", b"\xef\xbc\x95", b"99999999999999999999",
                         b"", b"5\r\nContent-Length: 6", b"5\r\nContent-Length: 5", b"18446744073709551616",
                         b"000000000000000000005", b"NaN"))
    method = rng.choice((b"PUT /joboutputs/lengths", b"GET /latest/user-data", b"POST /x"))
    return method + b" HTTP/1.1\r\nContent-Length: " + length + b"\r\n\r\nhello"


def _smuggling(rng: random.Random) -> bytes:
    hidden = b"GET /latest/user-data HTTP/1.1\r\nHost: x\r\n\r\n"
    te = rng.choice((b"chunked", b" chunked", b"chunked, identity", b"identity", b"xchunked", b"CHUNKED",
                     b"chunked\x00"))
    put = b"PUT /joboutputs/smuggle HTTP/1.1\r\n"
    return rng.choice((
        put + b"Content-Length: 4\r\nTransfer-Encoding: " + te + b"\r\n\r\n0\r\n\r\n" + hidden,
        put + b"Transfer-Encoding: " + te + b"\r\nContent-Length: 50\r\n\r\n0\r\n\r\n" + hidden,
        b"PUT /joboutputs/smuggle HTTP/1.1\r\nTransfer-Encoding: " + te + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /latest/user-data HTTP/1.1\r\nContent-Length: " + str(len(hidden)).encode() + b"\r\n\r\n" + hidden,
        put + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        b"PUT /joboutputs/smuggle HTTP/1.0\r\nTransfer-Encoding: " + te + b"\r\n\r\nffffffffffffffff\r\n",
    ))


def _hostile_put(rng: random.Random) -> bytes:
    name = rng.choice((b"ok-%d.log" % rng.randrange(50), b"../../../etc/cron.d/x", b"%2e%2e%2fescape", b"a/b", b".",
                       b"..", b"", b"x" * 300, b"\xff\xfename", b"name%00.txt", b"shutdown_message",
                       b"..%2f..%2fvacd.pid", b"%2f" * 10, b"caf\xc3\xa9.log", b".hidden", b"~", b"a\\b"))
    body = rng.randbytes(rng.choice((0, 1, 100, 5000)))
    lie = rng.random()
    if lie < 0.3:
        return _put(name, body, length=str(len(body) + rng.randint(1, 1000)).encode())  # then early close
    if lie < 0.5 and body:
        return _put(name, body + b"GARBAGE\r\n\r\n" + rng.randbytes(50), length=str(len(body)).encode())
    if lie < 0.6:
        return _put(name, body, extra=b"Expect: 100-continue\r\n")
    return _put(name, body)


def _pipelined(rng: random.Random) -> bytes:
    requests = [_valid_request(rng)[1] for _ in range(rng.choice((2, 10, 50, 300)))]
    if rng.random() < 0.7:
        requests.insert(rng.randrange(len(requests)), rng.randbytes(rng.choice((1, 100, 5000))))
    return b"".join(requests)


def _mutated(rng: random.Random) -> tuple[str, bytes]:
    part, request = _valid_request(rng)
    buffer = bytearray(request)
    for _ in range(rng.randint(1, 6)):
        position = rng.randrange(len(buffer))
        action = rng.random()
        if action < 0.4:
            buffer[position] ^= 1 << rng.randrange(8)
        elif action < 0.7:
            del buffer[position:position + rng.randint(1, 5)]
        else:
            buffer[position:position] = rng.choice((b"\r", b"\n", b"\x00", b":", b" ", b"\xff", b"%", b"/.."))
    return part, bytes(buffer)


def hostile_requests(seed: int, count: int) -> Iterator[HttpCase]:
    """`count` hostile connections; the same seed gives the same cases."""
    rng = random.Random(seed)
    for _ in range(count):
        source = rng.choice(SOURCES)
        part = rng.choice(("metadata", "mjf"))
        ending = rng.choice(("read", "read", "read", "half", "close", "reset"))
        pause = 0.0
        choice = rng.random()
        if choice < 0.10:
            payload = _bad_request_line(rng)
        elif choice < 0.22:
            payload = _hostile_headers(rng)
        elif choice < 0.32:
            payload = _bad_lengths(rng)
            part = "mjf"
        elif choice < 0.42:
            payload = _smuggling(rng)
            part = "mjf"
        elif choice < 0.54:
            payload = _hostile_put(rng)
            part = "mjf"
        elif choice < 0.62:
            part, payload = "metadata", _pipelined(rng)
        elif choice < 0.76:
            part, payload = _mutated(rng)
        elif choice < 0.84:
            payload = rng.randbytes(rng.choice((1, 10, 1000, 9000, 70000)))
        elif choice < 0.90:
            # A head a few bytes at a time, often never finished (slowloris).
            part, payload = _valid_request(rng)
            if rng.random() < 0.6:
                payload = payload[:rng.randrange(1, len(payload) - 2)]
            pieces = [payload[index:index + 3] for index in range(0, len(payload), 3)]
            yield HttpCase(part, source, tuple(pieces), pause=0.005, ending=rng.choice(("read", "close")))
            continue
        elif choice < 0.95:
            # Cut short: part of a head or a body, then the client goes.
            part, payload = _valid_request(rng) if rng.random() < 0.5 else ("mjf", _put(b"cut.log", b"x" * 1000))
            payload = payload[:rng.randrange(1, len(payload))]
            ending = rng.choice(("close", "reset", "half"))
        else:
            # Valid: the fuzz includes what must be answered.
            part, payload = _valid_request(rng)
        yield HttpCase(part, source, (payload,), pause, ending)


# The server under test, in its own process
def serve(prefix: Path, head_timeout: float) -> None:
    """Run GuestApiServer over a site with machines in SLOTS_WITH_MACHINES until SIGTERM."""
    from tests.vacd.guestapi.conftest import loopback_source_to_ordinal, make_site
    from vacd.guestapi.connection import ConnectionLimits
    from vacd.guestapi.server import GuestApiServer

    site = make_site(prefix)
    for ordinal in SLOTS_WITH_MACHINES:
        site.create_machine(ordinal)

    async def main() -> None:
        server = GuestApiServer(site.paths, site.store, lambda: site.settings, metadata_addresses=(METADATA_HOST,),
                                mjf_addresses=(MJF_HOST,), port=0, source_to_ordinal=loopback_source_to_ordinal,
                                # The per-slot request bucket opened wide: a flood of fuzz from eight
                                # slots would otherwise draw held 429s (vacd.guestapi.slotlimits), and
                                # the parsers and caches behind them would go untried. The rate limit
                                # has its own tests (tests/vacd/guestapi/test_server_fairness.py).
                                limits=ConnectionLimits(head_timeout_seconds=head_timeout,
                                                        requests_per_second_per_slot=1e12,
                                                        request_burst_per_slot=10**12))
        await server.start()
        print(json.dumps({listening.part: listening.port for listening in server.listening}), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop()
        print(json.dumps({"counters": {f"{part} {kind} {status}": count
                                       for (part, kind, status), count in server.counters.items()}}), flush=True)

    asyncio.run(main())


class GuestApiProcess:
    """`python -m tests.hostile_http serve PREFIX` and the ports it listens on."""

    def __init__(self, prefix: Path, head_timeout: float) -> None:
        self.prefix = prefix
        self.log_path = prefix.parent / f"{prefix.name}-server.log"
        prefix.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.hostile_http", "serve", str(prefix), str(head_timeout)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file, cwd=REPOSITORY,
                env=dict(os.environ, PYTHONPATH=str(REPOSITORY)))
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            raise AssertionError(f"the guest API server did not start:\n{self.log_tail()}")
        self.ports: dict[str, int] = json.loads(line)
        self.ps = psutil.Process(self.process.pid)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def measure(self) -> tuple[int, int]:
        """(RSS bytes, open descriptors) of the server process."""
        return self.ps.memory_info().rss, len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> Counter[int]:
        """Stop it; return the responses it counted on the way out, by status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            output, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        by_status: Counter[int] = Counter()
        for line in output.decode(errors="replace").splitlines():
            if line.startswith('{"counters"'):
                for key, count in json.loads(line)["counters"].items():
                    by_status[int(key.rsplit(" ", 1)[1])] += count
        return by_status


# Running it
@dataclass
class HttpFuzzResult:
    requests: int = 0
    request_bytes: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    # Cases the server neither answered nor closed within the case's patience (it may hold a
    # slow head until its head timeout; the count is reported, not a failure by itself).
    unfinished: int = 0
    rss_after_warmup: int = 0
    rss_after: int = 0
    fds_at_start: int = 0
    fds_after_warmup: int = 0
    fds_after: int = 0
    seconds: float = 0.0

    @property
    def rss_growth(self) -> int:
        return self.rss_after - self.rss_after_warmup

    def summary(self) -> str:
        return (f"requests={self.requests} bytes={self.request_bytes} statuses={dict(sorted(self.statuses.items()))} "
                f"unfinished={self.unfinished} rss_after_warmup={self.rss_after_warmup} rss_after={self.rss_after} "
                f"rss_growth={self.rss_growth} fds_at_start={self.fds_at_start} "
                f"fds_after_warmup={self.fds_after_warmup} fds_after={self.fds_after} seconds={self.seconds:.1f}")


def _host(part: str) -> str:
    return METADATA_HOST if part == "metadata" else MJF_HOST


def send_case(case: HttpCase, ports: dict[str, int], patience: float = 3.0) -> tuple[list[int], bool]:
    """Play one case; return the statuses answered and whether the connection ended in `patience`."""
    try:
        sock = socket.create_connection((_host(case.part), ports[case.part]), timeout=5,
                                        source_address=(case.source, 0))
    except OSError:
        return [], True  # refused at the door (connection cap): nothing to read
    received = bytearray()
    ended = True
    try:
        try:
            for chunk in case.chunks:
                sock.sendall(chunk)
                if case.pause:
                    time.sleep(case.pause)
        except OSError:
            pass  # the server closed on us mid-send: what it answered is still read below
        if case.ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return [], True
        if case.ending == "close":
            return [], True
        if case.ending == "half":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        sock.settimeout(QUIET_SECONDS)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                # Quiet: a kept-alive connection waiting for more, or a slow head still open.
                ended = False
                break
            except OSError:
                break
            if not data:
                break
            received += data
    finally:
        sock.close()
    return [int(status) for status in STATUS_LINE.findall(bytes(received))], ended


def wait_for_fds(measure: Callable[[], tuple[int, int]], wanted: int, seconds: float) -> int:
    """The server's descriptor count once it is back to `wanted`, or what it is after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        fds = measure()[1]
        if fds <= wanted or time.monotonic() > deadline:
            return fds
        time.sleep(0.1)


def run_http_fuzz(server: GuestApiProcess, seed: int, count: int, *, settle_seconds: float) -> HttpFuzzResult:
    """Send `count` hostile cases; measure after the first tenth and at the end, each once settled.

    `settle_seconds`: how long the server may take to close what the cases left open (its
    head timeout plus the linger after a refusal).
    """
    result = HttpFuzzResult()
    result.fds_at_start = server.measure()[1]
    warmup = max(WORKERS, count // 10)
    started = time.monotonic()
    cases = list(hostile_requests(seed, count))

    def play(batch: list[HttpCase]) -> None:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for case, (statuses, ended) in zip(batch, pool.map(lambda case: send_case(case, server.ports), batch)):
                result.requests += 1
                result.request_bytes += sum(len(chunk) for chunk in case.chunks)
                result.statuses.update(statuses)
                result.unfinished += not ended

    play(cases[:warmup])
    wait_for_fds(server.measure, result.fds_at_start, settle_seconds)
    result.rss_after_warmup, result.fds_after_warmup = server.measure()
    play(cases[warmup:])
    wait_for_fds(server.measure, result.fds_at_start, settle_seconds)
    result.rss_after, result.fds_after = server.measure()
    result.seconds = time.monotonic() - started
    return result


def file_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: relative path -> (size, mtime in ns)."""
    state = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            state[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return state


# What a guest's PUT may write: a file in its machine's joboutputs/, and the receipt of a
# shutdown_message upload beside it (vacd.recordformats.SHUTDOWN_RECEIPT_FILE, issue 11 item 4).
WRITABLE_BY_GUESTS = re.compile(
    r"var/lib/vac/machines/[^/]+/(joboutputs/[^/]+|" + re.escape(SHUTDOWN_RECEIPT_FILE) + ")")


def changed_outside_joboutputs(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Paths added, changed or removed that a guest's upload may not touch."""
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    return sorted(path for path in changed if not WRITABLE_BY_GUESTS.fullmatch(path))


def valid_exchange(server: GuestApiProcess, source: str = "127.0.0.3") -> tuple[int, int]:
    """(status of a GET of the machine's instance-id, status of a PUT to its joboutputs) from `source`."""
    statuses = []
    for part, request in (("metadata", b"GET /latest/meta-data/instance-id HTTP/1.0\r\nHost: x\r\n\r\n"),
                          ("mjf", _put(b"after-the-fuzz.log", b"still here\n", extra=b"Connection: close\r\n"))):
        answered, _ = send_case(HttpCase(part, source, (request,)), server.ports, patience=10.0)
        statuses.append(answered[0] if answered else 0)
    return statuses[0], statuses[1]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(Path(sys.argv[2]), float(sys.argv[3]))
    else:
        sys.exit(f"usage: {sys.argv[0]} serve PREFIX HEAD_TIMEOUT_SECONDS")
