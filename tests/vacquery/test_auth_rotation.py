"""Two keys during a rotation, and the key and mode following a reload (issue 9 item 6).

`vacquery_key_file` takes one or two paths: the first key signs, both are accepted.
`ReloadableAuthenticator.follow(settings)` is what vacd runs after each pass: it re-reads
the key files and rebuilds the Authenticator when a key or `vacquery_auth` changed,
keeping the replay cache.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.vacquery.sample_statuses import SPACE, snapshot
from vacquery.auth import AuthMode, Authenticator, ReloadableAuthenticator, Scope
from vacquery.codec import encode, encode_snapshot
from vacquery.messages import MachinetypesQuery
from vacquery.responder import respond

OLD_KEY = b"the old site key, 32 bytes long!"
NEW_KEY = b"the new site key, 32 bytes long!"
FACTORY = "f1.example.com"
NOW = 1_700_000_000.0
PUBLISHED = encode_snapshot(snapshot(FACTORY))
TO_F1 = Scope.query_to(FACTORY, SPACE)
PEER = "192.0.2.10"


def query(cookie: str = "ab" * 32) -> bytes:
    return encode(MachinetypesQuery(SPACE, cookie))


def with_keys(*keys: bytes, mode: AuthMode = AuthMode.REQUIRED) -> Authenticator:
    return Authenticator(list(keys), mode, nonce_source=os.urandom)


def answered(request: bytes, responder: Optional[Authenticator], counters: Optional[Counter[str]] = None) -> int:
    # PEER is a factory of the space: an unsigned query from it is answered in full (responder rule 3b).
    return len(respond(request, PEER, PUBLISHED, NOW, authenticator=responder, counters=counters,
                       trusted_sources=frozenset([PEER])))


def test_responder_holding_new_and_old_keys_accepts_queries_signed_with_either() -> None:
    responder = with_keys(NEW_KEY, OLD_KEY)
    assert answered(with_keys(NEW_KEY).sign(query(), NOW, TO_F1), responder) == 3
    assert answered(with_keys(OLD_KEY).sign(query(), NOW, TO_F1), responder) == 3
    assert responder.counters["authenticated"] == 2 and responder.counters["authenticated_with_older_key"] == 1


def test_a_client_signs_with_its_first_key_only() -> None:
    request = with_keys(NEW_KEY, OLD_KEY).sign(query(), NOW, TO_F1)
    assert answered(request, with_keys(NEW_KEY)) == 3
    assert answered(request, with_keys(OLD_KEY)) == 0


def test_client_with_only_the_old_key_is_rejected_once_the_old_key_is_removed() -> None:
    old_client = with_keys(OLD_KEY)
    assert answered(old_client.sign(query(), NOW, TO_F1), with_keys(NEW_KEY, OLD_KEY)) == 3
    counters: Counter[str] = Counter()
    assert answered(old_client.sign(query(), NOW, TO_F1), with_keys(NEW_KEY), counters) == 0
    assert counters == {"auth_bad_tag": 1}


def test_replies_signed_with_the_new_key_are_verified_by_a_census_that_holds_both() -> None:
    replies = respond(with_keys(NEW_KEY, OLD_KEY).sign(query(), NOW, TO_F1), PEER, PUBLISHED, NOW,
                      authenticator=with_keys(NEW_KEY, OLD_KEY))
    census_side = with_keys(OLD_KEY, NEW_KEY)  # a factory at step 1 of the rotation
    assert all(census_side.verify(reply, NOW, Scope.reply_in(SPACE)).is_authenticated for reply in replies)


@dataclass(frozen=True)
class _Settings:
    vacquery_key_file: tuple[str, ...] = ()
    vacquery_auth: str = "required"


def key_file(tmp_path: Path, name: str, key: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(key + b"\n")
    path.chmod(0o600)
    return str(path)


def test_auth_mode_follows_settings_from_no_key_to_required_to_optional(tmp_path: Path) -> None:
    keys = (key_file(tmp_path, "site.key", NEW_KEY),)
    follower = ReloadableAuthenticator(_Settings())
    assert follower.current is None and answered(query(), follower.current) == 3
    assert follower.follow(_Settings(keys))
    counters: Counter[str] = Counter()
    assert answered(query(), follower.current, counters) == 0 and counters == {"auth_unauthenticated": 1}
    assert answered(with_keys(NEW_KEY).sign(query(), NOW, TO_F1), follower.current) == 3
    assert follower.follow(_Settings(keys, "optional"))
    assert answered(query(), follower.current) == 3
    assert follower.follow(_Settings())
    assert follower.current is None


def test_follow_rebuilds_nothing_when_nothing_changed(tmp_path: Path) -> None:
    settings = _Settings((key_file(tmp_path, "site.key", NEW_KEY),))
    follower = ReloadableAuthenticator(settings)
    running = follower.current
    assert not follower.follow(settings) and follower.current is running


def test_the_three_steps_of_a_rotation_never_leave_two_factories_unable_to_talk(tmp_path: Path) -> None:
    old, new = key_file(tmp_path, "old.key", OLD_KEY), key_file(tmp_path, "new.key", NEW_KEY)
    steps = [(old,), (old, new), (new, old), (new,)]
    # Factory A moves one step ahead of factory B at every stage; each must answer the other.
    for a_step, b_step in zip(steps[1:], steps[:-1]):
        a, b = ReloadableAuthenticator(_Settings(a_step)), ReloadableAuthenticator(_Settings(b_step))
        assert a.current is not None and b.current is not None
        assert answered(a.current.sign(query(), NOW, TO_F1), b.current) == 3, (a_step, b_step)
        assert answered(b.current.sign(query(), NOW, TO_F1), a.current) == 3, (a_step, b_step)


def test_a_key_replaced_in_place_is_followed(tmp_path: Path) -> None:
    settings = _Settings((key_file(tmp_path, "site.key", OLD_KEY),))
    follower = ReloadableAuthenticator(settings)
    key_file(tmp_path, "site.key", NEW_KEY)
    assert follower.follow(settings)
    assert answered(with_keys(NEW_KEY).sign(query(), NOW, TO_F1), follower.current) == 3
    assert answered(with_keys(OLD_KEY).sign(query(), NOW, TO_F1), follower.current) == 0


def test_a_query_accepted_before_a_reload_cannot_be_replayed_after_it(tmp_path: Path) -> None:
    old, new = key_file(tmp_path, "old.key", OLD_KEY), key_file(tmp_path, "new.key", NEW_KEY)
    follower = ReloadableAuthenticator(_Settings((old,)))
    request = with_keys(OLD_KEY).sign(query(), NOW, TO_F1)
    assert answered(request, follower.current) == 3
    assert follower.follow(_Settings((new, old)))
    counters: Counter[str] = Counter()
    assert answered(request, follower.current, counters) == 0 and counters == {"auth_replayed": 1}


def test_an_unreadable_key_keeps_the_running_authenticator_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _Settings((key_file(tmp_path, "site.key", NEW_KEY),))
    follower = ReloadableAuthenticator(settings)
    running = follower.current
    broken = _Settings((str(tmp_path / "missing.key"),))
    with caplog.at_level(logging.ERROR, logger="vacquery.auth"):
        assert not follower.follow(broken)
        assert not follower.follow(broken)
    assert follower.current is running
    assert [record.getMessage() for record in caplog.records].count(
        f"VacQuery key not changed, the running one stays: {tmp_path / 'missing.key'}: cannot read VacQuery key: "
        "No such file or directory") == 1
