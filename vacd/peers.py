"""The factory's view of its peers: resolve `[settings] factories`, run the census, make reports.

Each pass the factory calls `PeerCensus.run(settings)`: the names of the space's other
factories are resolved (A and AAAA, cached for their TTL), a machinetypes census runs
over UDP with a hard deadline, and `reports_from` turns what was heard into the
scheduler's `MachinetypeReport`s.

Rules:
- The local factory is never asked: its own reports are computed from its store by the
  factory and always included, so a factory whose peers are all silent still schedules
  on what it knows (Vac asked itself over loopback, §3.8).
- A name that stops resolving keeps its last addresses for `stale_grace_seconds` and is
  reported as stale; one that never resolved is reported as unresolved and skipped. A
  failed lookup is retried after `retry_after_failure_seconds`, not every pass, and one
  pass spends at most `budget_seconds` resolving, so a dead DNS server cannot stall passes.
- The census deadline defaults to udp_timeout_seconds / 5 (2 s): the census never
  takes longer than one of Vac's silent rounds (§3.7), where Vac took at least that.
- Peers the last censuses heard answer fast are remembered (`next_fast_peers`); a peer
  measured slow or found silent by two censuses in a row, or whose replies say it runs
  Vac 03, is asked at most Vac's 6 times per census (issue 9 item 5), so a Vac 03
  responder that forks per datagram is not flooded. A peer no census of this
  process has asked yet gets the fast retries: at 50 % loss, 6 queries miss a peer 18 % of
  the time, and a factory that starts must hear the space's aborts at its first census.
- `factories` entries must be the peers' own FQDNs (as in Vac, §3.7): a reply whose
  `factory` differs from the name asked is discarded by the census.
- The responder's trusted sources (the space's factory addresses, amplification rule 3b
  of vacquery/responder.py) come from `trusted_hosts_for(settings)`, which re-resolves
  every TRUSTED_REFRESH_SECONDS and when `factories` changes, census or not: a full or
  draining factory runs no census, yet must answer its Vac 03 peers in full (issue 9
  item 4; they were given 3 of 6 statuses, forever).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from typing import AbstractSet, Callable, Mapping, Optional, Sequence

import dns.exception
import dns.resolver

from vacd import MANAGER_VERSION
from vacd.config import FactoryAddress, Machinetype, Settings
from vacd.scheduler import MachinetypeReport
from vacquery.auth import Authenticator
from vacquery.client import Census, CensusResult, next_fast_peers
from vacquery.messages import MachinetypeStatus, MessageType
from vacquery.transport import InjectedLoss, CensusSockets, run_census

log = logging.getLogger(__name__)

MIN_TTL_SECONDS = 30
MAX_TTL_SECONDS = 3600
RETRY_AFTER_FAILURE_SECONDS = 30
STALE_GRACE_SECONDS = 6 * 3600
LOOKUP_LIFETIME_SECONDS = 2.0
RESOLVE_BUDGET_SECONDS = 3.0
# How often the responder's trusted sources are re-resolved when no census does it.
TRUSTED_REFRESH_SECONDS = 300.0


class LookupFailed(Exception):
    """A name could not be resolved now (no such name, timeout, no server)."""


# (name, "A" or "AAAA") -> (addresses, ttl seconds); raises LookupFailed.
Lookup = Callable[[str, str], tuple[tuple[str, ...], int]]


def dns_lookup(resolver: Optional[dns.resolver.Resolver] = None) -> Lookup:
    """A Lookup through dnspython (the system's resolv.conf unless a resolver is given)."""
    chosen = resolver if resolver is not None else dns.resolver.Resolver()

    def lookup(name: str, record_type: str) -> tuple[tuple[str, ...], int]:
        try:
            answer = chosen.resolve(name, record_type, raise_on_no_answer=False, lifetime=LOOKUP_LIFETIME_SECONDS)
        except dns.resolver.NXDOMAIN as error:
            raise LookupFailed(f"no such name {name}") from error
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.YXDOMAIN) as error:
            raise LookupFailed(f"lookup of {name} failed: {error.__class__.__name__}") from error
        if answer.rrset is None:
            return (), MIN_TTL_SECONDS
        return tuple(record.to_text() for record in answer.rrset), int(answer.rrset.ttl)

    return lookup


