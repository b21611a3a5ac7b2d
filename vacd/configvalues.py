"""What one vac.conf value may be: the bounds, the patterns and the converters of single values.

The half of configuration checking that looks at one value at a time, shared by vac.conf's
parser (vacd.configparse) and the vacuum pipe reader (vacd.pipes), which must refuse at
least what vac.conf refuses. Each converter takes the option's text and returns the value
or raises vacd.configini.InvalidValue with a reason the admin can act on; the caller adds
the file, line, section and option.
"""

from __future__ import annotations

import ipaddress
import re
from functools import partial
from typing import Optional

from vacd.config import FactoryAddress
from vacd.configini import (InvalidValue, SectionReader, ascii_lower, to_absolute_path, to_boolean, to_integer,
                            to_number, to_words)
from vacd.slots import MAX_SLOTS

# Ranges the daemon can run with (issue 8 item 9: `cycle_seconds = 1e300` raised
# OverflowError in Event.wait at the first idle pass, `host_processors = 30000` a
# ValueError from the slot address scheme at start). Every numeric option has both bounds;
# the limits are far beyond any real site's values, and exist so that no accepted value
# overflows a timeout, a date, a libvirt size or the slot scheme.
# One slot per host processor (§1.5): vacd.slots can address MAX_SLOTS of them.
MAX_PROCESSORS = MAX_SLOTS
# Durations: 10 years, far below threading.TIMEOUT_MAX (292 years) and datetime's year 9999.
MAX_DURATION_SECONDS = 10 * 366 * 86400
MAX_DAYS = MAX_DURATION_SECONDS / 86400
# The loop waits at most cycle_seconds between passes: below 0.1 s it would spin, and above
# a day nothing would be policed in time.
MIN_CYCLE_SECONDS = 0.1
MAX_CYCLE_SECONDS = 86400.0
# A census round is udp_timeout_seconds / 5 and runs inside a pass.
MAX_UDP_TIMEOUT_SECONDS = 3600.0
MAX_SHUTDOWN_GRACE_SECONDS = 86400
# 9999-12-31T23:59:59Z: the last second datetime (APEL records, status) can represent.
MAX_EPOCH_SECONDS = 253402300799
# 1 TiB of memory and 100 TB of scratch disk per processor: times MAX_PROCESSORS this
# still fits the 64-bit sizes libvirt and qemu-img take.
MAX_MB_PER_PROCESSOR = 1024 * 1024
MAX_DISK_GB_PER_PROCESSOR = 100_000
MAX_HS06_PER_PROCESSOR = 100_000.0
MAX_OVERLOAD_PER_PROCESSOR = 1000.0
# Shares are summed over every machinetype and pipe: this keeps the sum finite.
MAX_TARGET_SHARE = 1e12
# The scheduler divides processors x HS06 by a share and sums the quotients: a positive share
# below this (1e-308 was found) overflows that sum. No site's ratio of shares comes near.
MIN_POSITIVE_TARGET_SHARE = 1e-100
MAX_VERSION_LOGGER = 86400
MAX_JOBOUTPUTS_QUOTA_BYTES = 1 << 40
MAX_JOBOUTPUTS_TOTAL_BYTES = 1 << 50
# A rotation needs the current key and the one before it; each more key is one more HMAC
# per unrecognised datagram.
MAX_VACQUERY_KEYS = 2

MACHINETYPE_NAME = re.compile(r"[a-z0-9-]+")
OPTION_NAME_SUFFIX = re.compile(r"[a-z0-9_]+")
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
SPACE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
DEVICE_NAME = re.compile(r"[a-z0-9]+")
VACMON_HOSTPORT = re.compile(r"[a-z0-9.-]+:[0-9]+")
CVMFS_REPOSITORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A file name inside $JOBOUTPUTS: no directory part, not "." or "..".
JOBOUTPUTS_FILE_NAME = re.compile(r"(?!\.\.?$)[A-Za-z0-9._-]+")
# Absolute path of safe characters with no "." or ".." component (becomes a bind mount).
SAFE_ABSOLUTE_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._+-]+)+")
# One argv word: printable ASCII, no spaces (Vac ran it through a shell, §11).
COMMAND_WORD = re.compile(r"[!-~]+")
DOCKER_IMAGE = re.compile(r"docker://[A-Za-z0-9][A-Za-z0-9._/:@-]*")
INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
VOLUME_GROUP = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]*\$?")
LIBVIRT_URI = re.compile(r"[a-z][a-z0-9+]*://[!-~]*")
PIPE_URL = re.compile(r"https?://[!-~]+")

# Upper bounds of the disk options: an exbibyte, and a century (a larger day count would
# overflow the seconds arithmetic of the eviction rule, issue 8 item 9).
MAX_DISK_MB = 2**40
MAX_IMAGECACHE_DAYS = 36500


def to_ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise InvalidValue(f"expected an IPv4 or IPv6 address, got {text.strip()!r}") from None


def to_port(text: str) -> int:
    # Port 0 lets the kernel choose: only useful in tests (peers cannot find the port).
    return to_integer(text, 0, 65535)


def to_host_port(text: str) -> Optional[str]:
    """`host:port`, `[v6 address]:port` or `:port` (every IPv4 address), or empty for none."""
    word = text.strip()
    if not word:
        return None
    host, colon, port = word.rpartition(":")
    if not colon:
        raise InvalidValue(f"expected host:port (or [address]:port), got {word!r}")
    if host.startswith("["):
        to_ip_address(host)
    elif host and not HOSTNAME.fullmatch(host.lower()):  # ":port": every IPv4 address (vacd/metrics.py)
        raise InvalidValue(f"expected host:port (or [address]:port), got {word!r}")
    to_port(port)
    return word


