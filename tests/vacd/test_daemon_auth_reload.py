"""The VacQuery key and `vacquery_auth` follow a reload of a running vacd (issue 9 item 6).

vacd(8) says edits need no restart, but the authenticators were built once at start:
a factory started without a key kept answering unsigned queries after a key was added
and vacd was sent SIGHUP. This runs a real vacd (libvirt's test driver), talks to its
responder over real UDP on 127.0.0.1, and edits vac.conf under it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from vacquery.auth import AuthMode, AuthRejected, Authenticator, Scope
from vacquery.codec import MalformedDatagram, decode_reply, encode
from vacquery.messages import FactoryQuery

pytestmark = pytest.mark.allow_commands(sys.executable)

REPOSITORY = Path(__file__).resolve().parents[2]
SPACE = "vac01.example.com"
FACTORY = "f1.example.com"
KEY = b"a site key of at least 32 bytes!"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], bool], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
    return predicate()


class Peer:
    """A `vac`-like client on 127.0.0.1 holding the site key (it signs only when asked to)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.signer = Authenticator(KEY, AuthMode.OPTIONAL, nonce_source=os.urandom)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self._sequence = 0

    def send(self, *, signed: bool) -> str:
        self._sequence += 1
        cookie = f"{'signed' if signed else 'unsigned'}-{self._sequence}"
        datagram = encode(FactoryQuery(SPACE, cookie))
        if signed:
            datagram = self.signer.sign(datagram, time.time(), Scope.query_to(FACTORY, SPACE))
        self.sock.sendto(datagram, ("127.0.0.1", self.port))
        return cookie

    def replies_until(self, cookie: str) -> Optional[dict[str, bool]]:
        """Cookie -> whether its reply carried a valid tag, for every reply up to `cookie`'s; None on silence."""
        heard: dict[str, bool] = {}
        while cookie not in heard:
            try:
                datagram = self.sock.recv(20000)
            except socket.timeout:
                return None
            try:
                verified = self.signer.verify(datagram, time.time(), Scope.reply_in(SPACE))
                heard[decode_reply(verified.body).cookie] = verified.is_authenticated
            except (AuthRejected, MalformedDatagram):
                continue
        return heard

    def close(self) -> None:
        self.sock.close()


def write_config(prefix: Path, port: int, kernel: Path, extra: str = "") -> None:
    (prefix / "etc/vac.conf").write_text(f"""[settings]
vac_space = {SPACE}
factory_name = {FACTORY}
host_processors = 2
libvirt_uri = test:///default
vacquery_port = {port}
vacquery_bind_address = 127.0.0.1
cycle_seconds = 300
{extra}
[machinetype atlas]
target_share = 1
machine_model = vm-raw
root_kernel = {kernel}
""")


@pytest.fixture
def vacd(tmp_path: Path) -> Iterator[tuple[Path, int, Path, Path, subprocess.Popen[bytes]]]:
    prefix = tmp_path / "prefix"
    (prefix / "etc").mkdir(parents=True)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"the test driver never boots this")
    port = free_udp_port()
    write_config(prefix, port, kernel)
    stderr_path = tmp_path / "vacd.stderr"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--stderr"],
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=REPOSITORY,
            env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        )
    try:
        yield prefix, port, kernel, stderr_path, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_auth_mode_follows_a_reload_from_no_key_to_required_to_optional(
    vacd: tuple[Path, int, Path, Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    prefix, port, kernel, stderr_path, process = vacd
    peer = Peer(port)
    try:
        def answers(*, signed: bool) -> Optional[dict[str, bool]]:
            return peer.replies_until(peer.send(signed=signed))

        # No key: an unsigned query is answered, and the reply carries no tag.
        assert wait_until(lambda: answers(signed=False) is not None), stderr_path.read_text()[-3000:]
        heard = answers(signed=False)
        assert heard is not None and not any(heard.values())

        key_file = tmp_path / "vac-vacquery.key"
        key_file.write_bytes(KEY + b"\n")
        key_file.chmod(0o600)
        write_config(prefix, port, kernel, f"vacquery_key_file = {key_file}\n")
        process.send_signal(signal.SIGHUP)

        # The pass the SIGHUP wakes reads the key: signed replies to a signed query show it.
        def answers_signed() -> bool:
            heard = answers(signed=True)
            return heard is not None and any(heard.values())

        assert wait_until(answers_signed), stderr_path.read_text()[-3000:]
        # Required mode: an unsigned query gets nothing. The signed one sent after it is
        # answered, so by then the unsigned one was read and refused, not still in flight.
        unsigned = peer.send(signed=False)
        signed = peer.send(signed=True)
        heard = peer.replies_until(signed)
        assert heard is not None and heard[signed] and unsigned not in heard
        assert "VacQuery authentication changed mode=required keys=1" in stderr_path.read_text()

        write_config(prefix, port, kernel, f"vacquery_key_file = {key_file}\nvacquery_auth = optional\n")
        process.send_signal(signal.SIGHUP)
        # Mixed mode: an unsigned (Vac 03) query is answered again, and the replies are signed.
        def unsigned_answered_with_signed_replies() -> bool:
            cookie = peer.send(signed=False)
            heard = peer.replies_until(cookie)
            return heard is not None and heard[cookie]

        assert wait_until(unsigned_answered_with_signed_replies), stderr_path.read_text()[-3000:]
        assert process.poll() is None
    finally:
        peer.close()
