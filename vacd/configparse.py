"""Validate vac.conf sources into one Config: Settings, Machinetypes and VacuumPipes.

The pure half of configuration reading: (path, text) sources and the host's facts in;
one Config, or one ConfigErrors listing every problem, out. Rules:

* Pure: no file, host, clock or network access. Host facts and Paths are arguments.
* Vac 03's option names, defaults and checks (behaviour reference §2.1 to §2.5); its
  legacy names keep working with a warning; options it ignored give warnings, not errors.
* Each problem names the file, line, section and option to edit (via vacd.configini).
* vacd's additions (§2.2 of vac.conf.5: factory_name, host_processors, hypervisor, …) are
  validated here like Vac's own options.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Mapping, Optional, Sequence

from vacd.config import (ABORT_RULES, HYPERVISORS, LOG_DESTINATIONS, MACHINE_MODELS, METADATA_TOKEN_MODES,
                         VACQUERY_AUTH_MODES, VM_MACHINE_MODELS,
                         Config, FactoryAddress, Machinetype, Settings, VacuumPipe)
from vacd.configini import (Findings, Location, OptionSource, RawConfig, SectionReader,
                            ascii_lower, ascii_split, read_sources, to_absolute_path, to_boolean, to_choice, to_integer,
                            to_matching, to_number, to_words)
from vacd.configvalues import (COMMAND_WORD, CVMFS_REPOSITORY, DEVICE_NAME, DOCKER_IMAGE, DRAINING, FIX_NETWORKING,
                               HOSTNAME, INTERFACE_NAME, JOBOUTPUTS_FILE_NAME, LIBVIRT_URI, MACHINETYPE_NAME,
                               MAX_CYCLE_SECONDS, MAX_DAYS, MAX_DISK_GB_PER_PROCESSOR, MAX_DISK_MB, MAX_EPOCH_SECONDS,
                               MAX_HS06_PER_PROCESSOR, MAX_IMAGECACHE_DAYS, MAX_JOBOUTPUTS_QUOTA_BYTES,
                               MAX_JOBOUTPUTS_TOTAL_BYTES, MAX_MB_PER_PROCESSOR, MAX_OVERLOAD_PER_PROCESSOR,
                               MAX_PROCESSORS, MAX_SHUTDOWN_GRACE_SECONDS, MAX_UDP_TIMEOUT_SECONDS, MIN_CYCLE_SECONDS,
                               OPTION_NAME_SUFFIX, PIPE_URL, PROXY_SWITCH, SAFE_ABSOLUTE_PATH, SPACE_NAME, USER_NAME,
                               VOLUME_GROUP, to_duration, to_duration_from_one, to_factories, to_host_port,
                               to_ip_address, to_key_files, to_optional_regular_expression, to_optional_sha256,
                               to_guest_api_processes, to_port, to_share, to_vacmon_hostports,
                               to_version_logger)
from vacd.errors import ConfigErrors, ConfigProblem
from vacd.paths import Paths


# Options Vac 03 accepted but no longer used: each gives a warning (§2.2, §2.4).
_IGNORED_SETTINGS = (
    ("domain_type", "Vac 03 no longer used it"),
    ("total_machines", "Vac 03 no longer used it; the slots follow host_processors"),
    ("delete_old_files", "Vac 03 no longer used it"),
    ("mb_per_machine", "Vac 03 never read it either; set mb_per_processor"),
)
_IGNORED_MACHINETYPE = (
    ("rootpublickey", "set root_public_key in [settings]"),
    ("root_public_key", "moved to [settings] in Vac 03"),
    ("log_machineoutputs", "Vac 03 no longer used it"),
    ("user_data_proxy_cert", "user_data_proxy = yes uses <machinetype_path>/x509cert.pem"),
    ("user_data_proxy_key", "user_data_proxy = yes uses <machinetype_path>/x509key.pem"),
    ("vacuum_pipe_url", "since Vac 03.00 pipes are [vacuum_pipe PREFIX] sections"),
)
_LEGACY_SECTIONS = ("factories", "targetshares")

# Each option with deprecated names: all its names in the order Vac 03's readConf tried
# them, the first one set winning (vac/shared.py; behaviour reference §2.5). Vac took the
# legacy name first except for processors_per_superslot, so the same vac.conf gives the
# same value here.
VAC_ORDER: Mapping[str, tuple[str, ...]] = {
    "total_processors": ("cpu_total", "total_processors"),
    "overload_per_processor": ("overload_per_cpu", "overload_per_processor"),
    "disk_gb_per_processor": ("scratch_gb", "disk_gb_per_cpu", "disk_gb_per_processor"),
    "processors_per_superslot": ("processors_per_superslot", "vcpu_per_machine", "cpu_per_machine"),
    "mb_per_processor": ("mb_per_cpu", "mb_per_processor"),
    "hs06_per_processor": ("hs06_per_cpu", "hs06_per_processor"),
    "image_signing_dn": ("cernvm_signing_dn", "image_signing_dn"),
    "machine_model": ("vm_model", "machine_model"),
    "machines_dir_days": ("machineoutputs_days", "machines_dir_days"),
}


def _reader(raw: RawConfig, section: str, findings: Findings) -> SectionReader:
    return SectionReader(section, raw.options(section), frozenset(raw.sections.get(section, {})),
                         raw.headers.get(section, Location("<unknown>")), findings)


def _optional_text(reader: SectionReader, option: str) -> Optional[str]:
    text = reader.raw(option)
    return text.strip() or None if text is not None else None


def _read_settings(raw: RawConfig, host_fqdn: str, host_cpu_count: int, paths: Paths,
                   findings: Findings, first_path: str) -> Optional[Settings]:
    if "settings" not in raw.sections:
        miscased = [section for section in raw.sections if section.strip().lower() == "settings"]
        reason = "required section missing"
        if miscased:
            reason += f" (found [{miscased[0]}]: section names are case-sensitive)"
        where = raw.headers[miscased[0]] if miscased else Location(first_path)
        findings.problems.append(_problem(where, "settings", None, reason))
        return None
    reader = _reader(raw, "settings", findings)
    before = len(findings.problems)
    for option, reason in _IGNORED_SETTINGS:
        reader.ignore(option, reason)

    vac_space = reader.get("vac_space", "", partial(to_matching, pattern=SPACE_NAME, what="a space name"))
    if not reader.has("vac_space"):
        reader.problem("vac_space", "required option missing")
    configured_name = reader.raw("factory_name")
    factory_name = (configured_name if configured_name is not None else host_fqdn).strip().lower().rstrip(".")
    if configured_name is None and "." not in factory_name:
        reader.problem("factory_name", f"this host's name {host_fqdn!r} has no dot: Vac needs a fully "
                                       "qualified name; set factory_name")
    elif configured_name is None and host_fqdn.strip() != factory_name:
        # Vac 03 used os.uname()[1] as it was written in machine names (F1-00.Example.Org),
        # census replies and APEL's SubmitHost; vacd's names are lower case, so the factory
        # would change its name without a word.
        reader.problem("factory_name", f"this host's name {host_fqdn!r} is not in lower case: Vac 03 used it as "
                                       "written in its machine names, census and APEL records and vacd would not; "
                                       f"set factory_name = {factory_name} to accept the lower-case names")
    elif not HOSTNAME.fullmatch(factory_name) or "." not in factory_name:
        reader.problem("factory_name", f"expected a fully qualified host name, got {factory_name!r}")
    if vac_space and vac_space.lower() == factory_name:
        reader.problem("vac_space", "must differ from this factory's name (§1.1 of the Vac guide)")

    host_processors = reader.get("host_processors", min(host_cpu_count, MAX_PROCESSORS),
                                 partial(to_integer, minimum=1, maximum=MAX_PROCESSORS))
    if host_processors > host_cpu_count:
        reader.warn("host_processors", f"{host_processors} is more than this host's {host_cpu_count} "
                                       "processors: only for tests and demos")
    total_option = reader.renamed("total_processors", VAC_ORDER["total_processors"])
    total_processors = reader.get(total_option, host_processors,
                                  partial(to_integer, minimum=1, maximum=MAX_PROCESSORS))
    if total_processors > host_processors:
        reader.problem(total_option, f"must be <= host_processors ({host_processors}), got {total_processors}")
    superslot_option = reader.renamed("processors_per_superslot", VAC_ORDER["processors_per_superslot"])
    processors_per_superslot = reader.get(superslot_option, 1,
                                          partial(to_integer, minimum=1, maximum=MAX_PROCESSORS))
    if processors_per_superslot > total_processors:
        reader.warn(superslot_option, f"{processors_per_superslot} is more than total_processors "
                                      f"({total_processors}): no superslot can be filled")

    gocdb_sitename = _optional_text(reader, "gocdb_sitename")
    gocdb_cert_file = reader.get("gocdb_cert_file", None, to_absolute_path)
    gocdb_key_file = reader.get("gocdb_key_file", None, to_absolute_path)
    if (gocdb_cert_file is None) != (gocdb_key_file is None):
        reader.warn("gocdb_cert_file" if gocdb_cert_file else "gocdb_key_file",
                    "GOCDB updates need both gocdb_cert_file and gocdb_key_file")
    singularity_user = reader.get("singularity_user", None,
                                  partial(to_matching, pattern=USER_NAME, what="a user name"))
    if singularity_user == "root":
        reader.problem("singularity_user", "must not be root (Vac kills this user's stray processes)")
    no_factories: tuple[FactoryAddress, ...] = ()
    factories = reader.get("factories", no_factories, partial(to_factories, factory_name=factory_name))
    if factories and factory_name not in {factory.name for factory in factories}:
        reader.warn("factories", f"does not list this factory ({factory_name}): its own machines "
                                 "will be missing from the space's shares")

    settings = Settings(
        vac_space=vac_space,
        factory_name=factory_name,
        total_processors=total_processors,
        host_processors=host_processors,
        gocdb_sitename=gocdb_sitename or vac_space.partition(".")[2],
        gocdb_sitename_is_set=gocdb_sitename is not None,
        description=reader.raw("description") or "",
        factories=factories,
        processors_per_superslot=processors_per_superslot,
        mb_per_processor=reader.get(reader.renamed("mb_per_processor", VAC_ORDER["mb_per_processor"]), 2048,
                                    partial(to_integer, minimum=1, maximum=MAX_MB_PER_PROCESSOR)),
        hs06_per_processor=reader.get(reader.renamed("hs06_per_processor", VAC_ORDER["hs06_per_processor"]), None,
                                      partial(to_number, positive=True, maximum=MAX_HS06_PER_PROCESSOR)),
        disk_gb_per_processor=reader.get(
            reader.renamed("disk_gb_per_processor", VAC_ORDER["disk_gb_per_processor"]), None,
            partial(to_integer, minimum=0, maximum=MAX_DISK_GB_PER_PROCESSOR)),
        volume_group=reader.get("volume_group", None,
                                partial(to_matching, pattern=VOLUME_GROUP, what="an LVM volume group name")),
        overload_per_processor=reader.get(reader.renamed("overload_per_processor", VAC_ORDER["overload_per_processor"]),
                                          1.25, partial(to_number, positive=True, maximum=MAX_OVERLOAD_PER_PROCESSOR)),
        shutdown_time=reader.get("shutdown_time", None, partial(to_integer, minimum=0, maximum=MAX_EPOCH_SECONDS)),
        draining=reader.get("draining", False, DRAINING),
        udp_timeout_seconds=reader.get("udp_timeout_seconds", 10.0,
                                       partial(to_number, positive=True, maximum=MAX_UDP_TIMEOUT_SECONDS)),
        vacmon_hostport=reader.get("vacmon_hostport", (), to_vacmon_hostports),
        version_logger=reader.get("version_logger", 1, partial(to_version_logger, reader=reader)),
        gocdb_cert_file=gocdb_cert_file,
        gocdb_key_file=gocdb_key_file,
        root_public_key=reader.get("root_public_key", str(paths.under_prefix("/root/.ssh/id_rsa.pub")),
                                   to_absolute_path),
        singularity_user=singularity_user,
        fix_networking=reader.get("fix_networking", True, FIX_NETWORKING),
        forward_dev=reader.get("forward_dev", None,
                               partial(to_matching, pattern=INTERFACE_NAME, what="a network interface name")),
        machinefeatures_options=reader.prefixed("machinefeatures_option_", OPTION_NAME_SUFFIX),
        user_data_options=reader.prefixed("user_data_option_", OPTION_NAME_SUFFIX),
        user_data_files=reader.prefixed("user_data_file_", OPTION_NAME_SUFFIX),
        hypervisor=reader.get("hypervisor", "auto", partial(to_choice, choices=HYPERVISORS)),
        libvirt_uri=reader.get("libvirt_uri", "qemu:///system",
                               partial(to_matching, pattern=LIBVIRT_URI, what="a libvirt URI")),
        max_creations_per_cycle=reader.get("max_creations_per_cycle", 4,
                                           partial(to_integer, minimum=1, maximum=MAX_PROCESSORS)),
        cycle_seconds=reader.get("cycle_seconds", 30.0, partial(to_number, minimum=MIN_CYCLE_SECONDS,
                                                                maximum=MAX_CYCLE_SECONDS)),
        wake_on_events=reader.get("wake_on_events", True, to_boolean),
        abort_rule=reader.get("abort_rule", "failure_rate", partial(to_choice, choices=ABORT_RULES)),
        shutdown_grace_seconds=reader.get("shutdown_grace_seconds", 30,
                                          partial(to_integer, minimum=0, maximum=MAX_SHUTDOWN_GRACE_SECONDS)),
        preemption_grace_seconds=reader.get("preemption_grace_seconds", 0,
                                            partial(to_integer, minimum=0, maximum=MAX_SHUTDOWN_GRACE_SECONDS)),
        preemption_margin_percent=reader.get("preemption_margin_percent", 2.0,
                                             partial(to_number, minimum=0.0, maximum=100.0)),
        max_preemptions_per_cycle=reader.get("max_preemptions_per_cycle", 4,
                                             partial(to_integer, minimum=1, maximum=MAX_PROCESSORS)),
        vacquery_port=reader.get("vacquery_port", 995, to_port),
        vacquery_bind_address=reader.get("vacquery_bind_address", "0.0.0.0", to_ip_address),
        vacquery_key_file=reader.get("vacquery_key_file", (), to_key_files),
        vacquery_auth=reader.get("vacquery_auth", "required", partial(to_choice, choices=VACQUERY_AUTH_MODES)),
        metrics_address=reader.get("metrics_address", None, to_host_port),
        dashboard=reader.get("dashboard", False, to_boolean),
        joboutputs_quota_bytes=reader.get("joboutputs_quota_bytes", 100 * 1024 * 1024,
                                          partial(to_integer, minimum=0, maximum=MAX_JOBOUTPUTS_QUOTA_BYTES)),
        joboutputs_total_bytes=reader.get("joboutputs_total_bytes", 20 * 1024 * 1024 * 1024,
                                          partial(to_integer, minimum=0, maximum=MAX_JOBOUTPUTS_TOTAL_BYTES)),
        metadata_port=reader.get("metadata_port", 80, to_port),
        metadata_tokens=reader.get("metadata_tokens", "optional", partial(to_choice, choices=METADATA_TOKEN_MODES)),
        guest_api_processes=reader.get("guest_api_processes", None, to_guest_api_processes),
        log_destination=reader.get("log_destination", "file", partial(to_choice, choices=LOG_DESTINATIONS)),
        min_free_disk_mb=reader.get("min_free_disk_mb", 1024, partial(to_integer, minimum=0,
                                                                      maximum=MAX_DISK_MB)),
        min_free_disk_percent=reader.get("min_free_disk_percent", 5.0, partial(to_number, minimum=0, maximum=100)),
        imagecache_days=reader.get("imagecache_days", 14.0, partial(to_number, positive=True,
                                                                    maximum=MAX_IMAGECACHE_DAYS)),
        imagecache_max_gb=reader.get("imagecache_max_gb", 0, partial(to_integer, minimum=0, maximum=MAX_DISK_MB)),
    )
    if settings.dashboard and not settings.metrics_address:
        reader.warn("dashboard", "no page is served without metrics_address (the dashboard is served there)")
    _check_unimplemented_settings(reader)
    reader.warn_unknown("[settings]")
    return settings if len(findings.problems) == before else None


NOT_IMPLEMENTED = "NOT IMPLEMENTED in this version"


def _check_unimplemented_settings(reader: SectionReader) -> None:
    """Options Vac 03 acted on that this version reads but does not act on (issue 10 item 4).

    None may look effective: where the factory would differ in what it runs or how its
    machines' disks are made, the option is an error (the admin removes it knowingly);
    where only a report to outside is lost, it is a loud warning.
    """
    for option in ("gocdb_cert_file", "gocdb_key_file"):
        if reader.has(option):
            reader.warn(option, f"{NOT_IMPLEMENTED}: no GOCDB capacity updates are sent (Vac 03 sent one a day)")
    version_logger = (reader.raw("version_logger") or "").strip().lower()
    if reader.has("version_logger") and version_logger not in ("0", "false"):
        reader.warn("version_logger", f"{NOT_IMPLEMENTED}: no version messages are sent to the version logger")
    if reader.has("singularity_user"):
        # Vac 03 SIGKILLed every process of this user outside a live machine (§1.8); vacd kills
        # only the processes in a singularity machine's own cgroup (vacd.backends.apptainer).
        reader.warn("singularity_user", "vacd runs singularity machines as this user but does not kill the "
                                        "user's other processes, as Vac 03 did")
    if reader.has("fix_networking"):
        reader.warn("fix_networking", "ignored: vacd never runs Vac 03's network repair commands (ifconfig, brctl, "
                                      "killing dnsmasq); it keeps its libvirt network itself")


def _problem(where: Location, section: Optional[str], option: Optional[str], reason: str) -> ConfigProblem:
    return ConfigProblem(where.path, where.line, section, option, reason)


def _user_data_mappings(reader: SectionReader, settings: Optional[Settings]) -> tuple[dict[str, str], dict[str, str]]:
    """[settings] defaults overridden per NAME by the machinetype's own option or file (§2.2)."""
    options = dict(settings.user_data_options) if settings else {}
    files = dict(settings.user_data_files) if settings else {}
    own_options = reader.prefixed("user_data_option_", OPTION_NAME_SUFFIX)
    own_files = reader.prefixed("user_data_file_", OPTION_NAME_SUFFIX)
    # Vac 03 kept every one of these, [settings]' and the machinetype's, in one dictionary
    # and substituted in its (unknowable) order: with both kinds for one NAME, which filled
    # ##user_data_option_NAME## cannot be told, so vacd's choice could differ (issue 10 item 4).
    for name in sorted((options.keys() | own_options.keys()) & (files.keys() | own_files.keys())):
        where = (f"user_data_option_{name}" if name in own_options
                 else f"user_data_file_{name}" if name in own_files else None)
        reader.problem(where, f"both user_data_option_{name} and user_data_file_{name} apply to this machinetype "
                              f"(here or from [settings]): both fill ##user_data_option_{name}##, and which one "
                              "Vac 03 used depended on its dictionary's order; set only one of them")
    for name in own_options:
        files.pop(name, None)
    for name in own_files:
        options.pop(name, None)
    options.update(own_options)
    files.update(own_files)
    return options, files


