"""What the guest servers know about the machine that sent a request.

The routes (metadata, features) are pure functions of a path and a GuestMachine; they read
the machine's files only through the MachineFiles protocol, so they can be driven from the
cached store reader (vacd.guestapi.machines) or from anything else that holds the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from vacd.records import MachineRecord


class MachineFiles(Protocol):
    def read(self, relative_path: str) -> Optional[bytes]:
        """The content of MD/<relative_path>, or None if it is not a readable regular file."""

    def list(self, subdirectory: str) -> list[str]:
        """The names of the regular files in MD/<subdirectory>, sorted; [] if it is missing."""


@dataclass(frozen=True)
class GuestMachine:
    """The machine bound to the requesting slot, with the factory facts its documents need."""

    record: MachineRecord
    directory: Path
    mac_address: str
    factory_name: str
    vac_space: str
    files: MachineFiles
    # Documents built for this machine, keyed by what they were built from; a new record
    # or binding makes a new GuestMachine, so nothing here outlives its inputs.
    memo: dict[Any, bytes] = field(default_factory=dict, compare=False, repr=False)
