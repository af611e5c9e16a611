"""Talking to InferenceServers over HTTPS, in both API generations.

Every answer and every transport error becomes one of three outcomes: done, worth a
retry (connection errors, timeouts, 5xx), or final (unknown model, 4xx, a certificate
that does not verify against CERT_FILE), with a message a person can act on.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import httpx

from isdr.domain.fingerprint import Fingerprint
from isdr.domain.servers import Server
from isdr.errors import IsdrError
from isdr.inference.deadline import Deadline, Reaper
from isdr.inference.transport import KeepAliveTransport, cut_error

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
ANSWER_MAX_BYTES = 1 << 20  # a submit's, a poll's (but the output), a delete's answer
DEFAULT_MIN_RATE = 100_000.0  # bytes per second: TRANSFER_MIN_RATE_KB's default
# Bodies are read as they come: a compressed one could unpack to far beyond the limits.
IDENTITY = {"Accept-Encoding": "identity"}
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class Outcome(StrEnum):
    """How a call to the server ended."""

    DONE = "done"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class Answer:
    """An outcome, the task uid on success, and what happened in words."""

    outcome: Outcome
    detail: str
    task_uid: str = ""
    reached: bool = True  # False: the request surely never reached the server
    maybe_held: bool = False  # the whole request went, no answer came: maybe a task
    suspect_model: bool = False  # generation 2's bare 500: maybe an unknown model
    cut: bool = False  # the exchange outlived its deadline: the server is slow


# What a poll of a task the server never had answers, per generation.
NO_SUCH_TASK = {1: (554,), 2: (500, 552, 554)}


@dataclass(frozen=True)
class Target:
    """A model on a server, as a fingerprint names it."""

    url: str
    api: int
    model: str
    token: str | None = None

    @classmethod
    def of(cls, fingerprint: Fingerprint, server: Server | None = None) -> Target:
        """The fingerprint's model on `server` (a member of its pool, with its own API and
        token) or else on the server its URL names; TokenUnavailable when the token's
        variable or file is missing."""
        if server is not None:
            model = fingerprint.model_human_readable_id
            return cls(url=str(server.url), api=server.api, model=model,
                       token=server.token_value())  # fmt: skip
        return cls(
            url=str(fingerprint.inference_server_url),
            api=fingerprint.inference_server_api,
            model=fingerprint.model_human_readable_id,
            token=fingerprint.token(),
        )

    @functools.cached_property
    def server(self) -> str:
        """The server: host and port (parsed once: polls ask for it every time)."""
        return server_of(self.url)

    def submit_request(self) -> tuple[str, dict[str, str], str]:
        """(URL, query parameters, multipart field name) of a submit."""
        if self.api == 1:
            return self.url, {"model_human_readable_id": self.model}, "zip_file"
        return f"{self.url.rstrip('/')}/api/tasks/", {"human_readable_id": self.model}, "tar_file"

    def task_request(self, uid: str, *, outputs: bool) -> tuple[str, dict[str, str]]:
        """(URL, query parameters) of a poll (`outputs`) or a delete of task `uid`."""
        if self.api == 1:
            return f"{self.url}{uid}", {}
        path = "/api/tasks/outputs/" if outputs else "/api/tasks/"
        return f"{self.url.rstrip('/')}{path}", {"uid": uid}

    @property
    def headers(self) -> dict[str, str]:
        """The X-Token header when the fingerprint configures a token."""
        return {"X-Token": self.token} if self.token else {}


def server_of(url: str) -> str:
    """The host and port of a server's URL ("" when it is not a URL)."""
    try:
        return httpx.URL(url).netloc.decode("ascii", "replace").lower()
    except httpx.InvalidURL:
        return ""


@dataclass(frozen=True)
class PollAnswer:
    """The HTTP status of a poll (None: no answer), in words; the output file on 200."""

    status: int | None
    detail: str
    output: Path | None = None
    location: str = ""  # where a redirect (3xx) points


def _nothing() -> None:
    """The default hook: nothing to record."""


CHUNK = 1 << 20


