"""The typed configuration of one factory, how to load it, and how to show it.

Modules: this one holds the values (Settings, Machinetype, VacuumPipe, Config), the edge
function `load_config` (reads files, asks the host its name and processor count) and
`effective_config_text` (what `vacd --check-config` prints). The pure parser is
`vacd.configparse.parse_config`, built on `vacd.configini`; vacuum pipe expansion is
`vacd.pipes`. Rules:

* Values are frozen; a reload builds a new Config and the daemon swaps it in whole.
* Every default is Vac 03's (behaviour reference §2.2, §2.4, Appendix C) unless the
  field is one of vacd's additions, which are documented in man/vac.conf.5.
* Nothing at module level touches the host: the types are imported by core modules.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import re
import stat
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping, Optional, Sequence

from vacd.configini import HOST_FACTS_PATH, Location, RawConfig
from vacd.errors import ConfigErrors, ConfigProblem
from vacd.paths import Paths

log = logging.getLogger(__name__)

MACHINE_MODELS = ("cernvm3", "cernvm4", "vm-raw", "docker", "singularity")
VM_MACHINE_MODELS = ("cernvm3", "cernvm4", "vm-raw")
HYPERVISORS = ("auto", "kvm", "qemu")
# How a payload's verdicts back a machinetype off (vacd.scheduler.last_abort_times, issue 9 item 3).
ABORT_RULES = ("failure_rate", "vac03")
# The destinations vacd/logconfig.py implements (journal: syslog socket read by journald;
# stderr: running in the foreground).
LOG_DESTINATIONS = ("file", "syslog", "journal", "stderr")
VACQUERY_AUTH_MODES = ("required", "optional")
# Session tokens on the metadata server's non-cloud-init paths (vacd.guestapi.tokens).
METADATA_TOKEN_MODES = ("optional", "required")
MASK = "********"
# Prefixes of options whose values may carry secrets (tokens, passwords, host keys) and
# are masked wherever the effective configuration is shown (§11: Vac logged them).
SECRET_OPTION_PREFIXES = ("user_data_option_",)
_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@dataclass(frozen=True)
class FactoryAddress:
    """One entry of [settings] factories: a canonical FQDN and, optionally, a fixed address.

    vacd addition: `name=address` gives the address (IPv4 or IPv6) to query instead of
    resolving the name, for sites without reliable DNS and for tests on loopback.
    """

    name: str
    address: Optional[str] = None


@dataclass(frozen=True)
class Machinetype:
    """One [machinetype NAME] section with Vac 03's defaults (§2.4, acceptance 3).

    `user_data_options` and `user_data_files` already include the [settings] defaults
    (§2.2), overridden per name by the machinetype's own options of either kind.
    vacd additions: `root_kernel`, `root_initrd` and `kernel_command_line` (direct kernel
    boot, used by the test guest) and `vacuum_pipe` (the prefix of the pipe that made it).
    """

    name: str
    machinegroup: str
    machinetype_path: Path
    target_share: float = 0.0
    machine_model: str = "cernvm3"
    root_image: Optional[str] = None
    root_kernel: Optional[str] = None
    root_initrd: Optional[str] = None
    kernel_command_line: str = ""
    user_data: Optional[str] = None
    user_data_options: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets
    user_data_files: Mapping[str, str] = field(default_factory=dict)
    user_data_proxy: bool = False
    legacy_proxy: bool = False
    min_processors: int = 1
    max_processors: int = 1
    max_wallclock_seconds: int = 86400
    min_wallclock_seconds: int = 86400
    backoff_seconds: int = 10
    fizzle_seconds: int = 600
    heartbeat_file: Optional[str] = None
    heartbeat_seconds: int = 0
    accounting_fqan: Optional[str] = None
    machines_dir_days: float = 3.0
    disk_gb_per_processor: Optional[int] = None
    root_device: str = "vda"
    scratch_device: str = "vdb"
    image_signing_dn: Optional[str] = None
    root_image_sha256: Optional[str] = None  # lower-case hex; vacd addition (issue 11 item 1)
    cvmfs_repositories: tuple[str, ...] = ()
    tmp_binds: tuple[str, ...] = ()
    container_command: str = "/user_data"
    vacuum_pipe: Optional[str] = None

    def resolve_file(self, name: str) -> str:
        """Where a configured file is: URLs and absolute paths as given, else under files/.

        Vac 03 resolved relative root_image, user_data and user_data_file_* names against
        `<machinetype_path>/files/` (§1.11, §6.5); root_kernel and root_initrd do the same.
        This also fixes Vac's cernvm3 bug that used `<root_image>/files/` instead (§1.11).
        """
        if name.startswith("/") or _URL.match(name):
            return name
        return str(self.machinetype_path / "files" / name)

    @property
    def is_vm(self) -> bool:
        return self.machine_model in VM_MACHINE_MODELS


@dataclass(frozen=True)
class Settings:
    """The [settings] section with Vac 03's defaults (§2.2, Appendix C) and vacd's additions.

    `gocdb_sitename` is always filled (default: the space minus its first label);
    `gocdb_sitename_is_set` says whether the admin set it, since APEL records go to
    apel-outgoing only then (§7.1, acceptance 36).
    """

    vac_space: str
    factory_name: str
    total_processors: int
    host_processors: int
    gocdb_sitename: str
    description: str = ""
    factories: tuple[FactoryAddress, ...] = ()
    processors_per_superslot: int = 1
    mb_per_processor: int = 2048
    hs06_per_processor: Optional[float] = None
    disk_gb_per_processor: Optional[int] = None
    volume_group: Optional[str] = None
    overload_per_processor: float = 1.25
    shutdown_time: Optional[int] = None
    draining: bool = False
    udp_timeout_seconds: float = 10.0
    vacmon_hostport: tuple[str, ...] = ()
    version_logger: int = 1
    gocdb_cert_file: Optional[str] = None
    gocdb_key_file: Optional[str] = None
    root_public_key: str = "/root/.ssh/id_rsa.pub"
    singularity_user: Optional[str] = None
    fix_networking: bool = True
    forward_dev: Optional[str] = None
    machinefeatures_options: Mapping[str, str] = field(default_factory=dict)
    user_data_options: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets
    user_data_files: Mapping[str, str] = field(default_factory=dict)
    # vacd additions (documented in vac.conf.5)
    hypervisor: str = "auto"
    libvirt_uri: str = "qemu:///system"
    max_creations_per_cycle: int = 4
    cycle_seconds: float = 30.0
    # False replays Vac 03's loop (a pass only every cycle_seconds); for comparison benchmarks.
    wake_on_events: bool = True
    # "failure_rate": 300-699 back off at once, 700 and more only when they are most outcomes;
    # "vac03": any payload verdict of 300 or more backs off at once (Vac 03's rule, §4.4).
    abort_rule: str = "failure_rate"
    shutdown_grace_seconds: int = 30
    # Opt-in pre-emption (vacd/preemption.py): 0 is off, as Vac 03 never pre-empted.
    preemption_grace_seconds: int = 0
    preemption_margin_percent: float = 2.0
    max_preemptions_per_cycle: int = 4
    vacquery_port: int = 995
    vacquery_bind_address: str = "0.0.0.0"
    # One or more key files: the first signs, all are accepted (a key rotation, issue 9 item 6).
    vacquery_key_file: tuple[str, ...] = ()
    vacquery_auth: str = "required"
    metrics_address: Optional[str] = None
    # Serve the read-only /dashboard page and /dashboard.json beside /metrics (issue 14).
    dashboard: bool = False
    joboutputs_quota_bytes: int = 100 * 1024 * 1024
    # All machines' joboutputs together (issue 11 item 3; vacd.guestapi.joboutputstotal).
    joboutputs_total_bytes: int = 20 * 1024 * 1024 * 1024
    metadata_port: int = 80
    # "required": the metadata paths cloud-init does not read need a session token.
    metadata_tokens: str = "optional"
    # Guest server processes (vacd.guestapi.workers): None is `auto`, 0 vacd's own guest thread.
    guest_api_processes: Optional[int] = None
    log_destination: str = "file"
    # Free space the state, tmp and imagecache directories must keep for creations to go on
    # (issue 8 item 4): the larger of the two; 0 turns either off.
    min_free_disk_mb: int = 1024
    min_free_disk_percent: float = 5.0
    # Image cache eviction (vacd/imageeviction.py): unused images go after imagecache_days;
    # imagecache_max_gb caps the cache (0: no cap).
    imagecache_days: float = 14.0
    imagecache_max_gb: int = 0
    gocdb_sitename_is_set: bool = False

    @property
    def num_machine_slots(self) -> int:
        """Vac 03 made one slot per host processor (§1.5)."""
        return self.host_processors


@dataclass(frozen=True)
class VacuumPipe:
    """One [vacuum_pipe PREFIX] section (§2.3); its document is fetched elsewhere.

    `options` are the section's other options, copied into every machinetype the pipe
    generates unless that machinetype's own section sets them (§8 step 3).
    """

    prefix: str
    url: str
    target_share: float = 0.0
    options: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold secrets


@dataclass(frozen=True)
class Config:
    """One complete, valid reading of the configuration.

    `machinetypes` holds the [machinetype] sections; `vacd.pipes.apply_pipes` returns a
    Config that also holds the machinetypes the pipes generate. `raw` keeps every option
    with its file and line so that checks made later (a volume group that does not exist,
    a pipe's bad value) can still point at the line to edit; it holds secrets: never log it.
    """

    settings: Settings
    machinetypes: Mapping[str, Machinetype]
    warnings: tuple[str, ...] = ()
    sources: tuple[Path, ...] = ()
    vacuum_pipes: tuple[VacuumPipe, ...] = ()
    raw: RawConfig = field(default_factory=RawConfig, repr=False)
    paths: Paths = field(default_factory=Paths)

    def locate(self, section: str, option: Optional[str] = None) -> Location:
        return self.raw.locate(section, option)

    def problem_at(self, section: str, option: Optional[str], reason: str) -> ConfigProblem:
        """A ConfigProblem located at the option's line (or its section's header)."""
        where = self.locate(section, option)
        return ConfigProblem(where.path, where.line, section, option, reason)


# A vac.conf is a few kilobytes; a bigger file is a mistake (a log or an image linked by
# accident) and must not be read into memory whole.
MAX_CONFIG_FILE_BYTES = 16 * 1024 * 1024


def _reason(error: OSError) -> str:
    """`cannot read: too many levels of symbolic links`: strerror, lower-cased as in our messages."""
    text = error.strerror or str(error)
    return "cannot read: " + text[:1].lower() + text[1:]


def _config_dir_candidates(config_dir: Path, problems: list[ConfigProblem]) -> list[Path]:
    try:
        names = os.listdir(config_dir)
    except FileNotFoundError:
        return []
    except OSError as error:
        # A loop, a file where the directory should be, no permission: the admin must know,
        # since the options in it would be silently missing (issue 8 item 9).
        problems.append(ConfigProblem(str(config_dir), None, None, None, _reason(error)))
        return []
    # Vac 03 read every name os.listdir gave that ends in .conf, hidden ones included, in
    # sorted order (no shell glob): so does vacd, and says so of a hidden one (issue 10 item 4).
    return [config_dir / name for name in sorted(names) if name.endswith(".conf")]


def _read_config_file(path: Path) -> Optional[tuple[tuple[int, int], bytes]]:
    """The file's (device, inode) and bytes, None if it does not exist; OSError or ValueError if unusable."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise OSError(errno.ENOENT, "symbolic link to a missing file") from None
        return None
    if stat.S_ISDIR(status.st_mode):
        raise OSError(errno.EISDIR, "is a directory, not a file")
    if not stat.S_ISREG(status.st_mode):
        # A FIFO or device would block the reader or never end.
        raise OSError(errno.EINVAL, "not a regular file")
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_FILE_BYTES + 1)
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_CONFIG_FILE_BYTES // (1024 * 1024)} MiB")
    return (status.st_dev, status.st_ino), data


