"""The stand-in InferenceServer itself: submit, poll and delete over HTTPS, both generations,
each on its own port, behaving as the reference's "How the real server behaves" says."""

from __future__ import annotations

import io
import json
import re
import socket
import ssl
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.presentation import StoragePresentationContexts

from isdr.demo.serve_standin import READY, serve_standin
from isdr.demo.standin import PREDICTION, Flaky, StandIn
from isdr.domain.fingerprint import Fingerprint
from isdr.synthetic import SeriesSpec, make_instance


@pytest.fixture
def client(standin: StandIn) -> Iterator[httpx.Client]:
    trusted = ssl.create_default_context(cafile=str(standin.ca_file))
    with httpx.Client(verify=trusted, timeout=10) as opened:
        yield opened


def submit(client: httpx.Client, standin: StandIn, api: int) -> str:
    """Submit a one-file archive for ct-model; returns the task uid."""
    if api == 1:
        url = f"{standin.url_v1}?model_human_readable_id=ct-model"
        files = {"zip_file": ("series.zip", tiny_zip())}
    else:
        url = f"{standin.url_v2}/api/tasks/?human_readable_id=ct-model"
        files = {"tar_file": ("series.tar", tiny_tar())}
    response = client.post(url, files=files)
    assert response.status_code == 200
    answer = response.json()
    return str(answer if api == 1 else answer["uid"])


def poll_url(standin: StandIn, api: int, uid: str) -> str:
    if api == 1:
        return f"{standin.url_v1}{uid}"
    return f"{standin.url_v2}/api/tasks/outputs/?uid={uid}"


def delete_url(standin: StandIn, api: int, uid: str) -> str:
    if api == 1:
        return f"{standin.url_v1}{uid}"
    return f"{standin.url_v2}/api/tasks/?uid={uid}"


def poll(client: httpx.Client, standin: StandIn, api: int, uid: str) -> httpx.Response:
    return client.get(poll_url(standin, api, uid))


def statuses(client: httpx.Client, standin: StandIn, api: int, uid: str, count: int) -> list[int]:
    return [poll(client, standin, api, uid).status_code for _ in range(count)]


def tiny_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.dcm", b"not really DICOM")
    return buffer.getvalue()


def tiny_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("a.dcm")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"DICM"))
    return buffer.getvalue()


def test_a_v1_task_is_unknown_then_pending_then_a_zip_of_dicom_and_a_mask(
    client: httpx.Client, standin: StandIn
) -> None:
    uid = submit(client, standin, 1)
    assert statuses(client, standin, 1, uid, 2) == [554, 551]
    ready = poll(client, standin, 1, uid)
    assert ready.status_code == 200 and "content-type" not in ready.headers
    with zipfile.ZipFile(io.BytesIO(ready.content)) as archive:
        names = sorted(archive.namelist())
        instances = [dcmread(io.BytesIO(archive.read(n))) for n in names if n.endswith(".dcm")]
    assert "mask.nii.gz" in names and len(names) == 3
    assert [ds.SeriesDescription for ds in instances] == [PREDICTION, PREDICTION]
    task = standin.task_of()
    assert sorted(ds.SOPInstanceUID for ds in instances) == sorted(task.instance_uids)
    assert (task.uid, task.api, task.model, task.polls) == (uid, 1, "ct-model", 3)


def test_a_v2_task_is_pending_then_a_tar_with_an_empty_container_log(
    client: httpx.Client, standin: StandIn
) -> None:
    uid = submit(client, standin, 2)
    assert statuses(client, standin, 2, uid, 1) == [551]
    ready = poll(client, standin, 2, uid)
    assert ready.status_code == 200 and ready.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(ready.content)) as archive:
        members = {m.name: m.size for m in archive.getmembers()}
    assert members["container.log"] == 0 and "mask.nii.gz" in members
    assert len([name for name in members if name.endswith(".dcm")]) == 2
    assert all("/" not in name for name in members), "the archive is flat"


@pytest.mark.parametrize("api", [1, 2])
def test_a_ready_task_serves_the_same_archive_every_time(
    client: httpx.Client, standin: StandIn, api: int
) -> None:
    standin.v1_unknown_first, standin.polls_before_ready = False, 0
    uid = submit(client, standin, api)
    first, second = poll(client, standin, api, uid), poll(client, standin, api, uid)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert standin.gets == 2 and standin.task_of().polls == 2