@dataclass(frozen=True)
class ResolvedPeer:
    """A factory name and where to reach it; `problem` says why it may be out of date."""

    name: str
    addresses: tuple[str, ...]
    is_stale: bool = False
    problem: Optional[str] = None


@dataclass
class _CacheEntry:
    addresses: tuple[str, ...]
    expires: float
    resolved_at: float
    retry_at: float = 0.0
    problem: Optional[str] = None


def _literal_address(name: str) -> Optional[str]:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


class PeerResolver:
    """Resolves factory names with a TTL cache that outlives DNS failures for a while."""

    def __init__(
        self,
        lookup: Optional[Lookup] = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        stale_grace_seconds: float = STALE_GRACE_SECONDS,
        retry_after_failure_seconds: float = RETRY_AFTER_FAILURE_SECONDS,
        budget_seconds: float = RESOLVE_BUDGET_SECONDS,
    ) -> None:
        self._lookup = lookup
        self._clock = clock
        self.stale_grace_seconds = stale_grace_seconds
        self.retry_after_failure_seconds = retry_after_failure_seconds
        self.budget_seconds = budget_seconds
        self._cache: dict[str, _CacheEntry] = {}

    def resolve(self, factories: Sequence[FactoryAddress]) -> list[ResolvedPeer]:
        started = self._clock()
        resolved = []
        for factory in factories:
            fixed = factory.address or _literal_address(factory.name)
            if fixed is not None:
                resolved.append(ResolvedPeer(factory.name, (fixed,)))
                continue
            in_budget = self._clock() - started < self.budget_seconds
            resolved.append(self._resolve_name(factory.name, in_budget))
        return resolved

    def _resolve_name(self, name: str, may_look_up: bool) -> ResolvedPeer:
        now = self._clock()
        entry = self._cache.get(name)
        if entry is not None and (now < entry.expires or now < entry.retry_at or not may_look_up):
            return self._from_cache(name, entry, now)
        if not may_look_up:
            return ResolvedPeer(name, (), problem="not resolved yet (resolution budget spent)")
        try:
            addresses, ttl = self._look_up(name)
        except LookupFailed as error:
            return self._failed(name, entry, now, str(error))
        ttl = min(max(ttl, MIN_TTL_SECONDS), MAX_TTL_SECONDS)
        if entry is not None and entry.problem is not None:
            log.info("factory name resolves again name=%s addresses=%s", name, ",".join(addresses))
        self._cache[name] = _CacheEntry(addresses, now + ttl, now)
        return ResolvedPeer(name, addresses)

    def _look_up(self, name: str) -> tuple[tuple[str, ...], int]:
        if self._lookup is None:
            self._lookup = dns_lookup()
        addresses: list[str] = []
        ttls: list[int] = []
        failures: list[str] = []
        for record_type in ("A", "AAAA"):
            try:
                found, ttl = self._lookup(name, record_type)
            except LookupFailed as error:
                failures.append(str(error))
                continue
            if found:
                addresses.extend(found)
                ttls.append(ttl)
        if not addresses:
            raise LookupFailed(failures[0] if failures else f"{name} has no A or AAAA record")
        return tuple(addresses), min(ttls)

    def _failed(self, name: str, entry: Optional[_CacheEntry], now: float, problem: str) -> ResolvedPeer:
        retry_at = now + self.retry_after_failure_seconds
        if entry is None:
            log.warning("cannot resolve factory name=%s problem=%s retry_in=%ss", name, problem,
                        self.retry_after_failure_seconds)
            self._cache[name] = _CacheEntry((), now, now, retry_at, problem)
            return ResolvedPeer(name, (), problem=problem)
        if entry.problem is None:
            log.warning("factory name stopped resolving name=%s problem=%s keeping=%s", name, problem,
                        ",".join(entry.addresses))
        entry.retry_at, entry.problem = retry_at, problem
        return self._from_cache(name, entry, now)

    def _from_cache(self, name: str, entry: _CacheEntry, now: float) -> ResolvedPeer:
        if entry.problem is None:
            return ResolvedPeer(name, entry.addresses)
        if entry.addresses and now - entry.resolved_at <= self.stale_grace_seconds:
            return ResolvedPeer(name, entry.addresses, is_stale=True, problem=entry.problem)
        return ResolvedPeer(name, (), is_stale=bool(entry.addresses), problem=entry.problem)


