"""Every path vacd, vac and check-vacd read or write, under one optional root.

Rule: no other module spells an absolute path. `--prefix DIR` (or `VAC_PREFIX`) re-roots
them all, so tests and the demo never touch the real /etc, /run or /var/lib/vac. The
layout below the state directory is Vac 03's (behaviour reference §1.4) so admins' habits
and scripts keep working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PREFIX_ENVIRONMENT_VARIABLE = "VAC_PREFIX"


@dataclass(frozen=True)
class Paths:
    """The file system layout of one factory, optionally re-rooted under `prefix`."""

    prefix: Path = Path("/")
    # `vacd --check-config --config FILE`: FILE is read in place of /etc/vac.conf, as is (not
    # re-rooted), so a new vac.conf can be checked with the rest of the configuration before
    # it replaces the old one (Puppet's validate_cmd).
    main_config_file: Optional[Path] = None

    @classmethod
    def from_prefix(cls, prefix: Optional[str]) -> "Paths":
        """Paths under `prefix`, else under $VAC_PREFIX, else under /."""
        chosen = prefix or os.environ.get(PREFIX_ENVIRONMENT_VARIABLE) or "/"
        return cls(Path(chosen).absolute())

    def under_prefix(self, absolute_path: str) -> Path:
        """Re-root an absolute path (such as a configured file name) under the prefix."""
        return self.prefix / absolute_path.lstrip("/")

    # Configuration, read in this order (§2.1, acceptance 1).
    @property
    def config_dir(self) -> Path:
        return self.under_prefix("/etc/vac.d")

    @property
    def config_file(self) -> Path:
        if self.main_config_file is not None:
            return self.main_config_file
        return self.under_prefix("/etc/vac.conf")

    @property
    def run_config_files(self) -> tuple[Path, ...]:
        # /var/run is a link to /run on current systems; reading both keeps old sites working
        # and reading the same file twice is harmless.
        return (self.under_prefix("/run/vac.conf"), self.under_prefix("/var/run/vac.conf"))

    @property
    def certificates_dir(self) -> Path:
        return self.under_prefix("/etc/grid-security/certificates")

    # State (§1.4).
    @property
    def state_dir(self) -> Path:
        return self.under_prefix("/var/lib/vac")

    @property
    def slots_dir(self) -> Path:
        return self.state_dir / "slots"

    @property
    def machines_dir(self) -> Path:
        return self.state_dir / "machines"

    @property
    def finishes_dir(self) -> Path:
        return self.state_dir / "finishes"

    @property
    def machinetypes_dir(self) -> Path:
        return self.state_dir / "machinetypes"

    @property
    def imagecache_dir(self) -> Path:
        return self.state_dir / "imagecache"

    @property
    def pipescache_dir(self) -> Path:
        return self.state_dir / "pipescache"

    @property
    def tmp_dir(self) -> Path:
        return self.state_dir / "tmp"

    @property
    def apel_outgoing_dir(self) -> Path:
        return self.state_dir / "apel-outgoing"

    @property
    def apel_archive_dir(self) -> Path:
        return self.state_dir / "apel-archive"

    @property
    def apel_held_dir(self) -> Path:
        """Why an archived APEL record was not sent: `apel-held/YYYYMMDD/<name>` beside `apel-archive/`."""
        return self.state_dir / "apel-held"

    @property
    def space_census_dir(self) -> Path:
        return self.state_dir / "space-census"

    @property
    def dashboard_history_file(self) -> Path:
        """The dashboard's day of samples, a fixed-size ring (vacd/dashboard/history.py)."""
        return self.state_dir / "dashboard-history"

    @property
    def counts_file(self) -> Path:
        return self.state_dir / "counts"

    @property
    def factory_error_file(self) -> Path:
        return self.state_dir / "factory-error"

    @property
    def status_file(self) -> Path:
        """JSON snapshot of this factory (slots, backoffs, heartbeats) that `vac status` reads."""
        return self.state_dir / "status.json"

    @property
    def drain_file(self) -> Path:
        """Present while `vac drain` is in force: creation stops without editing /etc."""
        return self.state_dir / "draining"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "vacd.pid"

    def heartbeat_file(self, part: str) -> Path:
        """`factory-heartbeat`, `responder-heartbeat`, `mjf-heartbeat`, `metadata-heartbeat` (§1.2)."""
        return self.state_dir / f"{part}-heartbeat"

    # Logs (§1.2: /var/log/vacd-factory and friends; one process now, one file).
    @property
    def log_dir(self) -> Path:
        return self.under_prefix("/var/log")

    @property
    def log_file(self) -> Path:
        return self.log_dir / "vacd"

    def ensure_state_dirs(self) -> None:
        """Create the state directory tree (the RPM does this on a real install)."""
        for directory in (
            self.state_dir,
            self.slots_dir,
            self.machines_dir,
            self.finishes_dir,
            self.machinetypes_dir,
            self.imagecache_dir,
            self.pipescache_dir,
            self.tmp_dir,
            self.apel_outgoing_dir,
            self.apel_archive_dir,
            self.log_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
