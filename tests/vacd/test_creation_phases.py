"""Each creation's phases are observed once, in order, by whoever runs them (issue 15 item 1).

No durations are asserted (no timing in unit tests): what is pinned is which phases a
creation reports, from the factory and from the libvirt backend, on success and failure, and
that they reach vac_creation_phase_seconds.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from tests.vacd.test_libvirt_backend import NETWORK, EVENT_WAIT_SECONDS, RecordingRunner, make_spec
from vacd.backends.libvirt import LibvirtBackend
from vacd.creationphases import PHASES, timed
from vacd.errors import BackendError
from vacd.metrics import FactoryMetrics


class PhaseLog:
    """An observer that keeps what it was told, from any thread."""

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.lock = threading.Lock()
        self.started_event_seen = threading.Event()

    def __call__(self, phase: str, seconds: float) -> None:
        assert seconds >= 0.0
        with self.lock:
            self.phases.append(phase)
        if phase == "started_event":
            self.started_event_seen.set()


def test_factory_times_queue_contextualisation_spec_and_record_of_each_creation(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=2, host_processors=2), make_machinetype(tmp_path, "atlas"))
    phases = PhaseLog()
    contextualised: list[str] = []
    harness.factory.hooks.creation_phase = phases
    harness.factory.hooks.contextualise = lambda settings, machinetype, record, now: contextualised.append(record.name)

    harness.run_pass()

    assert len(contextualised) == 2
    assert phases.phases == ["queue", "contextualise", "machine_spec", "record"] * 2


def test_failed_creation_reports_the_phases_it_reached_and_no_record(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.backend.fail_creates_of.add("vmlinuz")
    phases = PhaseLog()
    harness.factory.hooks.creation_phase = phases

    harness.run_pass()

    assert harness.backend.machines == {}
    assert phases.phases == ["queue", "machine_spec"]


@pytest.mark.libvirt_test_driver
def test_libvirt_backend_times_xml_createxml_and_the_started_event(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    phases = PhaseLog()
    backend = LibvirtBackend(f"test://{node}", domain_type="qemu", network_name=NETWORK, tmp_dir=tmp_path / "tmp",
                             creation_phase=phases)
    try:
        backend.watch(lambda name: None)
        backend.create(make_spec(tmp_path))
        assert phases.started_event_seen.wait(EVENT_WAIT_SECONDS)
    finally:
        backend.close()
    assert phases.phases == ["xml", "createXML", "started_event"]


@pytest.mark.libvirt_test_driver
@pytest.mark.allow_commands("qemu-img")
def test_libvirt_backend_times_the_overlay_of_a_root_image(tmp_path: Path) -> None:
    image = tmp_path / "root.img"
    image.write_bytes(b"\0" * 1024 * 1024)
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    phases = PhaseLog()
    backend = LibvirtBackend(f"test://{node}", domain_type="qemu", network_name=NETWORK, tmp_dir=tmp_path / "tmp",
                             run_command=RecordingRunner(), creation_phase=phases)
    try:
        backend.create(make_spec(tmp_path, root_kernel=None, root_initrd=None, root_image=image))
    finally:
        backend.close()
    # Without watch() there are no lifecycle events, so no started_event phase is begun.
    assert phases.phases == ["disk", "overlay", "xml", "createXML"]


def test_a_failing_observer_does_not_fail_the_phase_it_times() -> None:
    def broken(phase: str, seconds: float) -> None:
        raise RuntimeError("monitoring is down")

    ran = []
    with timed(broken, "xml"):
        ran.append("xml")
    assert ran == ["xml"]


def test_every_phase_is_exported_and_unknown_names_are_dropped() -> None:
    registry = CollectorRegistry()
    metrics = FactoryMetrics(registry)
    metrics.creation_phase("createXML", 1.5)
    metrics.creation_phase("not-a-phase", 1.0)
    counts = {phase: registry.get_sample_value("vac_creation_phase_seconds_count", {"phase": phase}) for phase in PHASES}
    assert counts == {phase: (1.0 if phase == "createXML" else 0.0) for phase in PHASES}
    assert registry.get_sample_value("vac_creation_phase_seconds_sum", {"phase": "createXML"}) == 1.5
    assert registry.get_sample_value("vac_creation_phase_seconds_count", {"phase": "not-a-phase"}) is None


@pytest.mark.parametrize("phase", PHASES)
def test_phase_names_are_metric_label_safe(phase: str) -> None:
    assert phase.replace("_", "").isalnum()
