"""APEL accounting: one individual job record per finished machine, and monthly sync records.

Rules (behaviour reference §7.1, acceptance 36, 11):
- A record is written only for a machine that started, whose machinetype is still
  configured, and that ran at least `fizzle_seconds` (wall = last heartbeat - started).
- `CpuDuration` is the machine's real CPU time (`FinishRecord.cpu_seconds`, read from the
  backend), not the wall time Vcycle reports (peers-and-specs §6 item 11).
- Every record goes to `apel-archive/YYYYMMDD/`; a copy goes to `apel-outgoing/YYYYMMDD/`,
  the directory queue `ssmsend` consumes, only when `gocdb_sitename` and
  `hs06_per_processor` are both set (see "Across configuration changes" for which
  setting counts when: `gocdb_sitename` now, `hs06_per_processor` at the machine's creation).
- A record that is archived but not queued has a twin `apel-held/YYYYMMDD/<name>` giving
  the reason, and an INFO line says it; `vac apel-sync` does not count it (below).
- The layout is the one ssmsend's dirq reads (peers-and-specs §4.3): directories are
  eight digits, files fourteen hex digits; anything else (our temp files start with a dot)
  is ignored by the reader.

Exactly once, across a crash at any instant and a rerun with the same machine:
- The file name is fixed by the machine: the first 14 hex digits of its UUID (`LocalJobId`),
  and the date directory is the UTC day of `EndTime`. (Vac 03 used the time of writing for
  both, so a rerun wrote a second record.) Using `EndTime` also makes `vac apel-sync` count
  a month's jobs the way the APEL server does, by the month in which they ended.
- With an outgoing copy the steps are: (1) write the record to `tmp/apel-<name>` (the
  staging file), (2) write the archive copy, (3) rename the staging file into
  `apel-outgoing/` (atomic; ssmsend may consume it at once). Staging disappears only by
  step 3 and the archive copy appears only after staging exists, so on a rerun:
  archive present and no staging file = done; staging present = finish steps 2-3 from
  the staged text; neither = start afresh. Without an outgoing copy the archive file
  alone is the marker, and rewriting it is idempotent.
- "Archive present" is looked up by name in every date directory, so a rerun that
  computes a different `EndTime` still finds the first record.
- A held record's `apel-held/` twin is written before its archive copy, and a queued
  record's twins are removed before its archive copy, so an archive file is never left
  with the wrong answer to "was it sent?".

Across configuration changes (issue 10 item 6):
- `hs06_per_processor` is the machine's: `MachineRecord.hs06_known` says whether it was set
  when the machine was created (as Vac 03 read the machine's own `machinefeatures/hs06`,
  written at creation only when it was set). A machine created without it carries vacd's
  stand-in of 1.0 per processor, so it is archived (ServiceLevel 1.0) and held back even
  if the figure was set before the machine finished: APEL would otherwise account its
  work at 1 HS06 per processor. One created with it is sent with its creation-time
  figure, also if the setting was removed or changed since (what the guest was told).
- `gocdb_sitename` is the factory's, read when the record is written, and a machine
  created before it was set is not held back. The Site line says where the work was
  done; that is the same site before and after the admin wrote its GOCDB name down, and
  APEL must see the name the site is registered under, which is the one set now. Holding
  such records back would only lose the site real work; nothing in them was fixed by the
  unset name (Vac 03 wrote Site and the send decision from the current setting too).
  Without `gocdb_sitename` nothing is sent: Site would be a guess from the space name.

The monthly sync (`vac apel-sync`) tells APEL how many job records it should hold per
Site, SubmitHost and month, so the site can see and republish what went missing (APEL's
own client sends its `VSyncRecords`, the count of the jobs it published). So it counts
what was sent:
- records with an `apel-held/` twin are not counted (they never reached APEL), and the
  newest record, whose Site is taken as the site's, is the newest one sent;
- every other record in the month's `apel-archive/` is counted: vacd's queued ones,
  those of machines adopted from Vac 03 (written by vacd like any other), and Vac 03's own
  earlier records, which have no twin and are counted as Vac 03 counted them. A record
  Vac 03 archived without sending cannot be told apart afterwards: one without
  gocdb_sitename has a guessed Site, which the Site match below drops; one without
  hs06_per_processor (ServiceLevel 1.0) is counted, as Vac 03 counted it;
- one sync record per SubmitHost of that Site, as APEL compares per (Site, SubmitHost,
  month): a node whose SubmitHost changed in the month of the switch (Vac 03 named it
  from `os.uname()`) is counted under both names, where Vac 03 skipped all but the newest.
  Records of another Site are reported and skipped, as Vac 03 did.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from hashlib import sha256
from pathlib import Path
from typing import Mapping, Optional, Sequence

from vacd.atomicfile import fsync_directory, read_text_or_none, write_atomic
from vacd.config import Machinetype, Settings
from vacd.errors import VacError
from vacd.paths import Paths
from vacd.records import FinishRecord, MachineRecord

log = logging.getLogger(__name__)

JOB_MESSAGE_HEADER = "APEL-individual-job-message: v0.3"
SYNC_MESSAGE_HEADER = "APEL-sync-message: v0.1"
RECORD_END = "%%"
STAGING_PREFIX = "apel-"
# dirq QueueSimple element names (peers-and-specs §4.3).
RECORD_NAME_LENGTH = 14
_DATE_DIRECTORY = re.compile(r"^[0-9]{8}$")
_MONTH = re.compile(r"^([0-9]{4})(0[1-9]|1[0-2])$")
# Vac's default for `vac apel-sync` with no month: the month of "yesterday" (§7.1).
SYNC_DEFAULT_LOOKBACK_SECONDS = 86400


class ApelError(VacError):
    """An APEL sync could not be produced (bad month argument, nothing to count)."""


@dataclass(frozen=True)
class JobRecord:
    """One APEL individual job record, with Vac 03's fields in Vac 03's order (§7.1)."""

    site: str
    submit_host: str
    local_job_id: str
    local_user_id: str
    queue: str
    global_user_name: str
    fqan: Optional[str]
    wall_duration: int
    cpu_duration: int
    processors: int
    start_time: int
    end_time: int
    memory_kb: int
    service_level: float

    def fields(self) -> list[tuple[str, str]]:
        """The `key: value` pairs of the record, FQAN only when set (as Vac 03)."""
        pairs = [
            ("Site", self.site),
            ("SubmitHost", self.submit_host),
            ("LocalJobId", self.local_job_id),
            ("LocalUserId", self.local_user_id),
            ("Queue", self.queue),
            ("GlobalUserName", self.global_user_name),
        ]
        if self.fqan:
            pairs.append(("FQAN", self.fqan))
        pairs += [
            ("WallDuration", str(self.wall_duration)),
            ("CpuDuration", str(self.cpu_duration)),
            ("Processors", str(self.processors)),
            ("NodeCount", "1"),
            ("InfrastructureDescription", "APEL-VAC"),
            ("InfrastructureType", "grid"),
            ("StartTime", str(self.start_time)),
            ("EndTime", str(self.end_time)),
            ("MemoryReal", str(self.memory_kb)),
            ("MemoryVirtual", str(self.memory_kb)),
            ("ServiceLevelType", "HEPSPEC"),
            ("ServiceLevel", _format_service_level(self.service_level)),
        ]
        return pairs

    def to_message(self) -> str:
        """A complete APEL message holding this one record."""
        body = "".join(f"{key}: {value}\n" for key, value in self.fields())
        return f"{JOB_MESSAGE_HEADER}\n{body}{RECORD_END}\n"


def site_name(settings: Settings) -> str:
    """`gocdb_sitename`, else the space without its first label (§7.1, acceptance 36)."""
    if settings.gocdb_sitename:
        return settings.gocdb_sitename
    _, dot, rest = settings.vac_space.partition(".")
    return rest if dot and rest else settings.vac_space


def submit_host(settings: Settings) -> str:
    return f"{settings.vac_space}/vac-{settings.factory_name}"


def global_user_name(space: str) -> str:
    """`vac01.example.com` -> `/DC=com/DC=example/DC=vac01` (space labels reversed, §7.1)."""
    return "".join(f"/DC={label}" for label in reversed(space.split(".")) if label)


def has_gocdb_sitename(settings: Settings) -> bool:
    """Whether the admin set `gocdb_sitename` (the config fills in a guess when it is not set)."""
    return settings.gocdb_sitename_is_set and bool(settings.gocdb_sitename)


def sends_outgoing(settings: Settings) -> bool:
    """Whether a machine created now is queued for ssmsend when it finishes (§7.1).

    Records are queued only with an admin-set GOCDB site and a real HS06 figure.
    """
    return has_gocdb_sitename(settings) and settings.hs06_per_processor is not None


def holding_reason(settings: Settings, record: MachineRecord) -> Optional[str]:
    """Why this machine's record is archived but not sent to APEL, or None to send it.

    `gocdb_sitename` as set now, `hs06_per_processor` as it was when the machine was
    created (module docstring, "Across configuration changes").
    """
    if not has_gocdb_sitename(settings):
        return "gocdb_sitename is not set"
    if not record.hs06_known:
        return "hs06_per_processor was not set when the machine was created, so its ServiceLevel would be 1.0"
    return None


def job_record(
    settings: Settings,
    machinetype: Optional[Machinetype],
    record: MachineRecord,
    finish: FinishRecord,
) -> Optional[JobRecord]:
    """The APEL record for a finished machine, or None if it must not be accounted.

    None when the machinetype is no longer configured, the machine never started, or it
    ran less than `fizzle_seconds` (§7.1). The end is the last heartbeat; a machine with
    no heartbeat time ends at its finish time.
    """
    if machinetype is None or finish.started_time is None:
        return None
    end_time = finish.last_heartbeat_time if finish.last_heartbeat_time is not None else finish.finished_time
    wall_seconds = end_time - finish.started_time
    if wall_seconds < machinetype.fizzle_seconds or wall_seconds < 0:
        return None
    # Vac 03 divided by the allocated processors and crashed when they were missing (§11).
    service_level = record.hs06 / record.processors if record.hs06 > 0 and record.processors > 0 else 1.0
    return JobRecord(
        site=site_name(settings),
        submit_host=submit_host(settings),
        local_job_id=record.uuid,
        local_user_id=settings.factory_name,
        queue=record.machinetype,
        global_user_name=global_user_name(settings.vac_space),
        fqan=machinetype.accounting_fqan,
        wall_duration=int(wall_seconds),
        cpu_duration=max(0, int(round(finish.cpu_seconds))),
        processors=record.processors,
        start_time=finish.started_time,
        end_time=end_time,
        memory_kb=record.mb * 1024,
        service_level=service_level,
    )


def record_file_name(uuid: str) -> str:
    """The 14-hex-digit file name fixed by a machine's UUID (a dirq element name)."""
    hex_digits = uuid.replace("-", "").lower()
    if len(hex_digits) >= RECORD_NAME_LENGTH and all(digit in "0123456789abcdef" for digit in hex_digits):
        return hex_digits[:RECORD_NAME_LENGTH]
    return sha256(uuid.encode()).hexdigest()[:RECORD_NAME_LENGTH]