def to_key_files(text: str) -> tuple[str, ...]:
    """One or more absolute paths, the current key's first (a rotation holds two, issue 9 item 6)."""
    key_files = tuple(dict.fromkeys(to_absolute_path(word) for word in text.split()))
    if len(key_files) > MAX_VACQUERY_KEYS:
        raise InvalidValue(f"expected at most {MAX_VACQUERY_KEYS} key files (the current key and the previous "
                           f"one), got {len(key_files)}")
    return key_files


def to_vacmon_hostports(text: str) -> tuple[str, ...]:
    hostports = to_words(text.lower(), VACMON_HOSTPORT, "host:port items")
    for hostport in hostports:
        to_integer(hostport.rpartition(":")[2], 1, 65535)
    return hostports


def to_factories(text: str, factory_name: str) -> tuple[FactoryAddress, ...]:
    """§2.2: lower-cased; `.` is this factory; a name without a dot gets this factory's domain."""
    domain = factory_name.partition(".")[2]
    factories: dict[str, FactoryAddress] = {}
    for token in text.lower().split():
        name, equals, address = token.partition("=")
        if name == ".":
            name = factory_name
        elif "." not in name and domain:
            name = f"{name}.{domain}"
        if not HOSTNAME.fullmatch(name):
            raise InvalidValue(f"expected host names (optionally name=address), got {token!r}")
        factories.setdefault(name, FactoryAddress(name, to_ip_address(address) if equals else None))
    return tuple(factories.values())


class VacBoolean:
    """A yes/no option of Vac 03's, read as Vac read it or refused (issue 10 item 4).

    Vac 03 compared each of these with one word and took anything else as the other answer
    (`draining = true` did not drain). vacd reads yes/no, true/false, on/off and 1/0; where
    that reading is not Vac's, the factory would silently change, so the value is refused
    with both readings. Words vacd does not know at all are refused as before.
    """

    def __init__(self, vac_word: str, vac_word_means: bool) -> None:
        self.vac_word = vac_word
        self.vac_word_means = vac_word_means

    def vac_reading(self, text: str) -> bool:
        # Vac compared the value (stripped by ConfigParser) in lower case.
        is_the_word = ascii_lower(text.strip()) == self.vac_word
        return self.vac_word_means if is_the_word else not self.vac_word_means

    def __call__(self, text: str) -> bool:
        value = to_boolean(text)
        if value != self.vac_reading(text):
            vac_answer, vacd_answer = ("yes", "no") if self.vac_reading(text) else ("no", "yes")
            raise InvalidValue(
                f"Vac 03 read {text.strip()!r} as {vac_answer} (only {self.vac_word!r} meant "
                f"{'yes' if self.vac_word_means else 'no'} to it) and vacd would read it as {vacd_answer}: "
                f"write {vac_answer} to keep what Vac 03 did, or {vacd_answer} to change it")
        return value


# vac/shared.py: draining only with "yes"; fix_networking off only with "false";
# user_data_proxy and legacy_proxy only with "true".
DRAINING = VacBoolean("yes", True)
FIX_NETWORKING = VacBoolean("false", False)
PROXY_SWITCH = VacBoolean("true", True)


def to_version_logger(text: str, reader: SectionReader) -> int:
    word = text.strip().lower()
    if word in ("true", "false"):
        reader.warn("version_logger", f"{word} is deprecated, use a number of messages per day")
        return 1 if word == "true" else 0
    return to_integer(text, 0, MAX_VERSION_LOGGER)


def to_regular_expression(text: str) -> str:
    try:
        re.compile(text)
    except (re.error, OverflowError, RecursionError, ValueError) as error:
        raise InvalidValue(f"expected a regular expression: {error}") from None
    return text


def to_optional_regular_expression(text: str) -> Optional[str]:
    """An empty value means no pattern (as the option left out), so it reads back the same."""
    return to_regular_expression(text) if text.strip() else None


def to_optional_sha256(text: str) -> Optional[str]:
    """root_image_sha256 (issue 11 item 1): 64 hex digits, kept in lower case; empty means unset."""
    word = text.strip().lower()
    if not word:
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", word):
        raise InvalidValue(f"expected a SHA-256 digest of 64 hexadecimal digits, got {text.strip()[:80]!r}")
    return word


to_duration = partial(to_integer, minimum=0, maximum=MAX_DURATION_SECONDS)
to_duration_from_one = partial(to_integer, minimum=1, maximum=MAX_DURATION_SECONDS)
def to_share(text: str) -> float:
    share = to_number(text, minimum=0, maximum=MAX_TARGET_SHARE)
    if 0 < share < MIN_POSITIVE_TARGET_SHARE:
        raise InvalidValue(f"must be 0 or at least {MIN_POSITIVE_TARGET_SHARE}, got {share}")
    return share


# A sane ceiling for guest server processes (vacd.guestapi.steering.MAX_PROCESSES).
MAX_GUEST_API_PROCESSES = 64


def to_guest_api_processes(text: str) -> Optional[int]:
    """`auto` (None: vacd decides from the host's processors) or 0 to MAX_GUEST_API_PROCESSES."""
    if text.strip().lower() == "auto":
        return None
    try:
        return to_integer(text, minimum=0, maximum=MAX_GUEST_API_PROCESSES)
    except InvalidValue as error:
        raise InvalidValue(f"expected auto or 0 to {MAX_GUEST_API_PROCESSES}: {error}") from None