def _same_file(one: Path, other: Path) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


def source_warnings(paths: Paths, sources: Sequence[tuple[str, str]]) -> list[str]:
    """What about the files read could surprise an admin coming from Vac 03."""
    warnings = []
    read = {path for path, _ in sources}
    for path, _ in sources:
        if Path(path).parent == paths.config_dir and Path(path).name.startswith("."):
            warnings.append(f"{path}: read although hidden, as Vac 03 read every *.conf in {paths.config_dir}")
    vac_run_file = paths.under_prefix("/var/run/vac.conf")
    for file in paths.run_config_files:
        if str(file) in read and file != vac_run_file and not _same_file(file, vac_run_file):
            warnings.append(f"{file}: read, but Vac 03 read only {vac_run_file} (here not the same file)")
    return warnings


def read_config_sources(paths: Paths) -> tuple[list[tuple[str, str]], list[ConfigProblem]]:
    """The config files' texts in precedence order (§2.1, acceptance 1); missing ones skipped.

    Every other way a file can fail (a symlink loop, a directory, no permission, bytes that
    are not UTF-8, a FIFO) is a ConfigProblem naming the file, never an exception. Vac 03
    skipped such a file without a word; vacd refuses, since its options would be missing.
    """
    problems: list[ConfigProblem] = []
    candidates = _config_dir_candidates(paths.config_dir, problems)
    candidates.append(paths.config_file)
    candidates.extend(paths.run_config_files)
    sources: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    for candidate in candidates:
        try:
            found = _read_config_file(candidate)
            if found is None:
                continue
            identity, data = found
            # /var/run is usually a link to /run: read the same file once only.
            if identity in seen:
                continue
            seen.add(identity)
            sources.append((str(candidate), data.decode("utf-8")))
        except UnicodeDecodeError as error:
            problems.append(ConfigProblem(str(candidate), None, None, None,
                                          f"not UTF-8 text (byte {error.start})"))
        except OSError as error:
            problems.append(ConfigProblem(str(candidate), None, None, None, _reason(error)))
    return sources, problems


