"""Expand vacuum pipe documents into machinetypes (behaviour reference §8, steps 2 to 5).

Given a [vacuum_pipe PREFIX] section, the pipe's JSON document (already fetched and
decoded) and the Config, produce the machinetypes `PREFIX-suffix` the pipe generates.
Fetching and caching documents over HTTP is not done here: that belongs to an edge
module, which hands the decoded documents to `apply_pipes`. Rules:

* Pure: no I/O, no clock.
* Local configuration wins: [machinetype PREFIX-suffix] (and [DEFAULT]) over the
  [vacuum_pipe PREFIX] section's options over the pipe's values (§8 steps 3 and 4,
  acceptance 5).
* A pipe is remote, untrusted input. Only whitelisted options are taken, file names are
  checked for path traversal (§8 step 5), and every value then passes the same checks as
  a vac.conf value. Each bad value is dropped with a warning, never an error: a pipe
  can cost its own machinetypes, never stop the factory.
* Hardening beyond Vac 03 (§11 shell injection, pipe paths; issue 11 item 2). Every value is
  checked at this edge, so nothing from a pipe reaches a path outside the machinetype's
  files/ directory, /cvmfs or $JOBOUTPUTS, or an argv, unchecked:
  - values must be printable ASCII (Vac 03's str() took nothing else), at most
    MAX_PIPE_VALUE_CHARS long; user_data_option_* values (substituted into user_data only)
    may hold lines and any printable text up to MAX_PIPE_OPTION_VALUE_CHARS;
  - options naming files, paths, URLs, commands or patterns take only JSON strings;
  - file names (root_image, user_data, user_data_file_*, heartbeat_file) are one name of
    safe characters, not starting with . or -; root_image may also be a /cvmfs/ path of
    safe characters, and root_image and user_data an http(s) URL of a public host (not
    loopback, link-local or private: vacd fetches them and gives the body to the guest);
    no `..` part anywhere (Vac only refused `/../`, so `/cvmfs/..` passed);
  - container_command and tmp_binds are absolute paths of safe characters; accounting_fqan
    an FQAN; root_device and scratch_device short device names; image_signing_dn a pattern
    that cannot take hours to match;
  - a bad root_image_sha256 or image_signing_dn costs the machinetype (fail closed: a pipe
    that asks for a check must not get an unchecked image), and so does a target_share with
    no usable root_image (nor a local root_kernel); negative or non-finite shares count as 0;
  - a document yields at most MAX_PIPE_MACHINETYPES machinetypes with names of at most
    MAX_PIPE_MACHINETYPE_NAME_CHARS, and at most MAX_PIPE_WARNINGS warnings, each quoting a
    bad value as a short repr (no control character reaches the log).
  Each warning names the pipe's URL, the [machinetype PREFIX-suffix] (or [vacuum_pipe
  PREFIX]) section and the field.
"""

from __future__ import annotations

import ipaddress
import math
import re
import urllib.parse
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional

from vacd.config import Config, Machinetype, VacuumPipe
from vacd.configini import Findings, InvalidValue, Location, OptionSource, SectionReader, ascii_lower, to_number
from vacd.configparse import read_machinetype
from vacd.configvalues import (CVMFS_REPOSITORY, DOCKER_IMAGE, MACHINETYPE_NAME, MAX_TARGET_SHARE, OPTION_NAME_SUFFIX,
                               SAFE_ABSOLUTE_PATH)
from vacd.errors import ConfigProblem

DEFAULT_CACHE_SECONDS = 3600