def utc_day(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).strftime("%Y%m%d")


def write_apel_record(
    paths: Paths,
    settings: Settings,
    machinetype: Optional[Machinetype],
    record: MachineRecord,
    finish: FinishRecord,
) -> Optional[Path]:
    """Account one finished machine exactly once; return its archive file, or None.

    None means no record is due (see `job_record`). Calling again for the same machine,
    also after a crash part-way through, writes nothing new and returns the same file.
    """
    name = record_file_name(record.uuid)
    staging = paths.tmp_dir / f"{STAGING_PREFIX}{name}"
    staged_text = _staged_record(staging, record)
    likely_end = finish.last_heartbeat_time if finish.last_heartbeat_time is not None else finish.finished_time
    archived = find_archived_record(paths, name, likely_day=utc_day(likely_end))
    if archived is not None and staged_text is None:
        log.debug("APEL record already written name=%s file=%s", record.name, archived)
        return archived

    held_reason: Optional[str] = None
    if staged_text is not None:
        message = staged_text
    else:
        job = job_record(settings, machinetype, record, finish)
        if job is None:
            log.info("no APEL record due name=%s machinetype=%s", record.name, record.machinetype)
            return None
        message = job.to_message()
        held_reason = holding_reason(settings, record)
    day = _day_of_message(message) or utc_day(finish.finished_time)

    if staged_text is None and held_reason is None:
        paths.tmp_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(staging, message)
        staged_text = message
    if archived is None:
        _remove_held_twins(paths, name, keep_day=day if held_reason is not None else None)
        if held_reason is not None:
            held = paths.apel_held_dir / day / name
            held.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(held, f"{held_reason} (machine {record.name}, LocalJobId {record.uuid})\n")
        archived = paths.apel_archive_dir / day / name
        archived.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(archived, message)
    if staged_text is not None:
        outgoing = paths.apel_outgoing_dir / day / name
        outgoing.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, outgoing)
        fsync_directory(outgoing.parent)
        fsync_directory(staging.parent)
        log.info("APEL record queued name=%s uuid=%s file=%s", record.name, record.uuid, outgoing)
    else:
        log.info(
            "APEL record archived, not sent to APEL name=%s uuid=%s file=%s reason=\"%s\"",
            record.name,
            record.uuid,
            archived,
            held_reason,
        )
    return archived


