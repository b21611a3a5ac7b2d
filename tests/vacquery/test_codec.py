"""vacquery.codec: round trips, garbage, Vac 03 interop, float format, limits."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vacquery.sample_statuses import SPACE, factory_status, machine_status, machinetype_status
from vacquery.auth import Authenticator, Scope
from vacquery.codec import (
    MAX_DATAGRAM_BYTES,
    QUERY_PAD_BYTES,
    MalformedDatagram,
    decode,
    decode_query,
    decode_reply,
    encode,
    encode_query,
)
from vacquery.messages import (
    FactoryQuery,
    FactoryStatus,
    MachineState,
    MachinesQuery,
    MachineStatus,
    MachinetypesQuery,
    MachinetypeStatus,
    Reply,
)

# Keys Vac 03's client requires before it accepts a reply (behaviour reference §3.4, §3.5).
VAC_REQUIRED_MACHINE_KEYS = (
    "cookie space factory num_machines machine state uuid created_time started_time heartbeat_time "
    "cpu_seconds cpu_percentage hs06 machinetype shutdown_message shutdown_time"
).split()
VAC_REQUIRED_MACHINETYPE_KEYS = (
    "cookie space factory num_machinetypes machinetype running_hs06 num_before_fizzle shutdown_message "
    "shutdown_time shutdown_machine"
).split()
# What `vac factories` prints from a factory_status (§9) and the census stores (§7.5).
VAC_FACTORY_KEYS = (
    "cookie space factory site running_cpus total_cpus running_machines total_machines load_average "
    "root_disk_avail_kb vac_disk_avail_kb mem_used_kb mem_total_kb vac_version max_hs06 running_hs06 "
    "kernel_version os_issue boot_time"
).split()

texts = st.text(max_size=40)
ints = st.integers(min_value=0, max_value=2**40)
# Two-decimal floats survive the wire exactly (§3.1).
floats = st.integers(min_value=0, max_value=10**12).map(lambda cents: cents / 100)
optional = st.none().__or__


def statuses() -> st.SearchStrategy[Any]:
    header = dict(space=texts, factory=texts, site=optional(texts), daemon_version=optional(texts),
                  vacquery_version=optional(texts))
    machine = st.builds(
        MachineStatus, num_machines=ints, machine=texts, state=st.sampled_from(MachineState),
        uuid=optional(texts), created_time=optional(ints), started_time=optional(ints),
        heartbeat_time=optional(ints), cpu_seconds=optional(floats), cpu_percentage=optional(floats),
        hs06=optional(floats), machinetype=optional(texts), shutdown_message=optional(texts),
        shutdown_time=optional(ints), processors=optional(ints), machine_model=optional(texts),
        fqan=optional(texts), **header)
    machinetype = st.builds(
        MachinetypeStatus, num_machinetypes=ints, machinetype=texts, running_hs06=floats, num_before_fizzle=ints,
        shutdown_message=optional(texts), shutdown_time=optional(ints), shutdown_machine=optional(texts),
        running_machines=optional(ints), running_processors=optional(floats), bytes_per_processor=optional(ints),
        max_wallclock_seconds=optional(ints), max_processors=optional(ints), fqan=optional(texts), **header)
    factory = st.builds(
        FactoryStatus, running_processors=optional(ints), running_machines=optional(ints),
        running_hs06=optional(floats), max_processors=optional(ints), max_machines=optional(ints),
        max_hs06=optional(floats), load_average=optional(floats), kernel_version=optional(texts),
        os_issue=optional(texts), boot_time=optional(ints), swap_used_kb=optional(ints), **header)
    return st.one_of(machine, machinetype, factory)


cookies = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=128)
queries = st.one_of(*(st.builds(kind, space=texts, cookie=cookies, daemon_version=optional(texts),
                                vacquery_version=optional(texts))
                      for kind in (MachinesQuery, MachinetypesQuery, FactoryQuery)))
replies = st.builds(Reply, cookie=cookies, time_sent=optional(ints), status=statuses())


@given(message=st.one_of(queries, replies))
def test_every_message_survives_encode_then_decode(message: Any) -> None:
    assert decode(encode(message)) == message


@given(query=queries, pad_to=st.integers(min_value=0, max_value=1024))
def test_padded_queries_decode_to_the_same_query(query: Any, pad_to: int) -> None:
    datagram, unpadded = encode_query(query, pad_to), encode_query(query)
    assert decode(datagram) == query
    # Padding needs room for its own member (`, "padding": ""`, 15 bytes) to be added at all.
    assert len(datagram) == (pad_to if pad_to > len(unpadded) + 15 else len(unpadded))


def test_our_padded_and_signed_query_fits_what_a_vac03_responder_reads() -> None:
    signer = Authenticator(b"k" * 32, nonce_source=lambda size: b"\x01" * size)
    query = encode_query(MachinetypesQuery(SPACE, "ab" * 32, "Vac 04.00.00a1 vacd-factory"), QUERY_PAD_BYTES)
    assert len(query) == QUERY_PAD_BYTES and len(signer.sign(query, 1_700_000_000, Scope.query_to("f1.example.com", SPACE))) <= 1024


@given(garbage=st.binary(max_size=2048))
def test_decode_of_arbitrary_bytes_raises_only_malformed_datagram(garbage: bytes) -> None:
    try:
        decode(garbage, "192.0.2.1")
    except MalformedDatagram as error:
        assert error.peer == "192.0.2.1"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300)
@given(message=st.one_of(queries, replies), key=st.text(max_size=25), value=json_values, drop=st.booleans())
def test_decode_of_damaged_messages_raises_only_malformed_datagram(message: Any, key: str, value: Any,
                                                                   drop: bool) -> None:
    document = json.loads(encode(message))
    target = key if key in document or not document else sorted(document)[len(key) % len(document)]
    if drop:
        document.pop(target, None)
    else:
        document[target] = value
    try:
        decode(json.dumps(document).encode(), "peer")
    except MalformedDatagram as error:
        assert error.peer == "peer"


def test_floats_are_written_with_exactly_two_decimals() -> None:
    status = machinetype_status("f1.example.com", "lhcb", 1, running_hs06=1.0)
    datagram = encode(Reply("c", 1, status)).decode()
    assert '"running_hs06": 1.00' in datagram
    assert '"running_processors": 2.00, "running_cpus": 2.00' in datagram


def test_replies_carry_every_key_vac_clients_require() -> None:
    machine = json.loads(encode(Reply("c", 1, machine_status("f1.example.com", 0, 4))))
    machinetype = json.loads(encode(Reply("c", 1, machinetype_status("f1.example.com", "lhcb", 1))))
    factory = json.loads(encode(Reply("c", 1, factory_status("f1.example.com"))))
    assert set(VAC_REQUIRED_MACHINE_KEYS) <= set(machine)
    assert set(VAC_REQUIRED_MACHINETYPE_KEYS) <= set(machinetype)
    assert set(VAC_FACTORY_KEYS) <= set(factory)
    assert machine["num_cpus"] == machine["num_processors"] == 0
    assert machine["state"] == "Shut down"
    assert factory["total_cpus"] == factory["max_cpus"] == factory["max_processors"] == 8
    assert factory["vac_disk_avail_kb"] == factory["daemon_disk_avail_kb"]
    assert all(message["vacquery_version"] == "VacQuery 01.03" for message in (machine, machinetype, factory))


def _vac03_query(method: str, message_type: str, factory: str, salt: str) -> bytes:
    """A query as Vac 03's vac command sends it: json.dumps of a dict, cookie sha256(salt + factory)."""
    return json.dumps({
        "vac_version": "Vac 03.01 vac-command",
        "vacquery_version": "VacQuery 01.03",
        "space": SPACE,
        "cookie": hashlib.sha256((salt + factory).encode()).hexdigest(),
        "message_type": message_type,
        "method": method,
    }).encode()