# §8 step 4: what a pipe may set. machinegroup is deliberately absent (§2.4).
PIPE_OPTIONS = frozenset((
    "accounting_fqan", "backoff_seconds", "container_command", "cvmfs_repositories", "fizzle_seconds",
    "disk_gb_per_processor", "heartbeat_file", "heartbeat_seconds", "image_signing_dn", "legacy_proxy",
    "machine_model", "max_processors", "max_wallclock_seconds", "min_processors", "min_wallclock_seconds",
    "root_device", "root_image", "root_image_sha256", "scratch_device", "suffix", "target_share", "tmp_binds",
    "user_data", "user_data_proxy",
))
PIPE_OPTION_PREFIXES = ("user_data_file_", "user_data_option_")
# Options whose pipe value must be a JSON string: each names a file, a path, a URL, a command
# or a pattern. A number or a boolean there is a mistake (or a probe), not a name.
_TEXT_OPTIONS = frozenset((
    "accounting_fqan", "container_command", "cvmfs_repositories", "heartbeat_file", "image_signing_dn",
    "machine_model", "root_device", "root_image", "root_image_sha256", "scratch_device", "tmp_binds", "user_data",
))
# A pipe that asks for an integrity check and gets the check wrong must not get an unchecked
# image instead: a bad value of these costs the machinetype, not just the value (fail closed).
FAIL_CLOSED_OPTIONS = frozenset(("image_signing_dn", "root_image_sha256"))

# Size limits on what one pipe can make vacd hold, log and act on. A pipe document is at most
# 1 MiB (vacd.fetch.PIPE_LIMITS); real pipes have a handful of machinetypes of short values.
# A value: far above any URL, path, DN pattern or FQAN seen in a real pipe.
MAX_PIPE_VALUE_CHARS = 1024
# A user_data_option_* value is substituted into user_data; Nova refuses user_data over 64 KiB.
MAX_PIPE_OPTION_VALUE_CHARS = 64 * 1024
# Machinetype names become directory and file names (machines/<time>_<machinetype>_<name>,
# joboutputs, APEL records) and VacQuery fields: 64 characters leave room within NAME_MAX.
MAX_PIPE_MACHINETYPE_NAME_CHARS = 64
# Each entry becomes a machinetype the scheduler scores at every pass.
MAX_PIPE_MACHINETYPES = 100
# Warnings are logged: a hostile pipe must not flood the journal (the rest are counted).
MAX_PIPE_WARNINGS = 100
# An http(s) root_image is cached as imagecache/<URL quoted with no safe characters>: one file name.
NAME_MAX_BYTES = 255
# image_signing_dn is a regular expression searched in a signer's DN at every creation. Python's
# re has no timeout, so a pipe's pattern may use a variable repeat (*, +, ?, {m,n}) at most twice
# and may not repeat a group: `.*.*.*z` takes 45 s on a 1 KB DN, `.*.*z` 0.1 s; `(a|aa)*` and
# `a?a?...a?aa...a` are exponential; `.{0,999}` is `.*` on a DN.
MAX_PIPE_PATTERN_REPEATS = 2

# Only printable ASCII: Vac 03 (Python 2) applied str() to each pipe value, which failed on
# anything else, so no working pipe has it; this also keeps out NUL, newlines (log and APEL
# record injection), bidirectional overrides and look-alike characters.
_PRINTABLE_ASCII = re.compile(r"[ -~]*")
# A file in <machinetype_path>/files (or $JOBOUTPUTS): no directory part, not . or .., and no
# leading - (never an option to a command), only characters that need no quoting anywhere.
PIPE_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
_PIPE_URL = re.compile(r"https?://[A-Za-z0-9][!-~]*")
_CVMFS_PATH = re.compile(r"/cvmfs" + SAFE_ABSOLUTE_PATH.pattern)
# A VOMS FQAN such as /lhcb/Role=pilot/Capability=NULL (or a bare VO name).
_FQAN_PART = r"[A-Za-z0-9][A-Za-z0-9=._:@-]*"
_FQAN = re.compile(rf"/?{_FQAN_PART}(?:/{_FQAN_PART})*")
_SHA256_OR_EMPTY = re.compile(r"[0-9A-Fa-f]{64}|")
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_PIPE_DEVICE = re.compile(r"[a-z0-9]{1,16}")
_ESCAPED = re.compile(r"\\.", re.DOTALL)
# `(?:`, `(?P<`, ... and the lazy `*?` are syntax, not repeats.
_NOT_A_REPEAT = re.compile(r"(?<=\()\?|(?<=[*+?}])\?")
# Every repeat that can try more than one length: *, +, ? and {m,n}.
_VARIABLE_REPEAT = re.compile(r"[*+?]|\{[0-9]*,[0-9]*\}")
_REPEATED_GROUP = re.compile(r"\)(?:[*+?]|\{[0-9,]*\})")


