"""Convert VacQuery datagrams to messages and back; the only module that knows wire names.

Strategy: a datagram is one JSON object (§3.1). Each message class has a table of
fields: (attribute, wire names, kind, required). Encoding writes every wire name of a
field (the deprecated duplicates `vac_version`/`daemon_version`, `num_cpus`,
`running_cpus`, `max_cpus`/`total_cpus`, `total_machines`, `total_hs06`, `vac_disk_*`,
as Vac 03 does) and the legacy `method` of queries. Decoding reads the first wire name
present, newest name first.

Rules:
- `decode()` returns a message or raises `MalformedDatagram(peer, reason)`, never
  anything else, whatever the bytes (a Hypothesis property checks this).
- A key that Vac's client requires (§3.4, §3.5), or `cookie`/`space`/`factory`, must be
  present; a present value must have the right type. Optional keys may be absent or null.
- Integers may arrive as integral floats ("3.00"): Vac 03 formats every Python float
  with two decimals and some counters are floats there. NaN, infinities and integers
  beyond 2**63 are rejected.
- Floats are written with exactly two decimals, separators are Python's `", "` and
  `": "`, non-ASCII is escaped: byte-for-byte what Vac 03's encoder produced (§3.1).
- Limits: a datagram over MAX_DATAGRAM_BYTES (10240, what Vac's client reads, §3.1) is
  malformed; text fields longer than MAX_TEXT_CHARS are cut when encoding (a guest writes
  `shutdown_message`; one status must stay one datagram).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from vacquery.errors import MalformedDatagram as MalformedDatagram  # re-exported: callers catch it from here
from vacquery.messages import (
    QUERY_CLASSES,
    STATUS_CLASSES,
    MachineState,
    Message,
    MessageType,
    LimitNotice,
    Query,
    Reply,
    Snapshot,
    Status,
)

# Vac's client reads up to 10240 bytes (§3.1); a bigger datagram would be cut in transit.
MAX_DATAGRAM_BYTES = 10240
# Free text is cut to this many characters so one status always fits one datagram.
MAX_TEXT_CHARS = 255
# Our queries are padded to this size: a signed one (about 130 bytes more) stays within
# the 1024 bytes a Vac 03 responder reads (§3.1).
QUERY_PAD_BYTES = 880
_PADDING_START = b', "padding": "'
# The member a responder adds to each reply of an answer it cut short, and the message
# type of the notice it sends when no status may be sent at all (vacquery.responder).
# Vac 03's client ignores keys it does not know and message types it did not ask for.
LIMITED_MEMBER = "replies_limited"
LIMIT_NOTICE_TYPE = "replies_limited"
_MAX_REASON_CHARS = 40
# Vac's cookies are 64 hex digits (§3.2); VacMon sends "0". Anything longer is hostile.
MAX_COOKIE_CHARS = 128
_MAX_INT = 2**63
# What `stamp` adds to a status body: message_type, the longest cookie, time_sent, braces.
_STAMP_OVERHEAD_BYTES = 100 + MAX_COOKIE_CHARS


# Field kinds. Each converter takes a JSON value (never None) and returns the Python value
# or raises _Invalid.


class _Invalid(Exception):
    """A field's value is wrong; `decode` turns it into MalformedDatagram with the peer."""


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {type(value).__name__}")
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Invalid("expected an integer, got a boolean")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    else:
        raise _Invalid(f"expected an integer, got {type(value).__name__}")
    if not -_MAX_INT < result < _MAX_INT:
        raise _Invalid("integer out of range")
    return result


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(f"expected a number, got {type(value).__name__}")
    if isinstance(value, int) and not -_MAX_INT < value < _MAX_INT:
        raise _Invalid("number out of range")
    result = float(value)
    if not math.isfinite(result):
        raise _Invalid("number is not finite")
    return result


def _to_state(value: Any) -> MachineState:
    text = _to_str(value)
    try:
        return MachineState(text)
    except ValueError:
        # Vac's clients never check the state; an unknown one is shown as Unknown.
        return MachineState.UNKNOWN


_STR, _INT, _FLOAT, _STATE = "str", "int", "float", "state"
_CONVERTERS: dict[str, Callable[[Any], Any]] = {_STR: _to_str, _INT: _to_int, _FLOAT: _to_float, _STATE: _to_state}


