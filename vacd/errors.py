"""The error types of vacd: one base, subclasses that carry the fields an admin needs.

Rules: an error says whose fault it is. Configuration errors name the file, line, section
and option; remote faults (a peer's datagram, a guest's request) never propagate out of the
part that received them; failures of external effects are raised `from` their cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

# vacquery has its own base (it imports nothing from vacd, issue 9 item 1): code here that
# calls into vacquery catches `VacqueryError` beside `VacError` (a bad site key file at start).
from vacquery.errors import VacqueryError as VacqueryError


class VacError(Exception):
    """Base of every error vacd raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration, located as precisely as it can be."""

    path: str
    line: Optional[int]
    section: Optional[str]
    option: Optional[str]
    reason: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = ""
        if self.section is not None:
            what = f"[{self.section}]"
            if self.option is not None:
                what += f" {self.option}"
            what += ": "
        elif self.option is not None:
            what = f"{self.option}: "
        return f"{where}: {what}{self.reason}"


class ConfigErrors(VacError):
    """Every problem found in one reading of the configuration, gathered, not just the first."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class BackendError(VacError):
    """A backend operation on one machine failed; raised from the underlying cause."""

    def __init__(self, operation: str, machine_name: str, reason: str) -> None:
        self.operation = operation
        self.machine_name = machine_name
        self.reason = reason
        super().__init__(f"{operation} {machine_name}: {reason}")


class BackendOutcomeUnknown(BackendError):
    """The connection to the backend died during the operation: it may or may not have happened.

    A creation cut short this way is neither a failure nor a success: the next listing says
    which (the machine runs under its record's UUID, and is adopted, or it does not).
    """


class CommandFailed(VacError):
    """An external command (always an argv list, never a shell string) exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr_tail: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        super().__init__(f"{' '.join(self.argv)} exited {returncode}: {stderr_tail}")


class StoreError(VacError):
    """A record on disk could not be read or written."""


class AccountingDeferred(VacError):
    """A finished machine's APEL record could not be written; it stays unfinished and is retried.

    Exactly once (issue 8 item 10): a machine is marked finished only after its record is
    written, so a failure (ENOSPC, a broken apel-archive) delays, and never loses, it.
    """

    def __init__(self, machine_name: str, reason: str) -> None:
        self.machine_name = machine_name
        self.reason = reason
        super().__init__(f"accounting {machine_name}: {reason}")