@dataclass(frozen=True)
class PipeExpansion:
    """The machinetypes one pipe document generates, and what was dropped on the way."""

    machinetypes: Mapping[str, Machinetype] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def pipe_cache_seconds(pipe_document: Mapping[str, Any]) -> int:
    """The document's cache_seconds (§8 caching), or the default 3600 if absent or bad."""
    value = pipe_document.get("cache_seconds") if isinstance(pipe_document, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return DEFAULT_CACHE_SECONDS


def _entry_share(entry: Mapping[str, Any]) -> Optional[float]:
    value = entry.get("target_share")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str) and len(value) > MAX_PIPE_VALUE_CHARS:
        return None
    try:
        share = float(value) if isinstance(value, (int, float)) else to_number(value)
    except (InvalidValue, OverflowError):
        return None
    # Bounded as [machinetype] target_share is: the shares are summed (issue 8 item 9).
    return share if math.isfinite(share) and 0 <= share <= MAX_TARGET_SHARE else None


def _shown(value: Any) -> str:
    """A pipe's value as a warning may quote it: repr (so no control character reaches a log), cut short."""
    text = repr(value) if not isinstance(value, str) or len(value) <= 60 else repr(value[:57]) + "..."
    return text if len(text) <= 80 else text[:77] + "..."


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _as_text(option: str, value: Any) -> tuple[Optional[str], Optional[str]]:
    """(the option's text, None) or (None, why not): Vac 03 applied str() to each value.

    Only scalars make sense as options; options naming files, paths, URLs, commands and
    patterns take only strings (user_data_option_* also numbers, which real pipes send).
    """
    if option in _TEXT_OPTIONS and not isinstance(value, str):
        return None, f"expected a string, got {_json_kind(value)}"
    if option.startswith("user_data_file_") and not isinstance(value, str):
        return None, f"expected a file name as a string, got {_json_kind(value)}"
    if isinstance(value, bool):
        if option.startswith("user_data_option_"):
            return None, "expected a string or a number, got a boolean"
        return ("true" if value else "false"), None
    if isinstance(value, int):
        return str(value), None
    if isinstance(value, float):
        return (repr(value), None) if math.isfinite(value) else (None, "expected a finite number")
    if isinstance(value, str):
        return value, None
    return None, f"expected a string or a number, got {_json_kind(value)}"


def _has_parent_part(path: str) -> bool:
    return ".." in path.split("/")


def _host_rejection(url: str) -> Optional[str]:
    """Why vacd must not fetch from the URL's host for a pipe, or None.

    vacd fetches a pipe's user_data and root_image itself and hands the body to the guest: a
    URL naming the factory's own loopback, link-local (the guest API, cloud metadata) or
    private addresses would show the VO's guest what only the factory can reach. IP literals
    must be global; names must end in a label starting with a letter (so 127.1, 2130706433
    and 0x7f.0.0.1, which resolvers read as 127.0.0.1, are refused), and not be localhost.
    A name that resolves to such an address is not caught here.
    """
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        host = None
    if not host:
        return f"expected a URL with a host, got {_shown(url)}"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        kind = "loopback" if address.is_loopback else "non-global"
        return None if address.is_global else f"must not name a {kind} address, got {_shown(host)}"
    last_label = host.rstrip(".").rsplit(".", 1)[-1]
    if not _HOST_NAME.fullmatch(host) or not last_label[:1].isalpha():
        return f"expected a host name or a global IP address, got {_shown(host)}"
    if host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost"):
        return "must not name localhost"
    return None


def _url_rejection(text: str, *, one_file_name: bool = False) -> Optional[str]:
    if not _PIPE_URL.fullmatch(text):
        return f"expected an http:// or https:// URL without spaces, got {_shown(text)}"
    if _has_parent_part(text):
        return "must not contain a .. path part"
    host_reason = _host_rejection(text)
    if host_reason is not None:
        return host_reason
    if one_file_name and len(urllib.parse.quote(text, safe="").encode()) > NAME_MAX_BYTES:
        # vacd.imagecache names the cached copy by the quoted URL (§1.12).
        return f"URL too long: quoted, it must fit one file name of {NAME_MAX_BYTES} bytes in the image cache"
    return None


