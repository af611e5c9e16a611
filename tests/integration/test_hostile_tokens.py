"""A token with a line break never reaches a message, even when it slips past the loader."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from isdr.inference.client import InferenceClient, Outcome, Target

SECRET = "first-half\r\nX-Injected: second-half"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A server that accepts connections (the kernel's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


@pytest.fixture
def client(tmp_path: Path) -> Iterator[InferenceClient]:
    made = InferenceClient(tmp_path / "no-ca.pem", timeout=2)
    yield made
    made.close()


def target(listener: socket.socket) -> Target:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/api/tasks/"
    return Target(url, 2, "ct-model", token=SECRET)


def test_a_submit_with_a_line_break_token_fails_without_quoting_it(
    listener: socket.socket, client: InferenceClient, tmp_path: Path
) -> None:
    archive = tmp_path / "job-1.tar"
    archive.write_bytes(b"t" * 1000)
    answer = client.submit(target(listener), archive)
    assert answer.outcome is Outcome.FAILED and not answer.reached
    assert "half" not in answer.detail and "invalid header" in answer.detail


def test_a_poll_with_a_line_break_token_answers_without_quoting_it(
    listener: socket.socket, client: InferenceClient, tmp_path: Path
) -> None:
    answer = client.poll(target(listener), "task-1", tmp_path / "out.tar", 1000)
    assert answer.status is None and "half" not in answer.detail


def test_a_delete_with_a_line_break_token_fails_without_quoting_it(
    listener: socket.socket, client: InferenceClient
) -> None:
    answer = client.delete(target(listener), "task-1")
    assert answer.outcome is Outcome.FAILED and "half" not in answer.detail