def _remove_held_twins(paths: Paths, name: str, keep_day: Optional[str]) -> None:
    """Remove `apel-held/*/<name>` (but `keep_day`'s): left by a run that crashed before archiving.

    A rerun may decide differently (the site set gocdb_sitename meanwhile) or date the
    record differently, and a stale twin would take a sent record out of the sync count.
    """
    held_root = paths.apel_held_dir
    if not held_root.is_dir():
        return
    for day in held_root.iterdir():
        twin = day / name
        if day.name != keep_day and _DATE_DIRECTORY.match(day.name) and twin.is_file():
            twin.unlink()
            fsync_directory(day)


def _staged_record(staging: Path, record: MachineRecord) -> Optional[str]:
    """The staged message for this machine, or None if there is none or it is unusable.

    A staging file holds only what can be rebuilt from the machine's records, so a
    damaged one (not UTF-8, or not this machine's record) is removed and rebuilt rather
    than deferring the machine's accounting for ever (issue 8 item 3).
    """
    try:
        raw = staging.read_bytes()
    except FileNotFoundError:
        return None
    try:
        staged_text = raw.decode("utf-8")
    except UnicodeDecodeError:
        staged_text = ""
    records = parse_message(staged_text)
    if records and records[0].get("LocalJobId") == record.uuid:
        return staged_text
    log.warning("damaged APEL staging file removed, record rebuilt name=%s path=%s", record.name, staging)
    staging.unlink()
    return None


