"""A stand-in InferenceServer: the real server's twin, one generation per HTTPS port.

`url_v1` (port `port_v1`) serves only generation 1's routes (`v1.2`), `url_v2` (port
`port_v2`) only generation 2's (`2.0`), so a fingerprint naming the wrong generation fails
here as it would in a hospital (see standin_http for what each port answers to the other
generation's requests). Every behaviour in the table "How the real server behaves" of the
InferenceServer API reference is modelled, per generation:

- DELETE of a finished task: generation 1 answers 500 `Internal Server Error` (text/plain)
  yet deletes it; generation 2 answers 200 with the task as JSON. DELETE of a task not
  finished (its next poll would answer 551, or 554 before generation 1 "inserted" it):
  500 on both, nothing deleted. DELETE of an unknown or deleted task: 554.
- Unknown model on submit: generation 1 550; generation 2 500 `Internal Server Error`.
- Polls: 551 pending or running, 552 failed, 553 output missing; generation 1 answers its
  errors as `{"detail": {"detail": ...}}`, and 554 to the first poll of a task and to a
  deleted or unknown task; generation 2 answers 500 `Internal Server Error` to a deleted
  (by anyone) or unknown task.
- Outputs: generation 1 a stored zip of the top level of /output, chunked, without a
  Content-Type (`no_output_files_found.error` when the model wrote nothing); generation 2
  an uncompressed tar of every file under its base name plus an empty `container.log`,
  `application/x-tar`, with Content-Length, ETag and Last-Modified (see model_output).
- Generation 2's submit answers the whole task as JSON (status -1) and its task uids are
  43 characters; generation 1's are too (`secrets.token_urlsafe(32)`, as in its public
  source), answered as a JSON string.

Knobs (attributes; set them before or between requests):

- `models`: the model ids the server knows (a set). `internal_token`: the X-Token that
  generation 2's `GET /api/models/` and `GET /api/tasks/` need (random, settable).
- `outcome`: how every task ends: "ok" (the outputs), "552" (failed), "553" (output
  missing), "never" (551 for ever), "empty" (the model wrote nothing), "crash" (the
  model's process exits non-zero: generation 1 552, generation 2 a finished task whose tar
  holds only `container.log`).
- `polls_before_ready` (1): 551 answers before a task ends. `v1_unknown_first` (True):
  generation 1 answers 554 to the first poll of each task (its insert is asynchronous).
- `output_count` (2) DICOM instances of `output_instance_rows` x `output_instance_columns`
  per output, or with `output_per_input` one per instance submitted; `nested_outputs`: the
  model also writes `masks/a/mask.nii.gz` and `masks/b/mask.nii.gz` (instead of a top-level
  `mask.nii.gz`); `raw_output`: when set, the 200 body of every task, as it is.
- `queue_down` (generation 2): while True, a submit is read whole and its task made
  (`Task.queued_while_down`), then nothing is answered for `hang_seconds` and the
  connection is closed; such a task stays pending (551, its polls not counted) until
  `queue_down` is False again, then runs like any other.
- `behaviours`, `poll_behaviours`, `delete_behaviours`: queues of what the next submits,
  polls (every GET) and deletes get before the normal logic: "400", "500", "503", "552"
  (that status, body "temporarily broken"), "hang" (`hang_seconds` of silence, then 503;
  a hung submit counts in `hung`), "stall" (`hang_seconds` of silence, then the connection
  closed, nothing kept), "drop" (the connection closed at once), "nouid" (200 `{}`), "ok".
- `flaky`: a Flaky; when a queue is empty it draws what the request gets (503 or stall).
- `hang_seconds` (5): the silence of "hang", "stall" and `queue_down`.
- `discard`: read archives and count their bytes but keep nothing (benchmarks).
- `keep_archives`: keep each archive's bytes (`Submission.data`); `derive_from_input`: the
  model reads them and writes a derived series, a SEG and an RT Structure Set on the
  input's patient, study and frame of reference, referencing its instances (isdr.demo.derived).

`close()` closes both ports (a server stopped) and `reopen()` listens on them again, with
the same tasks.

Records: `submissions` (every accepted archive), `tasks` (uid -> Task), `deleted` (uids
deleted through a DELETE, in order; `delete_behind_back(uid)` deletes as another client
would, without listing it), `gets` (every GET), `hung`; `live_tasks()` lists the tasks
not deleted. `lock` guards them all. Certificates come from trustme; `ca_file` is what the
relay's CERT_FILE should hold.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import ssl
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import trustme

from isdr.demo.derived import archive_datasets, derived_outputs
from isdr.demo.model_output import (
    PREDICTION,
    build_output,
    model_files,
    pack,
    synthetic_prediction,
)
from isdr.demo.standin_http import (
    NO_ANSWER,
    SERVER_ERROR,
    Answer,
    Reply,
    Request,
    Route,
    archive_members,
    file_part,
    handler_for,
    json_reply,
    listen,
    missing,
    resolve,
    validation_error,
)

__all__ = [
    "PREDICTION",
    "Flaky",
    "Reply",
    "StandIn",
    "Submission",
    "Task",
    "build_output",
    "poll_status",
    "synthetic_prediction",
]

OUTCOME_STATUS = {"ok": 200, "empty": 200, "552": 552, "553": 553}  # and "never", "crash"
DETAILS = {
    551: "Job status is 'pending' or 'running'",
    552: "Job status is 'failed'",
    553: "Job status is 'finished', but output tar does not exist",
    554: "Task not found",
}
LOOPBACK = ("", "localhost", "127.0.0.1", "0.0.0.0", "::", "::1")


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
    data: bytes = field(default=b"", repr=False)  # the archive, with `keep_archives`


@dataclass
class Task:
    """What the stand-in made of one accepted submission.

    `polls` counts the polls that reached the task (not those a poll behaviour answered,
    nor those answered 551 while its queue was down). `output` is the archive, built at
    the first 200 and served again on every later one; a delete drops it (the task is
    unknown from then on) but keeps `instance_uids`.
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
    queued_while_down: bool = False  # submitted while generation 2's queue was down
    created: datetime = field(default_factory=datetime.now)
    finished_at: float | None = None  # time.time() when its output was made
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


