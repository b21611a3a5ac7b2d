"""The MJF and $JOBOUTPUTS server (169.254.169.253) over real sockets (acceptance 12, 13, 25)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from tests.vacd.guestapi.conftest import CREATED_TIME, RunningServer, Site, parse_responses, read_until_closed
from vacd.guestapi.features import features_index
from vacd.guestapi.joboutputs import RECEIVED_FILE, received_times, shutdown_message_time
from vacd.mjf import lower_shutdown_time
from vacd.recordformats import SHUTDOWN_RECEIPT_FILE
from vacd.records import FinishRecord

UUID_3 = "1b4e28ba-2fa1-11d2-883f-000000000003"


@pytest.fixture
def machine_dir(site: Site, running_server: RunningServer) -> Path:
    _record, directory = site.create_machine(3)
    return directory


@pytest.mark.parametrize("path", ["/jobfeatures/", "/jobfeatures"])
def test_jobfeatures_index_is_vacs_html_list(machine_dir: Path, running_server: RunningServer, path: str) -> None:
    response = running_server.get(path, part="mjf")
    assert response.status == 200
    assert response.headers["content-type"] == "text/html"
    body = response.body.decode()
    assert body.startswith("<html><body><ul>") and body.endswith("</ul></body></html>")
    assert '<li><a href="job_id">job_id</a></li>' in body
    assert '<li><a href="allocated_CPU">allocated_CPU</a></li>' in body


def test_machinefeatures_index_lists_its_keys(machine_dir: Path, running_server: RunningServer) -> None:
    body = running_server.get("/machinefeatures/", part="mjf").body.decode()
    for key in ("hs06", "total_cpu", "jobslots", "shutdowntime", "phys_cores", "log_cores"):
        assert f'<a href="{key}">{key}</a>' in body


def test_job_id_is_the_uuid_as_text(machine_dir: Path, running_server: RunningServer) -> None:
    response = running_server.get("/jobfeatures/job_id", part="mjf")
    assert (response.status, response.headers["content-type"], response.body) == (200, "text/plain", UUID_3.encode())


def test_mjf_values_over_http(machine_dir: Path, running_server: RunningServer) -> None:
    def value(path: str) -> str:
        return running_server.get(path, part="mjf").body.decode()

    assert value("/machinefeatures/hs06") == "20"
    assert value("/machinefeatures/total_cpu") == "2"
    assert value("/jobfeatures/allocated_cpu") == "2\n"
    assert value("/jobfeatures/wall_limit_secs") == "86400"
    assert value("/jobfeatures/cpu_limit_secs") == "172800"


@pytest.mark.parametrize(
    "path",
    [
        "/jobfeatures/a/b",
        "/jobfeatures/../machinefeatures/total_cpu",
        "/jobfeatures/nonexistent",
        "/jobfeatures/job_id/",
        "/joboutputs",
        "/joboutputs/shutdown_message",
        "/",
        "/other/job_id",
        "/jobfeatures/%2e%2e",
    ],
)
def test_bad_or_unknown_feature_paths_are_not_found(machine_dir: Path, running_server: RunningServer, path: str) -> None:
    assert running_server.get(path, part="mjf").status == 404


def test_same_request_from_another_source_is_not_found(machine_dir: Path, running_server: RunningServer) -> None:
    # A slot with no machine is answered 404; a source that is no slot is reset at accept.
    assert running_server.get("/jobfeatures/job_id", part="mjf", source="127.0.0.4").status == 404
    for source in ("127.0.0.1", "127.0.0.250"):
        assert running_server.is_refused(b"GET /jobfeatures/job_id HTTP/1.0\r\n\r\n", part="mjf", source=source)


def test_lowered_shutdown_time_is_served_at_once(machine_dir: Path, running_server: RunningServer) -> None:
    assert running_server.get("/machinefeatures/shutdowntime", part="mjf").body == b"1700086400"
    assert lower_shutdown_time(machine_dir, 1_700_050_000, now=1_700_001_000)
    assert running_server.get("/machinefeatures/shutdowntime", part="mjf").body == b"1700050000"
    assert running_server.get("/jobfeatures/shutdowntime_job", part="mjf").body == b"1700050000"
    assert running_server.get("/jobfeatures/wall_limit_secs", part="mjf").body == b"50000"


# $JOBOUTPUTS (acceptance 13)
def test_put_shutdown_message_writes_it_and_records_when(machine_dir: Path, running_server: RunningServer) -> None:
    response = running_server.put("/joboutputs/shutdown_message", b"300 No work")
    assert response.status == 201
    assert (machine_dir / "joboutputs" / "shutdown_message").read_bytes() == b"300 No work"
    assert shutdown_message_time(machine_dir / "joboutputs") is not None


def test_first_receipt_time_is_kept_when_the_message_is_replaced(machine_dir: Path, running_server: RunningServer) -> None:
    receipts = machine_dir / "joboutputs" / RECEIVED_FILE
    running_server.put("/joboutputs/shutdown_message", b"200 Done")
    receipts.write_text(json.dumps({"shutdown_message": [1000, 1000]}))
    running_server.put("/joboutputs/shutdown_message", b"300 No work")
    first, last = json.loads(receipts.read_text())["shutdown_message"]
    assert first == 1000 and last > 1000
    assert (machine_dir / "joboutputs" / "shutdown_message").read_bytes() == b"300 No work"


def test_put_with_expect_continue_gets_100_then_201(machine_dir: Path, running_server: RunningServer) -> None:
    with running_server.connect("mjf") as client:
        client.sendall(
            b"PUT /joboutputs/heartbeat HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        interim = client.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"alive")
        final = client.recv(4096)
    assert final.startswith(b"HTTP/1.1 201 ")
    assert (machine_dir / "joboutputs" / "heartbeat").read_bytes() == b"alive"


@pytest.mark.parametrize(
    "path",
    [
        "/joboutputs/a/b",
        "/machinefeatures/x",
        "/jobfeatures/job_id",
        "/joboutputs/",
        "/joboutputs/.received.json",
        "/joboutputs/../user_data",
        "/joboutputs/%2Fetc",
        "/joboutputs/" + "n" * 256,
        "/joboutputs/%00x",
        "/joboutputs/a%0Ab",
        "/joboutputs/%2E%2E",
        "/joboutputs/.x.abcdefgh.tmp",
        "/joboutputs/%FF",
        "/joboutputs",
    ],
)
def test_put_outside_joboutputs_or_with_a_bad_name_is_forbidden(
    machine_dir: Path, running_server: RunningServer, path: str
) -> None:
    before = sorted(entry.name for entry in (machine_dir / "joboutputs").iterdir())
    assert running_server.put(path, b"x").status == 403
    assert sorted(entry.name for entry in (machine_dir / "joboutputs").iterdir()) == before
    assert (machine_dir / "jobfeatures" / "job_id").read_text() == UUID_3


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("/joboutputs/logs.tar.gz", "logs.tar.gz"),
        ("/joboutputs/job%20output%20(1).txt", "job output (1).txt"),
        ("/joboutputs/α.log", "α.log"),  # raw UTF-8 in the target, as Vac's server took it
        ("/joboutputs/%CE%B1.log", "α.log"),
        ("/joboutputs/a+b@c=d,e", "a+b@c=d,e"),
        ("/joboutputs/.hidden", ".hidden"),
        ("/joboutputs//shutdown_message", "shutdown_message"),
        ("/joboutputs/" + "n" * 255, "n" * 255),
    ],
)
def test_put_takes_the_names_vac_took(machine_dir: Path, running_server: RunningServer, target: str, name: str) -> None:
    assert running_server.put(target, b"data").status == 201
    joboutputs = machine_dir / "joboutputs"
    assert (joboutputs / name).read_bytes() == b"data"
    assert name in received_times(joboutputs)
    assert sorted(entry.name for entry in joboutputs.iterdir()) == sorted([name, RECEIVED_FILE])


def test_refused_name_is_logged_with_the_machine_and_answered_with_the_reason(
    site: Site, machine_dir: Path, running_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="vacd.guestapi.server"):
        response = running_server.put("/joboutputs/evil%1B%5B31m%E2%80%AE", b"x")
    assert response.status == 403
    assert response.body == b"refused: name contains a control character\n"
    (line,) = [entry.getMessage() for entry in caplog.records if "upload refused" in entry.getMessage()]
    assert site.record_for(3).name in line and "control character" in line
    assert line.isascii() and "\x1b" not in line and "%1B" in line


def test_a_guests_dot_file_counts_towards_its_quota(site: Site, machine_dir: Path, running_server: RunningServer) -> None:
    site.settings = replace(site.settings, joboutputs_quota_bytes=100)
    assert running_server.put("/joboutputs/.a", b"x" * 60).status == 201
    assert running_server.put("/joboutputs/b", b"y" * 60).status == 413


def test_put_without_content_length_is_length_required(machine_dir: Path, running_server: RunningServer) -> None:
    response = running_server.put("/joboutputs/log", b"", content_length=False)
    assert response.status == 411
    chunked = running_server.put(
        "/joboutputs/log", b"3\r\nabc\r\n0\r\n\r\n", content_length=False, headers={"Transfer-Encoding": "chunked"}
    )
    assert chunked.status == 411
    assert not (machine_dir / "joboutputs" / "log").exists()


def test_put_beyond_quota_is_refused_and_writes_nothing(site: Site, machine_dir: Path, running_server: RunningServer) -> None:
    site.settings = replace(site.settings, joboutputs_quota_bytes=100)
    assert running_server.put("/joboutputs/a", b"x" * 60).status == 201
    assert running_server.put("/joboutputs/b", b"y" * 60).status == 413
    assert not (machine_dir / "joboutputs" / "b").exists()
    # Replacing a file only counts the difference.
    assert running_server.put("/joboutputs/a", b"z" * 100).status == 201
    assert running_server.put("/joboutputs/a", b"z" * 101).status == 413
    assert (machine_dir / "joboutputs" / "a").read_bytes() == b"z" * 100


def test_put_from_another_source_changes_nothing(machine_dir: Path, running_server: RunningServer) -> None:
    assert running_server.put("/joboutputs/shutdown_message", b"300 forged", source="127.0.0.4").status == 404
    assert running_server.is_refused(b"PUT /joboutputs/shutdown_message HTTP/1.1\r\nContent-Length: 10\r\n\r\n"
                                     b"300 forged", part="mjf", source="127.0.0.1")
    assert not (machine_dir / "joboutputs" / "shutdown_message").exists()


def test_machine_in_its_shutdown_grace_may_still_report_its_own_outcome(
    site: Site, machine_dir: Path, running_server: RunningServer
) -> None:
    record = site.record_for(3)
    site.store.request_destroy(record, now=1_700_090_000, shutdown_message="700 Passed shutdowntime")
    assert running_server.put("/joboutputs/shutdown_message", b"200 Done").status == 201
    assert (machine_dir / "joboutputs" / "shutdown_message").read_text() == "200 Done"


def test_put_to_a_finished_machine_changes_nothing(site: Site, machine_dir: Path, running_server: RunningServer) -> None:
    record = site.record_for(3)
    site.store.request_destroy(record, now=1_700_090_000, shutdown_message="700 Passed shutdowntime")
    site.store.finish(record, FinishRecord(1_700_090_030, "700 Passed shutdowntime", 1_700_090_000, None, None, 0.0))
    assert running_server.put("/joboutputs/shutdown_message", b"200 Done").status == 404
    assert (machine_dir / "joboutputs" / "shutdown_message").read_text() == "700 Passed shutdowntime\n"


def test_put_is_counted(machine_dir: Path, running_server: RunningServer) -> None:
    running_server.put("/joboutputs/log", b"hello")
    assert running_server.server.counters[("mjf", "joboutputs", 201)] == 1


def test_index_skips_names_that_are_not_keys() -> None:
    assert features_index(["job_id", ".job_id.abc.tmp"]) == b'<html><body><ul><li><a href="job_id">job_id</a></li></ul></body></html>'


def test_refused_large_upload_still_gets_its_answer(site: Site, machine_dir: Path, running_server: RunningServer) -> None:
    site.settings = replace(site.settings, joboutputs_quota_bytes=1000)
    with running_server.connect("mjf") as client:
        client.sendall(b"PUT /joboutputs/big HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n")
        try:
            client.sendall(b"x" * 500_000)  # a client that does not wait for 100 Continue
        except OSError:
            pass  # the server may stop reading once it has answered
        (response,) = parse_responses(read_until_closed(client))
    assert response.status == 413
    assert not (machine_dir / "joboutputs" / "big").exists()


# Whose shutdown message it is (issue 11 item 4)
def test_put_shutdown_message_leaves_a_receipt_naming_the_machine_and_its_address(
    site: Site, machine_dir: Path, running_server: RunningServer
) -> None:
    assert running_server.put("/joboutputs/shutdown_message", b"300 No work\n").status == 201
    receipt = json.loads((machine_dir / SHUTDOWN_RECEIPT_FILE).read_text())
    assert receipt["uuid"] == UUID_3 and receipt["source_address"] == "127.0.0.3"
    assert receipt["message"] == "300 No work"
    record = site.record_for(3)
    judged = site.store.judged_shutdown_message(record, record.created_time, receipt["received_time"])
    assert judged is not None and judged.distrust_reason is None


def test_neighbours_put_lands_only_in_its_own_machine_directory(
    site: Site, machine_dir: Path, running_server: RunningServer
) -> None:
    neighbour, neighbour_dir = site.create_machine(4)
    assert running_server.put("/joboutputs/shutdown_message", b"300 from the neighbour", source="127.0.0.4").status == 201
    assert not (machine_dir / "joboutputs" / "shutdown_message").exists()
    assert not (machine_dir / SHUTDOWN_RECEIPT_FILE).exists()
    assert site.store.judged_shutdown_message(site.record_for(3), CREATED_TIME, CREATED_TIME + 10**9) is None
    receipt = json.loads((neighbour_dir / SHUTDOWN_RECEIPT_FILE).read_text())
    assert receipt["uuid"] == neighbour.uuid and receipt["source_address"] == "127.0.0.4"


def test_put_into_a_joboutputs_replaced_by_a_link_writes_nothing_there(
    tmp_path: Path, machine_dir: Path, running_server: RunningServer
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (machine_dir / "joboutputs").rename(tmp_path / "old-joboutputs")
    (machine_dir / "joboutputs").symlink_to(elsewhere, target_is_directory=True)
    assert running_server.put("/joboutputs/shutdown_message", b"300 No work").status == 500
    assert list(elsewhere.iterdir()) == []
    assert not (machine_dir / SHUTDOWN_RECEIPT_FILE).exists()
