"""vacquery.auth: HMAC tags with time and nonce, modes, replay and skew, key files."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vacquery.sample_statuses import SPACE
from vacquery.auth import (
    AuthMode,
    AuthRejected,
    Authenticator,
    KeyFileError,
    Scope,
    authenticator_from_settings,
    load_site_key,
)
from vacquery.codec import decode_query, encode
from vacquery.messages import MachinetypesQuery

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000.0


def nonces(seed: int = 1) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda size: bytes(rng.getrandbits(8) for _ in range(size))


def authenticator(mode: AuthMode = AuthMode.REQUIRED, key: bytes = KEY, seed: int = 1) -> Authenticator:
    return Authenticator(key, mode, nonce_source=nonces(seed))


QUERY = encode(MachinetypesQuery(SPACE, "ab" * 32, "Vac 04.00.00a1 vacd-factory"))
TO_F1 = Scope.query_to("f1.example.com", SPACE)


def test_signed_datagram_verifies_and_yields_the_original_bytes() -> None:
    signed = authenticator(seed=1).sign(QUERY, NOW, TO_F1)
    verified = authenticator(seed=2).verify(signed, NOW + 5, TO_F1, "192.0.2.7")
    assert verified.is_authenticated and verified.body == QUERY


def test_vac03_peer_still_reads_a_signed_datagram() -> None:
    # Vac 03 json.loads()es the datagram and ignores keys it does not know (§3.3).
    document = json.loads(authenticator().sign(QUERY, NOW, TO_F1))
    assert document["space"] == SPACE and document["method"] == "machinetypes"
    assert document["vacquery_auth"].startswith("2.1700000000.")
    assert decode_query(authenticator().sign(QUERY, NOW, TO_F1)) == decode_query(QUERY)


@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_altered_byte_is_rejected(position: int, flip: int) -> None:
    signed = bytearray(authenticator().sign(QUERY, NOW, TO_F1))
    signed[position % len(signed)] ^= flip
    verifier = authenticator(AuthMode.OPTIONAL)
    try:
        verified = verifier.verify(bytes(signed), NOW, TO_F1)
    except AuthRejected:
        return
    # Damage to the marker itself turns the datagram into an unsigned one: only optional
    # mode accepts that, and never as authenticated.
    assert not verified.is_authenticated


def test_other_key_is_a_bad_tag_even_in_optional_mode() -> None:
    signed = authenticator(key=b"another key of thirty-two bytes!").sign(QUERY, NOW, TO_F1)
    verifier = authenticator(AuthMode.OPTIONAL)
    with pytest.raises(AuthRejected) as rejection:
        verifier.verify(signed, NOW, TO_F1)
    assert rejection.value.reason == "bad_tag" and verifier.counters["bad_tag"] == 1


@pytest.mark.parametrize("skew", [-31, 31, 3600])
def test_datagram_more_than_30_seconds_off_is_stale(skew: int) -> None:
    signed = authenticator().sign(QUERY, NOW, TO_F1)
    with pytest.raises(AuthRejected, match="stale"):
        authenticator().verify(signed, NOW + skew, TO_F1)


@pytest.mark.parametrize("skew", [-30, 0, 30])
def test_datagram_within_30_seconds_is_fresh(skew: int) -> None:
    assert authenticator().verify(authenticator().sign(QUERY, NOW, TO_F1), NOW + skew, TO_F1).is_authenticated


def test_replayed_datagram_is_dropped_and_counted() -> None:
    signed = authenticator().sign(QUERY, NOW, TO_F1)
    verifier = authenticator()
    verifier.verify(signed, NOW, TO_F1)
    with pytest.raises(AuthRejected, match="replayed"):
        verifier.verify(signed, NOW + 1, TO_F1)
    assert verifier.counters == {"authenticated": 1, "replayed": 1}


def test_nonces_are_forgotten_only_once_they_would_be_stale_anyway() -> None:
    signer, verifier = authenticator(), authenticator()
    signed = signer.sign(QUERY, NOW, TO_F1)
    verifier.verify(signed, NOW, TO_F1)
    for step in range(1, 40):
        verifier.verify(signer.sign(QUERY, NOW + step, TO_F1), NOW + step, TO_F1)
    with pytest.raises(AuthRejected, match="stale"):
        verifier.verify(signed, NOW + 40, TO_F1)


def test_required_mode_drops_unsigned_datagrams() -> None:
    verifier = authenticator(AuthMode.REQUIRED)
    with pytest.raises(AuthRejected, match="unauthenticated"):
        verifier.verify(QUERY, NOW, TO_F1)
    assert verifier.counters["unauthenticated"] == 1


def test_optional_mode_accepts_unsigned_datagrams_as_unauthenticated() -> None:
    verifier = authenticator(AuthMode.OPTIONAL)
    verified = verifier.verify(QUERY, NOW, TO_F1)
    assert verified.body == QUERY and not verified.is_authenticated
    assert verifier.counters["unauthenticated_accepted"] == 1


def test_truncated_tag_is_malformed_auth() -> None:
    signed = authenticator().sign(QUERY, NOW, TO_F1)
    with pytest.raises(AuthRejected, match="malformed_auth"):
        authenticator(AuthMode.OPTIONAL).verify(signed[:-10] + b'"}', NOW, TO_F1)


def test_full_replay_cache_fails_closed() -> None:
    signer = authenticator()
    verifier = Authenticator(KEY, nonce_source=nonces(), replay_capacity=2)
    verifier.verify(signer.sign(QUERY, NOW, TO_F1), NOW, TO_F1)
    verifier.verify(signer.sign(QUERY, NOW, TO_F1), NOW, TO_F1)
    with pytest.raises(AuthRejected, match="replay_cache_full"):
        verifier.verify(signer.sign(QUERY, NOW, TO_F1), NOW, TO_F1)


def test_short_key_is_refused() -> None:
    with pytest.raises(KeyFileError):
        Authenticator(b"short", nonce_source=nonces())


def test_key_file_is_read_without_surrounding_whitespace(tmp_path: Path) -> None:
    key_file = tmp_path / "vacquery.key"
    key_file.write_bytes(b"  " + KEY + b"\n")
    key_file.chmod(0o600)
    assert load_site_key(key_file) == KEY


def test_missing_key_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="missing.key"):
        load_site_key(tmp_path / "missing.key")


@dataclass(frozen=True)
class _Settings:
    vacquery_key_file: Optional[str] = None
    vacquery_auth: str = "required"


def test_settings_choose_key_and_mode(tmp_path: Path) -> None:
    key_file = tmp_path / "vacquery.key"
    key_file.write_bytes(KEY)
    assert authenticator_from_settings(_Settings()) is None
    chosen = authenticator_from_settings(_Settings(str(key_file), "Optional"))
    assert chosen is not None and chosen.mode is AuthMode.OPTIONAL
    with pytest.raises(ValueError):
        authenticator_from_settings(_Settings(str(key_file), "sometimes"))