@dataclass(frozen=True)
class _Field:
    """One attribute and its wire names: the first is read first; all are written."""

    attribute: str
    wire_names: tuple[str, ...]
    kind: str
    required: bool = False  # the key must be present (its value may still be null)
    nullable: bool = True
    omit_if_none: bool = False  # Vac sends `fqan` only when it is set


def _f(attribute: str, *wire_names: str, kind: str = _STR, required: bool = False, nullable: bool = True,
       omit_if_none: bool = False) -> _Field:
    return _Field(attribute, wire_names or (attribute,), kind, required, nullable, omit_if_none)


# The header of every status (§3.4). cookie and time_sent come from the Reply.
_STATUS_HEADER = (
    _f("daemon_version", "daemon_version", "vac_version"),
    _f("vacquery_version"),
    _f("space", required=True, nullable=False),
    _f("factory", required=True, nullable=False),
    _f("site"),
)

_MACHINE_FIELDS = _STATUS_HEADER + (
    _f("num_machines", kind=_INT, required=True, nullable=False),
    _f("machine", required=True, nullable=False),
    _f("state", kind=_STATE, required=True, nullable=False),
    _f("machine_model"),
    _f("uuid", required=True),
    _f("created_time", kind=_INT, required=True),
    _f("started_time", kind=_INT, required=True),
    _f("heartbeat_time", kind=_INT, required=True),
    _f("processors", "num_processors", "num_cpus", kind=_INT),
    _f("cpu_seconds", kind=_FLOAT, required=True),
    _f("cpu_percentage", kind=_FLOAT, required=True),
    _f("hs06", kind=_FLOAT, required=True),
    _f("machinetype", required=True),
    _f("shutdown_message", required=True),
    _f("shutdown_time", kind=_INT, required=True),
    _f("fqan", omit_if_none=True),
)

_MACHINETYPE_FIELDS = _STATUS_HEADER + (
    _f("num_machinetypes", kind=_INT, required=True, nullable=False),
    _f("machinetype", required=True, nullable=False),
    _f("bytes_per_processor", kind=_INT),
    _f("running_hs06", kind=_FLOAT, required=True, nullable=False),
    _f("running_machines", kind=_INT),
    _f("running_processors", "running_processors", "running_cpus", kind=_FLOAT),
    _f("num_before_fizzle", kind=_INT, required=True, nullable=False),
    _f("shutdown_message", required=True),
    _f("shutdown_time", kind=_INT, required=True),
    _f("shutdown_machine", required=True),
    _f("fqan", omit_if_none=True),
    _f("max_wallclock_seconds", kind=_INT),
    _f("max_processors", kind=_INT),
)

_FACTORY_FIELDS = _STATUS_HEADER + (
    _f("running_processors", "running_processors", "running_cpus", kind=_INT),
    _f("running_machines", kind=_INT),
    _f("running_hs06", kind=_FLOAT),
    _f("max_processors", "max_processors", "max_cpus", "total_cpus", kind=_INT),
    _f("max_machines", "max_machines", "total_machines", kind=_INT),
    _f("max_hs06", "max_hs06", "total_hs06", kind=_FLOAT),
    _f("root_disk_avail_kb", kind=_INT),
    _f("root_disk_avail_inodes", kind=_INT),
    _f("daemon_disk_avail_kb", "daemon_disk_avail_kb", "vac_disk_avail_kb", kind=_INT),
    _f("daemon_disk_avail_inodes", "daemon_disk_avail_inodes", "vac_disk_avail_inodes", kind=_INT),
    _f("load_average", kind=_FLOAT),
    _f("kernel_version"),
    _f("os_issue"),
    _f("boot_time", kind=_INT),
    _f("factory_heartbeat_time", kind=_INT),
    _f("responder_heartbeat_time", kind=_INT),
    _f("mjf_heartbeat_time", kind=_INT),
    _f("metadata_heartbeat_time", kind=_INT),
    _f("swap_used_kb", kind=_INT),
    _f("swap_free_kb", kind=_INT),
    _f("mem_used_kb", kind=_INT),
    _f("mem_total_kb", kind=_INT),
)

