"""Tests of vacd.hypervisor: kvm only with hardware virtualisation and a working /dev/kvm."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.hypervisor import (
    choose_domain_type,
    cpu_virtualisation_flags,
    decide_domain_type,
    explain_domain_type,
    kvm_device_usable,
)

INTEL_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic vmx ssse3 sse4_1 hypervisor

processor\t: 1
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic vmx ssse3 sse4_1 hypervisor
"""
AMD_CPUINFO = "processor\t: 0\nflags\t\t: fpu svm lm\n"
# A PVM guest: /dev/kvm exists but the CPU shows no vmx/svm (test-guest notes).
PVM_CPUINFO = "processor\t: 0\nflags\t\t: fpu vme pae apic hypervisor lm\nvmx flags\t: none\n"


def test_auto_chooses_kvm_with_vmx_and_working_kvm_device() -> None:
    assert choose_domain_type("auto", INTEL_CPUINFO, kvm_usable=True) == "kvm"


def test_auto_chooses_kvm_with_svm() -> None:
    assert choose_domain_type("auto", AMD_CPUINFO, kvm_usable=True) == "kvm"


def test_auto_chooses_qemu_on_pvm_host_whose_kvm_device_works() -> None:
    choice = explain_domain_type("auto", PVM_CPUINFO, kvm_usable=True)
    assert choice.domain_type == "qemu"
    assert "no vmx/svm" in choice.reason


def test_auto_chooses_qemu_when_kvm_device_fails_despite_flags() -> None:
    choice = explain_domain_type("auto", INTEL_CPUINFO, kvm_usable=False)
    assert choice.domain_type == "qemu"
    assert "/dev/kvm is not usable" in choice.reason


@pytest.mark.parametrize("setting", ["kvm", "qemu"])
def test_explicit_setting_is_obeyed_and_says_so(setting: str) -> None:
    choice = explain_domain_type(setting, PVM_CPUINFO, kvm_usable=False)
    assert choice.domain_type == setting
    assert f"hypervisor={setting}" in choice.reason


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="hypervisor must be one of"):
        choose_domain_type("xen", INTEL_CPUINFO, kvm_usable=True)


def test_vmx_flags_line_of_newer_kernels_is_not_mistaken_for_a_flag() -> None:
    # Linux 5.x+ prints a separate "vmx flags" line; only "flags" lines count.
    assert cpu_virtualisation_flags("vmx flags\t: vnmi preemption_timer\nflags\t: fpu\n") == frozenset()


@given(st.text(max_size=300))
def test_any_cpuinfo_text_gives_a_decision(text: str) -> None:
    assert choose_domain_type("auto", text, kvm_usable=True) in ("kvm", "qemu")


def test_missing_kvm_device_is_not_usable(tmp_path: Path) -> None:
    assert kvm_device_usable(tmp_path / "kvm") is False


def test_decide_reads_the_given_cpuinfo_and_probes_the_given_device(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(INTEL_CPUINFO)
    choice = decide_domain_type("auto", cpuinfo_path=cpuinfo, kvm_device=tmp_path / "no-kvm")
    assert choice.domain_type == "qemu"
    assert "vmx" in choice.reason


def test_a_file_that_is_not_a_kvm_device_is_not_usable(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"
    fake.write_text("")
    assert kvm_device_usable(fake) is False