@pytest.mark.parametrize(("api", "status"), [(1, 554), (2, 500)])
def test_an_unknown_uid_is_554_for_v1_and_500_for_v2(
    client: httpx.Client, standin: StandIn, api: int, status: int
) -> None:
    assert poll(client, standin, api, "no-such-task").status_code == status


@pytest.mark.parametrize(("api", "deleted_status", "unknown"), [(1, 500, 554), (2, 200, 500)])
def test_a_deleted_task_then_polls_as_unknown(
    client: httpx.Client, standin: StandIn, api: int, deleted_status: int, unknown: int
) -> None:
    standin.v1_unknown_first, standin.polls_before_ready = False, 0
    uid = submit(client, standin, api)
    deleted = client.delete(delete_url(standin, api, uid))
    assert deleted.status_code == deleted_status  # v1.2 deletes, then answers 500
    if api == 2:
        assert deleted.json()["uid"] == uid and deleted.json()["is_deleted"] is True
    assert standin.deleted == [uid] and standin.task_of().deleted
    assert poll(client, standin, api, uid).status_code == unknown
    assert client.delete(delete_url(standin, api, uid)).status_code == 554


def test_a_delete_behaviour_answers_once_and_deletes_nothing(
    client: httpx.Client, standin: StandIn
) -> None:
    standin.polls_before_ready = 0
    uid = submit(client, standin, 2)
    standin.delete_behaviours.append("500")
    assert client.delete(delete_url(standin, 2, uid)).status_code == 500
    assert standin.deleted == []
    assert client.delete(delete_url(standin, 2, uid)).status_code == 200


@pytest.mark.parametrize("outcome", ["552", "553"])
def test_an_outcome_replaces_the_ready_answer_of_every_task(
    client: httpx.Client, standin: StandIn, outcome: str
) -> None:
    standin.outcome = outcome
    uid = submit(client, standin, 1)
    assert statuses(client, standin, 1, uid, 4) == [554, 551, int(outcome), int(outcome)]


def test_a_task_that_never_ends_stays_pending(client: httpx.Client, standin: StandIn) -> None:
    standin.outcome, standin.polls_before_ready = "never", 0
    uid = submit(client, standin, 2)
    assert statuses(client, standin, 2, uid, 3) == [551, 551, 551]


def test_poll_behaviours_answer_first_and_leave_the_task_where_it_was(
    client: httpx.Client, standin: StandIn
) -> None:
    uid = submit(client, standin, 2)
    standin.hang_seconds = 0.05
    standin.poll_behaviours.extend(["503", "552", "hang", "drop"])
    assert statuses(client, standin, 2, uid, 3) == [503, 552, 503]
    with pytest.raises(httpx.RemoteProtocolError):
        poll(client, standin, 2, uid)
    assert statuses(client, standin, 2, uid, 2) == [551, 200]
    assert standin.gets == 6 and standin.task_of().polls == 2


def test_a_raw_output_is_served_as_is(client: httpx.Client, standin: StandIn) -> None:
    standin.raw_output, standin.polls_before_ready = b"PK hostile", 0
    uid = submit(client, standin, 2)
    ready = poll(client, standin, 2, uid)
    assert (ready.status_code, ready.content) == (200, b"PK hostile")


def test_a_stalled_submit_gets_no_answer_and_leaves_no_task(
    client: httpx.Client, standin: StandIn
) -> None:
    standin.hang_seconds = 0.1
    standin.behaviours.append("stall")
    with pytest.raises(httpx.RemoteProtocolError):
        submit(client, standin, 1)
    assert standin.submissions == [] and standin.tasks == {}
    assert submit(client, standin, 1) in standin.tasks


