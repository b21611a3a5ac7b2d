"""What a machine's end means: shutdown message codes, the factory's own messages, fizzles.

Rules (behaviour reference §4.4, §3.5):
- A shutdown message is `NNN human text`. Any 3-digit code >= 300 is an abort (Vac 03 since
  03.00, including 700 and codes such as 900); 100 and 200 are not; a message without a
  numeric 3-digit prefix is not (acceptance 21).
- A machine that finishes without any message after running less than `fizzle_seconds`
  fizzled: it is reported as `300 Vac detects fizzle after N seconds` so the space backs
  off (acceptance 22). Vac 03 meant to do this but its code never ran (§3.5 [BUG]).
- The factory's own messages are the 700 texts below: Vac's two heartbeat messages and
  Vcycle's three others (Appendix B), so every machine the factory stops says why.
- Only the payload's verdict is an abort (issue 9 item 2). The endings the factory itself
  causes, `FACTORY_ENDINGS` (the wallclock limit, the site's shutdown_time, a creation that
  failed or that vacd's own death cut short, a pre-emption), keep their text for the admin but never back
  the space off: Vac 03 wrote no message for them, and Vcycle counts only 300-699. A
  stale or missing heartbeat stays an abort: it is the payload's failure, as in Vac 03.
- What a guest writes to `joboutputs/shutdown_message` is bytes until
  `parse_shutdown_message` has made it a `ShutdownMessage`; that is the one place the rule
  lives (issue 8 item 2, docs/guest-interface.md "Outcomes").

Pure functions: no clock, no I/O.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Optional

HEARTBEAT_NOT_CREATED = "700 Heartbeat file not created"
HEARTBEAT_NOT_UPDATED = "700 Heartbeat file not updated"
EXCEEDED_WALLCLOCK = "700 Exceeded max_wallclock_seconds"
PASSED_SHUTDOWN_TIME = "700 Passed shutdowntime"
FAILED_TO_START = "700 Failed to start"
# The factory ended the machine early to give another machinetype its share (vacd/preemption.py).
PREEMPTED = "700 Pre-empted for another machinetype's share"

# The lowest code that makes the space back off (§4.4).
FIRST_ABORT_CODE = 300
# The factory's verdicts on machines that were not the payload's to judge (issue 9 item 2).
FACTORY_ENDINGS = frozenset({EXCEEDED_WALLCLOCK, PASSED_SHUTDOWN_TIME, FAILED_TO_START, PREEMPTED})
# Vac 03 kept the first 200 characters of the message's first line (§3.4, §3.5).
MAX_SHUTDOWN_MESSAGE_CHARS = 200
# At most this much of the file is read: 200 characters are at most 800 bytes of UTF-8,
# which leaves room for leading blank lines, and one guest cannot make the factory read
# (or hold in memory) more than this per pass, whatever it puts in the file.
MAX_SHUTDOWN_MESSAGE_BYTES = 4096
# Unicode "Cc" (C0, DEL, C1: terminal escapes, NUL) and "Cf" (bidi overrides, zero-width
# marks): a message is shown in logs, `vac status`, status.json and peers' reports, so it
# must not be able to move a cursor or reorder the text around it.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf"})
# What str.splitlines() breaks at; these end the first line rather than becoming spaces.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


@dataclass(frozen=True)
class ShutdownMessage:
    """A guest's (or the factory's) outcome: one clean line and its 3-digit code, if any.

    `text` is the whole line as Vac 03 reports it, code included (`300 Nothing to do`);
    `code` is its numeric prefix, or None when the line has none (Vac 03 keeps such a
    text, and it is no abort, §4.4).
    """

    code: Optional[int]
    text: str

    def __post_init__(self) -> None:
        if not self.text or self.text != self.text.strip():
            raise ValueError(f"shutdown message must be non-empty and stripped: {self.text!r}")
        if len(self.text) > MAX_SHUTDOWN_MESSAGE_CHARS:
            raise ValueError(f"shutdown message longer than {MAX_SHUTDOWN_MESSAGE_CHARS} characters")
        if any(_is_control(character) for character in self.text) or len(self.text.splitlines()) != 1:
            raise ValueError(f"shutdown message holds control characters or line breaks: {self.text!r}")
        if self.code != _code_of(self.text):
            raise ValueError(f"code {self.code} does not match the text {self.text!r}")

    @property
    def is_abort(self) -> bool:
        return self.code is not None and self.code >= FIRST_ABORT_CODE and self.text not in FACTORY_ENDINGS


def parse_shutdown_message(raw: bytes) -> Optional[ShutdownMessage]:
    """The message in the bytes of a `shutdown_message` file, or None if they hold none.

    The rule, applied in this order:
    1. Only the first MAX_SHUTDOWN_MESSAGE_BYTES bytes count.
    2. They are decoded as UTF-8, each invalid byte becoming U+FFFD (so `\xff\xfe300 bad`
       is the message `\ufffd\ufffd300 bad`, with no code, as Vac 03 would not parse it).
    3. Control and format characters other than line breaks (Unicode Cc, Cf: escapes, NUL,
       tabs, bidi overrides) become spaces.
    4. Leading whitespace and blank lines are skipped; the first line is the message, the
       rest is ignored. It is stripped and cut to MAX_SHUTDOWN_MESSAGE_CHARS characters.
    5. Nothing left (an empty file, only whitespace or control characters) is no message.
    6. The code is the first three characters if they are ASCII digits, else None.
    """
    decoded = raw[:MAX_SHUTDOWN_MESSAGE_BYTES].decode("utf-8", errors="replace")
    cleaned = "".join(
        " " if _is_control(character) and character not in _LINE_BREAKS else character for character in decoded
    )
    lines = cleaned.strip().splitlines()
    if not lines:
        return None
    text = lines[0].strip()[:MAX_SHUTDOWN_MESSAGE_CHARS].rstrip()
    if not text:
        return None
    return ShutdownMessage(_code_of(text), text)


def shutdown_code(shutdown_message: Optional[str]) -> Optional[int]:
    """`300 Nothing to do` -> 300; None, empty or a non-numeric prefix -> None."""
    if not shutdown_message:
        return None
    return _code_of(shutdown_message.strip())


def _code_of(text: str) -> Optional[int]:
    # ASCII only: '²' and '٣' are str.isdigit() but no code (found by Hypothesis).
    prefix = text[:3]
    if len(prefix) == 3 and (prefix.isascii() and prefix.isdigit()):
        return int(prefix)
    return None


def _is_control(character: str) -> bool:
    return unicodedata.category(character) in _CONTROL_CATEGORIES


def is_abort(shutdown_message: Optional[str]) -> bool:
    """True if the message's code is 300 or more (acceptance 21) and it is the payload's verdict."""
    code = shutdown_code(shutdown_message)
    return code is not None and code >= FIRST_ABORT_CODE and not is_factory_ending(shutdown_message)


def is_factory_ending(shutdown_message: Optional[str]) -> bool:
    """True for the endings the factory causes itself, which never back the space off."""
    return shutdown_message is not None and shutdown_message.strip() in FACTORY_ENDINGS


def fizzle_message(seconds: int) -> str:
    """The message Vac gives a machine that ended silently too soon (§3.5)."""
    return f"300 Vac detects fizzle after {seconds} seconds"


def effective_outcome(
    shutdown_message: Optional[str],
    started_time: Optional[int],
    finished_time: Optional[int],
    fizzle_seconds: int,
) -> Optional[str]:
    """The outcome to report for a finished machine.

    A message the guest (or the factory) wrote wins. Without one, a machine that started
    and finished less than `fizzle_seconds` later gets the fizzle message; one that ran
    longer, or never started, or whose finish time is unknown, has no outcome (None).
    """
    if shutdown_message and shutdown_message.strip():
        return shutdown_message.strip()
    if started_time is None or finished_time is None:
        return None
    ran_seconds = max(0, finished_time - started_time)
    if ran_seconds < fizzle_seconds:
        return fizzle_message(ran_seconds)
    return None
