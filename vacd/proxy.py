"""Make X.509 proxy certificates (RFC 3820, or Globus legacy) for machines and `vac proxy-init`.

Rules (behaviour reference §6.6, with the key size raised as §11 asks):
- The issuer is the first certificate of `x509cert.pem`; further certificates there are its
  chain and are appended after the proxy. `x509key.pem` holds its unencrypted private key,
  which must match the certificate.
- The proxy gets a new 2048-bit RSA key (Vac 03 used 1024 bits), a random serial, subject
  = issuer subject + one CN, SHA-256 signature, a critical keyUsage of digitalSignature,
  keyEncipherment and keyAgreement, and expires at the requested time. The RFC 3820 form
  carries a critical proxyCertInfo extension whose policy language is the limited-proxy
  OID; the legacy form has CN=limited proxy and no such extension.
- It starts five minutes before `now` (never before the issuer), so a guest whose clock
  lags a little accepts it.
- Making a proxy that would outlive its issuer is refused (ProxyError), as in Vac.

Output: proxy certificate PEM, then its private key PEM (traditional RSA format, as grid
tools expect), then the issuer and its chain.

Works with cryptography 36.0.1, EL9's python3-cryptography (issue 12 item 1): the few newer
calls are feature-detected in `load_pem_certificates` and `not_valid_after_utc` /
`not_valid_before_utc`, and the newest release's own versions are used where present.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from vacd.errors import VacError

PROXY_KEY_BITS = 2048
# RFC 3820 §3.8: id-pe-proxyCertInfo.
PROXY_CERT_INFO_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.14")
# Globus "limited proxy" policy language (§6.6); RFC 3820 §3.8.2 allows any language OID.
LIMITED_PROXY_POLICY_OID = "1.3.6.1.4.1.3536.1.1.1.9"
LEGACY_PROXY_COMMON_NAME = "limited proxy"
# Same allowance for clock skew as grid-proxy-init.
CLOCK_SKEW_SECONDS = 300
# One PEM certificate block (RFC 7468 §5.1), for splitting a bundle on cryptography < 39.
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


class ProxyError(VacError):
    """A proxy could not be made: unreadable issuer, mismatched key, or issuer expiring first."""


@dataclass(frozen=True)
class Issuer:
    """The certificate that signs proxies, its key, and the chain above it."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...] = ()