def read_machinetype(name: str, reader: SectionReader, settings: Optional[Settings], paths: Paths,
                     *, vacuum_pipe: Optional[str] = None, complete: bool = True) -> Optional[Machinetype]:
    """One machinetype from its options (§2.4), or None if any of them is wrong.

    `complete` is False when checking a [vacuum_pipe] section's options, which are only part
    of a machinetype: checks relating two options, and advice, wait for the whole.
    """
    before = len(reader.findings.problems)
    for option, reason in _IGNORED_MACHINETYPE:
        reader.ignore(option, reason)
    machine_model = reader.get(reader.renamed("machine_model", VAC_ORDER["machine_model"]), "cernvm3",
                               partial(to_choice, choices=MACHINE_MODELS))
    accounting_fqan = _optional_text(reader, "accounting_fqan")
    for option in ("accounting_fqan", "machinegroup"):
        if reader.has(option) and not (reader.raw(option) or "").strip():
            # Vac 03 kept the empty text: machinegroup '' (one group for every such type) and
            # an empty FQAN in APEL; vacd would take the machinetype's name instead.
            reader.problem(option, "empty: Vac 03 used '' as the machinegroup (and as the APEL FQAN) where vacd "
                                   "would use the machinetype's name; give a value or remove the line")
    min_processors = reader.get("min_processors", 1, partial(to_integer, minimum=1, maximum=MAX_PROCESSORS))
    max_processors = reader.get("max_processors", 1, partial(to_integer, minimum=1, maximum=MAX_PROCESSORS))
    max_wallclock_seconds = reader.get("max_wallclock_seconds", 86400, to_duration_from_one)
    # §2.4, acceptance 3: min_wallclock_seconds defaults to max_wallclock_seconds.
    min_wallclock_seconds = reader.get("min_wallclock_seconds", max_wallclock_seconds, to_duration)
    root_image = _optional_text(reader, "root_image")
    user_data_options, user_data_files = _user_data_mappings(reader, settings)
    machinetype = Machinetype(
        name=name,
        machinegroup=_optional_text(reader, "machinegroup") or accounting_fqan or name,
        machinetype_path=reader.get("machinetype_path", paths.machinetypes_dir / name,
                                    lambda text: Path(to_absolute_path(text))),
        target_share=reader.get("target_share", 0.0, to_share),
        machine_model=machine_model,
        root_image=root_image,
        root_kernel=_optional_text(reader, "root_kernel"),
        root_initrd=_optional_text(reader, "root_initrd"),
        kernel_command_line=(reader.raw("kernel_command_line") or "").strip(),
        user_data=_optional_text(reader, "user_data"),
        user_data_options=user_data_options,
        user_data_files=user_data_files,
        user_data_proxy=reader.get("user_data_proxy", False, PROXY_SWITCH),
        legacy_proxy=reader.get("legacy_proxy", False, PROXY_SWITCH),
        min_processors=min_processors,
        max_processors=max_processors,
        max_wallclock_seconds=max_wallclock_seconds,
        min_wallclock_seconds=min_wallclock_seconds,
        backoff_seconds=reader.get("backoff_seconds", 10, to_duration),
        fizzle_seconds=reader.get("fizzle_seconds", 600, to_duration),
        heartbeat_file=reader.get("heartbeat_file", None, partial(
            to_matching, pattern=JOBOUTPUTS_FILE_NAME, what="a file name without a directory")),
        heartbeat_seconds=reader.get("heartbeat_seconds", 0, to_duration),
        accounting_fqan=accounting_fqan,
        machines_dir_days=reader.get(reader.renamed("machines_dir_days", VAC_ORDER["machines_dir_days"]), 3.0,
                                     partial(to_number, minimum=0, maximum=MAX_DAYS)),
        disk_gb_per_processor=reader.get("disk_gb_per_processor", None,
                                         partial(to_integer, minimum=0, maximum=MAX_DISK_GB_PER_PROCESSOR)),
        root_device=reader.get("root_device", "vda", partial(to_matching, pattern=DEVICE_NAME,
                                                             what="a device name of a-z and 0-9")),
        # Vac 03 never stored a valid scratch_device (§2.4 [BUG]); it is kept here.
        scratch_device=reader.get("scratch_device", "vdb", partial(to_matching, pattern=DEVICE_NAME,
                                                                   what="a device name of a-z and 0-9")),
        # Vac 03 enforced only the deprecated cernvm_signing_dn (§1.12 [BUG]); both names work here.
        image_signing_dn=reader.get(reader.renamed("image_signing_dn", VAC_ORDER["image_signing_dn"]), None,
                                    to_optional_regular_expression),
        root_image_sha256=reader.get("root_image_sha256", None, to_optional_sha256),
        cvmfs_repositories=reader.get("cvmfs_repositories", (), partial(
            to_words, pattern=CVMFS_REPOSITORY, what="cvmfs repository names")),
        tmp_binds=reader.get("tmp_binds", (), partial(
            to_words, pattern=SAFE_ABSOLUTE_PATH, what="absolute paths without . or .. parts")),
        container_command=reader.get("container_command", "/user_data", partial(
            to_matching, pattern=COMMAND_WORD, what="one command without spaces or arguments")),
        vacuum_pipe=vacuum_pipe,
    )
    if root_image is not None and root_image.startswith("docker://"):
        if machine_model != "docker" and complete:
            reader.problem("root_image", f"a docker:// image needs machine_model = docker, not {machine_model}")
        elif not DOCKER_IMAGE.fullmatch(root_image):
            reader.problem("root_image", f"expected docker://IMAGE, got {root_image!r}")
    if complete:
        _check_whole_machinetype(machinetype, reader, settings)
    reader.warn_unknown("[machinetype]")
    return machinetype if len(reader.findings.problems) == before else None