_STATUS_FIELDS: dict[MessageType, tuple[_Field, ...]] = {
    MessageType.MACHINE_STATUS: _MACHINE_FIELDS,
    MessageType.MACHINETYPE_STATUS: _MACHINETYPE_FIELDS,
    MessageType.FACTORY_STATUS: _FACTORY_FIELDS,
}

_QUERY_FIELDS = (
    _f("daemon_version", "vac_version"),
    _f("vacquery_version"),
    _f("space", required=True, nullable=False),
    _f("cookie", required=True, nullable=False),
)

# The legacy `method` of each query (§3.2); the responder accepts either field (acceptance 38).
METHOD_OF_QUERY: dict[MessageType, str] = {
    MessageType.MACHINES_QUERY: "machines",
    MessageType.MACHINETYPES_QUERY: "machinetypes",
    MessageType.FACTORY_QUERY: "factories",
}
QUERY_OF_METHOD: dict[str, MessageType] = {method: kind for kind, method in METHOD_OF_QUERY.items()}
_MESSAGE_TYPES: dict[str, MessageType] = {kind.value: kind for kind in MessageType}


# Encoding


def _json_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, MachineState):
        return json.dumps(value.value)
    if isinstance(value, str):
        return json.dumps(value[:MAX_TEXT_CHARS])
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f}"
    raise TypeError(f"cannot encode {type(value).__name__}")


def _json_members(message: object, field_table: Sequence[_Field]) -> list[str]:
    members: list[str] = []
    for spec in field_table:
        value = getattr(message, spec.attribute)
        if value is None and spec.omit_if_none:
            continue
        encoded = _json_value(value)
        members.extend(f'"{wire_name}": {encoded}' for wire_name in spec.wire_names)
    return members


def _checked(datagram: bytes) -> bytes:
    if len(datagram) > MAX_DATAGRAM_BYTES:
        raise ValueError(f"encoded message of {len(datagram)} bytes exceeds {MAX_DATAGRAM_BYTES}")
    return datagram


def encode_query(query: Query, pad_to: int = 0) -> bytes:
    """The datagram Vac 03 would send for this query, `method` included (§3.2).

    With `pad_to`, a `padding` member of spaces makes the datagram that many bytes long:
    a responder lets an unsigned request from an address it does not list draw no more
    bytes than it carried (vacquery.responder), so a padded query draws one status where
    a bare one draws none.
    """
    members = [f'"message_type": "{query.message_type.value}"']
    members.extend(_json_members(query, _QUERY_FIELDS))
    members.append(f'"method": "{METHOD_OF_QUERY[query.message_type]}"')
    datagram = ("{" + ", ".join(members) + "}").encode("ascii")
    shortfall = pad_to - len(datagram) - len(_PADDING_START) - len(b'"')
    if shortfall > 0:
        datagram = datagram[:-1] + _PADDING_START + b" " * shortfall + b'"}'
    return _checked(datagram)


def encode_status_body(status: Status) -> bytes:
    """A status without its cookie and time_sent, ready for `stamp` (the responder's cache)."""
    return ", ".join(_json_members(status, _STATUS_FIELDS[status.message_type])).encode("ascii")


def stamp(message_type: MessageType, body: bytes, cookie: str, time_sent: Optional[int]) -> bytes:
    """Join a status body with the cookie it answers and the send time into one datagram."""
    return stamp_all(message_type, (body,), cookie, time_sent)[0]


def stamp_all(
    message_type: MessageType, bodies: Sequence[bytes], cookie: str, time_sent: Optional[int],
    limited: Optional[str] = None,
) -> list[bytes]:
    """`stamp` for every body of one answer (they share cookie and time_sent, §3.3).

    `limited` (a `LimitReason` value) marks replies of an answer that was cut short.
    """
    head = (f'{{"message_type": "{message_type.value}", "cookie": {_json_value(cookie)}, '
            f'"time_sent": {_json_value(time_sent)}, ')
    if limited is not None:
        head += f'"{LIMITED_MEMBER}": {_json_value(limited[:_MAX_REASON_CHARS])}, '
    head_bytes = head.encode("ascii")
    return [head_bytes + body + b"}" for body in bodies]


