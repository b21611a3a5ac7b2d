"""Every numeric option has a range the daemon can run with, and every file fault is a ConfigProblem.

Issue 8 item 9: `cycle_seconds = 1e300` raised OverflowError at the first idle pass and
`host_processors = 30000` a ValueError at start; a symlink loop as vac.conf was a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import typing
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from tests.fakes import FakeBackend, InlineExecutor, ManualClock
from vacd.config import Config, Machinetype, Settings, load_config
from vacd import configvalues
from vacd.configparse import parse_config
from vacd.configvalues import MAX_CYCLE_SECONDS, MAX_PROCESSORS
from vacd.errors import ConfigErrors
from vacd.factory import Factory
from vacd.paths import Paths
from vacd.slots import MAX_SLOTS, slot_identity
from vacd.store import Store

HOST = "f1.example.org"
SETTINGS = "[settings]\nvac_space = vac01.example.org\n"
PURE_PATHS = Paths(Path("/prefix"))
SOURCE = "/etc/vac.conf"

# Each numeric field of Settings and Machinetype, and the section its option lives in.
SETTINGS_NUMBERS = ("total_processors", "host_processors", "processors_per_superslot", "mb_per_processor",
                    "hs06_per_processor", "disk_gb_per_processor", "overload_per_processor", "shutdown_time",
                    "udp_timeout_seconds", "version_logger", "max_creations_per_cycle", "cycle_seconds",
                    "shutdown_grace_seconds", "preemption_grace_seconds", "preemption_margin_percent",
                    "max_preemptions_per_cycle", "vacquery_port", "joboutputs_quota_bytes", "joboutputs_total_bytes",
                    "metadata_port", "guest_api_processes",
                    "min_free_disk_mb", "min_free_disk_percent", "imagecache_days", "imagecache_max_gb")
MACHINETYPE_NUMBERS = ("target_share", "min_processors", "max_processors", "max_wallclock_seconds",
                       "min_wallclock_seconds", "backoff_seconds", "fizzle_seconds", "heartbeat_seconds",
                       "machines_dir_days", "disk_gb_per_processor")
# Values no option may take: not finite, far too large, negative.
OUT_OF_RANGE = ("1e300", "inf", "nan", "-1", "9" * 25, "1" + "0" * 29)


def numeric_fields(cls: type) -> set[str]:
    hints = typing.get_type_hints(cls)
    return {name for name, hint in hints.items()
            if hint in (int, float, Optional[int], Optional[float]) and name != "gocdb_sitename_is_set"}


def text_with(section: str, option: str, value: str) -> str:
    if section == "settings":
        return SETTINGS + f"{option} = {value}\n"
    return SETTINGS + f"[machinetype atlas]\ntarget_share = 1\n{option} = {value}\n"


def parse(text: str, cpus: int = 8) -> Config:
    return parse_config([(SOURCE, text)], host_fqdn=HOST, host_cpu_count=cpus, paths=PURE_PATHS)


def test_every_numeric_field_is_covered_by_the_range_tests() -> None:
    assert numeric_fields(Settings) == set(SETTINGS_NUMBERS)
    assert numeric_fields(Machinetype) == set(MACHINETYPE_NUMBERS)


@pytest.mark.parametrize("section, option", [("settings", name) for name in SETTINGS_NUMBERS]
                         + [("machinetype atlas", name) for name in MACHINETYPE_NUMBERS])
@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_out_of_range_number_is_refused_naming_file_line_section_and_option(
        section: str, option: str, value: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse(text_with(section, option, value))
    located = [(problem.path, problem.section, problem.option) for problem in caught.value.problems]
    assert (SOURCE, section, option) in located, caught.value.problems
    problem = next(problem for problem in caught.value.problems if problem.option == option)
    assert problem.line is not None


def test_cycle_seconds_1e300_is_refused_not_an_overflow_at_the_first_pass() -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse(SETTINGS + "cycle_seconds = 1e300\n")
    (problem,) = caught.value.problems
    assert str(problem) == f"{SOURCE}:3: [settings] cycle_seconds: must be <= {MAX_CYCLE_SECONDS}, got 1e+300"


def test_host_processors_beyond_the_slot_scheme_is_refused() -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse(SETTINGS + "host_processors = 30000\n", cpus=30000)
    (problem,) = caught.value.problems
    assert str(problem) == f"{SOURCE}:3: [settings] host_processors: must be <= {MAX_SLOTS}, got 30000"


def test_the_largest_accepted_host_processors_has_an_identity_for_every_slot() -> None:
    assert MAX_PROCESSORS == MAX_SLOTS
    settings = parse(SETTINGS + f"host_processors = {MAX_PROCESSORS}\n", cpus=MAX_PROCESSORS).settings
    last = slot_identity(settings.factory_name, settings.num_machine_slots - 1)
    assert (last.ip_address, last.vnc_port) == ("169.254.253.249", 5900 + MAX_SLOTS - 1)


def test_a_host_with_more_processors_than_slots_defaults_to_the_slot_maximum() -> None:
    assert parse(SETTINGS, cpus=MAX_SLOTS + 7).settings.host_processors == MAX_SLOTS


# --- file faults ------------------------------------------------------------------------------

def load_problems(paths: Paths) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_config(paths, host_fqdn=HOST, host_cpu_count=4)
    return [str(problem) for problem in caught.value.problems]


def test_symlink_loop_as_vac_conf_is_a_file_error(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.config_file.parent.mkdir(parents=True)
    os.symlink(paths.config_file, paths.config_file)
    assert load_problems(paths)[0] == f"{paths.config_file}: cannot read: too many levels of symbolic links"


def test_symlink_loop_in_vac_d_is_a_file_error_and_the_rest_is_still_read(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.config_dir.mkdir(parents=True)
    (paths.config_dir / "a.conf").symlink_to(paths.config_dir / "b.conf")
    (paths.config_dir / "b.conf").symlink_to(paths.config_dir / "a.conf")
    paths.config_file.write_text(SETTINGS)
    assert load_problems(paths) == [
        f"{paths.config_dir / 'a.conf'}: cannot read: too many levels of symbolic links",
        f"{paths.config_dir / 'b.conf'}: cannot read: too many levels of symbolic links"]


def test_vac_d_that_is_a_symlink_loop_is_a_file_error(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.config_dir.parent.mkdir(parents=True)
    os.symlink(paths.config_dir, paths.config_dir)
    paths.config_file.write_text(SETTINGS)
    assert load_problems(paths) == [f"{paths.config_dir}: cannot read: too many levels of symbolic links"]


def test_directory_where_vac_conf_should_be_is_a_file_error(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.config_file.mkdir(parents=True)
    assert load_problems(paths)[0] == f"{paths.config_file}: cannot read: is a directory, not a file"


def test_dangling_symlink_and_fifo_are_file_errors(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.config_dir.mkdir(parents=True)
    (paths.config_dir / "gone.conf").symlink_to(tmp_path / "nowhere")
    os.mkfifo(paths.config_dir / "pipe.conf")
    paths.config_file.write_text(SETTINGS)
    assert load_problems(paths) == [
        f"{paths.config_dir / 'gone.conf'}: cannot read: symbolic link to a missing file",
        f"{paths.config_dir / 'pipe.conf'}: cannot read: not a regular file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_unreadable_vac_conf_is_a_file_error(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_text(SETTINGS)
    paths.config_file.chmod(0)
    assert load_problems(paths) == [f"{paths.config_file}: cannot read: permission denied"]


def test_undecodable_bytes_are_a_file_error_naming_the_byte(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_bytes(SETTINGS.encode() + b"description = \xfe\n")
    assert load_problems(paths)[0] == f"{paths.config_file}: not UTF-8 text (byte {len(SETTINGS) + 14})"


# --- whatever loads can run -------------------------------------------------------------------

class StaticConfig:
    def __init__(self, config: Config) -> None:
        self.config = config

    def current(self) -> Config:
        return self.config


def run_two_passes(config: Config, tmp_path: Path) -> None:
    """A creating pass, then one after every configured duration has run out (policing)."""
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    clock = ManualClock()
    factory = Factory(Store(paths), FakeBackend(), StaticConfig(config), InlineExecutor(), clock=clock,
                      load_average=lambda: 0.0, host_cpu_count=4, vacd_start_time=int(clock()),
                      tie_break=random.Random(0))
    report = factory.run_pass()
    # The daemon waits min(cycle_seconds, next wake) on an Event: an acquire with that timeout
    # is where 1e300 overflowed (the lock is free, so nothing waits).
    lock = threading.Lock()
    wait = min(config.settings.cycle_seconds, report.next_wake_seconds or config.settings.cycle_seconds)
    assert lock.acquire(timeout=wait)
    lock.release()
    clock.advance(11 * 366 * 86400)
    factory.run_pass()


# The largest value each bound allows, and the smallest it refuses: the edges are where
# overflows hide, so they are drawn often.
EDGES = sorted({str(value) for bound in (configvalues.MAX_PROCESSORS, configvalues.MAX_DURATION_SECONDS,
                                         configvalues.MAX_DAYS, configvalues.MAX_CYCLE_SECONDS,
                                         configvalues.MIN_CYCLE_SECONDS, configvalues.MAX_UDP_TIMEOUT_SECONDS,
                                         configvalues.MAX_SHUTDOWN_GRACE_SECONDS, configvalues.MAX_EPOCH_SECONDS,
                                         configvalues.MAX_MB_PER_PROCESSOR, configvalues.MAX_DISK_GB_PER_PROCESSOR,
                                         configvalues.MAX_HS06_PER_PROCESSOR, configvalues.MAX_OVERLOAD_PER_PROCESSOR,
                                         configvalues.MAX_TARGET_SHARE, configvalues.MAX_VERSION_LOGGER,
                                         configvalues.MAX_JOBOUTPUTS_QUOTA_BYTES, 65535, 0, 1)
                for value in (bound, bound + 1 if isinstance(bound, int) else bound * 1.0001)})
NUMERIC_TEXT = st.one_of(
    st.sampled_from(EDGES),
    st.sampled_from(EDGES),
    st.integers(min_value=0, max_value=10**6).map(str),
    st.integers(min_value=-10**31, max_value=10**31).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.from_regex(r"[+-]?[0-9]{0,3}\.?[0-9]{0,3}(?:[eE][+-]?[0-9]{1,4})?", fullmatch=True),
)
# Options that would make one pass touch every slot of a big factory are drawn small, as the
# test is about values that overflow or crash, not about how long 21,250 slots take.
PASS_OPTIONS = tuple(("settings", name) for name in SETTINGS_NUMBERS if name != "host_processors") \
    + tuple(("machinetype atlas", name) for name in MACHINETYPE_NUMBERS)


@hypothesis_settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(choices=st.lists(st.tuples(st.sampled_from(PASS_OPTIONS), NUMERIC_TEXT), min_size=1, max_size=3))
def test_any_number_in_any_option_loads_and_drives_a_pass_or_is_a_config_error(
        choices: list[tuple[tuple[str, str], str]], tmp_path_factory: pytest.TempPathFactory) -> None:
    settings_lines = "".join(f"{option} = {value}\n" for (section, option), value in choices if section == "settings")
    machinetype_lines = "".join(f"{option} = {value}\n" for (section, option), value in choices
                                if section != "settings")
    text = (SETTINGS + "host_processors = 4\n" + settings_lines
            + "[machinetype atlas]\ntarget_share = 1\nmachine_model = vm-raw\nroot_kernel = /guest/vmlinuz\n"
            + machinetype_lines)
    try:
        config = parse(text)
    except ConfigErrors as errors:
        assert all(problem.path == SOURCE for problem in errors.problems)
        return
    run_two_passes(config, tmp_path_factory.mktemp("pass"))


@pytest.mark.parametrize("value", ["1", str(MAX_PROCESSORS)])
def test_the_largest_slot_count_drives_a_pass(value: str, tmp_path: Path) -> None:
    config = parse(SETTINGS + f"host_processors = {value}\n[machinetype atlas]\ntarget_share = 1\n"
                   "machine_model = vm-raw\nroot_kernel = /guest/vmlinuz\n", cpus=MAX_PROCESSORS)
    run_two_passes(dataclasses.replace(config), tmp_path)
