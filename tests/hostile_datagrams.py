"""Hostile VacQuery datagrams sent over real UDP loopback to a real vacd and to the real transport.

Issue 11: "100,000 fuzzed datagrams: 0 crashes, RSS flat". Two runs share one corpus:

- `fuzz_vacd`: a real `vacd` process (libvirt's in-memory test:///default driver, the
  responder on 127.0.0.1, a site key in `vacquery_auth = optional` so signed and unsigned
  queries are both read) is sent the corpus from 127.0.0.2. Loopback counts as a listed
  source in vacd (vacquery.responder rule 3b), so this run is about crashes, memory and
  descriptors, not amplification.
- `fuzz_unlisted_responder`: the real `ResponderProtocol` and `start_responder` in this
  process, told not to trust loopback (as bench/amplification.py does), are sent the same
  corpus from 127.0.0.3, an unlisted source: every batch's reply bytes must stay within its
  request bytes (the amplification bound of docs/peers-amplification.md).

After every batch (BATCH datagrams, or BATCH_BYTES, whichever comes first) a probe, a
valid factory query from a loopback address of its own, must be answered with its cookie:
the socket is read in order, so its answer also says every datagram before it was read
(nothing is left in flight when memory is measured). The batches are small enough to fit
the kernel's default receive buffer (net.core.rmem_max 212,992 bytes), so no datagram is
lost to a full buffer on a host without vacd's sysctl; the kernel's count of such losses
(/proc/net/snmp, Udp RcvbufErrors, host-wide) is reported.

The corpus (`hostile_datagrams`) is seeded, so a failure is reproduced by its seed and index:
mutations (bit flips, byte inserts, deletes, truncations, splices) of valid queries of each
kind, signed and unsigned, bare and padded; bad tags, replays, wrong keys and scopes; wrong
JSON types, huge numbers, NaN, deep nesting, huge JSON and datagrams up to 65,507 bytes;
non-UTF-8 and random bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import psutil

from vacquery.auth import AuthMode, Authenticator, Scope
from vacquery.codec import QUERY_PAD_BYTES, MalformedDatagram, decode_reply, encode, encode_query
from vacquery.messages import QUERY_CLASSES, FactoryQuery, MessageType, Snapshot
from vacquery.responder_transport import ResponderProtocol, start_responder

REPOSITORY = Path(__file__).resolve().parents[1]
SPACE = "vac01.example.com"
FACTORY = "f1.example.com"
KEY = b"the fuzzed factory's site key!!!"
WRONG_KEY = b"a key the factory does not hold!"
FUZZ_SOURCE = "127.0.0.2"
UNLISTED_SOURCE = "127.0.0.3"
# The check after the fuzz asks from a source of its own: the fuzz source's reply bucket may be
# spent by the valid queries among the fuzz, which is the budget working, not a deaf responder.
AFTER_SOURCE = "127.0.0.4"
# Probes rotate over these sources so each stays far inside its per-source reply bucket.
PROBE_SOURCES = tuple(f"127.0.1.{host}" for host in range(1, 251))
BATCH = 64
# Payload bytes per batch; with the kernel's per-datagram overhead (about 1 KiB each on
# loopback) a batch stays under the default 212,992-byte receive buffer.
BATCH_BYTES = 64 * 1024
PROBE_ATTEMPTS = 3
# The largest UDP payload over IPv4.
MAX_UDP_PAYLOAD = 65507
PROBE_TIMEOUT_SECONDS = 10.0
STARTUP_SECONDS = 60.0


# The corpus
def _valid_queries(rng: random.Random) -> list[bytes]:
    """One query of each kind, bare (Vac 03's form) and padded (ours), with a fresh cookie."""
    queries = []
    for query_class in QUERY_CLASSES.values():
        cookie = "%064x" % rng.getrandbits(256)
        query = query_class(SPACE, cookie)
        queries.append(encode_query(query))
        queries.append(encode_query(query, pad_to=QUERY_PAD_BYTES))
    return queries


def _signed(datagram: bytes, signer: Authenticator, rng: random.Random, now: float) -> bytes:
    scope = Scope.query_to(FACTORY, SPACE) if rng.random() < 0.8 else Scope.query_to("other.example.com", SPACE)
    return signer.sign(datagram, now + rng.choice((0, 0, 0, -3600, 3600)), scope)


def _bit_flips(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
    return bytes(buffer)


def _byte_edits(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        position = rng.randrange(len(buffer) + 1)
        choice = rng.random()
        if choice < 0.4:
            buffer[position:position] = bytes([rng.choice(b'{}[]",:\\0123456789-.eE\x00\xff ntfu')])
        elif choice < 0.8 and buffer:
            del buffer[position:position + rng.randint(1, 4)]
        else:
            buffer[position:position] = data[rng.randrange(len(data)):][:rng.randint(1, 64)]
    return bytes(buffer)


def _truncated(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def _wrong_type(data: bytes, rng: random.Random) -> bytes:
    """A valid query whose members take other JSON types (or hostile values)."""
    try:
        members: dict[str, Any] = json.loads(data)
    except ValueError:
        return data
    hostile: list[Any] = [None, True, 0, -1, 2**64, 1e308, -0.0, "", "x" * 5000, [], {}, [1, [2, [3]]],
                          {"a": {"b": None}}, "\u0000", "\udcff", "\u202e", "machines_query", 3.5]
    for name in rng.sample(sorted(members), rng.randint(1, len(members))):
        members[name] = rng.choice(hostile)
    if rng.random() < 0.3:
        members[rng.choice(("message_type", "method", "cookie", "space", "auth", "padding"))] = rng.choice(hostile)
    text = json.dumps(members, allow_nan=True)
    if rng.random() < 0.2:
        text = text.replace("1e+308", rng.choice(("NaN", "Infinity", "-Infinity", "1e999")))
    return text.encode("utf-8", "surrogatepass")


def _duplicate_keys(data: bytes, rng: random.Random) -> bytes:
    return data[:-1] + b', "cookie": "other", "space": "' + rng.choice((b"x", SPACE.encode())) + b'"}'


def _deep_nesting(rng: random.Random) -> bytes:
    depth = rng.choice((100, 1000, 5000, 30000))
    opening, closing = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
    inner = opening * depth + b"1" + closing * depth
    return b'{"message_type": "factory_query", "space": "' + SPACE.encode() + b'", "cookie": ' + inner + b"}"


def _huge_json(rng: random.Random) -> bytes:
    size = rng.choice((10_000, 10_241, 20_000, MAX_UDP_PAYLOAD - 200))
    query = encode_query(FactoryQuery(SPACE, "huge"))
    return query[:-1] + b', "padding": "' + b" " * size + b'"}'


def _bad_tag(datagram: bytes, rng: random.Random) -> bytes:
    """A signed query whose tag, time or nonce has one character changed."""
    marker = datagram.rfind(b'"')
    position = rng.randrange(max(1, marker - 80), marker)
    buffer = bytearray(datagram)
    buffer[position] = ord(rng.choice("0123456789abcdefz."))
    return bytes(buffer)


def _random_bytes(rng: random.Random) -> bytes:
    size = rng.choice((0, 1, 2, 16, 200, 1024, 1500, 9000, MAX_UDP_PAYLOAD))
    return rng.randbytes(size)


def _non_utf8(data: bytes, rng: random.Random) -> bytes:
    position = data.find(b'"cookie": "') + 11
    invalid = rng.choice((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"))
    return data[:position] + invalid + data[position:]


def hostile_datagrams(seed: int, count: int, now: Optional[float] = None) -> Iterator[bytes]:
    """`count` hostile datagrams (each at most MAX_UDP_PAYLOAD bytes), signed at `now` (default: the clock).

    The same seed and `now` give the same datagrams.
    """
    if now is None:
        now = time.time()
    rng = random.Random(seed)
    signer = Authenticator(KEY, AuthMode.OPTIONAL, nonce_source=rng.randbytes)
    impostor = Authenticator(WRONG_KEY, AuthMode.OPTIONAL, nonce_source=rng.randbytes)
    replayable: list[bytes] = []
    for _ in range(count):
        base = rng.choice(_valid_queries(rng))
        signed = _signed(base, signer, rng, now)
        choice = rng.random()
        if choice < 0.12:
            datagram = _bit_flips(rng.choice((base, signed)), rng)
        elif choice < 0.26:
            datagram = _byte_edits(rng.choice((base, signed)), rng)
        elif choice < 0.36:
            datagram = _truncated(rng.choice((base, signed)), rng)
        elif choice < 0.48:
            datagram = _wrong_type(base, rng)
            if rng.random() < 0.3 and datagram.endswith(b"}"):
                datagram = signer.sign(datagram, now, Scope.query_to(FACTORY, SPACE))
        elif choice < 0.52:
            datagram = _duplicate_keys(rng.choice((base, signed)), rng)
        elif choice < 0.55:
            datagram = _deep_nesting(rng)
        elif choice < 0.58:
            datagram = _huge_json(rng)
        elif choice < 0.66:
            datagram = _bad_tag(signed, rng)
        elif choice < 0.70:
            datagram = impostor.sign(base, now, Scope.query_to(FACTORY, SPACE))
        elif choice < 0.74:
            # A replay: a signed query seen before, sent again.
            replayable.append(signed)
            datagram = rng.choice(replayable[-100:])
        elif choice < 0.84:
            datagram = _random_bytes(rng)
        elif choice < 0.88:
            datagram = _non_utf8(rng.choice((base, signed)), rng)
        elif choice < 0.92:
            # Valid: the fuzz includes what must be answered.
            datagram = rng.choice((base, signed))
        else:
            datagram = rng.choice((base, signed))[:rng.randrange(1, 40)] + _random_bytes(rng)[:rng.randrange(1, 2000)]
        yield datagram[:MAX_UDP_PAYLOAD]


# Running it
@dataclass
class FuzzResult:
    """What a fuzz run sent and drew back, and the target's memory and descriptors."""

    datagrams: int = 0
    request_bytes: int = 0
    replies: int = 0
    reply_bytes: int = 0
    probes_answered: int = 0
    # Host-wide UDP datagrams dropped for a full receive buffer during the run (other
    # processes' included): 0 means none of ours was lost.
    receive_buffer_drops: int = 0
    rss_after_warmup: int = 0
    rss_after: int = 0
    fds_after_warmup: int = 0
    fds_after: int = 0
    seconds: float = 0.0
    # (batch index, request bytes, reply bytes) of every batch that drew more than it sent.
    amplifying_batches: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def rss_growth(self) -> int:
        return self.rss_after - self.rss_after_warmup

    def summary(self) -> str:
        return (f"datagrams={self.datagrams} request_bytes={self.request_bytes} replies={self.replies} "
                f"reply_bytes={self.reply_bytes} ratio={self.reply_bytes / max(1, self.request_bytes):.3f} "
                f"probes_answered={self.probes_answered} receive_buffer_drops={self.receive_buffer_drops} "
                f"rss_after_warmup={self.rss_after_warmup} "
                f"rss_after={self.rss_after} rss_growth={self.rss_growth} fds_after_warmup={self.fds_after_warmup} "
                f"fds_after={self.fds_after} seconds={self.seconds:.1f}")


def _udp_socket(source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((source, 0))
    return sock


def probe(port: int, source: str, cookie: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """Whether a valid factory query from `source` is answered with a factory_status for `cookie`."""
    with _udp_socket(source) as sock:
        sock.settimeout(timeout)
        sock.sendto(encode(FactoryQuery(SPACE, cookie)), ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                datagram = sock.recv(MAX_UDP_PAYLOAD)
            except socket.timeout:
                return False
            try:
                reply = decode_reply(datagram)
            except MalformedDatagram:
                continue
            if reply.cookie == cookie and reply.message_type == MessageType.FACTORY_STATUS:
                return True
    return False


def _drain(sock: socket.socket, result: FuzzResult) -> int:
    """Count what has arrived on `sock`; return the bytes."""
    received = 0
    while True:
        try:
            datagram = sock.recv(MAX_UDP_PAYLOAD + 1)
        except BlockingIOError:
            return received
        result.replies += 1
        received += len(datagram)


def udp_receive_buffer_errors() -> int:
    """The host's count of UDP datagrams dropped for a full receive buffer (/proc/net/snmp)."""
    with open("/proc/net/snmp") as snmp:
        names, values = [line.split() for line in snmp if line.startswith("Udp:")][:2]
    return int(values[names.index("RcvbufErrors")])


def _probe_answered(port: int, source: str, cookie: str) -> bool:
    """`probe`, asked again (with new cookies) if the answer does not come: a lost probe is no verdict."""
    return any(probe(port, source, f"{cookie}-{attempt}", timeout=PROBE_TIMEOUT_SECONDS / PROBE_ATTEMPTS)
               for attempt in range(PROBE_ATTEMPTS))


def run_fuzz(port: int, source: str, seed: int, count: int, *, warmup: int,
             measure: Callable[[], tuple[int, int]]) -> FuzzResult:
    """Send `count` hostile datagrams from `source` to 127.0.0.1:`port`, a probe after every batch.

    `measure` gives the target's (RSS bytes, open descriptors); it is read after `warmup`
    datagrams and at the end, each time once the probe says all before it were read.
    Raises AssertionError when a probe goes unanswered (the target is dead or deaf).
    """
    result = FuzzResult()
    started = time.monotonic()
    drops_before = udp_receive_buffer_errors()
    with _udp_socket(source) as sender:
        sender.setblocking(False)
        batch_request_bytes = 0
        batch_datagrams = 0
        batches = 0
        for index, datagram in enumerate(hostile_datagrams(seed, count), start=1):
            while True:
                try:
                    sender.sendto(datagram, ("127.0.0.1", port))
                    break
                except BlockingIOError:
                    time.sleep(0.001)
            result.datagrams += 1
            result.request_bytes += len(datagram)
            batch_request_bytes += len(datagram)
            batch_datagrams += 1
            if batch_datagrams == BATCH or batch_request_bytes >= BATCH_BYTES or index in (count, warmup):
                cookie = f"probe-{seed}-{index}"
                if not _probe_answered(port, PROBE_SOURCES[batches % len(PROBE_SOURCES)], cookie):
                    raise AssertionError(f"no answer to {cookie} after {index} hostile datagrams (seed {seed})")
                result.probes_answered += 1
                # Replies to the batch were sent before the probe's: they have arrived.
                batch_reply_bytes = _drain(sender, result)
                result.reply_bytes += batch_reply_bytes
                if batch_reply_bytes > batch_request_bytes:
                    result.amplifying_batches.append((batches, batch_request_bytes, batch_reply_bytes))
                batches += 1
                batch_request_bytes = 0
                batch_datagrams = 0
                if index == warmup:
                    result.rss_after_warmup, result.fds_after_warmup = measure()
    result.rss_after, result.fds_after = measure()
    result.seconds = time.monotonic() - started
    result.receive_buffer_drops = udp_receive_buffer_errors() - drops_before
    return result


def bytes_drawn_by(port: int, source: str, datagram: bytes, probe_cookie: str) -> int:
    """Send one datagram from `source`; return the reply bytes it drew (known once a probe after it is answered)."""
    with _udp_socket(source) as sock:
        sock.setblocking(False)
        sock.sendto(datagram, ("127.0.0.1", port))
        if not probe(port, PROBE_SOURCES[hash(probe_cookie) % len(PROBE_SOURCES)], probe_cookie):
            raise AssertionError(f"no answer to {probe_cookie} after {datagram[:100]!r}")
        result = FuzzResult()
        return _drain(sock, result)


def process_measure(pid: int) -> Callable[[], tuple[int, int]]:
    process = psutil.Process(pid)

    def measure() -> tuple[int, int]:
        return process.memory_info().rss, process.num_fds()

    return measure


# Target 1: a real vacd
def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


class RealVacd:
    """`python -m vacd.daemon` under a prefix, on libvirt's test driver, its responder on 127.0.0.1."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.port = free_udp_port()
        self.log_path = prefix / "vacd.log"
        kernel = prefix / "vmlinuz"
        (prefix / "etc").mkdir(parents=True, exist_ok=True)
        kernel.write_bytes(b"the test driver never boots this")
        key_file = prefix / "etc/vac-vacquery.key"
        key_file.write_bytes(KEY + b"\n")
        key_file.chmod(0o600)
        # cycle_seconds is long: the first pass publishes the snapshot, and the fuzz meets a
        # quiet factory whose memory is the responder's alone.
        (prefix / "etc/vac.conf").write_text(f"""[settings]
vac_space = {SPACE}
factory_name = {FACTORY}
host_processors = 2
libvirt_uri = test:///default
vacquery_port = {self.port}
vacquery_bind_address = 127.0.0.1
vacquery_key_file = {key_file}
vacquery_auth = optional
cycle_seconds = 3600

[machinetype atlas]
target_share = 1
machine_model = vm-raw
root_kernel = {kernel}
""")
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--stderr"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPOSITORY,
                env=dict(os.environ, PYTHONPATH=str(REPOSITORY)))

    def wait_until_answering(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        attempt = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"vacd exited with {self.process.returncode}:\n{self.log_tail()}")
            attempt += 1
            if probe(self.port, PROBE_SOURCES[0], f"startup-{attempt}", timeout=0.5):
                return
        raise AssertionError(f"vacd's responder did not answer within {STARTUP_SECONDS:.0f}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def fuzz_vacd(prefix: Path, seed: int, count: int) -> tuple[FuzzResult, RealVacd]:
    """Start a real vacd under `prefix`, fuzz it; the caller checks the result and stops it."""
    vacd = RealVacd(prefix)
    try:
        vacd.wait_until_answering()
        result = run_fuzz(vacd.port, FUZZ_SOURCE, seed, count, warmup=max(BATCH, count // 10),
                          measure=process_measure(vacd.process.pid))
    except BaseException:
        vacd.stop()
        raise
    return result, vacd


# Target 2: the real transport, loopback unlisted
class UnlistedResponder:
    """The real ResponderProtocol on 127.0.0.1 in a thread, trusting only the probe sources."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.protocol = ResponderProtocol(trusted_sources=frozenset(PROBE_SOURCES), trust_loopback=False)
        self.protocol.publish(snapshot)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="unlisted-responder", daemon=True)
        self._thread.start()
        self.transport = asyncio.run_coroutine_threadsafe(start_responder("127.0.0.1", 0, self.protocol),
                                                          self.loop).result(10)
        self.port = int(self.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def fuzz_unlisted_responder(snapshot: Snapshot, seed: int, count: int) -> tuple[FuzzResult, "UnlistedResponder"]:
    responder = UnlistedResponder(snapshot)
    try:
        result = run_fuzz(responder.port, UNLISTED_SOURCE, seed, count, warmup=max(BATCH, count // 10),
                          measure=process_measure(os.getpid()))
    except BaseException:
        responder.close()
        raise
    return result, responder
