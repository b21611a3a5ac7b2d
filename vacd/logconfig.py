"""Set up vacd's log handlers: a file reopened on SIGHUP, or syslog/journald through /dev/log.

Rules (style.md "Logging"; behaviour reference §1.2, §10.3):
- Only the daemon calls `configure_logging`; every other module just logs to its own
  `logging.getLogger(__name__)`.
- File lines read `Mon DD HH:MM:SS vacd[PID]: LEVEL module: message`, local time and
  English month names whatever the locale, close to Vac 03's `Mon DD HH:MM:SS [PID]: text`
  so admins' greps keep working. Syslog lines drop the time (syslog adds its own).
- Log rotation: Vac 03 reopened its log every cycle; vacd reopens on SIGHUP. The signal
  handler calls `reopen_logs()`, which only sets a flag, so it is safe whatever the
  interrupted thread was doing; the file is reopened before the next line is written.
- Never secrets: any PEM block (X.509 proxies, host keys) in a message or a traceback is
  replaced by `[redacted PEM block]` before it is written. Callers must still not log
  user_data, proxies, keys or tokens; this is the safety net.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import socket
import sys
import time
from pathlib import Path
from typing import Optional, Union

LOG_DESTINATIONS = ("file", "syslog", "journal", "stderr")
PROGRAM = "vacd"
SYSLOG_ADDRESS = "/dev/log"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?(-----END \1-----|\Z)", re.DOTALL)
_PEM_REPLACEMENT = "[redacted PEM block]"


def redact(text: str) -> str:
    """`text` with every PEM block (even an unterminated one) replaced."""
    return _PEM_BLOCK.sub(_PEM_REPLACEMENT, text)


class VacdFormatter(logging.Formatter):
    """`Mon DD HH:MM:SS vacd[PID]: LEVEL module: message`, secrets redacted."""

    def __init__(self, program: str = PROGRAM, with_time: bool = True) -> None:
        super().__init__()
        self.program = program
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        text = f"{self.program}[{record.process}]: {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        if self.with_time:
            text = f"{self.timestamp(record.created)} {text}"
        return redact(text)

    @staticmethod
    def timestamp(created: float) -> str:
        # strftime's %b follows the locale; logs stay greppable with fixed English names.
        local = time.localtime(created)
        return f"{_MONTHS[local.tm_mon - 1]} {local.tm_mday:02d} {local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d}"


class ReopeningFileHandler(logging.FileHandler):
    """A FileHandler that reopens its file before the next record once asked to."""

    def __init__(self, filename: Union[str, Path]) -> None:
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(filename, mode="a", encoding="utf-8", delay=False)
        self._reopen_requested = False

    def request_reopen(self) -> None:
        """Signal-safe: only sets a flag."""
        self._reopen_requested = True

    def emit(self, record: logging.LogRecord) -> None:
        if self._reopen_requested:
            self._reopen_requested = False
            if self.stream is not None:
                try:
                    self.stream.close()
                finally:
                    self.stream = None  # FileHandler.emit reopens it
        super().emit(record)


class _VacdHandlerMarker(logging.Filter):
    """Marks the handlers configure_logging installed so a second call replaces them."""


def configure_logging(
    destination: str,
    log_file: Path,
    level: Union[int, str],
    *,
    syslog_address: str = SYSLOG_ADDRESS,
    program: str = PROGRAM,
) -> None:
    """Send every log record at `level` and above to one destination.

    `destination` is `file` (`log_file`), `syslog` or `journal` (both through
    `syslog_address`; journald reads /dev/log), or `stderr` (running in the foreground).
    If the syslog socket cannot be reached the records go to stderr and a warning says so.

    Raises:
        ValueError: unknown destination or level.
    """
    if destination not in LOG_DESTINATIONS:
        raise ValueError(f"log_destination {destination!r}: expected one of {', '.join(LOG_DESTINATIONS)}")
    numeric_level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric_level, int):
        raise ValueError(f"log level {level!r}: expected DEBUG, INFO, WARNING or ERROR")

    fallback_reason: Optional[str] = None
    handler: logging.Handler
    if destination == "file":
        handler = ReopeningFileHandler(log_file)
        handler.setFormatter(VacdFormatter(program))
    elif destination in ("syslog", "journal"):
        fallback_reason = _unreachable_reason(syslog_address)
        if fallback_reason is None:
            handler = logging.handlers.SysLogHandler(
                address=syslog_address, facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
            handler.setFormatter(VacdFormatter(program, with_time=False))
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(VacdFormatter(program))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(VacdFormatter(program))
    handler.addFilter(_VacdHandlerMarker())

    root = logging.getLogger()
    for old in list(root.handlers):
        if any(isinstance(existing, _VacdHandlerMarker) for existing in old.filters):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    if fallback_reason is not None:
        logging.getLogger(__name__).warning("logging to stderr instead of %s: %s", destination, fallback_reason)


def _unreachable_reason(address: str) -> Optional[str]:
    """None if a syslog daemon listens on the unix socket `address`, else why not.

    SysLogHandler swallows a failed connection on Python >= 3.11 and raises on older
    versions; probing first gives one behaviour and a warning the admin can act on.
    """
    reasons = []
    for socket_type in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        probe = socket.socket(socket.AF_UNIX, socket_type)
        try:
            probe.connect(address)
            return None
        except OSError as error:
            reasons.append(str(error))
        finally:
            probe.close()
    return f"cannot reach {address}: {reasons[0]}"


def reopen_logs() -> None:
    """Reopen log files before their next line (call from the SIGHUP handler after logrotate)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopeningFileHandler):
            handler.request_reopen()
