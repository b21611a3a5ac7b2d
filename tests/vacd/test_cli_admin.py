"""The commands as admins meet them (issue 12 item 6): run as processes, as a shell runs them.

`--version` on every console script of setup.cfg and on viab-generate; `vac` alone and
`vac help` list the commands; each command has its own `--help`; the bash completion knows
the same commands and options as the parser; `vac status` says when vacd is not running;
and a `vac machines` that cannot read the site key names the file.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.vacquery.vac_command_space import LoopbackSpace, snapshot_of, status_document, write_config
from vacd import VERSION
from vacd.cli import LOCAL_COMMANDS, VERBS, build_parsers, main
from vacd.daemoncli import PidFile
from vacd.paths import Paths
from vacd.status import write_heartbeat
from vacquery.auth import AuthMode, Authenticator
from vacquery.cli import LISTING_KINDS

REPOSITORY = Path(__file__).resolve().parents[2]
COMPLETION = REPOSITORY / "etc/bash-completion/vac"
VIAB_GENERATE = REPOSITORY / "kickstart/viab-generate"
SITE_KEY = b"0123456789abcdef0123456789abcdef"


def console_scripts() -> dict[str, str]:
    """setup.cfg's console_scripts: name -> `module:function`."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPOSITORY / "setup.cfg", encoding="utf-8")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip() for name, _, target in (line.partition("=") for line in lines)}


