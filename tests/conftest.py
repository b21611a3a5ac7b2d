"""Guards for every test: no command runs and no real hypervisor is opened unless the test says so.

Rules (style.md, "Tests"): a test that runs an external command is marked
`@pytest.mark.allow_commands(...)`; one that talks to the real libvirtd (qemu:///system) is
marked `@pytest.mark.vm`. libvirt's in-memory `test:///` driver is always allowed. The guard
fails the test at the call, naming what it tried to run, so a forgotten mock or a stray
`systemctl` cannot slip into a unit test.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Iterator

import pytest
from hypothesis import settings

# CI runs the property tests derandomized, so a green run stays green when nothing changed;
# developers' runs explore new examples each time (and keep failures in .hypothesis/).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


class UnexpectedCommand(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _guard_commands_and_hypervisor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    allows_commands = request.node.get_closest_marker("allow_commands") is not None
    allows_vm = request.node.get_closest_marker("vm") is not None
    if not (allows_commands or allows_vm):
        real_popen_init = subprocess.Popen.__init__

        def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **options: Any) -> None:
            raise UnexpectedCommand(
                f"test ran a command without @pytest.mark.allow_commands: {args!r}"
            )

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
        assert real_popen_init is not None
    if not allows_vm:
        try:
            import libvirt
        except ImportError:
            libvirt = None
        if libvirt is not None:
            real_open = libvirt.open

            def open_test_driver_only(uri: Any = None) -> Any:
                if not (isinstance(uri, str) and uri.startswith("test:")):
                    raise UnexpectedCommand(f"test opened libvirt {uri!r} without @pytest.mark.vm")
                return real_open(uri)

            monkeypatch.setattr(libvirt, "open", open_test_driver_only)
    yield
