"""A stand-in InferenceServer speaking both API generations over real HTTPS.

It records every submission (API generation, model, archive members, headers) and can be
told to answer the next requests with an error, to hang, or to forget models.
Certificates come from trustme; `ca_file` is what the relay's CERT_FILE should hold.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import secrets
import ssl
import tarfile
import threading
import time
import zipfile
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme


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


class StandIn:
    """The server; `behaviours` is a queue of what the next submits get."""

    def __init__(self, folder: Path, models: tuple[str, ...] = ("ct-model", "mr-model")) -> None:
        self.models = set(models)
        self.submissions: list[Submission] = []
        self.behaviours: deque[str] = deque()  # "503", "500", "hang", "ok"
        self.hang_seconds = 5.0
        self.hung = 0  # submissions taken by the "hang" behaviour: the server may hold them
        self.discard = False  # read archives and count their bytes, but keep nothing (benchmarks)
        self.lock = threading.Lock()
        ca = trustme.CA()
        self.ca_file = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(self._context)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

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
        self._server.shutdown()
        self._server.server_close()

    def next_behaviour(self) -> str:
        with self.lock:
            return self.behaviours.popleft() if self.behaviours else "ok"

    def record(self, submission: Submission) -> None:
        with self.lock:
            self.submissions.append(submission)


def _handler_for(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            started = time.monotonic()
            length = int(self.headers.get("Content-Length", "0"))
            body = _discard(self.rfile, length) if standin.discard else self.rfile.read(length)
            behaviour = standin.next_behaviour()
            if behaviour == "hang":  # a server that took the archive, then never answered
                standin.hung += 1
                time.sleep(standin.hang_seconds)
                self._answer(503, b"slept")
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
            standin.record(submission)
            answer: Any = (
                uid if api == 1 else {"id": len(standin.submissions), "uid": uid, "status": -1}
            )
            self._answer(200, json.dumps(answer).encode())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _discard(stream: Any, length: int) -> bytes:
    while length > 0:
        chunk = stream.read(min(length, 1 << 20))
        if not chunk:
            break
        length -= len(chunk)
    return b""


def _file_part(content_type: str, body: bytes) -> tuple[str, str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename() or ""
        return str(name), filename, part.get_payload(decode=True) or b""
    return "", "", b""


def _members(data: bytes) -> list[str]:
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return sorted(archive.namelist())
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return sorted(m.name for m in archive.getmembers() if m.isfile())