def _check_whole_machinetype(machinetype: Machinetype, reader: SectionReader, settings: Optional[Settings]) -> None:
    # Every machine model Vac 03 ran is run (issue 13: docker under podman, singularity under
    # apptainer; a host without the tool fails creations naming it, with the usual backoff).
    # cernvm_signing_dn and image_signing_dn are enforced at creation (vacd.imagecheck, issue
    # 11 item 1). cernvm4, and a relative cernvm3 root_image, which Vac 03 failed to create,
    # vacd creates as written: noted in the effective configuration (vacd.config.fixed_bug_notes).
    if machinetype.max_processors < machinetype.min_processors:
        reader.problem("max_processors", f"must be >= min_processors ({machinetype.min_processors}), "
                                         f"got {machinetype.max_processors}")
    if machinetype.min_wallclock_seconds > machinetype.max_wallclock_seconds:
        reader.problem("min_wallclock_seconds", "must be <= max_wallclock_seconds "
                       f"({machinetype.max_wallclock_seconds}), got {machinetype.min_wallclock_seconds}")
    if machinetype.machine_model == "docker" and machinetype.root_image is not None \
            and not machinetype.root_image.startswith("docker://"):
        reader.problem("root_image", f"machine_model docker needs a docker:// image, got {machinetype.root_image!r}")
    if machinetype.machine_model == "singularity" and settings is not None and settings.singularity_user is None:
        reader.problem("machine_model", "singularity needs singularity_user in [settings]")
    if machinetype.tmp_binds and machinetype.machine_model != "docker":
        reader.warn("tmp_binds", f"only docker machinetypes use it, not {machinetype.machine_model}")
    if machinetype.target_share > 0 and machinetype.root_image is None and machinetype.root_kernel is None:
        reader.warn(None, "no root_image (or root_kernel): creating this machinetype will fail")
    if machinetype.root_kernel is not None and machinetype.machine_model not in VM_MACHINE_MODELS:
        reader.warn("root_kernel", f"only VM models boot a kernel, not {machinetype.machine_model}")
    if settings is None:
        return
    if machinetype.min_processors > settings.processors_per_superslot:
        reader.warn("min_processors", f"more than processors_per_superslot ({settings.processors_per_superslot}): "
                                      "this machinetype is never created (§5)")
    if settings.volume_group is not None:
        # Vac 03's rule for logical volumes (§1.11, vacd.lvm.volume_gb_per_processor).
        if (machinetype.disk_gb_per_processor and settings.disk_gb_per_processor
                and machinetype.disk_gb_per_processor > settings.disk_gb_per_processor):
            reader.warn("disk_gb_per_processor", f"above [settings] disk_gb_per_processor "
                                                 f"({settings.disk_gb_per_processor}): as Vac 03, logical volumes get "
                                                 f"{settings.disk_gb_per_processor} GB per processor")
        return
    # Vac 03 used a machinetype's disk_gb_per_processor only to size logical volumes; its
    # file-backed CernVM root disk came from [settings] (or 40 GB). Without volume_group vacd
    # sizes the file from the machinetype's value (vacd/machinespec.py).
    vac_disk_gb = settings.disk_gb_per_processor or 40
    if machinetype.disk_gb_per_processor and machinetype.disk_gb_per_processor != vac_disk_gb:
        reader.warn("disk_gb_per_processor", f"Vac 03 gave file-backed root disks {vac_disk_gb} GB per processor "
                                             "([settings] disk_gb_per_processor, or 40) and used this only for "
                                             f"logical volumes; vacd gives {machinetype.disk_gb_per_processor} GB")