class StandIn:
    """The server (see the module's docstring for its knobs)."""

    def __init__(
        self,
        folder: Path,
        models: tuple[str, ...] = ("ct-model", "mr-model"),
        *,
        host: str = "127.0.0.1",
        port_v1: int = 0,
        port_v2: int = 0,
    ) -> None:
        self.models = set(models)
        self._model_ids = {name: number for number, name in enumerate(models, 1)}
        self.internal_token = secrets.token_urlsafe(32)
        self.submissions: list[Submission] = []
        self.tasks: dict[str, Task] = {}
        self.deleted: list[str] = []
        self.gets = 0
        self.hung = 0
        self.behaviours: deque[str] = deque()
        self.poll_behaviours: deque[str] = deque()
        self.delete_behaviours: deque[str] = deque()
        self.flaky: Flaky | None = None
        self.hang_seconds = 5.0
        self.discard = False
        self.polls_before_ready = 1
        self.v1_unknown_first = True
        self.outcome = "ok"
        self.output_count = 2
        self.output_per_input = False
        self.output_instance_rows = 16
        self.output_instance_columns = 16
        self.nested_outputs = False
        self.raw_output: bytes | None = None
        self.queue_down = False
        self.keep_archives = False
        self.derive_from_input = False
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # cuts hangs and stalls short
        self.hostname = "localhost" if host in LOOPBACK else host
        self.ca_file = folder / "ca.pem"
        self._host = host
        self._context = self._tls(host)
        self._servers = [self._listen(api, (host, port), self._context) for api, port in
                         ((1, port_v1), (2, port_v2))]  # fmt: skip
        self._threads = self._serving()

    def _serving(self) -> list[threading.Thread]:
        return [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True)
            for server in self._servers
        ]  # fmt: skip

    def _tls(self, host: str) -> ssl.SSLContext:
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        names = ["localhost", "127.0.0.1"] + ([] if host in LOOPBACK else [host])
        ca.issue_cert(*names).configure_cert(context)
        return context

    def _listen(self, api: int, address: tuple[str, int], context: ssl.SSLContext) -> Any:
        answers = Endpoint(self, api).answers()
        handler = handler_for(answers, keep_bodies=lambda: not self.discard,
                              stopping=self.stopping)  # fmt: skip
        return listen(address, handler, context)

    @property
    def port_v1(self) -> int:
        return int(self._servers[0].server_address[1])

    @property
    def port_v2(self) -> int:
        return int(self._servers[1].server_address[1])

    @property
    def port(self) -> int:
        """Generation 1's port (kept for older callers)."""
        return self.port_v1

    @property
    def url_v1(self) -> str:
        return f"https://{self.hostname}:{self.port_v1}/api/tasks/"

    @property
    def url_v2(self) -> str:
        return f"https://{self.hostname}:{self.port_v2}"

    def start(self) -> StandIn:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.close()

    def close(self) -> None:
        """Close both ports (connections are refused), keeping every task: a server
        stopped for a while; `reopen` brings it back."""
        for server, thread in zip(self._servers, self._threads, strict=True):
            if thread.is_alive():
                server.shutdown()
            server.server_close()

    def reopen(self) -> None:
        """Listen again on the same ports, with the same tasks and knobs."""
        ports = (self.port_v1, self.port_v2)
        self._servers = [self._listen(api, (self._host, port), self._context)
                         for api, port in zip((1, 2), ports, strict=True)]  # fmt: skip
        self._threads = self._serving()
        self.start()

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

    def record(self, submission: Submission, *, queued_while_down: bool = False) -> Task:
        with self.lock:
            self.submissions.append(submission)
            number = len(self.submissions)
            task = Task(submission.uid, submission.api, submission.model, submission, number)
            task.queued_while_down = queued_while_down
            self.tasks[task.uid] = task
            return task

    def task_of(self, submission_index: int = -1) -> Task:
        with self.lock:
            return self.tasks[self.submissions[submission_index].uid]

    def live_tasks(self) -> list[Task]:
        """The tasks not deleted (by the relay or behind its back): orphans, after a test."""
        with self.lock:
            return [task for task in self.tasks.values() if not task.deleted]

    def delete_behind_back(self, uid: str) -> None:
        """Delete the task as another client would (not listed in `deleted`)."""
        with self.lock:
            self._forget(self.tasks[uid])

    def accept(self, submission: Submission) -> Reply:
        """The answer to a well-formed submit: the task made, or why not."""
        if submission.model not in self.models:
            if submission.api == 1:  # the body is assumed, as generation 1's other errors
                return json_reply(550, {"detail": {"detail": "Model not found"}})
            return SERVER_ERROR  # 2.0 fails on the missing model: no JSON, no hint
        down = submission.api == 2 and self.queue_down
        task = self.record(submission, queued_while_down=down)
        if submission.api == 1:
            return json_reply(200, task.uid)
        if down:  # the task is in the database; publishing it waits for the queue
            return Reply(NO_ANSWER, delay=self.hang_seconds)
        with self.lock:
            return json_reply(200, self._as_json(task, status=-1))

    def answer_poll(self, api: int, uid: str) -> Reply:
        with self.lock:
            task = self._live(api, uid)
            if task is None:  # 2.0 reads an attribute of the None its query gave
                return status_reply(1, 554) if api == 1 else SERVER_ERROR
            if self._waiting_for_queue(task):
                return status_reply(api, 551)
            task.polls += 1
            status = self._status(task, task.polls)
        if status != 200:
            return status_reply(api, status)
        return self._ready(task)

    def answer_delete(self, api: int, uid: str) -> Reply:
        with self.lock:
            task = self._live(api, uid)
            if task is None:
                return status_reply(api, 554)
            if self._next_status(task) in (551, 554):
                return SERVER_ERROR  # a running task cannot be deleted
            self._forget(task)
            self.deleted.append(uid)
            if api == 1:  # v1.2 deletes, then fails to serialise what its route returns
                return SERVER_ERROR
            return json_reply(200, self._as_json(task))

    def answer_listing(self, name: str, token: str | None) -> Reply:
        """Generation 2's `GET /api/models/` ("models") or `GET /api/tasks/` ("tasks").

        A guess: the real server checks X-Token against its internal token, but what it
        answers without it is not documented here (an earlier public commit of it answered
        400 "Authentication error"); the stand-in answers 401 `{"detail":"Unauthorized"}`.
        """
        given = (token or "").encode()
        if not token or not secrets.compare_digest(given, self.internal_token.encode()):
            return json_reply(401, {"detail": "Unauthorized"})
        with self.lock:
            if name == "models":
                return json_reply(200, [self._model_json(m) for m in sorted(self.models)])
            tasks = [t for t in self.tasks.values() if t.api == 2 and not t.deleted]
            return json_reply(200, [self._as_json(task) for task in tasks])

    def _live(self, api: int, uid: str) -> Task | None:
        """The task behind `uid` if this generation knows it and it is not deleted."""
        task = self.tasks.get(uid)
        return task if task is not None and task.api == api and not task.deleted else None

    @staticmethod
    def _forget(task: Task) -> None:
        task.deleted, task.output = True, None

    def _waiting_for_queue(self, task: Task) -> bool:
        return task.queued_while_down and self.queue_down

    def _status(self, task: Task, polls: int) -> int:
        if self._waiting_for_queue(task):
            return 551
        return poll_status(
            task.api, polls, self.polls_before_ready, self.v1_unknown_first, self.outcome
        )

    def _next_status(self, task: Task) -> int:
        """What the task's next poll would answer (not counted): its state now."""
        return self._status(task, task.polls + 1)

    def _ready(self, task: Task) -> Reply:
        output = self._output(task)
        if task.api == 1:  # a StreamingResponse: chunked, no media type
            return Reply(200, output, None, chunked=True)
        return Reply(200, output, "application/x-tar", file_headers(output, task.finished_at))

    def _output(self, task: Task) -> bytes:
        if self.raw_output is not None:
            return self.raw_output
        with task.building:  # one build per task, even when polls of it overlap
            if task.output is None:
                files, task.instance_uids = self._model_run(task)
                task.output, task.finished_at = pack(task.api, files), time.time()
            return task.output

    def _model_run(self, task: Task) -> tuple[list[tuple[str, bytes]], list[str]]:
        """What the model wrote to /output: nothing when it crashed or wrote nothing."""
        if self.outcome in ("empty", "crash"):
            return [], []
        if self.derive_from_input:
            files = derived_outputs(archive_datasets(task.submission.data))
            return files, [name for name, _data in files]
        shape = (self.output_instance_rows, self.output_instance_columns)
        count = len(task.submission.members) if self.output_per_input else None
        return model_files(count or self.output_count, shape, nested=self.nested_outputs)

    def _model_id(self, name: str) -> int:
        return self._model_ids.setdefault(name, len(self._model_ids) + 1)

    def _model_json(self, name: str) -> dict[str, Any]:
        return {"id": self._model_id(name), "human_readable_id": name,
                "description": f"stand-in model {name}"}  # fmt: skip

    def _as_json(self, task: Task, status: int | None = None) -> dict[str, Any]:
        """Generation 2's task as JSON (paths invented); `status` the server's: -1 pending,
        2 running, 1 finished, 0 failed."""
        server_status = self._server_status(task) if status is None else status
        started = task.created.isoformat() if server_status != -1 else None
        ended = task.finished_at if server_status in (0, 1) else None
        return {
            "id": task.number,
            "uid": task.uid,
            "model_id": self._model_id(task.model),
            "datetime_created": task.created.isoformat(),
            "input_tar": f"/opt/inference_server/data/inputs/{task.uid}/input.tar",
            "output_tar": f"/opt/inference_server/data/outputs/{task.uid}/output.tar",
            "datetime_dispatched": started,
            "datetime_finished": None if ended is None else _iso(ended),
            "status": server_status,
            "is_deleted": task.deleted,
        }

    def _server_status(self, task: Task) -> int:
        following = self._next_status(task)
        if following in (551, 554):
            return 2 if task.polls and not self._waiting_for_queue(task) else -1
        return 0 if following == 552 else 1


