"""CernVM image signatures (behaviour reference §1.12), with a CA, a signer and images made by the test.

The images are built as CernVM's signing builds them: payload, a 32 KiB NUL-padded JSON
metadata block, then a 32 KiB NUL-padded JSON signature block holding the base64 PEM
certificate and the base64 RSA signature of the SHA-256 of everything before it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from tests.vacd.test_config import SETTINGS, parse
from vacd.config import Machinetype
from vacd.imagecheck import ImageRefused, ImageVerifier
from vacd.imagesignature import SignatureRefused, openssl_one_line, verify_chain

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)
BLOCK = 32 * 1024
SIGNER_DN = "/DC=ch/DC=cern/OU=computers/CN=cvm-sign01.cern.ch"
CERN_DN_PATTERN = "^/DC=ch/DC=cern/OU=computers/CN=cvm-sign0[12].cern.ch$"


@dataclasses.dataclass
class Authority:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey


def name_of(*parts: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in parts])


def make_certificate(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: Optional[Authority], *, is_ca: bool,
                     not_after: datetime.datetime = NOW + datetime.timedelta(days=365)) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=30))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    return builder.sign(issuer.key if issuer else key, hashes.SHA256())


def make_authority(common_name: str, issuer: Optional[Authority] = None) -> Authority:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = name_of((NameOID.DOMAIN_COMPONENT, "ch"), (NameOID.DOMAIN_COMPONENT, "cern"),
                      (NameOID.COMMON_NAME, common_name))
    return Authority(make_certificate(subject, key, issuer, is_ca=True), key)


def make_signer(issuer: Authority, common_name: str = "cvm-sign01.cern.ch",
                not_after: datetime.datetime = NOW + datetime.timedelta(days=365)) -> Authority:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = name_of((NameOID.DOMAIN_COMPONENT, "ch"), (NameOID.DOMAIN_COMPONENT, "cern"),
                      (NameOID.ORGANIZATIONAL_UNIT_NAME, "computers"), (NameOID.COMMON_NAME, common_name))
    return Authority(make_certificate(subject, key, issuer, is_ca=False, not_after=not_after), key)


@dataclasses.dataclass
class Pki:
    root: Authority
    intermediate: Authority
    signer: Authority
    certificates_dir: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = make_authority("CERN Root Certification Authority 2")
    intermediate = make_authority("CERN Grid Certification Authority", root)
    certificates_dir = tmp_path_factory.mktemp("grid-security") / "certificates"
    certificates_dir.mkdir()
    # As the IGTF bundle lays them out: name.pem files and <hash>.0 links, plus CRLs and policies.
    for file_name, authority in (("CERN-Root-2.pem", root), ("CERN-GridCA.pem", intermediate)):
        (certificates_dir / file_name).write_bytes(authority.certificate.public_bytes(serialization.Encoding.PEM))
    (certificates_dir / "4ad8e9d2.0").symlink_to("CERN-Root-2.pem")
    (certificates_dir / "4ad8e9d2.r0").write_text("not a certificate: a CRL")
    (certificates_dir / "CERN-GridCA.signing_policy").write_text("access_id_CA X509 '/DC=ch/DC=cern/CN=...'")
    return Pki(root, intermediate, make_signer(intermediate), certificates_dir)


def block(document: bytes) -> bytes:
    assert len(document) <= BLOCK
    return document + b"\0" * (BLOCK - len(document))


def plain_json(certificate: str, signature: str) -> bytes:
    return json.dumps({"certificate": certificate, "signature": signature,
                       "howto-verify": ["base64 -d <certificate>", "base64 -d <signature>"]}, indent=2).encode()


def signed_image(path: Path, signer: Authority, *, payload: Optional[bytes] = None,
                 layout: Callable[[str, str], bytes] = plain_json) -> Path:
    unsigned = (payload if payload is not None else os.urandom(200_000)) + block(
        b'{\n  "ucernvm-version": "2024.06-1",\n  "os-repo": "cernvm-prod.cern.ch",\n  "snapshot": "HEAD"\n}\n')
    signature = signer.key.sign(hashlib.sha256(unsigned).digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    certificate = base64.b64encode(signer.certificate.public_bytes(serialization.Encoding.PEM)).decode()
    path.write_bytes(unsigned + block(layout(certificate, base64.b64encode(signature).decode())))
    return path


def machinetype_signed_by(tmp_path: Path, dn_pattern: str) -> Machinetype:
    return Machinetype(name="cernvm", machinegroup="cernvm", machinetype_path=tmp_path / "cernvm",
                       machine_model="cernvm3", image_signing_dn=dn_pattern)


def verifier(pki: Pki) -> ImageVerifier:
    return ImageVerifier(pki.certificates_dir, clock=lambda: NOW)


def test_image_signed_by_a_matching_dn_through_the_ca_directory_is_accepted(tmp_path: Path, pki: Pki) -> None:
    image = signed_image(tmp_path / "cernvm4.iso", pki.signer)
    verifier(pki).check_boot_files(machinetype_signed_by(tmp_path, CERN_DN_PATTERN), image, None)


def test_signer_dn_is_written_as_openssl_one_line_as_vac_03_matched_it(pki: Pki) -> None:
    assert openssl_one_line(pki.signer.certificate.subject) == SIGNER_DN


def test_signer_dn_not_matching_the_pattern_is_refused_naming_both(tmp_path: Path, pki: Pki) -> None:
    image = signed_image(tmp_path / "cernvm4.iso", make_signer(pki.intermediate, "someone-else.cern.ch"))
    with pytest.raises(ImageRefused) as refused:
        verifier(pki).check_boot_files(machinetype_signed_by(tmp_path, CERN_DN_PATTERN), image, None)
    assert str(refused.value) == (f"image {image} refused: signing DN /DC=ch/DC=cern/OU=computers/"
                                  f"CN=someone-else.cern.ch does not match image_signing_dn = {CERN_DN_PATTERN}")


def test_dn_pattern_is_searched_anywhere_in_the_dn_as_vac_03_did(tmp_path: Path, pki: Pki) -> None:
    image = signed_image(tmp_path / "cernvm4.iso", pki.signer)
    verifier(pki).check_boot_files(machinetype_signed_by(tmp_path, "CN=cvm-sign01"), image, None)


def test_image_changed_after_signing_is_refused(tmp_path: Path, pki: Pki) -> None:
    image = signed_image(tmp_path / "cernvm4.iso", pki.signer)
    content = bytearray(image.read_bytes())
    content[1000] ^= 0xFF
    image.write_bytes(bytes(content))
    with pytest.raises(ImageRefused, match="the signature does not match the image"):
        verifier(pki).check_boot_files(machinetype_signed_by(tmp_path, CERN_DN_PATTERN), image, None)


def test_signer_from_a_ca_outside_the_ca_directory_is_refused(tmp_path: Path, pki: Pki) -> None:
    stranger = make_authority("CERN Grid Certification Authority")  # same name, another key, not installed
    image = signed_image(tmp_path / "cernvm4.iso", make_signer(stranger))
    with pytest.raises(ImageRefused, match=f"certificate {SIGNER_DN} was not issued by a valid CA in the CA "
                                           "directory"):
        verifier(pki).check_boot_files(machinetype_signed_by(tmp_path, CERN_DN_PATTERN), image, None)


def test_expired_signing_certificate_is_refused(tmp_path: Path, pki: Pki) -> None:
    image = signed_image(tmp_path / "cernvm4.iso",
                         make_signer(pki.intermediate, not_after=NOW - datetime.timedelta(days=1)))
    with pytest.raises(ImageRefused, match=f"certificate {SIGNER_DN} expired at"):
        verifier(pki).check_boot_files(machinetype_signed_by(tmp_path, CERN_DN_PATTERN), image, None)


def test_chain_must_end_at_a_self_signed_ca_of_the_directory(pki: Pki) -> None:
    # Only the intermediate installed: `openssl verify -CApath` without -partial_chain refuses too.
    with pytest.raises(SignatureRefused, match="was not issued by a valid CA"):
        verify_chain(pki.signer.certificate, [pki.intermediate.certificate], NOW)
    verify_chain(pki.signer.certificate, [pki.intermediate.certificate, pki.root.certificate], NOW)


def test_unsigned_image_is_refused_when_a_signing_dn_is_set(tmp_path: Path, pki: Pki) -> None:
    image = tmp_path / "unsigned.iso"
    image.write_bytes(os.urandom(300_000))
    with pytest.raises(ImageRefused, match="the signature block is not JSON"):
        verifier(pki).check_boot_files(machinetype_signed_by(tmp_path, CERN_DN_PATTERN), image, None)


def test_image_of_64_kib_or_less_is_refused_when_a_signing_dn_is_set(tmp_path: Path, pki: Pki) -> None:
    image = tmp_path / "tiny.iso"
    image.write_bytes(b"\0" * 65536)
    with pytest.raises(ImageRefused, match="65536 bytes or less, too small to carry a CernVM signature"):
        verifier(pki).check_boot_files(machinetype_signed_by(tmp_path, CERN_DN_PATTERN), image, None)


def cernvm_json_missing_commas(certificate: str, signature: str) -> bytes:
    # As real CernVM images carry it: two "howto-verify" items lack their comma (Vac 03 repaired both).
    return (f'{{\n  "certificate": "{certificate}",\n  "signature": "{signature}",\n  "howto-verify": [\n'
            '    "base64 -d <certificate>",\n    "base64 -d <signature>"\n'
            '    "openssl verify -CAfile <CERN CA Chain cern.ch/ca> <certificate>",\n'
            '    "openssl x509 -in <certificate> -subject -noout == /DC=ch/DC=cern/OU=computers/CN=cvm-sign01.cern.ch"\n'
            '    "openssl x509 -in <certificate> -pubkey -noout > <pubkey>"\n  ]\n}\n').encode()


def test_signature_block_with_cernvms_known_missing_commas_still_verifies(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValueError):
        json.loads(cernvm_json_missing_commas("Y2VydA==", "c2ln"))
    image = signed_image(tmp_path / "cernvm4.iso", pki.signer, layout=cernvm_json_missing_commas)
    verifier(pki).check_boot_files(machinetype_signed_by(tmp_path, CERN_DN_PATTERN), image, None)


@pytest.mark.parametrize("option", ["image_signing_dn", "cernvm_signing_dn"])
def test_both_option_names_are_enforced_not_only_the_deprecated_one(tmp_path: Path, pki: Pki, option: str) -> None:
    config = parse(SETTINGS + f"[machinetype cernvm]\nmachine_model = cernvm3\nroot_image = cernvm4.iso\n"
                              f"target_share = 1\n{option} = ^/DC=ch/DC=cern/OU=computers/CN=nobody$\n")
    image = signed_image(tmp_path / "cernvm4.iso", pki.signer)
    with pytest.raises(ImageRefused, match="does not match image_signing_dn"):
        verifier(pki).check_boot_files(config.machinetypes["cernvm"], image, None)


def test_signing_dn_set_for_a_machinetype_booting_a_kernel_is_refused_not_ignored(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ImageRefused, match="image_signing_dn is set but machinetype cernvm boots root_kernel"):
        verifier(pki).check_boot_files(machinetype_signed_by(tmp_path, CERN_DN_PATTERN), None, tmp_path / "vmlinuz")
