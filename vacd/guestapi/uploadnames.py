"""The names in $JOBOUTPUTS: which file a `PUT` target names (Vac's rule, made safe), which are vacd's.

Rules (behaviour reference §6.3, §6.7; issue 10 item 5):
- Vac 03 wrote `PUT /joboutputs/NAME` to `MD/joboutputs/NAME` for any non-empty NAME once
  `//` was folded to `/` and the path had exactly two components (`writePutBody`). Guests
  written for Vac keep working: NAME may hold any character that is safe in one file name
  (`logs.tar.gz`, `job output (1).txt`, `α.log`, `a+b@c=d,e`), not only `[A-Za-z0-9_.-]`.
- The target is taken as Vac took it: `//` folded once, then it must be `/joboutputs/`
  followed by one component with no raw `/` (a `//` that survives the folding is refused).
  A `?` or `#` is part of NAME, as Vac kept it (`self.path` was never split).
- NAME is then percent-decoded (RFC 3986 §2.1): `%XX` is the byte XX, and a `%` not
  followed by two hex digits stays a `%`, as Vac left every `%`. Raw bytes above 0x7E in
  the target (obs-text, which Vac's server passed through) are NAME's bytes too. The bytes
  must be UTF-8: a name nobody can print is refused.
- Refused, whatever the encoding: an empty name, `.` and `..`, a `/` (`%2F`) or NUL, any
  control character (Unicode category Cc: C0, DEL, C1), and more than NAME_MAX_BYTES
  (Linux's NAME_MAX, 255) bytes of UTF-8. Vac tried to write all but the empty name
  (the kernel refused some); those it could write break the log or the admin's shell.
- Refused because vacd uses them inside joboutputs: `.received.json` (the receipt times
  the factory trusts, vacd.guestapi.joboutputs) and every name with a leading `.` and a
  `.tmp` ending (vacd.atomicfile's temp files, which the quota does not count). Any
  other name starting with a dot is the guest's, as it was under Vac.
- Pure: the server answers a refusal 403, as Vac answered every failed PUT, with the
  reason as the body, and logs it (WARNING, with the machine and `safe_repr` of the name).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Optional, Union
from urllib.parse import unquote_to_bytes

# The receipt times of a machine's uploads (vacd.guestapi.joboutputs writes it).
RECEIVED_FILE = ".received.json"
# vacd.atomicfile names its temp files `.<target>.<random>.tmp`.
TEMP_FILE_SUFFIX = ".tmp"
JOBOUTPUTS_PREFIX = b"/joboutputs/"
# Linux's NAME_MAX: the longest file name, in bytes, that a directory entry can hold.
NAME_MAX_BYTES = 255
# Enough of a refused name for an admin to recognise it; a log line is never a dump.
SAFE_REPR_CHARACTERS = 120


@dataclass(frozen=True)
class UploadName:
    """A $JOBOUTPUTS file name that is one safe path component, and not one of vacd's."""

    name: str


@dataclass(frozen=True)
class RefusedUpload:
    """A PUT target that names no joboutputs file: why, and what the guest sent (for the log)."""

    reason: str
    sent: str


def upload_name(target: str) -> Union[UploadName, RefusedUpload]:
    """The joboutputs file that `PUT target` writes, or why it writes none (module rules)."""
    try:
        raw_target = target.encode("latin-1")  # vacd.guestapi.wire decoded the head as Latin-1
    except UnicodeEncodeError:
        return RefusedUpload("not a request target", target)
    folded = raw_target.replace(b"//", b"/")
    if not folded.startswith(JOBOUTPUTS_PREFIX):
        return RefusedUpload("PUT is only for /joboutputs/NAME", target)
    raw_name = folded[len(JOBOUTPUTS_PREFIX):]
    if b"/" in raw_name:
        return RefusedUpload("NAME is more than one path component", target)
    problem = name_problem(unquote_to_bytes(raw_name))
    if problem is not None:
        return RefusedUpload(problem, target)
    return UploadName(unquote_to_bytes(raw_name).decode("utf-8"))


def name_problem(encoded_name: bytes) -> Optional[str]:
    """Why `encoded_name` (decoded from the URL) is no joboutputs file name, or None if it is one."""
    if not encoded_name:
        return "empty name"
    if len(encoded_name) > NAME_MAX_BYTES:
        return f"name longer than {NAME_MAX_BYTES} bytes"
    if b"/" in encoded_name:
        return "name contains a slash"
    if b"\0" in encoded_name:
        return "name contains NUL"
    try:
        name = encoded_name.decode("utf-8")
    except UnicodeDecodeError:
        return "name is not UTF-8"
    if name in (".", ".."):
        return "name is a dot segment"
    if any(unicodedata.category(character) == "Cc" for character in name):
        return "name contains a control character"
    if is_vacd_file_name(name):
        return "name is reserved for vacd's own files in joboutputs"
    return None


def is_vacd_file_name(name: str) -> bool:
    """Whether vacd itself writes files of this name in joboutputs (the receipts, temp files)."""
    return name == RECEIVED_FILE or (name.startswith(".") and name.endswith(TEMP_FILE_SUFFIX))


def safe_repr(text: str) -> str:
    """`text` for a log line: ASCII only (control, bidi and other characters escaped), capped."""
    shown = ascii(text[:SAFE_REPR_CHARACTERS])
    return shown + ("..." if len(text) > SAFE_REPR_CHARACTERS else "")