def _file_name_rejection(text: str) -> Optional[str]:
    if "/" in text:
        return "must not contain / when it comes from a vacuum pipe"
    if not PIPE_FILE_NAME.fullmatch(text):
        return (f"expected a file name of A-Z, a-z, 0-9, ., _, + and - not starting with . or -, "
                f"got {_shown(text)}")
    return None


def _root_image_rejection(text: str) -> Optional[str]:
    if text.startswith("docker://"):
        if _has_parent_part(text):
            return "must not contain a .. path part"
        return None if DOCKER_IMAGE.fullmatch(text) else f"expected docker://IMAGE, got {_shown(text)}"
    if text.startswith(("http://", "https://")):
        return _url_rejection(text, one_file_name=True)
    if "/" in text:
        if _has_parent_part(text):
            return "must not contain a .. path part"
        if not text.startswith("/cvmfs/"):
            return "may contain / only as a docker://, /cvmfs/, http:// or https:// reference"
        if not _CVMFS_PATH.fullmatch(text):
            return f"expected a /cvmfs/ path of A-Z, a-z, 0-9, ., _, + and - without . or .. parts, got {_shown(text)}"
        return None
    return _file_name_rejection(text)


def _user_data_rejection(text: str) -> Optional[str]:
    if text.startswith(("http://", "https://")):
        return _url_rejection(text)
    if "/" in text:
        if _has_parent_part(text):
            return "must not contain a .. path part"
        return "may contain / only as an http:// or https:// URL"
    return _file_name_rejection(text)


def _pattern_rejection(text: str) -> Optional[str]:
    try:
        re.compile(text)
    except (re.error, OverflowError, RecursionError, ValueError) as error:
        return f"expected a regular expression: {error}"
    unescaped = _ESCAPED.sub("", text)
    if _REPEATED_GROUP.search(unescaped):
        return "a pattern from a vacuum pipe may not repeat a group (it could take hours to match)"
    if len(_VARIABLE_REPEAT.findall(_NOT_A_REPEAT.sub("", unescaped))) > MAX_PIPE_PATTERN_REPEATS:
        return (f"a pattern from a vacuum pipe may use *, +, ? or {{m,n}} at most {MAX_PIPE_PATTERN_REPEATS} "
                "times (more could take hours to match)")
    return None


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], Optional[str]]:
    def rejection_of(text: str) -> Optional[str]:
        return None if pattern.fullmatch(text) else f"expected {what}, got {_shown(text)}"
    return rejection_of


def _words_matching(pattern: re.Pattern[str], what: str) -> Callable[[str], Optional[str]]:
    def rejection_of(text: str) -> Optional[str]:
        bad = [word for word in text.split() if not pattern.fullmatch(word)]
        if any("/" in word for word in bad) and pattern is CVMFS_REPOSITORY:
            return "must not contain / when it comes from a vacuum pipe"
        return f"expected {what}, got {_shown(bad[0])}" if bad else None
    return rejection_of


# What a pipe's value of each option that names something must look like, beyond the vac.conf
# checks it then passes too (vacd.configparse.read_machinetype, with the value checks of vacd.configvalues). Each is stricter than vac.conf,
# which is the site's own word: nothing from a pipe names a file outside <machinetype_path>/files,
# /cvmfs or $JOBOUTPUTS, nor can be taken for an option or split by a shell.
_PIPE_CHECKS: Mapping[str, Callable[[str], Optional[str]]] = {
    "root_image": _root_image_rejection,
    "user_data": _user_data_rejection,
    "user_data_file_": _file_name_rejection,
    "heartbeat_file": _file_name_rejection,
    "container_command": _matching(SAFE_ABSOLUTE_PATH, "an absolute path without . or .. parts"),
    "cvmfs_repositories": _words_matching(CVMFS_REPOSITORY, "cvmfs repository names"),
    "tmp_binds": _words_matching(SAFE_ABSOLUTE_PATH, "absolute paths without . or .. parts"),
    "accounting_fqan": _matching(_FQAN, "an FQAN such as /vo/Role=pilot"),
    "image_signing_dn": _pattern_rejection,
    "root_image_sha256": _matching(_SHA256_OR_EMPTY, "a SHA-256 digest of 64 hexadecimal digits"),
    "root_device": _matching(_PIPE_DEVICE, "a device name of 1 to 16 of a-z and 0-9"),
    "scratch_device": _matching(_PIPE_DEVICE, "a device name of 1 to 16 of a-z and 0-9"),
}


