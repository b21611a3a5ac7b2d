"""squid.conf generation: factories as localnet and siblings, OUT rewritten only on change."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from vacd.config import FactoryAddress, Settings
from vacd.squidconf import ResolvedFactory, render_squid_conf, resolve_address, squid_conf

TEMPLATE = "http_port 3128\nacl localnet src 169.254.169.0/24\nhttp_access allow localnet\nhttp_access deny all\n"


def make_settings(*factories: FactoryAddress) -> Settings:
    return Settings(
        vac_space="vac01.example.com",
        factory_name="f2.example.com",
        total_processors=8,
        host_processors=8,
        gocdb_sitename="",
        factories=factories,
    )


def no_dns(name: str) -> Optional[str]:
    return {"f3.example.com": "192.0.2.3"}.get(name)


def test_factories_become_localnet_and_other_factories_siblings_sorted_by_name() -> None:
    text = render_squid_conf(
        TEMPLATE,
        [ResolvedFactory("f2.example.com", "192.0.2.2"), ResolvedFactory("f1.example.com", "192.0.2.1")],
        this_factory="f2.example.com",
    )

    assert text == TEMPLATE + (
        "acl localnet src 192.0.2.1/32\n"
        "cache_peer 192.0.2.1 sibling 3128 3130 default\n"
        "acl localnet src 192.0.2.2/32\n"
    )


def test_ipv6_factory_gets_a_128_bit_prefix() -> None:
    text = render_squid_conf("", [ResolvedFactory("f1.example.com", "2001:db8::1")], this_factory="f2.example.com")
    assert text.splitlines() == ["acl localnet src 2001:db8::1/128", "cache_peer 2001:db8::1 sibling 3128 3130 default"]


def test_configured_address_wins_and_unresolvable_factories_are_left_out(tmp_path: Path) -> None:
    template, output = tmp_path / "squid.conf.vac", tmp_path / "squid.conf"
    template.write_text(TEMPLATE)
    settings = make_settings(
        FactoryAddress("f1.example.com", "192.0.2.1"),
        FactoryAddress("f2.example.com", "192.0.2.2"),
        FactoryAddress("f3.example.com"),
        FactoryAddress("f4.example.com"),
    )

    assert squid_conf(template, output, settings, resolve=no_dns) is True

    appended = output.read_text()[len(TEMPLATE) :].splitlines()
    assert appended == [
        "acl localnet src 192.0.2.1/32",
        "cache_peer 192.0.2.1 sibling 3128 3130 default",
        "acl localnet src 192.0.2.2/32",
        "acl localnet src 192.0.2.3/32",
        "cache_peer 192.0.2.3 sibling 3128 3130 default",
    ]


def test_output_is_left_alone_when_nothing_changed(tmp_path: Path) -> None:
    template, output = tmp_path / "squid.conf.vac", tmp_path / "squid.conf"
    template.write_text(TEMPLATE)
    settings = make_settings(FactoryAddress("f1.example.com", "192.0.2.1"))
    squid_conf(template, output, settings, resolve=no_dns)
    os.utime(output, ns=(1_000_000_000, 1_000_000_000))
    inode = output.stat().st_ino

    assert squid_conf(template, output, settings, resolve=no_dns) is False
    assert output.stat().st_mtime_ns == 1_000_000_000 and output.stat().st_ino == inode

    changed = make_settings(FactoryAddress("f1.example.com", "192.0.2.9"))
    assert squid_conf(template, output, changed, resolve=no_dns) is True
    assert "192.0.2.9" in output.read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["squid.conf", "squid.conf.vac"]


def test_no_factories_configured_means_this_factory_alone(tmp_path: Path) -> None:
    template, output = tmp_path / "in", tmp_path / "out"
    template.write_text("")
    squid_conf(template, output, make_settings(), resolve=lambda name: "192.0.2.2" if name == "f2.example.com" else None)
    assert output.read_text() == "acl localnet src 192.0.2.2/32\n"


def test_resolve_address_uses_the_system_resolver_for_localhost() -> None:
    assert resolve_address("localhost") in ("127.0.0.1", "::1")