def section_kind(section: str) -> tuple[str, str]:
    """(kind, name) of a section header, as Vac 03 split it: `section.lower().split(None, 1)`.

    So `[Machinetype LHCb]` is machinetype `lhcb` and `[vacuum_pipe\tex]` pipe `ex`, as in
    Vac 03 (vac/shared.py). `[settings]`, `[DEFAULT]`, `[factories]` and `[targetshares]`
    Vac compared exactly, so they are not kinds (see _warn_unknown_sections).
    """
    words = ascii_split(ascii_lower(section), 1)
    if not words:
        return "", ""
    return words[0], (words[1].strip() if len(words) > 1 else "")


def _machinetype_sections(raw: RawConfig, findings: Findings) -> dict[str, str]:
    """Machinetype name -> the one section Vac 03 built it from.

    Vac 03 built a machinetype from each [machinetype NAME] or [vmtype NAME] section in the
    order the sections first appeared, each replacing the one before whole: two sections
    for one name that differ in kind or case (`[vmtype a]`, `[Machinetype A]`) were not
    merged, only the last was used. vacd does the same, and says so at each ignored header.
    """
    by_name: dict[str, list[str]] = {}
    for section in raw.sections:
        kind, name = section_kind(section)
        if kind not in ("machinetype", "vmtype"):
            continue
        if kind == "vmtype":
            findings.warnings.append(str(_problem(raw.headers[section], section, None,
                                                  f"deprecated section name, use [machinetype {name}]")))
        by_name.setdefault(name, []).append(section)
    chosen: dict[str, str] = {}
    for name, sections in by_name.items():
        used = sections[-1]
        where = raw.headers[used]
        for ignored in sections[:-1]:
            findings.warnings.append(str(_problem(
                raw.headers[ignored], ignored, None,
                f"IGNORED WHOLE: [{used}] ({where.path}:{where.line}) also defines machinetype {name}, and Vac 03 "
                "used only the last such section, not merged; vacd does the same: put the options in one section")))
        chosen[name] = used
    return chosen