class MultipartBody:
    """A multipart/form-data body with one file field, streamed from disk.

    Built by hand rather than with httpx's `files=`, to run a hook before the closing
    boundary goes out (see InferenceClient.submit).
    """

    def __init__(self, archive: Path, field: str, before_last_bytes: Callable[[], None]) -> None:
        self.boundary = secrets.token_hex(16)
        self.head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{archive.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode("ascii")
        self.tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")
        self.before_last_bytes = before_last_bytes
        self.all_sent = False

    def headers(self, file_size: int) -> dict[str, str]:
        """Content-Type and Content-Length (a length, not chunked: proxies expect one)."""
        return {
            "Content-Type": f"multipart/form-data; boundary={self.boundary}",
            "Content-Length": str(len(self.head) + file_size + len(self.tail)),
        }

    def chunks(self, stream: BinaryIO) -> Iterator[bytes]:
        """The body: head, the file, then (after the hook) the closing boundary."""
        yield self.head
        while chunk := stream.read(CHUNK):
            yield chunk
        self.before_last_bytes()
        self.all_sent = True
        yield self.tail


class OutputTooLarge(IsdrError):
    """The server sent more than the configured limit."""


class AnswerTooLarge(IsdrError):
    """An answer other than an output went beyond ANSWER_MAX_BYTES: it was cut."""

    def __init__(self, status: int) -> None:
        super().__init__(
            f"its answer ({status}) went on beyond {ANSWER_MAX_BYTES // 2**20} MiB: cut there"
        )
        self.status = status


def tls_context(cert_file: Path) -> ssl.SSLContext:
    """Verify servers against CERT_FILE when it exists, else against the system's CAs."""
    if cert_file.is_file():
        return ssl.create_default_context(cafile=str(cert_file))
    return ssl.create_default_context()


class InferenceClient:
    """One HTTP client for all servers; timeouts from POST_TIMEOUT.

    Every exchange has a deadline over all of it (see deadline.py): POST_TIMEOUT, plus
    one second per `min_rate` bytes moved (TRANSFER_MIN_RATE_KB). Every answer body but an
    output is read up to ANSWER_MAX_BYTES, an output up to OUTPUT_MAX_MB.
    """

    def __init__(self, cert_file: Path, timeout: float, min_rate: float = DEFAULT_MIN_RATE) -> None:
        self.cert_file = cert_file
        self._timeout, self._min_rate = timeout, min_rate
        # Connecting gets at most 10 s: a server that is down should not hold its turn.
        limits = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT))
        context = tls_context(cert_file)
        self._reaper = Reaper()
        # Submits and model lists on a new connection each: its socket is known (traced)
        # from the start, so the reaper can cut it.
        self._http = httpx.Client(
            verify=context, timeout=limits, headers=IDENTITY,
            limits=httpx.Limits(max_keepalive_connections=0),
        )  # fmt: skip
        # Polls and deletes: many small requests, on the lean transport. Polls call it
        # directly, without the client's redirect, auth and cookie layers (measured in
        # bench/poll_load.py: 0.38 ms of CPU per poll through the client, 0.22 without).
        self._lean = KeepAliveTransport(context, self._reaper)
        self._polls = httpx.Client(timeout=limits, transport=self._lean, headers=IDENTITY)
        self._timeouts = limits.as_dict()

    def _deadline(self) -> Deadline:
        return Deadline(self._timeout, self._min_rate)

    def _traced(self, deadline: Deadline) -> dict[str, object]:
        """The extensions that put an httpx (httpcore) exchange under `deadline`: its socket
        is watched from the moment it connects (and again once TLS wraps it)."""

        def trace(event: str, info: dict[str, object]) -> None:
            if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
                stream = info.get("return_value")
                get = getattr(stream, "get_extra_info", None)
                if get is not None:
                    self._reaper.watch(deadline, get("socket"))

        return {"trace": trace}

    def close(self) -> None:
        """Close the connections."""
        self._http.close()
        self._polls.close()

    def submit(
        self, target: Target, archive: Path, before_last_bytes: Callable[[], None] = _nothing
    ) -> Answer:
        """POST the archive (streamed from disk) for the target's model.

        `before_last_bytes` runs when all but the closing boundary of the body has gone:
        until then the server cannot have a whole request, so it cannot hold a task.
        """
        url, params, field = target.submit_request()
        body = MultipartBody(archive, field, before_last_bytes)
        deadline = self._deadline()
        try:
            with archive.open("rb") as stream, self._http.stream(
                "POST", url, params=params,
                headers={**target.headers, **body.headers(archive.stat().st_size)},
                content=_counted(body.chunks(stream), deadline),
                extensions=self._traced(deadline),
            ) as streamed:  # fmt: skip
                response = _read_small(streamed, deadline)
        except AnswerTooLarge as exc:
            return _too_large_submit(exc)
        except httpx.HTTPError as exc:
            answer = self._transport_error(exc, url, deadline)
            if answer.outcome is not Outcome.RETRY or not answer.reached:
                return answer
            if not body.all_sent:
                return Answer(
                    Outcome.RETRY,
                    f"the upload to {url} was cut before its end ({_what(exc)}); the server "
                    "cannot hold a task from it",
                    cut=answer.cut,
                )
            return replace(answer, maybe_held=True)
        finally:
            self._reaper.forget(deadline)
        answer = _submit_answer(target, response)
        if answer.suspect_model:
            return self._check_model(target, answer)
        return answer

    def probe(self, target: Target, uid: str) -> PollAnswer:
        """The status a poll of task `uid` gets, without reading the body (an output, maybe
        large): the generation a server speaks, or whether a task is gone; a failed TLS
        handshake is named."""
        url, params = target.task_request(uid, outputs=True)
        deadline = self._deadline()
        try:
            with self._polls.stream(
                "GET", url, params=params, headers=target.headers,
                extensions={"isdr.deadline": deadline},
            ) as poll:  # fmt: skip
                return PollAnswer(poll.status_code, f"answered {poll.status_code}")
        except httpx.HTTPError as exc:
            return PollAnswer(None, self._transport_error(exc, url, deadline).detail)

    def models(self, target: Target) -> list[str] | None:
        """The models a generation-2 server lists, when its token lets us ask (else None)."""
        if target.api != 2:
            return None
        url = f"{target.url.rstrip('/')}/api/models/"
        deadline = self._deadline()
        try:
            with self._http.stream(
                "GET", url, headers=target.headers, extensions=self._traced(deadline)
            ) as streamed:
                response = _read_small(streamed, deadline)
            listed = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, json.JSONDecodeError, AnswerTooLarge):
            return None
        finally:
            self._reaper.forget(deadline)
        if not isinstance(listed, list):
            return None
        return sorted(str(m.get("human_readable_id")) for m in listed if isinstance(m, dict))

    def _check_model(self, target: Target, answer: Answer) -> Answer:
        """A bare 500 to a submit: ask the server for its models where the token allows."""
        listed = self.models(target)
        if listed is None:
            return answer
        if target.model in listed:
            real = f"{answer.detail}; but the server lists the model: a real server error"
            return replace(answer, suspect_model=False, detail=real)
        return Answer(
            Outcome.FAILED,
            f"the server does not know the model {target.model!r} (it answered a bare 500; "
            f"its models: {', '.join(listed) or 'none'}): check model_human_readable_id",
        )

    def poll(self, target: Target, uid: str, output: Path, max_bytes: int) -> PollAnswer:
        """GET the task's state; on 200 its output is streamed to `output`.

        Raises OutputTooLarge when the body exceeds `max_bytes` (nothing is left behind).
        Any other answer's body is read up to ANSWER_MAX_BYTES; an answer beyond that, or
        one that outlives its deadline, is no answer (status None), in words.
        """
        request = _poll_request(target, uid, tuple(self._timeouts.items()))
        deadline = self._deadline()
        try:
            response = self._lean.handle_request(request, deadline)
            try:
                if response.status_code != 200:
                    small = _read_small(response, deadline)
                    where = small.headers.get("Location", "")
                    return PollAnswer(small.status_code, small.text[:200], location=where)
                _save(response, output, max_bytes, deadline)
            finally:
                response.close()
        except AnswerTooLarge as exc:
            url, _params = target.task_request(uid, outputs=True)  # for the message only
            return PollAnswer(None, f"no usable answer from {url}: {exc}")
        except httpx.HTTPError as exc:
            url, _params = target.task_request(uid, outputs=True)  # for the message only
            if _is_certificate_error(exc) or deadline.fired:
                return PollAnswer(None, self._transport_error(exc, url, deadline).detail)
            return PollAnswer(None, f"no answer from {url} ({_what(exc)})")
        return PollAnswer(200, "output ready", output)

    def delete(self, target: Target, uid: str) -> Answer:
        """DELETE the task on the server; its answer checked."""
        url, params = target.task_request(uid, outputs=False)
        deadline = self._deadline()
        try:
            with self._polls.stream(
                "DELETE", url, params=params, headers=target.headers,
                extensions={"isdr.deadline": deadline},
            ) as streamed:  # fmt: skip
                response = _read_small(streamed, deadline)
        except AnswerTooLarge as exc:
            return Answer(Outcome.RETRY, f"deleting task {uid}: {exc}; try again later")
        except httpx.HTTPError as exc:
            return self._transport_error(exc, url, deadline)
        status = response.status_code
        if status == 200:
            return Answer(Outcome.DONE, f"task {uid} deleted on the server")
        if status == 554:
            return Answer(Outcome.DONE, f"task {uid} was already gone from the server (554)")
        if status == 500 and target.api == 1:
            return self._confirm_gone(target, uid)
        if status == 500 and target.api == 2:
            return Answer(Outcome.RETRY, f"the server cannot delete task {uid} yet (500: running)")
        if status >= 500 or status == 429:
            return Answer(Outcome.RETRY, f"deleting task {uid} answered {status}: try again later")
        return Answer(
            Outcome.FAILED, f"deleting task {uid} answered {status}: {response.text[:200]!r}"
        )

    def _confirm_gone(self, target: Target, uid: str) -> Answer:
        """Generation 1 answers 500 to every DELETE, and deletes the task all the same: a
        poll tells whether it is gone (554) or still there."""
        poll = self.probe(target, uid)
        status = poll.status
        if status is None:
            return Answer(Outcome.RETRY, f"deleting task {uid} answered 500; then {poll.detail}")
        if status == 554:
            return Answer(
                Outcome.DONE,
                f"task {uid} deleted on the server (it answered 500, as generation 1 does to "
                "every delete; a poll confirmed the task is gone)",
            )
        state = "still running" if status == 551 else f"still there (a poll answered {status})"
        return Answer(Outcome.RETRY, f"deleting task {uid} answered 500 and the task is {state}")

    def _transport_error(
        self, exc: httpx.HTTPError, url: str, deadline: Deadline | None = None
    ) -> Answer:
        if deadline is not None and deadline.fired:
            return Answer(
                Outcome.RETRY,
                f"{url} did not finish its answer within {deadline.describe()}: cut there "
                "(a slow or hostile server); the server may hold a task from this attempt",
                cut=True,
            )
        if _is_certificate_error(exc):
            return Answer(
                Outcome.FAILED,
                f"the TLS certificate of {httpx.URL(url).host} does not verify against "
                f"CERT_FILE={self.cert_file}"
                f"{'' if self.cert_file.is_file() else ' (missing: system CAs used)'}: "
                "put the server's certificate or CA there",
            )
        if isinstance(exc, httpx.LocalProtocolError):
            return Answer(Outcome.FAILED, f"cannot send to {url}: {_what(exc)}", reached=False)
        if isinstance(exc, _NOT_SENT):
            return Answer(Outcome.RETRY, f"cannot reach {url}: {_what(exc)}", reached=False)
        if isinstance(exc, httpx.TimeoutException):
            return Answer(
                Outcome.RETRY,
                f"no answer from {url} within POST_TIMEOUT ({_what(exc)}); the server may hold a "
                "task from this attempt",
            )
        return Answer(
            Outcome.RETRY,
            f"the connection to {url} broke ({_what(exc)}); "
            "the server may hold a task from this attempt",
        )


