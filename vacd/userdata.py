"""Render a machine's user_data from its template: the ##user_data_*## substitutions.

Rules (behaviour reference §6.5, acceptance 15; HSF-TN-2016-04 VacUserData):
- Plain string replacement in Vac's order: built-in values, the per-model MJF/joboutputs
  locations, the deprecated aliases, the UUID, the X.509 proxy, then every
  `user_data_option_NAME` and every `user_data_file_NAME` (whose contents fill both
  `##user_data_file_NAME##` and `##user_data_option_NAME##`), and last every leftover
  `##user_data_...##` is removed, until none is left. A value inserted by an earlier step is therefore not
  expanded by a later one, except that a leftover pattern inside it is removed, as in Vac.
- `##user_data_uuid##` is the machine's UUID (Vac 03 always blanked it, §1.6 [BUG]) and
  `##user_data_site##` is the GOCDB site name (03.00.02).
- An option whose name appears both as an option and as a file takes the option's value,
  because Vac replaced options first.

This module is pure: reading templates, files and URLs happens in vacd.guestapi.contextualise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

from vacd.slots import GATEWAY_ADDRESS

# Vac's character class for leftovers, comma included (§6.5 step 7).
LEFTOVER_PATTERN = re.compile(r"##user_data_[a-z,0-9_]*##")
# Option and file names (HSF-TN-2016-04: names are restricted to [a-z0-9_]).
OPTION_NAME_PATTERN = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class FeatureLocations:
    """Where a machine of one model finds $MACHINEFEATURES, $JOBFEATURES and $JOBOUTPUTS."""

    machinefeatures: str
    jobfeatures: str
    joboutputs: str


VM_FEATURE_LOCATIONS = FeatureLocations(
    machinefeatures=f"http://{GATEWAY_ADDRESS}/machinefeatures",
    jobfeatures=f"http://{GATEWAY_ADDRESS}/jobfeatures",
    joboutputs=f"http://{GATEWAY_ADDRESS}/joboutputs",
)
# Per model, as Vac 03 (§1.11): VMs over HTTP, containers through bind mounts.
FEATURE_LOCATIONS: Mapping[str, FeatureLocations] = {
    "cernvm3": VM_FEATURE_LOCATIONS,
    "cernvm4": VM_FEATURE_LOCATIONS,
    "vm-raw": VM_FEATURE_LOCATIONS,
    "docker": FeatureLocations("/etc/machinefeatures", "/etc/jobfeatures", "/var/spool/joboutputs"),
    "singularity": FeatureLocations("/tmp/machinefeatures", "/tmp/jobfeatures", "/tmp/joboutputs"),
}


def feature_locations(machine_model: str) -> Optional[FeatureLocations]:
    """The MJF and joboutputs locations for a machine model, or None for an unknown model."""
    return FEATURE_LOCATIONS.get(machine_model)


@dataclass(frozen=True)
class UserDataContext:
    """Every value a template may ask for; built by the contextualiser for one machine."""

    space: str
    site: str
    machinetype: str
    machine_hostname: str
    manager_version: str
    manager_hostname: str
    uuid: str
    locations: Optional[FeatureLocations] = None
    root_image_url: Optional[str] = None
    user_data_url: Optional[str] = None
    x509_proxy: Optional[str] = None
    options: Mapping[str, str] = field(default_factory=dict)
    file_contents: Mapping[str, str] = field(default_factory=dict)


def render_user_data(template: str, context: UserDataContext) -> str:
    """The template with every ##user_data_*## pattern of §6.5 replaced or removed."""
    replacements: list[tuple[str, str]] = []
    if context.user_data_url is not None:
        replacements.append(("url", context.user_data_url))
    replacements += [
        ("space", context.space),
        ("site", context.site),
        ("machinetype", context.machinetype),
        ("machine_hostname", context.machine_hostname),
        ("manager_version", context.manager_version),
        ("manager_hostname", context.manager_hostname),
    ]
    if context.locations is not None:
        replacements += [
            ("machinefeatures_url", context.locations.machinefeatures),
            ("jobfeatures_url", context.locations.jobfeatures),
            ("joboutputs_url", context.locations.joboutputs),
        ]
    if context.root_image_url is not None:
        replacements.append(("root_image_url", context.root_image_url))
    # Deprecated aliases (§6.5 step 3).
    replacements += [
        ("vmtype", context.machinetype),
        ("vm_hostname", context.machine_hostname),
        ("vmlm_version", context.manager_version),
        ("vmlm_hostname", context.manager_hostname),
        ("uuid", context.uuid),
    ]
    if context.x509_proxy is not None:
        replacements.append(("option_x509_proxy", context.x509_proxy))
    for name, value in sorted(context.options.items()):
        replacements.append((f"option_{name}", value))
    for name, contents in sorted(context.file_contents.items()):
        replacements.append((f"file_{name}", contents))
        replacements.append((f"option_{name}", contents))

    rendered = template
    for name, value in replacements:
        rendered = rendered.replace(f"##user_data_{name}##", value)
    # Vac removed leftovers in one pass; removing one can join its neighbours into a new
    # pattern (`##user_##user_data_x##data_y##`), so repeat until none is left.
    while True:
        cleaned = LEFTOVER_PATTERN.sub("", rendered)
        if cleaned == rendered:
            return cleaned
        rendered = cleaned


def merge_options(
    default_options: Mapping[str, str],
    default_files: Mapping[str, str],
    machinetype_options: Mapping[str, str],
    machinetype_files: Mapping[str, str],
) -> tuple[dict[str, str], dict[str, str]]:
    """Layer [settings] user_data_option_/file_ defaults under the machinetype's own.

    A name the machinetype sets (as an option or as a file) replaces the default of that
    name in either form. Returns (options, files): name -> value, name -> file name.
    """
    machinetype_names = set(machinetype_options) | set(machinetype_files)
    options = {name: value for name, value in default_options.items() if name not in machinetype_names}
    files = {name: path for name, path in default_files.items() if name not in machinetype_names}
    options.update(machinetype_options)
    files.update(machinetype_files)
    return options, files
