"""The Renderer: pictures made in a spawned worker, cached by key, and a worker that dies or
overruns replaced. One renderer serves the module (its worker takes about a second to start)."""

from __future__ import annotations

import io
import os
import resource
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from isdr.pictures import PictureError, render
from isdr.pictures.worker import Renderer
from isdr.synthetic import SeriesSpec, write_series


def die(*args: object) -> bytes:
    """Stands in for a render that kills its worker (as the kernel's OOM killer would)."""
    os.kill(os.getpid(), signal.SIGKILL)
    return b""


def limits(*args: object) -> bytes:
    """Stands in for a render, answering the worker's niceness and address-space cap."""
    return f"{os.nice(0)} {resource.getrlimit(resource.RLIMIT_AS)[0]}".encode()


def hog(*args: object) -> bytes:
    """Stands in for a render that wants 3 GiB (only where the cap will refuse it)."""
    if resource.getrlimit(resource.RLIMIT_AS)[0] > 2 * 1024**3:
        raise MemoryError("no cap here: not tried")
    return bytes(bytearray(3 * 1024**3))


def hang(*args: object) -> bytes:
    """Stands in for a render that never ends."""
    time.sleep(60)
    return b""


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_series(tmp_path_factory.mktemp("series"), SeriesSpec(count=3))


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Renderer]:
    with Renderer(tmp_path_factory.mktemp("cache"), timeout=30.0) as shared:
        yield shared


def decoded(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def test_a_thumbnail_is_rendered_then_served_from_the_cache(
    renderer: Renderer, series: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    png = renderer.thumbnail("series-1-40", series[1])
    cached = renderer.cache_dir / "series-1-40.png"
    written = cached.stat().st_mtime_ns

    monkeypatch.setattr(render, "thumbnail", die)  # rendering again would kill the worker
    again = renderer.thumbnail("series-1-40", series[1])

    assert decoded(png).mode == "L" and decoded(png).size == (64, 64)
    assert again == png == cached.read_bytes()
    assert cached.stat().st_mtime_ns == written


def test_the_worker_runs_at_a_lower_priority_with_its_memory_capped(
    renderer: Renderer, series: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "thumbnail", limits)
    niceness, cap = renderer.thumbnail("limits", series[0]).split()
    assert int(niceness) >= min(19, os.nice(0) + 10)
    assert int(cap) <= 2 * 1024**3


def test_an_overlay_is_rendered_in_colour_and_cached(
    renderer: Renderer, series: list[Path]
) -> None:
    png = renderer.overlay("overlay-1-40", series[1], [series[0]])  # a CT: no regions
    assert decoded(png).mode == "RGB"
    assert (renderer.cache_dir / "overlay-1-40.png").read_bytes() == png


@pytest.mark.parametrize("key", ["", "../escape", "a/b", "with space", "ünï", "x" * 201])
def test_a_key_that_is_no_plain_name_is_refused(
    renderer: Renderer, series: list[Path], key: str
) -> None:
    with pytest.raises(PictureError, match="key"):
        renderer.thumbnail(key, series[0])
    assert not list(renderer.cache_dir.parent.glob("*.png"))


def test_a_bad_file_is_a_picture_error_and_the_next_good_one_renders(
    renderer: Renderer, series: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not DICOM at all" * 10)
    with pytest.raises(PictureError, match=r"bad\.dcm cannot be read as DICOM"):
        renderer.thumbnail("bad-file", bad)
    assert not (renderer.cache_dir / "bad-file.png").exists()
    assert decoded(renderer.thumbnail("after-bad-file", series[0])).size == (64, 64)


def test_a_worker_that_dies_is_replaced(
    renderer: Renderer, series: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(render, "thumbnail", die)
        with pytest.raises(PictureError, match="worker died"):
            renderer.thumbnail("killed", series[0])
    assert decoded(renderer.thumbnail("after-killed", series[0])).size == (64, 64)


def test_a_render_that_runs_out_of_memory_is_a_picture_error_and_the_worker_replaced(
    renderer: Renderer, series: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(render, "thumbnail", hog)
        with pytest.raises(PictureError, match="ran out of memory"):
            renderer.thumbnail("hog", series[0])
    assert decoded(renderer.thumbnail("after-hog", series[0])).size == (64, 64)


def test_a_render_that_overruns_the_timeout_is_stopped_and_the_worker_replaced(
    renderer: Renderer, series: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    renderer.thumbnail("before-hang", series[0])  # the worker is up: the timeout is the render's
    with monkeypatch.context() as patch:
        patch.setattr(render, "thumbnail", hang)
        patch.setattr(renderer, "timeout", 0.5)
        started = time.monotonic()
        with pytest.raises(PictureError, match=r"longer than 0\.5 s"):
            renderer.thumbnail("hanging", series[0])
        assert time.monotonic() - started < 5
    assert decoded(renderer.thumbnail("after-hang", series[0])).size == (64, 64)


def test_callers_asking_at_once_take_turns_and_get_the_same_pictures(
    renderer: Renderer, series: list[Path]
) -> None:
    asks = [("turns-0", series[0]), ("turns-2", series[2])] * 3
    with ThreadPoolExecutor(max_workers=len(asks)) as callers:
        pictures = list(callers.map(lambda ask: renderer.thumbnail(*ask), asks))
    assert pictures[0::2] == [pictures[0]] * 3 and pictures[1::2] == [pictures[1]] * 3
    assert pictures[0] != pictures[1]


def test_pruning_keeps_the_newest_pictures(tmp_path: Path) -> None:
    cache = Renderer(tmp_path)
    for age in range(5):
        picture = tmp_path / f"age-{age}.png"
        picture.write_bytes(b"png")
        os.utime(picture, (1_000_000 - age, 1_000_000 - age))
    assert cache.prune(max_files=2) == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["age-0.png", "age-1.png"]


def test_a_closed_renderer_refuses_work(tmp_path: Path, series: list[Path]) -> None:
    closed = Renderer(tmp_path)
    closed.close()
    with pytest.raises(PictureError, match="closed"):
        closed.thumbnail("after-close", series[0])
