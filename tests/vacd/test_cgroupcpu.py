"""CPU time of a container machine from its cgroup parent, on v1 (hybrid) and v2 layouts."""

from __future__ import annotations

from pathlib import Path

from vacd.backends.cgroupcpu import CgroupLayout, MachineCgroups, cgroup_layout, cgroup_parent_for

NAME = "f1-03.example.org"


def v1_tree(root: Path, usage_ns: int, conmon_ns: int) -> None:
    for controller in ("cpu", "cpuacct", "memory", "pids"):
        (root / controller / "vac" / NAME / "conmon").mkdir(parents=True)
    (root / "unified").mkdir()
    (root / "cpuacct/vac" / NAME / "cpuacct.usage").write_text(f"{usage_ns}\n")
    (root / "cpuacct/vac" / NAME / "conmon/cpuacct.usage").write_text(f"{conmon_ns}\n")


def v2_tree(root: Path, usage_usec: int) -> None:
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "vac" / NAME).mkdir(parents=True)
    (root / "vac" / NAME / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n")


def test_hybrid_host_is_read_as_v1_and_el9_as_v2(tmp_path: Path) -> None:
    v1_tree(tmp_path / "hybrid", 1, 0)
    v2_tree(tmp_path / "unified", 1)
    assert cgroup_layout(tmp_path / "hybrid") == CgroupLayout.V1
    assert cgroup_layout(tmp_path / "unified") == CgroupLayout.V2


def test_v1_cpu_time_is_cpuacct_usage_less_the_container_monitors(tmp_path: Path) -> None:
    v1_tree(tmp_path, usage_ns=2_500_000_000, conmon_ns=500_000_000)
    assert MachineCgroups(CgroupLayout.V1, tmp_path).cpu_seconds(NAME) == 2.0


def test_v2_cpu_time_is_usage_usec_of_cpu_stat(tmp_path: Path) -> None:
    v2_tree(tmp_path, usage_usec=7_250_000)
    assert MachineCgroups(CgroupLayout.V2, tmp_path).cpu_seconds(NAME) == 7.25


def test_a_machine_without_a_cgroup_has_no_cpu_time(tmp_path: Path) -> None:
    v1_tree(tmp_path, 1, 0)
    assert MachineCgroups(CgroupLayout.V1, tmp_path).cpu_seconds("other.example.org") is None


def test_removing_a_machines_cgroup_removes_it_under_every_controller(tmp_path: Path) -> None:
    # rmdir of a real cgroup directory works with its kernel files in it; a made-up tree
    # holds regular files, so only the controllers without any are removed here.
    v1_tree(tmp_path, 1, 0)
    left = MachineCgroups(CgroupLayout.V1, tmp_path).remove(NAME)
    assert not (tmp_path / "memory/vac" / NAME).exists() and not (tmp_path / "pids/vac" / NAME).exists()
    assert [line for line in left if "cpuacct" in line]


def test_the_cgroup_parent_is_a_path_of_its_own_per_machine() -> None:
    assert cgroup_parent_for(NAME) == f"/vac/{NAME}"


def test_v1_cgroup_is_made_in_each_controller_with_quota_shares_and_memory_limit(tmp_path: Path) -> None:
    for controller in ("cpu", "cpuacct", "memory", "pids"):
        (tmp_path / controller).mkdir()
    procs = MachineCgroups(CgroupLayout.V1, tmp_path).create(NAME, processors=2, memory_mib=512)
    assert procs == [tmp_path / controller / "vac" / NAME / "cgroup.procs"
                     for controller in ("cpu", "cpuacct", "memory", "pids")]
    cpu = tmp_path / "cpu/vac" / NAME
    assert (cpu / "cpu.cfs_quota_us").read_text() == "200000\n"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000\n"
    assert (cpu / "cpu.shares").read_text() == "2048\n"
    assert (tmp_path / "memory/vac" / NAME / "memory.limit_in_bytes").read_text() == f"{512 * 1024 * 1024}\n"


def test_v1_cpu_and_cpuacct_in_one_hierarchy_are_joined_once(tmp_path: Path) -> None:
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    procs = MachineCgroups(CgroupLayout.V1, tmp_path).create(NAME, processors=1, memory_mib=128)
    assert procs == [tmp_path / "cpu/vac" / NAME / "cgroup.procs"]


def test_v2_cgroup_enables_the_controllers_down_to_it_and_sets_cpu_max_and_memory_max(tmp_path: Path) -> None:
    procs = MachineCgroups(CgroupLayout.V2, tmp_path).create(NAME, processors=3, memory_mib=256)
    assert procs == [tmp_path / "vac" / NAME / "cgroup.procs"]
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids\n"
    assert (tmp_path / "vac/cgroup.subtree_control").read_text() == "+cpu +memory +pids\n"
    assert (tmp_path / "vac" / NAME / "cpu.max").read_text() == "300000 100000\n"
    assert (tmp_path / "vac" / NAME / "memory.max").read_text() == f"{256 * 1024 * 1024}\n"


def test_the_processes_of_a_machine_are_those_in_its_cgroup_and_below(tmp_path: Path) -> None:
    v2_tree(tmp_path, 1)
    (tmp_path / "vac" / NAME / "cgroup.procs").write_text("12\n7\n")
    (tmp_path / "vac" / NAME / "child").mkdir()
    (tmp_path / "vac" / NAME / "child/cgroup.procs").write_text("99\n")
    assert MachineCgroups(CgroupLayout.V2, tmp_path).process_ids(NAME) == [7, 12, 99]