class Endpoint:
    """One generation's port: a queued or drawn misbehaviour first, then that generation's
    routes (as standin_http resolves them), then the stand-in's tasks."""

    def __init__(self, standin: StandIn, api: int) -> None:
        self.standin = standin
        self.api = api

    def answers(self) -> dict[str, Answer]:
        return {"POST": self.post, "GET": self.get, "DELETE": self.delete}

    def post(self, request: Request) -> Reply:
        behaviour = self.standin.next_behaviour()
        if behaviour == "hang":  # a server that took the archive, then never answered
            self.standin.hung += 1
        found = self._route(behaviour, request)
        if isinstance(found, Reply):
            return found
        return self.standin.accept(self._submission(found[0], request))

    def get(self, request: Request) -> Reply:
        found = self._route(self.standin.next_poll_behaviour(), request)
        if isinstance(found, Reply):
            return found
        route, uid = found
        if route.name == "poll":
            return self.standin.answer_poll(self.api, uid)
        return self.standin.answer_listing(route.name, request.header("X-Token"))

    def delete(self, request: Request) -> Reply:
        found = self._route(self.standin.next_delete_behaviour(), request)
        if isinstance(found, Reply):
            return found
        return self.standin.answer_delete(self.api, found[1])

    def _route(self, behaviour: str, request: Request) -> tuple[Route, str] | Reply:
        """The route and task uid of a request, or the reply when it gets no further."""
        found = trouble(behaviour, self.standin.hang_seconds) or resolve(self.api, request)
        if isinstance(found, Reply):
            return found
        route, params = found
        gaps = missing(route, request)
        if gaps:
            return validation_error(self.api, gaps)
        return route, params.get("uid", request.query.get("uid", ""))

    def _submission(self, route: Route, request: Request) -> Submission:
        filename, members, data = "", [], b""
        if not self.standin.discard:
            content_type = request.header("Content-Type") or ""
            filename, data = file_part(content_type, request.body, route.file_field)
            members = archive_members(data)
        model = request.query[route.query[0]]
        uid = secrets.token_urlsafe(32)
        submission = Submission(
            self.api, model, route.file_field, filename, members, request.headers, uid
        )
        submission.started, submission.size = request.started, request.size
        if self.standin.keep_archives or self.standin.derive_from_input:
            submission.data = data
        return submission


