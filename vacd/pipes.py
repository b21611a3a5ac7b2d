"""Expand vacuum pipe documents into machinetypes (behaviour reference §8, steps 2 to 5).

Given a [vacuum_pipe PREFIX] section, the pipe's JSON document (already fetched and
decoded) and the Config, produce the machinetypes `PREFIX-suffix` the pipe generates.
Fetching and caching documents over HTTP is not done here: that belongs to an edge
module, which hands the decoded documents to `apply_pipes`. Rules:

* Pure: no I/O, no clock.
* Local configuration wins: [machinetype PREFIX-suffix] (and [DEFAULT]) over the
  [vacuum_pipe PREFIX] section's options over the pipe's values (§8 steps 3 and 4,
  acceptance 5).
* A pipe is remote, untrusted input. Only whitelisted options are taken, file names are
  checked for path traversal (§8 step 5), and every value then passes the same checks as
  a vac.conf value. Each bad value is dropped with a warning, never an error: a pipe
  can cost its own machinetypes, never stop the factory.
* Hardening beyond Vac 03 (§11 shell injection, pipe paths): a `..` path component is
  refused anywhere (Vac only refused `/../`, so `/cvmfs/..` passed), values with control
  characters are refused, and negative or non-finite shares count as 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

from vacd.config import Config, Machinetype, VacuumPipe
from vacd.configini import Findings, InvalidValue, Location, OptionSource, SectionReader, to_number
from vacd.configparse import MACHINETYPE_NAME, MAX_TARGET_SHARE, OPTION_NAME_SUFFIX, read_machinetype
from vacd.errors import ConfigProblem

DEFAULT_CACHE_SECONDS = 3600

# §8 step 4: what a pipe may set. machinegroup is deliberately absent (§2.4).
PIPE_OPTIONS = frozenset((
    "accounting_fqan", "backoff_seconds", "container_command", "cvmfs_repositories", "fizzle_seconds",
    "disk_gb_per_processor", "heartbeat_file", "heartbeat_seconds", "image_signing_dn", "legacy_proxy",
    "machine_model", "max_processors", "max_wallclock_seconds", "min_processors", "min_wallclock_seconds",
    "root_device", "root_image", "root_image_sha256", "scratch_device", "suffix", "target_share", "tmp_binds",
    "user_data", "user_data_proxy",
))
PIPE_OPTION_PREFIXES = ("user_data_file_", "user_data_option_")
# Where a pipe's root_image may point when it names a path (§8 step 5).
_ROOT_IMAGE_PATH_PREFIXES = ("docker://", "/cvmfs/", "http://", "https://")


@dataclass(frozen=True)
class PipeExpansion:
    """The machinetypes one pipe document generates, and what was dropped on the way."""

    machinetypes: Mapping[str, Machinetype] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def pipe_cache_seconds(pipe_document: Mapping[str, Any]) -> int:
    """The document's cache_seconds (§8 caching), or the default 3600 if absent or bad."""
    value = pipe_document.get("cache_seconds") if isinstance(pipe_document, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return DEFAULT_CACHE_SECONDS


def _entry_share(entry: Mapping[str, Any]) -> Optional[float]:
    value = entry.get("target_share")
    if isinstance(value, bool):
        return None
    try:
        share = float(value) if isinstance(value, (int, float)) else to_number(str(value))
    except (InvalidValue, OverflowError):
        return None
    # Bounded as [machinetype] target_share is: the shares are summed (issue 8 item 9).
    return share if math.isfinite(share) and 0 <= share <= MAX_TARGET_SHARE else None


def _as_text(value: Any) -> Optional[str]:
    """Vac 03 applied str() to each value; only scalars make sense as options."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    return None


def _has_parent_part(path: str) -> bool:
    return ".." in path.split("/")


def rejection(option: str, text: str) -> Optional[str]:
    """Why a pipe may not set `option` to `text` (§8 steps 4 and 5), or None if it may."""
    if option not in PIPE_OPTIONS and not option.startswith(PIPE_OPTION_PREFIXES):
        return "not accepted from a vacuum pipe"
    if option.startswith(PIPE_OPTION_PREFIXES) and not OPTION_NAME_SUFFIX.fullmatch(option.split("_", 3)[3]):
        return "the part after user_data_option_ or user_data_file_ must use only a-z, 0-9 and _"
    if not option.startswith("user_data_option_") and any(not character.isprintable() for character in text):
        return "contains control characters"
    if option.startswith("user_data_file_") or option in ("cvmfs_repositories", "heartbeat_file"):
        if "/" in text:
            return "must not contain / when it comes from a vacuum pipe"
    if option in ("user_data", "root_image") and _has_parent_part(text):
        return "must not contain a .. path part"
    if option == "user_data" and "/" in text and not text.startswith(("http://", "https://")):
        return "may contain / only as an http:// or https:// URL"
    if option == "root_image" and "/" in text and not text.startswith(_ROOT_IMAGE_PATH_PREFIXES):
        return "may contain / only as a docker://, /cvmfs/, http:// or https:// reference"
    return None


def _warning(url: str, section: str, option: Optional[str], reason: str) -> str:
    return str(ConfigProblem(url, None, section, option, reason))


def _local_options(pipe: VacuumPipe, name: str, config: Config) -> dict[str, OptionSource]:
    """What vac.conf says for this machinetype: its own sections, then the pipe section's options."""
    raw = config.raw
    options: dict[str, OptionSource] = dict(raw.defaults)
    for section in (f"vmtype {name}", f"machinetype {name}"):
        options.update(raw.sections.get(section, {}))
    pipe_section = f"vacuum_pipe {pipe.prefix}"
    pipe_location = raw.headers.get(pipe_section, Location(pipe.url))
    pipe_sources = raw.sections.get(pipe_section, {})
    for option, value in pipe.options.items():
        if option not in options:
            options[option] = pipe_sources.get(option, OptionSource(value, pipe_location.path, pipe_location.line))
    if "machinetype_path" not in options:
        # §8 step 3, acceptance 4: relative files of every generated type live under PREFIX.
        options["machinetype_path"] = OptionSource(str(config.paths.machinetypes_dir / pipe.prefix),
                                                   pipe_location.path, pipe_location.line)
    return options


def _expand_entry(pipe: VacuumPipe, name: str, entry: Mapping[str, Any], total_share: float,
                  config: Config, warnings: list[str]) -> Optional[Machinetype]:
    section = f"machinetype {name}"
    options = _local_options(pipe, name, config)
    from_pipe: set[str] = set()
    for key, value in entry.items():
        option = str(key).lower()
        if option == "suffix" or option in options:
            continue  # local configuration wins (§8 step 4)
        if option == "target_share":
            share = _entry_share(entry)
            # §8 step 4: the section's total split in proportion to the pipe's own shares.
            split = pipe.target_share * share / total_share if share is not None and total_share > 0 else 0.0
            options[option] = OptionSource(repr(split), pipe.url)
            from_pipe.add(option)
            continue
        text = _as_text(value)
        reason = "expected a string or a number" if text is None else rejection(option, text)
        if reason is not None or text is None:
            warnings.append(_warning(pipe.url, section, option, f"ignored: {reason}"))
            continue
        options[option] = OptionSource(text, pipe.url)
        from_pipe.add(option)
    header = config.raw.headers.get(section, Location(pipe.url))
    while True:
        findings = Findings()
        reader = SectionReader(section, options, frozenset(), header, findings)
        machinetype = read_machinetype(name, reader, config.settings, config.paths, vacuum_pipe=pipe.prefix)
        if machinetype is not None:
            warnings.extend(findings.warnings)
            return machinetype
        # Drop each value of the pipe's that failed a check and try again; a problem in
        # what vac.conf says (or one that dropping cannot cure) costs the machinetype.
        droppable = [problem for problem in findings.problems
                     if problem.option in from_pipe and options[problem.option].path == pipe.url]
        if not droppable:
            warnings.extend(_warning(pipe.url, section, None, f"not created: {problem}")
                            for problem in findings.problems)
            return None
        for problem in droppable:
            warnings.append(_warning(pipe.url, section, problem.option, f"ignored: {problem.reason}"))
            options.pop(problem.option or "", None)
            from_pipe.discard(problem.option or "")


def expand_pipe(pipe: VacuumPipe, pipe_document: Mapping[str, Any], config: Config) -> PipeExpansion:
    """The machinetypes one decoded pipe document generates (§8 steps 2 to 5).

    Returns the machinetypes, named PREFIX-suffix, and a warning for everything dropped.
    Raises nothing for any document.
    """
    warnings: list[str] = []
    pipe_section = f"vacuum_pipe {pipe.prefix}"
    entries = pipe_document.get("machinetypes") if isinstance(pipe_document, Mapping) else None
    if entries is None:
        return PipeExpansion()  # §8 step 1: no machinetypes, nothing to do
    if not isinstance(entries, list):
        return PipeExpansion({}, (_warning(pipe.url, pipe_section, None, "machinetypes is not a list"),))
    good_entries = [entry for entry in entries if isinstance(entry, Mapping)]
    if len(good_entries) != len(entries):
        warnings.append(_warning(pipe.url, pipe_section, None, "ignored machinetypes entries that are not objects"))
    total_share = sum(share for share in map(_entry_share, good_entries) if share is not None)
    machinetypes: dict[str, Machinetype] = {}
    for entry in good_entries:
        suffix = entry.get("suffix")
        if isinstance(suffix, int) and not isinstance(suffix, bool):
            suffix = str(suffix)  # Vac 03 applied str() to every value
        name = f"{pipe.prefix}-{suffix}"
        if not isinstance(suffix, str) or not MACHINETYPE_NAME.fullmatch(name):
            warnings.append(_warning(pipe.url, pipe_section, "suffix",
                                     f"ignored an entry: suffix must be a-z, 0-9 and -, got {suffix!r}"))
            continue
        if name in machinetypes:
            warnings.append(_warning(pipe.url, pipe_section, "suffix", f"ignored a second entry for {suffix!r}"))
            continue
        machinetype = _expand_entry(pipe, name, entry, total_share, config, warnings)
        if machinetype is not None:
            machinetypes[name] = machinetype
    return PipeExpansion(machinetypes, tuple(warnings))


def apply_pipes(config: Config, pipe_documents: Mapping[str, Mapping[str, Any]]) -> Config:
    """The Config with every pipe's machinetypes added; `pipe_documents` is keyed by prefix.

    A pipe without a document (its fetch failed and there is no usable cache) adds nothing.
    A generated machinetype replaces the [machinetype PREFIX-suffix] section it overlays.
    """
    machinetypes = dict(config.machinetypes)
    warnings = list(config.warnings)
    for pipe in config.vacuum_pipes:
        document = pipe_documents.get(pipe.prefix)
        if document is None:
            continue
        expansion = expand_pipe(pipe, document, config)
        for name, machinetype in expansion.machinetypes.items():
            earlier = machinetypes.get(name)
            if earlier is not None and earlier.vacuum_pipe is not None:
                warnings.append(_warning(pipe.url, f"vacuum_pipe {pipe.prefix}", None,
                                         f"ignored {name}: already made by [vacuum_pipe {earlier.vacuum_pipe}]"))
                continue
            machinetypes[name] = machinetype
        warnings.extend(warning for warning in expansion.warnings if warning not in warnings)
    return replace(config, machinetypes=machinetypes, warnings=tuple(warnings))


__all__ = ["DEFAULT_CACHE_SECONDS", "PIPE_OPTIONS", "PipeExpansion", "apply_pipes", "expand_pipe",
           "pipe_cache_seconds", "rejection"]