def run_script(target: str, *argv: str, user: Optional[str] = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run an entry point (`module:function`) of this worktree as its installed script would."""
    module, _, function = target.partition(":")
    probe = f"import sys\nsys.path.insert(0, {str(REPOSITORY)!r})\nfrom {module} import {function}\nsys.exit({function}())\n"
    command = [sys.executable, "-c", probe, *argv]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user_group(user)}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/")


def run_vac_process(*argv: str, user: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    return run_script(console_scripts()["vac"], *argv, user=user)


def run_vac(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def user_group(user: str) -> str:
    import grp
    import pwd

    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


# ---------------------------------------------------------------------- --version


@pytest.mark.allow_commands(sys.executable)
def test_every_console_script_prints_its_name_and_the_version() -> None:
    scripts = console_scripts()
    assert {"vacd", "vac", "check-vacd"} <= set(scripts)  # the reading found them
    for name, target in scripts.items():
        completed = run_script(target, "--version")
        assert (completed.returncode, completed.stdout, completed.stderr) == (0, f"{name} {VERSION}\n", ""), name


@pytest.mark.allow_commands(sys.executable)
def test_check_vacd_has_the_nagios_plugins_short_version_option() -> None:
    completed = run_script(console_scripts()["check-vacd"], "-V")
    assert (completed.returncode, completed.stdout) == (0, f"check-vacd {VERSION}\n")


@pytest.mark.allow_commands(sys.executable)
def test_viab_generate_prints_the_version_of_the_vac_beside_it() -> None:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    completed = subprocess.run([sys.executable, str(VIAB_GENERATE), "--version"], capture_output=True, text=True,
                               timeout=60, env=environment, cwd="/")
    assert (completed.returncode, completed.stdout) == (0, f"viab-generate {VERSION}\n")


# ---------------------------------------------------------------------- vac, vac help, vac COMMAND --help


@pytest.mark.allow_commands(sys.executable)
def test_vac_alone_gives_vacs_message_then_every_command_and_exits_1() -> None:
    completed = run_vac_process()
    assert (completed.returncode, completed.stdout) == (1, "")
    lines = completed.stderr.splitlines()
    assert lines[0] == "Must give a recognised command argument to vac!"
    listed = [line.split()[1] for line in lines if line.startswith("  vac ")]
    assert listed == [verb.name for verb in VERBS]
    assert all(len(line) <= 80 for line in lines)


@pytest.mark.allow_commands(sys.executable)
def test_vac_help_lists_every_command_and_option_on_stdout() -> None:
    completed = run_vac_process("help")
    assert completed.returncode == 0 and completed.stderr == ""
    for verb in VERBS:
        assert f"\n    {verb.name} " in completed.stdout or f"\n    {verb.name}\n" in completed.stdout, verb.name
    for option in ("--prefix", "--space", "--timeout", "--json", "--include-hs06", "--cert", "--key", "--version"):
        assert option in completed.stdout
    assert run_vac_process("--help").stdout == completed.stdout


@pytest.mark.parametrize("verb", [verb.name for verb in VERBS] + ["machinetype"])
def test_each_command_has_its_own_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    canonical = "machinetypes" if verb == "machinetype" else verb
    assert shown.startswith(f"usage: vac [options] {canonical} [options]")
    # A command lists the options it uses; the others are accepted but not shown.
    assert ("--timeout" in shown) == (canonical in LISTING_KINDS)
    assert ("--cert" in shown) == (canonical == "proxy-init")
    assert ("--json" in shown) == (canonical in LISTING_KINDS or canonical == "status")
    code, out, _ = run_vac("help", verb)
    assert (code, out) == (0, shown)


def test_help_names_the_arguments_of_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    _, verb_parsers = build_parsers()
    assert verb_parsers["squid-conf"].format_usage().split() == "usage: vac [options] squid-conf [options] IN OUT".split()
    assert verb_parsers["machinetype"].format_usage().rstrip().endswith("[NAME] [FACTORY ...]")
    assert verb_parsers["apel-sync"].format_usage().rstrip().endswith("[YYYYMM ...]")


def test_help_for_an_unknown_command_exits_2_and_lists_the_commands() -> None:
    code, out, err = run_vac("help", "frobnicate")
    assert (code, out) == (2, "")
    assert "frobnicate" in err.splitlines()[0] and "  vac machines [FACTORY ...]" in err


def test_options_of_other_commands_are_still_accepted_after_a_command(tmp_path: Path) -> None:
    # Vac 03 took every option with every command; `--help` only stops listing them.
    Paths(tmp_path).ensure_state_dirs()
    assert run_vac("drain", "--prefix", str(tmp_path), "-H", "-J", "-t", "3", "-s", "other", "-l")[0] == 0
    assert Paths(tmp_path).drain_file.is_file()


def test_extra_words_after_a_command_that_takes_none_exit_2(tmp_path: Path) -> None:
    Paths(tmp_path).ensure_state_dirs()
    with pytest.raises(SystemExit) as exit_info:
        main(["--prefix", str(tmp_path), "drain", "now"], out=io.StringIO(), err=io.StringIO())
    assert exit_info.value.code == 2
    assert not Paths(tmp_path).drain_file.exists()


def test_every_command_is_a_listing_a_local_verb_or_help() -> None:
    names = {verb.name for verb in VERBS} | {alias for verb in VERBS for alias in verb.aliases}
    assert names == set(LISTING_KINDS) | set(LOCAL_COMMANDS) | {"help"}


# ---------------------------------------------------------------------- bash completion


def completion_list(name: str) -> list[str]:
    for line in COMPLETION.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith(f"local {name}="):
            return line.split("=", 1)[1].strip().strip('"').split()
    raise AssertionError(f"{COMPLETION} has no {name}= list")


def test_the_completion_knows_exactly_the_parsers_commands_and_options() -> None:
    parser, verb_parsers = build_parsers()
    assert sorted(completion_list("commands")) == sorted(verb_parsers)
    parser_options = {flag for action in parser._actions for flag in action.option_strings}
    assert sorted(completion_list("options")) == sorted(parser_options)
    valued = {flag for action in parser._actions for flag in action.option_strings if action.nargs is None}
    assert sorted(completion_list("valued")) == sorted(valued)


def complete(words: list[str], cwd: Path) -> list[str]:
    """COMPREPLY of bash running the completion for `words` (the last is being completed)."""
    quoted = " ".join("'" + word.replace("'", "'\\''") + "'" for word in words)
    script = (f"source {str(COMPLETION)!r}\nCOMP_WORDS=({quoted})\nCOMP_CWORD={len(words) - 1}\n"
              "_vac\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    completed = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                               timeout=30, cwd=cwd)
    assert completed.returncode == 0, completed.stderr
    return [line for line in completed.stdout.splitlines() if line]


@pytest.mark.allow_commands("bash")
def test_bash_completes_commands_options_and_files(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    (tmp_path / "squid.conf.vac").write_text("")
    (tmp_path / "usercert.pem").write_text("")
    assert complete(["vac", "ma"], tmp_path) == ["machines", "machinetypes", "machinetype"]
    assert complete(["vac", "-J", "--prefix", "/srv/vac", "st"], tmp_path) == ["status"]
    assert complete(["vac", "help", "dr"], tmp_path) == ["drain"]
    assert complete(["vac", "machines", "--ti"], tmp_path) == ["--timeout"]
    assert complete(["vac", "squid-conf", "squ"], tmp_path) == ["squid.conf.vac"]
    assert complete(["vac", "-c", "user"], tmp_path) == ["usercert.pem"]
    (tmp_path / "host key.pem").write_text("")
    assert complete(["vac", "proxy-init", "-k", "host"], tmp_path) == ["host key.pem"]  # one word, space and all
    assert complete(["vac", "-t", ""], tmp_path) == []
    assert complete(["vac", "status", ""], tmp_path) == []


# ---------------------------------------------------------------------- vac status when vacd is not running


@pytest.fixture
def factory_with_status(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    document = dict(status_document(), time=time.time() - 125)
    paths.status_file.write_text(json.dumps(document))
    return paths


@pytest.fixture
def pid_file_held(factory_with_status: Paths) -> Iterator[PidFile]:
    """The pid file as a running vacd holds it (vacd.daemoncli.PidFile, this process's pid)."""
    pid_file = PidFile(factory_with_status.pid_file)
    pid_file.acquire()
    try:
        yield pid_file
    finally:
        pid_file.release()


@pytest.mark.allow_commands(sys.executable)
def test_status_says_when_vacd_is_not_running_and_still_shows_the_last_status(factory_with_status: Paths) -> None:
    completed = run_vac_process("--prefix", str(factory_with_status.prefix), "status")
    assert completed.returncode == 1
    assert completed.stderr.splitlines() == [
        f"vacd is not running: {factory_with_status.pid_file} does not exist",
        "the last status vacd wrote follows, written 2 min ago",
    ]
    assert completed.stdout.startswith("f1.example.com in space")


@pytest.mark.allow_commands(sys.executable)
def test_status_says_vacd_is_not_running_when_the_pid_file_outlived_it(factory_with_status: Paths) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           timeout=30)
    factory_with_status.pid_file.write_text(ended.stdout)
    write_heartbeat(factory_with_status, "loop", int(time.time()))
    code, out, err = run_vac("--prefix", str(factory_with_status.prefix), "status", "-J")
    assert code == 1
    assert err.splitlines()[0] == (
        f"vacd is not running: pid {ended.stdout.strip()} of {factory_with_status.pid_file} is not running "
        "(vacd stopped or was killed)"
    )
    assert json.loads(out)["factory"] == "f1.example.com"  # -J still prints the last status


def test_status_of_a_running_vacd_exits_0_with_nothing_on_stderr(pid_file_held: PidFile, factory_with_status: Paths) -> None:
    write_heartbeat(factory_with_status, "loop", int(time.time()) - 40)
    code, out, err = run_vac("--prefix", str(factory_with_status.prefix), "status")
    assert (code, err) == (0, "")
    assert out.startswith("f1.example.com in space")


def test_status_says_when_a_live_pid_has_stale_heartbeats(pid_file_held: PidFile, factory_with_status: Paths) -> None:
    for part in ("loop", "responder"):
        write_heartbeat(factory_with_status, part, int(time.time()) - 1200)
    code, _, err = run_vac("--prefix", str(factory_with_status.prefix), "status")
    assert code == 1
    assert err.splitlines()[0] == (
        f"vacd is not running: pid {os.getpid()} is running, but vacd's loop and responder have not beaten for "
        "20 min (vacd is stuck, or the pid is now another process's)"
    )


def test_status_takes_a_fresh_responder_heartbeat_for_a_live_vacd_in_a_long_pass(
    pid_file_held: PidFile, factory_with_status: Paths
) -> None:
    write_heartbeat(factory_with_status, "loop", int(time.time()) - 1200)
    write_heartbeat(factory_with_status, "responder", int(time.time()) - 3)
    assert run_vac("--prefix", str(factory_with_status.prefix), "status")[:3:2] == (0, "")


def test_status_of_a_vacd_that_has_not_written_its_status_yet(pid_file_held: PidFile, factory_with_status: Paths) -> None:
    factory_with_status.status_file.unlink()
    write_heartbeat(factory_with_status, "loop", int(time.time()))
    code, _, err = run_vac("--prefix", str(factory_with_status.prefix), "status")
    assert (code, err.strip()) == (1, f"no status yet: {factory_with_status.status_file} does not exist")


# ---------------------------------------------------------------------- a key file the admin cannot read


def can_run_as(user: str) -> Optional[str]:
    """Why this test cannot run commands as `user`, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to run a command as another user"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    try:
        user_group(user)
    except KeyError:
        return f"no user {user}"
    probe = run_script("vacd.cli:main", "--version", user=user)
    if probe.returncode != 0:
        return f"{user} cannot run this worktree's python: {probe.stderr.strip()[:200]}"
    return None


@pytest.fixture
def world_readable_prefix() -> Iterator[Path]:
    # pytest's tmp_path lies under a directory only root may enter.
    prefix = Path(tempfile.mkdtemp(prefix="vac-cli-"))
    prefix.chmod(0o755)
    try:
        yield prefix
    finally:
        shutil.rmtree(prefix)


def root_only_key(prefix: Path, port: int, auth: str) -> Path:
    key_file = prefix / "etc/vac-vacquery.key"
    write_config(prefix, port, [("f1.example.com", "127.0.0.1")],
                 extra=f"vacquery_key_file = {key_file}\nvacquery_auth = {auth}\n")
    (prefix / "etc").chmod(0o755)
    (prefix / "etc/vac.conf").chmod(0o644)
    key_file.write_bytes(SITE_KEY + b"\n")
    key_file.chmod(0o600)
    return key_file


@pytest.mark.allow_commands(sys.executable, "setpriv")
def test_a_non_root_listing_that_cannot_read_the_required_key_says_so_naming_the_file(
    world_readable_prefix: Path,
) -> None:
    reason = can_run_as("nobody")
    if reason:
        pytest.skip(reason)
    loopback = LoopbackSpace()
    try:
        loopback.serve("127.0.0.1", snapshot_of("f1.example.com", 2),
                       Authenticator(SITE_KEY, AuthMode.REQUIRED, nonce_source=os.urandom))
        key_file = root_only_key(world_readable_prefix, loopback.port, "required")
        started = time.monotonic()
        completed = run_vac_process("--prefix", str(world_readable_prefix), "-t", "5", "machines", user="nobody")
        elapsed = time.monotonic() - started
    finally:
        loopback.close()
    assert (completed.returncode, completed.stdout) == (1, "")
    assert completed.stderr.startswith(f"vac machines: {key_file}: cannot read VacQuery key: Permission denied\n")
    assert "vacquery_auth = required" in completed.stderr and "Traceback" not in completed.stderr
    assert elapsed < 5  # refused at once: no unsigned census waited out its timeout


@pytest.mark.allow_commands(sys.executable, "setpriv")
def test_a_non_root_listing_with_optional_auth_warns_naming_the_key_then_lists(world_readable_prefix: Path) -> None:
    reason = can_run_as("nobody")
    if reason:
        pytest.skip(reason)
    loopback = LoopbackSpace()
    try:
        loopback.serve("127.0.0.1", snapshot_of("f1.example.com", 2),
                       Authenticator(SITE_KEY, AuthMode.OPTIONAL, nonce_source=os.urandom))
        key_file = root_only_key(world_readable_prefix, loopback.port, "optional")
        completed = run_vac_process("--prefix", str(world_readable_prefix), "-t", "5", "machines", user="nobody")
    finally:
        loopback.close()
    assert completed.returncode == 0, completed.stderr
    # (A non-root census may also warn that its socket got a smaller buffer than asked.)
    assert completed.stderr.splitlines()[0] == (
        f"warning: sending unsigned queries (vacquery_auth = optional): {key_file}: cannot read VacQuery key: "
        "Permission denied"
    )
    assert [line.split()[0] for line in completed.stdout.splitlines()[1:]] == ["f1-00", "f1-01"]


@pytest.mark.allow_commands(sys.executable, "setpriv")
def test_a_non_root_drain_that_cannot_write_the_drain_file_names_it(world_readable_prefix: Path) -> None:
    reason = can_run_as("nobody")
    if reason:
        pytest.skip(reason)
    paths = Paths(world_readable_prefix)
    paths.ensure_state_dirs()
    for directory in (paths.state_dir, *paths.state_dir.parents):
        if directory == world_readable_prefix:
            break
        directory.chmod(0o755)
    completed = run_vac_process("--prefix", str(world_readable_prefix), "drain", user="nobody")
    assert (completed.returncode, completed.stdout) == (1, "")
    assert completed.stderr.startswith(f"vac drain: {paths.state_dir}") and "(run vac as root)" in completed.stderr
    assert "Traceback" not in completed.stderr and not paths.drain_file.exists()