def rejection(option: str, text: str) -> Optional[str]:
    """Why a pipe may not set `option` to `text` (§8 steps 4 and 5), or None if it may.

    Pure and total: any option name and text give an answer, never an exception.
    """
    if option not in PIPE_OPTIONS and not option.startswith(PIPE_OPTION_PREFIXES):
        return "not accepted from a vacuum pipe"
    if option.startswith(PIPE_OPTION_PREFIXES) and not OPTION_NAME_SUFFIX.fullmatch(option.split("_", 3)[3]):
        return "the part after user_data_option_ or user_data_file_ must use only a-z, 0-9 and _"
    if option.startswith("user_data_option_"):
        # Substituted into user_data only (never a path or an argv word): any text, lines too.
        if len(text) > MAX_PIPE_OPTION_VALUE_CHARS:
            return f"longer than {MAX_PIPE_OPTION_VALUE_CHARS} characters"
        if any(not character.isprintable() and character not in "\t\n\r" for character in text):
            return "contains control characters"
        return None
    if len(text) > MAX_PIPE_VALUE_CHARS:
        return f"longer than {MAX_PIPE_VALUE_CHARS} characters"
    if not _PRINTABLE_ASCII.fullmatch(text):
        return "contains control characters or characters that are not ASCII"
    check = _PIPE_CHECKS.get("user_data_file_" if option.startswith("user_data_file_") else option)
    return check(text.strip()) if check is not None else None


def _warning(url: str, section: str, option: Optional[str], reason: str) -> str:
    return str(ConfigProblem(url, None, section, option, reason))


def _local_options(pipe: VacuumPipe, name: str, config: Config) -> dict[str, OptionSource]:
    """What vac.conf says for this machinetype: its own sections, then the pipe section's options."""
    raw = config.raw
    options: dict[str, OptionSource] = dict(raw.defaults)
    for section in (f"vmtype {name}", f"machinetype {name}"):
        options.update(raw.sections.get(section, {}))
    pipe_section = f"vacuum_pipe {pipe.prefix}"
    pipe_location = raw.headers.get(pipe_section, Location(pipe.url))
    pipe_sources = raw.sections.get(pipe_section, {})
    for option, value in pipe.options.items():
        if option not in options:
            options[option] = pipe_sources.get(option, OptionSource(value, pipe_location.path, pipe_location.line))
    if "machinetype_path" not in options:
        # §8 step 3, acceptance 4: relative files of every generated type live under PREFIX.
        options["machinetype_path"] = OptionSource(str(config.paths.machinetypes_dir / pipe.prefix),
                                                   pipe_location.path, pipe_location.line)
    return options


def _pipe_option(key: Any) -> Optional[str]:
    """The option a pipe's key names (lower case, as vac.conf's), or None if it names none."""
    if not isinstance(key, str) or len(key) > 64 or not _PRINTABLE_ASCII.fullmatch(key):
        return None
    return ascii_lower(key)


def _can_boot(machinetype: Machinetype) -> bool:
    return machinetype.target_share <= 0 or machinetype.root_image is not None or machinetype.root_kernel is not None


