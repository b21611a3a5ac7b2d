"""prepare_machine_dir on a real store: user_data, MJF, keys, FQAN, and every failure named."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import stat
import subprocess
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.vacd.guestapi.conftest import CREATED_TIME, ROOT_PUBLIC_KEY, Site, make_site
from vacd import MANAGER_VERSION
from vacd.guestapi.contextualise import ContextualisationError, prepare_machine_dir
from vacd.mjf import read_features
from vacd.proxy import PROXY_CERT_INFO_OID, load_pem_certificates, not_valid_after_utc

EVERY_PATTERN = "\n".join(
    f"{name}=##user_data_{name}##"
    for name in (
        "space",
        "site",
        "machinetype",
        "machine_hostname",
        "manager_version",
        "manager_hostname",
        "uuid",
        "machinefeatures_url",
        "jobfeatures_url",
        "joboutputs_url",
        "root_image_url",
        "vmtype",
        "vm_hostname",
        "vmlm_version",
        "vmlm_hostname",
        "option_queue",
        "option_site_default",
        "option_motd",
        "file_motd",
        "unknown_thing",
    )
)


def use_template(site: Site, template: str) -> None:
    (site.machinetype.machinetype_path / "files" / "user_data").write_text(template)


def prepare(site: Site, ordinal: int = 3, **record_changes: object) -> Path:
    record = site.record_for(ordinal, **record_changes)
    directory = site.store.begin_creation(record)
    prepare_machine_dir(site.paths, site.settings, site.machinetype, record, directory, now=CREATED_TIME)
    return directory


def test_every_substitution_is_made(site: Site) -> None:
    use_template(site, EVERY_PATTERN)
    (site.paths.prefix / "etc").mkdir(exist_ok=True)
    (site.paths.prefix / "etc" / "motd").write_text("hello from a file")
    site.settings = replace(site.settings, user_data_options={"site_default": "from settings", "queue": "overridden"})
    site.machinetype = replace(
        site.machinetype,
        user_data_options={"queue": "long"},
        user_data_files={"motd": str(site.paths.prefix / "etc" / "motd")},
        root_image="https://images.example.org/root.img",
    )
    directory = prepare(site)
    lines = dict(line.split("=", 1) for line in (directory / "user_data").read_text().splitlines())
    assert lines == {
        "space": "vac01.example.com",
        "site": "UKI-TEST",
        "machinetype": "example",
        "machine_hostname": "f1-03.example.com",
        "manager_version": MANAGER_VERSION,
        "manager_hostname": "f1.example.com",
        "uuid": "1b4e28ba-2fa1-11d2-883f-000000000003",
        "machinefeatures_url": "http://169.254.169.253/machinefeatures",
        "jobfeatures_url": "http://169.254.169.253/jobfeatures",
        "joboutputs_url": "http://169.254.169.253/joboutputs",
        "root_image_url": "https://images.example.org/root.img",
        "vmtype": "example",
        "vm_hostname": "f1-03.example.com",
        "vmlm_version": MANAGER_VERSION,
        "vmlm_hostname": "f1.example.com",
        "option_queue": "long",
        "option_site_default": "from settings",
        "option_motd": "hello from a file",
        "file_motd": "hello from a file",
        "unknown_thing": "",
    }


def test_user_data_is_private_to_root(site: Site) -> None:
    directory = prepare(site)
    assert stat.S_IMODE((directory / "user_data").stat().st_mode) == 0o600


def test_features_key_and_fqan_are_written(site: Site) -> None:
    directory = prepare(site)
    assert read_features(directory, "jobfeatures")["job_id"] == "1b4e28ba-2fa1-11d2-883f-000000000003"
    assert read_features(directory, "machinefeatures")["hs06"] == "20"
    assert (directory / "root_public_key").read_text() == ROOT_PUBLIC_KEY
    assert (directory / "accounting_fqan").read_text() == "/example/Role=NULL/Capability=NULL"


def test_no_key_file_means_no_key_and_no_error(tmp_path: Path) -> None:
    site = make_site(tmp_path, with_root_public_key=False)
    directory = prepare(site)
    assert not (directory / "root_public_key").exists()


def test_machinetype_without_user_data_gets_none(site: Site) -> None:
    site.machinetype = replace(site.machinetype, user_data=None, accounting_fqan=None)
    directory = prepare(site)
    assert not (directory / "user_data").exists()
    assert not (directory / "accounting_fqan").exists()


def test_absolute_template_is_read_where_vac_conf_says(site: Site) -> None:
    (site.paths.prefix / "srv").mkdir()
    (site.paths.prefix / "srv" / "template").write_text("abs ##user_data_machinetype##")
    site.machinetype = replace(site.machinetype, user_data=str(site.paths.prefix / "srv" / "template"))
    assert (prepare(site) / "user_data").read_text() == "abs example"


def test_missing_template_fails_naming_the_file(site: Site) -> None:
    site.machinetype = replace(site.machinetype, user_data="missing_template")
    with pytest.raises(ContextualisationError, match="missing_template"):
        prepare(site)


def test_unreadable_option_file_fails_naming_the_option(site: Site) -> None:
    site.machinetype = replace(site.machinetype, user_data_files={"secret": "no/such/file"})
    with pytest.raises(ContextualisationError, match="user_data_file_secret"):
        prepare(site)


@pytest.mark.parametrize("name", ["../../../etc/passwd", "files/../../x"])
def test_file_names_that_climb_out_are_refused(site: Site, name: str) -> None:
    site.machinetype = replace(site.machinetype, user_data_files={"x": name})
    with pytest.raises(ContextualisationError, match="not an allowed file name"):
        prepare(site)


@pytest.mark.parametrize("option", ["user_data", "user_data_file_x"])
def test_pipe_file_name_linked_out_of_files_is_refused_but_a_sites_own_is_followed(site: Site, option: str) -> None:
    outside = site.paths.prefix / "etc" / "secret"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_text("host secret ##user_data_machinetype##")
    (site.machinetype.machinetype_path / "files" / "linked").symlink_to(outside)
    if option == "user_data":
        site.machinetype = replace(site.machinetype, user_data="linked")
    else:
        use_template(site, "##user_data_option_x##")
        site.machinetype = replace(site.machinetype, user_data_files={"x": "linked"})
    assert "host secret" in (prepare(site, 3) / "user_data").read_text()  # vac.conf's own link: followed
    site.machinetype = replace(site.machinetype, vacuum_pipe="ex")  # the same name from a pipe
    with pytest.raises(ContextualisationError, match="which is not under"):
        prepare(site, 4)


def test_bad_option_name_is_refused(site: Site) -> None:
    site.machinetype = replace(site.machinetype, user_data_options={"Bad-Name": "x"})
    with pytest.raises(ContextualisationError, match="Bad-Name"):
        prepare(site)


def test_unsafe_machinefeatures_option_is_a_contextualisation_error(site: Site) -> None:
    site.settings = replace(site.settings, machinefeatures_options={"../x": "1"})
    with pytest.raises(ContextualisationError, match="machinefeatures_option"):
        prepare(site)


# user_data_proxy
def write_issuer(site: Site, not_after: datetime.datetime) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "VO"), x509.NameAttribute(NameOID.COMMON_NAME, "pilot")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path = site.machinetype.machinetype_path
    (path / "x509cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (path / "x509key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate


def test_proxy_is_inserted_expiring_at_shutdown(site: Site) -> None:
    issuer = write_issuer(site, datetime.datetime(2040, 1, 1, tzinfo=datetime.timezone.utc))
    use_template(site, "proxy:\n##user_data_option_x509_proxy##")
    site.machinetype = replace(site.machinetype, user_data_proxy=True)
    directory = prepare(site)
    proxy = load_pem_certificates((directory / "user_data").read_bytes()[len("proxy:\n") :])[0]
    assert proxy.issuer == issuer.subject
    assert proxy.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[-1].value == "example"
    assert not_valid_after_utc(proxy).timestamp() == CREATED_TIME + 86400
    assert proxy.extensions.get_extension_for_oid(PROXY_CERT_INFO_OID).critical


def test_proxy_fails_when_the_issuer_expires_before_shutdown(site: Site) -> None:
    write_issuer(site, datetime.datetime.fromtimestamp(CREATED_TIME + 3600, tz=datetime.timezone.utc))
    site.machinetype = replace(site.machinetype, user_data_proxy=True)
    with pytest.raises(ContextualisationError, match="user_data_proxy.*expires"):
        prepare(site)


def test_proxy_fails_without_issuer_files(site: Site) -> None:
    site.machinetype = replace(site.machinetype, user_data_proxy=True)
    with pytest.raises(ContextualisationError, match="x509cert.pem"):
        prepare(site)


# Templates from URLs
class TemplateHandler(http.server.BaseHTTPRequestHandler):
    user_agents: list = []

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        TemplateHandler.user_agents.append(self.headers.get("User-Agent"))
        if self.path == "/huge":
            body = b"#" * (1024 * 1024 + 1)
        elif self.path == "/template":
            body = b"from ##user_data_url## for ##user_data_machine_hostname##"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        return None


@pytest.fixture
def template_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), TemplateHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_template_is_fetched_from_a_url(site: Site, template_server: http.server.HTTPServer) -> None:
    url = f"http://127.0.0.1:{template_server.server_address[1]}/template"
    site.machinetype = replace(site.machinetype, user_data=url)
    assert (prepare(site) / "user_data").read_text() == f"from {url} for f1-03.example.com"
    assert TemplateHandler.user_agents[-1] == MANAGER_VERSION


def test_failed_fetch_names_the_url(site: Site, template_server: http.server.HTTPServer) -> None:
    url = f"http://127.0.0.1:{template_server.server_address[1]}/missing"
    site.machinetype = replace(site.machinetype, user_data=url)
    with pytest.raises(ContextualisationError, match="missing.*404"):
        prepare(site)


def test_template_over_the_user_data_cap_is_refused_naming_the_cap(
    site: Site, template_server: http.server.HTTPServer
) -> None:
    url = f"http://127.0.0.1:{template_server.server_address[1]}/huge"
    site.machinetype = replace(site.machinetype, user_data=url)
    with pytest.raises(ContextualisationError, match=r"huge: .*larger than the cap of 1048576 bytes"):
        prepare(site)


def self_signed_localhost(directory: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vac test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate_path = directory / "server.pem"
    key_path = directory / "server.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_path, key_path


@pytest.fixture
def tls_template_server(tmp_path: Path) -> Iterator[tuple[http.server.HTTPServer, Path]]:
    certificate_path, key_path = self_signed_localhost(tmp_path)
    server = http.server.HTTPServer(("127.0.0.1", 0), TemplateHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, certificate_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_https_template_from_an_unknown_ca_is_refused(tls_template_server: tuple, tmp_path: Path) -> None:
    server, _certificate = tls_template_server
    site = make_site(tmp_path / "site")
    site.machinetype = replace(site.machinetype, user_data=f"https://127.0.0.1:{server.server_address[1]}/template")
    with pytest.raises(ContextualisationError, match="fetch failed"):
        prepare(site)


def trust_in_grid_ca_directory(site: Site, certificate: Path) -> None:
    """Put the test server's certificate in the site's grid CA directory, as an admin would."""
    certificates_dir = site.paths.certificates_dir
    certificates_dir.mkdir(parents=True)
    (certificates_dir / "vac-test-ca.pem").write_bytes(certificate.read_bytes())
    # A CA directory is looked up by subject hash links, which `openssl rehash` makes.
    subprocess.run(["openssl", "rehash", str(certificates_dir)], check=True, capture_output=True, timeout=30)


@pytest.mark.allow_commands("openssl")
def test_https_template_is_verified_against_the_grid_ca_directory(tls_template_server: tuple, tmp_path: Path) -> None:
    server, certificate = tls_template_server
    site = make_site(tmp_path / "site")
    trust_in_grid_ca_directory(site, certificate)
    url = f"https://127.0.0.1:{server.server_address[1]}/template"
    site.machinetype = replace(site.machinetype, user_data=url)
    assert (prepare(site) / "user_data").read_text() == f"from {url} for f1-03.example.com"


@pytest.mark.allow_commands("openssl")
def test_a_pipes_template_is_not_fetched_from_a_loopback_address(
    tls_template_server: tuple, tmp_path: Path,
) -> None:
    # The same verified HTTPS server: only the machinetype's origin differs (vacd.fetch, DNS rebinding).
    server, certificate = tls_template_server
    site = make_site(tmp_path / "site")
    trust_in_grid_ca_directory(site, certificate)
    url = f"https://127.0.0.1:{server.server_address[1]}/template"
    site.machinetype = replace(site.machinetype, user_data=url, vacuum_pipe="lhcb-")
    with pytest.raises(ContextualisationError, match="not a global address"):
        prepare(site)
    # The site's own machinetype with the same URL: test_https_template_is_verified_against_the_grid_ca_directory.
