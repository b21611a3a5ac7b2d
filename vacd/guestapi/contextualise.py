"""Prepare a new machine's directory: user_data, machine/job features, keys, accounting FQAN.

Rules (behaviour reference §1.6 steps 2-5, §6.2, §6.5, §6.6):
- Called by the factory after Store.begin_creation and before the machine starts, so
  everything the guest reads exists at its first request. It may wait on the network (a
  user_data URL, up to the deadline), so it belongs on a creation thread, not the loop.
- The user_data template comes from an http(s) URL (fetched at every creation through
  vacd.fetch: a total deadline of 30 s and a 1 MiB cap (USER_DATA_LIMITS), redirects
  followed, TLS verified against /etc/grid-security/certificates when that directory
  exists, User-Agent `Vac <version>`), an absolute file, or
  `<machinetype_path>/files/<name>`. `user_data_file_*` names resolve the same way. A
  name that climbs out of its directory (`..`) is refused, and for a machinetype made by a
  vacuum pipe so is a name whose links lead out of files/.
- Configured absolute file names are re-rooted under the prefix (vacd.paths), so tests and
  the demo never read the real /etc or /root.
- MD/user_data is written 0600: it may hold a proxy and site secrets. Nothing from it is
  logged.
- Any failure raises ContextualisationError naming the file or URL and the cause; the
  factory then records a failed creation for this machinetype and backs off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Optional

from vacd import MANAGER_VERSION
from vacd.atomicfile import write_atomic
from vacd.config import Machinetype, Settings
from vacd.errors import VacError
from vacd.fetch import USER_DATA_LIMITS, FetchError, Fetcher
from vacd.mjf import FeatureKeyError, write_features
from vacd.paths import Paths
from vacd.proxy import ProxyError, load_issuer_files, make_proxy
from vacd.records import MachineRecord
from vacd.userdata import OPTION_NAME_PATTERN, UserDataContext, feature_locations, merge_options, render_user_data

log = logging.getLogger(__name__)

# Far above any real template (Nova refuses user_data over 64 KiB); a fetched template has the
# tighter USER_DATA_LIMITS cap of vacd.fetch.
MAX_TEMPLATE_BYTES = 16 * 1024 * 1024
USER_DATA_FILE = "user_data"
ROOT_PUBLIC_KEY_FILE = "root_public_key"
ACCOUNTING_FQAN_FILE = "accounting_fqan"


class ContextualisationError(VacError):
    """A new machine's directory could not be prepared; the message names what and why."""


def prepare_machine_dir(
    paths: Paths,
    settings: Settings,
    machinetype: Machinetype,
    record: MachineRecord,
    directory: Path,
    *,
    now: int,
) -> None:
    """Write MD/user_data, machinefeatures/, jobfeatures/, root_public_key and accounting_fqan.

    Raises:
        ContextualisationError: a template, file, URL or proxy issuer could not be used.
    """
    try:
        write_features(directory, settings, record, now)
        if machinetype.accounting_fqan:
            write_atomic(directory / ACCOUNTING_FQAN_FILE, machinetype.accounting_fqan)
        public_key = read_root_public_key(paths, settings)
        if public_key is not None:
            write_atomic(directory / ROOT_PUBLIC_KEY_FILE, public_key)
        if machinetype.user_data:
            user_data = build_user_data(paths, settings, machinetype, record, now=now)
            write_atomic(directory / USER_DATA_FILE, user_data.encode("utf-8", errors="surrogateescape"), mode=0o600)
    except FeatureKeyError as error:
        raise ContextualisationError(f"machine {record.name}: {error}") from error
    except OSError as error:
        raise ContextualisationError(f"machine {record.name}: cannot write {directory}: {error}") from error
    log.info(
        "contextualised machine name=%s machinetype=%s user_data=%s root_public_key=%s",
        record.name,
        machinetype.name,
        "yes" if machinetype.user_data else "no",
        "yes" if public_key is not None else "no",
    )


def read_root_public_key(paths: Paths, settings: Settings) -> Optional[str]:
    """The factory's root public key if the configured file is readable (§1.6 step 5)."""
    if not settings.root_public_key:
        return None
    # The parser put the default under --prefix; a path written in vac.conf is used as written.
    key_path = Path(settings.root_public_key)
    try:
        return key_path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        # Vac only logged a missing key file; machines simply get no key.
        log.debug("no root public key for machines path=%s reason=%s", key_path, error)
        return None


