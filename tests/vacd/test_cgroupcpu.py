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