def host_name() -> str:
    """This host's name as Vac 03 took it: os.uname()[1], not socket.getfqdn() (issue 10 item 4).

    Vac 03 named its machines, answered the census and wrote APEL's SubmitHost with the
    kernel's node name; where DNS gives another name, getfqdn() would rename the factory.
    """
    return os.uname()[1]


def load_config(paths: Paths, *, host_fqdn: Optional[str] = None,
                host_cpu_count: Optional[int] = None) -> Config:
    """Read and validate this factory's configuration files.

    Host facts not given are read from the host (its name as host_name(), processor count).
    Raises ConfigErrors with every problem found.
    """
    # Imported here: vacd.configparse imports this module's types.
    from vacd.configparse import parse_config

    if host_fqdn is None:
        host_fqdn = host_name()
    if host_cpu_count is None:
        host_cpu_count = os.cpu_count() or 1
    sources, problems = read_config_sources(paths)
    try:
        config = parse_config(sources, host_fqdn=host_fqdn, host_cpu_count=host_cpu_count, paths=paths)
    except ConfigErrors as errors:
        raise ConfigErrors(problems + list(errors.problems)) from None
    problems.extend(_host_problems(config))
    if problems:
        raise ConfigErrors(problems)
    extra_warnings = source_warnings(paths, sources)
    if extra_warnings:
        config = dataclasses.replace(config, warnings=tuple(extra_warnings) + config.warnings)
    log.debug("configuration read sources=%s machinetypes=%d warnings=%d",
              ",".join(str(source) for source in config.sources), len(config.machinetypes),
              len(config.warnings))
    return config


