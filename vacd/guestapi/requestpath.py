"""The request-path rules both guest servers share: Vac's folding, and no path tricks.

Rules (behaviour reference §6.3, §6.4, §11 security):
- `//` is folded to `/` once, as Vac did; a `//` that survives that (three or more
  slashes in a row) is refused.
- Only letters, digits, `.`, `_`, `-` and `/` may appear: percent-encoding (so an encoded
  slash or dot), queries, fragments and absolute-form targets are refused. No path the
  servers answer needs anything else.
- A `.` or `..` segment is refused; paths longer than MAX_PATH_BYTES are refused.
- Refused means None: the caller answers 404 (GET) or 403 (PUT) and changes nothing.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional

# The longest real path is under 60 bytes (/openstack/2018-08-27/meta-data/public-keys/0/openssh-key).
MAX_PATH_BYTES = 512
_ALLOWED = re.compile(r"^/[A-Za-z0-9._/-]*$")


def normalise_path(target: str) -> Optional[str]:
    """The path to route, or None if the target breaks a rule above."""
    # Measured before the cache: a guest's distinct 8 KiB targets (a head may hold one) would
    # each be kept, 4096 of them 32 MiB (the issue 11 fuzz run found the server 25 MB larger).
    if len(target) > MAX_PATH_BYTES:
        return None
    return _normalise_short_path(target)


# Pure and called for every request with the same few targets; keys are at most MAX_PATH_BYTES.
@lru_cache(maxsize=4096)
def _normalise_short_path(target: str) -> Optional[str]:
    if not _ALLOWED.match(target):
        return None
    folded = target.replace("//", "/")
    if "//" in folded:
        return None
    for segment in folded.split("/"):
        if segment in (".", ".."):
            return None
    return folded


def path_segments(path: str) -> tuple[list[str], bool]:
    """(`/a/b/` -> (["a", "b"], True)); `/` -> ([], True). The flag says a slash ended it."""
    trailing_slash = path.endswith("/")
    stripped = path.strip("/")
    return (stripped.split("/") if stripped else []), trailing_slash
