"""A hostile InferenceServer on a raw socket: it answers every request with one behaviour.

`endless`: a status line, then a body with no length that goes on (up to `cap` bytes,
so that a client without limits ends the test instead of filling memory). `drip`: a
status line, then one byte every `pace` seconds (up to `cap` bytes). `output`: 200 with
`payload` as the body. `status`: the status with a short body. Each request is counted,
and so is every byte of body sent.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

Behaviour = Literal["endless", "drip", "output", "status"]


@dataclass
class HostileServer:
    behaviour: Behaviour
    status: int = 551
    pace: float = 0.2
    cap: int = 48 << 20
    payload: bytes = b""
    requests: int = 0
    body_bytes_sent: int = 0
    _listener: socket.socket = field(init=False)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> HostileServer:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/tasks/"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while self._read_request(conn):
                    self.requests += 1
                    if not self._answer(conn):
                        return
            except OSError:
                return

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        rest_length = len(rest)
        while rest_length < length:
            chunk = conn.recv(1 << 20)
            if not chunk:
                return False
            rest_length += len(chunk)
        return True

    def _answer(self, conn: socket.socket) -> bool:
        """Answer one request; whether the connection may carry another."""
        if self.behaviour == "output":
            self._head(conn, 200, len(self.payload))
            conn.sendall(self.payload)
            return True
        if self.behaviour == "status":
            self._head(conn, self.status, 2)
            conn.sendall(b"{}")
            return True
        self._head(conn, self.status, None)
        if self.behaviour == "endless":
            block = b'"' * 65536
            while self.body_bytes_sent < self.cap and not self._stopping.is_set():
                conn.sendall(block)
                self.body_bytes_sent += len(block)
        else:
            while self.body_bytes_sent < self.cap and not self._stopping.is_set():
                conn.sendall(b" ")
                self.body_bytes_sent += 1
                time.sleep(self.pace)
        return False  # a body with no length ends with the connection

    @staticmethod
    def _head(conn: socket.socket, status: int, length: int | None) -> None:
        sized = f"Content-Length: {length}\r\n" if length is not None else "Connection: close\r\n"
        conn.sendall(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{sized}\r\n".encode()
        )