def find_archived_record(paths: Paths, name: str, likely_day: Optional[str] = None) -> Optional[Path]:
    """The archive file called `name` in any date directory (`likely_day`'s first), or None."""
    archive = paths.apel_archive_dir
    if likely_day is not None and (archive / likely_day / name).is_file():
        return archive / likely_day / name
    if not archive.is_dir():
        return None
    for day in sorted(archive.iterdir(), reverse=True):
        candidate = day / name
        if _DATE_DIRECTORY.match(day.name) and candidate.is_file():
            return candidate
    return None


def parse_message(raw_text: str) -> list[dict[str, str]]:
    """The records of an APEL message as key -> value dicts (header line skipped).

    Lenient, for our own files: lines without `: ` are ignored, and a record without its
    closing `%%` still counts.
    """
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in raw_text.splitlines():
        stripped = line.strip()
        if stripped == RECORD_END:
            if current:
                records.append(current)
            current = {}
            continue
        key, separator, value = stripped.partition(":")
        if not separator or key.startswith("APEL-"):
            continue
        current[key.strip()] = value.strip()
    if current:
        records.append(current)
    return records


def default_sync_months(now: float) -> list[str]:
    """The month of `now` minus a day, UTC, as `YYYYMM` (§7.1)."""
    moment = datetime.fromtimestamp(now, timezone.utc) - timedelta(seconds=SYNC_DEFAULT_LOOKBACK_SECONDS)
    return [moment.strftime("%Y%m")]


@dataclass(frozen=True)
class MonthCount:
    """One sync record: the jobs of one month that APEL got for one Site and SubmitHost."""

    month: str
    site: str
    submit_host: str
    number_of_jobs: int


@dataclass(frozen=True)
class MonthTally:
    """What one month of apel-archive holds: the sync records to send, and what they leave out.

    `counts` has one entry per SubmitHost of the site, the newest sent record's first;
    `skipped` are sent records of another site (or with no Site or SubmitHost), `held`
    the records archived but never sent (an `apel-held/` twin).
    """

    month: str
    counts: tuple[MonthCount, ...]
    skipped: int
    held: int


