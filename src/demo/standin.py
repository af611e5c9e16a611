"""A stand-in InferenceServer speaking both API generations over real HTTPS.

It records every submission (API generation, model, archive members, headers) and makes a
`Task` of each; tasks are polled and deleted through the routes of their generation.
It can be told to answer the next requests with an error, to hang, to drop the connection,
or to forget models; and how many polls a task stays pending and how it ends. `flaky`
makes it misbehave at random instead: a seeded share of every kind of request gets a 503
or a stall (no answer for a while, then the connection closed, nothing kept).
Certificates come from trustme; `ca_file` is what the relay's CERT_FILE should hold.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import io
import json
import random
import secrets
import ssl
import sys
import tarfile
import threading
import time
import zipfile
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme
from pydicom import dcmwrite
from pydicom.uid import generate_uid

from isdr.synthetic import SeriesSpec, make_instance

PREDICTION = "ISDR stand-in prediction"
ARCHIVE_TYPE = {1: "application/zip", 2: "application/x-tar"}
OUTCOME_STATUS = {"ok": 200, "552": 552, "553": 553}  # "never" keeps a task at 551
NOT_FOUND = b'{"detail": "Task not found"}'


@dataclass
class Submission:
    """One archive the stand-in received."""

    api: int
    model: str
    field_name: str
    filename: str
    members: list[str]
    headers: dict[str, str]
    uid: str
    started: float = 0.0  # time.monotonic() when the request arrived
    size: int = 0  # bytes of the request body
    at: float = field(default_factory=time.monotonic)


@dataclass
class Task:
    """What the stand-in made of one accepted submission.

    `polls` counts the polls that reached the task (not those a poll behaviour answered).
    `output` is the archive, built at the first 200 and served again on every later one;
    a delete drops it (the task is unknown from then on) but keeps `instance_uids`.
    """

    uid: str
    api: int
    model: str
    submission: Submission
    number: int  # the server's task id: 1 for the first submission, 2 for the next...
    polls: int = 0
    deleted: bool = False
    output: bytes | None = None
    instance_uids: list[str] = field(default_factory=list)  # SOP Instance UIDs in output
    building: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


@dataclass
class Flaky:
    """Random trouble for every request: with probability `rate` a 503 or a stall.

    A stall (`stall_share` of the trouble) reads the request, says nothing for the
    stand-in's `hang_seconds` (set it longer than the client's timeout), then closes the
    connection without keeping anything: a stalled submit makes no task. `injected`
    counts what was dealt, by request kind and trouble ("submit 503", "poll stall", ...),
    `requests` every request drawn for. Draws come from one generator seeded with `seed`;
    which request gets which draw depends on the order the requests arrive in.
    """

    rate: float
    seed: int = 0
    stall_share: float = 0.5
    injected: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def draw(self, kind: str) -> str:
        """What the `kind` request now arriving gets: "ok", "503" or "stall" (not locked)."""
        self.requests[kind] += 1
        if self._random.random() >= self.rate:
            return "ok"
        trouble = "stall" if self._random.random() < self.stall_share else "503"
        self.injected[f"{kind} {trouble}"] += 1
        return trouble


@dataclass(frozen=True)
class Reply:
    """An answer to a poll or a delete, before it is written to the socket."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"


