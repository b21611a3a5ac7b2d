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
  by its mtime (Vac 03 used ctimes, anti-pattern 3). The factory heartbeat is stamped only
  by a pass that completed (a usable configuration and a listing of the machines), so its
  age is "no pass completed for so long"; the `loop` heartbeat (every iteration) only
  tells a stuck loop from one whose passes fail.
- Faults in status.json (issue 8 item 8): a configuration fault is CRITICAL at once (the
  factory creates nothing until it is fixed); a listing fault is WARNING, CRITICAL once it
  is older than the critical age (nothing is policed without a listing); a disk fault, any
  other fault and per-slot errors are WARNING (the rest of the factory works). Each message
  names the problem's first line and since when (UTC).
- The judgement is a pure function of what was read and `now`; `main` does the reading.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn, Optional, Sequence

from vacd import VERSION
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
class FaultSeen:
    """A factory-wide fault as status.json gives it (`since` None when it gives none)."""

    kind: str
    message: str
    since: Optional[float]


@dataclass(frozen=True)
class SlotErrorSeen:
    """A per-slot error as status.json gives it."""

    name: str
    step: str
    error: str
    since: Optional[float]
    count: int
    retry_at: Optional[float]


@dataclass(frozen=True)
class StatusFaults:
    """What status.json says is wrong; `unreadable` says why it could not be read, if so."""

    faults: tuple[FaultSeen, ...] = ()
    slot_errors: tuple[SlotErrorSeen, ...] = ()
    unreadable: Optional[str] = None

    @classmethod
    def parse(cls, raw_text: Optional[str]) -> Optional["StatusFaults"]:
        """The faults of a status.json text; None when there is no file (older vacd, not started)."""
        if raw_text is None:
            return None
        try:
            document = json.loads(raw_text)
        except ValueError as error:
            return cls(unreadable=f"not JSON: {error}")
        if not isinstance(document, dict):
            return cls(unreadable="not a JSON object")
        faults = [
            FaultSeen(str(entry.get("kind") or "unknown"), str(entry.get("message") or ""), _time_or_none(entry.get("since")))
            for entry in _objects(document.get("faults"))
        ]
        kinds = {fault.kind for fault in faults}
        # The older keys, from a factory that sets them without a Fault (kept for compatibility).
        if document.get("config_error") and "config" not in kinds:
            faults.insert(0, FaultSeen("config", str(document["config_error"]), None))
        if document.get("observe_error") and "listing" not in kinds:
            faults.append(FaultSeen("listing", str(document["observe_error"]), None))
        slot_errors = [
            SlotErrorSeen(
                name=str(entry.get("name") or entry.get("ordinal", "?")),
                step=str(entry.get("step") or "?"),
                error=str(entry.get("error") or ""),
                since=_time_or_none(entry.get("since")),
                count=int(entry["count"]) if isinstance(entry.get("count"), int) else 1,
                retry_at=_time_or_none(entry.get("retry_at")),
            )
            for entry in _objects(document.get("slot_errors"))
        ]
        return cls(tuple(faults), tuple(slot_errors))


@dataclass(frozen=True)
class FactoryFiles:
    """What check-vacd read: heartbeat times by part (None = missing), error, counts, status.json."""

    heartbeats: dict[str, Optional[float]]
    factory_error: Optional[str]
    counts: Optional[Counts]
    state_dir_exists: bool
    status: Optional[StatusFaults] = None
    loop_heartbeat: Optional[float] = None


@dataclass(frozen=True)
class CheckResult:
    status: int
    text: str


