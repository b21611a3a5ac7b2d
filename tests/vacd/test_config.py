"""Tests of configuration reading: vacd.config, vacd.configini, vacd.configparse, vacd.pipes.

Behaviour reference §2 and §8; acceptance 1 to 5. Files live under tmp_path through Paths.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from vacd.config import (Config, FactoryAddress, Machinetype, Settings, VacuumPipe, effective_config_text,
                         load_config)
from vacd.configini import read_sources
from vacd.configparse import parse_config
from vacd.errors import ConfigErrors, ConfigProblem
from vacd.paths import Paths
from vacd.pipes import apply_pipes, expand_pipe, pipe_cache_seconds, rejection

HOST = "f1.example.org"
SPACE = "vac01.example.org"
SETTINGS = f"[settings]\nvac_space = {SPACE}\n"
PURE_PATHS = Paths(Path("/prefix"))


def parse(*texts: str, host_fqdn: str = HOST, cpus: int = 8, paths: Paths = PURE_PATHS) -> Config:
    sources = [(f"/etc/vac.d/{index:02d}.conf", text) for index, text in enumerate(texts)]
    return parse_config(sources, host_fqdn=host_fqdn, host_cpu_count=cpus, paths=paths)


def problems_of(*texts: str, host_fqdn: str = HOST, cpus: int = 8) -> list[ConfigProblem]:
    with pytest.raises(ConfigErrors) as caught:
        parse(*texts, host_fqdn=host_fqdn, cpus=cpus)
    return list(caught.value.problems)


def only_problem(*texts: str, host_fqdn: str = HOST, cpus: int = 8) -> ConfigProblem:
    problems = problems_of(*texts, host_fqdn=host_fqdn, cpus=cpus)
    assert len(problems) == 1, problems
    return problems[0]


def write(paths: Paths, absolute: str, text: str) -> Path:
    path = paths.under_prefix(absolute)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- precedence and syntax (§2.1, acceptance 1) ---------------------------------------------

def test_later_files_override_earlier_per_option_acceptance_1(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    write(paths, "/etc/vac.d/a.conf", SETTINGS + "mb_per_processor = 1000\n")
    write(paths, "/etc/vac.d/b.conf", "[settings]\nmb_per_processor = 2000\n")
    write(paths, "/etc/vac.conf", "[settings]\nmb_per_processor = 3000\n")
    assert load_config(paths, host_fqdn=HOST, host_cpu_count=4).settings.mb_per_processor == 3000
    write(paths, "/var/run/vac.conf", "[settings]\nmb_per_processor = 4000\n")
    config = load_config(paths, host_fqdn=HOST, host_cpu_count=4)
    assert config.settings.mb_per_processor == 4000
    assert config.sources == (paths.under_prefix("/etc/vac.d/a.conf"), paths.under_prefix("/etc/vac.d/b.conf"),
                              paths.config_file, paths.under_prefix("/var/run/vac.conf"))


def test_run_vac_conf_overrides_etc_vac_conf(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    write(paths, "/etc/vac.conf", SETTINGS + "shutdown_time = 100\n")
    write(paths, "/run/vac.conf", "[settings]\nshutdown_time = 200\n")
    assert load_config(paths, host_fqdn=HOST, host_cpu_count=4).settings.shutdown_time == 200


def test_vac_d_is_read_in_sorted_order_and_only_conf_files(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    write(paths, "/etc/vac.d/9-late.conf", SETTINGS + "description = nine\n")
    write(paths, "/etc/vac.d/10-early.conf", "[settings]\ndescription = ten\n")
    write(paths, "/etc/vac.d/zz.conf.rpmsave", "[settings]\ndescription = saved\n")
    write(paths, "/etc/vac.d/.hidden.conf", "[settings]\ndescription = hidden\n")
    assert load_config(paths, host_fqdn=HOST, host_cpu_count=4).settings.description == "nine"


def test_missing_files_are_skipped_and_no_files_is_an_error(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    with pytest.raises(ConfigErrors) as caught:
        load_config(paths, host_fqdn=HOST, host_cpu_count=4)
    assert "[settings]: required section missing" in str(caught.value)
    write(paths, "/etc/vac.conf", SETTINGS)
    assert load_config(paths, host_fqdn=HOST, host_cpu_count=4).settings.vac_space == SPACE


def test_max_processors_zero_names_file_section_and_option(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    write(paths, "/etc/vac.conf", SETTINGS)
    atlas = write(paths, "/etc/vac.d/atlas.conf", "[machinetype atlas]\ntarget_share = 1\nmax_processors = 0\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(paths, host_fqdn=HOST, host_cpu_count=4)
    (problem,) = caught.value.problems
    assert (problem.path, problem.line, problem.section, problem.option) == (
        str(atlas), 3, "machinetype atlas", "max_processors")
    assert str(problem) == f"{atlas}:3: [machinetype atlas] max_processors: must be >= 1, got 0"


def test_undecodable_file_is_a_problem_naming_it(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    write(paths, "/etc/vac.conf", SETTINGS)
    bad = paths.under_prefix("/etc/vac.d/bad.conf")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"[settings]\ndescription = \xff\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(paths, host_fqdn=HOST, host_cpu_count=4)
    assert caught.value.problems[0].path == str(bad)
    assert "not UTF-8" in caught.value.problems[0].reason


def test_load_config_asks_the_host_for_missing_facts(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    write(paths, "/etc/vac.conf", SETTINGS + "factory_name = f9.example.org\n")
    config = load_config(paths)
    assert config.settings.host_processors == (os.cpu_count() or 1)
    assert config.settings.factory_name == "f9.example.org"


def test_singularity_user_must_exist_on_the_host(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    conf = write(paths, "/etc/vac.conf", SETTINGS + "singularity_user = no-such-vac-user\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(paths, host_fqdn=HOST, host_cpu_count=4)
    assert [str(problem) for problem in caught.value.problems] == [
        f"{conf}:3: [settings] singularity_user: no such user 'no-such-vac-user' on this host"]


def test_error_points_at_the_file_and_line_of_the_effective_value() -> None:
    # The bad value in 00.conf is overridden, so it is no problem; the one in 01.conf is.
    assert parse(SETTINGS + "mb_per_processor = ten\n", "[settings]\nmb_per_processor = 10\n")
    problem = only_problem(SETTINGS + "mb_per_processor = 10\n", "\n[settings]\n\nmb_per_processor = ten\n")
    assert str(problem) == "/etc/vac.d/01.conf:4: [settings] mb_per_processor: expected an integer, got 'ten'"


def test_line_numbers_follow_headers_options_and_continuations() -> None:
    text = ("# comment\n[settings]\nvac_space = a.b\ndescription = first\n  second\n\n"
            "  third\n[machinetype x]\n\ntarget_share = 1\n")
    raw, problems = read_sources([("f", text)])
    assert problems == []
    assert raw.sections["settings"]["description"].value == "first\nsecond\nthird"  # blank dropped, as Python 2
    assert raw.sections["settings"]["description"].line == 4
    assert raw.sections["machinetype x"]["target_share"].line == 10
    assert (raw.headers["settings"].line, raw.headers["machinetype x"].line) == (2, 8)


def test_option_names_are_case_folded_but_section_names_are_not() -> None:
    assert parse("[settings]\nVAC_SPACE = a.example.org\n").settings.vac_space == "a.example.org"
    problem = only_problem("[Settings]\nvac_space = a.example.org\n")
    assert problem.section == "settings"
    assert "section names are case-sensitive" in problem.reason and problem.line == 1


def test_default_section_propagates_to_every_section() -> None:
    config = parse("[DEFAULT]\nfizzle_seconds = 1200\n", SETTINGS + "[machinetype a]\n[machinetype b]\n")
    assert config.machinetypes["a"].fizzle_seconds == config.machinetypes["b"].fizzle_seconds == 1200
    assert config.warnings == ()  # not an unknown option of [settings]: it came from [DEFAULT]


def test_inline_semicolon_comment_and_repeated_sections_merge() -> None:
    config = parse(SETTINGS + "[machinetype a]\nroot_image = a.iso ; the image\n",
                   "[machinetype a]\ntarget_share = 2\n")
    assert (config.machinetypes["a"].root_image, config.machinetypes["a"].target_share) == ("a.iso", 2.0)


def test_malformed_lines_are_problems_with_file_and_line() -> None:
    problems = problems_of("vac_space = x\n" + SETTINGS, SETTINGS + "this is not an option\n[machinetype x]\n")
    assert [(problem.path, problem.line) for problem in problems] == [
        ("/etc/vac.d/00.conf", 1), ("/etc/vac.d/01.conf", 3)]
    assert "outside any [section]" in problems[0].reason
    assert "cannot parse 'this is not an option'" in problems[1].reason


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(SETTINGS + "mb_per_processor = ten\ndraining = perhaps\n"
                           "[machinetype bad_name]\n[machinetype ok]\nmachine_model = vmware\n")
    assert {problem.option for problem in problems} == {"mb_per_processor", "draining", None, "machine_model"}


# --- global validation (§2.1, acceptance 2) -------------------------------------------------

@pytest.mark.parametrize("text, section, option, reason", [
    ("[machinetype a]\n", "settings", None, "required section missing"),
    ("[settings]\n", "settings", "vac_space", "required option missing"),
    (SETTINGS + "total_processors = 9\n", "settings", "total_processors", "must be <= host_processors (8), got 9"),
    (SETTINGS + "cpu_total = 9\n", "settings", "cpu_total", "must be <= host_processors (8), got 9"),
    (SETTINGS + "vacmon_hostport = vacmon.example.org\n", "settings", "vacmon_hostport", "host:port"),
    (SETTINGS + "vacmon_hostport = vacmon.example.org:99999\n", "settings", "vacmon_hostport", "<= 65535"),
    (SETTINGS + "shutdown_time = tomorrow\n", "settings", "shutdown_time", "expected an integer, got 'tomorrow'"),
    (SETTINGS + "machinefeatures_option_a.b = 1\n", "settings", "machinefeatures_option_a.b", "a-z, 0-9 and _"),
    (SETTINGS + "user_data_option_a-b = 1\n", "settings", "user_data_option_a-b", "a-z, 0-9 and _"),
    (SETTINGS + "user_data_file_ = x\n", "settings", "user_data_file_", "a-z, 0-9 and _"),
    (SETTINGS + "[machinetype a_b]\n", "machinetype a_b", None, "only a-z, 0-9 and -, got 'a_b'"),
    (SETTINGS + "[machinetype a.b]\n", "machinetype a.b", None, "only a-z, 0-9 and -"),
    (SETTINGS + "[machinetype]\n", "machinetype", None, "needs a name"),
    (SETTINGS + "[machinetype a]\nmachine_model = vmware\n", "machinetype a", "machine_model", "expected one of"),
    (SETTINGS + "[machinetype a]\nroot_image = docker://x\n", "machinetype a", "root_image", "needs machine_model = docker"),
    (SETTINGS + "[machinetype a]\nmachine_model = docker\nroot_image = x.img\n", "machinetype a", "root_image",
     "needs a docker:// image"),
    (SETTINGS + "[machinetype a]\nmin_processors = 4\n", "machinetype a", "max_processors",
     "must be >= min_processors (4), got 1"),
    (SETTINGS + "[machinetype a]\nmin_wallclock_seconds = 9\nmax_wallclock_seconds = 8\n", "machinetype a",
     "min_wallclock_seconds", "must be <= max_wallclock_seconds (8), got 9"),
    (SETTINGS + "[machinetype a]\nroot_device = sd/a\n", "machinetype a", "root_device", "a-z and 0-9"),
    (SETTINGS + "[machinetype a]\nscratch_device = VDB\n", "machinetype a", "scratch_device", "a-z and 0-9"),
    (SETTINGS + "[machinetype a]\nheartbeat_file = ../x\n", "machinetype a", "heartbeat_file", "without a directory"),
    (SETTINGS + "[machinetype a]\ntmp_binds = /tmp/../etc\n", "machinetype a", "tmp_binds", "absolute paths"),
    (SETTINGS + "[machinetype a]\nimage_signing_dn = (\n", "machinetype a", "image_signing_dn", "regular expression"),
    (SETTINGS + "[machinetype a]\nmachine_model = singularity\n", "machinetype a", "machine_model", "singularity_user"),
    (SETTINGS + "[machinetype a]\ntarget_share = -1\n", "machinetype a", "target_share", "must be >= 0"),
    (SETTINGS + "[vacuum_pipe p]\ntarget_share = 1\n", "vacuum_pipe p", "vacuum_pipe_url", "required option missing"),
    (SETTINGS + "[vacuum_pipe p_q]\nvacuum_pipe_url = https://x/y\n", "vacuum_pipe p_q", None, "only a-z, 0-9 and -"),
    (SETTINGS + "[vacuum_pipe p]\nvacuum_pipe_url = ftp://x/y\n", "vacuum_pipe p", "vacuum_pipe_url", "http://"),
    (SETTINGS + "[vacuum_pipe p]\nvacuum_pipe_url = https://x/y\nmax_processors = many\n", "vacuum_pipe p",
     "max_processors", "expected an integer"),
    ("[settings]\nvac_space = f1.example.org\n", "settings", "vac_space", "must differ from this factory's name"),
    (SETTINGS + "singularity_user = root\n", "settings", "singularity_user", "must not be root"),
    (SETTINGS + "factory_name = localhost\n", "settings", "factory_name", "fully qualified"),
    (SETTINGS + "factories = f2 f3=999.1.1.1\n", "settings", "factories", "IPv4 or IPv6 address"),
    (SETTINGS + "factories = bad_name\n", "settings", "factories", "host names"),
    (SETTINGS + "hypervisor = xen\n", "settings", "hypervisor", "expected one of auto, kvm, qemu"),
    (SETTINGS + "max_creations_per_cycle = 0\n", "settings", "max_creations_per_cycle", "must be >= 1"),
    (SETTINGS + "cycle_seconds = 0\n", "settings", "cycle_seconds", "must be >= 0.1"),
    (SETTINGS + "vacquery_port = 70000\n", "settings", "vacquery_port", "must be <= 65535"),
    (SETTINGS + "vacquery_bind_address = everywhere\n", "settings", "vacquery_bind_address", "IPv4 or IPv6"),
    (SETTINGS + "metrics_address = 9100\n", "settings", "metrics_address", "host:port"),
    (SETTINGS + "metrics_address = ::1:9100\n", "settings", "metrics_address", "host:port"),
    (SETTINGS + "log_destination = console\n", "settings", "log_destination", "expected one of file, syslog"),
    (SETTINGS + "vacquery_auth = maybe\n", "settings", "vacquery_auth", "expected one of required, optional"),
    (SETTINGS + "metadata_tokens = always\n", "settings", "metadata_tokens", "expected one of optional, required"),
    (SETTINGS + "guest_api_processes = -1\n", "settings", "guest_api_processes", "expected auto or 0 to 64"),
    (SETTINGS + "guest_api_processes = 65\n", "settings", "guest_api_processes", "must be <= 64"),
    (SETTINGS + "guest_api_processes = many\n", "settings", "guest_api_processes", "expected auto or 0 to 64"),
    (SETTINGS + "libvirt_uri = system\n", "settings", "libvirt_uri", "libvirt URI"),
    (SETTINGS + "vacquery_key_file = key.pem\n", "settings", "vacquery_key_file", "absolute path"),
    (SETTINGS + "joboutputs_quota_bytes = -1\n", "settings", "joboutputs_quota_bytes", "must be >= 0"),
    (SETTINGS + "udp_timeout_seconds = nan\n", "settings", "udp_timeout_seconds", "expected a number"),
    (SETTINGS + "mb_per_processor = 1e3\n", "settings", "mb_per_processor", "expected an integer, got '1e3'"),
    (SETTINGS + "draining = perhaps\n", "settings", "draining", "expected yes or no"),
    (SETTINGS + "version_logger = often\n", "settings", "version_logger", "expected an integer"),
    (SETTINGS + "[factories]\nnames = f1 f2\n", "factories", "names", "move the list to [settings] factories"),
    (SETTINGS + "[machinetype a]\n[targetshares]\na = 1\n", "targetshares", "a", "set target_share in [machinetype a]"),
])
def test_invalid_configuration_is_an_error_naming_section_and_option(
        text: str, section: str, option: Optional[str], reason: str) -> None:
    problem = only_problem(text)
    assert (problem.section, problem.option) == (section, option)
    assert reason in problem.reason
    assert problem.path == "/etc/vac.d/00.conf"
    assert (problem.line is None) == (reason == "required section missing")


def test_hostname_without_a_dot_is_an_error_at_the_settings_header() -> None:
    problem = only_problem("\n" + SETTINGS, host_fqdn="f1")
    assert (problem.line, problem.section, problem.option) == (2, "settings", "factory_name")
    assert "has no dot" in problem.reason
    assert parse(SETTINGS + "factory_name = f1.example.org\n", host_fqdn="f1").settings.factory_name == HOST


def test_unknown_options_and_sections_warn_but_do_not_fail() -> None:
    config = parse(SETTINGS + "colour = blue\n[machinetype a]\nflavour = big\n[extras]\nx = 1\n")
    assert config.warnings == (
        "/etc/vac.d/00.conf:3: [settings] colour: unknown option for [settings], ignored",
        "/etc/vac.d/00.conf:5: [machinetype a] flavour: unknown option for [machinetype], ignored",
        "/etc/vac.d/00.conf:6: [extras]: unknown section, ignored",
    )


def test_disk_options_are_read_and_have_node_defaults() -> None:
    defaults = parse(SETTINGS).settings
    assert (defaults.min_free_disk_mb, defaults.min_free_disk_percent, defaults.imagecache_days,
            defaults.imagecache_max_gb) == (1024, 5.0, 14.0, 0)
    chosen = parse(SETTINGS + "min_free_disk_mb = 0\nmin_free_disk_percent = 2.5\nimagecache_days = 0.5\n"
                   "imagecache_max_gb = 200\n").settings
    assert (chosen.min_free_disk_mb, chosen.min_free_disk_percent, chosen.imagecache_days,
            chosen.imagecache_max_gb) == (0, 2.5, 0.5, 200)


@pytest.mark.parametrize("line", ["min_free_disk_mb = -1", "min_free_disk_mb = 1e3", f"min_free_disk_mb = {2**40 + 1}",
                                  "min_free_disk_percent = 101", "min_free_disk_percent = -0.5",
                                  "min_free_disk_percent = nan", "imagecache_days = 0", "imagecache_days = 1e300",
                                  "imagecache_max_gb = -3"])
def test_out_of_range_disk_options_are_errors_at_their_line(line: str) -> None:
    problem = only_problem("\n" + SETTINGS + line + "\n")
    assert (problem.path, problem.line, problem.section, problem.option) == (
        "/etc/vac.d/00.conf", 4, "settings", line.partition(" =")[0])


# --- defaults (§2.2, §2.4, acceptance 3) ----------------------------------------------------

def test_machinetype_with_only_target_share_gets_vac_defaults_acceptance_3() -> None:
    machinetype = parse(SETTINGS + "[machinetype atlas]\ntarget_share = 1\n").machinetypes["atlas"]
    assert machinetype == Machinetype(
        name="atlas", machinegroup="atlas", machinetype_path=PURE_PATHS.machinetypes_dir / "atlas",
        target_share=1.0)
    assert (machinetype.machine_model, machinetype.max_wallclock_seconds, machinetype.min_wallclock_seconds,
            machinetype.backoff_seconds, machinetype.fizzle_seconds, machinetype.heartbeat_seconds,
            machinetype.min_processors, machinetype.max_processors, machinetype.machines_dir_days,
            machinetype.root_device, machinetype.scratch_device, machinetype.container_command) == (
        "cernvm3", 86400, 86400, 10, 600, 0, 1, 1, 3.0, "vda", "vdb", "/user_data")


def test_machinegroup_defaults_to_accounting_fqan_and_min_wallclock_to_max() -> None:
    machinetype = parse(SETTINGS + "[machinetype lhcb]\naccounting_fqan = /lhcb/Role=pilot\n"
                        "max_wallclock_seconds = 3600\n").machinetypes["lhcb"]
    assert (machinetype.machinegroup, machinetype.min_wallclock_seconds) == ("/lhcb/Role=pilot", 3600)
    explicit = parse(SETTINGS + "[machinetype lhcb]\naccounting_fqan = /lhcb\nmachinegroup = g\n")
    assert explicit.machinetypes["lhcb"].machinegroup == "g"


def test_settings_defaults_are_the_dataclass_defaults() -> None:
    assert parse(SETTINGS).settings == Settings(
        vac_space=SPACE, factory_name=HOST, total_processors=8, host_processors=8, gocdb_sitename="example.org",
        root_public_key=str(PURE_PATHS.under_prefix("/root/.ssh/id_rsa.pub")))


def test_settings_defaults_are_vacs_and_follow_the_host() -> None:
    settings = parse("[settings]\nvac_space = vac01.example.org\n", host_fqdn="f1.example.org", cpus=6).settings
    assert (settings.factory_name, settings.host_processors, settings.total_processors,
            settings.num_machine_slots) == (HOST, 6, 6, 6)
    assert (settings.gocdb_sitename, settings.gocdb_sitename_is_set) == ("example.org", False)
    assert (settings.mb_per_processor, settings.overload_per_processor, settings.udp_timeout_seconds,
            settings.processors_per_superslot, settings.version_logger, settings.draining,
            settings.fix_networking) == (2048, 1.25, 10.0, 1, 1, False, True)
    assert (settings.vacquery_port, settings.metadata_port, settings.max_creations_per_cycle,
            settings.cycle_seconds, settings.metrics_address) == (995, 80, 4, 30.0, None)
    assert settings.root_public_key == str(PURE_PATHS.prefix / "root/.ssh/id_rsa.pub")
    named = parse(SETTINGS + "gocdb_sitename = UKI-Example\n").settings
    assert (named.gocdb_sitename, named.gocdb_sitename_is_set) == ("UKI-Example", True)


def test_factories_are_canonicalised_with_optional_addresses() -> None:
    settings = parse(SETTINGS + "factories = . f2 F3.Other.Org f4=10.1.2.3 f5=[::1] f2\n").settings
    assert settings.factories == (
        FactoryAddress(HOST), FactoryAddress("f2.example.org"), FactoryAddress("f3.other.org"),
        FactoryAddress("f4.example.org", "10.1.2.3"), FactoryAddress("f5.example.org", "::1"))


def test_factories_without_this_factory_warn() -> None:
    config = parse(SETTINGS + "factories = f2 f3\n")
    assert any("does not list this factory" in warning for warning in config.warnings)


def test_host_processors_above_the_real_count_is_allowed_with_a_warning() -> None:
    config = parse(SETTINGS + "host_processors = 32\n", cpus=2)
    assert (config.settings.host_processors, config.settings.total_processors) == (32, 32)
    assert any("only for tests and demos" in warning for warning in config.warnings)


def test_new_settings_options_are_parsed() -> None:
    settings = parse(SETTINGS + "hypervisor = qemu\nlibvirt_uri = test:///default\nmax_creations_per_cycle = 2\n"
                     "cycle_seconds = 2.5\nshutdown_grace_seconds = 0\nvacquery_port = 0\n"
                     "vacquery_bind_address = 127.0.0.1\nvacquery_key_file = /etc/vac/key\nvacquery_auth = optional\n"
                     "metrics_address = [::1]:9100\njoboutputs_quota_bytes = 0\nmetadata_port = 8080\n"
                     "log_destination = syslog\n").settings
    assert (settings.hypervisor, settings.libvirt_uri, settings.max_creations_per_cycle, settings.cycle_seconds,
            settings.shutdown_grace_seconds, settings.vacquery_port, settings.vacquery_bind_address,
            settings.vacquery_key_file, settings.metrics_address, settings.joboutputs_quota_bytes,
            settings.metadata_port, settings.log_destination, settings.vacquery_auth) == (
        "qemu", "test:///default", 2, 2.5, 0, 0, "127.0.0.1", ("/etc/vac/key",), "[::1]:9100", 0, 8080, "syslog",
        "optional")
    assert parse(SETTINGS + "metrics_address =\n").settings.metrics_address is None
    assert parse(SETTINGS + "metadata_tokens = required\n").settings.metadata_tokens == "required"
    assert parse(SETTINGS).settings.metadata_tokens == "optional"
    assert parse(SETTINGS).settings.guest_api_processes is None  # auto
    assert parse(SETTINGS + "guest_api_processes = AUTO\n").settings.guest_api_processes is None
    assert parse(SETTINGS + "guest_api_processes = 0\n").settings.guest_api_processes == 0
    assert parse(SETTINGS + "guest_api_processes = 4\n").settings.guest_api_processes == 4
    assert parse(SETTINGS + "metrics_address = :9100\n").settings.metrics_address == ":9100"


def test_direct_kernel_boot_files_resolve_against_machinetype_files() -> None:
    machinetype = parse(SETTINGS + "[machinetype t]\nmachine_model = vm-raw\nroot_kernel = vmlinuz\n"
                        "root_initrd = /boot/initrd\nkernel_command_line = console=ttyS0 panic=-1\n"
                        "user_data = https://example.org/ud\n").machinetypes["t"]
    assert machinetype.resolve_file(machinetype.root_kernel or "") == str(
        PURE_PATHS.machinetypes_dir / "t" / "files" / "vmlinuz")
    assert machinetype.resolve_file(machinetype.root_initrd or "") == "/boot/initrd"
    assert machinetype.resolve_file(machinetype.user_data or "") == "https://example.org/ud"
    assert machinetype.kernel_command_line == "console=ttyS0 panic=-1"


def test_user_data_defaults_from_settings_are_overridden_per_machinetype() -> None:
    config = parse(SETTINGS + "user_data_option_a = 1\nuser_data_option_b = 2\nuser_data_file_c = c.txt\n"
                   "[machinetype m]\nuser_data_option_a = 3\nuser_data_file_c = d.txt\n[machinetype n]\n")
    m, n = config.machinetypes["m"], config.machinetypes["n"]
    assert (dict(m.user_data_options), dict(m.user_data_files)) == ({"a": "3", "b": "2"}, {"c": "d.txt"})
    assert (dict(n.user_data_options), dict(n.user_data_files)) == ({"a": "1", "b": "2"}, {"c": "c.txt"})


# --- legacy names (§2.5) --------------------------------------------------------------------

@pytest.mark.parametrize("section_text, field_name, expected", [
    ("[settings]\ncpu_total = 3\n", "total_processors", 3),
    ("[settings]\noverload_per_cpu = 2\n", "overload_per_processor", 2.0),
    ("[settings]\nmb_per_cpu = 1000\n", "mb_per_processor", 1000),
    ("[settings]\nhs06_per_cpu = 12.5\n", "hs06_per_processor", 12.5),
    ("[settings]\ndisk_gb_per_cpu = 20\n", "disk_gb_per_processor", 20),
    ("[settings]\nscratch_gb = 30\n", "disk_gb_per_processor", 30),
    ("[settings]\nvcpu_per_machine = 4\n", "processors_per_superslot", 4),
    ("[settings]\ncpu_per_machine = 2\n", "processors_per_superslot", 2),
    ("[machinetype m]\nvm_model = vm-raw\n", "machine_model", "vm-raw"),
    ("[machinetype m]\nmachineoutputs_days = 7\n", "machines_dir_days", 7.0),
])
def test_legacy_option_names_work_with_a_deprecation_warning(section_text: str, field_name: str,
                                                             expected: Any) -> None:
    config = parse(SETTINGS, section_text)
    target = config.machinetypes["m"] if "machinetype" in section_text else config.settings
    assert getattr(target, field_name) == expected
    assert any(f"deprecated name, use {field_name} instead" in warning and "/etc/vac.d/01.conf:2" in warning
               for warning in config.warnings), config.warnings


def test_cpu_total_wins_over_total_processors_but_new_names_win_elsewhere() -> None:
    settings = parse(SETTINGS + "cpu_total = 2\ntotal_processors = 4\nvcpu_per_machine = 2\n"
                     "processors_per_superslot = 4\n").settings
    assert (settings.total_processors, settings.processors_per_superslot) == (2, 4)


def test_vmtype_section_is_a_machinetype_with_a_warning() -> None:
    config = parse(SETTINGS + "[vmtype old]\ntarget_share = 3\nfizzle_seconds = 5\n")
    assert (config.machinetypes["old"].target_share, config.machinetypes["old"].fizzle_seconds) == (3.0, 5)
    assert "[vmtype old]: deprecated section name, use [machinetype old]" in config.warnings[0]


def test_vmtype_and_machinetype_sections_are_not_merged_the_last_is_used_as_by_vac() -> None:
    config = parse(SETTINGS + "[vmtype old]\ntarget_share = 3\nfizzle_seconds = 5\n",
                   "[DEFAULT]\nfizzle_seconds = 7\nbackoff_seconds = 8\n[machinetype old]\ntarget_share = 4\n")
    old = config.machinetypes["old"]
    assert (old.target_share, old.fizzle_seconds, old.backoff_seconds) == (4.0, 7, 8)
    assert any(warning.startswith("/etc/vac.d/00.conf:3: [vmtype old]: IGNORED WHOLE: [machinetype old] "
                                  "(/etc/vac.d/01.conf:4)") for warning in config.warnings), config.warnings


@pytest.mark.parametrize("word, expected", [("true", 1), ("false", 0), ("5", 5)])
def test_version_logger_accepts_legacy_true_and_false(word: str, expected: int) -> None:
    config = parse(SETTINGS + f"version_logger = {word}\n")
    assert config.settings.version_logger == expected
    assert any("is deprecated" in warning for warning in config.warnings) == (word in ("true", "false"))


@pytest.mark.parametrize("section_text, option", [
    ("[settings]\ndomain_type = kvm\n", "domain_type"),
    ("[settings]\ntotal_machines = 4\n", "total_machines"),
    ("[settings]\ndelete_old_files = yes\n", "delete_old_files"),
    ("[settings]\nmb_per_machine = 4000\n", "mb_per_machine"),
    ("[machinetype m]\nrootpublickey = /k\n", "rootpublickey"),
    ("[machinetype m]\nroot_public_key = /k\n", "root_public_key"),
    ("[machinetype m]\nlog_machineoutputs = yes\n", "log_machineoutputs"),
    ("[machinetype m]\nuser_data_proxy_cert = c.pem\n", "user_data_proxy_cert"),
    ("[machinetype m]\nuser_data_proxy_key = k.pem\n", "user_data_proxy_key"),
    ("[machinetype m]\nvacuum_pipe_url = https://x/y\n", "vacuum_pipe_url"),
])
def test_options_vac_no_longer_used_are_ignored_with_a_warning(section_text: str, option: str) -> None:
    config = parse(SETTINGS, section_text)
    assert len(config.warnings) == 1 and f"] {option}: ignored" in config.warnings[0]


def test_legacy_sections_only_warn_when_the_new_form_is_present() -> None:
    config = parse(SETTINGS + "factories = f1 f2\n[factories]\nnames = f1 f2\n"
                   "[machinetype a]\ntarget_share = 2\n[targetshares]\na = 1\n")
    assert config.machinetypes["a"].target_share == 2.0
    assert [warning.split(": ")[1] for warning in config.warnings if "ignored" in warning] == [
        "[factories] names", "[targetshares] a"]


def test_min_processors_above_superslot_size_warns_never_created() -> None:
    config = parse(SETTINGS + "[machinetype big]\nmin_processors = 2\nmax_processors = 2\n")
    assert any("never created" in warning for warning in config.warnings)


# --- vacuum pipes (§2.3, §8, acceptance 4 and 5) --------------------------------------------

PIPE_SETTINGS = SETTINGS + "[vacuum_pipe ex]\nvacuum_pipe_url = https://pipes.example.org/ex.json\ntarget_share = 10\n"
PIPE_URL = "https://pipes.example.org/ex.json"


def test_pipe_section_is_parsed_with_its_copied_options() -> None:
    config = parse(PIPE_SETTINGS + "backoff_seconds = 60\nuser_data_option_token = t\n")
    assert config.vacuum_pipes == (VacuumPipe("ex", PIPE_URL, 10.0, {"backoff_seconds": "60",
                                                                      "user_data_option_token": "t"}),)
    assert config.machinetypes == {}


def test_pipe_share_is_split_in_proportion_acceptance_4() -> None:
    config = parse(PIPE_SETTINGS)
    document = {"machinetypes": [{"suffix": "a", "target_share": 1, "root_image": "a.iso"},
                                 {"suffix": "b", "target_share": 3, "root_image": "b.iso"}]}
    expansion = expand_pipe(config.vacuum_pipes[0], document, config)
    assert {name: machinetype.target_share for name, machinetype in expansion.machinetypes.items()} == {
        "ex-a": 2.5, "ex-b": 7.5}
    for machinetype in expansion.machinetypes.values():
        assert machinetype.machinetype_path == PURE_PATHS.machinetypes_dir / "ex"
        assert machinetype.vacuum_pipe == "ex"


def test_local_values_win_and_unsafe_pipe_values_are_dropped_acceptance_5() -> None:
    config = parse(PIPE_SETTINGS + "backoff_seconds = 60\n[machinetype ex-a]\nfizzle_seconds = 900\n"
                   "root_kernel = vmlinuz\n")  # bootable without the pipe's (refused) root_image
    document = {"machinetypes": [{
        "suffix": "a", "target_share": 1, "fizzle_seconds": 100, "backoff_seconds": 5, "heartbeat_seconds": 300,
        "user_data_file_x": "a/b", "root_image": "/etc/x.img", "user_data": "files/../x",
        "machinegroup": "stolen", "favourite_colour": "blue", "max_processors": 1,
    }]}
    expansion = expand_pipe(config.vacuum_pipes[0], document, config)
    machinetype = expansion.machinetypes["ex-a"]
    assert (machinetype.fizzle_seconds, machinetype.backoff_seconds, machinetype.heartbeat_seconds) == (900, 60, 300)
    assert (machinetype.root_image, machinetype.user_data, machinetype.machinegroup) == (None, None, "ex-a")
    assert machinetype.user_data_files == {} and machinetype.target_share == 10.0
    dropped = sorted(warning.split("] ")[1].split(":")[0] for warning in expansion.warnings if "ignored" in warning)
    assert dropped == ["favourite_colour", "machinegroup", "root_image", "user_data", "user_data_file_x"]
    assert all(warning.startswith(PIPE_URL + ": [machinetype ex-a]")
               for warning in expansion.warnings if "ignored" in warning)


@pytest.mark.parametrize("option, text, allowed", [
    ("user_data_file_x", "x.txt", True),
    ("user_data_file_x", "a/b", False),
    ("cvmfs_repositories", "atlas.cern.ch", True),
    ("cvmfs_repositories", "/cvmfs/atlas.cern.ch", False),
    ("heartbeat_file", "dir/hb", False),
    ("user_data", "https://example.org/ud", True),
    ("user_data", "ud.template", True),
    ("user_data", "files/ud", False),
    ("user_data", "https://example.org/../ud", False),
    ("root_image", "https://example.org/x.iso", True),
    ("root_image", "docker://repo/image:tag", True),
    ("root_image", "/cvmfs/unpacked.cern.ch/image", True),
    ("root_image", "/cvmfs/..", False),
    ("root_image", "/etc/x.img", False),
    ("root_image", "x.img", True),
    ("machinegroup", "g", False),
    ("machinetype_path", "/etc", False),
    ("user_data_option_X", "v", False),
    ("container_command", "/bin/payload\n--evil", False),
    ("user_data_option_motd", "line one\nline two", True),
])
def test_pipe_option_whitelist_and_path_safety(option: str, text: str, allowed: bool) -> None:
    assert (rejection(option, text) is None) == allowed


def test_bad_pipe_values_cost_only_that_value_or_that_machinetype() -> None:
    config = parse(PIPE_SETTINGS + "[machinetype ex-c]\nmin_processors = 2\n")
    document = {"machinetypes": [
        {"suffix": "a", "max_processors": 0, "fizzle_seconds": "soon", "backoff_seconds": 30},
        {"suffix": "b", "tmp_binds": ["/tmp"], "root_device": "vd/a"},
        {"suffix": "c", "max_processors": 1},
        {"suffix": "Bad_Suffix"}, {"no_suffix": 1}, "not an object", {"suffix": 7},
    ], "cache_seconds": 0}
    expansion = expand_pipe(config.vacuum_pipes[0], document, config)
    assert sorted(expansion.machinetypes) == ["ex-7", "ex-a", "ex-b"]
    assert (expansion.machinetypes["ex-a"].max_processors, expansion.machinetypes["ex-a"].backoff_seconds) == (1, 30)
    assert any("[machinetype ex-c]: not created" in warning for warning in expansion.warnings)
    assert pipe_cache_seconds(document) == 0 and pipe_cache_seconds({}) == 3600


def test_apply_pipes_adds_generated_machinetypes_over_local_overlays() -> None:
    config = parse(PIPE_SETTINGS + "[machinetype ex-a]\ntarget_share = 4\n[machinetype local]\n")
    assert apply_pipes(config, {}) == config
    document = {"machinetypes": [{"suffix": "a", "target_share": 1, "root_image": "https://x/a.iso"}]}
    applied = apply_pipes(config, {"ex": document})
    assert sorted(applied.machinetypes) == ["ex-a", "local"]
    assert (applied.machinetypes["ex-a"].target_share, applied.machinetypes["ex-a"].root_image) == (
        4.0, "https://x/a.iso")


def test_pipe_documents_without_machinetypes_give_nothing() -> None:
    config = parse(PIPE_SETTINGS)
    pipe = config.vacuum_pipes[0]
    assert expand_pipe(pipe, {}, config).machinetypes == {}
    assert expand_pipe(pipe, {"machinetypes": {"a": 1}}, config).warnings


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                       max_size=4), max_leaves=12)
PIPE_ENTRY = st.dictionaries(st.sampled_from(["suffix", "target_share", "max_processors", "min_processors",
                                              "root_image", "user_data", "tmp_binds", "user_data_file_a",
                                              "machine_model", "heartbeat_file", "min_wallclock_seconds"]),
                             JSON | st.sampled_from(["a", "b", "docker://x", "1", "/cvmfs/x"]), max_size=6)


@hypothesis_settings(max_examples=200, deadline=None)
@given(document=st.one_of(JSON, st.fixed_dictionaries({"machinetypes": st.lists(PIPE_ENTRY, max_size=4)})))
def test_any_pipe_document_expands_without_raising(document: Any) -> None:
    config = parse(PIPE_SETTINGS + "[machinetype ex-a]\nmin_processors = 1\n")
    expansion = expand_pipe(config.vacuum_pipes[0], document, config)
    for name, machinetype in expansion.machinetypes.items():
        assert name.startswith("ex-") and machinetype.max_processors >= machinetype.min_processors


# --- showing the configuration (vacd --check-config) ----------------------------------------

def test_effective_config_masks_user_data_options_everywhere() -> None:
    config = parse(PIPE_SETTINGS + "user_data_option_token = pipe-secret\n"
                   "[settings]\nuser_data_option_password = hunter2\nmachinefeatures_option_site_note = visible\n"
                   "[machinetype a]\nuser_data_option_key = also-secret\nuser_data_file_cert = cert.pem\n")
    text = effective_config_text(config)
    for secret in ("pipe-secret", "hunter2", "also-secret"):
        assert secret not in text
    assert "user_data_option_password = ********" in text and "user_data_option_key = ********" in text
    assert "hunter2" not in repr(config.settings) and "pipe-secret" not in repr(config.vacuum_pipes)
    assert "machinefeatures_option_site_note = visible" in text and "user_data_file_cert = cert.pem" in text


def test_effective_config_reads_back_to_the_same_values() -> None:
    config = parse(SETTINGS + "factories = . f2=10.0.0.2\nhs06_per_processor = 12.5\nvacmon_hostport = v.org:8884\n"
                   "machinefeatures_option_x = 1\ndescription = two\n  lines\ngocdb_sitename = SITE\n"
                   "[machinetype a]\ntarget_share = 0\ncvmfs_repositories = atlas.cern.ch cms.cern.ch\n"
                   "user_data_file_f = f.txt\nmachine_model = docker\nroot_image = docker://x/y\n"
                   "tmp_binds = /scratch /tmp/a\n")
    again = parse(effective_config_text(config), host_fqdn="other.host.org", cpus=64)
    assert (again.settings, again.machinetypes) == (config.settings, config.machinetypes)


# --- property tests: any text is a Config or ConfigErrors -----------------------------------

SECTION_NAMES = st.sampled_from(["settings", "DEFAULT", "machinetype a", "machinetype b", "vmtype a",
                                 "vacuum_pipe p", "factories", "targetshares", "machinetype A_b", "other"])
OPTION_NAMES = st.sampled_from([
    "vac_space", "factories", "total_processors", "cpu_total", "host_processors", "processors_per_superslot",
    "mb_per_processor", "hs06_per_processor", "shutdown_time", "draining", "vacmon_hostport", "version_logger",
    "factory_name", "metrics_address", "vacquery_bind_address", "target_share", "min_processors",
    "max_processors", "machine_model", "root_image", "tmp_binds", "image_signing_dn", "heartbeat_file",
    "min_wallclock_seconds", "max_wallclock_seconds", "vacuum_pipe_url", "names", "a", "user_data_option_x",
    "singularity_user", "machinetype_path", "cvmfs_repositories"])
VALUES = st.one_of(st.sampled_from(["1", "0", "-1", "yes", "x.example.org", "docker://x", "1e999", "nan",
                                    "https://x/y", "singularity", "a:1", "/abs", "(", "9" * 5000, "."]),
                   st.text(max_size=12))


@st.composite
def ini_texts(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"[{draw(SECTION_NAMES)}]")
        for _ in range(draw(st.integers(0, 5))):
            lines.append(f"{draw(OPTION_NAMES)} = {draw(VALUES)}".replace("\n", " ").replace("\r", " "))
    return "\n".join(lines)


def _parses_or_raises_config_errors(*texts: str) -> None:
    try:
        config = parse(*texts)
    except ConfigErrors as errors:
        assert errors.problems
        for problem in errors.problems:
            assert problem.path in ("<host>", "<unknown>") or problem.path.startswith("/etc/vac.d/")
        return
    assert isinstance(config, Config)
    effective_config_text(config)


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text())
def test_any_text_yields_a_config_or_config_errors(text: str) -> None:
    _parses_or_raises_config_errors(text)


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=ini_texts(), second=ini_texts())
def test_any_ini_shaped_text_yields_a_config_or_config_errors(first: str, second: str) -> None:
    _parses_or_raises_config_errors(first, second)


def test_pipe_overlay_section_may_rely_on_the_pipe_for_other_options() -> None:
    config = parse(PIPE_SETTINGS + "[machinetype ex-a]\nmin_processors = 4\n")
    assert "ex-a" not in config.machinetypes
    assert any("only overrides what its vacuum pipe says" in warning for warning in config.warnings)
    document = {"machinetypes": [{"suffix": "a", "max_processors": 8, "root_image": "https://x/a.iso"}]}
    machinetype = apply_pipes(config, {"ex": document}).machinetypes["ex-a"]
    assert (machinetype.min_processors, machinetype.max_processors) == (4, 8)


# --- the shipped example and manual page ----------------------------------------------------

REPOSITORY = Path(__file__).resolve().parents[2]


def test_example_configuration_is_valid_without_warnings() -> None:
    config = parse((REPOSITORY / "etc" / "vac.conf.example").read_text())
    assert sorted(config.machinetypes) == ["atlas", "lhcb"] and config.warnings == ()


def test_manual_page_documents_every_option() -> None:
    manual = (REPOSITORY / "man" / "vac.conf.5").read_text()
    documented = set(manual.replace("\\", " ").replace(",", " ").split())
    undocumented = {name for name in list(Settings.__dataclass_fields__) + list(Machinetype.__dataclass_fields__)
                    if name not in documented}
    assert undocumented - {"name"} == {"machinefeatures_options", "user_data_options", "user_data_files",
                            "gocdb_sitename_is_set", "vacuum_pipe"}


def _without_secrets(config: Config) -> tuple[Settings, dict[str, Machinetype]]:
    return (dataclasses.replace(config.settings, user_data_options={}),
            {name: dataclasses.replace(machinetype, user_data_options={})
             for name, machinetype in config.machinetypes.items()})


@hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=ini_texts())
def test_effective_config_of_any_valid_text_reads_back_the_same(text: str) -> None:
    try:
        config = parse(SETTINGS, text)
    except ConfigErrors:
        return
    again = parse(effective_config_text(config), host_fqdn="elsewhere.example.net", cpus=1)
    assert _without_secrets(again) == _without_secrets(config)
