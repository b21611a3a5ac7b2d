"""Reading `podman ps --format json` (vacd.backends.podman.parse_podman_ps)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.backends.podman import ListedContainer, parse_podman_ps, slot_of_machine_name
from vacd.errors import BackendError

# Shaped as podman 4.3.1 printed it on the project's test host (trimmed).
PODMAN_PS = json.dumps([
    {"Id": "8432bf3b", "Names": ["vactest-00.example.org"], "State": "running",
     "Labels": {"vac.uuid": "u-0", "vac.machine": "vactest-00.example.org", "vac.slot": "0"}},
    {"Id": "9d096138", "Names": ["vactest-01.example.org"], "State": "exited",
     "Labels": {"vac.uuid": "u-1", "vac.machine": "vactest-01.example.org"}},
    {"Id": "00000000", "Names": ["someone-elses"], "State": "running", "Labels": None},
])


def test_vac_labelled_containers_are_read_with_uuid_state_and_slot() -> None:
    assert parse_podman_ps(PODMAN_PS) == [
        ListedContainer("8432bf3b", "vactest-00.example.org", "u-0", "running", 0),
        ListedContainer("9d096138", "vactest-01.example.org", "u-1", "exited", 1),  # slot from the name
    ]


def test_no_output_is_no_containers() -> None:
    assert parse_podman_ps("") == [] and parse_podman_ps("[]") == []


@pytest.mark.parametrize("raw_output", ["{", "{}", "null", "\"x\""])
def test_output_that_is_not_a_json_list_fails_the_listing(raw_output: str) -> None:
    with pytest.raises(BackendError):
        parse_podman_ps(raw_output)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(
                        st.sampled_from(["Id", "Names", "State", "Labels", "vac.uuid", "vac.slot", "vac.machine"]),
                        children, max_size=4), max_leaves=12)


@given(JSON)
def test_any_json_gives_containers_or_backenderror(document: object) -> None:
    try:
        containers = parse_podman_ps(json.dumps(document))
    except BackendError:
        return
    assert all(isinstance(container.uuid, str) and isinstance(container.name, str) for container in containers)


@pytest.mark.parametrize("name, ordinal", [("vactest-07.example.org", 7), ("f1-100.example.org", 100),
                                           ("f1-00", 0), ("nodash.example.org", None), ("f1-x.example.org", None)])
def test_slot_of_machine_name(name: str, ordinal: object) -> None:
    assert slot_of_machine_name(name) == ordinal
