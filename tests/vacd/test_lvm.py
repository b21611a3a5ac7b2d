"""Tests of vacd.lvm's pure parts (names, sizes, argv, report parsing) and its runner's order of commands.

The runner is driven here by a recording stand-in for lvm2 that answers as lvm2 2.03 does
(the JSON below is what `vgs`/`lvs` printed on this machine for a loop-device group); the
same code runs against real lvm2 in tests/vacd/test_lvm_loop_device.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.errors import CommandFailed
from vacd.lvm import (
    LogicalVolume,
    LogicalVolumes,
    LvmError,
    MalformedLvmReport,
    VolumeGroup,
    VolumeGroupMissing,
    VolumeRequest,
    is_volume_name,
    leftover_volume_names,
    lvcreate_argv,
    lvremove_argv,
    lvs_argv,
    machine_volume_pattern,
    parse_logical_volumes,
    parse_volume_groups,
    vgs_argv,
    volume_bytes,
    volume_device,
    volume_gb_per_processor,
)
from vacd.slots import machine_name_for

MIB = 1024 * 1024
EXTENT = 4 * MIB
# What `vgs --reportformat json --units b --nosuffix --options vg_name,vg_size,vg_free,vg_extent_size`
# printed for a 200 MB loop device here (lvm2 2.03.16, Debian 12).
REAL_VGS_OUTPUT = """  {
      "report": [
          {
              "vg": [
                  {"vg_name":"vactry", "vg_size":"205520896", "vg_free":"205520896", "vg_extent_size":"4194304"}
              ]
          }
      ]
  }
"""
REAL_EMPTY_LVS_OUTPUT = """  {
      "report": [
          {
              "lv": [
              ]
          }
      ]
  }
