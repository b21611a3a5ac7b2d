"""Verify the signature a CernVM image carries in its last 64 KiB (behaviour reference §1.12).

The format, as CernVM's signing writes it and Vac 03 read it:
- The image is more than 64 KiB long. The 32 KiB starting 64 KiB from the end hold a JSON
  metadata block (`ucernvm-version` ...), NUL-padded; the last 32 KiB hold a JSON signature
  block, NUL-padded, with base64 `certificate` (PEM) and base64 `signature`.
- `signature` is an RSA PKCS#1 v1.5 signature of the SHA-256 of the image minus its last
  32 KiB, by the certificate's key.
- The certificate must chain to a CA in /etc/grid-security/certificates (Vac 03 ran
  `openssl verify -CApath`), and its subject, written as OpenSSL's one-line form
  (`/DC=ch/DC=cern/OU=computers/CN=cvm-sign01.cern.ch`), must match the configured regular
  expression with `re.search`, as Vac 03 matched it.

Rules:
- Only `cryptography`, no openssl shell-outs. It works with EL9's python3-cryptography 36,
  which has no certificate-verification API: the chain is walked here (issuer by subject,
  signature checked with the issuer's key, CA flag and validity period of each link, up to a
  self-signed certificate in the CA directory). CRLs are not read, as `openssl verify` without
  `-crl_check` did not read them.
- The image's bytes are not read here: the caller hashes the image (vacd.imagecheck keeps
  the digest per file) and passes the digest and the two trailing blocks in.
- Every refusal is a SignatureRefused saying what failed; nothing here returns "unverified".
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from vacd.errors import VacError
from vacd.proxy import load_pem_certificates, not_valid_after_utc, not_valid_before_utc

log = logging.getLogger(__name__)

BLOCK_BYTES = 32 * 1024
# Vac 03 refused images of 64 KiB or less: they cannot hold both blocks and an image.
MINIMUM_IMAGE_BYTES = 2 * BLOCK_BYTES + 1
# No real chain is longer than root, intermediate, signer; the bound stops a loop of CAs.
MAX_CHAIN_LENGTH = 8

# Known defects of the JSON CernVM images carry (Vac 03 repaired the same): a comma after the
# last metadata item, and none after the signature or the signing host in "howto-verify".
_METADATA_REPAIRS = (('HEAD",\n', 'HEAD"\n'),)
_SIGNATURE_REPAIRS = (('signature>"\n', 'signature>",\n'), ('cvm-sign01.cern.ch"\n', 'cvm-sign01.cern.ch",\n'))

# OpenSSL's short names, as X509_NAME_oneline writes them (what Vac 03's DN regexes match).
_OPENSSL_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.STREET_ADDRESS: "street",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.USER_ID: "UID",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
}


class SignatureRefused(VacError):
    """A CernVM image's signature, certificate or signer does not pass; says which and why."""


def openssl_one_line(name: x509.Name) -> str:
    """`name` as OpenSSL's X509_NAME_oneline writes it: /DC=ch/DC=cern/CN=... in encoded order."""
    parts = []
    for rdn in name.rdns:
        parts.append("+".join(
            f"{_OPENSSL_SHORT_NAMES.get(attribute.oid, attribute.oid.dotted_string)}={attribute.value!s}"
            for attribute in rdn
        ))
    return "".join(f"/{part}" for part in parts)


def _block_json(raw: bytes, repairs: Sequence[tuple[str, str]], what: str) -> Any:
    text = raw.rstrip(b"\0").decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        pass
    for broken, fixed in repairs:
        text = text.replace(broken, fixed)
    try:
        return json.loads(text)
    except ValueError as error:
        raise SignatureRefused(f"the {what} block is not JSON: {error}") from None


def cernvm_version(metadata_block: bytes) -> Optional[str]:
    """The `ucernvm-version` of a metadata block, or None: Vac 03 only logged a bad one."""
    try:
        metadata = _block_json(metadata_block, _METADATA_REPAIRS, "metadata")
    except SignatureRefused:
        return None
    version = metadata.get("ucernvm-version") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) else None


def parse_signature_block(signature_block: bytes) -> tuple[x509.Certificate, bytes]:
    """The certificate and the signature in the last 32 KiB of a CernVM image."""
    document = _block_json(signature_block, _SIGNATURE_REPAIRS, "signature")
    if not isinstance(document, dict):
        raise SignatureRefused("the signature block is not a JSON object")
    encoded_certificate, encoded_signature = document.get("certificate"), document.get("signature")
    if not isinstance(encoded_certificate, str) or not isinstance(encoded_signature, str):
        raise SignatureRefused("the signature block has no certificate and signature strings")
    try:
        certificate_bytes = base64.b64decode(encoded_certificate, validate=True)
        signature = base64.b64decode(encoded_signature, validate=True)
    except (binascii.Error, ValueError) as error:
        raise SignatureRefused(f"the signature block's base64 is bad: {error}") from None
    try:
        if b"-----BEGIN" in certificate_bytes:
            certificate = x509.load_pem_x509_certificate(certificate_bytes)
        else:
            certificate = x509.load_der_x509_certificate(certificate_bytes)
    except ValueError as error:
        raise SignatureRefused(f"the signature block's certificate cannot be read: {error}") from None
    return certificate, signature


