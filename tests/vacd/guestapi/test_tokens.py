"""Session tokens (vacd.guestapi.tokens): lifetimes, binding, expiry and which paths need one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.guestapi.tokens import (
    MAX_TTL_SECONDS,
    MIN_TTL_SECONDS,
    TOKEN_HEADERS,
    TTL_HEADERS,
    PathNeed,
    SessionTokens,
    TokenHolder,
    is_cloud_init_path,
    is_needed,
    new_key,
    presented_token,
    requested_ttl_seconds,
    token_need,
)
from vacd.guestapi.wire import GuestRequestRejected

NOW = 1_767_225_600.25
HOLDER = TokenHolder(3, "1b4e28ba-2fa1-11d2-883f-000000000003")
KEY = bytes(range(32))


def ttl_headers(value: str, name: str = TTL_HEADERS[0]) -> tuple[tuple[str, str], ...]:
    return (("host", "169.254.169.254"), (name, value))


# Lifetimes
@pytest.mark.parametrize("name", TTL_HEADERS)
@pytest.mark.parametrize("ttl_seconds", [MIN_TTL_SECONDS, 60, MAX_TTL_SECONDS])
def test_lifetime_in_range_is_taken_from_either_header(name: str, ttl_seconds: int) -> None:
    assert requested_ttl_seconds(ttl_headers(str(ttl_seconds), name)) == ttl_seconds


@pytest.mark.parametrize("value", ["0", "21601", "99999999999", "", "-1", "+60", "60.0", "6e1", " 60", "٦٠", "0x3c"])
def test_lifetime_missing_or_out_of_range_or_malformed_is_400(value: str) -> None:
    with pytest.raises(GuestRequestRejected) as refused:
        requested_ttl_seconds(ttl_headers(value))
    assert refused.value.status == 400


def test_no_lifetime_header_is_400() -> None:
    with pytest.raises(GuestRequestRejected) as refused:
        requested_ttl_seconds((("host", "x"),))
    assert (refused.value.status, refused.value.reason) == (
        400, "token request without X-aws-ec2-metadata-token-ttl-seconds")


def test_two_lifetimes_that_disagree_are_400_and_that_agree_are_taken() -> None:
    with pytest.raises(GuestRequestRejected) as refused:
        requested_ttl_seconds(((TTL_HEADERS[0], "60"), (TTL_HEADERS[1], "61")))
    assert refused.value.status == 400
    assert requested_ttl_seconds(((TTL_HEADERS[0], "60"), (TTL_HEADERS[1], "60"))) == 60


def test_forwarded_token_request_is_403_even_with_a_good_lifetime() -> None:
    with pytest.raises(GuestRequestRejected) as refused:
        requested_ttl_seconds(ttl_headers("60") + (("x-forwarded-for", "10.0.0.7"),))
    assert refused.value.status == 403


@given(st.text(max_size=30))
def test_any_lifetime_text_parses_in_range_or_is_refused_with_400(value: str) -> None:
    try:
        ttl_seconds = requested_ttl_seconds(ttl_headers(value))
    except GuestRequestRejected as refused:
        assert refused.status == 400
    else:
        assert MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS
        assert value.isascii() and value.isdigit() and int(value) == ttl_seconds


@given(st.integers(min_value=MIN_TTL_SECONDS, max_value=MAX_TTL_SECONDS), st.integers(min_value=0, max_value=5))
def test_every_lifetime_in_range_is_accepted_with_leading_zeros(ttl_seconds: int, zeros: int) -> None:
    assert requested_ttl_seconds(ttl_headers("0" * zeros + str(ttl_seconds))) == ttl_seconds


# Presented tokens
def test_token_is_read_from_either_header_and_conflicting_ones_are_refused() -> None:
    assert presented_token(()) is None
    for name in TOKEN_HEADERS:
        assert presented_token(((name, "abc"),)) == "abc"
    with pytest.raises(GuestRequestRejected) as refused:
        presented_token(((TOKEN_HEADERS[0], "abc"), (TOKEN_HEADERS[1], "abd")))
    assert refused.value.status == 401


# Issue and check
def test_token_is_valid_for_its_holder_until_it_expires() -> None:
    tokens = SessionTokens(KEY)
    token = tokens.issue(HOLDER, 60, NOW)
    assert tokens.problem(token, HOLDER, NOW) is None
    assert tokens.problem(token, HOLDER, int(NOW) + 59.999) is None
    assert tokens.problem(token, HOLDER, int(NOW) + 60) == "token expired"


def test_token_of_another_slot_or_of_a_recreated_machine_is_refused() -> None:
    tokens = SessionTokens(KEY)
    token = tokens.issue(HOLDER, 60, NOW)
    assert tokens.problem(token, TokenHolder(4, HOLDER.machine_uuid), NOW) == "token not issued to this machine"
    recreated = TokenHolder(3, "22222222-2222-4222-8222-222222222222")
    assert tokens.problem(token, recreated, NOW) == "token not issued to this machine"


def test_token_of_another_key_is_refused() -> None:
    token = SessionTokens(new_key()).issue(HOLDER, 60, NOW)
    assert SessionTokens(new_key()).problem(token, HOLDER, NOW) == "token not issued to this machine"


def test_a_longer_expiry_cannot_be_forged_into_a_token() -> None:
    tokens = SessionTokens(KEY)
    token = tokens.issue(HOLDER, 1, NOW)
    later = tokens.issue(HOLDER, MAX_TTL_SECONDS, NOW)
    forged = later.split(".")[0] + "." + later.split(".")[1] + "." + token.split(".")[2]
    assert tokens.problem(forged, HOLDER, NOW) == "token not issued to this machine"


def test_tokens_carry_neither_the_key_nor_the_uuid() -> None:
    token = SessionTokens(KEY).issue(HOLDER, 60, NOW)
    assert HOLDER.machine_uuid not in token and KEY.hex() not in token
    assert token.isascii() and token.isprintable() and " " not in token


@given(st.text(max_size=80))
def test_any_presented_text_is_refused_unless_it_is_the_token(text: str) -> None:
    tokens = SessionTokens(KEY)
    token = tokens.issue(HOLDER, 60, NOW)
    assert (tokens.problem(text, HOLDER, NOW) is None) == (text == token)


@given(st.integers(min_value=0, max_value=57), st.sampled_from("AQgw_-9z"))
def test_changing_any_character_of_a_token_voids_it(position: int, replacement: str) -> None:
    tokens = SessionTokens(KEY)
    token = tokens.issue(HOLDER, 60, NOW)
    changed = token[:position] + replacement + token[position + 1:]
    assert (tokens.problem(changed, HOLDER, NOW) is None) == (changed == token)


def test_short_keys_and_lifetimes_out_of_range_are_our_bugs() -> None:
    with pytest.raises(ValueError):
        SessionTokens(b"short")
    with pytest.raises(ValueError):
        SessionTokens(KEY).issue(HOLDER, MAX_TTL_SECONDS + 1, NOW)


# Answers
def test_put_answer_is_the_token_with_its_lifetime_echoed() -> None:
    tokens = SessionTokens(KEY)
    response = tokens.answer_put(ttl_headers("120"), HOLDER, NOW)
    assert (response.status, response.content_type) == (200, "text/plain")
    assert dict(response.headers) == {"X-aws-ec2-metadata-token-ttl-seconds": "120"}
    assert tokens.problem(response.body.decode(), HOLDER, NOW + 119) is None


@pytest.mark.parametrize("headers, status", [
    ((("host", "x"),), 400),
    (ttl_headers("0"), 400),
    (ttl_headers("60") + (("x-forwarded-for", "127.0.0.1"),), 403),
])
def test_put_answer_refuses_without_issuing(headers: tuple[tuple[str, str], ...], status: int) -> None:
    response = SessionTokens(KEY).answer_put(headers, HOLDER, NOW)
    assert response.status == status and response.close
    assert b"v1." not in response.body


def test_refusal_only_where_a_token_is_needed() -> None:
    tokens = SessionTokens(KEY)
    token = tokens.issue(HOLDER, 60, NOW)
    with_token = ((TOKEN_HEADERS[0], token),)
    assert tokens.refusal("/openstack/latest/user_data", (), "required", HOLDER, NOW) is None
    assert tokens.refusal("/latest/meta-data.json", (), "optional", HOLDER, NOW) is None
    refused = tokens.refusal("/latest/meta-data.json", (), "required", HOLDER, NOW)
    assert refused is not None and (refused.status, refused.reason) == (401, "token required")
    assert tokens.refusal("/latest/meta-data.json", with_token, "required", HOLDER, NOW) is None
    expired = tokens.refusal("/latest/meta-data.json", with_token, "required", HOLDER, NOW + 60)
    assert expired is not None and (expired.status, expired.reason) == (401, "token expired")
    # A stale token where none is needed is not looked at, so it cannot break a boot.
    assert tokens.refusal("/latest/meta-data/instance-id", with_token, "required", HOLDER, NOW + 3600) is None


# Which paths need a token
@pytest.mark.parametrize("path", [
    "/", "/latest", "/latest/", "/2009-04-04/", "/1.0/meta-data/", "/latest/meta-data/instance-id",
    "/latest/meta-data/public-keys/0/openssh-key", "/2021-03-23/meta-data/", "/latest/user-data",
    "/openstack", "/openstack/", "/openstack/latest/", "/openstack/2018-08-27",
    "/openstack/latest/meta_data.json", "/openstack/2015-10-15/user_data", "/openstack/latest/vendor_data.json",
    "/openstack/latest/vendor_data2.json", "/openstack/latest/network_data.json",
])
def test_cloud_init_paths_never_need_a_token(path: str) -> None:
    assert is_cloud_init_path(path)
    assert token_need(path) is PathNeed.NEVER
    assert not is_needed(token_need(path), "required")


@pytest.mark.parametrize("path", [
    "/latest/meta-data.json", "/latest/meta_data.json", "/2012-01-01/meta-data.json",
    "/openstack/latest/meta-data.json", "/openstack/latest/user-data", "/openstack/latest/meta-data/",
    "/openstack/latest/meta-data/instance-id", "/latest/api/token", "/latest/user-data/x", "/nonsense",
    "/openstack/junk/meta_data.json", "/openstack/latest/meta_data.json/x",
])
def test_vac_paths_need_a_token_only_when_required(path: str) -> None:
    assert token_need(path) is PathNeed.IF_REQUIRED
    assert is_needed(token_need(path), "required") and not is_needed(token_need(path), "optional")


def test_secret_paths_always_need_a_token() -> None:
    assert is_needed(PathNeed.ALWAYS, "optional") and is_needed(PathNeed.ALWAYS, "required")
    assert not is_needed(PathNeed.NEVER, "required")
