"""The metadata service (169.254.169.254) over real sockets: every tree, every document."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.vacd.guestapi.conftest import ROOT_PUBLIC_KEY, RunningServer, Site, make_site
from vacd.guestapi.guest import GuestMachine
from vacd.guestapi.machines import CachedMachineFiles, StatCache
from vacd.guestapi.metadata import OPENSTACK_VERSIONS, metadata_response


@pytest.fixture
def machine(site: Site, running_server: RunningServer) -> Site:
    site.create_machine(3)
    return site


def test_latest_user_data_is_the_substituted_template(machine: Site, running_server: RunningServer) -> None:
    response = running_server.get("/latest/user-data")
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain"
    text = response.body.decode()
    assert "host=f1-03.example.com" in text
    assert "uuid=1b4e28ba-2fa1-11d2-883f-000000000003" in text
    assert "mjf=http://169.254.169.253/machinefeatures" in text
    assert "##" not in text


@pytest.mark.parametrize(
    "path",
    ["/2007-01-19/user-data", "/openstack/latest/user_data", "/openstack/2018-08-27/user_data", "/openstack/latest/user-data"],
)
def test_user_data_is_served_under_every_version_and_spelling(machine: Site, running_server: RunningServer, path: str) -> None:
    assert running_server.get(path).body == running_server.get("/latest/user-data").body


@pytest.mark.parametrize("leaf", ["instance-id", "ami-id"])
@pytest.mark.parametrize("version", ["2007-01-19", "latest", "1.0"])
def test_instance_and_ami_ids_are_the_uuid(machine: Site, running_server: RunningServer, version: str, leaf: str) -> None:
    response = running_server.get(f"/{version}/meta-data/{leaf}")
    assert (response.status, response.body) == (200, b"1b4e28ba-2fa1-11d2-883f-000000000003")


@pytest.mark.parametrize("path", ["/latest/meta-data", "/latest/meta-data/", "/openstack/latest/meta-data/"])
def test_meta_data_listing_answers_with_or_without_slash(machine: Site, running_server: RunningServer, path: str) -> None:
    response = running_server.get(path)
    assert response.status == 200
    assert response.body.decode().splitlines() == [
        "ami-id",
        "ami-launch-index",
        "hostname",
        "instance-id",
        "instance-type",
        "local-hostname",
        "local-ipv4",
        "placement/",
        "public-hostname",
        "public-keys/",
    ]


@pytest.mark.parametrize(
    "leaf, value",
    [
        ("hostname", "f1-03.example.com"),
        ("local-hostname", "f1-03.example.com"),
        ("public-hostname", "f1-03.example.com"),
        ("local-ipv4", "169.254.169.3"),
        ("ami-launch-index", "0"),
        ("instance-type", "example"),
        ("placement/availability-zone", "f1.example.com"),
    ],
)
def test_ec2_leaves(machine: Site, running_server: RunningServer, leaf: str, value: str) -> None:
    response = running_server.get(f"/latest/meta-data/{leaf}")
    assert (response.status, response.body.decode()) == (200, value)


def test_ec2_public_keys_are_crawlable_as_cloud_init_expects(machine: Site, running_server: RunningServer) -> None:
    assert running_server.get("/latest/meta-data/public-keys/").body == b"0=root"
    assert running_server.get("/latest/meta-data/public-keys/0/").body == b"openssh-key"
    key = running_server.get("/latest/meta-data/public-keys/0/openssh-key")
    assert (key.status, key.body.decode()) == (200, ROOT_PUBLIC_KEY.strip())
    assert running_server.get("/latest/meta-data/placement/").body == b"availability-zone"


def test_a_leaf_with_a_trailing_slash_or_below_a_leaf_is_not_found(machine: Site, running_server: RunningServer) -> None:
    assert running_server.get("/latest/meta-data/instance-id/").status == 404
    assert running_server.get("/latest/meta-data/instance-id/x").status == 404
    assert running_server.get("/latest/meta-data/nothing").status == 404


def test_root_lists_ec2_versions_and_version_lists_its_documents(machine: Site, running_server: RunningServer) -> None:
    versions = running_server.get("/").body.decode().splitlines()
    assert versions[0] == "1.0" and versions[-1] == "latest" and "2009-04-04" in versions
    assert running_server.get("/latest").body.decode().splitlines() == ["meta-data", "user-data"]


@pytest.mark.parametrize("path", ["/openstack", "/openstack/"])
def test_openstack_version_listing_has_cloud_init_versions_and_latest(
    machine: Site, running_server: RunningServer, path: str
) -> None:
    response = running_server.get(path)
    assert response.status == 200
    assert response.body.decode().splitlines() == list(OPENSTACK_VERSIONS) + ["latest"]


@pytest.mark.parametrize(
    "version, files",
    [
        ("latest", ["meta_data.json", "user_data", "vendor_data.json", "network_data.json", "vendor_data2.json"]),
        ("2018-08-27", ["meta_data.json", "user_data", "vendor_data.json", "network_data.json", "vendor_data2.json"]),
        ("2015-10-15", ["meta_data.json", "user_data", "vendor_data.json", "network_data.json"]),
        ("2012-08-10", ["meta_data.json", "user_data"]),
    ],
)
def test_openstack_version_lists_the_files_that_version_has(
    machine: Site, running_server: RunningServer, version: str, files: list[str]
) -> None:
    for path in (f"/openstack/{version}", f"/openstack/{version}/"):
        assert running_server.get(path).body.decode().splitlines() == files


def test_network_data_is_absent_before_liberty(machine: Site, running_server: RunningServer) -> None:
    assert running_server.get("/openstack/2013-10-17/network_data.json").status == 404
    assert running_server.get("/openstack/2012-08-10/vendor_data.json").status == 404


@pytest.mark.parametrize(
    "path",
    ["/openstack/latest/meta_data.json", "/openstack/latest/meta-data.json", "/latest/meta-data.json", "/2009-04-04/meta_data.json"],
)
def test_meta_data_json_carries_identity_keys_and_mjf_urls(machine: Site, running_server: RunningServer, path: str) -> None:
    response = running_server.get(path)
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    document = json.loads(response.body)
    assert document["uuid"] == "1b4e28ba-2fa1-11d2-883f-000000000003"
    assert document["hostname"] == document["name"] == "f1-03.example.com"
    assert document["availability_zone"] == "f1.example.com"
    assert document["project_id"] == "vac01.example.com"
    assert document["launch_index"] == 0
    assert document["public_keys"] == {"0": ROOT_PUBLIC_KEY.strip()}
    assert document["keys"] == [{"name": "0", "type": "ssh", "data": ROOT_PUBLIC_KEY.strip()}]
    assert document["meta"] == {
        "machinetype": "example",
        "machinefeatures": "http://169.254.169.253/machinefeatures",
        "jobfeatures": "http://169.254.169.253/jobfeatures",
        "joboutputs": "http://169.254.169.253/joboutputs",
    }


def test_network_data_describes_the_slot_nic_and_factory_dns(machine: Site, running_server: RunningServer) -> None:
    response = running_server.get("/openstack/latest/network_data.json")
    assert response.headers["content-type"] == "application/json"
    document = json.loads(response.body)
    assert document["links"] == [
        {
            "id": "interface0",
            "type": "phy",
            "ethernet_mac_address": "56:4d:a9:fe:a9:03",
            "vif_id": "1b4e28ba-2fa1-11d2-883f-000000000003",
        }
    ]
    (network,) = document["networks"]
    assert network["link"] == "interface0"
    assert (network["type"], network["ip_address"], network["netmask"]) == ("ipv4", "169.254.169.3", "255.255.0.0")
    assert network["routes"] == [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "169.254.169.253"}]
    assert document["services"] == [{"type": "dns", "address": "169.254.169.253"}]


@pytest.mark.parametrize("path", ["/openstack/latest/vendor_data.json", "/openstack/latest/vendor_data2.json"])
def test_vendor_data_is_an_empty_object(machine: Site, running_server: RunningServer, path: str) -> None:
    response = running_server.get(path)
    assert (response.status, response.headers["content-type"], response.body) == (200, "application/json", b"{}")


def test_machine_without_user_data_or_key_gets_404_not_empty_documents(tmp_path: Path) -> None:
    bare = make_site(tmp_path, with_root_public_key=False)
    bare.machinetype = replace(bare.machinetype, user_data=None)
    record, directory = bare.create_machine(5)
    files = CachedMachineFiles(directory, StatCache())
    machine = GuestMachine(record, directory, "56:4D:A9:FE:A9:05", "f1.example.com", "s", files)
    assert metadata_response("/latest/user-data", machine).status == 404
    assert metadata_response("/openstack/latest/user_data", machine).status == 404
    assert metadata_response("/openstack/latest", machine).body.decode().splitlines()[:2] == ["meta_data.json", "vendor_data.json"]
    assert metadata_response("/latest/meta-data/public-keys/", machine).status == 404
    assert "public-keys/" not in metadata_response("/latest/meta-data/", machine).body.decode()
    document = json.loads(metadata_response("/openstack/latest/meta_data.json", machine).body)
    assert "public_keys" not in document and "keys" not in document


@pytest.mark.parametrize(
    "path",
    [
        "/latest/nothing",
        "/openstack/notaversion/meta_data.json",
        "/openstack/latest/password",
        "/openstack/latest/meta_data.json/",
        "/joboutputs/shutdown_message",
        "/machinefeatures/total_cpu",
    ],
)
def test_unknown_paths_are_not_found(machine: Site, running_server: RunningServer, path: str) -> None:
    assert running_server.get(path).status == 404


def test_head_request_gets_headers_only(machine: Site, running_server: RunningServer) -> None:
    response = running_server.get("/latest/user-data", method="HEAD")
    assert response.status == 200
    assert int(response.headers["content-length"]) > 0
    assert response.body == b""


def test_put_to_metadata_server_is_method_not_allowed(machine: Site, running_server: RunningServer) -> None:
    (response,) = running_server.exchange(
        b"PUT /latest/user-data HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", part="metadata"
    )
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
