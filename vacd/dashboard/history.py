"""The dashboard's history: one sample a minute for the last day, in a fixed-size file ring.

Rules (issue 14 item 2: history without a database to run):
- The file is RING_SLOTS fixed-size slots of SLOT_BYTES (1440 x 2048 bytes: 2.8 MiB), so
  it never grows. Sample n goes to slot n mod RING_SLOTS, written in place with pwrite and
  fsync'd; nothing else in the file is touched.
- Crash safety without a header: every slot carries its own magic, sequence number and
  CRC-32. A `kill -9` in the middle of a write can tear only the slot being written; a torn,
  empty or foreign slot fails its check and is skipped when the ring is read, and the next
  write goes after the highest sequence number that did check. No rename, no journal.
- A sample that would not fit its slot drops its smallest machinetypes (by processors)
  until it does, and says so in `truncated`; it is never cut mid-JSON.
- Reading is bounded too: the whole file is at most RING_SLOTS * SLOT_BYTES, read once at
  start; afterwards the ring is kept in memory beside the file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)

# One sample a minute for a day: what the page plots ("over the last day", issue 14).
RING_SLOTS = 1440
# Room for about 60 machinetypes' processor counts besides the fixed fields.
SLOT_BYTES = 2048
SAMPLE_INTERVAL_SECONDS = 60
MAGIC = b"VACH1"
# MAGIC, space, 8-digit hex CRC-32 of the JSON, space, JSON, padding spaces, newline.
_HEADER_BYTES = len(MAGIC) + 1 + 8 + 1


@dataclass(frozen=True)
class Sample:
    """What the space looked like from this factory at `time` (Unix seconds).

    `processors`: running processors per machinetype in the space as heard (this factory's
    own plus the peers' machinetype reports of its last census). `share_error`: half the sum
    over machinetypes of |achieved HS06 share - target share|, 0 on target, 1 all wrong.
    `census_completeness`: heard / expected of the last census (1 with no peers).
    `creations`, `creation_failures` and `outcomes` (finished machines by 3-digit code, "none"
    for no code) are this factory's, since the previous sample.
    """

    sequence: int
    time: int
    processors: Mapping[str, float]
    share_error: float
    census_completeness: float
    creations: int = 0
    creation_failures: int = 0
    outcomes: Mapping[str, int] = field(default_factory=dict)
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "time": self.time,
            "processors": dict(sorted(self.processors.items())),
            "share_error": round(self.share_error, 4),
            "census_completeness": round(self.census_completeness, 4),
            "creations": self.creations,
            "creation_failures": self.creation_failures,
            "outcomes": dict(sorted(self.outcomes.items())),
            "truncated": self.truncated,
        }

    @classmethod
    def from_json(cls, raw: Any) -> "Sample":
        """A sample from a slot's JSON; raises ValueError (or KeyError, TypeError) if it is not one."""
        if not isinstance(raw, dict):
            raise ValueError("a sample is a JSON object")
        processors = {str(name): float(value) for name, value in dict(raw["processors"]).items()}
        outcomes = {str(code): int(count) for code, count in dict(raw.get("outcomes") or {}).items()}
        return cls(
            sequence=int(raw["sequence"]),
            time=int(raw["time"]),
            processors=processors,
            share_error=float(raw["share_error"]),
            census_completeness=float(raw["census_completeness"]),
            creations=int(raw.get("creations", 0)),
            creation_failures=int(raw.get("creation_failures", 0)),
            outcomes=outcomes,
            truncated=bool(raw.get("truncated", False)),
        )


def encode_slot(sample: Sample) -> bytes:
    """The SLOT_BYTES of one slot; machinetypes are dropped (smallest first) until it fits."""
    current = sample
    while True:
        payload = json.dumps(current.to_json(), separators=(",", ":"), sort_keys=True).encode()
        length = _HEADER_BYTES + len(payload) + 1
        if length <= SLOT_BYTES:
            header = MAGIC + b" " + b"%08x" % zlib.crc32(payload) + b" "
            return header + payload + b" " * (SLOT_BYTES - length) + b"\n"
        if not current.processors:
            raise ValueError(f"history sample {sample.sequence} does not fit {SLOT_BYTES} bytes even without machinetypes")
        smallest = min(current.processors, key=lambda name: (current.processors[name], name))
        current = Sample(
            current.sequence, current.time, {k: v for k, v in current.processors.items() if k != smallest},
            current.share_error, current.census_completeness, current.creations, current.creation_failures,
            current.outcomes, truncated=True,
        )


def decode_slot(raw_slot: bytes) -> Optional[Sample]:
    """The sample in one slot, or None if the slot is empty, torn or not ours."""
    if len(raw_slot) != SLOT_BYTES or not raw_slot.startswith(MAGIC + b" ") or not raw_slot.endswith(b"\n"):
        return None
    crc_text = raw_slot[len(MAGIC) + 1:len(MAGIC) + 9]
    payload = raw_slot[_HEADER_BYTES:-1].rstrip(b" ")
    try:
        if int(crc_text, 16) != zlib.crc32(payload):
            return None
        return Sample.from_json(json.loads(payload))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class HistoryRing:
    """The ring file at `path`, and its valid samples in memory (thread-safe)."""

    def __init__(self, path: Path, slots: int = RING_SLOTS) -> None:
        self.path = path
        self.slots = slots
        self._lock = threading.Lock()
        self._samples: dict[int, Sample] = {}  # slot index -> sample
        self._next_sequence = 0
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as ring:
                content = ring.read(self.slots * SLOT_BYTES)
        except FileNotFoundError:
            return
        except OSError as error:
            log.warning("cannot read the dashboard history path=%s error=%s; starting an empty one", self.path, error)
            return
        skipped = 0
        for index in range(self.slots):
            raw_slot = content[index * SLOT_BYTES:(index + 1) * SLOT_BYTES]
            if not raw_slot.strip(b"\0 "):
                continue  # never written
            sample = decode_slot(raw_slot)
            if sample is None or sample.sequence % self.slots != index:
                skipped += 1
                continue
            self._samples[index] = sample
        if self._samples:
            self._next_sequence = max(sample.sequence for sample in self._samples.values()) + 1
        if skipped:
            log.warning("dashboard history: skipped %d unreadable slot(s) path=%s (a write cut short by a crash?)",
                        skipped, self.path)

    @property
    def next_sequence(self) -> int:
        with self._lock:
            return self._next_sequence

    def append(self, sample: Sample) -> Sample:
        """Write `sample` with the next sequence number into its slot, durably; return it as stored.

        Raises:
            OSError: the file cannot be written (the sample is not kept in memory either).
        """
        with self._lock:
            stored = Sample(self._next_sequence, sample.time, sample.processors, sample.share_error,
                            sample.census_completeness, sample.creations, sample.creation_failures,
                            sample.outcomes, sample.truncated)
            raw_slot = encode_slot(stored)
            stored = decode_slot(raw_slot) or stored  # as a reader would see it (machinetypes dropped)
            index = stored.sequence % self.slots
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(descriptor, raw_slot, index * SLOT_BYTES)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            self._samples[index] = stored
            self._next_sequence = stored.sequence + 1
            return stored

    def samples(self, since: Optional[float] = None) -> list[Sample]:
        """The valid samples in time order (by sequence), optionally only those at or after `since`."""
        with self._lock:
            chosen = sorted(self._samples.values(), key=lambda sample: sample.sequence)
        return [sample for sample in chosen if since is None or sample.time >= since]