def _pipe_prefixes(raw: RawConfig) -> dict[str, str]:
    """Pipe prefix -> its [vacuum_pipe PREFIX] section (kind and prefix compared in lower case, as Vac 03)."""
    prefixes: dict[str, str] = {}
    for section in raw.sections:
        kind, prefix = section_kind(section)
        if kind == "vacuum_pipe":
            prefixes.setdefault(prefix, section)
    return prefixes


def _read_machinetypes(raw: RawConfig, settings: Optional[Settings], paths: Paths,
                       findings: Findings) -> tuple[dict[str, Machinetype], dict[str, frozenset[str]]]:
    """All machinetypes, and the options each section set itself (for the [targetshares] check)."""
    machinetypes: dict[str, Machinetype] = {}
    own_options: dict[str, frozenset[str]] = {}
    pipe_prefixes = tuple(prefix + "-" for prefix in _pipe_prefixes(raw))
    for name, section in _machinetype_sections(raw, findings).items():
        options: dict[str, OptionSource] = dict(raw.defaults)
        options.update(raw.sections[section])
        own = frozenset(raw.sections[section])
        reader = SectionReader(section, options, own, raw.headers[section], findings)
        own_options[name] = own
        if not MACHINETYPE_NAME.fullmatch(name):
            reader.problem(None, f"machinetype names may use only a-z, 0-9 and -, got {name!r}"
                           if name else "needs a name: [machinetype NAME]")
        if name.startswith(pipe_prefixes) and pipe_prefixes:
            machinetype = _read_pipe_overlay(name, reader, settings, paths)
        else:
            machinetype = read_machinetype(name, reader, settings, paths)
        if machinetype is not None and MACHINETYPE_NAME.fullmatch(name):
            machinetypes[name] = machinetype
    return machinetypes, own_options


