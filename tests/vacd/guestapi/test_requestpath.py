"""Path rules shared by both servers: Vac's folding, and every trick refused."""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.guestapi.requestpath import MAX_PATH_BYTES, _normalise_short_path, normalise_path, path_segments


@pytest.mark.parametrize(
    "target, path",
    [
        ("/latest/user-data", "/latest/user-data"),
        ("//latest//user-data", "/latest/user-data"),  # Vac folded `//` (§6.3, §6.4)
        ("/latest/meta-data/", "/latest/meta-data/"),
        ("/", "/"),
        ("///latest/user-data", None),  # `//` left after Vac's folding
        ("/jobfeatures/../machinefeatures/x", None),
        ("/jobfeatures/./job_id", None),
        ("/jobfeatures/..", None),
        ("/jobfeatures%2Fjob_id", None),
        ("/jobfeatures/%2e%2e/x", None),
        ("/latest/user-data?x=1", None),
        ("/latest/user-data#frag", None),
        ("http://169.254.169.254/latest/user-data", None),
        ("*", None),
        ("latest/user-data", None),
        ("/" + "a" * MAX_PATH_BYTES, None),
        ("/caf\u00e9", None),
        ("/a\\b", None),
    ],
)
def test_normalise_path(target: str, path: Optional[str]) -> None:
    assert normalise_path(target) == path


@given(st.text(max_size=80))
def test_a_normalised_path_never_climbs_or_escapes(target: str) -> None:
    path = normalise_path(target)
    if path is not None:
        assert path.startswith("/")
        assert "//" not in path and "%" not in path
        assert ".." not in path.split("/") and "." not in path.split("/")


def test_segments_and_trailing_slash() -> None:
    assert path_segments("/") == ([], True)
    assert path_segments("/a/b") == (["a", "b"], False)
    assert path_segments("/a/b/") == (["a", "b"], True)


def test_targets_too_long_to_route_are_refused_without_being_remembered() -> None:
    """Found by the issue 11 fuzz run: 4096 remembered 8 KiB targets held 32 MiB for as long as vacd ran."""
    before = _normalise_short_path.cache_info().currsize
    for number in range(100):
        assert normalise_path("/" + f"{number:08d}" * 1000) is None
    assert _normalise_short_path.cache_info().currsize == before