def _expand_entry(pipe: VacuumPipe, name: str, entry: Mapping[str, Any], total_share: float,
                  config: Config, warnings: list[str]) -> Optional[Machinetype]:
    section = f"machinetype {name}"
    options = _local_options(pipe, name, config)
    from_pipe: set[str] = set()
    for key, value in entry.items():
        option = _pipe_option(key)
        if option is None or option not in PIPE_OPTIONS and not option.startswith(PIPE_OPTION_PREFIXES):
            shown_option = option if option is not None and PIPE_FILE_NAME.fullmatch(option) else _shown(key)
            warnings.append(_warning(pipe.url, section, shown_option, "ignored: not accepted from a vacuum pipe"))
            continue
        if option == "suffix" or option in options:
            continue  # local configuration wins (§8 step 4)
        if option == "target_share":
            share = _entry_share(entry)
            if share is None:
                warnings.append(_warning(pipe.url, section, option, f"counted as 0: expected a number from 0 to "
                                                                    f"{MAX_TARGET_SHARE:g}, got {_shown(value)}"))
            # §8 step 4: the section's total split in proportion to the pipe's own shares.
            split = pipe.target_share * share / total_share if share is not None and total_share > 0 else 0.0
            options[option] = OptionSource(repr(split), pipe.url)
            from_pipe.add(option)
            continue
        text, reason = _as_text(option, value)
        if text is not None:
            reason = rejection(option, text)
            # As vac.conf's reader strips every value (user_data_option_* text is the guest's own).
            text = text if option.startswith("user_data_option_") else text.strip()
        if reason is not None or text is None:
            if option in FAIL_CLOSED_OPTIONS:
                warnings.append(_warning(pipe.url, section, option, f"not created: {reason}; the machinetype "
                                                                    "is not created without the check it asks for"))
                return None
            warnings.append(_warning(pipe.url, section, option, f"ignored: {reason}"))
            continue
        options[option] = OptionSource(text, pipe.url)
        from_pipe.add(option)
    header = config.raw.headers.get(section, Location(pipe.url))
    while True:
        findings = Findings()
        reader = SectionReader(section, options, frozenset(), header, findings)
        machinetype = read_machinetype(name, reader, config.settings, config.paths, vacuum_pipe=pipe.prefix)
        if machinetype is not None and not _can_boot(machinetype):
            # Vac 03 kept such a type and failed every creation of it; those failures took slots
            # and passes from the pipe's good types. A type with no share is kept (never created).
            warnings.append(_warning(pipe.url, section, "root_image", "not created: it has a target_share but no "
                                                                      "usable root_image (or local root_kernel)"))
            return None
        if machinetype is not None:
            warnings.extend(findings.warnings)
            return machinetype
        # Drop each value of the pipe's that failed a check and try again; a problem in
        # what vac.conf says (or one that dropping cannot cure) costs the machinetype.
        droppable = [problem for problem in findings.problems
                     if problem.option in from_pipe and options[problem.option].path == pipe.url]
        fail_closed = [problem for problem in droppable if problem.option in FAIL_CLOSED_OPTIONS]
        if fail_closed:
            warnings.extend(_warning(pipe.url, section, problem.option, f"not created: {problem.reason}")
                            for problem in fail_closed)
            return None
        if not droppable:
            warnings.extend(_warning(pipe.url, section, None, f"not created: {problem}")
                            for problem in findings.problems)
            return None
        for problem in droppable:
            warnings.append(_warning(pipe.url, section, problem.option, f"ignored: {problem.reason}"))
            options.pop(problem.option or "", None)
            from_pipe.discard(problem.option or "")


def _entry_name(pipe: VacuumPipe, entry: Mapping[str, Any]) -> tuple[Optional[str], str]:
    """(PREFIX-suffix, "") for an entry with a good suffix, else (None, why not)."""
    suffix = entry.get("suffix")
    if isinstance(suffix, int) and not isinstance(suffix, bool):
        suffix = str(suffix)  # Vac 03 applied str() to every value
    if not isinstance(suffix, str):
        return None, f"ignored an entry: suffix must be a string of a-z, 0-9 and -, got {_json_kind(suffix)}"
    name = f"{pipe.prefix}-{suffix}"
    if len(name) > MAX_PIPE_MACHINETYPE_NAME_CHARS:
        return None, (f"ignored an entry: {pipe.prefix}-suffix must be at most {MAX_PIPE_MACHINETYPE_NAME_CHARS} "
                      f"characters, got {len(name)}")
    if not MACHINETYPE_NAME.fullmatch(name):
        return None, f"ignored an entry: suffix must be a-z, 0-9 and -, got {_shown(suffix)}"
    return name, ""


def _bounded(pipe: VacuumPipe, warnings: list[str]) -> tuple[str, ...]:
    if len(warnings) <= MAX_PIPE_WARNINGS:
        return tuple(warnings)
    return tuple(warnings[:MAX_PIPE_WARNINGS]) + (_warning(
        pipe.url, f"vacuum_pipe {pipe.prefix}", None, f"{len(warnings) - MAX_PIPE_WARNINGS} more warnings not shown"),)


