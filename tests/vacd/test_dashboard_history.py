"""The dashboard's history ring: bounded, durable, and readable after a kill -9 at any write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from vacd.dashboard.history import RING_SLOTS, SLOT_BYTES, HistoryRing, Sample, decode_slot, encode_slot

REPOSITORY = Path(__file__).resolve().parents[2]


def sample(time_seconds: int, **processors: float) -> Sample:
    return Sample(0, time_seconds, processors or {"lhcb": 4.0}, share_error=0.25, census_completeness=0.5,
                  creations=2, creation_failures=1, outcomes={"200": 3, "300": 1})


def test_samples_survive_a_restart_in_order_with_their_numbers(tmp_path: Path) -> None:
    ring = HistoryRing(tmp_path / "history", slots=8)
    for minute in range(3):
        ring.append(sample(1000 + 60 * minute, lhcb=float(minute)))

    reopened = HistoryRing(tmp_path / "history", slots=8)

    assert [(s.sequence, s.time, s.processors) for s in reopened.samples()] == [
        (0, 1000, {"lhcb": 0.0}), (1, 1060, {"lhcb": 1.0}), (2, 1120, {"lhcb": 2.0})]
    assert reopened.samples()[0].outcomes == {"200": 3, "300": 1}
    assert reopened.next_sequence == 3


def test_the_ring_keeps_the_newest_samples_and_never_grows(tmp_path: Path) -> None:
    ring = HistoryRing(tmp_path / "history", slots=5)
    for minute in range(12):
        ring.append(sample(60 * minute))

    assert (tmp_path / "history").stat().st_size == 5 * SLOT_BYTES
    assert [s.sequence for s in HistoryRing(tmp_path / "history", slots=5).samples()] == [7, 8, 9, 10, 11]
    assert [s.time for s in ring.samples(since=600)] == [600, 660]


def test_the_full_size_ring_is_a_few_megabytes() -> None:
    assert RING_SLOTS * SLOT_BYTES <= 4 * 1024 * 1024
    assert RING_SLOTS >= 24 * 60  # a day of one-minute samples


def test_a_torn_slot_is_skipped_and_writing_goes_on_after_the_newest_good_one(tmp_path: Path) -> None:
    path = tmp_path / "history"
    ring = HistoryRing(path, slots=4)
    for minute in range(6):  # sequences 2..5 in slots 2, 3, 0, 1
        ring.append(sample(60 * minute))
    # A crash half-way through writing sequence 6 over sequence 2 (slot 2): new bytes, then the old tail.
    torn = encode_slot(Sample(6, 360, {"lhcb": 9.0}, 0.0, 1.0))[:40]  # cut inside its JSON
    with open(path, "r+b") as ring_file:
        ring_file.seek(2 * SLOT_BYTES)
        ring_file.write(torn)

    reopened = HistoryRing(path, slots=4)

    assert [s.sequence for s in reopened.samples()] == [3, 4, 5]
    stored = reopened.append(sample(360))
    assert stored.sequence == 6
    assert [s.sequence for s in HistoryRing(path, slots=4).samples()] == [3, 4, 5, 6]


def test_a_sample_too_big_for_its_slot_drops_its_smallest_machinetypes(tmp_path: Path) -> None:
    processors = {f"machinetype-with-a-long-name-{index:03d}": float(index) for index in range(200)}
    ring = HistoryRing(tmp_path / "history", slots=4)

    stored = ring.append(Sample(0, 60, processors, 0.1, 1.0))

    assert stored.truncated and 0 < len(stored.processors) < 200
    kept = min(stored.processors.values())
    assert all(value < kept for name, value in processors.items() if name not in stored.processors)
    assert HistoryRing(tmp_path / "history", slots=4).samples() == [stored]


APPENDER = """
import sys
from pathlib import Path
from vacd.dashboard.history import HistoryRing, Sample
ring = HistoryRing(Path(sys.argv[1]), slots=16)
print("ready", flush=True)
while True:
    sequence = ring.next_sequence
    ring.append(Sample(0, 1000 + sequence, {"lhcb": float(sequence % 7), "atlas": 1.0}, 0.5, 1.0, creations=sequence))
"""


@pytest.mark.allow_commands(sys.executable)
@pytest.mark.parametrize("delay_seconds", [0.05, 0.2, 0.5])
def test_kill_9_while_appending_leaves_a_ring_that_reads_back_and_goes_on(tmp_path: Path, delay_seconds: float) -> None:
    path = tmp_path / "history"
    child = subprocess.Popen([sys.executable, "-c", APPENDER, str(path)], stdout=subprocess.PIPE,
                             env=dict(os.environ, PYTHONPATH=str(REPOSITORY)), cwd=REPOSITORY)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        time.sleep(delay_seconds)  # not a timing assertion: only where in its loop the child is killed
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

    ring = HistoryRing(path, slots=16)
    samples = ring.samples()
    assert samples, "some samples were written before the kill"
    sequences = [s.sequence for s in samples]
    # Every sample that reads back is whole: its fields are the ones written for its sequence.
    assert all(s.time == 1000 + s.sequence and s.creations == s.sequence for s in samples)
    # At most the slot being written is lost (it held the oldest sample): the rest are contiguous.
    assert sequences == list(range(sequences[0], sequences[-1] + 1))
    assert len(sequences) >= min(15, sequences[-1] + 1)
    after = ring.append(Sample(0, 5000, {"lhcb": 1.0}, 0.0, 1.0))
    assert after.sequence == sequences[-1] + 1


@given(st.binary(min_size=0, max_size=SLOT_BYTES + 10))
def test_decoding_any_bytes_gives_a_sample_or_none(raw_slot: bytes) -> None:
    result = decode_slot(raw_slot)
    assert result is None or isinstance(result, Sample)


@settings(max_examples=60)
@given(
    st.integers(min_value=0, max_value=2**40),
    st.dictionaries(st.text(max_size=20), st.floats(min_value=0, max_value=1e6), max_size=8),
    st.dictionaries(st.sampled_from(["none", "100", "200", "300", "700"]), st.integers(min_value=0, max_value=10**6)),
)
def test_a_slot_round_trips_whatever_the_names(sequence: int, processors: dict[str, float], outcomes: dict[str, int]) -> None:
    original = Sample(sequence, 1_700_000_000, processors, 0.125, 0.75, 3, 1, outcomes)
    raw_slot = encode_slot(original)
    assert len(raw_slot) == SLOT_BYTES
    decoded = decode_slot(raw_slot)
    assert decoded is not None
    assert decoded.sequence == sequence and decoded.outcomes == outcomes
    assert decoded.processors == pytest.approx(processors)
    # A flipped bit inside the JSON is caught: CRC-32 detects every single-bit error.
    flipped = bytearray(raw_slot)
    flipped[20] ^= 0x01
    assert decode_slot(bytes(flipped)) is None
