"""The configuration as the reconcile loop reads it: anew at every pass, pipes from their cache.

Rules (behaviour reference §2.1; issue 8 item 6; issue 11 item 2):
- Read at every pass, as Vac 03 did; a bad reading raises, and the loop keeps the last good
  configuration (`last_good`) meanwhile.
- `current()` never waits for the network: vacuum pipes come from their cache, and due
  refreshes run on the pipe fetcher's own thread.
- Each configuration warning is logged once while it lasts, and "configuration reloaded" once
  per change.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from vacd.config import Config, load_config
from vacd.paths import Paths

log = logging.getLogger(__name__)


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