def judge(files: FactoryFiles, now: float, warning_seconds: float, critical_seconds: float) -> CheckResult:
    """The plugin's verdict and output line for what was read at `now`."""
    if not files.state_dir_exists or (
        all(value is None for value in files.heartbeats.values())
        and files.counts is None
        and files.factory_error is None
        and files.status is None
    ):
        return CheckResult(UNKNOWN, "UNKNOWN: no vacd state to check (is vacd installed and started?)")

    problems: list[tuple[int, str]] = []
    if files.status is not None:
        problems += status_problems(files.status, now, critical_seconds)
    if files.factory_error is not None:
        problems.append((CRITICAL, f"factory-error: {first_line(files.factory_error)}"))
    loop_is_fresh = files.loop_heartbeat is not None and now - files.loop_heartbeat <= warning_seconds
    for part, beat_time in files.heartbeats.items():
        if beat_time is None:
            status = CRITICAL if part in ESSENTIAL_PARTS else WARNING
            problems.append((status, f"{PART_NAMES.get(part, part)} heartbeat missing"))
            continue
        age = now - beat_time
        # The factory heartbeat beats per completed pass: a fresh loop beside it means passes fail.
        because = " (the loop runs, but no pass completes)" if part == "factory" and loop_is_fresh else ""
        if age > critical_seconds:
            problems.append((CRITICAL, f"{PART_NAMES.get(part, part)} heartbeat {age / 3600:.2f} hours old{because}"))
        elif age > warning_seconds:
            problems.append((WARNING, f"{PART_NAMES.get(part, part)} heartbeat {age:.0f} seconds old{because}"))

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


def status_problems(status: StatusFaults, now: float, critical_seconds: float) -> list[tuple[int, str]]:
    """The Nagios status and text of each fault and of the slot errors status.json reports."""
    problems: list[tuple[int, str]] = []
    if status.unreadable is not None:
        problems.append((WARNING, f"status.json unreadable: {status.unreadable}"))
    for fault in status.faults:
        since = f" since {utc_time(fault.since)}" if fault.since is not None else ""
        if fault.kind == "config":
            problems.append((CRITICAL, f"configuration error{since}: {first_line(fault.message, count_others=True)}"))
        elif fault.kind == "listing":
            too_old = fault.since is not None and now - fault.since > critical_seconds
            problems.append((CRITICAL if too_old else WARNING, f"cannot list machines{since}: {first_line(fault.message)}"))
        else:
            problems.append((WARNING, f"{fault.kind} fault{since}: {first_line(fault.message)}"))
    if status.slot_errors:
        first = status.slot_errors[0]
        since = f" since {utc_time(first.since)}" if first.since is not None else ""
        retry = f", retry at {utc_time(first.retry_at)}" if first.retry_at is not None else ""
        others = len(status.slot_errors) - 1
        problems.append(
            (
                WARNING,
                f"slot error: {first.name} {first.step} failed {times(first.count)}{since}{retry}: {first_line(first.error)}"
                + (f" (and {others} more slots)" if others > 1 else " (and 1 more slot)" if others == 1 else ""),
            )
        )
    return problems


def times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def first_line(text: str, count_others: bool = False) -> str:
    """The first line of a message (a Nagios status is one line), and how many lines it left out."""
    lines = [line for line in text.strip().splitlines() if line.strip()] or ["(empty)"]
    if count_others and len(lines) > 1:
        return f"{lines[0]} (and {len(lines) - 1} more)"
    return lines[0]


def utc_time(epoch_seconds: float) -> str:
    """`2026-12-02 06:10:00Z`: UTC, as a monitoring host may be in another time zone."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch_seconds))


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
        status=read_status_faults(paths),
        loop_heartbeat=read_heartbeat(paths, "loop"),
    )


def read_status_faults(paths: Paths) -> Optional[StatusFaults]:
    try:
        return StatusFaults.parse(read_text_or_none(paths.status_file))
    except UnicodeDecodeError as error:
        return StatusFaults(unreadable=f"not UTF-8: {error}")


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
    # -V as well: the Nagios plugin guidelines give every plugin -V, --version.
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {VERSION}")
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


def _objects(value: Any) -> list[dict[str, Any]]:
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def _time_or_none(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


if __name__ == "__main__":
    sys.exit(main())
