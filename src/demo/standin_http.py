"""The stand-in's HTTP side: one listener per server generation, each with only its routes.

Routes are picked as the real servers' framework (FastAPI on Starlette) picks them: the
first route whose path and method match; a path that matches with another method is 405;
a path that matches nothing but would with its trailing slash added or removed is a 307
to that path; anything else is 404 `{"detail":"Not Found"}`. A request missing a required
query parameter or file field is 422 with FastAPI's list of what is missing. So a request
of the other generation fails here as it would on the real server:

- a generation-2 submit on generation 1's port: 422, no `model_human_readable_id` query
  parameter and no `zip_file` field; a generation-1 submit on generation 2's port: 422, no
  `human_readable_id` and no `tar_file`;
- a generation-2 poll on generation 1's port: `/api/tasks/outputs/` is a 307 to
  `/api/tasks/outputs`, which is generation 1's poll of a task "outputs": 554;
- a generation-2 delete on generation 1's port: `DELETE /api/tasks/` is 405 (only POST is
  routed there);
- a generation-1 poll or delete on generation 2's port: `/api/tasks/<uid>` is 404.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import functools
import io
import json
import re
import ssl
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

CHUNK = 1 << 20
NO_ANSWER = 0  # a Reply with this status says nothing and hangs up (after its delay)
PLAIN = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    """An answer before it is written to the socket. `content_type` None sends none;
    `chunked` sends the body with Transfer-Encoding: chunked instead of a Content-Length;
    `delay` is silence before answering (cut short when the stand-in stops)."""

    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    chunked: bool = False
    delay: float = 0.0


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, json.dumps(value).encode())


SERVER_ERROR = Reply(500, b"Internal Server Error", PLAIN)  # an exception in the server
NOT_FOUND = json_reply(404, {"detail": "Not Found"})


@dataclass(frozen=True)
class Route:
    """A route of a server generation: `path` in Starlette's syntax ("{uid}" is one path
    segment), the query parameters and the multipart file field it requires."""

    method: str
    path: str
    name: str  # what the stand-in answers: "submit", "poll", "delete", "models", "tasks"
    query: tuple[str, ...] = ()
    file_field: str = ""

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path)) + "$")


ROUTES: dict[int, tuple[Route, ...]] = {
    1: (
        Route("POST", "/api/tasks/", "submit", ("model_human_readable_id",), "zip_file"),
        Route("GET", "/api/tasks/{uid}", "poll"),
        Route("DELETE", "/api/tasks/{uid}", "delete"),
    ),
    2: (
        Route("GET", "/api/tasks/", "tasks"),
        Route("POST", "/api/tasks/", "submit", ("human_readable_id",), "tar_file"),
        Route("DELETE", "/api/tasks/", "delete", ("uid",)),
        Route("GET", "/api/tasks/outputs/", "poll", ("uid",)),
        Route("GET", "/api/models/", "models"),
    ),
}


@dataclass(frozen=True)
class Request:
    """What a handler read: the method, the path (decoded), the query, the headers, the
    body (or only its first chunk when the stand-in discards archives)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    size: int = 0
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, method: str, target: str, headers: Any, body: bytes = b"") -> Request:
        split = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        return cls(method, unquote(split.path), query, dict(headers.items()), body)

    def header(self, name: str) -> str | None:
        """A header's value, whatever the case of its name."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    @property
    def raw_query(self) -> str:
        return urlencode(self.query)


def resolve(api: int, request: Request) -> tuple[Route, dict[str, str]] | Reply:
    """The route of generation `api` that takes the request and its path parameters, or
    the framework's answer when none does (405, 307 or 404)."""
    other_method: Route | None = None
    for route in ROUTES[api]:
        found = route.pattern.match(request.path)
        if found and route.method == request.method:
            return route, found.groupdict()
        other_method = other_method or (route if found else None)
    if other_method is not None:
        allow = "GET, HEAD" if other_method.method == "GET" else other_method.method
        return Reply(405, b'{"detail":"Method Not Allowed"}', headers=(("Allow", allow),))
    return _slash_redirect(api, request) or NOT_FOUND


def _slash_redirect(api: int, request: Request) -> Reply | None:
    """Starlette's redirect_slashes: a 307 to the path with its trailing slash toggled,
    when a route (of any method) has that path."""
    path = request.path
    if path == "/":
        return None
    toggled = path[:-1] if path.endswith("/") else f"{path}/"
    if not any(route.pattern.match(toggled) for route in ROUTES[api]):
        return None
    query = f"?{request.raw_query}" if request.query else ""
    location = f"https://{request.header('Host') or 'localhost'}{toggled}{query}"
    return Reply(307, b"", None, headers=(("Location", location),))


