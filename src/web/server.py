"""Serving the HTTP side with uvicorn, in a thread of the relay's process."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from isdr.errors import IsdrError

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # seconds


class WebServer:
    """uvicorn on one address, started and stopped by app.py."""

    def __init__(
        self, app: FastAPI, host: str, port: int, cert_file: str = "", key_file: str = "",
        on_stop: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off",
            ssl_certfile=cert_file or None, ssl_keyfile=key_file or None,
            server_header=False, timeout_graceful_shutdown=2,
            proxy_headers=False,  # the peer is the connection's: X-Forwarded-For is not trusted
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.scheme = "https" if cert_file else "http"
        self._thread = threading.Thread(target=self._run, name="isdr-http", daemon=True)
        self._failed: BaseException | None = None
        self._on_stop = on_stop

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve())
        except BaseException as exc:  # noqa: BLE001 (reported to start(), which raises)
            self._failed = exc

    @property
    def port(self) -> int:
        """The port listened on (useful when started with port 0)."""
        servers = getattr(self.server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self.server.config.port)

    def start(self) -> None:
        """Listen, or raise IsdrError saying why not."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                config = self.server.config
                raise IsdrError(
                    f"the HTTP side could not start on HTTP_HOSTNAME={config.host} "
                    f"HTTP_PORT={config.port}: {_why(self._failed)}"
                )
            time.sleep(0.01)
        config = self.server.config
        logger.info("HTTP side listening on %s://%s:%d", self.scheme, config.host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening; requests in flight get `timeout` seconds."""
        self.server.should_exit = True
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._on_stop is not None:
            self._on_stop()


def _why(failure: BaseException | None) -> str:
    if failure is None:
        return f"it did not listen within {START_TIMEOUT:g} s"
    if isinstance(failure, SystemExit):  # uvicorn exits when it cannot bind
        return "it could not bind the port (in use, or not this machine's address?)"
    return f"{type(failure).__name__}: {failure}"