def encode_reply(reply: Reply) -> bytes:
    return _checked(stamp_all(reply.message_type, (encode_status_body(reply.status),), reply.cookie,
                              reply.time_sent, reply.limited)[0])


def encode_limit_notice(notice: LimitNotice) -> bytes:
    """The small datagram that says an answer was limited to nothing (see LimitNotice)."""
    members = [f'"message_type": "{LIMIT_NOTICE_TYPE}"', f'"cookie": {_json_value(notice.cookie)}',
               f'"space": {_json_value(notice.space)}', f'"factory": {_json_value(notice.factory)}',
               f'"reason": {_json_value(notice.reason[:_MAX_REASON_CHARS])}']
    return ("{" + ", ".join(members) + "}").encode("ascii")


def decode_limit_notice(datagram: bytes, peer: str = "-") -> LimitNotice:
    """Parse a responder's LimitNotice.

    Raises:
        MalformedDatagram: anything else (a status, a query, garbage).
    """
    try:
        document = _parse_object(datagram)
        if document.get("message_type") != LIMIT_NOTICE_TYPE:
            raise _Invalid("not a replies_limited notice")
        cookie = _cookie(document)
        texts = {}
        for key in ("space", "factory", "reason"):
            if key not in document:
                raise _Invalid(f"missing required key {key!r}")
            texts[key] = _to_str(document[key])
        return LimitNotice(cookie, texts["space"], texts["factory"], _reason(texts["reason"]))
    except _Invalid as error:
        raise MalformedDatagram(peer, str(error)) from None


def _reason(value: Any) -> str:
    reason = _to_str(value)
    if not reason or len(reason) > _MAX_REASON_CHARS or not reason.isascii() or not reason.isprintable():
        raise _Invalid(f"{LIMITED_MEMBER} is not up to {_MAX_REASON_CHARS} printable ASCII characters")
    return reason


def encode(message: Message) -> bytes:
    """Bytes of any message. Raises ValueError if our own message cannot fit a datagram."""
    if isinstance(message, Reply):
        return encode_reply(message)
    return encode_query(message)


class EncodedBodies(Mapping[MessageType, tuple[bytes, ...]]):
    """A snapshot's status bodies per query type, each type encoded the first time it is asked for.

    A factory publishes a snapshot every pass, and most are never asked for machines (one
    status per slot): encoding those at publication cost a pass at 128 slots about as much
    as reading every slot's records (issue 15 item 2). Once encoded, a type's bodies are
    kept with the snapshot, so every later answer costs a join. Read from one thread (the
    responder's event loop); two threads asking at once would encode the same bytes twice.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._encoded: dict[MessageType, tuple[bytes, ...]] = {}

    def __getitem__(self, query_type: MessageType) -> tuple[bytes, ...]:
        bodies = self._encoded.get(query_type)
        if bodies is None:
            if query_type not in QUERY_CLASSES:
                raise KeyError(query_type)
            bodies = tuple(encode_status_body(status) for status in self._snapshot.statuses_for(query_type))
            for body in bodies:
                if len(body) + _STAMP_OVERHEAD_BYTES > MAX_DATAGRAM_BYTES:
                    raise ValueError(f"status of {len(body)} bytes cannot fit a datagram")
            self._encoded[query_type] = bodies
        return bodies

    def __iter__(self) -> Iterator[MessageType]:
        return iter(QUERY_CLASSES)

    def __len__(self) -> int:
        return len(QUERY_CLASSES)


@dataclass(frozen=True)
class EncodedSnapshot:
    """A snapshot whose statuses are encoded once, so answering costs a join, not a json.dumps."""

    snapshot: Snapshot
    bodies: Mapping[MessageType, tuple[bytes, ...]]  # keyed by query type

    @property
    def space(self) -> str:
        return self.snapshot.space

    @property
    def factory(self) -> str:
        """The factory's own name: what a signed query must be addressed to (vacquery.auth.Scope)."""
        return self.snapshot.factory.factory


def encode_snapshot(snapshot: Snapshot) -> EncodedSnapshot:
    """A published snapshot, each query type's statuses encoded once, when first asked for.

    The responder stamps cookie and time per reply. A status too big for a datagram raises
    ValueError when its type is first asked for (our own statuses cap every text, so none is).
    """
    return EncodedSnapshot(snapshot, EncodedBodies(snapshot))


