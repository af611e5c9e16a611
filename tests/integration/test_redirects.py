"""A redirected poll is named as such, with where it points, and fails the job at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from isdr.daemons.poll import Verdict, judge
from isdr.inference.client import InferenceClient, Target


@pytest.fixture
def client(tmp_path: Path) -> Iterator[InferenceClient]:
    made = InferenceClient(tmp_path / "no-ca.pem", timeout=2)
    yield made
    made.close()


class Redirecting(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", "https://elsewhere.example/tasks/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def test_a_redirected_poll_answers_the_status_and_where_it_points(
    client: InferenceClient, tmp_path: Path
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tasks/"
        answer = client.poll(Target(url, 1, "ct-model"), "task-1", tmp_path / "out.zip", 1000)
    finally:
        server.shutdown()
        server.server_close()
    verdict, reason = judge(1, answer.status, location=answer.location)
    assert answer.status == 302 and verdict is Verdict.FAILED
    assert "https://elsewhere.example/tasks/" in reason