def load_ca_directory(certificates_dir: Path) -> list[x509.Certificate]:
    """The CA certificates of an OpenSSL CApath directory (`<hash>.N` and `*.pem` files).

    Raises:
        SignatureRefused: the directory cannot be read or holds no certificate.
    """
    try:
        entries = sorted(certificates_dir.iterdir())
    except OSError as error:
        raise SignatureRefused(f"cannot read the CA directory {certificates_dir}: {error}") from None
    certificates: dict[bytes, x509.Certificate] = {}
    for entry in entries:
        if not (entry.suffix == ".pem" or re.fullmatch(r"\.[0-9]+", entry.suffix)):
            continue
        try:
            for certificate in load_pem_certificates(entry.read_bytes()):
                certificates.setdefault(certificate.tbs_certificate_bytes, certificate)
        except (OSError, ValueError) as error:
            # One unreadable file (a CRL named .r0 is skipped above) must not hide the rest.
            log.debug("skipping CA file path=%s error=%s", entry, error)
    if not certificates:
        raise SignatureRefused(f"no CA certificates in {certificates_dir}")
    return list(certificates.values())


def _is_signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    algorithm = certificate.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(certificate.signature, certificate.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(certificate.signature, certificate.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return True


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(constraints.ca)


def _problem_with_validity(certificate: x509.Certificate, now: datetime.datetime) -> Optional[str]:
    if now < not_valid_before_utc(certificate):
        return f"is not valid before {not_valid_before_utc(certificate).isoformat()}"
    if now > not_valid_after_utc(certificate):
        return f"expired at {not_valid_after_utc(certificate).isoformat()}"
    return None


def verify_chain(certificate: x509.Certificate, authorities: Sequence[x509.Certificate],
                 now: datetime.datetime) -> None:
    """Refuse `certificate` unless a chain of valid CAs from `authorities` issued it.

    Raises:
        SignatureRefused: naming the certificate of the chain that failed and why.
    """
    trusted = {authority.tbs_certificate_bytes for authority in authorities}
    current = certificate
    for _ in range(MAX_CHAIN_LENGTH):
        problem = _problem_with_validity(current, now)
        if problem is not None:
            raise SignatureRefused(f"certificate {openssl_one_line(current.subject)} {problem}")
        # As `openssl verify` without -partial_chain: the chain ends at a self-signed CA of the directory.
        if current.tbs_certificate_bytes in trusted and current.subject == current.issuer \
                and _is_signed_by(current, current):
            return
        issuers = [authority for authority in authorities
                   if authority.subject == current.issuer and _is_ca(authority) and _is_signed_by(current, authority)
                   and _problem_with_validity(authority, now) is None]
        if not issuers:
            raise SignatureRefused(f"certificate {openssl_one_line(current.subject)} was not issued by a valid CA "
                                   f"in the CA directory (issuer {openssl_one_line(current.issuer)})")
        current = issuers[0]
    raise SignatureRefused(f"certificate chain of {openssl_one_line(certificate.subject)} is longer than "
                           f"{MAX_CHAIN_LENGTH}")


def verified_signer(signed_sha256: bytes, signature_block: bytes, authorities: Sequence[x509.Certificate],
                    now: datetime.datetime) -> str:
    """The one-line DN of whoever signed an image whose signed part has digest `signed_sha256`.

    Raises:
        SignatureRefused: the block is malformed, the signature does not verify with the
            certificate's key, or the certificate does not chain to `authorities`.
    """
    certificate, signature = parse_signature_block(signature_block)
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureRefused("the signing certificate's key is not RSA")
    try:
        key.verify(signature, signed_sha256, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureRefused(f"the signature does not match the image (signer "
                               f"{openssl_one_line(certificate.subject)})") from None
    verify_chain(certificate, authorities, now)
    return openssl_one_line(certificate.subject)


def check_signer(dn: str, dn_pattern: str) -> None:
    """Refuse a signer whose DN does not match the configured regular expression (re.search, as Vac 03)."""
    if re.search(dn_pattern, dn) is None:
        raise SignatureRefused(f"signing DN {dn} does not match image_signing_dn = {dn_pattern}")
