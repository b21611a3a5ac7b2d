"""vacd.gcfreeze: start-up's objects leave the collector's full passes; later garbage is collected."""

from __future__ import annotations

import gc
import weakref
from typing import Any, Iterator

import pytest

from vacd.gcfreeze import freeze_startup_heap


class Node:
    """A container that can be put in a reference cycle and watched with a weak reference."""

    def __init__(self) -> None:
        self.other: Any = None


def cycle() -> "weakref.ref[Node]":
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


@pytest.fixture(autouse=True)
def _unfreeze_after() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_objects_alive_at_start_up_are_left_out_of_full_collections() -> None:
    kept = Node()
    frozen = freeze_startup_heap()
    assert frozen == gc.get_freeze_count() > 0
    # A full pass walks generations 0-2 only; the frozen ones are in none of them.
    assert not any(candidate is kept for candidate in gc.get_objects())


def test_start_up_garbage_is_freed_not_frozen() -> None:
    watched = cycle()
    gc.disable()  # so only freeze_startup_heap's own collection can free it
    try:
        freeze_startup_heap()
    finally:
        gc.enable()
    assert watched() is None


def test_garbage_made_after_the_freeze_is_still_collected() -> None:
    freeze_startup_heap()
    watched = cycle()
    assert watched() is not None
    gc.collect()
    assert watched() is None
