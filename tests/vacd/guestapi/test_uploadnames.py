"""Which PUT targets name a $JOBOUTPUTS file: every name Vac 03 took that is safe on disk."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from urllib.parse import quote, quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vacd.guestapi.joboutputs import received_times, store_upload
from vacd.guestapi.uploadnames import (
    NAME_MAX_BYTES,
    RECEIVED_FILE,
    RefusedUpload,
    UploadName,
    is_vacd_file_name,
    name_problem,
    safe_repr,
    upload_name,
)

# Names guests wrote under Vac 03 (its writePutBody took any non-empty component).
VAC_NAMES = [
    "shutdown_message",
    "heartbeat",
    "logs.tar.gz",
    "job output (1).txt",
    "α.log",
    "a+b@c=d,e",
    "100%done",
    "it's [a] {test}; ok!",
    "~backup",
    ".hidden",
    "日本語のログ",
    "n" * NAME_MAX_BYTES,
    "é" * (NAME_MAX_BYTES // 2),
]


def as_sent_raw(name: str) -> str:
    """The target with NAME's UTF-8 bytes as they are, as wire.py hands it on (Latin-1)."""
    return "/joboutputs/" + name.encode().decode("latin-1")


def as_sent_encoded(name: str) -> str:
    return "/joboutputs/" + quote(name, safe="")


@pytest.mark.parametrize("name", VAC_NAMES)
def test_names_vac_took_are_taken_percent_encoded(name: str) -> None:
    assert upload_name(as_sent_encoded(name)) == UploadName(name)


@pytest.mark.parametrize("name", [name for name in VAC_NAMES if " " not in name and "%" not in name])
def test_names_vac_took_are_taken_as_raw_bytes(name: str) -> None:
    # A space cannot be sent raw (it ends the request target); `%` is an escape.
    assert upload_name(as_sent_raw(name)) == UploadName(name)


def test_a_percent_that_is_not_an_escape_stays_a_percent() -> None:
    assert upload_name("/joboutputs/100%done") == UploadName("100%done")
    assert upload_name("/joboutputs/50%2") == UploadName("50%2")
    assert upload_name("/joboutputs/50%25") == UploadName("50%")


def test_query_and_fragment_are_part_of_the_name_as_in_vac() -> None:
    assert upload_name("/joboutputs/log?part=1") == UploadName("log?part=1")
    assert upload_name("/joboutputs/log#1") == UploadName("log#1")


def test_double_slashes_are_folded_once_as_vac_folded_them() -> None:
    assert upload_name("//joboutputs//shutdown_message") == UploadName("shutdown_message")
    assert isinstance(upload_name("/joboutputs///shutdown_message"), RefusedUpload)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/joboutputs/", "empty name"),
        ("/joboutputs", "PUT is only for /joboutputs/NAME"),
        ("/jobfeatures/job_id", "PUT is only for /joboutputs/NAME"),
        ("http://169.254.169.253/joboutputs/x", "PUT is only for /joboutputs/NAME"),
        ("/joboutputs/a/b", "NAME is more than one path component"),
        ("/joboutputs/x/", "NAME is more than one path component"),
        ("/joboutputs/..", "name is a dot segment"),
        ("/joboutputs/.", "name is a dot segment"),
        ("/joboutputs/%2e%2E", "name is a dot segment"),
        ("/joboutputs/..%2Fuser_data", "name contains a slash"),
        ("/joboutputs/%2F", "name contains a slash"),
        ("/joboutputs/a%00b", "name contains NUL"),
        ("/joboutputs/a%0Ab", "name contains a control character"),
        ("/joboutputs/a%1Bb", "name contains a control character"),
        ("/joboutputs/a%7F", "name contains a control character"),
        ("/joboutputs/a%C2%85", "name contains a control character"),  # U+0085, C1 NEXT LINE
        ("/joboutputs/%FF%FE", "name is not UTF-8"),
        ("/joboutputs/" + "n" * (NAME_MAX_BYTES + 1), f"name longer than {NAME_MAX_BYTES} bytes"),
        ("/joboutputs/" + "%CE%B1" * 128, f"name longer than {NAME_MAX_BYTES} bytes"),
        ("/joboutputs/.received.json", "name is reserved for vacd's own files in joboutputs"),
        ("/joboutputs/%2Ereceived.json", "name is reserved for vacd's own files in joboutputs"),
        ("/joboutputs/.shutdown_message.abcd1234.tmp", "name is reserved for vacd's own files in joboutputs"),
        ("/joboutputs/.x.tmp", "name is reserved for vacd's own files in joboutputs"),
        ("/joboutputs/α", "not a request target"),  # a str that never came off the wire
    ],
)
def test_unsafe_names_are_refused_with_their_reason(target: str, reason: str) -> None:
    assert upload_name(target) == RefusedUpload(reason, target)