def _what(exc: httpx.HTTPError) -> str:
    """The error in words for a message. httpx quotes a header it refuses to write (it may
    be the token), so a local protocol error is named by its class alone."""
    if isinstance(exc, httpx.LocalProtocolError):
        return "LocalProtocolError: the relay could not write its request (an invalid header)"
    return repr(exc)


def redirected(status: int, location: str) -> str:
    """Why a redirected request fails the job: the URL in the fingerprint is not the
    server's (redirects are not followed: a token must not go elsewhere)."""
    return (
        f"redirected ({status}) to {location[:200] or '?'}: for API 1 inference_server_url "
        "is the full tasks URL with its trailing slash, for API 2 the base URL"
    )


def _counted(chunks: Iterator[bytes], deadline: Deadline) -> Iterator[bytes]:
    """The upload's chunks, each moving the deadline on."""
    for chunk in chunks:
        yield chunk
        deadline.add(len(chunk))


def _read_small(response: httpx.Response, deadline: Deadline) -> httpx.Response:
    """The answer with its body read, at most ANSWER_MAX_BYTES (else AnswerTooLarge); a
    copy that is no longer streamed. Raw bytes: a compressed body is not unpacked."""
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > ANSWER_MAX_BYTES:
            raise AnswerTooLarge(response.status_code)
    if deadline.fired:  # the reaper's cut ended a body that has no length: not whole
        raise cut_error(deadline)
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "content-encoding"]
    return httpx.Response(response.status_code, headers=headers, content=bytes(body))