def _read_pipe_overlay(name: str, reader: SectionReader, settings: Optional[Settings],
                       paths: Paths) -> Optional[Machinetype]:
    """A [machinetype PREFIX-suffix] section, which overrides what a pipe says (§8 step 4).

    Each option must be valid, but the section need not be a whole machinetype: it may
    set min_processors = 4 and rely on the pipe's max_processors = 8. It is a machinetype
    of its own (as in Vac 03) only if it is complete; vacd.pipes merges it with the pipe.
    """
    if read_machinetype(name, reader, settings, paths, complete=False) is None:
        return None
    alone = SectionReader(reader.section, reader.options, reader.own, reader.header, Findings())
    machinetype = read_machinetype(name, alone, settings, paths)
    if machinetype is None:
        reader.warn(None, "only overrides what its vacuum pipe says: on its own "
                          + "; ".join(f"{problem.option}: {problem.reason}" for problem in alone.findings.problems))
    return machinetype


def _read_pipe(section: str, prefix: str, raw: RawConfig, settings: Optional[Settings], paths: Paths,
               findings: Findings) -> Optional[VacuumPipe]:
    reader = _reader(raw, section, findings)
    before = len(findings.problems)
    if not MACHINETYPE_NAME.fullmatch(prefix):
        reader.problem(None, f"pipe prefixes may use only a-z, 0-9 and -, got {prefix!r}"
                       if prefix else "needs a prefix: [vacuum_pipe PREFIX]")
    url = reader.get("vacuum_pipe_url", "", partial(to_matching, pattern=PIPE_URL,
                                                    what="an http:// or https:// URL"))
    if not reader.has("vacuum_pipe_url"):
        reader.problem("vacuum_pipe_url", "required option missing")
    target_share = reader.get("target_share", 0.0, to_share)
    # The other options are copied into each generated machinetype (§2.3): check them as
    # machinetype options now, so a typo is reported against this section's line.
    copied = {option: source for option, source in reader.options.items()
              if option in reader.own and option not in ("vacuum_pipe_url", "target_share")}
    probe = SectionReader(section, copied, frozenset(copied), reader.header, findings)
    read_machinetype(prefix or "pipe", probe, settings, paths, complete=False)
    if len(findings.problems) != before:
        return None
    return VacuumPipe(prefix, url, target_share, {option: source.value for option, source in copied.items()})