"""

names = st.from_regex(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,40}", fullmatch=True).filter(is_volume_name)
sizes = st.integers(min_value=0, max_value=2**60)


def vgs_json(groups: Sequence[VolumeGroup]) -> str:
    rows = [{"vg_name": group.name, "vg_size": str(group.size_bytes), "vg_free": str(group.free_bytes),
             "vg_extent_size": str(group.extent_bytes)} for group in groups]
    return json.dumps({"report": [{"vg": rows}]}, indent=4)


def lvs_json(volumes: Sequence[LogicalVolume]) -> str:
    rows = [{"lv_name": volume.name, "lv_size": str(volume.size_bytes)} for volume in volumes]
    return json.dumps({"report": [{"lv": rows}]}, indent=4)


@st.composite
def volume_groups(draw: st.DrawFn) -> VolumeGroup:
    extent = draw(st.sampled_from([MIB, EXTENT, 32 * MIB]))
    size = draw(st.integers(min_value=0, max_value=2**20)) * extent
    free = draw(st.integers(min_value=0, max_value=size // extent)) * extent
    return VolumeGroup(draw(names), size, free, extent)


# --- names, devices and argv ---------------------------------------------------------------


def test_a_machines_volume_is_named_as_the_machine_under_dev_vg() -> None:
    # Acceptance 7: slot 3 of f1.example.com has the LV /dev/<vg>/f1-03.example.com.
    assert volume_device("vac_volume_group", machine_name_for("f1.example.com", 3)) == Path(
        "/dev/vac_volume_group/f1-03.example.com")


@pytest.mark.parametrize("name", ["-rf", "", ".", "..", "a b", "vg/x", "snapshot1", "pvmove0", "x" * 128, "é"])
def test_names_lvm_or_a_shell_would_misread_are_refused(name: str) -> None:
    assert not is_volume_name(name)


@given(names)
def test_no_accepted_name_can_be_read_as_an_option(name: str) -> None:
    assert not name.startswith("-")


def test_lvcreate_is_vac03s_command_with_the_group_after_the_options() -> None:
    assert lvcreate_argv("vac_volume_group", "f1-03.example.com", 80 * 10**9) == [
        "lvcreate", "--yes", "--name", "f1-03.example.com", "-L", "80000000000B", "--", "vac_volume_group"]


def test_reports_are_json_in_bytes_and_removal_asks_nothing() -> None:
    assert vgs_argv("vg") == ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
                              "--options", "vg_name,vg_size,vg_free,vg_extent_size", "--", "vg"]
    assert lvs_argv("vg")[-2:] == ["--", "vg"]
    assert lvremove_argv("vg", "f1-03.example.com") == ["lvremove", "--force", "--yes", "--", "vg/f1-03.example.com"]


# --- report parsing ------------------------------------------------------------------------


def test_real_vgs_and_lvs_output_parses() -> None:
    assert parse_volume_groups(REAL_VGS_OUTPUT) == (VolumeGroup("vactry", 205520896, 205520896, 4194304),)
    assert parse_logical_volumes(REAL_EMPTY_LVS_OUTPUT) == ()


@given(st.lists(volume_groups(), max_size=4))
def test_volume_groups_round_trip_through_lvm2s_json(groups: list[VolumeGroup]) -> None:
    assert parse_volume_groups(vgs_json(groups)) == tuple(groups)


@given(st.lists(st.builds(LogicalVolume, names, sizes), max_size=6))
def test_logical_volumes_round_trip_through_lvm2s_json(volumes: list[LogicalVolume]) -> None:
    assert parse_logical_volumes(lvs_json(volumes)) == tuple(volumes)


@given(st.one_of(st.text(), st.builds(json.dumps, st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["report", "vg", "lv", "vg_name", "vg_size", "vg_free", "vg_extent_size", "lv_name",
                         "lv_size"]), children, max_size=4),
    max_leaves=12))))
def test_any_report_parses_or_is_refused_as_malformed(raw_output: str) -> None:
    for parse in (parse_volume_groups, parse_logical_volumes):
        try:
            parse(raw_output)
        except MalformedLvmReport:
            pass


@pytest.mark.parametrize("size", ["10 GiB", "-1", "1.5", "", "٣"])
def test_a_size_that_is_not_a_plain_byte_count_is_malformed(size: str) -> None:
    raw_output = json.dumps({"report": [{"lv": [{"lv_name": "x", "lv_size": size}]}]})
    with pytest.raises(MalformedLvmReport, match="lv_size"):
        parse_logical_volumes(raw_output)


def test_a_group_freer_than_its_size_is_malformed() -> None:
    with pytest.raises(MalformedLvmReport, match="impossible sizes"):
        parse_volume_groups(vgs_json([VolumeGroup("vg", 8, 8, 4)]).replace('"vg_free": "8"', '"vg_free": "12"'))


# --- sizes (behaviour reference §1.11) -------------------------------------------------------


@pytest.mark.parametrize("machinetype_gb, settings_gb, expected", [
    (None, None, None),
    (0, 0, None),  # 0 is "a share of the group" in Vac 03's code ([DOC≠CODE] §1.11)
    (None, 50, 50),
    (30, None, 30),
    (30, 50, 30),
    (50, 50, 50),
    (80, 50, 50),  # above [settings]' is not honoured
    (0, 50, 50),
])
def test_per_processor_size_follows_vac03s_rule(machinetype_gb: Optional[int], settings_gb: Optional[int],
                                                expected: Optional[int]) -> None:
    assert volume_gb_per_processor(machinetype_gb, settings_gb) == expected


def request(processors: int = 2, total_processors: int = 8, gb_per_processor: Optional[int] = None,
            ordinal: int = 3) -> VolumeRequest:
    return VolumeRequest("vg", machine_name_for("f1.example.com", ordinal), processors, total_processors,
                         gb_per_processor, "f1.example.com")


def test_a_per_processor_size_is_gb_times_processors_rounded_down_to_extents() -> None:
    group = VolumeGroup("vg", 10**12, 10**12, EXTENT)
    # 2 x 10 GB = 20000000000 bytes = 4768.37 extents of 4 MiB: 4768 extents.
    assert volume_bytes(request(gb_per_processor=10), group, ()) == 4768 * EXTENT


def test_without_a_size_a_machine_gets_its_processors_share_of_what_others_leave() -> None:
    group = VolumeGroup("vg", 1000 * EXTENT, 100 * EXTENT, EXTENT)
    volumes = (LogicalVolume("f1-00.example.com", 500 * EXTENT),  # this factory's: in the share
               LogicalVolume("f1-104.example.com", 100 * EXTENT),  # a three-digit slot is ours too
               LogicalVolume("home", 200 * EXTENT))  # the admin's: kept out of it
    # 2/8 of (1000 - 200) extents.
    assert volume_bytes(request(), group, volumes) == 200 * EXTENT


def test_only_this_factorys_slot_names_are_its_volumes() -> None:
    ours = machine_volume_pattern("f1.example.com")
    assert all(ours.fullmatch(machine_name_for("f1.example.com", ordinal)) for ordinal in range(0, 400, 7))
    for other in ("f1-3.example.com", "f2-03.example.com", "f1-03.example.comx", "f1-03xexample.com", "f1-03"):
        assert not ours.fullmatch(other)
    assert machine_volume_pattern("f1").fullmatch("f1-03")


@given(group=volume_groups(), processors=st.integers(1, 64), extra=st.integers(0, 64),
       gb=st.one_of(st.none(), st.integers(0, 1000)),
       others=st.lists(st.integers(0, 2**40), max_size=3))
def test_a_size_is_whole_extents_and_never_more_than_asked_or_shared(
        group: VolumeGroup, processors: int, extra: int, gb: Optional[int], others: list[int]) -> None:
    wanted = request(processors, processors + extra, gb)
    volumes = tuple(LogicalVolume(f"other{index}", size) for index, size in enumerate(others))
    size = volume_bytes(wanted, group, volumes)
    assert size % group.extent_bytes == 0 and size >= 0
    if gb:
        assert gb * processors * 10**9 - group.extent_bytes < size <= gb * processors * 10**9
    else:
        # All slots' shares together never claim more than what the other volumes leave.
        assert size * (processors + extra) <= processors * max(0, group.size_bytes - sum(others)) + \
            (processors + extra) * group.extent_bytes


def test_a_request_for_more_processors_than_the_factory_has_is_refused() -> None:
    with pytest.raises(ValueError, match="total_processors"):
        request(processors=9, total_processors=8)


# --- the runner, against a recording stand-in for lvm2 ----------------------------------------


class RecordingLvm:
    """Answers vgs/lvs from its state, records every argv, fails commands on request."""

    def __init__(self, group: Optional[VolumeGroup], volumes: Sequence[LogicalVolume] = ()) -> None:
        self.group = group
        self.volumes = list(volumes)
        self.argvs: list[list[str]] = []
        self.fail: dict[str, CommandFailed] = {}

    def __call__(self, argv: Sequence[str]) -> str:
        argv = list(argv)
        self.argvs.append(argv)
        if argv[0] in self.fail:
            raise self.fail[argv[0]]
        if self.group is None or argv[-1].split("/")[0] != self.group.name:
            raise CommandFailed(argv, 5, f'Volume group "{argv[-1]}" not found\n  Cannot process volume group '
                                         f'{argv[-1]}')
        if argv[0] == "vgs":
            return vgs_json([self.group])
        if argv[0] == "lvs":
            return lvs_json(self.volumes)
        if argv[0] == "lvremove":
            self.volumes = [volume for volume in self.volumes if volume.name != argv[-1].split("/")[1]]
            return ""
        if argv[0] == "lvcreate":
            self.volumes.append(LogicalVolume(argv[argv.index("--name") + 1], int(argv[argv.index("-L") + 1][:-1])))
            return ""
        raise AssertionError(f"unexpected command {argv}")

    def commands(self) -> list[str]:
        return [argv[0] for argv in self.argvs]


def test_a_slots_old_volume_is_removed_before_the_new_one_is_made() -> None:
    lvm = RecordingLvm(VolumeGroup("vg", 1000 * EXTENT, 900 * EXTENT, EXTENT),
                       [LogicalVolume("f1-03.example.com", 100 * EXTENT)])
    device = LogicalVolumes(lvm, is_block_device=lambda path: True).create(request(gb_per_processor=1))
    assert device == Path("/dev/vg/f1-03.example.com")
    assert lvm.commands() == ["vgs", "lvs", "lvremove", "lvs", "lvcreate"]
    assert lvm.argvs[2] == lvremove_argv("vg", "f1-03.example.com")
    assert lvm.argvs[4] == lvcreate_argv("vg", "f1-03.example.com", 476 * EXTENT)


def test_a_missing_group_is_named() -> None:
    with pytest.raises(VolumeGroupMissing, match=r"volume_group vac_volume_group: no such LVM volume group"):
        LogicalVolumes(RecordingLvm(None)).volume_group("vac_volume_group")


def test_vgs_failing_otherwise_is_not_called_missing() -> None:
    lvm = RecordingLvm(VolumeGroup("vg", 8, 8, 4))
    lvm.fail["vgs"] = CommandFailed(["vgs"], -1, "[Errno 2] No such file or directory: 'vgs'")
    with pytest.raises(LvmError, match="cannot read it") as caught:
        LogicalVolumes(lvm).volume_group("vg")
    assert not isinstance(caught.value, VolumeGroupMissing)


def test_a_volume_that_does_not_fit_is_refused_before_lvcreate() -> None:
    lvm = RecordingLvm(VolumeGroup("vg", 1000 * EXTENT, 10 * EXTENT, EXTENT))
    with pytest.raises(LvmError, match=r"logical volume vg/f1-03.example.com: needs .* bytes, volume group has "
                                       f"{10 * EXTENT} free"):
        LogicalVolumes(lvm).create(request(gb_per_processor=1))
    assert "lvcreate" not in lvm.commands()


def test_a_failed_lvcreate_names_the_volume_and_lvm2s_words() -> None:
    lvm = RecordingLvm(VolumeGroup("vg", 1000 * EXTENT, 1000 * EXTENT, EXTENT))
    lvm.fail["lvcreate"] = CommandFailed(lvcreate_argv("vg", "f1-03.example.com", EXTENT), 3,
                                         "/dev/mapper/control: open failed: No such device")
    with pytest.raises(LvmError, match=r"logical volume vg/f1-03.example.com: lvcreate failed.*/dev/mapper/control"):
        LogicalVolumes(lvm).create(request())


def test_a_volume_with_no_block_device_afterwards_is_an_error() -> None:
    lvm = RecordingLvm(VolumeGroup("vg", 1000 * EXTENT, 1000 * EXTENT, EXTENT))
    with pytest.raises(LvmError, match="/dev/vg/f1-03.example.com is not a block device"):
        LogicalVolumes(lvm, is_block_device=lambda path: False).create(request())


def test_removing_an_absent_volume_runs_no_lvremove() -> None:
    lvm = RecordingLvm(VolumeGroup("vg", 8, 8, 4))
    assert LogicalVolumes(lvm).remove("vg", "f1-03.example.com") is False
    assert lvm.commands() == ["lvs"]


def test_leftovers_are_this_factorys_machine_volumes_no_live_machine_has() -> None:
    volumes = [LogicalVolume(name, EXTENT) for name in (
        "f1-00.example.com", "f1-01.example.com", "f1-104.example.com", "f2-00.example.com", "home")]
    assert leftover_volume_names(volumes, "f1.example.com", frozenset({"f1-01.example.com"})) == (
        "f1-00.example.com", "f1-104.example.com")


def test_removing_leftovers_keeps_one_lvm2_refuses_and_goes_on() -> None:
    lvm = RecordingLvm(VolumeGroup("vg", 1000 * EXTENT, 800 * EXTENT, EXTENT),
                       [LogicalVolume("f1-00.example.com", EXTENT), LogicalVolume("f1-02.example.com", EXTENT),
                        LogicalVolume("home", EXTENT)])
    real_call = lvm.__call__

    def refuse_slot_0(argv: Sequence[str]) -> str:
        if argv[0] == "lvremove" and argv[-1] == "vg/f1-00.example.com":
            raise CommandFailed(argv, 5, "Logical volume vg/f1-00.example.com in use.")
        return real_call(argv)

    removed = LogicalVolumes(refuse_slot_0).remove_leftovers("vg", "f1.example.com", frozenset())
    assert removed == ("f1-02.example.com",)
    assert [volume.name for volume in lvm.volumes] == ["f1-00.example.com", "home"]