def _too_large_submit(exc: AnswerTooLarge) -> Answer:
    if exc.status == 200:
        return Answer(
            Outcome.FAILED,
            f"accepted (200), but {exc}: no task uid could be read; the server may hold a "
            "task of this job that the relay cannot see",
        )
    if exc.status >= 500 or exc.status == 429:
        return Answer(Outcome.RETRY, f"server error: {exc}")
    return Answer(Outcome.FAILED, f"refused: {exc}")


def _submit_answer(target: Target, response: httpx.Response) -> Answer:
    status = response.status_code
    body = response.text[:300]
    if status == 200:
        uid = _task_uid(target.api, response)
        if uid:
            return Answer(Outcome.DONE, f"task {uid}", uid)
        # Accepted, so not sent again: the server has it, under a uid we cannot know.
        return Answer(Outcome.FAILED, f"accepted (200) but no task uid in the answer: {body!r}")
    if _is_unknown_model(target.api, status, body):
        return Answer(
            Outcome.FAILED,
            f"the server does not know the model {target.model!r} ({status}): check "
            "model_human_readable_id and inference_server_api in the fingerprint",
        )
    if status == 500 and target.api == 2 and _is_bare(response):
        return Answer(
            Outcome.RETRY,
            f"server error 500 {body!r} (generation 2 answers an unknown model so)",
            suspect_model=True,
        )
    if status >= 500:
        return Answer(Outcome.RETRY, f"server error {status}: {body!r}")
    if 300 <= status < 400:
        return Answer(Outcome.FAILED, redirected(status, response.headers.get("Location", "")))
    if status == 422:
        return Answer(
            Outcome.FAILED,
            f"refused with 422 {body!r}: the server did not understand the request; is "
            f"inference_server_api ({target.api}) the generation the server speaks?",
        )
    return Answer(Outcome.FAILED, f"refused with {status}: {body!r}")


