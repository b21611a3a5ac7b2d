"""Session tokens from a real guest: a busybox VM on QEMU under the real vacd (issue 11 item 3).

With `metadata_tokens = required`, the first machine in the one slot asks for a token with
a raw PUT (busybox nc: busybox wget cannot PUT), uses it with `wget --header`, and checks the
refusals a guest can see: no token, no lifetime, a forwarded PUT; cloud-init's paths answer
it without a token. It reports its token through $JOBOUTPUTS. The test then writes that token
into the machinetype's user_data, so the slot's next machine (the same slot, a new UUID)
presents the old token: refused, while a token of its own is taken.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.integration.conftest import TestGuest
# `factory`: a RunningFactory in tmp_path, killed and its domains destroyed afterwards.
from tests.integration.test_vacd_real_vms import RunningFactory, factory  # noqa: F401

pytestmark = pytest.mark.vm

MACHINETYPE = "tokens"
# Shell helpers for the guest (busybox sh). `status` prints the status code of a request.
HELPERS = r"""
metadata=169.254.169.254
request() {  # request RAW-HEAD: send it to the metadata server, print the response
    printf "$1" | timeout 10 nc "$metadata" 80
}
status() {
    request "$1" | head -n 1 | cut -d ' ' -f 2
}
new_token() {  # new_token: a fresh token, retried while the network settles
    attempt=1
    while [ "$attempt" -le 10 ]; do
        response=$(request 'PUT /latest/api/token HTTP/1.0\r\nHost: m\r\nX-aws-ec2-metadata-token-ttl-seconds: 300\r\n\r\n')
        case "$response" in
            "HTTP/1.1 200"*) echo "$response" | sed -n '$p'; return 0 ;;
        esac
        attempt=$((attempt + 1))
        sleep 1
    done
    return 1
}
with_token() {  # with_token TOKEN PATH: "ok" if busybox wget fetched PATH with the token
    timeout 10 wget -q -O /tmp/fetched --header "X-aws-ec2-metadata-token: $1" "http://$metadata$2" && echo ok || echo refused
}
"""

FIRST_PAYLOAD = HELPERS + r"""
token=$(new_token)
result="token_shape=$(echo "$token" | grep -c '^v1\.')"
result="$result with_token=$(with_token "$token" /latest/meta-data.json)"
result="$result uuid_served=$(grep -o '"uuid": "[^"]*"' /tmp/fetched | cut -d '"' -f 4)"
result="$result no_token=$(status 'GET /latest/meta-data.json HTTP/1.0\r\nHost: m\r\n\r\n')"
result="$result bad_token=$(status 'GET /latest/meta-data.json HTTP/1.0\r\nHost: m\r\nX-aws-ec2-metadata-token: v1.x\r\n\r\n')"
result="$result no_ttl=$(status 'PUT /latest/api/token HTTP/1.0\r\nHost: m\r\n\r\n')"
result="$result forwarded=$(status 'PUT /latest/api/token HTTP/1.0\r\nHost: m\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n')"
result="$result cloud_init=$(status 'GET /openstack/latest/meta_data.json HTTP/1.0\r\nHost: m\r\n\r\n')"
http-put http://169.254.169.253/joboutputs/token-check "$result"
http-put http://169.254.169.253/joboutputs/token "$token"
# Time for the test to put this token into the next machine's user_data.
sleep 30
http-put http://169.254.169.253/joboutputs/shutdown_message '200 Success'
"""

SECOND_PAYLOAD = HELPERS + r"""
old_token='@OLD_TOKEN@'
result="old_token=$(status "GET /latest/meta-data.json HTTP/1.0\r\nHost: m\r\nX-aws-ec2-metadata-token: $old_token\r\n\r\n")"
token=$(new_token)
result="$result own_token=$(with_token "$token" /latest/meta-data.json)"
result="$result uuid_served=$(grep -o '"uuid": "[^"]*"' /tmp/fetched | cut -d '"' -f 4)"
http-put http://169.254.169.253/joboutputs/token-check "$result"
http-put http://169.254.169.253/joboutputs/shutdown_message '200 Success'
"""


def findings(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in path.read_text().split())


def test_real_guest_gets_a_token_and_the_slots_next_machine_cannot_use_it(
    factory: RunningFactory, test_guest: TestGuest  # noqa: F811
) -> None:
    # The factory fixture sets overload_per_processor: other work must not hold creations back.
    settings = "metadata_tokens = required"
    factory.configure(test_guest, total_processors=1, extra_settings=settings,
                      machinetypes={MACHINETYPE: {"payload": FIRST_PAYLOAD}})
    factory.start()

    def first_token() -> bool:
        records = factory.records()
        return bool(records) and (Path(records[0]["directory"]) / "joboutputs" / "token").exists()

    factory.wait_for("the first guest's token", first_token, timeout=180)
    first = factory.records()[0]
    token = (Path(first["directory"]) / "joboutputs" / "token").read_text().strip()
    assert re.fullmatch(r"v1\.[A-Za-z0-9_-]{11}\.[A-Za-z0-9_-]{43}", token), token
    # The next machine in the slot is created from this user_data (read at each creation).
    payload = factory.prefix / "var/lib/vac/machinetypes" / MACHINETYPE / "files" / "payload.sh"
    temporary = payload.with_name("payload.sh.tmp")
    temporary.write_text("#!/bin/sh\n" + SECOND_PAYLOAD.replace("@OLD_TOKEN@", token))
    os.replace(temporary, payload)

    first_check = findings(Path(first["directory"]) / "joboutputs" / "token-check")
    assert first_check == {
        "token_shape": "1", "with_token": "ok", "uuid_served": first["uuid"], "no_token": "401",
        "bad_token": "401", "no_ttl": "400", "forwarded": "403", "cloud_init": "200",
    }

    def second_reported() -> bool:
        records = factory.records()
        return len(records) >= 2 and (Path(records[1]["directory"]) / "joboutputs" / "token-check").exists()

    factory.wait_for("the slot's next machine's report", second_reported, timeout=240)
    second = factory.records()[1]
    assert second["ordinal"] == first["ordinal"] and second["uuid"] != first["uuid"]
    assert findings(Path(second["directory"]) / "joboutputs" / "token-check") == {
        "old_token": "401", "own_token": "ok", "uuid_served": second["uuid"],
    }
    assert token not in factory.log_text()