def test_vac03_queries_decode_with_cookie_and_method() -> None:
    salt = "c2FsdHNhbHRzYWx0c2FsdHNhbHRzYWx0c2FsdHNhbHQ="
    query = decode_query(_vac03_query("machines", "machines_query", "f1.example.com", salt))
    assert query == MachinesQuery(SPACE, hashlib.sha256((salt + "f1.example.com").encode()).hexdigest(),
                                  "Vac 03.01 vac-command", "VacQuery 01.03")


def test_legacy_method_alone_selects_the_query() -> None:
    document = {"space": SPACE, "cookie": "abc", "method": "factories"}
    assert decode_query(json.dumps(document).encode()) == FactoryQuery(SPACE, "abc", None, None)
    document["method"] = "machinetypes"
    assert isinstance(decode_query(json.dumps(document).encode()), MachinetypesQuery)


def test_vac03_machinetype_status_with_legacy_fields_decodes() -> None:
    # Field by field as Vac 03's responder builds it (§3.5): floats printed with 2 decimals,
    # deprecated running_cpus beside running_processors, no fqan.
    datagram = (
        '{"message_type": "machinetype_status", "vac_version": "Vac 03.01 vacd-responder", '
        '"daemon_version": "Vac 03.01 vacd-responder", "vacquery_version": "VacQuery 01.03", '
        '"cookie": "0a1b", "space": "vac01.example.com", "factory": "f2.example.com", "site": "example.com", '
        '"time_sent": 1542900000, "num_machinetypes": 3, "machinetype": "lhcb", '
        '"bytes_per_processor": 2147483648, "running_hs06": 80.00, "running_machines": 8, '
        '"running_cpus": 8.00, "running_processors": 8.00, "num_before_fizzle": 1, '
        '"shutdown_message": "300 Nothing to do", "shutdown_time": 1542899000, '
        '"shutdown_machine": "f2-03.example.com", "max_wallclock_seconds": 172800, "max_processors": 1}'
    ).encode()
    reply = decode_reply(datagram)
    assert reply.cookie == "0a1b" and reply.time_sent == 1542900000
    status = reply.status
    assert isinstance(status, MachinetypeStatus)
    assert (status.running_hs06, status.running_processors, status.num_before_fizzle) == (80.0, 8.0, 1)
    assert status.shutdown_message == "300 Nothing to do" and status.fqan is None


