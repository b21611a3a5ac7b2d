"""kickstart/viab-generate: kickstarts, PXE/GRUB entries, vac.d files, the VacQuery key and
the install server's dnsmasq configuration from a site description.

The vac.conf files are taken from the kickstart's own %post here-documents and read with
vacd's parser, so what an installed factory would read is what is checked. The kickstarts
are checked with Anaconda's parser and with pykickstart's `ksvalidator -v RHEL9`, the
dnsmasq configuration with `dnsmasq --test` (a parse only: it sends nothing).
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import json
import re
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vacd.config import FactoryAddress, load_config
from vacd.paths import Paths
from vacquery.auth import load_site_key

REPOSITORY = Path(__file__).resolve().parents[2]
GENERATOR = REPOSITORY / "kickstart" / "viab-generate"
EXAMPLE = REPOSITORY / "kickstart" / "example-site.json"
HEREDOC = re.compile(r"^cat > (/etc/vac\.d/[^ ]+) <<'VIAB_EOF'\n(.*?)\nVIAB_EOF$", re.MULTILINE | re.DOTALL)
# A fixed key for the pure renderers; generate() and main() make a random one.
TEST_KEY = "dGVzdCBrZXkgb2YgdGhlIGV4YW1wbGUgc2l0ZSAtIDMyIGI="
DISKS = {"factory01.example.org": "/dev/disk/by-id/wwn-0x5000c500a1b2c311",
         "factory02.example.org": "/dev/disk/by-id/wwn-0x5000c500a1b2c312",
         "factory03.example.org": "/dev/disk/by-id/nvme-eui.0025388b91b2c313"}


def load_generator() -> ModuleType:
    """Import the script (it has no .py suffix) as a module."""
    loader = importlib.machinery.SourceFileLoader("viab_generate", str(GENERATOR))
    spec = importlib.util.spec_from_loader("viab_generate", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being made.
    sys.modules["viab_generate"] = module
    loader.exec_module(module)
    return module


viab = load_generator()


def example_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return document


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("viab")
    site = viab.load_site(EXAMPLE.read_text(), "example-site.json")
    viab.generate(site, output, viab.Templates.read(viab.TEMPLATES_DIR), TEST_KEY)
    return output


def kickstart(generated: Path, hostname: str) -> str:
    return (generated / "kickstart" / f"{hostname}.ks").read_text()


def vac_d_from_kickstart(text: str) -> dict[str, str]:
    return {Path(path).name: body + "\n" for path, body in HEREDOC.findall(text)}


def install_vac_d(files: dict[str, str], prefix: Path) -> Paths:
    paths = Paths(prefix)
    paths.config_dir.mkdir(parents=True)
    for name, content in files.items():
        (paths.config_dir / name).write_text(content)
    return paths


def test_example_site_gives_a_kickstart_and_boot_entries_per_factory(generated: Path) -> None:
    for hostname, mac in (("factory01.example.org", "52-54-00-00-02-11"),
                          ("factory02.example.org", "52-54-00-00-02-12"),
                          ("factory03.example.org", "52-54-00-00-02-13")):
        assert (generated / "kickstart" / f"{hostname}.ks").is_file()
        assert (generated / "pxelinux.cfg" / f"01-{mac}").is_file()
        assert (generated / "grub" / f"grub.cfg-01-{mac}").is_file()
        assert (generated / "vac.d" / hostname / "10-viab-site.conf").is_file()


@pytest.mark.parametrize("hostname", ["factory01.example.org", "factory03.example.org"])
def test_vac_conf_written_by_the_kickstart_parses_with_vacd(generated: Path, tmp_path: Path, hostname: str) -> None:
    files = vac_d_from_kickstart(kickstart(generated, hostname))
    assert "10-viab-site.conf" in files
    # The review copies beside the kickstarts are the same files.
    for name, content in files.items():
        assert (generated / "vac.d" / hostname / name).read_text().rstrip("\n") == content.rstrip("\n")
    config = load_config(install_vac_d(files, tmp_path), host_fqdn=hostname, host_cpu_count=64)
    settings = config.settings
    assert settings.vac_space == "vac01.example.org"
    assert settings.factory_name == hostname
    assert settings.gocdb_sitename == "EXAMPLE-SITE"
    # With their addresses: vacd's resolver does not read /etc/hosts.
    assert settings.factories == (FactoryAddress("factory01.example.org", "192.0.2.11"),
                                  FactoryAddress("factory02.example.org", "192.0.2.12"),
                                  FactoryAddress("factory03.example.org", "192.0.2.13"))
    assert settings.vacquery_key_file == ("/etc/vac-vacquery.key",)
    assert settings.vacquery_auth == "required"
    assert settings.hs06_per_processor == 10.5
    assert settings.vacmon_hostport == ("vacmon.example.org:8884",)
    assert settings.user_data_options["cvmfs_proxy"] == "http://169.254.169.253:3128"
    example = config.machinetypes["example"]
    assert example.target_share == 1.0
    assert example.machine_model == "cernvm4"
    assert example.max_processors == 8
    assert example.max_wallclock_seconds == 172800
    assert example.accounting_fqan == "/example/Role=NULL/Capability=NULL"
    assert [(pipe.prefix, pipe.target_share) for pipe in config.vacuum_pipes] == [("lhcb", 2.0)]
    assert config.warnings == ()


def test_factory_settings_override_the_site_for_that_factory_only(generated: Path, tmp_path: Path) -> None:
    own = vac_d_from_kickstart(kickstart(generated, "factory03.example.org"))
    other = vac_d_from_kickstart(kickstart(generated, "factory01.example.org"))
    assert "90-viab-factory.conf" in own and "90-viab-factory.conf" not in other
    config = load_config(install_vac_d(own, tmp_path), host_fqdn="factory03.example.org", host_cpu_count=64)
    assert config.settings.total_processors == 64


def test_kickstart_installs_and_configures_a_factory(generated: Path) -> None:
    text = kickstart(generated, "factory02.example.org")
    lines = text.splitlines()
    assert ("network --device=52:54:00:00:02:12 --bootproto=static --ip=192.0.2.12 --netmask=255.255.255.0 "
            "--gateway=192.0.2.1 --hostname=factory02.example.org --onboot=yes --activate --noipv6 "
            "--nameserver=192.0.2.53,192.0.2.54") in lines
    assert 'url --url="http://mirror.example.org/almalinux/9/BaseOS/x86_64/os/" ' \
           '--proxy="http://proxy.example.org:3128"' in lines
    assert any(line.startswith('repo --name="vac" ') and line.endswith(" --install") for line in lines)
    assert "timesource --ntp-server=ntp1.example.org" in lines
    assert "timezone Europe/London --utc" in lines
    assert "rootpw --lock" in lines
    assert any(line.startswith('sshkey --username=root "ssh-ed25519 ') for line in lines)
    assert "firewall --enabled --ssh --port=995:udp,3128:tcp,3130:udp" in lines
    assert "selinux --enforcing" in lines
    # Partitioning of the factory's own disk, named by id, with the machines' volume group last.
    disk = DISKS["factory02.example.org"]
    for line in (f"ignoredisk --only-use={disk}", f"clearpart --all --initlabel --drives={disk}",
                 f"bootloader --location=mbr --boot-drive={disk}", "reqpart --add-boot",
                 "logvol /var/lib/vac --vgname=vg_system --name=vac --fstype=xfs --size=204800",
                 f"part pv.vac --fstype=lvmpv --ondisk={disk} --size=1 --grow", "volgroup vac_volume_group pv.vac"):
        assert line in lines, line
    assert not re.search(r"\b(?:sd[a-z]|nvme[0-9]n[0-9]|vd[a-z])\b", text)
    packages = lines[lines.index("%packages") + 1:lines.index("%end")]
    for package in ("@^minimal-environment", "vac", "chrony", "squid", "apel-ssm"):
        assert package in packages
    post = text[text.index("%post"):]
    # EL9's modular libvirt daemons stay: nothing switches the factory to the monolithic libvirtd.
    assert "systemctl enable virtqemud.socket virtnetworkd.socket" in post
    assert "libvirtd" not in post and "systemctl disable" not in post
    assert "systemctl enable vacd.service chronyd.service" in post
    assert "cat > /etc/sysctl.d/90-vac.conf <<'VIAB_EOF'\nvm.overcommit_memory = 1\nVIAB_EOF" in post
    assert "install -m 0600 /dev/null /etc/vac-vacquery.key\n" \
           f"cat > /etc/vac-vacquery.key <<'VIAB_EOF'\n{TEST_KEY}\nVIAB_EOF" in post
    assert "192.0.2.13 factory03.example.org factory03 " in post
    assert "vac squid-conf /etc/squid/squid.conf.vac /etc/squid/squid.conf" in post
    assert "firewall-offline-cmd --zone=libvirt --add-port=80/tcp" in post
    assert text.count("%end") == 2


def rhel9_kickstart(text: str) -> Any:
    """The kickstart parsed by pykickstart (Anaconda's parser) for RHEL 9; any warning,
    deprecations included, is an error. Skips the test when pykickstart is missing."""
    parser_module = pytest.importorskip("pykickstart.parser")
    from pykickstart.version import RHEL9, makeVersion  # type: ignore[import-untyped]

    handler = makeVersion(RHEL9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parser_module.KickstartParser(handler).readKickstartFromString(text)
    return handler


@pytest.mark.parametrize("hostname", ["factory01.example.org", "factory03.example.org"])
def test_kickstart_is_valid_rhel9_kickstart_with_the_factory_settings(generated: Path, hostname: str) -> None:
    handler = rhel9_kickstart(kickstart(generated, hostname))
    site = viab.load_site(EXAMPLE.read_text())
    factory = next(factory for factory in site.factories if factory.hostname == hostname)
    network = handler.network.network[0]
    assert (network.device, network.ip, network.hostname, network.bootProto) == (
        factory.mac, str(factory.ip), hostname, "static")
    assert factory.disk == DISKS[hostname]
    assert handler.ignoredisk.onlyuse == [factory.disk]
    assert handler.clearpart.drives == [factory.disk]
    assert handler.bootloader.bootDrive == factory.disk
    assert {(volume.mountpoint, volume.vgname) for volume in handler.logvol.lvList} == {
        ("/", "vg_system"), ("swap", "vg_system"), ("/var/lib/vac", "vg_system")}
    assert [group.vgname for group in handler.volgroup.vgList] == ["vg_system", "vac_volume_group"]
    assert "vac" in handler.packages.packageList
    assert handler.packages.environment == "minimal-environment"
    assert handler.rootpw.lock
    assert [user.key for user in handler.sshkey.sshUserList] == list(site.root_ssh_keys)
    assert [repo.name for repo in handler.repo.repoList] == ["appstream", "crb", "epel", "vac"]
    assert all(repo.install for repo in handler.repo.repoList)
    assert handler.firewall.ports == ["995:udp", "3128:tcp", "3130:udp"]
    (post,) = handler.scripts
    assert post.errorOnFail
    assert "systemctl enable vacd.service" in post.script


def test_a_factory_with_the_volume_group_is_told_to_use_it_in_vac_conf() -> None:
    # Vac 03 used vac_volume_group whenever it existed; vacd only when volume_group names it.
    site = viab.parse_site(example_document(), "site.json")
    assert site.partitioning.vac_volume_group
    site_conf = viab.vac_conf_files(site, site.factories[0])["10-viab-site.conf"]
    assert "volume_group = vac_volume_group" in site_conf.splitlines()
    document = example_document()
    document["partitioning"] = {"root_gb": 30}
    without = viab.parse_site(document, "site.json")
    assert "volume_group" not in viab.vac_conf_files(without, without.factories[0])["10-viab-site.conf"]


def test_kickstart_without_volume_group_gives_var_lib_vac_the_rest_of_the_disk(tmp_path: Path) -> None:
    document = example_document()
    document["partitioning"] = {"root_gb": 30}
    document["local_squid"] = False
    site = viab.parse_site(document, "site.json")
    factory = site.factories[2]
    text = viab.render_kickstart(site, factory, viab.Templates.read(viab.TEMPLATES_DIR).kickstart, TEST_KEY)
    lines = text.splitlines()
    assert f"part pv.system --fstype=lvmpv --ondisk={DISKS['factory03.example.org']} --size=1 --grow" in lines
    assert "logvol / --vgname=vg_system --name=root --fstype=xfs --size=30720" in lines
    assert "logvol /var/lib/vac --vgname=vg_system --name=vac --fstype=xfs --size=1 --grow" in lines
    assert "vac_volume_group" not in text
    assert "squid" not in lines[lines.index("%packages"):lines.index("%end")]
    assert "vac squid-conf" not in text
    assert "firewall --enabled --ssh --port=995:udp" in lines


def test_boot_entries_are_keyed_by_mac_and_boot_that_factory_kickstart(generated: Path) -> None:
    pxelinux = (generated / "pxelinux.cfg" / "01-52-54-00-00-02-11").read_text()
    grub = (generated / "grub" / "grub.cfg-01-52-54-00-00-02-11").read_text()
    arguments = ("inst.ks=http://install.example.org/viab/kickstart/factory01.example.org.ks "
                 "inst.repo=http://mirror.example.org/almalinux/9/BaseOS/x86_64/os/ ip=dhcp "
                 "BOOTIF=01-52-54-00-00-02-11 inst.proxy=http://proxy.example.org:3128")
    assert "DEFAULT viab-install" in pxelinux
    assert "  KERNEL almalinux9/vmlinuz" in pxelinux
    assert f"  APPEND initrd=almalinux9/initrd.img {arguments}" in pxelinux
    assert "set default=0" in grub
    assert f"    linux /almalinux9/vmlinuz {arguments}" in grub
    assert "    initrd /almalinux9/initrd.img" in grub


def test_pxe_default_local_boots_the_disk_unless_chosen() -> None:
    document = example_document()
    document["pxe"]["default"] = "local"
    site = viab.parse_site(document)
    templates = viab.Templates.read(viab.TEMPLATES_DIR)
    assert "DEFAULT local" in viab.render_boot_entry(site, site.factories[0], templates.pxelinux)
    assert "set default=1" in viab.render_boot_entry(site, site.factories[0], templates.grub)


def test_invalid_description_reports_every_problem_with_its_place() -> None:
    document = example_document()
    document["factories"][0]["mac"] = "52:54:00:00:02"
    document["factories"][1]["hostname"] = "factory02"
    document["factories"][2]["ip"] = "192.0.2.11"
    document["factories"][2]["colour"] = "blue"
    document["settings"]["vac_space"] = "other.example.org"
    document["machinetypes"]["Bad_Name"] = {}
    document["network"]["gateway"] = "192.0.2.300"
    with pytest.raises(viab.SiteErrors) as raised:
        viab.parse_site(document, "site.json")
    problems = raised.value.problems
    expected = ("factories[0].mac: expected a MAC address", "factories[1].hostname: expected a fully qualified",
                "factories[2].ip: 192.0.2.11 is used by factories[0] too", "factories[2].colour: unknown key",
                "settings.vac_space: set from the description's own keys", "machinetypes.Bad_Name: a name is",
                "network.gateway: expected an IPv4 address")
    for start in expected:
        assert any(problem.startswith(start) for problem in problems), (start, problems)
    assert str(raised.value).startswith("site.json: ")


def test_line_breaks_and_quotes_cannot_reach_the_kickstart() -> None:
    for place, value in ((("settings", "description"), "ok\n%post\nrm -rf /"),
                         (("machinetypes", "example", "user_data"), "x\nVIAB_EOF"),
                         (("settings", "description"), " leading blank"),
                         (("install", "url"), 'http://mirror.example.org/" --proxy="x'),
                         (("pxe", "kernel"), "../../etc/shadow"),
                         (("install", "proxy"), "http://proxy.example.org:3128/$(reboot)")):
        document = example_document()
        target = document
        for key in place[:-1]:
            target = target[key]
        target[place[-1]] = value
        with pytest.raises(viab.SiteErrors) as raised:
            viab.parse_site(document)
        assert any(problem.startswith(".".join(place)) for problem in raised.value.problems), raised.value.problems
    document = example_document()
    document["root_ssh_keys"] = ['ssh-ed25519 AAAA admin" --username=other "x']
    with pytest.raises(viab.SiteErrors):
        viab.parse_site(document)


def test_space_must_not_be_a_factory_name() -> None:
    document = example_document()
    document["space"] = "factory01.example.org"
    with pytest.raises(viab.SiteErrors) as raised:
        viab.parse_site(document)
    assert any(problem.startswith("space: must not be the name of a factory") for problem in raised.value.problems)


def test_volume_group_layout_needs_a_size_for_var_lib_vac() -> None:
    document = example_document()
    document["partitioning"] = {"vac_volume_group": True}
    with pytest.raises(viab.SiteErrors) as raised:
        viab.parse_site(document)
    assert any(problem.startswith("partitioning.var_lib_vac_gb: needed") for problem in raised.value.problems)


def test_not_json_is_reported_with_its_line() -> None:
    with pytest.raises(viab.SiteErrors) as raised:
        viab.load_site('{\n  "space": \n}', "broken.json")
    assert raised.value.problems[0].startswith("line 3 column 1: not JSON")


def test_main_writes_files_and_check_only_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert viab.main(["--check", str(EXAMPLE)]) == 0
    assert "valid: space vac01.example.org, 3 factories (checked by vacd's parser)" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
    assert viab.main([str(EXAMPLE), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out/kickstart/factory01.example.org.ks").is_file()
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"space": "nodot"}))
    assert viab.main(["--check", str(broken)]) == 1
    assert f"{broken}: space: expected a fully qualified" in capsys.readouterr().err


def test_options_vacd_refuses_are_reported_before_anything_is_written(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    document = example_document()
    document["machinetypes"]["example"]["max_processors"] = "eight"
    site_file = tmp_path / "site.json"
    site_file.write_text(json.dumps(document))
    assert viab.main([str(site_file), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    # One error per factory, located in the file the kickstart would write.
    assert err.count("/etc/vac.d/30-viab-machinetypes.conf:11: [machinetype example] max_processors:") == 3
    assert not (tmp_path / "out").exists()


def test_options_vacd_would_ignore_are_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = example_document()
    document["settings"]["mb_per_processr"] = 2048
    site_file = tmp_path / "site.json"
    site_file.write_text(json.dumps(document))
    assert viab.main(["--check", str(site_file)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "mb_per_processr" in line]
    assert len(warnings) == 3 and all(line.startswith("viab-generate: warning: factory0") for line in warnings)


@pytest.mark.allow_commands("vermin")
def test_generator_runs_on_python_39() -> None:
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(vermin).is_file():
        pytest.skip("vermin is not installed (pip install vermin)")
    completed = subprocess.run([vermin, "--target=3.9-", "--violations", "--no-tips",
                                "--eval-annotations", str(GENERATOR)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr


# ------------------------------------------------------------------ ksvalidator

def ksvalidator() -> str:
    """pykickstart's ksvalidator (the test extra installs it beside this Python)."""
    found = shutil.which("ksvalidator") or str(Path(sys.executable).with_name("ksvalidator"))
    if not Path(found).is_file():
        pytest.skip("ksvalidator is not installed (pip install pykickstart)")
    return found


@pytest.mark.allow_commands("ksvalidator")
def test_every_kickstart_of_the_example_site_passes_ksvalidator_for_rhel9(generated: Path) -> None:
    kickstarts = sorted((generated / "kickstart").glob("*.ks"))
    assert [path.name for path in kickstarts] == [f"{hostname}.ks" for hostname in sorted(DISKS)]
    for path in kickstarts:
        completed = subprocess.run([ksvalidator(), "-v", "RHEL9", str(path)], capture_output=True, text=True,
                                   timeout=120)
        # ksvalidator prints only "Checking kickstart file ..." when the file is clean; an
        # error or a deprecation is printed and makes the status 1.
        report = [line for line in (completed.stdout + completed.stderr).splitlines()
                  if line.strip() and not line.startswith("Checking kickstart file")]
        assert (completed.returncode, report) == (0, []), path.name


@pytest.mark.allow_commands("ksvalidator")
def test_ksvalidator_here_refuses_what_rhel9_removed(tmp_path: Path) -> None:
    # The check above means something only if this ksvalidator knows RHEL 9's syntax.
    removed = tmp_path / "removed.ks"
    removed.write_text("authconfig --enableshadow\n")
    completed = subprocess.run([ksvalidator(), "-v", "RHEL9", str(removed)], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode != 0


# ------------------------------------------------------------------ dnsmasq

def dnsmasq_test(config: Path) -> subprocess.CompletedProcess[str]:
    """`dnsmasq --test`: parses the file and exits; it binds no port and sends nothing."""
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(dnsmasq).is_file():
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    return subprocess.run([dnsmasq, "--test", "-C", str(config)], capture_output=True, text=True, timeout=60)


def dnsmasq_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.allow_commands("dnsmasq")
def test_dnsmasq_configuration_passes_dnsmasq_test(generated: Path) -> None:
    completed = dnsmasq_test(generated / "dnsmasq" / "viab-dnsmasq.conf")
    assert completed.returncode == 0, completed.stderr
    assert "syntax check OK" in completed.stdout + completed.stderr


def test_dnsmasq_gives_each_known_factory_its_mac_address_and_name_and_no_one_else_anything(
        generated: Path) -> None:
    lines = dnsmasq_lines((generated / "dnsmasq" / "viab-dnsmasq.conf").read_text())
    assert [line for line in lines if line.startswith("dhcp-host=")] == [
        "dhcp-host=52:54:00:00:02:11,192.0.2.11,factory01.example.org",
        "dhcp-host=52:54:00:00:02:12,192.0.2.12,factory02.example.org",
        "dhcp-host=52:54:00:00:02:13,192.0.2.13,factory03.example.org"]
    assert "domain=example.org,192.0.2.13/32" in lines
    # Static mode hands out only the addresses of dhcp-host lines; unknown hosts are ignored.
    assert [line for line in lines if line.startswith("dhcp-range=")] == [
        "dhcp-range=set:viab,192.0.2.0,static,255.255.255.0,1h"]
    assert "dhcp-ignore=tag:!known" in lines
    assert "dhcp-option=tag:viab,option:router,192.0.2.1" in lines
    assert "dhcp-option=tag:viab,option:dns-server,192.0.2.53,192.0.2.54" in lines
    # No DNS server on the install host.
    assert "port=0" in lines


def test_dnsmasq_boots_uefi_with_the_uefi_loader_and_bios_with_pxelinux(generated: Path) -> None:
    lines = dnsmasq_lines((generated / "dnsmasq" / "viab-dnsmasq.conf").read_text())
    assert "dhcp-match=set:efi-x86_64,option:client-arch,7" in lines
    assert "dhcp-match=set:efi-x86_64,option:client-arch,9" in lines
    assert "dhcp-boot=tag:viab,tag:efi-x86_64,shimx64.efi" in lines
    assert "dhcp-boot=tag:viab,tag:!efi-x86_64,pxelinux.0" in lines
    assert ["enable-tftp", "tftp-root=/var/lib/tftpboot"] == [
        line for line in lines if line.startswith(("enable-tftp", "tftp-root="))]


@pytest.mark.allow_commands("dnsmasq")
def test_dnsmasq_points_at_another_tftp_server_and_binds_one_interface_when_told(tmp_path: Path) -> None:
    document = example_document()
    document["pxe"].update({"tftp_server": "192.0.2.5", "dhcp_interface": "eth1", "uefi_loader": "efi/grubx64.efi"})
    text = viab.render_dnsmasq(viab.parse_site(document, "site.json"))
    lines = dnsmasq_lines(text)
    assert "dhcp-boot=tag:viab,tag:efi-x86_64,efi/grubx64.efi,,192.0.2.5" in lines
    assert "dhcp-boot=tag:viab,tag:!efi-x86_64,pxelinux.0,,192.0.2.5" in lines
    assert "enable-tftp" not in lines and not any(line.startswith("tftp-root=") for line in lines)
    assert ["interface=eth1", "bind-interfaces"] == [
        line for line in lines if line.startswith(("interface=", "bind-interfaces"))]
    config = tmp_path / "viab-dnsmasq.conf"
    config.write_text(text)
    completed = dnsmasq_test(config)
    assert completed.returncode == 0, completed.stderr


def test_dnsmasq_settings_are_validated_with_their_place() -> None:
    document = example_document()
    document["pxe"].update({"tftp_server": "install.example.org", "dhcp_interface": "eth1,eth2",
                            "tftp_root": "srv/tftp", "bios_loader": "../pxelinux.0"})
    with pytest.raises(viab.SiteErrors) as raised:
        viab.parse_site(document)
    for place in ("pxe.tftp_server: expected an IPv4 address", "pxe.dhcp_interface: expected an interface name",
                  "pxe.tftp_root: expected an absolute path", "pxe.bios_loader: expected a path relative"):
        assert any(problem.startswith(place) for problem in raised.value.problems), (place, raised.value.problems)


def test_a_line_break_in_the_file_name_stays_inside_the_comments() -> None:
    site = viab.parse_site(example_document(), "site\nport=53\n%post.json")
    generated_files = viab.output_files(site, viab.Templates.read(viab.TEMPLATES_DIR), TEST_KEY)
    assert "port=53" not in dnsmasq_lines(generated_files["dnsmasq/viab-dnsmasq.conf"])
    for relative, content in generated_files.items():
        if relative.startswith(("kickstart/", "vac.d/", "dnsmasq/")):
            assert "site?port=53?%post.json" in content, relative
        assert not any(line.startswith(("port=53", "%post.json")) for line in content.splitlines()), relative


# ------------------------------------------------------------------ disks by id

@pytest.mark.parametrize("disk", ["sda", "nvme0n1", "/dev/sda", "disk/by-id/wwn-0x5000c500a1b2c311",
                                  "/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
                                  "/dev/disk/by-id/wwn-0x5000c500a1b2c311-part1",
                                  "/dev/disk/by-id/ata-Disk\\x20One"])
def test_a_disk_not_named_by_its_whole_disk_id_is_refused(disk: str) -> None:
    document = example_document()
    document["factories"][1]["disk"] = disk
    with pytest.raises(viab.SiteErrors) as raised:
        viab.parse_site(document)
    assert any(problem.startswith("factories[1].disk: expected a whole disk by id such as /dev/disk/by-id/")
               for problem in raised.value.problems), raised.value.problems


# ------------------------------------------------------------------ the VacQuery key

def test_site_key_is_made_once_with_mode_0600_and_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    assert viab.main([str(EXAMPLE), str(output)]) == 0
    assert "made the site's VacQuery key" in capsys.readouterr().err
    key_file = output / "vacquery.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = load_site_key(key_file)
    assert len(key) >= 32
    assert viab.main([str(EXAMPLE), str(output)]) == 0
    assert "made the site's VacQuery key" not in capsys.readouterr().err
    assert load_site_key(key_file) == key
    for hostname in DISKS:
        ks = output / "kickstart" / f"{hostname}.ks"
        # The kickstarts hold the key: the owner and the web server's group only.
        assert stat.S_IMODE(ks.stat().st_mode) == 0o640
        assert f"<<'VIAB_EOF'\n{key.decode()}\nVIAB_EOF" in ks.read_text()
    # The review copies and the dnsmasq configuration do not hold it.
    for path in list((output / "vac.d").rglob("*.conf")) + [output / "dnsmasq" / "viab-dnsmasq.conf"]:
        assert key.decode() not in path.read_text()


@pytest.mark.allow_commands("sh")
def test_key_written_by_the_kickstart_post_is_root_only_and_what_vacd_reads(generated: Path,
                                                                           tmp_path: Path) -> None:
    post = kickstart(generated, "factory01.example.org").split("%post", 1)[1]
    lines = post.splitlines()
    start = lines.index("install -m 0600 /dev/null /etc/vac-vacquery.key")
    assert lines[start + 1:start + 4] == ["cat > /etc/vac-vacquery.key <<'VIAB_EOF'", TEST_KEY, "VIAB_EOF"]
    # Run the %post's own lines with the path moved under tmp_path, as the installer's shell would.
    target = tmp_path / "vac-vacquery.key"
    script = tmp_path / "key.sh"
    script.write_text("set -eu\numask 022\n" + "\n".join(lines[start:start + 4]).replace(
        "/etc/vac-vacquery.key", str(target)) + "\n")
    completed = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert load_site_key(target) == TEST_KEY.encode()


def test_an_existing_key_others_can_read_or_not_a_key_stops_the_generator(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "site.key"
    key_file.write_text(TEST_KEY + "\n")
    key_file.chmod(0o644)
    assert viab.main(["--vacquery-key", str(key_file), str(EXAMPLE), str(tmp_path / "out")]) == 1
    assert f"{key_file}: the VacQuery key may be read by others (mode 0644); chmod 0600" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    key_file.chmod(0o600)
    key_file.write_text("short\n")
    assert viab.main(["--vacquery-key", str(key_file), str(EXAMPLE), str(tmp_path / "out")]) == 1
    assert "not a VacQuery key" in capsys.readouterr().err
    key_file.write_text(TEST_KEY + "\n")
    assert viab.main(["--vacquery-key", str(key_file), str(EXAMPLE), str(tmp_path / "out")]) == 0
    assert TEST_KEY in (tmp_path / "out/kickstart/factory02.example.org.ks").read_text()
    assert not (tmp_path / "out" / "vacquery.key").exists()


def test_vacquery_key_file_cannot_be_set_in_the_description() -> None:
    document = example_document()
    document["settings"]["vacquery_key_file"] = "/etc/other.key"
    with pytest.raises(viab.SiteErrors) as raised:
        viab.parse_site(document)
    assert any(problem.startswith("settings.vacquery_key_file: set from the description's own keys")
               for problem in raised.value.problems)


# ------------------------------------------------------------------ man page

def test_man_page_describes_every_option_output_and_site_key() -> None:
    page = (REPOSITORY / "man" / "viab-generate.8").read_text(encoding="utf-8").replace("\\-", "-")
    for option in ("--check", "--templates", "--vacquery-key", "--version"):
        assert option in page, option
    for output in ("kickstart/", "pxelinux.cfg/", "grub/grub.cfg-01-", "vac.d/", "dnsmasq/viab-dnsmasq.conf",
                   "vacquery.key", "/etc/vac-vacquery.key", "dnsmasq --test", "ksvalidator"):
        assert output in page, output
    for key in (*example_document(), *example_document()["pxe"], "tftp_server", "dhcp_interface"):
        assert key in page, key


# Any JSON value in place of any part of a valid description: a Site or SiteErrors, never
# another exception; and a Site always renders.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [prefix] + [path for key, child in value.items() for path in leaf_paths(child, prefix + (key,))]
    if isinstance(value, list):
        return [prefix] + [path for index, child in enumerate(value) for path in leaf_paths(child, prefix + (index,))]
    return [prefix]


EXAMPLE_PATHS = leaf_paths(example_document())[1:]
HAVE_PYKICKSTART = importlib.util.find_spec("pykickstart") is not None


@settings(max_examples=200, deadline=None)
@given(place=st.sampled_from(EXAMPLE_PATHS), replacement=json_values)
def test_any_damage_to_a_description_gives_a_site_or_site_errors(place: tuple[Any, ...], replacement: Any) -> None:
    document = copy.deepcopy(example_document())
    target = document
    for key in place[:-1]:
        target = target[key]
    target[place[-1]] = replacement
    try:
        site = viab.parse_site(document)
    except viab.SiteErrors as errors:
        assert errors.problems
        return
    templates = viab.Templates.read(viab.TEMPLATES_DIR)
    for relative, content in viab.output_files(site, templates, TEST_KEY).items():
        if relative.startswith("kickstart/"):
            # Every here-document still ends where the generator ended it, and Anaconda's
            # parser accepts the result.
            assert content.count("<<'VIAB_EOF'") == len(re.findall(r"^VIAB_EOF$", content, re.MULTILINE))
            if HAVE_PYKICKSTART:
                rhel9_kickstart(content)


@settings(max_examples=100, deadline=None)
@given(document=json_values)
def test_any_json_document_gives_a_site_or_site_errors(document: Any) -> None:
    with pytest.raises(viab.SiteErrors):
        viab.parse_site(document)
