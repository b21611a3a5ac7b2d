"""The metadata service's documents and routes (169.254.169.254:80): EC2 and OpenStack trees.

Rules (behaviour reference §6.4, acceptance 14; peers-and-specs §3.6, §4.4):
- Vac's paths keep working: `/<date or latest>/user-data`, `.../meta-data.json`,
  `.../meta-data[/]` and its leaves, and the same under `/openstack/<version>/`. Any date
  stands for a version, as Vac's `[0-9]{4}-[0-9]{2}-[0-9]{2}` patterns allowed.
- OpenStack clients get what Nova serves and cloud-init reads: `/openstack` lists the
  versions cloud-init knows plus `latest`; `/openstack/<v>/` lists that version's files;
  `meta_data.json` (and Vac's `meta-data.json`), `user_data`, `vendor_data.json`,
  `vendor_data2.json` and `network_data.json`, each only from the version that has it.
- The EC2 meta-data tree lists subtrees with a trailing `/` and answers a subtree with or
  without one (Vac allowed both for cloud-init 0.7.5); `public-keys/` lists `0=root` so the
  crawler fetches `public-keys/0/openssh-key`. `/` lists the EC2 versions.
- JSON is served as application/json, everything else as text/plain. A missing user_data
  or key is a 404, never an empty document.
- Pure: the machine's files are read through GuestMachine.files.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Optional, Union

from vacd.guestapi.guest import GuestMachine
from vacd.guestapi.requestpath import path_segments
from vacd.guestapi.wire import Response
from vacd.slots import GATEWAY_ADDRESS
from vacd.userdata import VM_FEATURE_LOCATIONS

EC2_VERSIONS = (
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
)
# cloud-init's OS_VERSIONS (cloudinit/sources/helpers/openstack.py), oldest first.
OPENSTACK_VERSIONS = (
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
)
LATEST = "latest"
# The first version carrying each optional file (Nova's nova/api/metadata/base.py).
VENDOR_DATA_SINCE = "2013-10-17"
NETWORK_DATA_SINCE = "2015-10-15"
VENDOR_DATA2_SINCE = "2016-10-06"
PUBLIC_KEY_NAME = "root"
# Vac named the one key "0" in meta-data.json (§6.4).
META_DATA_KEY_NAME = "0"
GUEST_NETMASK = "255.255.0.0"  # the /16 of vac_169.254.0.0 (§1.9)
GUEST_NETWORK_NAME = "vac_169.254.0.0"
DATE_PATTERN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")

JSON_TYPE = "application/json"
# A machine's documents: a handful, rebuilt only if the root key file changes.
MAX_MEMO_ENTRIES = 8
TEXT_TYPE = "text/plain"
NOT_FOUND = Response(404, b"", TEXT_TYPE, "not_found")

# An EC2 tree node: a leaf's text, or a mapping of names to nodes.
Ec2Node = Union[str, Mapping[str, Any]]


def metadata_response(path: str, machine: GuestMachine) -> Response:
    """Answer GET `path` (already normalised) for `machine`."""
    segments, trailing_slash = path_segments(path)
    if not segments:
        return _listing(EC2_VERSIONS + (LATEST,), "listing")
    if segments[0] == "openstack":
        return _openstack(segments[1:], trailing_slash, machine)
    if _is_ec2_version(segments[0]):
        return _ec2_version(segments[1:], trailing_slash, machine)
    return NOT_FOUND


def meta_data_document(machine: GuestMachine, public_key: Optional[str]) -> dict[str, Any]:
    """OpenStack meta_data.json (and Vac's meta-data.json) for `machine`."""
    record = machine.record
    locations = VM_FEATURE_LOCATIONS
    document: dict[str, Any] = {
        "uuid": record.uuid,
        "hostname": record.name,
        "name": record.name,
        "availability_zone": machine.factory_name,
        "project_id": machine.vac_space,
        "launch_index": 0,
        "meta": {
            "machinetype": record.machinetype,
            "machinefeatures": locations.machinefeatures,
            "jobfeatures": locations.jobfeatures,
            "joboutputs": locations.joboutputs,
        },
    }
    if public_key is not None:
        key_text = public_key.strip()
        document["public_keys"] = {META_DATA_KEY_NAME: key_text}
        document["keys"] = [{"name": META_DATA_KEY_NAME, "type": "ssh", "data": key_text}]
    return document


def network_data_document(machine: GuestMachine) -> dict[str, Any]:
    """OpenStack network_data.json: one NIC with the slot's MAC and address, DNS on .253."""
    record = machine.record
    dns = {"type": "dns", "address": GATEWAY_ADDRESS}
    return {
        "links": [
            {
                "id": "interface0",
                "type": "phy",
                "ethernet_mac_address": machine.mac_address.lower(),
                "vif_id": record.uuid,
            }
        ],
        "networks": [
            {
                "id": "network0",
                "link": "interface0",
                "type": "ipv4",
                "ip_address": record.ip_address,
                "netmask": GUEST_NETMASK,
                "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": GATEWAY_ADDRESS}],
                "network_id": GUEST_NETWORK_NAME,
                "services": [dns],
            }
        ],
        "services": [dns],
    }