def test_oldest_deprecated_field_names_are_read_when_new_ones_are_missing() -> None:
    document = json.loads(encode(Reply("c", 1, factory_status("f1.example.com"))))
    for new_name in ("max_processors", "max_cpus", "daemon_disk_avail_kb"):
        del document[new_name]
    status = decode_reply(json.dumps(document).encode()).status
    assert isinstance(status, FactoryStatus)
    assert status.max_processors == 8 and status.daemon_disk_avail_kb == 2_000_000


def test_integral_floats_are_accepted_where_integers_are_expected() -> None:
    document = json.loads(encode(Reply("c", 1, machinetype_status("f1.example.com", "lhcb", 1))))
    document["num_machinetypes"] = 1.0
    status = decode_reply(json.dumps(document).encode()).status
    assert isinstance(status, MachinetypeStatus) and status.num_machinetypes == 1


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"num_machinetypes": 1.5}, "expected an integer"),
        ({"running_hs06": "lots"}, "expected a number"),
        ({"running_hs06": True}, "expected a number"),
        ({"space": None}, "is null"),
        ({"cookie": "x" * 129}, "cookie"),
        ({"num_before_fizzle": -1}, "negative"),
        ({"message_type": "machinetype_gossip"}, "unknown message_type"),
    ],
)
def test_wrong_values_are_malformed(change: dict[str, Any], reason: str) -> None:
    document = json.loads(encode(Reply("c", 1, machinetype_status("f1.example.com", "lhcb", 1))))
    document.update(change)
    with pytest.raises(MalformedDatagram, match=reason):
        decode(json.dumps(document).encode())


@pytest.mark.parametrize("key", VAC_REQUIRED_MACHINETYPE_KEYS)
def test_missing_required_key_is_malformed(key: str) -> None:
    document = json.loads(encode(Reply("c", 1, machinetype_status("f1.example.com", "lhcb", 1))))
    del document[key]
    with pytest.raises(MalformedDatagram):
        decode(json.dumps(document).encode())


def test_nan_and_infinity_are_malformed() -> None:
    with pytest.raises(MalformedDatagram, match="NaN is not valid JSON"):
        decode(b'{"message_type": "factory_query", "space": "s", "cookie": "c", "x": NaN}')
    with pytest.raises(MalformedDatagram, match="not finite"):
        decode(b'{"message_type": "factory_status", "space": "s", "factory": "f", "cookie": "c", "load_average": 1e999}')


def test_oversized_datagram_is_malformed() -> None:
    padding = "x" * MAX_DATAGRAM_BYTES
    with pytest.raises(MalformedDatagram, match="oversized"):
        decode(json.dumps({"message_type": "factory_query", "space": "s", "cookie": "c", "pad": padding}).encode())


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedDatagram):
        decode(b"[" * 5000 + b"]" * 5000)


def test_long_guest_shutdown_message_is_cut_to_fit_one_datagram() -> None:
    status = machinetype_status("f1.example.com", "lhcb", 1, shutdown_message="300 " + "\u00e9" * 20000,
                                shutdown_time=1)
    datagram = encode(Reply("c" * 128, 1, status))
    assert len(datagram) <= MAX_DATAGRAM_BYTES
    decoded = decode_reply(datagram).status
    assert isinstance(decoded, MachinetypeStatus) and decoded.shutdown_message is not None
    assert decoded.shutdown_message.startswith("300 \u00e9")


def test_statuses_decoded_as_queries_are_refused_and_vice_versa() -> None:
    with pytest.raises(MalformedDatagram, match="not a query"):
        decode_query(encode(Reply("c", 1, factory_status("f1.example.com"))))
    with pytest.raises(MalformedDatagram, match="not a status"):
        decode_reply(encode(FactoryQuery(SPACE, "c")))
