"""vacd's start-up order (issue 10 item 2): a taken port stops vacd before the host is changed.

A Vac 03 still running holds the responder's port. vacd must exit naming it, and the
guest network, /etc/hosts and the domains must be as they were: here the real process
runs on libvirt's test driver under a test prefix, so "as they were" is what it logs and
writes under the prefix (the real-libvirt test checks the network itself).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vacd.test_daemon_systemd import NotifyListener
from vacd.paths import Paths

REPOSITORY = Path(__file__).resolve().parents[2]
SETTINGS = """[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
host_processors = 2
libvirt_uri = test:///default
vacquery_bind_address = 127.0.0.1
cycle_seconds = 1
"""


@pytest.mark.allow_commands(sys.executable)
def test_a_taken_responder_port_stops_vacd_before_the_network_hosts_or_domains_are_touched(tmp_path: Path) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    paths = Paths(tmp_path)
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_text(SETTINGS + f"vacquery_port = {port}\n")
    listener = NotifyListener.abstract()
    environment = {**os.environ, "NOTIFY_SOCKET": listener.notify_socket}
    try:
        result = subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(tmp_path), "--stderr"],
                                capture_output=True, text=True, cwd=REPOSITORY, timeout=60, env=environment)
        listener.receive_for(0.5)
    finally:
        holder.close()
        listener.close()
    assert result.returncode == 1, result.stderr
    named = f"cannot listen for VacQuery on 127.0.0.1 port {port} (UDP): in use by pid {os.getpid()}"
    assert named in result.stderr
    assert "vacd stopped before touching the guest network, /etc/hosts or any domain" in result.stderr
    # Nothing of the network step ran (it logs "defined network", "added hosts lines" ... as
    # vacd.network), and no /etc/hosts was written under the prefix.
    assert "vacd.network" not in result.stderr
    assert not (tmp_path / "etc" / "hosts").exists()
    statuses = [fields["STATUS"] for _, fields in listener.messages if "STATUS" in fields]
    assert statuses and statuses[-1].startswith("not started: ") and named in statuses[-1]


@pytest.mark.allow_commands(sys.executable, "sleep")
def test_a_running_vac03_factory_stops_vacd_before_anything_is_touched(tmp_path: Path) -> None:
    from tests.vac03tree import write_vac03_daemon_files

    vac03_factory = subprocess.Popen(["sleep", "60"])
    paths = Paths(tmp_path)
    paths.config_file.parent.mkdir(parents=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    paths.config_file.write_text(SETTINGS + f"vacquery_port = {free}\n")
    write_vac03_daemon_files(paths.state_dir, pid=vac03_factory.pid)
    try:
        result = subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(tmp_path), "--stderr"],
                                capture_output=True, text=True, cwd=REPOSITORY, timeout=60)
    finally:
        vac03_factory.kill()
        vac03_factory.wait()
    assert result.returncode == 1, result.stderr
    assert f"Vac 03's vacd-factory runs as pid {vac03_factory.pid}" in result.stderr
    assert "vacd.network" not in result.stderr
    assert not (tmp_path / "etc" / "hosts").exists()
