"""Shutdown message codes, the factory's own messages and silent fizzles (§4.4, §3.5)."""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.outcomes import (
    EXCEEDED_WALLCLOCK,
    FAILED_TO_START,
    HEARTBEAT_NOT_CREATED,
    HEARTBEAT_NOT_UPDATED,
    MAX_SHUTDOWN_MESSAGE_BYTES,
    MAX_SHUTDOWN_MESSAGE_CHARS,
    PASSED_SHUTDOWN_TIME,
    ShutdownMessage,
    effective_outcome,
    fizzle_message,
    is_abort,
    parse_shutdown_message,
    shutdown_code,
)


@pytest.mark.parametrize(
    "message, abort",
    [
        ("100 Shutdown as requested", False),
        ("200 Intended work completed ok", False),
        ("300 Nothing to do", True),
        ("400 Banned", True),
        ("500 Site problem", True),
        ("600 Grid-wide problem", True),
        ("700 Transient problem", True),
        ("900 Something new", True),
        ("  300 padded", True),
        ("299 Almost", False),
        ("OK no code", False),
        ("30 short", False),
        ("3a0 letters", False),
        ("", False),
        (None, False),
    ],
)
def test_codes_of_300_and_above_are_aborts(message: Optional[str], abort: bool) -> None:
    assert is_abort(message) is abort


def test_factory_messages_are_700s_and_only_the_heartbeat_ones_are_aborts() -> None:
    for message in (HEARTBEAT_NOT_CREATED, HEARTBEAT_NOT_UPDATED, EXCEEDED_WALLCLOCK, PASSED_SHUTDOWN_TIME, FAILED_TO_START):
        assert shutdown_code(message) == 700
    # The payload failed to heartbeat: its verdict. The others are the factory's (issue 9 item 2).
    assert is_abort(HEARTBEAT_NOT_CREATED) and is_abort(HEARTBEAT_NOT_UPDATED)
    assert not any(is_abort(message) for message in (EXCEEDED_WALLCLOCK, PASSED_SHUTDOWN_TIME, FAILED_TO_START))
    assert HEARTBEAT_NOT_CREATED == "700 Heartbeat file not created"
    assert HEARTBEAT_NOT_UPDATED == "700 Heartbeat file not updated"
    assert EXCEEDED_WALLCLOCK == "700 Exceeded max_wallclock_seconds"
    assert PASSED_SHUTDOWN_TIME == "700 Passed shutdowntime"
    assert FAILED_TO_START == "700 Failed to start"


def test_fizzle_message_is_vacs_text() -> None:
    assert fizzle_message(42) == "300 Vac detects fizzle after 42 seconds"
    assert is_abort(fizzle_message(42))


def test_silent_machine_that_ends_before_fizzle_seconds_fizzled() -> None:
    assert effective_outcome(None, 1000, 1100, 600) == "300 Vac detects fizzle after 100 seconds"
    assert effective_outcome("", 1000, 1100, 600) == "300 Vac detects fizzle after 100 seconds"


def test_silent_machine_that_ran_long_enough_has_no_outcome() -> None:
    assert effective_outcome(None, 1000, 1600, 600) is None
    assert effective_outcome(None, 1000, 5000, 600) is None


def test_a_written_message_wins_over_fizzle() -> None:
    assert effective_outcome("200 Done\n", 1000, 1010, 600) == "200 Done"


def test_never_started_or_unknown_finish_has_no_fizzle() -> None:
    assert effective_outcome(None, None, 1100, 600) is None
    assert effective_outcome(None, 1000, None, 600) is None


def test_finish_before_start_counts_as_zero_seconds() -> None:
    assert effective_outcome(None, 1000, 990, 600) == "300 Vac detects fizzle after 0 seconds"


@given(st.text(max_size=20))
def test_shutdown_code_is_none_or_three_digits(message: str) -> None:
    code = shutdown_code(message)
    assert code is None or 0 <= code <= 999
    assert is_abort(message) == (code is not None and code >= 300)


def test_non_ascii_digits_are_not_a_shutdown_code() -> None:
    # '²' and '٣' are str.isdigit() but not codes; found by Hypothesis.
    assert shutdown_code("00² x") is None
    assert shutdown_code("٣٠٠ No work") is None
    assert not is_abort("٣٠٠ No work")


# ---------------------------------------------------------------- what a shutdown_message file says (issue 8 item 2)


def test_binary_shutdown_message_is_decoded_with_replacement() -> None:
    message = parse_shutdown_message(b"\xff\xfe300 bad")
    assert message == ShutdownMessage(None, "\ufffd\ufffd300 bad")
    assert not message.is_abort  # Vac 03 could not parse its first three bytes as a code either


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\n\t\r\n", b"\x00\x1b\x07\x7f", b"\xe2\x80\xae\n"])
def test_empty_blank_or_control_only_content_is_no_message(raw: bytes) -> None:
    assert parse_shutdown_message(raw) is None


def test_first_line_after_blank_lines_is_the_message() -> None:
    assert parse_shutdown_message(b"\n  \n  300 No more work  \r\nsecond line\n") == ShutdownMessage(300, "300 No more work")


def test_control_and_format_characters_become_spaces() -> None:
    message = parse_shutdown_message(b"300\tNo work\x1b[2J\xe2\x80\xae here")
    assert message is not None
    assert message.text == "300 No work [2J  here"
    assert message.code == 300


def test_message_is_cut_to_vacs_200_characters() -> None:
    message = parse_shutdown_message(b"200 " + b"x" * 500)
    assert message is not None
    assert len(message.text) == MAX_SHUTDOWN_MESSAGE_CHARS == 200
    assert message.code == 200


def test_message_without_a_code_keeps_its_text() -> None:
    assert parse_shutdown_message(b"Payload said goodbye\n") == ShutdownMessage(None, "Payload said goodbye")


def test_bytes_beyond_the_cap_are_not_read() -> None:
    late = b"\n" * MAX_SHUTDOWN_MESSAGE_BYTES + b"300 Too late"
    assert parse_shutdown_message(late) is None


def test_an_invalid_shutdown_message_cannot_be_made() -> None:
    for code, text in [(None, ""), (None, " padded"), (None, "two\nlines"), (None, "bell\x07"), (300, "200 Wrong"),
                       (None, "300 No code"), (None, "x" * 201)]:
        with pytest.raises(ValueError):
            ShutdownMessage(code, text)


@given(st.binary(max_size=600))
def test_any_bytes_are_no_message_or_a_valid_one(raw: bytes) -> None:
    message = parse_shutdown_message(raw)
    if message is not None:
        assert message == ShutdownMessage(message.code, message.text)  # re-validates
        assert message.code == shutdown_code(message.text)
        assert message.is_abort == is_abort(message.text)
