"""`vacd`: wire the factory's parts together in one process and run them until told to stop.

Rules (design.md rule 6): one process. The main thread runs the reconcile loop; blocking
backend work runs on a bounded thread pool; the guest HTTP servers run on an asyncio event
loop in their own thread (`vacd-guestapi`) and the VacQuery responder on another
(`vacd-vacquery`), so a guest flooding its servers cannot delay the answers peers and
`vac` wait for (issue 11 item 3); the metrics endpoint has its own thread. A stuck part
does not stall the others, and each part stamps a heartbeat: the responder's from its own
loop answering a ping, the guest servers' from their supervisor on theirs. Nothing runs
at import time.

The command line, the one-shot checks, logging, the pid file and the signal handlers are
vacd.daemoncli's; this module's `main` runs it, because `vacd.daemon:main` is the entry
point (setup.cfg, the packaged /usr/sbin/vacd, `python -m vacd.daemon`).

Under systemd (`Type=notify`, vacd.service) the loop tells the service manager what it is
doing (vacd.sdnotify): READY=1 after the first pass (complete or not: faults show in its
STATUS= line and status.json), a STATUS= line after every pass, WATCHDOG=1 from the loop itself after each pass and while it waits for the next (so
a pass that never returns stops the pings and systemd restarts vacd), STOPPING=1 at once on
SIGTERM.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Optional

from vacd import MANAGER_VERSION, daemoncli
from vacd.backoff import doubling_delay
from vacd.config import Config, Settings
from vacd.daemonhooks import daemon_hooks
from vacd.errors import VacError
from vacd.eventloop import AUTO, EVENT_LOOP_VARIABLE, EventLoopUnavailable, chosen_kind
from vacd.gcfreeze import freeze_startup_heap
from vacd.clock import ClockJumpWatch, SteadyClock
from vacd.factory import Factory, FactoryHooks, PassReport
from vacd.networkchecks import NetworkCheckSchedule
from vacd.paths import Paths
from vacd.reloadingconfig import ReloadingConfig
from vacd.sdnotify import ServiceNotifier
from vacd.startupgate import (
    StartupError,
    ensure_network_at_start,
    refuse_busy_ports,
    refuse_missing_volume_group,
    remove_leftover_volumes,
    warn_if_factory_renamed,
)
from vacd.serviceloop import ServiceLoop
from vacd.status import pass_completed, publish_status, status_document, write_heartbeat
from vacd.store import Store

log = logging.getLogger(__name__)

# Budget of one pass before it is logged as slow (style.md, kubelet's housekeeping budget).
PASS_BUDGET_SECONDS = 10.0
# After a pass that raised, the loop waits this long, doubling up to the cap (the kubelet's
# runtime-error backoff, 100 ms to 5 s, stretched: a pass here touches disks and libvirt).
PASS_ERROR_FIRST_BACKOFF_SECONDS = 1.0
PASS_ERROR_MAX_BACKOFF_SECONDS = 60.0


LOSS_ENVIRONMENT_VARIABLE = "VAC_TEST_DATAGRAM_LOSS"


def injected_datagram_loss() -> Optional[Any]:
    """Tests only: drop this fraction of outgoing VacQuery datagrams ($VAC_TEST_DATAGRAM_LOSS)."""
    from vacquery.transport import InjectedLoss

    raw_text = os.environ.get(LOSS_ENVIRONMENT_VARIABLE)
    if not raw_text:
        return None
    loss = InjectedLoss(float(raw_text))
    log.warning("dropping %.0f%% of outgoing VacQuery datagrams (%s is set: tests only)",
                100 * loss.probability, LOSS_ENVIRONMENT_VARIABLE)
    return loss


def load_average() -> float:
    """The largest of the 1, 5 and 15 minute load averages (§4.1)."""
    return max(os.getloadavg())


class Daemon:
    """The running vacd: builds every part from the configuration and runs the loop."""

    def __init__(self, paths: Paths, config: Config, host_fqdn: str, host_cpu_count: int, *,
                 notifier: Optional[ServiceNotifier] = None, log_destination: Optional[str] = None) -> None:
        self.paths = paths
        # Where vacd logs (vacd --stderr overrides log_destination): its guest server processes log there too.
        self.log_destination = log_destination
        self.config = config
        self.host_fqdn = host_fqdn
        self.host_cpu_count = host_cpu_count
        self.stopping = threading.Event()
        # Intervals are measured on the steady clock: a wall-clock jump moves none (item 11).
        self.clock = SteadyClock()
        self.clock_watch = ClockJumpWatch(self.clock, self._log_clock_jump)
        self.start_time = int(self.clock())
        self.pass_errors_in_a_row = 0
        self._publish_failing = False
        self.factory: Optional[Factory] = None
        # GuestApiServer on the guest thread, or GuestApiWorkers (vacd.guestapi.workers).
        self.guest_api: Optional[Any] = None
        self._guest_api_stop_timeout = 30.0
        self.link_identity: Optional[Any] = None
        # The VM backend (vacd.backends.libvirt.LibvirtBackend), for its slot taps' tending.
        self.vm_backend: Optional[Any] = None
        self.metrics: Optional[Any] = None
        self.metrics_server: Optional[Any] = None
        self.dashboard: Optional[Any] = None  # vacd.dashboard.service.Dashboard, with `dashboard = true`
        self.listing_auth: Optional[Any] = None
        self.listing_census: Optional[Any] = None
        # The census outcome the dashboard last saw, and when (wall clock) it was first seen.
        self._census_seen: tuple[Optional[Any], int] = (None, 0)
        self._guest_counts_seen: dict[tuple[str, str, int], int] = {}
        self._guest_restarts_seen = 0
        self.responder: Optional[Any] = None
        self.responder_transport: Optional[Any] = None
        self.peer_census: Optional[Any] = None
        self.responder_auth: Optional[Any] = None  # ReloadableAuthenticators (vacquery.auth)
        self.census_auth: Optional[Any] = None
        self.vacmon: Optional[Any] = None
        self.guest_services: Optional[ServiceLoop] = None
        self.vacquery_services: Optional[ServiceLoop] = None
        self.images: Optional[Any] = None
        # When a pass last completed (status.json `last_pass_completed`, the factory heartbeat).
        self.last_pass_completed: Optional[int] = None
        self.image_eviction: Optional[Any] = None
        # The service manager (systemd) hears of readiness, status, liveness and stopping.
        self.notifier = notifier if notifier is not None else ServiceNotifier(None)
        self.is_ready = False
        self.network_checks = NetworkCheckSchedule()

    def request_stop(self, *_: object) -> None:
        if not self.stopping.is_set():
            # At once, not when the pass under way ends: systemd shows "deactivating" now.
            self.notifier.stopping("stopping: waiting for the pass and the creations and destroys under way; "
                                   "machines keep running")
        self.stopping.set()
        if self.factory is not None:
            self.factory.wake("stop")

    def run(self) -> int:
        from vacd.backends.libvirt import LibvirtBackend
        from vacd.diskspace import check_disk, check_room
        from vacd.hypervisor import decide_domain_type
        from vacd.imageeviction import ImageEviction
        from vacd.network import BRIDGE_NAME, NETWORK_NAME, uses_test_driver
        from vacd.startup_cleanup import live_machine_uuids, remove_leftovers
        from vacd.backends.bymodel import machine_backends

        settings = self.config.settings
        self.notifier.status("starting: cleaning up, connecting to libvirt, opening the VacQuery port")
        self.paths.ensure_state_dirs()
        store = Store(self.paths)
        # Before any pass, so no temp or disk file can belong to work in flight (issue 8 item 4).
        remove_leftovers(self.paths, live_machine_uuids(store))
        domain_type, reason = decide_domain_type(settings.hypervisor)
        log.info("starting %s factory=%s space=%s slots=%d domain_type=%s (%s)", MANAGER_VERSION,
                 settings.factory_name, settings.vac_space, settings.num_machine_slots, domain_type, reason)
        # Before the network, interfaces, /etc/hosts or domains are touched (issue 10 item 2): a
        # Vac 03 still running holds these ports, and vacd must stop with the host as it found it.
        refuse_busy_ports(self.paths, settings)
        try:
            guest_loop_kind = chosen_kind()
        except EventLoopUnavailable as error:
            raise StartupError(f"{error} (vacd stopped before touching the guest network)") from error
        log.info("guest servers' event loop: %s (%s=%s)", guest_loop_kind, EVENT_LOOP_VARIABLE,
                 os.environ.get(EVENT_LOOP_VARIABLE) or AUTO)
        refuse_missing_volume_group(settings)
        remove_leftover_volumes(settings, store)
        ensure_network_at_start(self.paths, settings)
        warn_if_factory_renamed(self.paths, settings.factory_name)
        config_source = ReloadingConfig(self.paths, self.config, self.host_fqdn, self.host_cpu_count)
        # A sparse disk is made only where all it may grow to leaves the kept minimum free (issue 13).
        # Each VM slot has its own tap on the guest bridge, pinned by vacd's nftables table
        # (vacd.backends.slottaps), where the host can; else <filterref> per domain.
        self.vm_backend = LibvirtBackend(settings.libvirt_uri, domain_type=domain_type, network_name=NETWORK_NAME,
                                         tmp_dir=self.paths.tmp_dir,
                                         room_check=lambda directory, size_bytes: check_room(
                                             directory, size_bytes, config_source.last_good.settings),
                                         creation_phase=self._observe_creation_phase,
                                         slot_taps=True)
        backend = machine_backends(
            self.vm_backend,
            bridge=BRIDGE_NAME,
            state_dir=self.paths.state_dir / "apptainer",
            singularity_user=settings.singularity_user,
            docker_machinetypes=sorted(name for name, machinetype in self.config.machinetypes.items()
                                       if machinetype.machine_model == "docker"),
            simulated=uses_test_driver(settings.libvirt_uri),
        )
        executor = ThreadPoolExecutor(max_workers=max(4, settings.max_creations_per_cycle * 2),
                                      thread_name_prefix="vacd-act")
        self._start_metrics(settings)
        factory = Factory(
            store,
            backend,
            config_source,
            executor,
            clock=self.clock,
            load_average=load_average,
            host_cpu_count=self.host_cpu_count,
            vacd_start_time=self.start_time,
            hooks=self._hooks(),
            is_draining=self.paths.drain_file.exists,
            initial_config=self.config,
            disk_problem=lambda settings: check_disk(self.paths, settings),
        )
        self.factory = factory
        config_source.pipes.on_refreshed = lambda: factory.wake("vacuum pipe refreshed")
        if self.images is not None:
            self.image_eviction = ImageEviction(store, self.images.path_for)
        if settings.wake_on_events:
            backend.watch(factory.wake)
        # Two loops, two threads: a guest's flood keeps the guest loop busy, not VacQuery's.
        vacquery_services = ServiceLoop("vacd-vacquery")
        vacquery_services.start()
        self.vacquery_services = vacquery_services
        guest_services = ServiceLoop("vacd-guestapi", guest_loop_kind)
        guest_services.start()
        self.guest_services = guest_services
        try:
            if uses_test_driver(settings.libvirt_uri):
                log.info("libvirt test driver: its machines are not real guests, so no guest API is served")
            else:
                self._start_guest_api(settings, store, config_source, guest_services, guest_loop_kind)
            self._start_peer_protocol(settings, vacquery_services)
            self._start_dashboard_listing(settings)
        except BaseException:
            # A part that failed to start (a port in use, say) leaves no loop thread behind.
            self._stop_services()
            raise
        if self.peer_census is not None and factory.hooks is not None:
            factory.hooks.peer_reports = self.peer_census.peer_reports
        # Start-up is done: its objects leave the collector's full passes, which would
        # otherwise pause the guest servers' loop for milliseconds (vacd.gcfreeze).
        log.info("start-up heap frozen for the garbage collector objects=%d", freeze_startup_heap())
        try:
            self._loop(factory, config_source)
        finally:
            log.info("stopping: machines keep running and will be adopted at the next start")
            # Downloads and pipe fetches are cut, not waited for: the next start fetches again.
            if self.images is not None:
                self.images.close()
            config_source.close()
            factory.wait_for_background_work()
            executor.shutdown(wait=True)
            self._stop_services()
            if self.vacmon is not None:
                self.vacmon.close()
            backend.close()
            if self.metrics_server is not None:
                self.metrics_server.stop()
            if self.dashboard is not None and self.dashboard.listing is not None:
                self.dashboard.listing.stop()
            self.notifier.status("stopped: machines keep running and will be adopted at the next start")
            self.notifier.close()
        return 0

    def _start_guest_api(self, settings: Settings, store: Store, config_source: ReloadingConfig,
                         guest_services: "ServiceLoop", guest_loop_kind: str) -> None:
        """The metadata and MJF servers: on vacd's guest thread, or as processes on a large node."""
        from vacd.guestapi.linkidentity import LinkIdentity
        from vacd.guestapi.server import GuestApiServer
        from vacd.guestapi.workers import START_TIMEOUT_SECONDS, STOP_TIMEOUT_SECONDS, GuestApiWorkers, serving_processes
        from vacd.network import BRIDGE_NAME

        processes = serving_processes(settings.guest_api_processes, self.host_cpu_count)
        if processes:
            self.guest_api = GuestApiWorkers(
                self.paths, lambda: config_source.last_good.settings, processes,
                log_destination=self.log_destination or settings.log_destination, log_file=self.paths.log_file,
                log_level=logging.getLogger().getEffectiveLevel(), port=settings.metadata_port, bridge=BRIDGE_NAME,
                loop_kind=guest_loop_kind)
            self._guest_api_stop_timeout = STOP_TIMEOUT_SECONDS + 10.0
            guest_services.call(self.guest_api.start(), timeout=START_TIMEOUT_SECONDS * processes + 10.0)
            return
        self.link_identity = LinkIdentity(BRIDGE_NAME)
        self.guest_api = GuestApiServer(self.paths, store, lambda: config_source.last_good.settings,
                                        port=settings.metadata_port, clock=self.clock,
                                        link_check=self.link_identity.confirms_slot)
        guest_services.call(self.guest_api.start())

    def _guest_servers_status(self) -> Optional[dict[str, Any]]:
        """status.json's `guest_servers` with serving processes; None on vacd's own guest thread."""
        status = getattr(self.guest_api, "status", None)
        return status() if status is not None else None

    def reopen_logs(self) -> None:
        """SIGHUP: the guest server processes reopen their log files as vacd does (signal-safe)."""
        reopen = getattr(self.guest_api, "reopen_logs", None)
        if reopen is not None:
            reopen()

    def _stop_services(self) -> None:
        """Stop the guest servers and the responder, each on its own loop, then both loops."""
        if self.guest_services is not None:
            if self.guest_api is not None:
                try:
                    self.guest_services.call(self.guest_api.stop(), timeout=self._guest_api_stop_timeout)
                except Exception:  # boundary: the responder and the rest must still stop
                    log.exception("guest servers did not stop cleanly")
            self.guest_services.stop()
        if self.link_identity is not None:
            self.link_identity.close()
        if self.vacquery_services is not None:
            transport = self.responder_transport
            if transport is not None:
                try:
                    self.vacquery_services.run_soon(transport.close)
                except Exception:  # boundary: as above
                    log.exception("VacQuery responder did not stop cleanly")
            self.vacquery_services.stop()

    def _network_problem(self, settings: Settings) -> Optional[str]:
        """Why the guest network is unusable (after trying to make it so), or None."""
        from vacd.network import ensure_network

        try:
            # Not replaced in a pass while it still serves the slots: a creation may be under way.
            ensure_network(settings.libvirt_uri, self.paths, settings, may_replace=False)
        except VacError as error:
            log.error("guest network unusable, no machine created this pass error=%s", error)
            return f"guest network unusable: {error}"
        if self.vm_backend is not None:
            try:
                # Slots gone (total_processors lowered) lose their taps; the rest are put back
                # on the bridge if a network restart took them off it.
                self.vm_backend.tend_slot_taps(settings.num_machine_slots)
            except VacError as error:
                # Not the network's fault: each creation ensures its own slot's tap anyway.
                log.warning("slot taps not tended at this network check error=%s", error)
        return None

    def _start_peer_protocol(self, settings: Settings, services: "ServiceLoop") -> None:
        """The VacQuery responder, the census of peers, and VacMon (§3, §7.2)."""
        from vacd.peers import PeerCensus, PeerResolver
        from vacd.vacmon import VacmonSender
        from vacquery.auth import ReloadableAuthenticator
        from vacquery.responder_transport import ResponderProtocol, start_responder

        loss = injected_datagram_loss()
        # Two authenticators: each keeps its own replay state and is used from one thread.
        # Each pass rebuilds them if the key or vacquery_auth changed (_follow_auth_settings).
        self.responder_auth = ReloadableAuthenticator(settings)
        self.census_auth = ReloadableAuthenticator(settings)
        self.responder = ResponderProtocol(authenticator=self.responder_auth.current, loss=loss)
        try:
            self.responder_transport = services.call(
                start_responder(settings.vacquery_bind_address, settings.vacquery_port, self.responder)
            )
        except OSError as error:
            raise StartupError(
                f"cannot listen for VacQuery on {settings.vacquery_bind_address} port {settings.vacquery_port}: "
                f"{error.strerror or error} (vacquery_bind_address, vacquery_port in [settings])"
            ) from error
        # Made even with no factories yet: a reload that adds some is followed without a restart.
        self.peer_census = PeerCensus(PeerResolver(), self.census_auth.current, loss=loss)
        if settings.vacmon_hostport:
            self.vacmon = VacmonSender(settings.vacmon_hostport)

    def _start_metrics(self, settings: Settings) -> None:
        if not settings.metrics_address:
            return  # `dashboard = true` alone: the configuration's warning has said so
        from prometheus_client import CollectorRegistry

        from vacd.metrics import FactoryMetrics, register_process_collectors, serve_metrics

        registry = CollectorRegistry()
        self.metrics = FactoryMetrics(registry)
        register_process_collectors(registry)
        healthy = self.metrics.healthy_if_fresh(max(120.0, 4 * settings.cycle_seconds))
        pages = None
        if settings.dashboard:
            from vacd.dashboard.history import HistoryRing
            from vacd.dashboard.pages import dashboard_pages
            from vacd.dashboard.service import Dashboard

            self.dashboard = Dashboard(HistoryRing(self.paths.dashboard_history_file))
            pages = dashboard_pages(self.dashboard)
        self.metrics_server = serve_metrics(settings.metrics_address, registry, healthy, pages)
        log.info("serving metrics address=%s dashboard=%s", settings.metrics_address,
                 "/dashboard" if pages else "off")

    def _start_dashboard_listing(self, settings: Settings) -> None:
        """The dashboard's own census of the peers' machines and factories (vacd/dashboard/listing.py)."""
        if self.dashboard is None:
            return
        from vacd.dashboard.listing import LISTING_KINDS, SpaceListing, heard_from
        from vacd.dashboard.view import Heard
        from vacd.peers import PeerCensus, PeerResolver
        from vacquery.auth import ReloadableAuthenticator

        # Its own authenticator: each keeps its own replay state and is used from one thread.
        self.listing_auth = ReloadableAuthenticator(settings)
        census = PeerCensus(PeerResolver(), self.listing_auth.current, client_name="vacd-dashboard")
        self.listing_census = census

        def gather(current: Settings) -> Optional[Heard]:
            if not current.factories:
                return None
            results = [census.run(current, kind).result for kind in LISTING_KINDS]
            return heard_from(results, time.time())

        listing = SpaceListing(gather)
        listing.follow(settings)
        listing.start()
        self.dashboard.listing = listing

    def _hooks(self) -> FactoryHooks:
        hooks, self.images = daemon_hooks(self.paths, self._count_creation, self._observe_creation_phase)
        return hooks

    def _count_creation(self, record: Any, seconds: float, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.creation_finished(record.machinetype, seconds, ok)
        if self.dashboard is not None:
            self.dashboard.creation_finished(ok)

    def _observe_creation_phase(self, phase: str, seconds: float) -> None:
        """A creation phase ended (pool or libvirt event thread): vac_creation_phase_seconds."""
        if self.metrics is not None:
            self.metrics.creation_phase(phase, seconds)

    def _log_clock_jump(self, skew: float) -> None:
        log.warning("wall clock is %+.0fs from vacd's steady clock (a jump?); machines are policed on the "
                    "steady clock until vacd restarts", skew)

    def _loop(self, factory: Factory, config_source: ReloadingConfig) -> None:
        while not self.stopping.is_set():
            factory.wake_event.clear()
            try:
                self._one_iteration(factory, config_source)
                self.pass_errors_in_a_row = 0
            except Exception as error:  # boundary: the loop never dies from an exception (item 1)
                self.pass_errors_in_a_row += 1
                delay = doubling_delay(PASS_ERROR_FIRST_BACKOFF_SECONDS, PASS_ERROR_MAX_BACKOFF_SECONDS,
                                       self.pass_errors_in_a_row - 1)
                log.exception("pass failed (%d in a row); next pass in %.0fs", self.pass_errors_in_a_row, delay)
                # The loop is alive and will try again: a restart would not mend a bug in a pass.
                self.notifier.notify(watchdog="1", status=f"pass failed ({self.pass_errors_in_a_row} in a row): "
                                     f"{type(error).__name__}: {error}; next pass in {delay:.0f}s")
                self._wait_feeding_watchdog(self.stopping, delay)

    def _wait_feeding_watchdog(self, event: threading.Event, seconds: float) -> None:
        """Wait for `event` up to `seconds`, sending WATCHDOG=1 every half watchdog timeout.

        Pings come only from here and from the end of a pass, both on the loop's thread: a
        pass that never returns sends none, and systemd restarts vacd (WatchdogSec=).
        """
        ping_seconds = self.notifier.watchdog_ping_seconds
        if ping_seconds is None:
            event.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or event.wait(min(remaining, ping_seconds)):
                return
            self.notifier.watchdog()

    def _tell_service_manager(self, report: PassReport, elapsed_seconds: float) -> None:
        """After a pass: WATCHDOG=1, a STATUS= line, and READY=1 after the first pass.

        READY=1 follows the first pass whether or not it completed: a factory whose libvirt
        is down at boot is up and says so (status.json, check-vacd, this STATUS= line). Held
        back, the start would time out and systemd would restart vacd every few minutes,
        resetting the fault's since-time and hiding it behind a unit in restart.
        """
        status = service_status_line(report, elapsed_seconds, self.paths.drain_file.exists())
        if not pass_completed(report):
            status = f"pass incomplete: {status}"
        if not self.is_ready:
            self.is_ready = True
            self.notifier.notify(ready="1", watchdog="1", status=status)
        else:
            self.notifier.notify(watchdog="1", status=status)

    def _one_iteration(self, factory: Factory, config_source: ReloadingConfig) -> None:
        """One pass, its publication, and the wait for the next: all inside the loop's boundary."""
        started = time.monotonic()
        # The loop thread's own CPU time: other threads (guest API, VacQuery, creations) are not the pass.
        cpu_started = time.thread_time()
        # The loop beats every iteration; the factory heartbeat only after a completed pass.
        try:
            write_heartbeat(self.paths, "loop", int(time.time()))
        except OSError as error:  # a full disk costs the heartbeat, not the pass (item 4)
            log.warning("cannot write the loop heartbeat error=%s", error)
        self.clock_watch.check()
        network_settings = config_source.last_good.settings
        creation_failures = factory.slot_error_totals.get("create", 0)
        if self.network_checks.due(network_settings, started, creation_failures):
            network_problem = self._network_problem(network_settings)
            self.network_checks.checked(network_settings, started, creation_failures, network_problem is None)
            if network_problem is None:
                factory.clear_fault("network")
            else:
                # Creation waits for the network; policing, finalising and accounting do not.
                factory.note_fault("network", network_problem)
        if self.image_eviction is not None:
            last_good = config_source.last_good
            self.image_eviction.run_if_due(last_good.settings, last_good.machinetypes, time.time())
        report = factory.run_pass()
        try:
            self._publish(factory, report)
            self._publish_failing = False
        except Exception:  # boundary: a status that cannot be written must not slow the policing
            if not self._publish_failing:
                log.exception("cannot publish the pass (status, heartbeats, snapshot); the loop goes on")
            else:
                log.error("cannot publish the pass, again")
            self._publish_failing = True
        elapsed = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.pass_finished(elapsed, time.thread_time() - cpu_started, pass_completed(report))
        if elapsed > PASS_BUDGET_SECONDS:
            log.warning("slow pass budget=%.0fs actual=%.1fs", PASS_BUDGET_SECONDS, elapsed)
        self._tell_service_manager(report, elapsed)
        settings = report.settings or config_source.last_good.settings
        if not settings.wake_on_events:
            # Vac 03's loop: a fixed wait after each pass, deaf to events (§1.3).
            self._wait_feeding_watchdog(self.stopping, settings.cycle_seconds)
            return
        wait_seconds = settings.cycle_seconds
        if report.next_wake_seconds is not None:
            wait_seconds = min(wait_seconds, report.next_wake_seconds)
        self._wait_feeding_watchdog(factory.wake_event, wait_seconds)

    def _follow_auth_settings(self, settings: Settings) -> None:
        """The key and vacquery_auth follow a reload, as vacd(8) says every edit does (issue 9 item 6)."""
        _swap_authenticator(self.responder_auth, self.responder, settings)
        _swap_authenticator(self.census_auth, self.peer_census, settings)
        _swap_authenticator(self.listing_auth, self.listing_census, settings)

    def _publish(self, factory: Factory, report: PassReport) -> None:
        """Status file, heartbeats, the responder's snapshot, VacMon and metrics, after each pass."""
        from vacd.snapshot import build_snapshot, machine_status, read_host_facts
        from vacquery.codec import encode_reply
        from vacquery.messages import Reply

        now = int(time.time())
        if pass_completed(report):
            # Written only now (issue 8 item 8): a pass under a bad configuration or without a
            # listing of the machines is not the factory at work, and check-vacd must see that.
            self.last_pass_completed = now
            write_heartbeat(self.paths, "factory", now)
        heartbeats = {"loop": now}
        if self.last_pass_completed is not None:
            heartbeats["factory"] = self.last_pass_completed
        if self.vacquery_services is not None and self.vacquery_services.is_responsive():
            # The responder's own loop answered just now (the guest loop's state does not matter).
            heartbeats["responder"] = now
            write_heartbeat(self.paths, "responder", now)
        if self.guest_api is not None:
            # Stamped on the guest loop (requests, and its supervisor's tick): a stuck guest
            # loop shows as stale metadata and mjf heartbeats.
            for part, last in list(self.guest_api.heartbeats.items()):
                heartbeats[part] = int(last)
                write_heartbeat(self.paths, part, int(last))
        census = None
        if self.peer_census is not None and self.peer_census.last_outcome is not None:
            result = self.peer_census.last_outcome.result
            census = {
                "heard": len(result.factories) - len(result.silent),
                "expected": len(result.factories),
                "complete": len(result.complete),
                "silent": list(result.silent),
                "duration_seconds": round((result.finished or result.started) - result.started, 4),
            }
        document = status_document(
            report,
            heartbeats=heartbeats,
            census=census,
            draining=self.paths.drain_file.exists(),
            last_error=factory.last_error,
            last_pass_completed=self.last_pass_completed,
            slot_error_totals=factory.slot_error_totals,
            records_quarantined_total=factory.store.quarantined_total,
            guest_servers=self._guest_servers_status(),
        )
        # Written with a bad configuration too: status.json is where the admin sees the fault.
        publish_status(self.paths, document)
        if self.metrics is not None:
            self.metrics.observe_status(document)
        if report.settings is None:
            return  # no configuration ever known to this pass: nothing to tell peers or VacMon
        snapshot = build_snapshot(report, read_host_facts(self.paths), heartbeats)
        self._follow_auth_settings(report.settings)
        if self.responder is not None:
            self.responder.publish(snapshot)
            if self.peer_census is not None:
                # On its own timer, not the census's: a full or draining factory runs no
                # census and must still answer its peers in full (issue 9 item 4).
                self.responder.set_trusted_sources(self.peer_census.trusted_hosts_for(report.settings))
        if self.vacmon is not None:
            # Cookie "0" marks unsolicited statuses (§7.2); a finished machine is reported
            # as it really ended, "Shut down" with its message (Vac sent "Running", [BUG]).
            self.vacmon.send_pass(
                encode_reply(Reply("0", now, snapshot.factory)),
                [encode_reply(Reply("0", now, status)) for status in snapshot.machinetypes],
            )
            finished_names = {record.name for record, _ in report.finished}
            for slot in report.slots:
                if slot.identity.machine_name in finished_names:
                    status = machine_status(report, slot, snapshot.factory.daemon_version or "")
                    self.vacmon.send_machine_finished(encode_reply(Reply("0", now, status)))
        if self.dashboard is not None:
            self._publish_to_dashboard(report, document, snapshot, now)
        if self.metrics is not None:
            from vacd.dashboard.view import outcome_key

            for _, finish in report.finished:
                self.metrics.machine_finished(outcome_key(finish.shutdown_message))
            if self.guest_api is not None:
                for key, count in list(self.guest_api.counters.items()):
                    new = count - self._guest_counts_seen.get(key, 0)
                    if new > 0:
                        self.metrics.guest_request(key[1], key[2], new)
                    self._guest_counts_seen[key] = count
                restarts = getattr(self.guest_api, "restarts", 0)
                if restarts > self._guest_restarts_seen:
                    self.metrics.guest_server_restarts.inc(restarts - self._guest_restarts_seen)
                    self._guest_restarts_seen = restarts
            if self.responder is not None:
                self.metrics.observe_responder_counters(self.responder.counters)

    def _publish_to_dashboard(self, report: PassReport, document: Mapping[str, Any], snapshot: Any, now: int) -> None:
        """The pass's facts for the page: status, own statuses, the last census as heard."""
        from vacd.dashboard.listing import heard_from, wire_form
        from vacd.dashboard.view import PassFacts
        from vacquery.messages import Reply

        assert self.dashboard is not None
        own = tuple(wire_form(Reply("0", now, status))
                    for status in (*snapshot.machines, *snapshot.machinetypes, snapshot.factory))
        census = None
        outcome = self.peer_census.last_outcome if self.peer_census is not None else None
        if outcome is not None:
            if outcome is not self._census_seen[0]:
                # A full or draining factory runs no census: the page shows how old this one is.
                self._census_seen = (outcome, now)
            census = heard_from([outcome.result], self._census_seen[1])
        if self.dashboard.listing is not None and report.settings is not None:
            self.dashboard.listing.follow(report.settings)
        self.dashboard.observe_pass(PassFacts(now, document, own, census),
                                    [finish.shutdown_message for _, finish in report.finished])


def service_status_line(report: PassReport, elapsed_seconds: float, draining: bool) -> str:
    """The one line `systemctl status vacd` shows after a pass: what runs, and what is wrong."""
    if report.settings is None or report.config_error is not None:
        return f"configuration error: {report.config_error or 'no usable configuration'}"
    if report.observe_error is not None:
        return f"cannot list the machines: {report.observe_error}"
    running = sum(totals.machines for totals in report.running_by_machinetype().values())
    parts = [f"{running} machines in {report.settings.num_machine_slots} slots"]
    if draining:
        parts.append("draining")
    parts.extend(f"{fault.kind}: {fault.message}" for fault in report.faults)
    if report.slot_errors:
        parts.append(f"{len(report.slot_errors)} slot errors")
    parts.append(f"pass at {time.strftime('%H:%M:%S', time.localtime(report.now))} took {elapsed_seconds:.1f}s")
    return "; ".join(parts)


def _swap_authenticator(follower: Optional[Any], user: Optional[Any], settings: Settings) -> None:
    """Give `user` (responder or census) the Authenticator `follower` rebuilt, if the settings changed it."""
    if follower is not None and user is not None and follower.follow(settings):
        user.authenticator = follower.current


def main(argv: Optional[list[str]] = None) -> int:
    """The vacd command (vacd.daemoncli.main), under the entry point's name.

    setup.cfg's console script, the packaged /usr/sbin/vacd and `python -m vacd.daemon`
    all name vacd.daemon:main, as they did before the command line had a module of its own.
    """
    return daemoncli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