def test_a_flaky_server_troubles_a_seeded_share_of_every_kind_of_request(
    client: httpx.Client, standin: StandIn
) -> None:
    first, second = Flaky(0.2, seed=7), Flaky(0.2, seed=7)
    dealt = [first.draw("poll") for _ in range(2000)]
    assert dealt == [second.draw("poll") for _ in range(2000)]
    troubled = dealt.count("503") + dealt.count("stall")
    assert 300 < troubled < 500 and dealt.count("503") and dealt.count("stall")
    assert first.injected == {"poll 503": dealt.count("503"), "poll stall": dealt.count("stall")}
    standin.flaky = Flaky(1.0, seed=1, stall_share=0.0)
    assert client.get(poll_url(standin, 1, "any")).status_code == 503
    assert client.delete(delete_url(standin, 1, "any")).status_code == 503
    assert standin.flaky.requests == {"poll": 1, "delete": 1}


def test_a_submit_cut_before_its_closing_boundary_creates_no_task(standin: StandIn) -> None:
    """As a web framework: a request whose body never arrived whole is no request."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("1.dcm", b"not needed to be DICOM here")
    part = (
        b'--b\r\nContent-Disposition: form-data; name="zip_file"; filename="a.zip"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + archive.getvalue()
    )
    tail = b"\r\n--b--\r\n"
    head = (
        b"POST /api/tasks/?model_human_readable_id=ct-model HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(part) + len(tail))
    )
    context = ssl.create_default_context(cafile=str(standin.ca_file))
    with (
        socket.create_connection(("127.0.0.1", standin.port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        sock.sendall(head + part)  # everything but the closing boundary
        # Gone mid-request (a FIN, no close_notify); then the bytes beneath TLS (its records
        # do not matter) until the stand-in hangs up, which it does once done with the request.
        socket.socket.shutdown(sock, socket.SHUT_WR)
        sock.settimeout(10)
        while socket.socket.recv(sock, 65536):
            pass
    assert standin.submissions == []


# --- The real server's twin: one generation per port, the reference's table row by row.


def finished(standin: StandIn) -> None:
    """Every task ends at its first poll, and generation 1 knows it at once."""
    standin.v1_unknown_first, standin.polls_before_ready = False, 0


def ready_archive(client: httpx.Client, standin: StandIn, api: int) -> httpx.Response:
    finished(standin)
    answer = poll(client, standin, api, submit(client, standin, api))
    assert answer.status_code == 200
    return answer


def tar_members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:  # not compressed
        files = [(member.name, archive.extractfile(member)) for member in archive.getmembers()]
        return [(name, file.read()) for name, file in files if file is not None]


def is_server_error(response: httpx.Response) -> bool:
    """The bare 500 of an exception in the real server: plain text, no JSON, no hint."""
    return (
        response.status_code == 500
        and response.text == "Internal Server Error"
        and response.headers["content-type"].startswith("text/plain")
    )


def test_each_generation_listens_on_its_own_port(standin: StandIn) -> None:
    assert standin.port_v1 != standin.port_v2 and standin.port == standin.port_v1
    assert standin.url_v1 == f"https://localhost:{standin.port_v1}/api/tasks/"
    assert standin.url_v2 == f"https://localhost:{standin.port_v2}"


def test_a_v1_submit_on_the_v2_port_is_422_naming_what_v2_needs(
    client: httpx.Client, standin: StandIn
) -> None:
    answer = client.post(
        f"{standin.url_v2}/api/tasks/?model_human_readable_id=ct-model",
        files={"zip_file": ("series.zip", tiny_zip())},
    )
    assert answer.status_code == 422
    missing = [error["loc"] for error in answer.json()["detail"]]
    assert missing == [["query", "human_readable_id"], ["body", "tar_file"]]
    assert standin.submissions == [] and standin.tasks == {}


def test_a_v2_submit_on_the_v1_port_is_422_naming_what_v1_needs(
    client: httpx.Client, standin: StandIn
) -> None:
    answer = client.post(
        f"{standin.url_v1}?human_readable_id=ct-model",
        files={"tar_file": ("series.tar", tiny_tar())},
    )
    assert answer.status_code == 422
    missing = [error["loc"] for error in answer.json()["detail"]]
    assert missing == [["query", "model_human_readable_id"], ["body", "zip_file"]]
    assert standin.submissions == []


def test_polls_and_deletes_on_the_other_generations_port_fail_as_its_routes_would(
    client: httpx.Client, standin: StandIn
) -> None:
    v1_uid, v2_uid = submit(client, standin, 1), submit(client, standin, 2)
    v1_poll_on_v2 = client.get(f"{standin.url_v2}/api/tasks/{v1_uid}")
    assert (v1_poll_on_v2.status_code, v1_poll_on_v2.json()) == (404, {"detail": "Not Found"})
    assert client.delete(f"{standin.url_v2}/api/tasks/{v1_uid}").status_code == 404
    v2_poll_on_v1 = client.get(f"{standin.url_v1}outputs/?uid={v2_uid}")
    assert v2_poll_on_v1.status_code == 307  # Starlette's redirect_slashes...
    location = v2_poll_on_v1.headers["location"]
    assert location == f"{standin.url_v1}outputs?uid={v2_uid}"
    assert client.get(location).status_code == 554  # ...to the poll of a task "outputs"
    v2_delete_on_v1 = client.delete(f"{standin.url_v1}?uid={v2_uid}")
    assert (v2_delete_on_v1.status_code, v2_delete_on_v1.headers["allow"]) == (405, "POST")
    assert standin.deleted == [] and len(standin.live_tasks()) == 2


@pytest.mark.parametrize("api", [1, 2])
def test_a_finished_task_is_deleted_with_500_on_v1_and_200_on_v2(
    client: httpx.Client, standin: StandIn, api: int
) -> None:
    finished(standin)
    uid = submit(client, standin, api)
    answer = client.delete(delete_url(standin, api, uid))
    if api == 1:
        assert is_server_error(answer)
        gone = poll(client, standin, 1, uid)
        assert (gone.status_code, gone.json()) == (554, {"detail": {"detail": "Task not found"}})
    else:
        assert answer.status_code == 200 and answer.json()["is_deleted"] is True
    assert standin.deleted == [uid] and standin.live_tasks() == []


@pytest.mark.parametrize("api", [1, 2])
def test_a_task_still_running_is_not_deleted_and_answers_500(
    client: httpx.Client, standin: StandIn, api: int
) -> None:
    standin.v1_unknown_first, standin.polls_before_ready = False, 3
    uid = submit(client, standin, api)
    assert statuses(client, standin, api, uid, 2) == [551, 551]
    assert is_server_error(client.delete(delete_url(standin, api, uid)))
    assert standin.deleted == [] and not standin.task_of().deleted
    assert statuses(client, standin, api, uid, 2) == [551, 200]


def test_an_unknown_model_is_550_on_v1_and_a_bare_500_on_v2(
    client: httpx.Client, standin: StandIn
) -> None:
    v1 = client.post(
        f"{standin.url_v1}?model_human_readable_id=no-such-model",
        files={"zip_file": ("series.zip", tiny_zip())},
    )
    v2 = client.post(
        f"{standin.url_v2}/api/tasks/?human_readable_id=no-such-model",
        files={"tar_file": ("series.tar", tiny_tar())},
    )
    assert v1.status_code == 550 and is_server_error(v2)
    assert standin.submissions == []


def test_a_crashed_model_fails_the_task_on_v1_and_finishes_it_empty_on_v2(
    client: httpx.Client, standin: StandIn
) -> None:
    standin.outcome = "crash"
    finished(standin)
    v1_uid = submit(client, standin, 1)
    assert statuses(client, standin, 1, v1_uid, 2) == [552, 552]
    v2 = poll(client, standin, 2, submit(client, standin, 2))
    assert v2.status_code == 200 and tar_members(v2.content) == [("container.log", b"")]


@pytest.mark.parametrize("outcome", ["ok", "empty", "crash"])
def test_v2_always_adds_an_empty_container_log(
    client: httpx.Client, standin: StandIn, outcome: str
) -> None:
    standin.outcome, standin.nested_outputs = outcome, outcome == "ok"
    members = tar_members(ready_archive(client, standin, 2).content)
    assert [data for name, data in members if name == "container.log"] == [b""]


def test_nested_outputs_arrive_as_empty_folders_on_v1(
    client: httpx.Client, standin: StandIn
) -> None:
    standin.nested_outputs = True
    with zipfile.ZipFile(io.BytesIO(ready_archive(client, standin, 1).content)) as archive:
        entries = {info.filename: info for info in archive.infolist()}
    assert sorted(name for name in entries if not name.endswith(".dcm")) == ["masks/"]
    assert entries["masks/"].is_dir() and entries["masks/"].file_size == 0
    assert len([name for name in entries if name.endswith(".dcm")]) == standin.output_count


def test_nested_outputs_are_flattened_to_two_members_of_one_name_on_v2(
    client: httpx.Client, standin: StandIn
) -> None:
    standin.nested_outputs = True
    members = tar_members(ready_archive(client, standin, 2).content)
    masks = [data for name, data in members if name == "mask.nii.gz"]
    assert len(masks) == 2 and masks[0] != masks[1]
    assert all("/" not in name for name, _ in members)


def test_v1_serves_a_stored_zip_chunked_without_a_content_type(
    client: httpx.Client, standin: StandIn
) -> None:
    answer = ready_archive(client, standin, 1)
    assert answer.headers["transfer-encoding"] == "chunked"
    assert "content-type" not in answer.headers and "content-length" not in answer.headers
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_v1_zips_an_empty_output_as_one_error_file(client: httpx.Client, standin: StandIn) -> None:
    standin.outcome = "empty"
    with zipfile.ZipFile(io.BytesIO(ready_archive(client, standin, 1).content)) as archive:
        assert archive.namelist() == ["no_output_files_found.error"]


def test_v2_serves_an_uncompressed_tar_with_a_length_and_an_etag(
    client: httpx.Client, standin: StandIn
) -> None:
    answer = ready_archive(client, standin, 2)
    assert answer.headers["content-type"] == "application/x-tar"
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert answer.headers["etag"].startswith('"') and "transfer-encoding" not in answer.headers
    assert len(tar_members(answer.content)) == standin.output_count + 2


@pytest.mark.parametrize(("api", "deleted_status"), [(1, 500), (2, 200)])
def test_a_failed_task_answers_552_and_stays_until_deleted(
    client: httpx.Client, standin: StandIn, api: int, deleted_status: int
) -> None:
    standin.outcome = "552"
    finished(standin)
    uid = submit(client, standin, api)
    assert statuses(client, standin, api, uid, 2) == [552, 552]
    assert [task.uid for task in standin.live_tasks()] == [uid]  # its input still there
    assert client.delete(delete_url(standin, api, uid)).status_code == deleted_status
    assert standin.live_tasks() == []


def test_a_task_deleted_behind_the_relays_back_is_554_on_v1_and_a_bare_500_on_v2(
    client: httpx.Client, standin: StandIn
) -> None:
    v1_uid, v2_uid = submit(client, standin, 1), submit(client, standin, 2)
    standin.delete_behind_back(v1_uid)
    standin.delete_behind_back(v2_uid)
    v1 = poll(client, standin, 1, v1_uid)
    assert (v1.status_code, v1.json()) == (554, {"detail": {"detail": "Task not found"}})
    assert is_server_error(poll(client, standin, 2, v2_uid))
    assert is_server_error(poll(client, standin, 2, "never-made"))
    assert standin.deleted == [] and standin.live_tasks() == []


def test_only_v1_answers_554_right_after_submit(client: httpx.Client, standin: StandIn) -> None:
    v1_uid, v2_uid = submit(client, standin, 1), submit(client, standin, 2)
    assert statuses(client, standin, 1, v1_uid, 3) == [554, 551, 200]
    assert statuses(client, standin, 2, v2_uid, 2) == [551, 200]


def test_a_submit_while_the_queue_is_down_hangs_but_leaves_a_task_that_runs_later(
    standin: StandIn,
) -> None:
    standin.queue_down, standin.hang_seconds = True, 0.2
    context = ssl.create_default_context(cafile=str(standin.ca_file))
    with httpx.Client(verify=context, timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError):  # the answer never comes
            submit(client, standin, 2)
        task = standin.task_of()
        assert task.queued_while_down and standin.live_tasks() == [task]
        assert len(standin.submissions) == 1 and task.submission.members == ["a.dcm"]
        assert statuses(client, standin, 2, task.uid, 3) == [551, 551, 551]
        assert task.polls == 0
        standin.queue_down = False
        assert statuses(client, standin, 2, task.uid, 2) == [551, 200]


def test_the_queue_being_down_does_not_touch_v1(client: httpx.Client, standin: StandIn) -> None:
    standin.queue_down = True
    assert submit(client, standin, 1) in standin.tasks


@pytest.mark.parametrize("api", [1, 2])
def test_task_uids_are_43_characters(client: httpx.Client, standin: StandIn, api: int) -> None:
    assert len(submit(client, standin, api)) == 43


def test_a_v2_submit_answers_the_whole_task(client: httpx.Client, standin: StandIn) -> None:
    answer = client.post(
        f"{standin.url_v2}/api/tasks/?human_readable_id=mr-model",
        files={"tar_file": ("series.tar", tiny_tar())},
    )
    task = answer.json()
    assert task["uid"] == standin.task_of().uid and task["id"] == 1
    assert (task["model_id"], task["status"], task["is_deleted"]) == (2, -1, False)
    assert task["input_tar"] and task["output_tar"]
    assert datetime.fromisoformat(task["datetime_created"])
    assert task["datetime_dispatched"] is None and task["datetime_finished"] is None


def test_v2_lists_its_models_only_with_the_internal_token(
    client: httpx.Client, standin: StandIn
) -> None:
    url = f"{standin.url_v2}/api/models/"
    listed = client.get(url, headers={"X-Token": standin.internal_token})
    assert listed.status_code == 200
    assert [(m["id"], m["human_readable_id"]) for m in listed.json()] == [
        (1, "ct-model"),
        (2, "mr-model"),
    ]
    assert all("description" in model for model in listed.json())
    for headers in ({}, {"X-Token": "wrong"}):
        refused = client.get(url, headers=headers)
        assert (refused.status_code, refused.json()) == (401, {"detail": "Unauthorized"})
    standin.internal_token = "settable"
    assert client.get(url, headers={"X-Token": "settable"}).status_code == 200


def test_serve_standin_prints_where_to_submit_and_stops_when_told(tmp_path: Path) -> None:
    out, stop = io.StringIO(), threading.Event()
    returned: list[int] = []
    serving = threading.Thread(
        target=lambda: returned.append(serve_standin(out, destination=tmp_path, stop=stop))
    )
    serving.start()
    try:
        printed = wait_for_text(out, READY)
        ca_file = re.search(r"^CERT_FILE=(.+)$", printed, re.MULTILINE)
        assert ca_file is not None
        v1, v2 = printed_fingerprints(printed)
        assert (v1["inference_server_api"], v2["inference_server_api"]) == (1, 2)
        assert all(Fingerprint.model_validate(printed) for printed in (v1, v2))
        with httpx.Client(verify=ssl.create_default_context(cafile=ca_file[1])) as client:
            answer = client.post(
                f"{v2['inference_server_url']}/api/tasks/",
                params={"human_readable_id": v2["model_human_readable_id"]},
                files={"tar_file": ("series.tar", tiny_tar())},
            )
        assert answer.status_code == 200 and len(answer.json()["uid"]) == 43
        [scu] = v2["scus"]
        assert store_one(scu) == 0 and len(list(tmp_path.glob("*.dcm"))) == 1
    finally:
        stop.set()
        serving.join(timeout=10)
    assert returned == [0] and "Stopped." in out.getvalue()


def wait_for_text(out: io.StringIO, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while text not in out.getvalue():
        assert time.monotonic() < deadline, f"{text!r} not printed: {out.getvalue()!r}"
        time.sleep(0.05)
    return out.getvalue()


def printed_fingerprints(printed: str) -> list[dict[str, Any]]:
    """The JSON objects printed after each "Fingerprint for generation" line."""
    decoder = json.JSONDecoder()
    found = []
    for match in re.finditer(r"^Fingerprint for generation \d.*$", printed, re.MULTILINE):
        start = printed.index("{", match.end())
        found.append(decoder.raw_decode(printed, start)[0])
    return found


def store_one(scu: dict[str, Any]) -> int:
    """C-STORE one synthetic CT instance to the destination; its status."""
    ae = AE(ae_title="STANDIN_TEST")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate(scu["scu_ip"], scu["scu_port"], ae_title=scu["scu_ae_title"])
    assert assoc.is_established
    try:
        status = assoc.send_c_store(make_instance(SeriesSpec(), 0, generate_uid(), generate_uid()))
    finally:
        assoc.release()
    return int(status.Status)
