"""The one way vacd runs an external command: an argv list, a timeout, and a clear failure.

Rules (style.md, anti-pattern 2): never a shell string; on failure `CommandFailed` carries
the argv, the exit status and the tail of stderr, raised from the cause.
"""

from __future__ import annotations

import os
import subprocess
from typing import Mapping, Optional, Sequence

from vacd.errors import CommandFailed

DEFAULT_TIMEOUT_SECONDS = 60.0
STDERR_TAIL_CHARACTERS = 2000


def run_command(
    argv: Sequence[str],
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    environment: Optional[Mapping[str, str]] = None,
) -> str:
    """Run an argv list (never through a shell); return stdout or raise CommandFailed.

    `environment` is added to vacd's own (LVM's tools want LC_ALL=C so that their messages
    and numbers read the same everywhere).
    """
    child_environment = None if environment is None else {**os.environ, **environment}
    try:
        completed = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_seconds, check=False,
                                   env=child_environment, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        raise CommandFailed(argv, -1, f"timed out after {timeout_seconds} s") from error
    except OSError as error:
        raise CommandFailed(argv, -1, str(error)) from error
    if completed.returncode != 0:
        raise CommandFailed(argv, completed.returncode, completed.stderr.strip()[-STDERR_TAIL_CHARACTERS:])
    return completed.stdout