def ec2_meta_data_tree(machine: GuestMachine) -> dict[str, Ec2Node]:
    """The EC2 `meta-data/` tree (peers-and-specs §4.4), leaves as text."""
    record = machine.record
    tree: dict[str, Ec2Node] = {
        "ami-id": record.uuid,
        "ami-launch-index": "0",
        "hostname": record.name,
        "instance-id": record.uuid,
        "instance-type": record.machinetype,
        "local-hostname": record.name,
        "local-ipv4": record.ip_address,
        "placement": {"availability-zone": machine.factory_name},
        "public-hostname": record.name,
    }
    public_key = _public_key(machine)
    if public_key is not None:
        # Stripped: cloud-init's EC2 leaf decoder turns text with a newline into a list.
        tree["public-keys"] = {"0": {"openssh-key": public_key.strip()}}
    return tree


def _ec2_version(segments: list[str], trailing_slash: bool, machine: GuestMachine) -> Response:
    if not segments:
        names = ["meta-data"] + (["user-data"] if machine.files.read("user_data") is not None else [])
        return _listing(names, "listing")
    head, rest = segments[0], segments[1:]
    if head == "user-data" and not rest and not trailing_slash:
        return _user_data(machine)
    if head in ("meta-data.json", "meta_data.json") and not rest and not trailing_slash:
        return _meta_data(machine)
    if head == "meta-data":
        return _ec2_meta_data(rest, trailing_slash, machine)
    return NOT_FOUND


def _ec2_meta_data(segments: list[str], trailing_slash: bool, machine: GuestMachine) -> Response:
    node: Ec2Node = ec2_meta_data_tree(machine)
    for segment in segments:
        if isinstance(node, str) or segment not in node:
            return NOT_FOUND
        node = node[segment]
    if isinstance(node, str):
        if trailing_slash:
            return NOT_FOUND
        return Response(200, node.encode(), TEXT_TYPE, "ec2")
    if segments == ["public-keys"]:
        # EC2 lists keys as index=name; cloud-init then fetches <index>/openssh-key.
        return _listing([f"{index}={PUBLIC_KEY_NAME}" for index in sorted(node)], "ec2")
    names = [name + "/" if not isinstance(child, str) else name for name, child in sorted(node.items())]
    return _listing(names, "ec2")


def _openstack(segments: list[str], trailing_slash: bool, machine: GuestMachine) -> Response:
    if not segments:
        return _listing(OPENSTACK_VERSIONS + (LATEST,), "listing")
    version, rest = segments[0], segments[1:]
    if version != LATEST and not DATE_PATTERN.match(version):
        return NOT_FOUND
    if not rest:
        return _listing(_openstack_files(version, machine), "listing")
    name = rest[0]
    if name == "meta-data":
        # Vac served the EC2 listing here too (§6.4).
        return _ec2_meta_data(rest[1:], trailing_slash, machine)
    if len(rest) > 1 or trailing_slash:
        return NOT_FOUND
    if name in ("meta_data.json", "meta-data.json"):
        return _meta_data(machine)
    if name in ("user_data", "user-data"):
        return _user_data(machine)
    if name == "vendor_data.json" and _has(version, VENDOR_DATA_SINCE):
        return _json({}, "vendor_data")
    if name == "vendor_data2.json" and _has(version, VENDOR_DATA2_SINCE):
        return _json({}, "vendor_data")
    if name == "network_data.json" and _has(version, NETWORK_DATA_SINCE):
        return _json(network_data_document(machine), "network_data")
    return NOT_FOUND


def _openstack_files(version: str, machine: GuestMachine) -> list[str]:
    files = ["meta_data.json"]
    if machine.files.read("user_data") is not None:
        files.append("user_data")
    for name, since in (
        ("vendor_data.json", VENDOR_DATA_SINCE),
        ("network_data.json", NETWORK_DATA_SINCE),
        ("vendor_data2.json", VENDOR_DATA2_SINCE),
    ):
        if _has(version, since):
            files.append(name)
    return files


def _has(version: str, since: str) -> bool:
    # ISO dates compare as strings; "latest" has everything.
    return version == LATEST or version >= since


def _is_ec2_version(segment: str) -> bool:
    return segment == LATEST or segment == "1.0" or bool(DATE_PATTERN.match(segment))


def _meta_data(machine: GuestMachine) -> Response:
    raw_key = machine.files.read("root_public_key")
    memo_key = ("meta_data.json", raw_key)
    body = machine.memo.get(memo_key)
    if body is None:
        body = json.dumps(meta_data_document(machine, _key_text(raw_key)), sort_keys=True).encode()
        if len(machine.memo) > MAX_MEMO_ENTRIES:
            machine.memo.clear()
        machine.memo[memo_key] = body
    return Response(200, body, JSON_TYPE, "meta_data")


def _user_data(machine: GuestMachine) -> Response:
    user_data = machine.files.read("user_data")
    if user_data is None:
        return NOT_FOUND
    return Response(200, user_data, TEXT_TYPE, "user_data")


def _public_key(machine: GuestMachine) -> Optional[str]:
    return _key_text(machine.files.read("root_public_key"))


def _key_text(raw_key: Optional[bytes]) -> Optional[str]:
    if raw_key is None or not raw_key.strip():
        return None
    return raw_key.decode("utf-8", errors="replace")


def _json(document: Mapping[str, Any], path_class: str) -> Response:
    return Response(200, json.dumps(document, sort_keys=True).encode(), JSON_TYPE, path_class)


def _listing(names: Any, path_class: str) -> Response:
    return Response(200, "\n".join(names).encode(), TEXT_TYPE, path_class)
