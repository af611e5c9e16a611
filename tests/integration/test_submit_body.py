"""The submit's body: the relay records 'archive sent' before the server can have it all."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from isdr.inference.client import InferenceClient, Outcome, Target

RECEIVE_BUFFER = 1 << 16


def most_a_send_buffer_holds() -> int:
    """The largest send buffer the kernel grows a TCP socket to (Linux: tcp_wmem's maximum)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 64 << 20


class CountingServer:
    """An HTTP server on loopback that counts the body bytes it has read so far."""

    def __init__(self, *, hang_up_after: int | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        # A fixed, small receive buffer (the accepted socket inherits it): what the client
        # can hand to the kernel beyond what was read is bounded by this and its send buffer.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.hang_up_after = hang_up_after
        self.received = 0
        self.expected = -1
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/api/tasks/"

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(1)
            for line in head.decode("latin-1").split("\r\n"):
                if line.lower().startswith("content-length:"):
                    self.expected = int(line.split(":")[1])
            while self.received < self.expected:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                self.received += len(chunk)
                if self.hang_up_after is not None and self.received >= self.hang_up_after:
                    return
            body = b'"task-1"'
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "job-1.zip"
    path.write_bytes(b"z" * 3_000_000)
    return path


def test_the_hook_runs_while_the_server_still_lacks_the_last_bytes(
    archive: Path, tmp_path: Path
) -> None:
    server = CountingServer()
    seen_at_hook: list[int] = []

    def hook() -> None:
        # Wait for every byte written before the hook (not a guess of how long they take):
        # the server must still lack the closing boundary, which goes out after the hook.
        deadline = time.monotonic() + 10
        while server.received < archive.stat().st_size and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_at_hook.append(server.received)

    client = InferenceClient(tmp_path / "no-ca.pem", timeout=10)
    try:
        answer = client.submit(Target(server.url, 1, "ct-model"), archive, hook)
    finally:
        client.close()
    assert answer.outcome is Outcome.DONE and answer.task_uid == "task-1"
    assert server.received == server.expected
    assert seen_at_hook and archive.stat().st_size <= seen_at_hook[0] < server.expected


def test_an_upload_cut_before_its_end_says_the_server_cannot_hold_a_task(tmp_path: Path) -> None:
    # Larger than all the kernel can take in beyond what the server reads before hanging
    # up (its receive buffer and the client's send buffer): the cut surely comes before
    # the client has handed over its last bytes. Sparse: nothing is written to disk.
    large = tmp_path / "job-1.zip"
    with large.open("wb") as handle:
        handle.truncate(1_000_000 + 4 * RECEIVE_BUFFER + 2 * most_a_send_buffer_holds())
    server = CountingServer(hang_up_after=1_000_000)
    hooked: list[bool] = []
    client = InferenceClient(tmp_path / "no-ca.pem", timeout=10)
    try:
        answer = client.submit(
            Target(server.url, 1, "ct-model"), large, lambda: hooked.append(True)
        )
    finally:
        client.close()
    assert answer.outcome is Outcome.RETRY
    assert "cannot hold a task" in answer.detail
    assert hooked == []
