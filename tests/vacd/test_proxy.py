"""X.509 proxies (RFC 3820 and legacy) checked with cryptography (§6.6)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from vacd.proxy import (
    LIMITED_PROXY_POLICY_OID,
    PROXY_CERT_INFO_OID,
    Issuer,
    ProxyError,
    load_issuer,
    load_pem_certificates,
    make_proxy,
    not_valid_after_utc,
    not_valid_before_utc,
    proxy_cert_info_der,
)

NOW = 1_700_000_000
EXPIRY = NOW + 86_400
# ProxyCertInfo ::= SEQUENCE { SEQUENCE { OID 1.3.6.1.4.1.3536.1.1.1.9 } }, by hand from X.690.
LIMITED_PROXY_CERT_INFO = bytes.fromhex("300f300d060b2b060104019b5001010109")


def utc(timestamp: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)


def certificate(subject: x509.Name, issuer_name: x509.Name, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey, not_after: int) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(utc(NOW - 86_400))
        .not_valid_after(utc(not_after))
        .sign(signer, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def grid() -> dict[str, object]:
    """A CA and a user certificate it signed, as a VO's robot certificate would be."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    user_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Grid"), x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    user_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Grid"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Robots"),
            x509.NameAttribute(NameOID.COMMON_NAME, "robot pilot"),
        ]
    )
    ca = certificate(ca_name, ca_name, ca_key, ca_key, NOW + 10 * 365 * 86_400)
    user = certificate(user_name, ca_name, user_key, ca_key, NOW + 365 * 86_400)
    return {"ca": ca, "user": user, "user_key": user_key}


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: rsa.RSAPrivateKey, encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@pytest.fixture(scope="module")
def issuer(grid: dict) -> Issuer:
    return load_issuer(pem(grid["user"]) + pem(grid["ca"]), key_pem(grid["user_key"]))


def split_output(output: str) -> tuple[list[x509.Certificate], rsa.RSAPrivateKey]:
    data = output.encode()
    certificates = load_pem_certificates(data)
    key = serialization.load_pem_private_key(data[data.index(b"-----BEGIN RSA PRIVATE KEY-----") :], password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return certificates, key


def test_rfc3820_proxy_has_issuer_subject_plus_cn_and_limited_policy(grid: dict, issuer: Issuer) -> None:
    output = make_proxy(issuer, now=NOW, expiry_time=EXPIRY, common_name="example")
    (proxy, user, ca), key = split_output(output)
    assert user == grid["user"] and ca == grid["ca"]
    assert proxy.issuer == grid["user"].subject
    assert list(proxy.subject.rdns) == list(grid["user"].subject.rdns) + [
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "example")])
    ]
    extension = proxy.extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
    assert extension.critical
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    assert extension.value.value == LIMITED_PROXY_CERT_INFO
    key_usage = proxy.extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical
    assert (key_usage.value.digital_signature, key_usage.value.key_encipherment, key_usage.value.key_agreement) == (True, True, True)
    assert not key_usage.value.key_cert_sign
    assert not_valid_after_utc(proxy) == utc(EXPIRY)
    assert not_valid_before_utc(proxy) == utc(NOW - 300)
    assert key.key_size == 2048
    proxy_public_key = proxy.public_key()
    assert isinstance(proxy_public_key, rsa.RSAPublicKey)
    assert key.public_key().public_numbers() == proxy_public_key.public_numbers()
    grid["user"].public_key().verify(
        proxy.signature, proxy.tbs_certificate_bytes, padding.PKCS1v15(), proxy.signature_hash_algorithm
    )
    assert isinstance(proxy.signature_hash_algorithm, hashes.SHA256)


def test_default_common_name_is_the_serial_number(issuer: Issuer) -> None:
    (proxy, *_chain), _key = split_output(make_proxy(issuer, now=NOW, expiry_time=EXPIRY))
    assert proxy.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[-1].value == str(proxy.serial_number)


def test_legacy_proxy_says_limited_proxy_and_has_no_proxy_cert_info(grid: dict, issuer: Issuer) -> None:
    (proxy, *_chain), _key = split_output(make_proxy(issuer, now=NOW, expiry_time=EXPIRY, common_name="ignored", legacy=True))
    assert proxy.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[-1].value == "limited proxy"
    with pytest.raises(x509.ExtensionNotFound):
        proxy.extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
    assert proxy.issuer == grid["user"].subject


def test_refused_when_the_issuer_expires_first(issuer: Issuer) -> None:
    with pytest.raises(ProxyError, match="expires"):
        make_proxy(issuer, now=NOW, expiry_time=NOW + 2 * 365 * 86_400)


def test_refused_when_expiry_is_not_in_the_future(issuer: Issuer) -> None:
    with pytest.raises(ProxyError):
        make_proxy(issuer, now=NOW, expiry_time=NOW)


def test_issuer_key_must_match_and_be_unencrypted(grid: dict) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ProxyError, match="does not match"):
        load_issuer(pem(grid["user"]), key_pem(other_key))
    with pytest.raises(ProxyError, match="unencrypted"):
        load_issuer(pem(grid["user"]), key_pem(grid["user_key"], serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ProxyError):
        load_issuer(b"not a certificate", key_pem(grid["user_key"]))


def test_proxy_cert_info_encoding() -> None:
    assert proxy_cert_info_der(LIMITED_PROXY_POLICY_OID) == LIMITED_PROXY_CERT_INFO
    # Inherit-all (id-ppl-inheritAll 1.3.6.1.5.5.7.21.1), to check the encoder on another OID.
    assert proxy_cert_info_der("1.3.6.1.5.5.7.21.1") == bytes.fromhex("300c300a06082b06010505071501")