class StandIn:
    """The server; `behaviours`, `poll_behaviours` and `delete_behaviours` are queues of
    what the next submits, polls and deletes get before the normal logic ("stall" in any
    of them: no answer for `hang_seconds`, then the connection closed). When a queue is
    empty and `flaky` is set, it draws what the request gets."""

    def __init__(self, folder: Path, models: tuple[str, ...] = ("ct-model", "mr-model")) -> None:
        self.models = set(models)
        self.submissions: list[Submission] = []
        self.behaviours: deque[str] = deque()  # "503", "500", "hang", "stall", "ok"
        self.hang_seconds = 5.0
        self.hung = 0  # submissions taken by the "hang" behaviour: the server may hold them
        self.discard = False  # read archives and count their bytes, but keep nothing (benchmarks)
        self.tasks: dict[str, Task] = {}
        self.gets = 0  # every GET, whatever it was answered
        self.deleted: list[str] = []  # uids of the tasks deleted, in order
        self.polls_before_ready = 1  # 551 answers before a task is ready
        self.v1_unknown_first = True  # API 1: the first poll of a task answers 554
        self.outcome = "ok"  # how every task ends: "ok", "552", "553" or "never" (551)
        self.poll_behaviours: deque[str] = deque()  # "500", "503", "552", "hang", "drop",
        # "stall"
        self.delete_behaviours: deque[str] = deque()  # "500", "503", "hang", "drop", "stall"
        self.flaky: Flaky | None = None  # random trouble when the queues are empty
        self.output_count = 2  # DICOM instances in each task's output
        self.output_per_input = False  # instead: one per instance submitted (the toy model)
        self.output_instance_rows = 16
        self.output_instance_columns = 16
        self.raw_output: bytes | None = None  # when set, the 200 body of every task
        self.lock = threading.Lock()
        ca = trustme.CA()
        self.ca_file = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(self._context)
        self.stopping = threading.Event()  # cuts hangs and stalls short
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url_v1(self) -> str:
        return f"https://localhost:{self.port}/api/tasks/"

    @property
    def url_v2(self) -> str:
        return f"https://localhost:{self.port}"

    def start(self) -> StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def next_behaviour(self) -> str:
        with self.lock:
            return self.behaviours.popleft() if self.behaviours else self._draw("submit")

    def next_poll_behaviour(self) -> str:
        """What the GET now arriving gets first; counts it in `gets`."""
        with self.lock:
            self.gets += 1
            return self.poll_behaviours.popleft() if self.poll_behaviours else self._draw("poll")

    def next_delete_behaviour(self) -> str:
        with self.lock:
            if self.delete_behaviours:
                return self.delete_behaviours.popleft()
            return self._draw("delete")

    def _draw(self, kind: str) -> str:
        return "ok" if self.flaky is None else self.flaky.draw(kind)

    def record(self, submission: Submission) -> Task:
        with self.lock:
            self.submissions.append(submission)
            number = len(self.submissions)
            task = Task(submission.uid, submission.api, submission.model, submission, number)
            self.tasks[task.uid] = task
            return task

    def task_of(self, submission_index: int = -1) -> Task:
        with self.lock:
            return self.tasks[self.submissions[submission_index].uid]

    def answer_poll(self, api: int, uid: str) -> Reply:
        with self.lock:
            task = self._live(api, uid)
            if task is None and api == 2 and uid in self.tasks and self.tasks[uid].deleted:
                return Reply(
                    552, b'{"detail": "task deleted"}'
                )  # the reference: "failed or deleted"
            if task is None:
                return Reply(554 if api == 1 else 500, NOT_FOUND)
            task.polls += 1
            status = self._status(task)
        if status != 200:
            return Reply(status, json.dumps({"detail": f"status {status}"}).encode())
        return Reply(200, self._output(task), ARCHIVE_TYPE[api])

    def answer_delete(self, api: int, uid: str) -> Reply:
        with self.lock:
            task = self._live(api, uid)
            if task is None:
                return Reply(554, NOT_FOUND)
            task.deleted, task.output = True, None
            self.deleted.append(uid)
            body = json.dumps(self._as_json(task)).encode() if api == 2 else b""
        return Reply(200, body)

    def _live(self, api: int, uid: str) -> Task | None:
        """The task behind `uid` if this generation knows it and it is not deleted."""
        task = self.tasks.get(uid)
        return task if task is not None and task.api == api and not task.deleted else None

    def _status(self, task: Task) -> int:
        return poll_status(
            task.api, task.polls, self.polls_before_ready, self.v1_unknown_first, self.outcome
        )

    def _as_json(self, task: Task) -> dict[str, Any]:
        server_status = {200: 1, 552: 0, 553: 1}.get(self._status(task), -1)
        return {
            "id": task.number,
            "uid": task.uid,
            "human_readable_id": task.model,
            "status": server_status,
            "is_deleted": task.deleted,
        }

    def _output(self, task: Task) -> bytes:
        if self.raw_output is not None:
            return self.raw_output
        with task.building:  # one build per task, even when polls of it overlap
            if task.output is None:
                shape = (self.output_instance_rows, self.output_instance_columns)
                count = len(task.submission.members) if self.output_per_input else None
                task.output, task.instance_uids = build_output(
                    task.api, count or self.output_count, shape
                )
            return task.output


def poll_status(
    api: int, polls: int, polls_before_ready: int, v1_unknown_first: bool, outcome: str
) -> int:
    """What the `polls`-th poll of a task answers (554, 551, then the outcome)."""
    if api == 1 and v1_unknown_first:
        if polls == 1:
            return 554  # API 1 inserts tasks asynchronously
        polls -= 1
    if polls <= polls_before_ready or outcome == "never":
        return 551
    return OUTCOME_STATUS[outcome]


def build_output(api: int, count: int, shape: tuple[int, int]) -> tuple[bytes, list[str]]:
    """A flat archive of `count` CT instances and a mask (and API 2's empty container.log);
    returns the archive and the instances' SOP Instance UIDs."""
    instances = synthetic_prediction(count, shape)
    members = [(f"{uid}.dcm", data) for uid, data in instances]
    members.append(("mask.nii.gz", gzip.compress(b"stand-in mask", mtime=0)))
    if api == 2:
        members.append(("container.log", b""))
    archive = _zip(members) if api == 1 else _tar(members)
    return archive, [uid for uid, _ in instances]


