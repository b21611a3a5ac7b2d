"""The text of each record file in a machine directory: Vac 03's marker formats and our JSON beside them.

Rules (design.md rule 4; issue 10 item 5):
- Vac's marker files keep exactly the format Vac 03 wrote, because admins' scripts read
  them (issue 10 item 5): `started` is `<unix time>\n`; `heartbeat` is `0.0 0.0\n` at the
  start, then `<integer CPU seconds> <CPU % to one decimal>\n` (Vac's own reader took the
  first field with int()); `finished` is empty, its presence meaning "finalised".
- Times live inside files, never in ctimes (Vac's anti-pattern 3), so what Vac's formats
  cannot hold goes in a JSON file beside each marker: `heartbeat.json` (`time`,
  `cpu_seconds`, `cpu_percentage`) and `finished.json` (the FinishRecord: finish time,
  outcome, start and last heartbeat times, CPU seconds). `destroy_requested` records why
  and when the factory decided to stop a machine.
- Text in, values out, and back: no I/O here. A reader that needs a file's mtime (Vac 03
  kept times in ctimes, §1.4) is handed a function for it. vacd.store does the reading,
  writing and quarantining; which file wins when both a marker and its JSON are present
  is the store's rule (its module docstring).
- Text that is not a record of ours raises CorruptRecord naming the file, never anything
  else: the store quarantines it (issue 8 item 3).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from vacd.errors import StoreError
from vacd.records import DestroyRequest, FinishRecord, Heartbeat, ShutdownReceipt

RECORD_FILE = "machine.json"
FINISHED_FILE = "finished"
# What Vac's empty `finished` cannot hold: the FinishRecord, written before the marker.
FINISHED_RECORD_FILE = "finished.json"
STARTED_FILE = "started"
HEARTBEAT_FILE = "heartbeat"
# What Vac's two-field `heartbeat` cannot hold: its time, and the CPU figures unrounded.
HEARTBEAT_RECORD_FILE = "heartbeat.json"
# Vac 03 started every machine's heartbeat with this line (§1.6 step 7).
INITIAL_HEARTBEAT_LINE = "0.0 0.0\n"
DESTROY_REQUESTED_FILE = "destroy_requested"
SHUTDOWN_MESSAGE_FILE = "shutdown_message"
JOBOUTPUTS_DIR = "joboutputs"
# In MD, not joboutputs/: the guest API's record that this machine's guest sent its
# shutdown_message (ShutdownReceipt). A container can write joboutputs/, never MD.
SHUTDOWN_RECEIPT_FILE = "shutdown_message_received.json"
# In the state directory: every heartbeat of the last pass, one file for the node, replaced
# once a pass (Store.flush_heartbeats), so a pass renames one file, not one a machine.
NODE_HEARTBEATS_FILE = "heartbeats.json"


class CorruptRecord(StoreError):
    """A record file that exists but cannot be read back (internal: always quarantined)."""


def created_time_of_finishes_line(raw_text: Optional[str]) -> Optional[int]:
    if raw_text is None:
        return None
    first = raw_text.split()[:1]
    return int(first[0]) if first and (first[0].isascii() and first[0].isdigit()) else None


def finish_json(finish: FinishRecord) -> str:
    fields = asdict(finish)
    if finish.distrust_reason is None:
        # finished.json keeps the shape admins' scripts know when the message is the verdict.
        del fields["distrust_reason"], fields["verdict_instead"]
    return json.dumps(fields, sort_keys=True) + "\n"


def finish_at(finished_time: int) -> FinishRecord:
    """All that is known of a finish whose record was lost: when (from a file's mtime)."""
    return FinishRecord(finished_time, None, None, None, None, 0.0)


def heartbeat_json(heartbeat: Heartbeat) -> str:
    return json.dumps(asdict(heartbeat), sort_keys=True) + "\n"


def vac_heartbeat_line(heartbeat: Heartbeat) -> str:
    """Vac 03's `heartbeat` line: `str(int cpu seconds) + " %.1f" % cpu percent` (§1.4)."""
    percentage = heartbeat.cpu_percentage if heartbeat.cpu_percentage is not None else 0.0
    return f"{int(heartbeat.cpu_seconds)} {percentage:.1f}\n"


def destroy_request_json(requested_time: int, shutdown_message: Optional[str]) -> str:
    return json.dumps({"requested_time": requested_time, "shutdown_message": shutdown_message}) + "\n"


def parse_time(raw_text: str) -> int:
    """`1700000000\\n` (Vac 03 and ours) -> 1700000000; CorruptRecord otherwise."""
    parts = raw_text.split()
    try:
        return int(float(parts[0]))
    except (ValueError, IndexError, OverflowError) as error:
        raise CorruptRecord(f"unreadable time {raw_text[:40]!r}") from error


def parse_heartbeat(raw_text: str, path: Path, mtime: Callable[[Path], int]) -> Heartbeat:
    """`heartbeat` as Vac 03 (`<cpu> [<cpu %>]`, at the mtime) or earlier vacd (`… <time>`) wrote it."""
    parts = raw_text.split()
    try:
        cpu_seconds = float(parts[0])
        cpu_percentage = float(parts[1]) if len(parts) > 1 else None
        # Vac 03 wrote no time: its heartbeat's time was the file's ctime (§1.4).
        heartbeat_time = int(parts[2]) if len(parts) > 2 else mtime(path)
    except (ValueError, IndexError, OverflowError) as error:
        raise CorruptRecord(f"{path}: unreadable heartbeat {raw_text[:40]!r}") from error
    # NaN or infinite CPU time would break the APEL record made from it.
    if not math.isfinite(cpu_seconds) or not (cpu_percentage is None or math.isfinite(cpu_percentage)):
        raise CorruptRecord(f"{path}: heartbeat with a non-finite number {raw_text[:40]!r}")
    return Heartbeat(heartbeat_time, cpu_seconds, cpu_percentage)


def heartbeat_line_has_time(raw_text: Optional[str]) -> bool:
    return raw_text is not None and len(raw_text.split()) > 2


def parse_heartbeat_json(raw_text: str, path: Path) -> Heartbeat:
    """heartbeat.json: `time` and `cpu_seconds` required, `cpu_percentage` a number or null."""
    fields = parse_json_object(raw_text, path)
    heartbeat_time = _optional_int(fields, "time")
    cpu_seconds: Any = fields.get("cpu_seconds")
    cpu_percentage: Any = fields.get("cpu_percentage")
    if heartbeat_time is None or not _is_finite_number(cpu_seconds) or not (
        cpu_percentage is None or _is_finite_number(cpu_percentage)
    ):
        raise CorruptRecord(f"{path}: not a heartbeat record {raw_text[:80]!r}")
    return Heartbeat(heartbeat_time, float(cpu_seconds), None if cpu_percentage is None else float(cpu_percentage))


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        return False


def parse_json_object(raw_text: str, path: Path) -> Mapping[str, Any]:
    try:
        value = json.loads(raw_text)
    except (ValueError, RecursionError) as error:
        raise CorruptRecord(f"{path}: not JSON: {type(error).__name__}") from error
    if not isinstance(value, dict):
        raise CorruptRecord(f"{path}: not a JSON object")
    return value


def _optional_int(fields: Mapping[str, Any], key: str) -> Optional[int]:
    value = fields.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return int(value)
    except (ValueError, OverflowError):  # NaN, infinity
        return None


def _finite_float(value: Any) -> float:
    """A finite number, else 0.0 (NaN or infinite CPU time would break the APEL record)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        number = float(value)
    except OverflowError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def parse_finish(raw_text: str, path: Path, mtime: Callable[[Path], int]) -> FinishRecord:
    """`finished` as Vac 03 (empty: finished at its ctime, §1.4) or earlier vacd (JSON) wrote it."""
    fields = parse_json_object(raw_text, path) if raw_text.strip() else {}
    return _finish_from_fields(fields, path, mtime)


def parse_finish_json(raw_text: str, path: Path) -> FinishRecord:
    """finished.json: a JSON object with the finish time (written by Store.finish only)."""
    fields = parse_json_object(raw_text, path)
    if _optional_int(fields, "finished_time") is None:
        raise CorruptRecord(f"{path}: finish record without a finished_time")
    return _finish_from_fields(fields, path, lambda _path: 0)


def _finish_from_fields(fields: Mapping[str, Any], path: Path, mtime: Callable[[Path], int]) -> FinishRecord:
    message = fields.get("shutdown_message")
    return FinishRecord(
        finished_time=_optional_int(fields, "finished_time") or mtime(path),
        shutdown_message=message if isinstance(message, str) else None,
        shutdown_message_time=_optional_int(fields, "shutdown_message_time"),
        started_time=_optional_int(fields, "started_time"),
        last_heartbeat_time=_optional_int(fields, "last_heartbeat_time"),
        cpu_seconds=_finite_float(fields.get("cpu_seconds")),
        distrust_reason=_optional_str(fields, "distrust_reason"),
        verdict_instead=_optional_str(fields, "verdict_instead"),
    )


def _optional_str(fields: Mapping[str, Any], key: str) -> Optional[str]:
    value = fields.get(key)
    return value if isinstance(value, str) else None


def parse_shutdown_receipt(raw_text: str, path: Path) -> ShutdownReceipt:
    fields = parse_json_object(raw_text, path)
    uuid = _optional_str(fields, "uuid")
    received_time = _optional_int(fields, "received_time")
    if uuid is None or received_time is None:
        raise CorruptRecord(f"{path}: not a shutdown message receipt")
    return ShutdownReceipt(
        uuid=uuid,
        source_address=_optional_str(fields, "source_address") or "",
        received_time=received_time,
        message=_optional_str(fields, "message"),
    )


def parse_destroy_request(raw_text: str, path: Path) -> DestroyRequest:
    fields = parse_json_object(raw_text, path)
    message = fields.get("shutdown_message")
    return DestroyRequest(
        requested_time=_optional_int(fields, "requested_time") or 0,
        shutdown_message=message if isinstance(message, str) else None,
    )