def _is_bare(response: httpx.Response) -> bool:
    """A 500 with no JSON: what the server's framework says for an uncaught error."""
    return "json" not in response.headers.get("Content-Type", "")


def _is_unknown_model(api: int, status: int, body: str) -> bool:
    if api == 1:
        return status == 550
    return status in (500, 550) and "not found" in body.lower()


def _task_uid(api: int, response: httpx.Response) -> str:
    try:
        data = response.json()
    except json.JSONDecodeError:
        return ""
    if api == 1:
        return data if isinstance(data, str) else ""
    return str(data.get("uid", "")) if isinstance(data, dict) else ""


def _is_certificate_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@functools.lru_cache(maxsize=8192)
def _poll_request(
    target: Target, uid: str, timeouts: tuple[tuple[str, float | None], ...]
) -> httpx.Request:
    """The GET of a poll, built once per task: a request without a body can be sent again,
    and parsing its URL is a quarter of the client's cost of a poll."""
    url, params = target.task_request(uid, outputs=True)
    return httpx.Request(
        "GET", url, params=params, headers={**target.headers, **IDENTITY},
        extensions={"timeout": dict(timeouts)},
    )  # fmt: skip


def _save(response: httpx.Response, output: Path, max_bytes: int, deadline: Deadline) -> None:
    """Stream the body to `output` through a temporary name; at most `max_bytes`, as sent
    (a compressed body is not unpacked here: the unpacker refuses what is not an archive)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".part")
    written = 0
    try:
        with partial.open("wb") as handle:
            for chunk in response.iter_raw(1 << 20):
                written += len(chunk)
                if written > max_bytes:
                    raise OutputTooLarge(
                        f"the output is larger than {max_bytes} bytes (OUTPUT_MAX_MB): refused"
                    )
                handle.write(chunk)
        if deadline.fired:
            raise cut_error(deadline)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
