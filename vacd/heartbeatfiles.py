"""A running machine's heartbeat on disk: its own files once a minute, one file for the node between.

Rules (issue 15 item 4; behaviour reference §1.4, §1.6 step 7):
- Once in HEARTBEAT_DURABLE_SECONDS per machine (and at its first heartbeat), its
  heartbeat.json then Vac's `heartbeat` line are replaced with fsync; between, its
  heartbeat waits for `flush`, which the factory calls once a pass (through
  Store.flush_heartbeats): NODE_HEARTBEATS_FILE in the state directory, every machine's
  heartbeat of the pass, one rename and one fsync (`write` says what a crash may lose).
- The reader takes the newest of heartbeat.json and the node file's entry, and Vac's line
  only without both, or when it carries a newer time of its own (`newest_heartbeat`).
- An unreadable node file is quarantined (vacd.recordfiles) and costs only the node
  heartbeats; one bad entry costs that machine's node heartbeat only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from vacd.recordfiles import RecordFiles
from vacd.recordformats import (
    HEARTBEAT_FILE,
    HEARTBEAT_RECORD_FILE,
    CorruptRecord,
    heartbeat_json,
    parse_heartbeat_json,
    parse_json_object,
)
from vacd.records import Heartbeat

# Heartbeats are replaced without fsync (HeartbeatFiles.write) except once in this
# many seconds per machine: what an OS crash (not a kill -9) may cost of a heartbeat.
HEARTBEAT_DURABLE_SECONDS = 60


class HeartbeatFiles:
    """Writes machines' heartbeats (durably once a minute each, else to the node file) and reads the node file."""

    def __init__(self, files: RecordFiles, node_heartbeats_path: Path) -> None:
        self._files = files
        self._node_heartbeats_path = node_heartbeats_path
        # Per machine directory: the time of its last heartbeat written with fsync.
        self._heartbeat_durable_time: dict[str, int] = {}
        # This pass's heartbeats not yet in NODE_HEARTBEATS_FILE, by machine directory name.
        self._pending_heartbeats: dict[str, Heartbeat] = {}
        # The last parse of NODE_HEARTBEATS_FILE, with the text it came from.
        self._node_heartbeats_parsed: tuple[Optional[str], dict[str, Heartbeat]] = (None, {})
        # Whether this store has replaced NODE_HEARTBEATS_FILE: from then on it holds what
        # `_node_heartbeats_parsed` says (only this store writes it, once a pass).
        self._node_heartbeats_written = False

    def write(self, directory: Path, heartbeat: Heartbeat, vac_line: str) -> None:
        """heartbeat.json and Vac's line once in HEARTBEAT_DURABLE_SECONDS; between, the node file only.

        Every running machine's heartbeat moves every pass, and each machine's heartbeat.json
        and `heartbeat` replaced with fsync each pass cost two renames and four fsyncs per
        slot (issue 15: a quarter of a pass's CPU at 128 slots, and 1-10 ms an fsync on a
        real disk). Now, once a minute per machine (HEARTBEAT_DURABLE_SECONDS, and its
        first heartbeat), heartbeat.json then `heartbeat` are replaced with fsync as before;
        between, the heartbeat waits for `flush_heartbeats`, which the factory calls once a
        pass: NODE_HEARTBEATS_FILE, every machine's heartbeat of the pass, one rename and
        one fsync. The reader takes the newest of heartbeat.json and that file's entry.
        What a crash may lose:
        - kill -9 of vacd, before: the heartbeats of the pass it interrupted, for the slots
          that pass had not yet reached (each on-disk heartbeat at most one pass old).
          After: the heartbeats of the pass it interrupted, all of them (each on-disk
          heartbeat still at most one pass old).
        - An OS crash or power cut: the same as a kill -9, before and after (every write
          that reaches disk is fsync-ed).
        Vac's `heartbeat` line is rewritten with heartbeat.json, once a minute, as Vac 03
        rewrote it once a 60 s cycle: its time (the mtime, which Vac 03 read) is at most a
        minute old, as under Vac 03. Between, it is not touched (moving its mtime every pass
        cost an utimensat and two lstat-s per machine per pass, issue 15 item 2). vacd reads
        the line only when heartbeat.json is missing or unreadable.
        The record goes first: a kill between the two leaves the new time in
        heartbeat.json, which the reader prefers, and Vac's line a minute old.
        """
        key = os.fspath(directory)
        last_durable = self._heartbeat_durable_time.get(key)
        if last_durable is not None and 0 <= heartbeat.time - last_durable < HEARTBEAT_DURABLE_SECONDS:
            self._pending_heartbeats[directory.name] = heartbeat
            return
        self._files.write(directory / HEARTBEAT_RECORD_FILE, heartbeat_json(heartbeat))
        self._pending_heartbeats.pop(directory.name, None)
        self._files.write(directory / HEARTBEAT_FILE, vac_line)
        self._heartbeat_durable_time[key] = heartbeat.time

    def flush(self) -> None:
        """Replace NODE_HEARTBEATS_FILE with this pass's heartbeats (the factory calls it once a pass).

        Between their once-a-minute durable writes, machines' heartbeat.json files are not
        rewritten: their heartbeats reach disk here, all in one file and one rename, fsync-ed.
        The reader takes the newest of heartbeat.json and this file's entry. What a kill -9
        loses is unchanged: the heartbeats of the pass it interrupted (each machine's on-disk
        heartbeat is at most one pass old, as when each was written at its own turn).
        """
        if not self._pending_heartbeats:
            return
        document = {
            name: {"cpu_percentage": heartbeat.cpu_percentage, "cpu_seconds": heartbeat.cpu_seconds,
                   "time": heartbeat.time}
            for name, heartbeat in sorted(self._pending_heartbeats.items())
        }
        self._files.write(self._node_heartbeats_path, json.dumps(document, sort_keys=True) + "\n")
        # What the file now holds, so lookups until the next flush read none of it.
        self._node_heartbeats_parsed = (None, self._pending_heartbeats)
        self._node_heartbeats_written = True
        self._pending_heartbeats = {}

    def node_heartbeat(self, directory_name: str) -> Optional[Heartbeat]:
        """This machine's heartbeat not yet flushed, else its entry in NODE_HEARTBEATS_FILE."""
        pending = self._pending_heartbeats.get(directory_name)
        if pending is not None:
            return pending
        if self._node_heartbeats_written:
            return self._node_heartbeats_parsed[1].get(directory_name)
        path = self._node_heartbeats_path
        try:
            raw_text = self._files.read_text(path)
        except CorruptRecord as error:
            self._files.quarantine(path, str(error))
            return None
        if raw_text is None:
            return None
        if self._node_heartbeats_parsed[0] != raw_text:
            parsed: dict[str, Heartbeat] = {}
            try:
                fields = parse_json_object(raw_text, path)
            except CorruptRecord as error:
                self._files.quarantine(path, str(error))
                return None
            for name, entry in fields.items():
                try:
                    parsed[name] = parse_heartbeat_json(json.dumps(entry), path)
                except CorruptRecord:
                    continue  # one bad entry costs that machine's node heartbeat only
            self._node_heartbeats_parsed = (raw_text, parsed)
        return self._node_heartbeats_parsed[1].get(directory_name)

    def forget(self, directory: Path) -> None:
        """A finished or removed machine's directory: no durable heartbeat time is kept for it."""
        self._heartbeat_durable_time.pop(os.fspath(directory), None)


def newest_heartbeat(
    recorded: Optional[Heartbeat], node: Optional[Heartbeat], line: Optional[Heartbeat], line_has_time: bool
) -> Optional[Heartbeat]:
    """heartbeat.json or the node file's entry, the newer; else Vac's line; a newer timed line wins."""
    if node is not None and (recorded is None or node.time > recorded.time):
        recorded = node
    if recorded is None:
        return line
    # Only a line with its own time (an earlier vacd's third field) can be compared:
    # Vac's two fields carry none, and its mtime is always a moment after the record's.
    if line is not None and line_has_time and line.time > recorded.time:
        return line
    return recorded
