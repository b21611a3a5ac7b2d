"""A machine directory's marker files read back, and what replaces each one found corrupt.

Rules (issue 8 item 3; behaviour reference §1.4):
- Either of a marker and its JSON record present means the same thing (vacd.store's
  module docstring), so a corrupt one never loses what the machine is: a corrupt record
  is quarantined (vacd.recordfiles) and replaced as follows:
  * `finished.json`: the machine stays finished. It is replaced by the record `finished`
    gives (the old JSON inside it, or its mtime as the finish time; without `finished`,
    the mtime of `finished.json`), so it is never finalised or accounted twice.
  * `finished` (only read when there is no `finished.json`): the machine stays finished.
    A `finished.json` with the file's mtime as the finish time is written first, then
    `finished` is replaced by Vac's empty marker.
  * `started`, `destroy_requested`: replaced by a record with the file's mtime as the
    start or request time (Vac 03 read these times from the files' ctimes, §1.4).
  * `heartbeat.json`: renamed aside; `heartbeat` is read instead. `heartbeat`: renamed
    aside. The factory writes both anew at its next sight.
- Nothing here raises for what is in the files: a reader returns what the files still say.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from vacd.atomicfile import write_atomic
from vacd.recordfiles import RecordFiles
from vacd.recordformats import (
    FINISHED_FILE,
    FINISHED_RECORD_FILE,
    HEARTBEAT_FILE,
    HEARTBEAT_RECORD_FILE,
    CorruptRecord,
    destroy_request_json,
    finish_at,
    finish_json,
    heartbeat_line_has_time,
    parse_destroy_request,
    parse_finish,
    parse_finish_json,
    parse_heartbeat,
    parse_heartbeat_json,
    parse_time,
)
from vacd.records import DestroyRequest, FinishRecord, Heartbeat

log = logging.getLogger(__name__)


def read_started(files: RecordFiles, path: Path) -> Optional[int]:
    """`started`'s time, None if absent; a corrupt one is replaced by its mtime."""
    try:
        raw_text = files.read_text(path)
        if raw_text is None:
            return None
        return parse_time(raw_text)
    except CorruptRecord as error:
        started_time = files.mtime(path)
        files.quarantine(path, str(error), replacement=f"{started_time}\n")
        return started_time


def read_heartbeat_parts(files: RecordFiles, directory: Path) -> tuple[Optional[Heartbeat], Optional[Heartbeat], bool]:
    """heartbeat.json, Vac's `heartbeat`, and whether that line has its own time (newest_heartbeat)."""
    recorded = _read_heartbeat_record(files, directory / HEARTBEAT_RECORD_FILE)
    path = directory / HEARTBEAT_FILE
    raw_text: Optional[str] = None
    try:
        raw_text = files.read_text(path)
        line = parse_heartbeat(raw_text, path, files.mtime) if raw_text is not None else None
    except CorruptRecord as error:
        files.quarantine(path, str(error))
        line = None
    return recorded, line, line is not None and heartbeat_line_has_time(raw_text)


def _read_heartbeat_record(files: RecordFiles, path: Path) -> Optional[Heartbeat]:
    try:
        raw_text = files.read_text(path)
        if raw_text is None:
            return None
        return parse_heartbeat_json(raw_text, path)
    except CorruptRecord as error:
        files.quarantine(path, str(error))
        return None


def read_finish(files: RecordFiles, directory: Path) -> Optional[FinishRecord]:
    """finished.json if readable, else `finished`; either present means finished."""
    record_path = directory / FINISHED_RECORD_FILE
    marker_path = directory / FINISHED_FILE
    try:
        raw_text = files.read_text(record_path)
        recorded = parse_finish_json(raw_text, record_path) if raw_text is not None else None
    except CorruptRecord as error:
        # Still finished: never finalised, accounted or reported twice.
        fallback = _read_finished_marker(files, marker_path, repair=False) or finish_at(files.mtime(record_path))
        files.quarantine(record_path, str(error), replacement=finish_json(fallback))
        _complete_finished_marker(marker_path)
        return fallback
    if recorded is None:
        return _read_finished_marker(files, marker_path)
    _complete_finished_marker(marker_path)
    return recorded


def _read_finished_marker(files: RecordFiles, path: Path, repair: bool = True) -> Optional[FinishRecord]:
    """`finished` as Vac 03 (empty) or an earlier vacd (JSON) wrote it; None if absent.

    Without `repair`, a corrupt marker is only read (as finished at its mtime): the
    caller is replacing finished.json itself, which then makes the marker's content moot.
    """
    try:
        raw_text = files.read_text(path)
        if raw_text is None:
            return None
        return parse_finish(raw_text, path, files.mtime)
    except CorruptRecord as error:
        # Still finished, at the marker's mtime: that time goes to finished.json before
        # the marker is replaced by Vac's empty one, so no instant loses either.
        finish = finish_at(files.mtime(path))
        if not repair:
            return finish
        try:
            write_atomic(path.with_name(FINISHED_RECORD_FILE), finish_json(finish))
        except OSError as write_error:
            log.warning("cannot write finish record path=%s error=%s", path.with_name(FINISHED_RECORD_FILE),
                        write_error)
            return finish
        files.quarantine(path, str(error), replacement="")
        return finish


def _complete_finished_marker(path: Path) -> None:
    """Write the empty `finished` a kill -9 left out after finished.json (module docstring)."""
    if os.path.lexists(path):
        return
    try:
        write_atomic(path, "")
    except OSError as error:
        log.warning("cannot complete finished marker path=%s error=%s", path, error)
        return
    log.info("completed finished marker left out by an interrupted finish path=%s", path)


def read_destroy_request(files: RecordFiles, path: Path) -> Optional[DestroyRequest]:
    """`destroy_requested`, None if absent; a corrupt one is replaced by a request at its mtime."""
    try:
        raw_text = files.read_text(path)
        if raw_text is None:
            return None
        return parse_destroy_request(raw_text, path)
    except CorruptRecord as error:
        # Still being stopped, as from when the file was written.
        request = DestroyRequest(files.mtime(path), None)
        files.quarantine(path, str(error), replacement=destroy_request_json(request.requested_time, None))
        return request
