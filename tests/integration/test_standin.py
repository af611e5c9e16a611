"""The stand-in InferenceServer itself: submit, poll and delete over HTTPS, both generations."""

from __future__ import annotations

import io
import socket
import ssl
import tarfile
import zipfile
from collections.abc import Iterator

import httpx
import pytest
from pydicom import dcmread

from isdr.demo.standin import PREDICTION, Flaky, StandIn


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
    assert ready.status_code == 200 and ready.headers["content-type"] == "application/zip"
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


@pytest.mark.parametrize(("api", "unknown"), [(1, 554), (2, 552)])
def test_a_deleted_task_then_polls_as_unknown_or_deleted(
    client: httpx.Client, standin: StandIn, api: int, unknown: int
) -> None:
    uid = submit(client, standin, api)
    deleted = client.delete(delete_url(standin, api, uid))
    assert deleted.status_code == 200
    if api == 2:
        assert deleted.json()["uid"] == uid and deleted.json()["is_deleted"] is True
    assert standin.deleted == [uid] and standin.task_of().deleted
    assert poll(client, standin, api, uid).status_code == unknown
    assert client.delete(delete_url(standin, api, uid)).status_code == 554


def test_a_delete_behaviour_answers_once_and_deletes_nothing(
    client: httpx.Client, standin: StandIn
) -> None:
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
