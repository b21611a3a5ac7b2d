"""The Machine/Job Features routes of 169.254.169.253:80 (its $JOBOUTPUTS PUTs: uploadnames).

Rules (behaviour reference §6.3, §6.7, acceptance 12, 13):
- GET `/machinefeatures` or `/jobfeatures`, with or without a trailing slash, is Vac's
  HTML index `<html><body><ul><li><a href="KEY">KEY</a></li>…</ul></body></html>`.
- GET `/machinefeatures/KEY` or `/jobfeatures/KEY` is the raw value as text/plain, 404 if
  the key does not exist. More than two path components, `/joboutputs` and anything else
  are 404. Keys are single safe names (vacd.mjf.KEY_PATTERN), so a temp file of an atomic
  write (leading dot) is never listed or served.
- PUT is allowed only on `/joboutputs/NAME`; which NAMEs are taken is the rule of
  vacd.guestapi.uploadnames. Anything else is 403, as Vac answered.
- Pure: the machine's files are read through GuestMachine.files.
"""

from __future__ import annotations

import html

from vacd.guestapi.guest import GuestMachine
from vacd.guestapi.requestpath import path_segments
from vacd.guestapi.wire import Response
from vacd.mjf import JOBFEATURES, MACHINEFEATURES, is_valid_key

FEATURE_TREES = (MACHINEFEATURES, JOBFEATURES)
NOT_FOUND = Response(404, b"", "text/plain", "not_found")


def features_response(path: str, machine: GuestMachine) -> Response:
    """Answer GET `path` (already normalised) for `machine`."""
    segments, trailing_slash = path_segments(path)
    if not segments or segments[0] not in FEATURE_TREES or len(segments) > 2:
        return NOT_FOUND
    tree = segments[0]
    if len(segments) == 1:
        return Response(200, features_index(machine.files.list(tree)), "text/html", tree)
    key = segments[1]
    if trailing_slash or not is_valid_key(key):
        return NOT_FOUND
    value = machine.files.read(f"{tree}/{key}")
    if value is None:
        return NOT_FOUND
    return Response(200, value, "text/plain", tree)


def features_index(keys: list[str]) -> bytes:
    """Vac's HTML index of a features directory (§6.3)."""
    items = "".join(
        f'<li><a href="{html.escape(key)}">{html.escape(key)}</a></li>' for key in keys if is_valid_key(key)
    )
    return f"<html><body><ul>{items}</ul></body></html>".encode()