def trouble(behaviour: str, hang_seconds: float) -> Reply | None:
    """The reply a queued or drawn behaviour gives instead of the normal logic."""
    if behaviour in ("400", "500", "503", "552"):
        return Reply(int(behaviour), b"temporarily broken")
    if behaviour == "hang":
        return Reply(503, b"slept", delay=hang_seconds)
    if behaviour in ("stall", "drop"):  # stall: the client gives up first, then a hang-up
        return Reply(NO_ANSWER, delay=hang_seconds if behaviour == "stall" else 0.0)
    if behaviour == "nouid":
        return Reply(200, b"{}")
    return None


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
    if outcome == "crash":  # v1.2 fails the task; 2.0 ignores the exit code
        return 552 if api == 1 else 200
    return OUTCOME_STATUS[outcome]


def status_reply(api: int, status: int) -> Reply:
    """A poll's or delete's error answer: generation 1 wraps its private API's answer."""
    detail = DETAILS[status]
    return json_reply(status, {"detail": detail if api == 2 else {"detail": detail}})


def file_headers(body: bytes, mtime: float | None) -> tuple[tuple[str, str], ...]:
    """ETag and Last-Modified as Starlette's FileResponse makes them."""
    modified = mtime or time.time()
    tag = hashlib.md5(f"{modified}-{len(body)}".encode(), usedforsecurity=False).hexdigest()
    return (("ETag", f'"{tag}"'), ("Last-Modified", formatdate(modified, usegmt=True)))


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment).isoformat()
