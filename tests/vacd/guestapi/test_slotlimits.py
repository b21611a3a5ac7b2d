"""The per-slot bookkeeping: token buckets, connection shares and upload memory, on given times."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vacd.guestapi.slotlimits import SlotLimiter, TokenBucket, UploadMemory, connection_share


def test_bucket_serves_its_burst_then_says_when_the_next_token_comes() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(10.0) == 0.5
    assert bucket.is_empty(10.0)
    assert bucket.take(10.5) == 0.0
    # Refill stops at the burst, however long the slot was quiet.
    assert not bucket.is_full(10.5)
    assert bucket.is_full(1000.0)
    assert [bucket.take(1000.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]


def test_bucket_ignores_a_clock_that_goes_back() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.take(50.0) == 0.0
    assert bucket.take(40.0) == 1.0
    assert bucket.take(51.0) == 0.0


@given(st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=200))
def test_bucket_never_serves_more_than_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    bucket = TokenBucket(rate=10.0, burst=5)
    now, served = 0.0, 0
    for gap in gaps:
        now += gap
        served += bucket.take(now) == 0.0
        assert served <= 5 + 10.0 * now + 1e-6


def test_connection_share_keeps_every_slot_under_the_server_cap() -> None:
    assert connection_share(4096, 64, 64) == 64
    assert connection_share(768, 64, 64) == 12
    assert connection_share(100, 64, 1000) == 1
    assert connection_share(4096, 64, 0) == 64


def test_limiter_counts_connections_per_slot_and_forgets_quiet_full_buckets() -> None:
    limiter = SlotLimiter(rate=1.0, burst=2)
    for _ in range(3):
        limiter.open_connection(3, 0.0)
    # The first two connections took their first request's token; the third found none.
    assert (limiter.connection_count(3), limiter.prepaid) == (3, {3: 2})
    assert [limiter.take(3, 0.0), limiter.take(3, 0.0), limiter.take(3, 0.0)] == [0.0, 0.0, 1.0]
    limiter.take(4, 0.0)
    limiter.take(4, 0.0)
    assert limiter.bucket(4).is_empty(0.0) and limiter.bucket(3).is_empty(0.0)
    limiter.close_connection(3)
    limiter.close_connection(3)
    assert limiter.connection_count(3) == 1
    limiter.forget_idle(100.0)
    assert set(limiter.buckets) == {3}
    limiter.close_connection(3)
    assert (limiter.connections, limiter.prepaid) == ({}, {})


def test_a_connection_closed_unused_leaves_no_more_prepaid_tokens_than_connections() -> None:
    limiter = SlotLimiter(rate=1.0, burst=5)
    for _ in range(3):
        limiter.open_connection(3, 0.0)
    limiter.close_connection(3)
    limiter.close_connection(3)
    assert limiter.prepaid == {3: 1}
    assert [limiter.take(3, 0.0), limiter.take(3, 0.0), limiter.take(3, 0.0)] == [0.0, 0.0, 0.0]
    assert limiter.take(3, 0.0) == 1.0


def test_upload_memory_keeps_a_reserve_for_each_slot_when_the_pool_is_full() -> None:
    memory = UploadMemory(shared_bytes=1000, per_slot_bytes=800, reserve_bytes=100)
    assert memory.refusal(3, 900) != ""
    memory.hold(3, 800)
    assert memory.shared_used == 700
    assert "per slot" in memory.refusal(3, 1)
    memory.hold(5, 400)
    assert memory.shared_used == 1000
    assert "beyond their reserves" in memory.refusal(6, 101)
    assert memory.refusal(6, 100) == ""
    memory.release(3, 800)
    memory.release(5, 400)
    assert (memory.by_slot, memory.shared_used) == ({}, 0)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 400), st.booleans()), max_size=100))
def test_upload_memory_never_holds_more_than_the_pool_plus_reserves(steps: list[tuple[int, int, bool]]) -> None:
    memory = UploadMemory(shared_bytes=1000, per_slot_bytes=600, reserve_bytes=50)
    held: list[tuple[int, int]] = []
    for slot, length, release in steps:
        if release and held:
            memory.release(*held.pop(0))
        elif memory.refusal(slot, length) == "":
            memory.hold(slot, length)
            held.append((slot, length))
        assert memory.total <= 1000 + 6 * 50
        assert all(value <= 600 for value in memory.by_slot.values())
        assert memory.shared_used == sum(max(0, value - 50) for value in memory.by_slot.values())
    for item in held:
        memory.release(*item)
    assert (memory.by_slot, memory.shared_used) == ({}, 0)
