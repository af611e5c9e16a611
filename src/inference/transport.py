"""A lean httpx transport for the many small requests of polling.

httpx's default transport (httpcore with the pure-Python h11 parser) costs about 0.4 ms of
CPU per request here; a thousand jobs polled every second would take a whole core. This
transport sends each request over a kept-alive `http.client` connection, one per thread
and server, for about a third of that (bench/poll_load.py). The httpx Client above it is
unchanged: URLs, headers, timeouts, streaming and the error classes are httpx's.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import httpx

from isdr.inference.deadline import Deadline, Reaper

CHUNK = 1 << 20
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class _Body(httpx.SyncByteStream):
    """The response body, streamed; the connection is reused once it has been read.

    Each chunk moves the exchange's deadline on; a deadline that fired (the reaper shut
    the socket) ends the body with ReadTimeout, never with a short body taken as whole.
    """

    def __init__(
        self, response: http.client.HTTPResponse, release: _Release, deadline: Deadline | None
    ) -> None:
        self._response = response
        self._release = release
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        try:
            while chunk := self._response.read(CHUNK):
                self._check()
                if self._deadline is not None:
                    self._deadline.add(len(chunk))
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            self._release(reuse=False)
            self._check()
            raise httpx.ReadError(str(exc)) from exc
        self._check()
        if self._response.length:  # http.client takes a short body for a whole one
            self._release(reuse=False)
            raise httpx.ReadError("the connection closed before the end of the body")

    def _check(self) -> None:
        if self._deadline is not None and self._deadline.fired:
            self._release(reuse=False)
            raise cut_error(self._deadline)

    def close(self) -> None:
        fired = self._deadline is not None and self._deadline.fired
        self._release(reuse=self._response.isclosed() and not fired)


class _Release:
    def __init__(
        self, pool: _Connections, key: tuple[str, str, int], done: Callable[[], None]
    ) -> None:
        self.pool, self.key, self.done = pool, key, done

    def __call__(self, *, reuse: bool) -> None:
        self.done()
        if not reuse:
            self.pool.drop(self.key)


class _Connections(threading.local):
    def __init__(self) -> None:
        self.open: dict[tuple[str, str, int], http.client.HTTPConnection] = {}

    def drop(self, key: tuple[str, str, int]) -> None:
        connection = self.open.pop(key, None)
        if connection is not None:
            connection.close()


class KeepAliveTransport(httpx.BaseTransport):
    """HTTP/1.1 over `http.client`, one kept-alive connection per thread and server."""

    def __init__(self, context: ssl.SSLContext, reaper: Reaper | None = None) -> None:
        self._context = context
        self._pool = _Connections()
        self._reaper = reaper or Reaper()

    def handle_request(
        self, request: httpx.Request, deadline: Deadline | None = None
    ) -> httpx.Response:
        """Send `request`; its whole exchange (headers and body) is cut at `deadline`
        (or at the one in its extensions under "isdr.deadline")."""
        deadline = deadline or request.extensions.get("isdr.deadline")
        key = (request.url.scheme, request.url.host, request.url.port or _port(request.url))
        timeouts = request.extensions.get("timeout", {})
        try:
            response = self._exchange_once_more(key, request, timeouts, deadline)
        except BaseException:
            self._forget(deadline)
            raise
        return httpx.Response(
            response.status,
            headers=response.getheaders(),
            stream=_Body(response, _Release(self._pool, key, lambda: self._forget(deadline)),
                         deadline),
            extensions={"http_version": b"HTTP/1.1"},
        )  # fmt: skip

    def _exchange_once_more(
        self,
        key: tuple[str, str, int],
        request: httpx.Request,
        timeouts: dict[str, float | None],
        deadline: Deadline | None,
    ) -> http.client.HTTPResponse:
        reused = key in self._pool.open
        try:
            return self._exchange(key, request, timeouts, deadline)
        except _STALE as exc:
            self._pool.drop(key)
            if not reused:
                raise _translate(exc, deadline=deadline) from exc
            # A kept-alive connection the server had closed: once more on a new one.
            try:
                return self._exchange(key, request, timeouts, deadline)
            except _STALE as again:
                self._pool.drop(key)
                raise _translate(again, deadline=deadline) from again

    def _forget(self, deadline: Deadline | None) -> None:
        if deadline is not None:
            self._reaper.forget(deadline)

    def _exchange(
        self,
        key: tuple[str, str, int],
        request: httpx.Request,
        timeouts: dict[str, float | None],
        deadline: Deadline | None,
    ) -> http.client.HTTPResponse:
        connection = self._connection(key, timeouts)
        if deadline is not None:
            self._reaper.watch(deadline, connection.sock)
        target = request.url.raw_path.decode("ascii")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw}
        try:
            if connection.sock is not None:
                connection.sock.settimeout(timeouts.get("read"))
            connection.request(request.method, target, body=request.read() or None, headers=headers)
            return connection.getresponse()
        except _STALE:
            raise
        except ValueError as exc:  # http.client quotes the bad header: it may be a token
            self._pool.drop(key)
            raise httpx.LocalProtocolError("a request header holds an invalid value") from exc
        except (OSError, http.client.HTTPException) as exc:
            self._pool.drop(key)
            raise _translate(exc, deadline=deadline) from exc

    def _connection(
        self, key: tuple[str, str, int], timeouts: dict[str, float | None]
    ) -> http.client.HTTPConnection:
        connection = self._pool.open.get(key)
        if connection is not None:
            return connection
        scheme, host, port = key
        connect = timeouts.get("connect")
        if scheme == "https":
            connection = http.client.HTTPSConnection(
                host, port, timeout=connect, context=self._context
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=connect)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise _translate(exc, connecting=True) from exc
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pool.open[key] = connection
        return connection

    def close(self) -> None:
        for key in list(self._pool.open):
            self._pool.drop(key)


def _port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def cut_error(deadline: Deadline) -> httpx.ReadTimeout:
    """The error of an exchange the reaper cut at `deadline`: never a short body taken
    for a whole one."""
    return httpx.ReadTimeout(f"cut: no whole answer within {deadline.describe()}")


def _translate(
    exc: BaseException, *, connecting: bool = False, deadline: Deadline | None = None
) -> httpx.TransportError:
    if deadline is not None and deadline.fired:
        return cut_error(deadline)
    if isinstance(exc, TimeoutError | socket.timeout):
        return httpx.ConnectTimeout(str(exc)) if connecting else httpx.ReadTimeout(str(exc))
    if connecting or isinstance(exc, ssl.SSLError):
        return httpx.ConnectError(str(exc))
    return httpx.RemoteProtocolError(str(exc) or type(exc).__name__)