def _check_legacy_sections(raw: RawConfig, own_options: Mapping[str, frozenset[str]], findings: Findings) -> None:
    """[factories] and [targetshares] (§2.5): errors where the setting would be lost, else warnings."""
    if "names" in raw.sections.get("factories", {}):
        reader = _reader(raw, "factories", findings)
        if "factories" in raw.options("settings"):
            reader.warn("names", "ignored: [settings] factories is used instead")
        else:
            reader.problem("names", "no longer read: move the list to [settings] factories")
    if "targetshares" in raw.sections:
        reader = _reader(raw, "targetshares", findings)
        for name in raw.sections["targetshares"]:
            if "target_share" in own_options.get(name, frozenset()):
                reader.warn(name, f"ignored: [machinetype {name}] target_share is used instead")
            else:
                reader.problem(name, f"no longer read: set target_share in [machinetype {name}]")


def _warn_unknown_sections(raw: RawConfig, findings: Findings) -> None:
    """Sections Vac 03 never read: warnings, and loud ones where the name looks like one it did."""
    known_kinds = ("machinetype", "vmtype", "vacuum_pipe")
    for section in raw.sections:
        if section == "settings" or section in _LEGACY_SECTIONS or section_kind(section)[0] in known_kinds:
            continue
        where = raw.headers[section]
        if ascii_lower(section.strip()) == "settings":
            if "settings" not in raw.sections:
                continue  # reported as the missing [settings]
            reason = ("IGNORED: Vac 03 read only [settings] in lower case, so none of the options here took "
                      "effect; vacd ignores them too: move them into [settings] or delete this section")
        elif ascii_lower(section.strip()) == "default":
            reason = ("IGNORED: only [DEFAULT] in capitals gives every section its options (Vac 03 and vacd "
                      "alike); these options apply nowhere")
        elif ascii_lower(section.strip()) in _LEGACY_SECTIONS:
            reason = f"ignored: Vac 03 looked only for [{ascii_lower(section.strip())}] in lower case"
        else:
            reason = "unknown section, ignored"
        findings.warnings.append(str(_problem(where, section, None, reason)))


