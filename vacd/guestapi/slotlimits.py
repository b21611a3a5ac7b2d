"""Fair shares of the guest servers per slot: connections, request rate and upload memory.

Rules (issue 11 item 3):
- Everything here is counted per slot ordinal, never per source address: a slot's IPv4
  and IPv6 link-local addresses are one guest, and a source that maps to no slot is
  refused by the server before it reaches this module, so it holds none of the capacity
  real guests need.
- Connections: a slot holds at most `connection_share(...)` connections, so the slots
  together cannot fill the server-wide cap (which exists to leave the factory its file
  descriptors, vacd.fdlimit) and one slot cannot lock the others out.
- Requests: each slot has a token bucket (`burst` requests at once, refilled at `rate`
  per second). `take` answers how long until the next token when the bucket is empty.
- Upload bodies held in memory: each slot may always have `reserve_bytes` in flight (so
  a shutdown_message PUT never waits for other guests' uploads), and beyond that draws on
  one shared pool of `shared_bytes`, at most `per_slot_bytes` per slot. The most memory all
  uploads can hold is shared_bytes + slots x reserve_bytes.
- No clock is read here: `now` (monotonic seconds) is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def connection_share(max_connections: int, max_connections_per_slot: int, slot_count: int) -> int:
    """The connections one slot may hold: its cap, or less so that every slot fits under the total."""
    return max(1, min(max_connections_per_slot, max_connections // max(1, slot_count)))


@dataclass
class TokenBucket:
    """`burst` requests at once, then `rate` per second; full when made."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float = field(init=False, default=float("-inf"))

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got rate={self.rate} burst={self.burst}")
        self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if now > self.updated:
            if self.updated != float("-inf"):
                self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there will be (none taken)."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def is_empty(self, now: float) -> bool:
        self._refill(now)
        return self.tokens < 1.0

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


@dataclass
class UploadMemory:
    """Upload bytes held in memory, per slot, with a reserve each and a shared pool."""

    shared_bytes: int
    per_slot_bytes: int
    reserve_bytes: int
    by_slot: dict[int, int] = field(default_factory=dict)
    shared_used: int = 0

    def _from_shared(self, slot_bytes: int) -> int:
        return max(0, slot_bytes - self.reserve_bytes)

    def refusal(self, slot: int, length: int) -> str:
        """Why `length` more bytes for `slot` cannot be held now, or "" if they can."""
        held = self.by_slot.get(slot, 0)
        after = held + length
        if after > self.per_slot_bytes:
            return f"slot would hold {after} upload bytes in memory, at most {self.per_slot_bytes} per slot"
        shared_after = self.shared_used - self._from_shared(held) + self._from_shared(after)
        if shared_after > self.shared_bytes:
            return f"uploads of all slots would hold {shared_after} bytes beyond their reserves, at most {self.shared_bytes}"
        return ""

    def hold(self, slot: int, length: int) -> None:
        held = self.by_slot.get(slot, 0)
        self.shared_used += self._from_shared(held + length) - self._from_shared(held)
        if held + length:
            self.by_slot[slot] = held + length

    def release(self, slot: int, length: int) -> None:
        held = self.by_slot.get(slot, 0)
        after = held - length
        assert after >= 0, f"slot {slot} released {length} upload bytes but held {held}"
        self.shared_used += self._from_shared(after) - self._from_shared(held)
        if after:
            self.by_slot[slot] = after
        else:
            self.by_slot.pop(slot, None)

    @property
    def total(self) -> int:
        return sum(self.by_slot.values())


@dataclass
class SlotLimiter:
    """Each slot's connections and request bucket (the server's per-slot bookkeeping).

    A connection takes its first request's token, if there is one, when it is opened, so a
    burst of connections cannot each slip in on one token. `prepaid` holds those tokens
    until a request uses them; it never exceeds the slot's open connections.
    """

    rate: float
    burst: float
    connections: dict[int, int] = field(default_factory=dict)
    prepaid: dict[int, int] = field(default_factory=dict)
    buckets: dict[int, TokenBucket] = field(default_factory=dict)

    def connection_count(self, slot: int) -> int:
        return self.connections.get(slot, 0)

    def open_connection(self, slot: int, now: float) -> None:
        """A new connection from `slot`, with its first request's token if the bucket has one."""
        self.connections[slot] = self.connections.get(slot, 0) + 1
        if self.bucket(slot).take(now) == 0.0:
            self.prepaid[slot] = self.prepaid.get(slot, 0) + 1

    def close_connection(self, slot: int) -> None:
        remaining = self.connections.get(slot, 0) - 1
        if remaining > 0:
            self.connections[slot] = remaining
        else:
            self.connections.pop(slot, None)
        if self.prepaid.get(slot, 0) > max(0, remaining):
            self._set_prepaid(slot, max(0, remaining))

    def bucket(self, slot: int) -> TokenBucket:
        bucket = self.buckets.get(slot)
        if bucket is None:
            bucket = self.buckets[slot] = TokenBucket(self.rate, self.burst)
        return bucket

    def take(self, slot: int, now: float) -> float:
        """A request from `slot`: 0.0 to serve it, else the seconds until it may be served."""
        prepaid = self.prepaid.get(slot, 0)
        if prepaid > 0:
            self._set_prepaid(slot, prepaid - 1)
            return 0.0
        return self.bucket(slot).take(now)

    def forget_idle(self, now: float) -> None:
        """Drop the buckets of slots that are full again and hold no connection (bounded memory)."""
        for slot in [slot for slot, bucket in self.buckets.items()
                     if slot not in self.connections and bucket.is_full(now)]:
            del self.buckets[slot]

    def _set_prepaid(self, slot: int, count: int) -> None:
        if count > 0:
            self.prepaid[slot] = count
        else:
            self.prepaid.pop(slot, None)
