"""vacd.proxy on cryptography releases older than the newest (issue 12 item 1).

EL9 ships python3-cryptography 36.0.1, which has no `x509.load_pem_x509_certificates` (added
in 39) and no aware `not_valid_after_utc` / `not_valid_before_utc` (added in 42). These tests
take those away from whatever release is installed, so the fallbacks are checked on every
run, not only in the EL9 venv of `./test`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from vacd.proxy import (
    load_issuer,
    load_pem_certificates,
    load_pem_certificates_one_by_one,
    not_valid_after_utc,
    not_valid_before_utc,
)

NOW = 1_700_000_000
START = datetime.datetime.fromtimestamp(NOW - 86_400, tz=datetime.timezone.utc)
END = datetime.datetime.fromtimestamp(NOW + 30 * 86_400, tz=datetime.timezone.utc)


def self_signed(common_name: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(END)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


@pytest.fixture(scope="module")
def issuer_and_ca() -> tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]:
    issuer, issuer_key = self_signed("vac test issuer")
    ca, _ca_key = self_signed("vac test ca")
    return issuer, issuer_key, ca


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def traditional_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def test_bundle_is_split_into_its_certificates_in_order_ignoring_text_between_them(
        issuer_and_ca: tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]) -> None:
    issuer, _key, ca = issuer_and_ca
    # openssl x509 -text and `cat` of files put such text around certificates.
    bundle = b"subject=CN = vac test issuer\n" + pem(issuer) + b"\nissuer=CN = vac test ca\n" + pem(ca)
    assert load_pem_certificates_one_by_one(bundle) == [issuer, ca]
    assert load_pem_certificates(bundle) == [issuer, ca]


def test_bundle_without_a_certificate_is_refused_like_the_newer_loader_refuses_it() -> None:
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_pem_certificates_one_by_one(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")


def test_issuer_and_chain_load_when_cryptography_has_no_bundle_loader(
        issuer_and_ca: tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate],
        monkeypatch: pytest.MonkeyPatch) -> None:
    issuer, key, ca = issuer_and_ca
    monkeypatch.delattr(x509, "load_pem_x509_certificates", raising=False)  # as in cryptography 36.0.1
    loaded = load_issuer(pem(issuer) + pem(ca), traditional_key_pem(key))
    assert loaded.certificate == issuer and loaded.chain == (ca,)


@dataclass(frozen=True)
class CertificateWithNaiveTimesOnly:
    """What cryptography < 42 offers for validity: naive datetimes that are in UTC."""

    not_valid_before: datetime.datetime
    not_valid_after: datetime.datetime


def test_naive_validity_times_of_older_cryptography_are_read_as_utc() -> None:
    naive = CertificateWithNaiveTimesOnly(START.replace(tzinfo=None), END.replace(tzinfo=None))
    certificate = cast(x509.Certificate, naive)
    assert not_valid_before_utc(certificate) == START
    assert not_valid_after_utc(certificate) == END
    assert not_valid_after_utc(certificate).tzinfo is not None


def test_aware_validity_times_are_those_of_the_certificate(
        issuer_and_ca: tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]) -> None:
    issuer, _key, _ca = issuer_and_ca
    assert (not_valid_before_utc(issuer), not_valid_after_utc(issuer)) == (START, END)