def _host_problems(config: Config) -> list[ConfigProblem]:
    """Checks that need the host's user database (§2.1: singularity_user missing or root)."""
    user = config.settings.singularity_user
    if user is None:
        return []
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return [config.problem_at("settings", "singularity_user", f"no such user {user!r} on this host")]
    if uid == 0:
        return [config.problem_at("settings", "singularity_user", "must not be a user with uid 0")]
    return []


# How each yes/no option is shown: in the word Vac 03 read for it (draining took only
# "yes", the proxy switches only "true", fix_networking turned off only with "false"), so
# the text means the same to Vac 03 and reads back the same in vacd.
_BOOLEAN_WORDS = {"draining": ("yes", "no")}
_DEFAULT_BOOLEAN_WORDS = ("true", "false")


def _format_value(value: object, option: str = "") -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bool):
        yes, no = _BOOLEAN_WORDS.get(option, _DEFAULT_BOOLEAN_WORDS)
        return yes if value else no
    if isinstance(value, tuple):
        return " ".join(str(item) for item in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _shown(option: str, value: str) -> str:
    if option.startswith(SECRET_OPTION_PREFIXES):
        return MASK
    # A multi-line value continues on indented lines, as it was written (§2.1).
    return value.replace("\n", "\n    ")


# Options read but not acted on by this version (vacd.configparse reports each one set);
# the effective text marks them so that none looks effective (issue 10 item 4).
NOT_ACTED_ON = {
    "version_logger": "no version messages are sent",
    "gocdb_cert_file": "no GOCDB updates are sent",
    "gocdb_key_file": "no GOCDB updates are sent",
    "fix_networking": "Vac 03's network repair commands are never run",
}


def fixed_bug_notes(machinetype: Machinetype) -> dict[str, str]:
    """Where vacd creates what Vac 03 failed to create, or refuses what it created: option -> what to say.

    These are Vac 03 bugs vacd fixes (behaviour reference §1.11), so the factory creates
    machines Vac 03 did not; the effective configuration says so beside the option.
    """
    notes = {}
    if machinetype.target_share > 0 and machinetype.machine_model == "cernvm4":
        notes["machine_model"] = ("Vac 03.01 failed every creation of cernvm4 ('not supported'); "
                                  "vacd creates it as cernvm3")
    image = machinetype.root_image
    if (machinetype.target_share > 0 and machinetype.machine_model == "cernvm3" and image is not None
            and machinetype.resolve_file(image) != image):
        notes["root_image"] = (f"Vac 03 looked for it at {image}/files/{image} (its bug) and failed every creation; "
                               f"vacd uses {machinetype.resolve_file(image)}")
    if machinetype.image_signing_dn is not None:
        # Refuses what Vac 03 created, when it was set as image_signing_dn (§1.12 [BUG]).
        notes["image_signing_dn"] = ("Vac 03 enforced it only when set as cernvm_signing_dn; vacd refuses any "
                                     "root_image not signed by a matching DN, under either name")
    return notes


def _section_lines(header: str, options: Sequence[tuple[str, Optional[str]]],
                   notes: Optional[Mapping[str, str]] = None) -> list[str]:
    lines = [f"[{header}]"]
    # Unset and empty values are left out: reading them back gives the same defaults.
    for option, value in options:
        if not value:
            continue
        if option in NOT_ACTED_ON:
            lines.append(f"# {option}: NOT IMPLEMENTED in this version, {NOT_ACTED_ON[option]}")
        if notes and option in notes:
            lines.append(f"# {option}: {notes[option]}")
        lines.append(f"{option} = {_shown(option, value)}")
    lines.append("")
    return lines


# Fields shown differently from `option = value`.
_SETTINGS_SPECIAL = ("factories", "machinefeatures_options", "user_data_options", "user_data_files",
                     "gocdb_sitename", "gocdb_sitename_is_set")
_MACHINETYPE_SPECIAL = ("name", "user_data_options", "user_data_files", "vacuum_pipe")


def _prefixed(prefix: str, mapping: Mapping[str, str]) -> list[tuple[str, Optional[str]]]:
    return [(prefix + name, value) for name, value in sorted(mapping.items())]


def effective_config_text(config: Config) -> str:
    """The effective configuration as vac.conf text, defaults included, secrets masked.

    Values of user_data_option_* become `********` (Vac 03 logged them, §11). Reading the
    text back gives the same Settings and Machinetypes apart from the masked values.
    """
    settings = config.settings
    lines = ["# Effective vacd configuration; user_data_option_* values are masked.",
             "# Read from: " + (" ".join(str(source) for source in config.sources) or "(nothing)"), ""]
    options: list[tuple[str, Optional[str]]] = []
    for settings_field in fields(settings):
        if settings_field.name not in _SETTINGS_SPECIAL:
            options.append((settings_field.name, _format_value(getattr(settings, settings_field.name),
                                                                settings_field.name)))
    options.append(("factories", " ".join(
        factory.name if factory.address is None else f"{factory.name}={factory.address}"
        for factory in settings.factories)))
    options.extend(_prefixed("machinefeatures_option_", settings.machinefeatures_options))
    options.extend(_prefixed("user_data_option_", settings.user_data_options))
    options.extend(_prefixed("user_data_file_", settings.user_data_files))
    section = _section_lines("settings", options)
    if settings.gocdb_sitename_is_set:
        section.insert(-1, f"gocdb_sitename = {settings.gocdb_sitename}")
    else:
        section.insert(-1, f"# gocdb_sitename = {settings.gocdb_sitename} (derived from vac_space)")
    lines.extend(section)
    for pipe in config.vacuum_pipes:
        pipe_options: list[tuple[str, Optional[str]]] = [
            ("vacuum_pipe_url", pipe.url), ("target_share", _format_value(pipe.target_share))]
        pipe_options.extend(sorted(pipe.options.items()))
        lines.extend(_section_lines(f"vacuum_pipe {pipe.prefix}", pipe_options))
    for machinetype in config.machinetypes.values():
        if machinetype.vacuum_pipe is not None:
            lines.append(f"# generated by [vacuum_pipe {machinetype.vacuum_pipe}]")
        machinetype_options = [
            (machinetype_field.name,
             _format_value(getattr(machinetype, machinetype_field.name), machinetype_field.name))
            for machinetype_field in fields(machinetype) if machinetype_field.name not in _MACHINETYPE_SPECIAL]
        machinetype_options.extend(_prefixed("user_data_option_", machinetype.user_data_options))
        machinetype_options.extend(_prefixed("user_data_file_", machinetype.user_data_files))
        lines.extend(_section_lines(f"machinetype {machinetype.name}", machinetype_options,
                                    fixed_bug_notes(machinetype)))
    return "\n".join(lines).rstrip("\n") + "\n"


__all__ = [
    "Config", "FactoryAddress", "HOST_FACTS_PATH", "Machinetype", "MACHINE_MODELS", "Settings",
    "VM_MACHINE_MODELS", "VacuumPipe", "effective_config_text", "host_name", "load_config", "read_config_sources",
]
