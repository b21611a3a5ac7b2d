"""`check-vacd`: the Nagios/NRPE plugin that reads a factory's heartbeats, error and counts files.

Rules (behaviour reference §7.4, acceptance 41; Vac 03 never warned, §11):
- Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, with one line of text and performance data
  after `|`, as the Nagios plugin guidelines ask.
- CRITICAL when the factory or responder heartbeat is missing or older than the critical
  age, when the metadata or MJF heartbeat is older than it, or when `factory-error`
  exists (its first line is shown). WARNING when any heartbeat is older than the warning
  age, or the metadata or MJF heartbeat is missing. UNKNOWN when the state directory holds
  nothing to judge by, or the arguments are wrong.
- Vac's command line still works: `check-vacd 600` sets the critical age; `-w`/`-c` set
  both ages (the warning age defaults to half the critical one). When all is well the
  text is Vac's `Factory + responder ok`; every message ends with Vac's
  ` (running/slots runningProcs/totalProcs)` from `counts` when it is readable.
- A heartbeat file holds the Unix time of the beat; a file that does not parse is judged
  by its mtime (Vac 03 used ctimes, anti-pattern 3).
- The judgement is a pure function of what was read and `now`; `main` does the reading.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import NoReturn, Optional, Sequence

from vacd.atomicfile import read_text_or_none
from vacd.paths import Paths

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_WORDS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
# Vac 03's default timeout (§7.4) is the critical age.
DEFAULT_CRITICAL_SECONDS = 600.0
# The two parts without which the factory neither creates machines nor answers its peers.
ESSENTIAL_PARTS = ("factory", "responder")
GUEST_PARTS = ("metadata", "mjf")
PART_NAMES = {"factory": "Factory", "responder": "Responder", "metadata": "Metadata", "mjf": "MJF"}


@dataclass(frozen=True)
class Counts:
    """The `counts` file: `running slots runningProcs totalProcs hs06` (§1.3 step 12)."""

    running: int
    slots: int
    running_processors: int
    total_processors: int
    running_hs06: float

    @classmethod
    def parse(cls, raw_text: Optional[str]) -> Optional["Counts"]:
        parts = (raw_text or "").split()
        if len(parts) < 4:
            return None
        try:
            hs06 = float(parts[4]) if len(parts) > 4 else 0.0
            return cls(int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), hs06)
        except ValueError:
            return None


@dataclass(frozen=True)
class FactoryFiles:
    """What check-vacd read: heartbeat times by part (None = missing), error, counts."""

    heartbeats: dict[str, Optional[float]]
    factory_error: Optional[str]
    counts: Optional[Counts]
    state_dir_exists: bool


@dataclass(frozen=True)
class CheckResult:
    status: int
    text: str


def judge(files: FactoryFiles, now: float, warning_seconds: float, critical_seconds: float) -> CheckResult:
    """The plugin's verdict and output line for what was read at `now`."""
    if not files.state_dir_exists or (
        all(value is None for value in files.heartbeats.values()) and files.counts is None and files.factory_error is None
    ):
        return CheckResult(UNKNOWN, "UNKNOWN: no vacd state to check (is vacd installed and started?)")

    problems: list[tuple[int, str]] = []
    if files.factory_error is not None:
        first_line = (files.factory_error.strip().splitlines() or ["(empty)"])[0]
        problems.append((CRITICAL, f"factory-error: {first_line}"))
    for part, beat_time in files.heartbeats.items():
        if beat_time is None:
            status = CRITICAL if part in ESSENTIAL_PARTS else WARNING
            problems.append((status, f"{PART_NAMES.get(part, part)} heartbeat missing"))
            continue
        age = now - beat_time
        if age > critical_seconds:
            problems.append((CRITICAL, f"{PART_NAMES.get(part, part)} heartbeat {age / 3600:.2f} hours old"))
        elif age > warning_seconds:
            problems.append((WARNING, f"{PART_NAMES.get(part, part)} heartbeat {age:.0f} seconds old"))

    status = max((problem_status for problem_status, _ in problems), default=OK)
    if status == OK:
        message = "Factory + responder ok"
    else:
        message = "; ".join(text for problem_status, text in problems if problem_status == status)
        lesser = [text for problem_status, text in problems if problem_status != status]
        if lesser:
            message += "; also " + "; ".join(lesser)
    if files.counts is not None:
        counts = files.counts
        message += f" ({counts.running}/{counts.slots} {counts.running_processors}/{counts.total_processors})"
    return CheckResult(status, message + " | " + performance_data(files, now, warning_seconds, critical_seconds))


def performance_data(files: FactoryFiles, now: float, warning_seconds: float, critical_seconds: float) -> str:
    """`running=3;;;0;8 processors=5;;;0;8 hs06=50.00 factory_age=12s;300;600 …`"""
    fields = []
    if files.counts is not None:
        counts = files.counts
        fields += [
            f"running={counts.running};;;0;{counts.slots}",
            f"processors={counts.running_processors};;;0;{counts.total_processors}",
            f"hs06={counts.running_hs06:.2f}",
        ]
    for part, beat_time in files.heartbeats.items():
        if beat_time is not None:
            fields.append(f"{part}_age={max(0.0, now - beat_time):.0f}s;{warning_seconds:.0f};{critical_seconds:.0f};0")
    return " ".join(fields)


def read_files(paths: Paths) -> FactoryFiles:
    return FactoryFiles(
        heartbeats={part: read_heartbeat(paths, part) for part in (*ESSENTIAL_PARTS, *GUEST_PARTS)},
        factory_error=read_text_or_none(paths.factory_error_file),
        counts=Counts.parse(read_text_or_none(paths.counts_file)),
        state_dir_exists=paths.state_dir.is_dir(),
    )


def read_heartbeat(paths: Paths, part: str) -> Optional[float]:
    path = paths.heartbeat_file(part)
    try:
        raw_text = path.read_text()
        return float(raw_text.split()[0])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        try:
            return path.stat().st_mtime
        except OSError:
            return None


class _PluginArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse exits 2, which Nagios reads as CRITICAL; a usage error is UNKNOWN.
        self.print_usage(sys.stderr)
        print(f"UNKNOWN: {message}")
        sys.exit(UNKNOWN)


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = _PluginArgumentParser(
        prog="check-vacd", description="Nagios plugin: check a vacd factory's heartbeats and errors."
    )
    parser.add_argument("--prefix", help="root of the factory's files (default $VAC_PREFIX or /)")
    parser.add_argument("-w", "--warning", type=float, help="warning age of a heartbeat in seconds (default: critical / 2)")
    parser.add_argument("-c", "--critical", type=float, help=f"critical age in seconds (default {DEFAULT_CRITICAL_SECONDS:.0f})")
    parser.add_argument("timeout", nargs="?", type=float, help="critical age in seconds, Vac 03's positional form")
    arguments = parser.parse_args(argv)
    critical = arguments.critical or arguments.timeout or DEFAULT_CRITICAL_SECONDS
    warning = arguments.warning if arguments.warning is not None else critical / 2
    if critical <= 0 or warning < 0 or warning > critical:
        parser.error("need 0 <= warning <= critical and critical > 0")
    arguments.critical, arguments.warning = critical, warning
    return arguments


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = parse_arguments(argv)
    try:
        files = read_files(Paths.from_prefix(arguments.prefix))
    except OSError as error:
        print(f"UNKNOWN: cannot read vacd state: {error}")
        return UNKNOWN
    result = judge(files, time.time(), arguments.warning, arguments.critical)
    print(result.text)
    return result.status


if __name__ == "__main__":
    sys.exit(main())
