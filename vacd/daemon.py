"""`vacd`: wire the factory's parts together in one process and run them until told to stop.

Rules (design.md rule 6): one process. The main thread runs the reconcile loop; blocking
backend work runs on a bounded thread pool; the guest HTTP servers run on an asyncio event
loop in their own thread (`vacd-guestapi`) and the VacQuery responder on another
(`vacd-vacquery`), so a guest flooding its servers cannot delay the answers peers and
`vac` wait for (issue 11 item 3); the metrics endpoint has its own thread. A stuck part
does not stall the others, and each part stamps a heartbeat: the responder's from its own
loop answering a ping, the guest servers' from their supervisor on theirs. Only this module configures
logging and signal handlers; nothing runs at import time.

Stopping vacd (SIGTERM, SIGINT) never stops machines: they keep running and the next start
adopts them (§10.2). SIGHUP re-opens the log file and re-reads the configuration at once;
SIGUSR1 only wakes the loop (`vac drain` uses it).

Under systemd (`Type=notify`, vacd.service) the loop tells the service manager what it is
doing (vacd.sdnotify): READY=1 after the first pass (complete or not: faults show in its
STATUS= line and status.json), a STATUS= line after every pass, WATCHDOG=1 from the loop itself after each pass and while it waits for the next (so
a pass that never returns stops the pings and systemd restarts vacd), STOPPING=1 at once on
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TextIO

from vacd import MANAGER_VERSION, VERSION
from vacd.config import Config, Machinetype, Settings, effective_config_text, host_name, load_config
from vacd.errors import ConfigErrors, VacError, VacqueryError
from vacd.eventloop import ASYNCIO, AUTO, EVENT_LOOP_VARIABLE, EventLoopUnavailable, chosen_kind, new_event_loop
from vacd.gcfreeze import freeze_startup_heap
from vacd.clock import ClockJumpWatch, SteadyClock
from vacd.factory import Factory, FactoryHooks, PassReport
from vacd.fdlimit import raise_fd_limit
from vacd.paths import Paths
from vacd.sdnotify import ServiceNotifier
from vacd.status import pass_completed, publish_status, status_document, write_heartbeat
from vacd.store import MachineRecord, Store

log = logging.getLogger(__name__)

# Budget of one pass before it is logged as slow (style.md, kubelet's housekeeping budget).
PASS_BUDGET_SECONDS = 10.0
# After a pass that raised, the loop waits this long, doubling up to the cap (the kubelet's
# runtime-error backoff, 100 ms to 5 s, stretched: a pass here touches disks and libvirt).
PASS_ERROR_FIRST_BACKOFF_SECONDS = 1.0
PASS_ERROR_MAX_BACKOFF_SECONDS = 60.0
# Where vacd remembers the factory name it last ran as (a rename strands machines, item 7).
FACTORY_NAME_FILE = "factory-name"
# A usable guest network is checked again after this long (Vac 03 checked it once a 60 s
# cycle, §1.3 step 8); an unusable one every pass (NetworkCheckSchedule).
NETWORK_CHECK_SECONDS = 60.0


class NetworkCheckSchedule:
    """When the loop checks (and mends) the guest network: not every pass (issue 15 item 2).

    A check opens a libvirt connection, reads and compares the network's XML, asks netlink
    for the bridge's addresses and reads /etc/hosts: with events waking the loop, that was
    done several times a second on a busy node, for a network that changes only when an
    admin or libvirtd changes it. A check is due:
    - at the first pass, and whenever what the network is made from changes (libvirt URI,
      factory name, slot count, forward_dev: a reload);
    - every pass while the last check failed (the fault holds creation until it clears);
    - after a creation failed since the last check (a network gone under vacd is the
      first thing to rule out, and creation backs off meanwhile);
    - NETWORK_CHECK_SECONDS after the last good check otherwise.
    Time is the caller's steady clock, passed in.
    """

    def __init__(self, interval_seconds: float = NETWORK_CHECK_SECONDS) -> None:
        self.interval_seconds = interval_seconds
        # (what it was made from, when, creation failures then) of the last good check.
        self._last_good: Optional[tuple[tuple[object, ...], float, int]] = None

    @staticmethod
    def made_from(settings: Settings) -> tuple[object, ...]:
        return (settings.libvirt_uri, settings.factory_name, settings.num_machine_slots, settings.forward_dev)

    def due(self, settings: Settings, now: float, creation_failures: int) -> bool:
        if self._last_good is None:
            return True
        made_from, checked_at, failures_then = self._last_good
        return (
            made_from != self.made_from(settings)
            or creation_failures != failures_then
            or not 0 <= now - checked_at < self.interval_seconds
        )

    def checked(self, settings: Settings, now: float, creation_failures: int, usable: bool) -> None:
        self._last_good = (self.made_from(settings), now, creation_failures) if usable else None


class ReloadingConfig:
    """Reads the configuration at every pass (as Vac 03 did, §2.1); a bad reading raises.

    The host's name and processor count are read once at start, not at every pass. Vacuum
    pipes come from their cache: `current()` never waits for the network (issue 8 item 6);
    refreshes that are due run on the pipe fetcher's thread, and each one that completes
    calls `on_pipes_refreshed` (the factory's wake) so the new machinetypes are seen at once.
    """

    def __init__(self, paths: Paths, initial: Config, host_fqdn: str, host_cpu_count: int, *,
                 on_pipes_refreshed: Optional[Callable[[], None]] = None) -> None:
        from vacd.pipefetch import PipeFetcher

        self.paths = paths
        self.pipes = PipeFetcher(paths, on_refreshed=on_pipes_refreshed)
        self.last_good = initial
        self.host_fqdn = host_fqdn
        self.host_cpu_count = host_cpu_count
        self._reported_warnings: set[str] = set()

    def current(self) -> Config:
        config = load_config(self.paths, host_fqdn=self.host_fqdn, host_cpu_count=self.host_cpu_count)
        # Only the factory refreshes pipes (§8), at most once per cache_seconds, in the background.
        config = self.pipes.apply(config, may_fetch=True)
        for warning in config.warnings:
            if warning not in self._reported_warnings:
                log.warning("configuration: %s", warning)
        # Only the current warnings are remembered: a pipe whose every fetch says something new
        # must not grow this set for as long as vacd runs (issue 11 item 2).
        self._reported_warnings = set(config.warnings)
        if config != self.last_good:
            log.info("configuration reloaded sources=%s", ",".join(str(path) for path in config.sources))
        self.last_good = config
        return config

    def close(self) -> None:
        """Stop refreshing pipes (a fetch in progress is cut); for an orderly stop."""
        self.pipes.close()


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


class ServiceLoop:
    """An asyncio event loop in its own thread, for one network part (guest API or VacQuery).

    `kind` is `asyncio` or `uvloop` (vacd.eventloop): the guest servers take uvloop where it
    is installed; the responder, a few datagrams a second, keeps asyncio's own.
    """

    def __init__(self, name: str, kind: str = ASYNCIO) -> None:
        self.kind = kind
        self.loop = new_event_loop(kind)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def is_responsive(self, timeout_seconds: float = 5.0) -> bool:
        """Whether the event loop runs a trivial task within the timeout (a stuck part would not)."""

        async def ping() -> bool:
            return True

        try:
            return bool(self.call(ping(), timeout_seconds))
        except Exception:  # boundary: a stuck or dead loop is what this detects
            return False

    def run_soon(self, function: Callable[[], object]) -> None:
        """Run `function` on the loop's thread and wait for it (asyncio objects are not thread-safe)."""

        async def run() -> None:
            function()

        self.call(run())

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


class StartupError(VacError):
    """vacd cannot start: the message says what to fix."""


class PidFile:
    """An flock'ed pid file: a second vacd on the same state directory refuses to start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: Optional[TextIO] = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip()
            handle.close()
            raise SystemExit(f"vacd: another vacd (pid {other or 'unknown'}) holds {self.path}")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.handle.close()
            self.handle = None


class Daemon:
    """The running vacd: builds every part from the configuration and runs the loop."""

    def __init__(self, paths: Paths, config: Config, host_fqdn: str, host_cpu_count: int, *,
                 notifier: Optional[ServiceNotifier] = None) -> None:
        self.paths = paths
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
        self.guest_api: Optional[Any] = None
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
        from vacd.guestapi.linkidentity import LinkIdentity
        from vacd.guestapi.server import GuestApiServer
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
        self._refuse_busy_ports(settings)
        try:
            guest_loop_kind = chosen_kind()
        except EventLoopUnavailable as error:
            raise StartupError(f"{error} (vacd stopped before touching the guest network)") from error
        log.info("guest servers' event loop: %s (%s=%s)", guest_loop_kind, EVENT_LOOP_VARIABLE,
                 os.environ.get(EVENT_LOOP_VARIABLE) or AUTO)
        self._refuse_missing_volume_group(settings)
        self._remove_leftover_volumes(settings, store)
        self._ensure_network_at_start(settings)
        warn_if_factory_renamed(self.paths, settings.factory_name)
        config_source = ReloadingConfig(self.paths, self.config, self.host_fqdn, self.host_cpu_count)
        # A sparse disk is made only where all it may grow to leaves the kept minimum free (issue 13).
        # Each VM slot has its own tap on the guest bridge, bound to clean-traffic once
        # (vacd.backends.slottaps), where libvirt can; else <filterref> per domain.
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
                self.link_identity = LinkIdentity(BRIDGE_NAME)
                self.guest_api = GuestApiServer(self.paths, store, lambda: config_source.last_good.settings,
                                                port=settings.metadata_port, clock=self.clock,
                                                link_check=self.link_identity.confirms_slot)
                guest_services.call(self.guest_api.start())
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

    def _stop_services(self) -> None:
        """Stop the guest servers and the responder, each on its own loop, then both loops."""
        if self.guest_services is not None:
            if self.guest_api is not None:
                try:
                    self.guest_services.call(self.guest_api.stop())
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

    def _refuse_busy_ports(self, settings: Settings) -> None:
        """Stop start-up, naming each port and its holder, if any port vacd listens on is taken.

        A Vac 03 daemon still running is refused too, whatever its ports: two factories on one
        state directory destroy each other's machines as zombies (issue 10 item 1).
        """
        from vacd.hostcheck import vac03_daemons_running
        from vacd.hostports import busy_ports

        problems = vac03_daemons_running(self.paths) + busy_ports(settings)
        if problems:
            raise StartupError("; ".join(problems) + " (vacd stopped before touching the guest network, "
                               "/etc/hosts or any domain)")

    def _refuse_missing_volume_group(self, settings: Settings) -> None:
        """Stop start-up naming the volume_group if it is not on this host (§2.1, issue 13)."""
        from vacd.lvm import LogicalVolumes
        from vacd.startupcheck import volume_group_problem

        problem = volume_group_problem(settings, LogicalVolumes())
        if problem is not None:
            raise StartupError(problem + " (vacd stopped before touching the guest network, /etc/hosts or any domain)")
        if settings.volume_group is not None:
            log.info("machines' disks are logical volumes in volume_group=%s", settings.volume_group)

    def _remove_leftover_volumes(self, settings: Settings, store: Store) -> None:
        """Remove this factory's machines' volumes that no live record has (Appendix A's zombie sweep).

        At start nothing is being created, so a volume without a live record is left by a
        vacd killed between lvcreate and the domain's start, or by a machine finalised while
        its removal failed. One still open (a Vac 03 machine left running) is kept by lvm2.
        """
        from vacd.lvm import LogicalVolumes, LvmError
        from vacd.startup_cleanup import live_machine_names

        if settings.volume_group is None:
            return
        try:
            removed = LogicalVolumes().remove_leftovers(settings.volume_group, settings.factory_name,
                                                        live_machine_names(store))
        except LvmError as error:
            log.warning("left-over logical volumes not looked for error=%s: each slot's next creation replaces its own",
                        error)
            return
        if removed:
            log.info("removed left-over logical volumes vg=%s names=%s", settings.volume_group, ",".join(removed))

    def _ensure_network_at_start(self, settings: Settings) -> None:
        """Make the guest network as wanted, replacing it only if no guest is on it.

        Raises:
            StartupError: it must be replaced to serve the slots and guests are on it
                (vacd.network.NetworkRefused): the message says why and what to do.
        """
        from vacd.network import NetworkRefused, ensure_network

        try:
            ensure_network(settings.libvirt_uri, self.paths, settings, may_replace=True)
        except NetworkRefused as error:
            raise StartupError(str(error)) from error
        except VacError as error:
            # libvirt down at boot, say: the loop retries every pass and shows the fault meanwhile.
            log.error("guest network unusable, no machine created until it is error=%s", error)

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
        from vacd.accounting import write_apel_record
        from vacd.imagecache import ImageCache
        from vacd.imageeviction import mark_image_used
        from vacd.guestapi.contextualise import prepare_machine_dir
        from vacd.lvm import LogicalVolumes
        from vacd.observations import GuestObservations
        from vacd.qemuaccess import check_readable_by_qemu, host_qemu_identity

        paths = self.paths

        def contextualise(settings: Settings, machinetype: Machinetype, record: MachineRecord, now: int) -> None:
            prepare_machine_dir(paths, settings, machinetype, record, Store(paths).machine_dir(record), now=now)

        def account(settings: Settings, machinetype: Optional[Machinetype], record: Any, finish: Any) -> None:
            write_apel_record(paths, settings, machinetype, record, finish)

        def count_creation(record: Any, seconds: float, ok: bool) -> None:
            if self.metrics is not None:
                self.metrics.creation_finished(record.machinetype, seconds, ok)
            if self.dashboard is not None:
                self.dashboard.creation_finished(ok)

        images = ImageCache(paths)
        self.images = images

        def fetch_image(url: str) -> Path:
            """The cached image, stamped as used now for the eviction rule (vacd/imageeviction.py)."""
            path = images.fetch(url)
            mark_image_used(path, time.time())
            return path

        def prefetch_images(urls: Sequence[str], public_only: bool) -> "Future[dict[str, Path]]":
            """Downloads on the image pool; each image is stamped as used when it is there."""
            downloads = images.prefetch(urls, public_only=public_only)

            def stamp(done: "Future[dict[str, Path]]") -> None:
                if not done.cancelled() and done.exception() is None:
                    for path in done.result().values():
                        mark_image_used(path, time.time())

            downloads.add_done_callback(stamp)
            return downloads

        # Who QEMU runs as is read once: machine_spec checks each file against it under
        # qemu:///system (issue 8 item 12).
        qemu_identity = host_qemu_identity()

        def qemu_access(path: Path) -> None:
            if qemu_identity is not None:
                check_readable_by_qemu(path, qemu_identity)

        logical_volumes = LogicalVolumes()

        def remove_volume(settings: Settings, machinetype: Any, record: Any, finish: Any) -> None:
            # Vac 03 removed a machine's logical volume when it ended (§1.7). Finalising runs
            # once the machine is gone and before its slot is free, so the volume is closed
            # and no new machine of the slot can have made one yet. A failure is logged by
            # the factory; the slot's next creation removes the volume before making its own.
            if settings.volume_group is not None:
                logical_volumes.remove(settings.volume_group, record.name)

        # Heartbeat-file and outcome times, and lowered MJF shutdown times: the one collaborator
        # the simulator and the tests wire too (issue 9 item 1).
        return GuestObservations().install(FactoryHooks(
            fetch_image=fetch_image,
            prefetch_images=prefetch_images,
            qemu_access=qemu_access,
            account=account,
            on_created=[count_creation],
            creation_phase=self._observe_creation_phase,
            on_finished=[remove_volume],
            contextualise=contextualise,
        ))

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
                delay = min(PASS_ERROR_MAX_BACKOFF_SECONDS,
                            PASS_ERROR_FIRST_BACKOFF_SECONDS * 2 ** min(self.pass_errors_in_a_row - 1, 10))
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


def warn_if_factory_renamed(paths: Paths, factory_name: str) -> None:
    """A factory name that differs from last start is a loud warning (item 7), then remembered."""
    from vacd.atomicfile import read_text_or_none, write_atomic

    remembered = paths.state_dir / FACTORY_NAME_FILE
    try:
        previous = (read_text_or_none(remembered) or "").strip()
        if previous and previous != factory_name:
            log.warning("factory name changed from %s to %s since the last start: machines named for %s are "
                        "policed, finalised and accounted until they are gone, and their slots are not refilled",
                        previous, factory_name, previous)
        if previous != factory_name:
            write_atomic(remembered, factory_name + "\n")
    except OSError as error:
        log.warning("cannot remember the factory name in %s error=%s", remembered, error)


def check_config(paths: Paths, *, logs_to_stderr: bool = False) -> int:
    """`vacd --check-config`: print the effective configuration and exit 0, or every error and exit 1.

    Besides the configuration, what start-up needs is checked (vacd.startupcheck): key files,
    the VacQuery and metrics ports, the log file. vacd.service runs this as ExecStartPre=.
    """
    try:
        config = load_config(paths)
    except ConfigErrors as errors:
        for problem in errors.problems:
            print(problem, file=sys.stderr)
        return 1
    from vacd.pipefetch import PipeFetcher

    # Pipe machinetypes as the factory last cached them; --check-config never fetches.
    config = PipeFetcher(paths).apply(config, may_fetch=False)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    from vacd.qemuaccess import config_access_warnings, host_qemu_identity

    # A file QEMU cannot open fails every creation of its machinetype (issue 8 item 12).
    identity = host_qemu_identity()
    for warning in config_access_warnings(config, identity) if identity is not None else []:
        print(f"warning: {warning}", file=sys.stderr)
    from vacd.startupcheck import startup_findings

    findings = startup_findings(paths, config.settings, logs_to_stderr=logs_to_stderr)
    for warning in findings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if findings.errors:
        for startup_problem in findings.errors:
            print(startup_problem, file=sys.stderr)
        print("vacd: the configuration is valid but vacd cannot start: fix the above", file=sys.stderr)
        return 1
    sys.stdout.write(effective_config_text(config))
    return 0


def check_host_command(paths: Paths) -> int:
    """`vacd --check-host`: what starting here would do (Vac 03's machines, ports); exit 0 if vacd can start."""
    try:
        config = load_config(paths)
    except ConfigErrors as errors:
        for problem in errors.problems:
            print(problem, file=sys.stderr)
        print("vacd must not start yet: the configuration has errors", file=sys.stderr)
        return 1
    from vacd.hostcheck import check_host, print_host_check

    result = check_host(paths, config.settings)
    print_host_check(result, config.settings)
    return 0 if result.can_start else 1


def parse_arguments(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vacd", description="The vac factory daemon.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument("--prefix", help="re-root every path vacd reads or writes under this directory "
                        "(default: $VAC_PREFIX or /)")
    parser.add_argument("--check-config", "-t", action="store_true",
                        help="check the configuration and what start-up needs (key files, ports, log file); "
                        "print the effective configuration and exit 0, or the errors and exit 1")
    parser.add_argument("--check-host", action="store_true",
                        help="say what starting vacd on this host would do, changing nothing: Vac 03's daemons "
                        "and machines (adopted, or left running and why), the ports vacd needs; exit 0 if vacd "
                        "can start, 1 if not")
    parser.add_argument("--config", metavar="FILE",
                        help="with --check-config: read FILE instead of /etc/vac.conf, to check a new vac.conf "
                        "with the rest of the configuration before it is put in place")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--stderr", action="store_true", help="log to standard error instead of the configured log")
    arguments = parser.parse_args(argv)
    if arguments.config is not None and not arguments.check_config:
        # A running vacd always reads /etc/vac.conf, like `vac` and check-vacd do.
        parser.error("--config is only for --check-config")
    return arguments


def main(argv: Optional[list[str]] = None) -> int:
    arguments = parse_arguments(argv)
    paths = Paths.from_prefix(arguments.prefix)
    if arguments.check_config:
        if arguments.config is not None:
            paths = dataclasses.replace(paths, main_config_file=Path(arguments.config).absolute())
        return check_config(paths, logs_to_stderr=arguments.stderr)
    if arguments.check_host:
        return check_host_command(paths)
    host_fqdn, host_cpu_count = host_name(), os.cpu_count() or 1
    try:
        config = load_config(paths, host_fqdn=host_fqdn, host_cpu_count=host_cpu_count)
    except ConfigErrors as errors:
        for problem in errors.problems:
            print(problem, file=sys.stderr)
        print("vacd: not started: the configuration has errors", file=sys.stderr)
        return 1
    from vacd.logconfig import configure_logging, reopen_logs

    paths.ensure_state_dirs()
    destination = "stderr" if arguments.stderr else config.settings.log_destination
    configure_logging(destination, paths.log_file, getattr(logging, arguments.log_level))
    # Before any part opens sockets: the guest API's connection cap is derived from the
    # limit (issue 8 item 11: 1,100 idle guests exhausted 1,024 descriptors).
    raise_fd_limit()
    pid_file = PidFile(paths.pid_file)
    pid_file.acquire()
    # systemd's $NOTIFY_SOCKET (Type=notify, WatchdogSec=); without it the notifier is silent.
    notifier = ServiceNotifier.from_environment()
    daemon = Daemon(paths, config, host_fqdn, host_cpu_count, notifier=notifier)

    def on_hangup(*_: object) -> None:
        reopen_logs()
        if daemon.factory is not None:
            daemon.factory.wake("SIGHUP")

    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, on_hangup)
    signal.signal(signal.SIGUSR1, lambda *_: daemon.factory.wake("SIGUSR1") if daemon.factory else None)
    try:
        return daemon.run()
    except (VacError, VacqueryError) as error:  # VacqueryError: an unreadable vacquery_key_file
        log.error("vacd stopped: %s", error)
        print(f"vacd: {error}", file=sys.stderr)
        notifier.status(f"not started: {error}")
        return 1
    finally:
        pid_file.release()


if __name__ == "__main__":
    sys.exit(main())