def build_user_data(
    paths: Paths, settings: Settings, machinetype: Machinetype, record: MachineRecord, *, now: int
) -> str:
    """The rendered user_data of a new machine (§6.5).

    Raises:
        ContextualisationError: the template, an option file or the proxy issuer is unusable.
    """
    if not machinetype.user_data:
        raise ContextualisationError(f"machinetype {machinetype.name}: no user_data template configured")
    template, template_url = load_template(paths, machinetype, machinetype.user_data)
    options, option_files = merge_options(
        settings.user_data_options, settings.user_data_files, machinetype.user_data_options, machinetype.user_data_files
    )
    for name in list(options) + list(option_files):
        if not OPTION_NAME_PATTERN.match(name):
            raise ContextualisationError(f"machinetype {machinetype.name}: bad user_data option name {name!r}")
    file_contents = {
        name: _read_local(paths, machinetype, file_name, f"user_data_file_{name}")
        for name, file_name in option_files.items()
    }
    x509_proxy = None
    if machinetype.user_data_proxy:
        x509_proxy = _make_machine_proxy(machinetype, record, now)
    root_image = machinetype.root_image or ""
    context = UserDataContext(
        space=settings.vac_space,
        site=settings.gocdb_sitename,
        machinetype=machinetype.name,
        machine_hostname=record.name,
        manager_version=MANAGER_VERSION,
        manager_hostname=settings.factory_name,
        uuid=record.uuid,
        locations=feature_locations(machinetype.machine_model),
        root_image_url=root_image if root_image.startswith(("http://", "https://")) else None,
        user_data_url=template_url,
        x509_proxy=x509_proxy,
        options=options,
        file_contents=file_contents,
    )
    return render_user_data(template, context)


def load_template(paths: Paths, machinetype: Machinetype, source: str) -> tuple[str, Optional[str]]:
    """(template text, URL if it was fetched) for a `user_data` option value."""
    if source.startswith(("http://", "https://")):
        # A pipe's URL is fetched from public addresses only (vacd.fetch: DNS rebinding).
        return fetch_template(paths, source, public_only=machinetype.vacuum_pipe is not None), source
    return _read_local(paths, machinetype, source, "user_data"), None


def fetch_template(paths: Paths, url: str, *, public_only: bool = False) -> str:
    """GET a user_data template within USER_DATA_LIMITS, TLS verified against the grid CA directory if present."""
    try:
        body = Fetcher(paths.certificates_dir).fetch_bytes(url, USER_DATA_LIMITS, public_only=public_only)
    except FetchError as error:
        raise ContextualisationError(f"user_data fetch failed: {error}") from error
    return body.decode("utf-8", errors="surrogateescape")


def _read_local(paths: Paths, machinetype: Machinetype, file_name: str, option: str) -> str:
    path = _resolve_local(paths, machinetype, file_name, option)
    try:
        with path.open("rb") as local_file:
            content = local_file.read(MAX_TEMPLATE_BYTES + 1)
    except OSError as error:
        raise ContextualisationError(f"machinetype {machinetype.name}: {option} {path}: {error.strerror or error}") from error
    if len(content) > MAX_TEMPLATE_BYTES:
        raise ContextualisationError(f"machinetype {machinetype.name}: {option} {path}: larger than {MAX_TEMPLATE_BYTES} bytes")
    return content.decode("utf-8", errors="surrogateescape")


def _resolve_local(paths: Paths, machinetype: Machinetype, file_name: str, option: str) -> Path:
    if not file_name or ".." in PurePosixPath(file_name).parts:
        raise ContextualisationError(f"machinetype {machinetype.name}: {option} {file_name!r}: not an allowed file name")
    if file_name.startswith("/"):
        return Path(file_name)  # as written in vac.conf, like every configured path
    files_dir = machinetype.machinetype_path / "files"
    path = files_dir / file_name
    if machinetype.vacuum_pipe is not None:
        # A pipe's name must lead to a file in files/ even through links (issue 11 item 2), as
        # root_image does (vacd.imagecheck); a site's own vac.conf may link files/ anywhere.
        resolved = Path(os.path.realpath(path))
        if not resolved.is_relative_to(Path(os.path.realpath(files_dir))):
            raise ContextualisationError(f"machinetype {machinetype.name}: {option} {file_name!r} resolves to "
                                         f"{resolved}, which is not under {files_dir}")
        return resolved
    return path


def _make_machine_proxy(machinetype: Machinetype, record: MachineRecord, now: int) -> str:
    try:
        issuer = load_issuer_files(
            machinetype.machinetype_path / "x509cert.pem", machinetype.machinetype_path / "x509key.pem"
        )
        return make_proxy(
            issuer,
            now=now,
            expiry_time=record.shutdown_time,
            common_name=machinetype.name,
            legacy=machinetype.legacy_proxy,
        )
    except ProxyError as error:
        raise ContextualisationError(f"machinetype {machinetype.name}: user_data_proxy: {error}") from error