def reports_from(result: CensusResult) -> list[MachinetypeReport]:
    """The scheduler's view of every machinetype_status a census heard (§4.2)."""
    reports = []
    for factory in sorted(result.replies):
        for status in result.statuses(factory):
            if isinstance(status, MachinetypeStatus):
                reports.append(
                    MachinetypeReport(
                        factory=status.factory,
                        machinetype=status.machinetype,
                        running_hs06=status.running_hs06,
                        num_before_fizzle=status.num_before_fizzle,
                        shutdown_message=status.shutdown_message,
                        shutdown_time=status.shutdown_time,
                        shutdown_machine=status.shutdown_machine,
                        running_machines=status.running_machines,
                    )
                )
    return reports


def fast_retry_peers(fast: AbstractSet[str], measured: AbstractSet[str], names: Sequence[str]) -> frozenset[str]:
    """The peers a census may ask more than Vac's 6 times: the known-fast and the not yet measured."""
    return frozenset(fast) | frozenset(name.lower() for name in names if name.lower() not in measured)


def census_deadline_seconds(settings: Settings) -> float:
    """One of Vac's silent rounds (udp_timeout_seconds / 5, §3.7)."""
    return settings.udp_timeout_seconds / 5


def new_salt() -> str:
    """Vac's salt: base64 of 32 random bytes, fresh for each census (§3.7)."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


@dataclass(frozen=True)
class PeerCensusOutcome:
    """One pass's census: what was heard, as reports, and which peers could not be reached."""

    result: CensusResult
    reports: tuple[MachinetypeReport, ...]
    unresolved: tuple[str, ...]
    stale: tuple[str, ...]
    trusted_hosts: frozenset[str]