def missing(route: Route, request: Request) -> list[tuple[str, str]]:
    """(where, name) of every query parameter and file field the route needs and the
    request lacks."""
    gaps = [("query", name) for name in route.query if name not in request.query]
    if route.file_field and route.file_field not in form_field_names(request.body):
        gaps.append(("body", route.file_field))
    return gaps


def validation_error(api: int, gaps: list[tuple[str, str]]) -> Reply:
    """FastAPI's 422. Assumed: `v1.2` ran FastAPI on pydantic 1, `2.0` on pydantic 2 (its
    models are SQLAlchemy 2 `Mapped` classes); the two write their lists differently."""
    detail: list[dict[str, Any]]
    if api == 1:
        detail = [
            {"loc": [where, name], "msg": "field required", "type": "value_error.missing"}
            for where, name in gaps
        ]
    else:
        detail = [
            {"type": "missing", "loc": [where, name], "msg": "Field required", "input": None}
            for where, name in gaps
        ]
    return json_reply(422, {"detail": detail})


_FIELD_NAME = re.compile(rb'content-disposition:[^\r\n]*?\bname="([^"]*)"', re.IGNORECASE)


def form_field_names(body: bytes) -> list[str]:
    """The names of the multipart body's fields (of those in `body`, when it is only the
    first chunk)."""
    return [name.decode("utf-8", "replace") for name in _FIELD_NAME.findall(body)]


def file_part(content_type: str, body: bytes, name: str) -> tuple[str, bytes]:
    """(file name, bytes) of the multipart field `name`."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            payload = part.get_payload(decode=True)
            return part.get_filename() or "", payload if isinstance(payload, bytes) else b""
    return "", b""


def archive_members(data: bytes) -> list[str]:
    """The files in a zip or tar, sorted; none when it is neither (the real server stores
    what it gets: a bad archive fails later, in the model's run)."""
    try:
        if data[:2] == b"PK":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return sorted(archive.namelist())
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            return sorted(m.name for m in archive.getmembers() if m.isfile())
    except (zipfile.BadZipFile, tarfile.TarError, EOFError):
        return []


def read_body(stream: Any, length: int, *, keep: bool) -> bytes | None:
    """The request body (only its first chunk when not `keep`); None when the client sent
    less than its Content-Length before going away, as a web framework would then not
    call the view."""
    chunks: list[bytes] = []
    while length > 0:
        chunk = stream.read(min(length, CHUNK))
        if not chunk:
            return None
        length -= len(chunk)
        if keep or not chunks:
            chunks.append(chunk)
    return b"".join(chunks)


Answer = Callable[[Request], Reply]


def handler_for(
    answers: dict[str, Answer], *, keep_bodies: Callable[[], bool], stopping: threading.Event
) -> type[BaseHTTPRequestHandler]:
    """A request handler that reads requests and writes the replies `answers` (by method)
    give; `keep_bodies` says whether to keep whole request bodies, `stopping` cuts delays
    short."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            started = time.monotonic()
            length = int(self.headers.get("Content-Length", "0"))
            body = read_body(self.rfile, length, keep=keep_bodies())
            if body is None:  # the client went away mid-request: no request, so no task
                self.close_connection = True
                return
            request = Request.of("POST", self.path, self.headers, body)
            self._send(answers["POST"](dataclasses.replace(request, size=length, started=started)))

        def do_GET(self) -> None:
            self._send(answers["GET"](Request.of("GET", self.path, self.headers)))

        def do_DELETE(self) -> None:
            self._send(answers["DELETE"](Request.of("DELETE", self.path, self.headers)))

        def _send(self, reply: Reply) -> None:
            if reply.delay:
                stopping.wait(reply.delay)
            if reply.status == NO_ANSWER:
                self.close_connection = True
                return
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            if reply.content_type is not None:
                self.send_header("Content-Type", reply.content_type)
            framing = ("Transfer-Encoding", "chunked") if reply.chunked else None
            self.send_header(*(framing or ("Content-Length", str(len(reply.body)))))
            self.end_headers()
            self.wfile.write(_chunked(reply.body) if reply.chunked else reply.body)

    return Handler


def _chunked(body: bytes, size: int = 64 * 1024) -> bytes:
    pieces = [b"%x\r\n%s\r\n" % (len(part), part) for part in _pieces(body, size)]
    return b"".join([*pieces, b"0\r\n\r\n"])


def _pieces(body: bytes, size: int) -> list[bytes]:
    return [body[start : start + size] for start in range(0, len(body), size)]


class QuietServer(ThreadingHTTPServer):
    """Says nothing when a client goes away mid-answer (a relay killed by a test)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def listen(
    address: tuple[str, int], handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext
) -> QuietServer:
    """An HTTPS server on `address` (port 0: a free one), not serving yet."""
    server = QuietServer(address, handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server