def test_safe_repr_is_ascii_and_short() -> None:
    shown = safe_repr("\u202eevil\x1b[31m" + "x" * 1000)
    assert shown.isascii() and "\x1b" not in shown and len(shown) < 200
    assert "\\u202e" in shown and shown.endswith("...")


# ---------------------------------------------------------------- properties

def is_one_safe_component(name: str) -> bool:
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
        and len(name.encode()) <= NAME_MAX_BYTES
        and not any(unicodedata.category(character) == "Cc" for character in name)
        and not is_vacd_file_name(name)
    )


# Targets a guest could send: mostly /joboutputs/ (else a prefix near it), then raw UTF-8
# text, raw Latin-1 bytes, percent escapes of any bytes and the pieces of path tricks.
PREFIXES = st.one_of(
    st.just("/joboutputs/"),
    st.sampled_from(["//joboutputs/", "/joboutputs//", "/joboutputs", "/jobfeatures/", "/joboutputs/x/", ""]),
)
RAW_UTF8_PIECES = st.text(max_size=20).map(lambda text: text.encode().decode("latin-1"))
RAW_LATIN1_PIECES = st.text(st.characters(max_codepoint=0xFF), max_size=5)
ESCAPED_PIECES = st.binary(max_size=20).map(lambda raw: quote_from_bytes(raw, safe=""))
ESCAPED_UTF8_PIECES = st.text(max_size=20).map(lambda text: quote(text, safe=""))
TRICKS = st.sampled_from(["/", "%", ".", "..", "%2F", "%00", "%2e", ".tmp", RECEIVED_FILE])
TARGETS = st.builds(
    lambda prefix, pieces: prefix + "".join(pieces),
    PREFIXES,
    st.lists(st.one_of(RAW_UTF8_PIECES, ESCAPED_UTF8_PIECES, RAW_LATIN1_PIECES, ESCAPED_PIECES, TRICKS), max_size=6),
)


@settings(max_examples=2000)
@given(target=TARGETS)
def test_everything_taken_is_one_safe_component_inside_joboutputs(target: str) -> None:
    result = upload_name(target)
    if isinstance(result, RefusedUpload):
        assert result.reason and result.sent == target
        return
    assert is_one_safe_component(result.name)
    joboutputs = Path("/var/lib/vac/machines/1_t_m/joboutputs")
    path = joboutputs / result.name
    assert path.parent == joboutputs and os.path.normpath(path) == str(path)


SAFE_NAMES = st.text(min_size=1, max_size=80).filter(is_one_safe_component)


@settings(max_examples=1000)
@given(name=SAFE_NAMES)
def test_every_safe_name_is_taken_percent_encoded(name: str) -> None:
    assert upload_name(as_sent_encoded(name)) == UploadName(name)


@settings(max_examples=1000)
@given(name=SAFE_NAMES.filter(lambda name: "%" not in name))
def test_every_safe_name_without_a_percent_is_taken_as_raw_bytes(name: str) -> None:
    assert upload_name(as_sent_raw(name)) == UploadName(name)


@settings(max_examples=1000)
@given(encoded_name=st.binary(min_size=0, max_size=NAME_MAX_BYTES + 2))
def test_the_name_is_taken_exactly_when_its_bytes_are_one_safe_component(encoded_name: bytes) -> None:
    result = upload_name("/joboutputs/" + quote_from_bytes(encoded_name, safe=""))
    assert isinstance(result, UploadName) == (name_problem(encoded_name) is None)
    if isinstance(result, UploadName):
        assert result.name.encode() == encoded_name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.one_of(TARGETS, SAFE_NAMES.map(as_sent_encoded), SAFE_NAMES.map(as_sent_raw)))
def test_every_name_taken_is_written_as_exactly_that_one_file(tmp_path: Path, target: str) -> None:
    """On a real disk: store_upload makes one entry, of that name, directly in joboutputs."""
    result = upload_name(target)
    if not isinstance(result, UploadName):
        return
    machine_dir = tmp_path / f"machine-{len(list(tmp_path.iterdir()))}"
    joboutputs = machine_dir / "joboutputs"
    joboutputs.mkdir(parents=True)
    store_upload(joboutputs, result.name, b"data", now=100, quota_bytes=1000)
    assert sorted(os.listdir(joboutputs)) == sorted([result.name, RECEIVED_FILE])
    assert os.listdir(machine_dir) == ["joboutputs"]
    assert (joboutputs / result.name).read_bytes() == b"data"
    assert result.name in received_times(joboutputs)


def test_a_name_of_255_bytes_is_written_although_its_temp_name_would_be_longer(tmp_path: Path) -> None:
    name = "é" * 127 + "n"  # 255 bytes of UTF-8
    assert upload_name(as_sent_encoded(name)) == UploadName(name)
    store_upload(tmp_path, name, b"data", now=100, quota_bytes=1000)
    assert (tmp_path / name).read_bytes() == b"data"
    assert sorted(os.listdir(tmp_path)) == sorted([name, RECEIVED_FILE])
