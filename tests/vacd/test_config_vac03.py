"""The same vac.conf means the same factory as under Vac 03.01 (issue 10 item 4).

For any vac.conf Vac 03 accepted, vacd runs with the values Vac 03 ran with, or refuses
with the file, line and reason; it never silently runs with different ones. Vac 03's
readConf (vac/shared.py) is the reference for each case below; docs/migrating-from-vac03.md
has the table of every such option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from vacd import config as config_module
from vacd.config import Config, effective_config_text, load_config
from vacd.configparse import VAC_ORDER, parse_config
from vacd.configvalues import DRAINING, FIX_NETWORKING, PROXY_SWITCH, VacBoolean
from vacd.errors import ConfigErrors, ConfigProblem
from vacd.paths import Paths
from vacd.startupcheck import startup_findings

HOST = "f1.example.org"
SETTINGS = "[settings]\nvac_space = vac01.example.org\n"
PURE_PATHS = Paths(Path("/prefix"))


def parse(*texts: str, host: str = HOST) -> Config:
    sources = [(f"/etc/vac.d/{index:02d}.conf", text) for index, text in enumerate(texts)]
    return parse_config(sources, host_fqdn=host, host_cpu_count=64, paths=PURE_PATHS)


def problems_of(*texts: str, host: str = HOST) -> list[ConfigProblem]:
    with pytest.raises(ConfigErrors) as caught:
        parse(*texts, host=host)
    return list(caught.value.problems)


def only_problem(*texts: str, host: str = HOST) -> ConfigProblem:
    problems = problems_of(*texts, host=host)
    assert len(problems) == 1, problems
    return problems[0]


def warnings_about(config: Config, text: str) -> list[str]:
    return [warning for warning in config.warnings if text in warning]


# --- a legacy name and its new name both set: Vac 03's choice, loudly -----------------------

# (section, field, [(option, value, expected field value)] in Vac 03's order of preference)
LEGACY_PAIRS = [
    ("settings", "total_processors", [("cpu_total", "2", 2), ("total_processors", "4", 4)]),
    ("settings", "overload_per_processor", [("overload_per_cpu", "2", 2.0), ("overload_per_processor", "3", 3.0)]),
    ("settings", "mb_per_processor", [("mb_per_cpu", "1000", 1000), ("mb_per_processor", "4000", 4000)]),
    ("settings", "hs06_per_processor", [("hs06_per_cpu", "10", 10.0), ("hs06_per_processor", "12", 12.0)]),
    ("settings", "disk_gb_per_processor", [("scratch_gb", "10", 10), ("disk_gb_per_cpu", "20", 20),
                                           ("disk_gb_per_processor", "30", 30)]),
    ("settings", "processors_per_superslot", [("processors_per_superslot", "4", 4), ("vcpu_per_machine", "2", 2),
                                              ("cpu_per_machine", "8", 8)]),
    ("machinetype m", "machine_model", [("vm_model", "vm-raw", "vm-raw"), ("machine_model", "cernvm3", "cernvm3")]),
    ("machinetype m", "machines_dir_days", [("machineoutputs_days", "7", 7.0), ("machines_dir_days", "1", 1.0)]),
]


def _field(config: Config, section: str, field_name: str) -> object:
    target: object = config.machinetypes["m"] if section.startswith("machinetype") else config.settings
    return getattr(target, field_name)


@pytest.mark.parametrize("section, field_name, names", LEGACY_PAIRS)
def test_the_name_vac03_read_first_wins_with_a_warning_naming_both_lines(
        section: str, field_name: str, names: list[tuple[str, str, object]]) -> None:
    assert [option for option, _, _ in names] == list(VAC_ORDER[field_name])
    # Every subset of two or more names, each in its own file, in every file order.
    for first in range(len(names)):
        for second in range(first + 1, len(names)):
            for chosen, other in ((first, second), (second, first)):
                texts = [SETTINGS, f"[{section}]\n{names[chosen][0]} = {names[chosen][1]}\n",
                         f"[{section}]\n{names[other][0]} = {names[other][1]}\n"]
                config = parse(*texts)
                winner = names[min(first, second)]
                loser = names[max(first, second)]
                assert _field(config, section, field_name) == winner[2]
                loud = warnings_about(config, "NOT USED")
                assert len(loud) == 1
                loser_file = "01" if loser is names[chosen] else "02"
                winner_file = "01" if winner is names[chosen] else "02"
                assert loud[0].startswith(f"/etc/vac.d/{loser_file}.conf:2: [{section}] {loser[0]}: NOT USED: "
                                          f"{winner[0]} = {winner[1]!r} (/etc/vac.d/{winner_file}.conf:2)")


def test_mb_per_cpu_beats_mb_per_processor_even_when_written_later_as_an_override() -> None:
    config = parse(SETTINGS + "mb_per_cpu = 1000\n", "[settings]\nmb_per_processor = 4000\n")
    assert config.settings.mb_per_processor == 1000


def test_a_legacy_name_with_the_same_value_is_only_deprecated() -> None:
    config = parse(SETTINGS + "mb_per_cpu = 1000\nmb_per_processor = 1000\n")
    assert config.settings.mb_per_processor == 1000
    assert not warnings_about(config, "NOT USED")
    assert warnings_about(config, "mb_per_cpu: deprecated name, use mb_per_processor instead")


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 10**6), st.booleans(), st.booleans())
def test_mb_per_processor_is_always_the_value_vac03_used(legacy: int, current: int, legacy_first: bool,
                                                         via_default: bool) -> None:
    lines = [f"mb_per_cpu = {legacy}\n", f"mb_per_processor = {current}\n"]
    if not legacy_first:
        lines.reverse()
    section = "[DEFAULT]\n" if via_default else "[settings]\n"
    config = parse(SETTINGS, section + "".join(lines))
    assert config.settings.mb_per_processor == legacy


# --- yes/no options: Vac 03's reading, or a refusal ----------------------------------------

@pytest.mark.parametrize("option, word", [("draining", "true"), ("draining", "on"), ("draining", "1"),
                                          ("fix_networking", "no"), ("fix_networking", "off"),
                                          ("fix_networking", "0")])
def test_a_word_vac03_read_the_other_way_is_refused_at_its_line(option: str, word: str) -> None:
    problem = only_problem(SETTINGS + f"{option} = {word}\n")
    assert (problem.path, problem.line, problem.section, problem.option) == ("/etc/vac.d/00.conf", 3, "settings",
                                                                             option)
    assert problem.reason.startswith(f"Vac 03 read {word!r} as ")


@pytest.mark.parametrize("option", ["user_data_proxy", "legacy_proxy"])
@pytest.mark.parametrize("word", ["yes", "on", "1"])
def test_proxy_switches_need_true_as_in_vac03(option: str, word: str) -> None:
    problem = only_problem(SETTINGS + f"[machinetype m]\n{option} = {word}\n")
    assert (problem.option, problem.line) == (option, 4)
    assert "only 'true' meant yes" in problem.reason


def test_words_vac03_and_vacd_agree_on_are_read() -> None:
    settings = parse(SETTINGS + "draining = YES\nfix_networking = False\n").settings
    assert (settings.draining, settings.fix_networking) == (True, False)
    assert parse(SETTINGS + "draining = no\n").settings.draining is False
    machinetype = parse(SETTINGS + "[machinetype m]\nuser_data_proxy = True\nlegacy_proxy = false\n").machinetypes["m"]
    assert (machinetype.user_data_proxy, machinetype.legacy_proxy) == (True, False)


BOOLEAN_OPTIONS = [("settings", "draining", DRAINING, "draining"), ("settings", "fix_networking", FIX_NETWORKING,
                                                                     "fix_networking"),
                   ("machinetype m", "user_data_proxy", PROXY_SWITCH, "user_data_proxy"),
                   ("machinetype m", "legacy_proxy", PROXY_SWITCH, "legacy_proxy")]


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.sampled_from(BOOLEAN_OPTIONS),
       st.one_of(st.sampled_from(["yes", "Yes", "YES", "no", "true", "True", "false", "FALSE", "on", "off", "1", "0",
                                  "y", "n", "enabled", "", "yes please"]), st.text(max_size=6)))
def test_a_yes_no_option_is_vac03s_reading_or_refused(option_case: tuple[str, str, VacBoolean, str],
                                                      word: str) -> None:
    section, option, rule, field_name = option_case
    text = f"[{section}]\n{option} = {word}\n".replace("\r", " ")
    first_line = text.split("\n")[1]
    if "\n" in word or not first_line.startswith(option):
        return
    try:
        config = parse(SETTINGS, text)
    except ConfigErrors as errors:
        assert any(problem.option == option for problem in errors.problems)
        return
    source = config.raw.sections[section][option].value
    assert _field(config, section, field_name) == rule.vac_reading(source)


# --- section kinds as Vac 03 split them ----------------------------------------------------

def test_mixed_case_machinetype_section_is_the_lower_case_machinetype() -> None:
    config = parse(SETTINGS + "[Machinetype LHCb]\ntarget_share = 2\n[MACHINETYPE\tatlas]\ntarget_share = 1\n")
    assert set(config.machinetypes) == {"lhcb", "atlas"}
    assert config.machinetypes["lhcb"].machinetype_path == PURE_PATHS.machinetypes_dir / "lhcb"
    assert not warnings_about(config, "unknown section")


def test_mixed_case_pipe_section_is_the_lower_case_pipe() -> None:
    config = parse(SETTINGS + "[Vacuum_Pipe EX]\nvacuum_pipe_url = https://pipes.example.org/ex.json\n")
    assert [pipe.prefix for pipe in config.vacuum_pipes] == ["ex"]


def test_two_cases_of_one_machinetype_are_not_merged_the_last_wins_whole() -> None:
    config = parse(SETTINGS + "[machinetype lhcb]\ntarget_share = 2\nfizzle_seconds = 900\n",
                   "[Machinetype lhcb]\nbackoff_seconds = 60\n")
    lhcb = config.machinetypes["lhcb"]
    assert (lhcb.target_share, lhcb.fizzle_seconds, lhcb.backoff_seconds) == (0.0, 600, 60)
    assert warnings_about(config, "/etc/vac.d/00.conf:3: [machinetype lhcb]: IGNORED WHOLE: [Machinetype lhcb] "
                                  "(/etc/vac.d/01.conf:1)")


def test_capitalised_settings_beside_settings_is_loudly_ignored() -> None:
    config = parse(SETTINGS + "[Settings]\ndraining = yes\n")
    assert config.settings.draining is False
    assert warnings_about(config, "/etc/vac.d/00.conf:3: [Settings]: IGNORED: Vac 03 read only [settings]")


def test_capitalised_settings_alone_is_refused_as_vac03_refused_it() -> None:
    problem = only_problem("[SETTINGS]\nvac_space = vac01.example.org\n")
    assert "found [SETTINGS]" in problem.reason and problem.line == 1


def test_lower_case_default_section_applies_nowhere_and_says_so() -> None:
    config = parse(SETTINGS + "[machinetype m]\n[default]\nfizzle_seconds = 5\n")
    assert config.machinetypes["m"].fizzle_seconds == 600
    assert warnings_about(config, "[default]: IGNORED: only [DEFAULT]")


# --- factory_name as Vac 03 took it --------------------------------------------------------

def test_the_default_factory_name_is_the_kernel_node_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_module.host_name() == __import__("os").uname()[1]
    paths = Paths(tmp_path)
    (tmp_path / "etc").mkdir()
    paths.config_file.write_text(SETTINGS)
    monkeypatch.setattr(config_module, "host_name", lambda: "node7.example.org")
    assert load_config(paths, host_cpu_count=4).settings.factory_name == "node7.example.org"


def test_a_node_name_with_capitals_is_refused_with_the_name_to_set() -> None:
    problem = only_problem(SETTINGS, host="F1.Example.Org")
    assert problem.option == "factory_name"
    assert "set factory_name = f1.example.org" in problem.reason
    assert parse(SETTINGS + "factory_name = f1.example.org\n", host="F1.Example.Org").settings.factory_name == HOST


def test_a_node_name_without_a_dot_is_refused_as_vac03_refused_it() -> None:
    assert "has no dot" in only_problem(SETTINGS, host="f1").reason


# --- options this version does not act on ---------------------------------------------------

@pytest.mark.parametrize("text, option", [
    (SETTINGS + "gocdb_cert_file = /c.pem\ngocdb_key_file = /k.pem\n", "gocdb_cert_file"),
    (SETTINGS + "version_logger = 2\n", "version_logger"),
])
def test_what_only_reports_or_did_nothing_in_vac03_is_a_loud_warning(text: str, option: str) -> None:
    assert warnings_about(parse(text), f"{option}: NOT IMPLEMENTED in this version")


def test_singularity_with_a_share_is_accepted_and_singularity_user_warns_what_is_not_killed() -> None:
    # Issue 13: singularity machinetypes run under apptainer (vacd.backends.apptainer).
    config = parse(SETTINGS + "singularity_user = vac\n[machinetype m]\nmachine_model = singularity\n"
                   "root_image = /cvmfs/unpacked.cern.ch/x\ntarget_share = 1\n")
    assert config.machinetypes["m"].machine_model == "singularity"
    assert not warnings_about(config, "NOT IMPLEMENTED")
    assert warnings_about(config, "singularity_user: vacd runs singularity machines as this user but does not kill")


@pytest.mark.parametrize("model_option", ["machine_model", "vm_model"])
def test_a_docker_machinetype_with_a_share_is_accepted_as_podman_runs_it(model_option: str) -> None:
    # Issue 13: docker machinetypes run under podman (vacd.backends.podman), with Vac 03's binds.
    config = parse(SETTINGS + f"[machinetype m]\n{model_option} = docker\nroot_image = docker://x\ntarget_share = 1\n"
                   "cvmfs_repositories = lhcb.cern.ch\ntmp_binds = /scratch\n")
    assert config.machinetypes["m"].machine_model == "docker"
    assert not warnings_about(config, "NOT IMPLEMENTED")
    section = effective_config_text(config).partition("[machinetype m]")[2]
    assert "cvmfs_repositories = lhcb.cern.ch" in section and "NOT IMPLEMENTED" not in section


def test_fix_networking_set_is_a_warning_that_it_is_ignored() -> None:
    assert warnings_about(parse(SETTINGS + "fix_networking = false\n"), "fix_networking: ignored: vacd never runs")


def test_machinetypes_vac03_failed_to_create_are_noted_in_the_effective_configuration() -> None:
    config = parse(SETTINGS + "[machinetype four]\nmachine_model = cernvm4\ntarget_share = 1\nroot_image = /i.iso\n"
                   "[machinetype three]\ntarget_share = 1\nroot_image = cvm.iso\n")
    lines = effective_config_text(config).splitlines()
    assert lines[lines.index("machine_model = cernvm4") - 1] == (
        "# machine_model: Vac 03.01 failed every creation of cernvm4 ('not supported'); vacd creates it as cernvm3")
    assert lines[lines.index("root_image = cvm.iso") - 1] == (
        "# root_image: Vac 03 looked for it at cvm.iso/files/cvm.iso (its bug) and failed every creation; vacd uses "
        f"{PURE_PATHS.machinetypes_dir / 'three' / 'files' / 'cvm.iso'}")


@pytest.mark.parametrize("option", ["cernvm_signing_dn", "image_signing_dn"])
def test_a_signing_dn_under_either_name_is_enforced_and_noted_in_the_effective_configuration(option: str) -> None:
    # Issue 11 item 1: vacd.imagecheck enforces both names; Vac 03 enforced only cernvm_signing_dn.
    config = parse(SETTINGS + f"[machinetype m]\n{option} = /CN=cernvm\n")
    assert config.machinetypes["m"].image_signing_dn == "/CN=cernvm"
    assert not warnings_about(config, "NOT IMPLEMENTED")
    lines = effective_config_text(config).splitlines()
    assert lines[lines.index("image_signing_dn = /CN=cernvm") - 1] == (
        "# image_signing_dn: Vac 03 enforced it only when set as cernvm_signing_dn; vacd refuses any root_image "
        "not signed by a matching DN, under either name")


def test_the_effective_text_marks_what_is_not_acted_on() -> None:
    text = effective_config_text(parse(SETTINGS + "gocdb_cert_file = /c.pem\ngocdb_key_file = /k.pem\n"))
    lines = text.splitlines()
    at = lines.index("gocdb_cert_file = /c.pem")
    assert lines[at - 1] == "# gocdb_cert_file: NOT IMPLEMENTED in this version, no GOCDB updates are sent"
    assert "# fix_networking: NOT IMPLEMENTED in this version" in text


def test_volume_group_is_accepted_and_acted_on() -> None:
    config = parse(SETTINGS + "volume_group = vac_volume_group\n")
    assert config.settings.volume_group == "vac_volume_group"
    assert "volume_group = vac_volume_group" in effective_config_text(config)
    assert "# volume_group" not in effective_config_text(config)


def test_vac03s_default_volume_group_on_the_host_is_a_check_config_warning(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    settings = parse(SETTINGS + "log_destination = stderr\nvacquery_port = 0\n").settings
    assert not [warning for warning in startup_findings(paths, settings, logs_to_stderr=True).warnings
                if "vac_volume_group" in warning]
    (tmp_path / "dev" / "vac_volume_group").mkdir(parents=True)
    warnings = startup_findings(paths, settings, logs_to_stderr=True).warnings
    assert any("volume_group = vac_volume_group" in warning and "without being told" in warning
               for warning in warnings), warnings


# --- what Vac 03's result cannot be reproduced for ------------------------------------------

@pytest.mark.parametrize("settings_line, machinetype_line, option, line", [
    ("user_data_option_a = 1", "user_data_file_a = a.txt", "user_data_file_a", 5),
    ("user_data_file_a = a.txt", "user_data_option_a = 1", "user_data_option_a", 5),
    ("", "user_data_option_a = 1\nuser_data_file_a = a.txt", "user_data_option_a", 5),
])
def test_an_option_and_a_file_for_one_user_data_name_is_refused(settings_line: str, machinetype_line: str,
                                                                option: str, line: int) -> None:
    problem = only_problem(SETTINGS + settings_line + "\n[machinetype m]\n" + machinetype_line + "\n")
    assert (problem.section, problem.option, problem.line) == ("machinetype m", option, line)
    assert "depended on its dictionary's order" in problem.reason


@pytest.mark.parametrize("option", ["accounting_fqan", "machinegroup"])
def test_an_empty_accounting_fqan_or_machinegroup_is_refused(option: str) -> None:
    problem = only_problem(SETTINGS + f"[machinetype m]\n{option} =\n")
    assert (problem.option, problem.line) == (option, 4) and "Vac 03 used ''" in problem.reason


# --- files -------------------------------------------------------------------------------

def test_hidden_conf_files_in_vac_d_are_read_as_vac03_read_them(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.config_dir.mkdir(parents=True)
    (paths.config_dir / ".site.conf").write_text(SETTINGS + "mb_per_processor = 3000\n")
    config = load_config(paths, host_fqdn=HOST, host_cpu_count=4)
    assert config.settings.mb_per_processor == 3000
    assert [warning for warning in config.warnings if ".site.conf: read although hidden" in warning]


def test_run_vac_conf_that_is_not_var_run_vac_conf_is_a_warning(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    (tmp_path / "etc").mkdir()
    paths.config_file.write_text(SETTINGS)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "vac.conf").write_text("[settings]\ndraining = yes\n")
    config = load_config(paths, host_fqdn=HOST, host_cpu_count=4)
    assert config.settings.draining is True
    assert [warning for warning in config.warnings if "but Vac 03 read only" in warning]
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to(tmp_path / "run")
    assert not [warning for warning in load_config(paths, host_fqdn=HOST, host_cpu_count=4).warnings
                if "but Vac 03 read only" in warning]




def test_a_machinetype_disk_size_vac03_used_only_for_logical_volumes_warns() -> None:
    config = parse(SETTINGS + "disk_gb_per_processor = 20\n[machinetype m]\ndisk_gb_per_processor = 10\n"
                   "[machinetype same]\ndisk_gb_per_processor = 20\n")
    assert warnings_about(config, "[machinetype m] disk_gb_per_processor: Vac 03 gave file-backed root disks 20 GB")
    assert not warnings_about(config, "[machinetype same] disk_gb_per_processor")


def test_with_a_volume_group_a_machinetype_size_above_the_settings_one_is_said_to_be_capped() -> None:
    config = parse(SETTINGS + "volume_group = vg\ndisk_gb_per_processor = 20\n[machinetype big]\n"
                   "disk_gb_per_processor = 30\n[machinetype small]\ndisk_gb_per_processor = 10\n")
    assert warnings_about(config, "[machinetype big] disk_gb_per_processor: above [settings] disk_gb_per_processor "
                                  "(20): as Vac 03, logical volumes get 20 GB per processor")
    # Within it, the machinetype's size is Vac 03's for logical volumes: nothing to say.
    assert not warnings_about(config, "[machinetype small] disk_gb_per_processor")