class PeerCensus:
    """Runs the factory's census each pass (blocking: call it from a worker thread)."""

    def __init__(
        self,
        resolver: PeerResolver,
        authenticator: Optional[Authenticator] = None,
        *,
        salt_source: Callable[[], str] = new_salt,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        client_name: str = "vacd-factory",
        loss: Optional[InjectedLoss] = None,
        trusted_refresh_seconds: float = TRUSTED_REFRESH_SECONDS,
    ) -> None:
        self.resolver = resolver
        self.trusted_refresh_seconds = trusted_refresh_seconds
        self.loss = loss
        self.authenticator = authenticator
        self._salt_source = salt_source
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._daemon_version = f"{MANAGER_VERSION} {client_name}"
        self._smoothed_rtt: Optional[float] = None
        self._silent: frozenset[str] = frozenset()
        self._limited: dict[str, str] = {}  # peers that limited their answers to us, and why
        # Peers heard answering within the retransmission ceiling: only they get more than
        # Vac's 6 queries a census (vacquery/client.py; issue 9 item 5).
        self._fast_peers: frozenset[str] = frozenset()
        # Of those, the ones the last census found silent or slow (a second time loses them).
        self._doubted_peers: frozenset[str] = frozenset()
        # Every peer a census of this process has asked (lower case): measured fast, slow or silent.
        self._measured_peers: frozenset[str] = frozenset()
        self.last_outcome: Optional[PeerCensusOutcome] = None
        # Addresses of the space's factories, for the responder's amplification rule 3b.
        self.trusted_hosts: frozenset[str] = frozenset()
        self._trusted_resolved_at: Optional[float] = None
        self._trusted_for: tuple[FactoryAddress, ...] = ()

    def trusted_hosts_for(self, settings: Settings) -> frozenset[str]:
        """The space's factory addresses, resolved afresh when due (call it after each pass).

        Due at the first call, `trusted_refresh_seconds` after the last resolution (by this
        or by a census), and whenever `factories` changed; otherwise the last set, at no cost.
        """
        now = self._monotonic()
        factories = tuple(settings.factories)
        if (self._trusted_resolved_at is not None and factories == self._trusted_for
                and now - self._trusted_resolved_at < self.trusted_refresh_seconds):
            return self.trusted_hosts
        self._set_trusted(self.resolver.resolve(settings.factories), factories, now)
        return self.trusted_hosts

    def _set_trusted(self, resolved: Sequence[ResolvedPeer], factories: tuple[FactoryAddress, ...], now: float) -> None:
        trusted = frozenset(address for peer in resolved for address in peer.addresses)
        if trusted != self.trusted_hosts:
            log.info("trusted factory addresses changed count=%d added=%s removed=%s", len(trusted),
                     ",".join(sorted(trusted - self.trusted_hosts)[:10]),
                     ",".join(sorted(self.trusted_hosts - trusted)[:10]))
        self.trusted_hosts = trusted
        self._trusted_resolved_at = now
        self._trusted_for = factories

    def peer_reports(
        self, settings: Settings, machinetypes: Mapping[str, Machinetype], now: int
    ) -> Sequence[MachinetypeReport]:
        """The factory's `PeerReports` hook: one census, its reports (local factory excluded)."""
        if not settings.factories:
            return ()  # a lone factory: nobody to ask, no sockets opened
        return self.run(settings).reports

    def run(
        self,
        settings: Settings,
        kind: MessageType = MessageType.MACHINETYPES_QUERY,
        deadline_seconds: Optional[float] = None,
    ) -> PeerCensusOutcome:
        """Resolve the peers, ask them with a deadline, and convert what was heard."""
        resolved = self.resolver.resolve(settings.factories)
        own_name = settings.factory_name.lower()
        peers = [peer for peer in resolved if peer.name.lower() != own_name and peer.addresses]
        unresolved = tuple(peer.name for peer in resolved if not peer.addresses)
        stale = tuple(peer.name for peer in resolved if peer.is_stale and peer.addresses)
        treated_fast = fast_retry_peers(self._fast_peers, self._measured_peers, [peer.name for peer in peers])
        census = Census(
            kind,
            settings.vac_space,
            [peer.name for peer in peers],
            self._monotonic(),
            deadline_seconds=census_deadline_seconds(settings) if deadline_seconds is None else deadline_seconds,
            salt=self._salt_source(),
            daemon_version=self._daemon_version,
            initial_rtt_seconds=self._smoothed_rtt,
            fast_peers=treated_fast,
        )
        with CensusSockets() as sockets:
            result = run_census(
                census,
                sockets,
                {peer.name.lower(): peer.addresses for peer in peers},
                port=settings.vacquery_port,
                authenticator=self.authenticator,
                monotonic=self._monotonic,
                wall_clock=self._wall_clock,
                loss=self.loss,
            )
        if result.smoothed_rtt_seconds is not None:
            self._smoothed_rtt = result.smoothed_rtt_seconds
        silent = frozenset(result.silent)
        # From what this census treated as fast, not only what earlier ones proved: a peer
        # first asked here was given the fast retransmissions and keeps them until a census
        # finds it silent or slow. Carrying only the proven ones left a peer whose first
        # reply was lost (half of them at 50 % loss) at Vac's 6 queries in every later
        # census, 96 % heard of 400 factories (issue 15 item 4).
        carried = next_fast_peers(treated_fast, result, self._doubted_peers)
        self._fast_peers, self._doubted_peers = carried.names, carried.doubted
        self._measured_peers = self._measured_peers | {name.lower() for name in result.factories}
        if silent != self._silent:
            # Logged on change only: an idle pass logs nothing (style guide, Logging).
            log.info("census silent peers changed silent=%s of=%s names=%s", len(silent), len(peers),
                     ",".join(sorted(silent)[:10]))
            self._silent = silent
        limited = dict(result.limited)
        if limited != self._limited:
            # A peer that does not list this factory's address answers it one status per
            # query (vacquery/responder.py): the census then misses machinetypes.
            if limited:
                log.warning("peers limited their answers to this factory names=%s reasons=%s (an unlisted "
                            "address: the peer's factories must list this factory's address, or use the site key)",
                            ",".join(sorted(limited)[:10]), ",".join(sorted(set(limited.values()))))
            else:
                log.info("no peer limits its answers to this factory any more")
            self._limited = limited
        self._set_trusted(resolved, tuple(settings.factories), self._monotonic())
        outcome = PeerCensusOutcome(result, tuple(reports_from(result)), unresolved, stale, self.trusted_hosts)
        self.last_outcome = outcome
        return outcome