# Decoding


def _reject_constant(name: str) -> Any:
    raise _Invalid(f"{name} is not valid JSON")


def _parse_object(datagram: bytes) -> dict[str, Any]:
    if len(datagram) > MAX_DATAGRAM_BYTES:
        raise _Invalid(f"oversized: {len(datagram)} bytes > {MAX_DATAGRAM_BYTES}")
    try:
        text = datagram.decode("utf-8")
        document = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _Invalid(f"not JSON: {str(error)[:80]}") from None
    if not isinstance(document, dict):
        raise _Invalid(f"not a JSON object but {type(document).__name__}")
    return document


def _read_fields(document: Mapping[str, Any], field_table: Sequence[_Field]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for spec in field_table:
        present = False
        value: Any = None
        for wire_name in spec.wire_names:
            if wire_name in document:
                present, value = True, document[wire_name]
                break
        if not present and spec.required:
            raise _Invalid(f"missing required key {spec.wire_names[0]!r}")
        if value is None:
            if present and not spec.nullable:
                raise _Invalid(f"{spec.wire_names[0]!r} is null")
            values[spec.attribute] = None
            continue
        try:
            values[spec.attribute] = _CONVERTERS[spec.kind](value)
        except _Invalid as error:
            raise _Invalid(f"{spec.wire_names[0]!r}: {error}") from None
    return values


def _message_type_of(document: Mapping[str, Any]) -> MessageType:
    raw_type = document.get("message_type")
    if isinstance(raw_type, str) and raw_type in _MESSAGE_TYPES:
        return _MESSAGE_TYPES[raw_type]
    raw_method = document.get("method")
    if isinstance(raw_method, str) and raw_method in QUERY_OF_METHOD:
        return QUERY_OF_METHOD[raw_method]
    raise _Invalid(f"unknown message_type {str(raw_type)[:40]!r}")


def _cookie(document: Mapping[str, Any]) -> str:
    if "cookie" not in document:
        raise _Invalid("missing required key 'cookie'")
    cookie = _to_str(document["cookie"])
    if len(cookie) > MAX_COOKIE_CHARS or not cookie.isprintable() or not cookie.isascii():
        raise _Invalid("cookie is not up to 128 printable ASCII characters")
    return cookie


def decode(datagram: bytes, peer: str = "-") -> Message:
    """Parse one datagram into a query or a stamped status.

    Raises:
        MalformedDatagram: for anything that is not a valid VacQuery 01.x message.
    """
    try:
        document = _parse_object(datagram)
        message_type = _message_type_of(document)
        cookie = _cookie(document)
        if message_type in QUERY_CLASSES:
            values = _read_fields(document, _QUERY_FIELDS)
            values["cookie"] = cookie
            query: Query = QUERY_CLASSES[message_type](**values)
            return query
        values = _read_fields(document, _STATUS_FIELDS[message_type])
        time_sent = document.get("time_sent")
        status: Status = STATUS_CLASSES[message_type](**values)
        limited = document.get(LIMITED_MEMBER)
        return Reply(cookie, None if time_sent is None else _to_int(time_sent), status,
                     None if limited is None else _reason(limited))
    except _Invalid as error:
        raise MalformedDatagram(peer, str(error)) from None
    except (ValueError, TypeError) as error:
        # A value that the message's own validation refuses (e.g. a negative count).
        raise MalformedDatagram(peer, f"invalid value: {str(error)[:120]}") from None


def decode_query(datagram: bytes, peer: str = "-") -> Query:
    """Parse a datagram that must be a query (the responder's side)."""
    message = decode(datagram, peer)
    if isinstance(message, Reply):
        raise MalformedDatagram(peer, f"{message.message_type.value} is not a query")
    return message


def decode_reply(datagram: bytes, peer: str = "-") -> Reply:
    """Parse a datagram that must be a stamped status (the client's side)."""
    message = decode(datagram, peer)
    if not isinstance(message, Reply):
        raise MalformedDatagram(peer, f"{message.message_type.value} is not a status")
    return message