def synthetic_prediction(count: int, shape: tuple[int, int]) -> list[tuple[str, bytes]]:
    """`count` Part 10 files of one derived series, as (SOP Instance UID, bytes); made from
    one dataset whose UID and instance number change before each encoding."""
    rows, columns = shape
    spec = SeriesSpec(modality="CT", rows=rows, columns=columns, series_description=PREDICTION)
    ds = make_instance(spec, 0, generate_uid(), generate_uid())
    encoded = []
    for index in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        encoded.append((str(ds.SOPInstanceUID), buffer.getvalue()))
    return encoded


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for name, data in members:
            out.writestr(name, data)
    return buffer.getvalue()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as out:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            out.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _handler_for(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            started = time.monotonic()
            length = int(self.headers.get("Content-Length", "0"))
            body = _read_body(self.rfile, length, keep=not standin.discard)
            if body is None:  # the client went away mid-request: no request, so no task
                self.close_connection = True
                return
            behaviour = standin.next_behaviour()
            if behaviour == "hang":  # a server that took the archive, then never answered
                standin.hung += 1
                time.sleep(standin.hang_seconds)
                self._answer(503, b"slept")
                return
            if behaviour == "stall":  # took the archive, kept nothing, never answered
                self._stall()
                return
            if behaviour in ("400", "500", "503"):
                self._answer(int(behaviour), b"temporarily broken")
                return
            if behaviour == "nouid":
                self._answer(200, b"{}")
                return
            split = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            if split.path == "/api/tasks":  # what a web framework does without the slash
                self.send_response(307)
                self.send_header("Location", f"/api/tasks/?{split.query}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if split.path != "/api/tasks/":
                self._answer(404, b"no such route")
                return
            api, key = (
                (1, "model_human_readable_id")
                if "model_human_readable_id" in query
                else (2, "human_readable_id")
            )
            model = query.get(key, "")
            if model not in standin.models:
                self._answer(550, b"") if api == 1 else self._answer(
                    500, b'{"detail": "Model not found"}'
                )
                return
            uid = secrets.token_urlsafe(12)
            if standin.discard:
                field_name, filename, members = "", "", []
            else:
                field_name, filename, data = _file_part(self.headers.get("Content-Type", ""), body)
                members = _members(data)
            submission = Submission(
                api, model, field_name, filename, members, dict(self.headers), uid
            )
            submission.started, submission.size = started, length
            task = standin.record(submission)
            answer: Any = uid if api == 1 else {"id": task.number, "uid": uid, "status": -1}
            self._answer(200, json.dumps(answer).encode())

        def do_GET(self) -> None:
            if self._misbehave(standin.next_poll_behaviour()):
                return
            route = _task_route(self.path, "/api/tasks/outputs/")
            if route is None:
                self._answer(404, b"no such route")
                return
            self._reply(standin.answer_poll(*route))

        def do_DELETE(self) -> None:
            if self._misbehave(standin.next_delete_behaviour()):
                return
            route = _task_route(self.path, "/api/tasks/")
            if route is None:
                self._answer(404, b"no such route")
                return
            self._reply(standin.answer_delete(*route))

        def _misbehave(self, behaviour: str) -> bool:
            """Answer a poll or delete as `behaviour` says; False to go on normally."""
            if behaviour == "drop":  # close the connection without a word
                self.close_connection = True
            elif behaviour == "stall":
                self._stall()
            elif behaviour == "hang":
                time.sleep(standin.hang_seconds)
                self._answer(503, b"slept")
            elif behaviour in ("500", "503", "552"):
                self._answer(int(behaviour), b"temporarily broken")
            return behaviour != "ok"

        def _stall(self) -> None:
            """Say nothing for a while (the client gives up first), then hang up."""
            standin.stopping.wait(standin.hang_seconds)
            self.close_connection = True

        def _reply(self, reply: Reply) -> None:
            self._answer(reply.status, reply.body, reply.content_type)

        def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _task_route(path: str, v2_path: str) -> tuple[int, str] | None:
    """(API generation, task uid) of a poll or delete: API 1 has the uid as the last part
    of the path, API 2 as the `uid` query parameter of `v2_path`."""
    split = urlsplit(path)
    if split.path == v2_path:
        return 2, parse_qs(split.query).get("uid", [""])[0]
    uid = split.path.removeprefix("/api/tasks/")
    if uid == split.path or uid in ("", "outputs") or "/" in uid:
        return None
    return 1, uid


class _QuietServer(ThreadingHTTPServer):
    """Says nothing when a client goes away mid-answer (a relay killed by a test)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def _read_body(stream: Any, length: int, *, keep: bool) -> bytes | None:
    """The request body (b"" when not kept); None when the client sent less than its
    Content-Length before going away, as a real web framework would not call the view."""
    chunks: list[bytes] = []
    while length > 0:
        chunk = stream.read(min(length, 1 << 20))
        if not chunk:
            return None
        length -= len(chunk)
        if keep:
            chunks.append(chunk)
    return b"".join(chunks)


def _file_part(content_type: str, body: bytes) -> tuple[str, str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename() or ""
        payload = part.get_payload(decode=True)
        return str(name), filename, payload if isinstance(payload, bytes) else b""
    return "", "", b""


def _members(data: bytes) -> list[str]:
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return sorted(archive.namelist())
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return sorted(m.name for m in archive.getmembers() if m.isfile())