def parse_config(sources: Sequence[tuple[str, str]], *, host_fqdn: str, host_cpu_count: int,
                 paths: Paths) -> Config:
    """Validate vac.conf texts into one Config.

    Args:
        sources: (path, text) pairs in precedence order; the later wins per (section, option).
        host_fqdn: this host's name as Vac 03 took it, os.uname()[1] (default of factory_name;
            vacd.config.host_name()). Vac required a dot in it and used it as written.
        host_cpu_count: this host's processor count (default of host_processors).
        paths: the file layout (default machinetype_path, root_public_key).
    Returns:
        The Config, with warnings for deprecated and ignored options.
    Raises:
        ConfigErrors: every problem found, each with its file, line, section and option.
    """
    raw, syntax_problems = read_sources(sources)
    findings = Findings(problems=list(syntax_problems))
    first_path = sources[0][0] if sources else str(paths.config_file)
    settings = _read_settings(raw, host_fqdn, host_cpu_count, paths, findings, first_path)
    machinetypes, own_options = _read_machinetypes(raw, settings, paths, findings)
    pipes = []
    for section in raw.sections:
        kind, prefix = section_kind(section)
        if kind == "vacuum_pipe":
            if _pipe_prefixes(raw)[prefix] != section:
                first = raw.headers[_pipe_prefixes(raw)[prefix]]
                findings.problems.append(_problem(
                    raw.headers[section], section, None,
                    f"a second section for pipe {prefix} (the first is at {first.path}:{first.line}): Vac 03 read "
                    "the pipe once per section; use one [vacuum_pipe PREFIX] section"))
                continue
            pipe = _read_pipe(section, prefix, raw, settings, paths, findings)
            if pipe is not None:
                pipes.append(pipe)
    _check_legacy_sections(raw, own_options, findings)
    _warn_unknown_sections(raw, findings)
    if findings.problems or settings is None:
        raise ConfigErrors(findings.problems)
    return Config(settings=settings, machinetypes=machinetypes, warnings=tuple(findings.warnings),
                  sources=tuple(Path(path) for path, _ in sources), vacuum_pipes=tuple(pipes),
                  raw=raw, paths=paths)