def load_issuer(certificate_pem: bytes, key_pem: bytes) -> Issuer:
    """Parse an issuer certificate (plus chain) and its unencrypted RSA key.

    Raises:
        ProxyError: no certificate, an unreadable or encrypted key, a non-RSA key, or a key
            that does not belong to the certificate.
    """
    try:
        certificates = load_pem_certificates(certificate_pem)
    except ValueError as error:
        raise ProxyError(f"unreadable issuer certificate: {error}") from error
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ProxyError(f"unreadable issuer key (it must be unencrypted): {error}") from error
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ProxyError("issuer key is not an RSA key")
    certificate = certificates[0]
    if private_key.public_key().public_numbers() != _rsa_public_numbers(certificate):
        raise ProxyError("issuer key does not match the issuer certificate")
    return Issuer(certificate, private_key, tuple(certificates[1:]))


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in order.

    Raises:
        ValueError: no certificate in `data`, or one that cannot be parsed.
    """
    # cryptography 39 added load_pem_x509_certificates; EL9's 36.0.1 reads one at a time.
    load_all: Optional[Callable[[bytes], list[x509.Certificate]]] = getattr(x509, "load_pem_x509_certificates", None)
    if load_all is not None:
        return list(load_all(data))
    return load_pem_certificates_one_by_one(data)


def load_pem_certificates_one_by_one(data: bytes) -> list[x509.Certificate]:
    """`load_pem_certificates` with only `x509.load_pem_x509_certificate`, which every
    cryptography release has: each BEGIN/END CERTIFICATE block is parsed on its own, and
    text between blocks (such as openssl's "subject=" lines) is ignored, as the newer
    loader ignores it.

    Raises:
        ValueError: no certificate in `data`, or one that cannot be parsed.
    """
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise ValueError("no PEM certificate found")
    return [x509.load_pem_x509_certificate(block) for block in blocks]


def not_valid_after_utc(certificate: x509.Certificate) -> datetime.datetime:
    """The certificate's notAfter as an aware UTC datetime."""
    # cryptography 42 added the aware not_valid_after_utc (and deprecated the naive
    # not_valid_after); EL9's 36.0.1 has only the naive one, which is in UTC.
    aware: Optional[datetime.datetime] = getattr(certificate, "not_valid_after_utc", None)
    if aware is not None:
        return aware
    return certificate.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def not_valid_before_utc(certificate: x509.Certificate) -> datetime.datetime:
    """The certificate's notBefore as an aware UTC datetime (see `not_valid_after_utc`)."""
    aware: Optional[datetime.datetime] = getattr(certificate, "not_valid_before_utc", None)
    if aware is not None:
        return aware
    return certificate.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def load_issuer_files(certificate_path: Path, key_path: Path) -> Issuer:
    """`load_issuer` from files (such as <machinetype_path>/x509cert.pem and x509key.pem)."""
    try:
        certificate_pem = certificate_path.read_bytes()
        key_pem = key_path.read_bytes()
    except OSError as error:
        raise ProxyError(f"cannot read issuer: {error}") from error
    return load_issuer(certificate_pem, key_pem)


def make_proxy(
    issuer: Issuer,
    *,
    now: int,
    expiry_time: int,
    common_name: Optional[str] = None,
    legacy: bool = False,
    key_bits: int = PROXY_KEY_BITS,
) -> str:
    """A proxy of `issuer` valid until `expiry_time`, as PEM (proxy, key, issuer, chain).

    `common_name` is the CN added to the issuer's subject for an RFC 3820 proxy (default:
    the proxy's serial number in decimal, as grid-proxy-init does); a legacy proxy always
    uses `limited proxy`.

    Raises:
        ProxyError: the issuer expires before `expiry_time`, or `expiry_time` is not after `now`.
    """
    issuer_certificate = issuer.certificate
    issuer_expiry = not_valid_after_utc(issuer_certificate)
    expiry = datetime.datetime.fromtimestamp(expiry_time, tz=datetime.timezone.utc)
    if issuer_expiry < expiry:
        raise ProxyError(
            f"issuer certificate expires at {issuer_expiry:%Y-%m-%d %H:%M:%S} UTC, "
            f"before the requested proxy expiry {expiry:%Y-%m-%d %H:%M:%S} UTC"
        )
    if expiry_time <= now:
        raise ProxyError(f"proxy expiry {expiry_time} is not after now ({now})")
    start = max(
        datetime.datetime.fromtimestamp(now - CLOCK_SKEW_SECONDS, tz=datetime.timezone.utc),
        not_valid_before_utc(issuer_certificate),
    )

    proxy_key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    serial = x509.random_serial_number()
    if legacy:
        added_common_name = LEGACY_PROXY_COMMON_NAME
    else:
        added_common_name = common_name if common_name is not None else str(serial)
    subject = x509.Name(
        list(issuer_certificate.subject.rdns)
        + [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, added_common_name)])]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_certificate.subject)
        .public_key(proxy_key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(expiry)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not legacy:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, proxy_cert_info_der(LIMITED_PROXY_POLICY_OID)),
            critical=True,
        )
    proxy_certificate = builder.sign(issuer.private_key, hashes.SHA256())

    parts = [
        proxy_certificate.public_bytes(serialization.Encoding.PEM),
        proxy_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        issuer_certificate.public_bytes(serialization.Encoding.PEM),
    ]
    parts += [certificate.public_bytes(serialization.Encoding.PEM) for certificate in issuer.chain]
    return b"".join(parts).decode("ascii")


def proxy_cert_info_der(policy_language_oid: str) -> bytes:
    """DER of ProxyCertInfo ::= SEQUENCE { proxyPolicy SEQUENCE { policyLanguage OID } }.

    RFC 3820 §3.8: no path length constraint and no policy, which is what a limited (or
    inherit-all) proxy carries.
    """
    proxy_policy = _der(0x30, _der(0x06, _der_oid_body(policy_language_oid)))
    return _der(0x30, proxy_policy)


def _der(tag: int, body: bytes) -> bytes:
    length = len(body)
    if length < 0x80:
        encoded_length = bytes([length])
    else:
        length_bytes = length.to_bytes((length.bit_length() + 7) // 8, "big")
        encoded_length = bytes([0x80 | len(length_bytes)]) + length_bytes
    return bytes([tag]) + encoded_length + body


def _der_oid_body(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    encoded = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        encoded += bytes(reversed(chunk))
    return bytes(encoded)


def _rsa_public_numbers(certificate: x509.Certificate) -> Optional[rsa.RSAPublicNumbers]:
    public_key = certificate.public_key()
    return public_key.public_numbers() if isinstance(public_key, rsa.RSAPublicKey) else None