def count_month(paths: Paths, month: str, settings: Optional[Settings] = None) -> MonthTally:
    """Count a month's records sent to APEL, per SubmitHost of the site of the newest one.

    A month in which nothing was sent counts 0 for `settings`' site and submit host if
    given, else has no counts (Vac 03 crashed here, §11).
    """
    sent: list[Mapping[str, str]] = []
    held = 0
    archive = paths.apel_archive_dir
    if archive.is_dir():
        for day in sorted(archive.iterdir()):
            if not (_DATE_DIRECTORY.match(day.name) and day.name.startswith(month) and day.is_dir()):
                continue
            for entry in sorted(day.iterdir()):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                records = parse_message(read_text_or_none(entry) or "")
                if (paths.apel_held_dir / day.name / entry.name).is_file():
                    held += len(records)
                else:
                    sent.extend(records)
    if not sent:
        counts: tuple[MonthCount, ...] = ()
        if settings is not None:
            counts = (MonthCount(month, site_name(settings), submit_host(settings), 0),)
        return MonthTally(month, counts, 0, held)
    newest = max(sent, key=lambda fields: _int_or_zero(fields.get("EndTime")))
    site, newest_host = newest.get("Site", ""), newest.get("SubmitHost", "")
    per_host: dict[str, int] = {}
    for fields in sent:
        host = fields.get("SubmitHost", "")
        if site and host and fields.get("Site") == site:
            per_host[host] = per_host.get(host, 0) + 1
    hosts = sorted(per_host, key=lambda host: (host != newest_host, host))
    counts = tuple(MonthCount(month, site, host, per_host[host]) for host in hosts)
    return MonthTally(month, counts, len(sent) - sum(per_host.values()), held)


def sync_message(counts: Sequence[MonthCount]) -> str:
    lines = [SYNC_MESSAGE_HEADER]
    for count in counts:
        year, month = count.month[:4], count.month[4:]
        lines += [
            f"Site: {count.site}",
            f"SubmitHost: {count.submit_host}",
            f"NumberOfJobs: {count.number_of_jobs}",
            f"Month: {int(month)}",
            f"Year: {year}",
            RECORD_END,
        ]
    return "\n".join(lines) + "\n"


def apel_sync(paths: Paths, months: Sequence[str], now: float, settings: Optional[Settings] = None) -> Path:
    """Write one APEL sync message for `months` (default: last month-of-yesterday) to apel-outgoing.

    The message holds a sync record per month and SubmitHost (see `count_month`).

    Raises:
        ApelError: a month is not `YYYYMM`, or no month had anything to count.
    """
    chosen = list(months) or default_sync_months(now)
    bad = [month for month in chosen if not _MONTH.match(month)]
    if bad:
        raise ApelError(f"months must be YYYYMM, got {' '.join(bad)}")
    counts: list[MonthCount] = []
    for month in chosen:
        tally = count_month(paths, month, settings)
        if tally.held:
            log.info("APEL records archived but never sent are not counted month=%s held=%d", month, tally.held)
        if not tally.counts:
            log.warning("no APEL records sent for month=%s; no sync record for it", month)
            continue
        if tally.skipped:
            log.warning(
                "skipped APEL records of another site month=%s skipped=%d site=%s",
                month,
                tally.skipped,
                tally.counts[0].site,
            )
        counts.extend(tally.counts)
    if not counts:
        raise ApelError(f"nothing sent to APEL to sync for {' '.join(chosen)}")
    directory = paths.apel_outgoing_dir / utc_day(now)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / _free_time_name(directory, now)
    write_atomic(target, sync_message(counts))
    log.info("APEL sync written file=%s months=%s", target, ",".join(sorted({count.month for count in counts})))
    return target


def _free_time_name(directory: Path, now: float) -> str:
    """Vac's `HHMMSS` + 8 fraction digits (14 digits, a dirq name), stepped past any clash."""
    moment = datetime.fromtimestamp(now, timezone.utc)
    fraction = int(round((now - int(now)) * 1e8)) % 100000000
    while True:
        name = f"{moment:%H%M%S}{fraction:08d}"
        if not (directory / name).exists():
            return name
        fraction = (fraction + 1) % 100000000


def _day_of_message(message: str) -> Optional[str]:
    records = parse_message(message)
    if not records:
        return None
    end_time = records[0].get("EndTime")
    return utc_day(int(end_time)) if end_time and (end_time.isascii() and end_time.isdigit()) else None


def _int_or_zero(value: Optional[str]) -> int:
    try:
        return int(value or "0")
    except ValueError:
        return 0


def _format_service_level(value: float) -> str:
    # Python's float text, as Vac 03 wrote it ("1.0" when HS06 is unknown, acceptance 11).
    return repr(round(float(value), 3))
