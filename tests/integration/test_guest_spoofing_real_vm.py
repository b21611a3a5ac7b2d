"""A real guest that poses as its neighbour gets nothing of the neighbour's (issue 11 item 3).

vacd runs two guests of one machinetype on real QEMU. The one in slot 0 is the victim: it
sleeps, then reports its own result. The other one is the attacker: once the victim answers
on the network, it takes the victim's address (first with its own MAC, then with the
victim's MAC too), asks the metadata server for the victim's instance-id and tries to PUT
a space-wide backoff ("300 …") into the victim's $JOBOUTPUTS. Then it goes back to its own
address and MAC and PUTs what it saw into its own $JOBOUTPUTS, where the test reads it.

Two locks stand in its way: vacd's nftables table on the slots' taps (which drops the
spoofed frames, vacd.backends.slotfilter; the test reads both slots' pins in the kernel
while both guests run) and vacd's link-layer check (vacd.guestapi.linkidentity, which would refuse
a source whose frames come from another slot's tap); tests/vacd/guestapi/test_link_identity.py
shows the second one alone on a real bridge.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import TestGuest
from tests.integration.test_guest_filter_rules_real_vm import live_interface
from tests.integration.test_vacd_real_vms import RunningFactory, factory, slot_name  # noqa: F401  (fixture)
from vacd.backends.slotfilter import TapPin, pins_in_table, read_table
from vacd.slots import ip_address_for, mac_address_for, slot_tap_name

pytestmark = pytest.mark.vm

VICTIM = ip_address_for(0)
VICTIM_MAC = mac_address_for(VICTIM)

# One payload for both slots: the guest's own address decides its part. busybox sh only.
PAYLOAD = f"""
me=$(ip -4 -o addr show eth0 | awk '{{print $4}}' | cut -d/ -f1)
if [ "$me" = "{VICTIM}" ]; then
    sleep 75
    http-put http://169.254.169.253/joboutputs/shutdown_message '200 Victim finished its own work'
    exit 0
fi
my_mac=$(cat /sys/class/net/eth0/address)
waited=0
until ping -c 1 -W 1 {VICTIM} >/dev/null 2>&1 || [ "$waited" -ge 60 ]; do
    sleep 1; waited=$((waited + 1))
done
attempt() {{
    if timeout 8 wget -q -O /tmp/id http://169.254.169.254/latest/meta-data/instance-id; then
        echo "$1-metadata=got:$(cat /tmp/id)"
    else
        echo "$1-metadata=nothing"
    fi
    if http-put http://169.254.169.253/joboutputs/shutdown_message '300 Hijacked by a neighbour' >/dev/null 2>&1
    then
        echo "$1-put=accepted"
    else
        echo "$1-put=refused"
    fi
}}
own_id=$(timeout 8 wget -q -O - http://169.254.169.254/latest/meta-data/instance-id)
ip addr flush dev eth0
ip addr add {VICTIM}/16 dev eth0
attempt address > /tmp/result
ip link set eth0 down
ip link set eth0 address {VICTIM_MAC}
ip link set eth0 up
ip addr flush dev eth0
ip addr add {VICTIM}/16 dev eth0
attempt address-and-mac >> /tmp/result
ip link set eth0 down
ip link set eth0 address "$my_mac"
ip link set eth0 up
ip addr flush dev eth0
ip addr add "$me/16" dev eth0
sleep 2
echo "own-id=$own_id waited=$waited" >> /tmp/result
http-put http://169.254.169.253/joboutputs/spoof_result "$(cat /tmp/result)"
http-put http://169.254.169.253/joboutputs/shutdown_message '200 Attacker reported'
"""


def test_guest_posing_as_its_neighbour_gets_nothing_and_cannot_end_it(
    factory: RunningFactory, test_guest: TestGuest  # noqa: F811
) -> None:
    factory.configure(test_guest, total_processors=2, machinetypes={
        "guests": {"payload": PAYLOAD, "max_wallclock_seconds": "600"},
    }, extra_settings="max_creations_per_cycle = 2")
    factory.start()

    def both_finished() -> bool:
        records = factory.records()
        return len([record for record in records if record["finished"] is not None and record["ordinal"] in (0, 1)
                    and record["uuid"] in first_two]) == 2

    factory.wait_for("two guests", lambda: len(factory.records()) >= 2, timeout=120)
    first_two = {record["uuid"] for record in factory.records()[:2]}
    # Both run on their slots' own taps, each pinned to its slot in vacd's table in the kernel.
    factory.wait_for("two running guests", lambda: len(factory.running_domains()) >= 2, timeout=120)
    pins = pins_in_table(read_table() or [])
    for ordinal in (0, 1):
        interface = live_interface(factory.uri, slot_name(ordinal))
        target = interface.find("target")
        assert interface.get("type") == "ethernet" and target is not None
        assert target.get("dev") == slot_tap_name(ordinal)
        address = ip_address_for(ordinal)
        assert TapPin(slot_tap_name(ordinal), mac_address_for(address).lower(), address) in pins
    factory.wait_for("both guests finished", both_finished, timeout=300)
    by_ordinal = {record["ordinal"]: record for record in factory.records() if record["uuid"] in first_two}
    victim, attacker = by_ordinal[0], by_ordinal[1]

    assert victim["finished"]["shutdown_message"] == "200 Victim finished its own work"
    assert attacker["finished"]["shutdown_message"] == "200 Attacker reported"
    report = dict(line.split("=", 1) for line in
                  (factory.prefix / attacker["directory"] / "joboutputs" / "spoof_result").read_text().split()
                  if "=" in line)
    # The attacker really was on the network as itself, and did see the victim up.
    assert report["own-id"], report
    assert int(report["waited"]) < 60, report
    assert report["address-metadata"] == "nothing", report
    assert report["address-put"] == "refused", report
    assert report["address-and-mac-metadata"] == "nothing", report
    assert report["address-and-mac-put"] == "refused", report