def expand_pipe(pipe: VacuumPipe, pipe_document: Mapping[str, Any], config: Config) -> PipeExpansion:
    """The machinetypes one decoded pipe document generates (§8 steps 2 to 5).

    Returns the machinetypes, named PREFIX-suffix, and a warning for everything dropped,
    each naming the pipe's URL, the section and the field. Raises nothing for any document.
    """
    warnings: list[str] = []
    pipe_section = f"vacuum_pipe {pipe.prefix}"
    entries = pipe_document.get("machinetypes") if isinstance(pipe_document, Mapping) else None
    if not isinstance(pipe_document, Mapping):
        return PipeExpansion({}, (_warning(pipe.url, pipe_section, None, "the document is not a JSON object"),))
    if entries is None:
        return PipeExpansion()  # §8 step 1: no machinetypes, nothing to do
    if not isinstance(entries, list):
        return PipeExpansion({}, (_warning(pipe.url, pipe_section, "machinetypes", "is not a list"),))
    if len(entries) > MAX_PIPE_MACHINETYPES:
        warnings.append(_warning(pipe.url, pipe_section, "machinetypes", f"only the first {MAX_PIPE_MACHINETYPES} "
                                                                         f"of {len(entries)} entries are used"))
        entries = entries[:MAX_PIPE_MACHINETYPES]
    good_entries = [entry for entry in entries if isinstance(entry, Mapping)]
    if len(good_entries) != len(entries):
        warnings.append(_warning(pipe.url, pipe_section, "machinetypes",
                                 "ignored machinetypes entries that are not objects"))
    total_share = sum(share for share in map(_entry_share, good_entries) if share is not None)
    machinetypes: dict[str, Machinetype] = {}
    for entry in good_entries:
        name, reason = _entry_name(pipe, entry)
        if name is None:
            warnings.append(_warning(pipe.url, pipe_section, "suffix", reason))
            continue
        if name in machinetypes:
            warnings.append(_warning(pipe.url, pipe_section, "suffix",
                                     f"ignored a second entry for {name[len(pipe.prefix) + 1:]!r}"))
            continue
        machinetype = _expand_entry(pipe, name, entry, total_share, config, warnings)
        if machinetype is not None:
            machinetypes[name] = machinetype
    return PipeExpansion(machinetypes, _bounded(pipe, warnings))


def apply_pipes(config: Config, pipe_documents: Mapping[str, Mapping[str, Any]]) -> Config:
    """The Config with every pipe's machinetypes added; `pipe_documents` is keyed by prefix.

    A pipe without a document (its fetch failed and there is no usable cache) adds nothing.
    A generated machinetype replaces the [machinetype PREFIX-suffix] section it overlays.
    """
    machinetypes = dict(config.machinetypes)
    warnings = list(config.warnings)
    for pipe in config.vacuum_pipes:
        document = pipe_documents.get(pipe.prefix)
        if document is None:
            continue
        expansion = expand_pipe(pipe, document, config)
        for name, machinetype in expansion.machinetypes.items():
            earlier = machinetypes.get(name)
            if earlier is not None and earlier.vacuum_pipe is not None:
                warnings.append(_warning(pipe.url, f"vacuum_pipe {pipe.prefix}", None,
                                         f"ignored {name}: already made by [vacuum_pipe {earlier.vacuum_pipe}]"))
                continue
            machinetypes[name] = machinetype
        warnings.extend(warning for warning in expansion.warnings if warning not in warnings)
    return replace(config, machinetypes=machinetypes, warnings=tuple(warnings))


__all__ = ["DEFAULT_CACHE_SECONDS", "FAIL_CLOSED_OPTIONS", "MAX_PIPE_MACHINETYPES", "MAX_PIPE_MACHINETYPE_NAME_CHARS",
           "MAX_PIPE_OPTION_VALUE_CHARS", "MAX_PIPE_VALUE_CHARS", "MAX_PIPE_WARNINGS", "PIPE_FILE_NAME", "PIPE_OPTIONS",
           "PipeExpansion", "apply_pipes", "expand_pipe", "pipe_cache_seconds", "rejection"]
