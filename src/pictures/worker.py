"""Rendering off the caller's process, bounded in CPU, memory and time, with a cache of PNGs.

One spawned worker process, started at first use, at a lower priority and with its address
space capped, renders one picture at a time; callers queue for it. A worker that dies or
overruns the timeout is killed and replaced by a fresh one at the next call. Pictures are
kept as `<cache_dir>/<key>.png`, written atomically; the caller's key says what the picture
is of (and so when it is stale), the renderer only checks its spelling.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from types import TracebackType

from isdr.pictures import PictureError, render

logger = logging.getLogger(__name__)

MEMORY_CAP = 2 * 1024**3  # the worker's address space, bytes
NICENESS = 10
QUEUE_TURNS = 2  # a caller waits for its turn at most this many timeouts
FAILURE_MEMORY = 300.0  # seconds a picture that could not be made is not tried again
KEY = re.compile(r"[A-Za-z0-9_.-]{1,200}")

Job = Callable[[], bytes]


class Renderer:
    """Renders thumbnails and overlays in one worker process and caches them by key.

    Thread-safe: callers may ask at once; they take turns on the single worker.
    """

    def __init__(self, cache_dir: Path, timeout: float = 30.0) -> None:
        self.cache_dir = cache_dir
        self.timeout = timeout  # per picture, the worker's start (about 1 s) in the first
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._turn = threading.Lock()
        self._closed = False
        self._failed: dict[str, tuple[float, str]] = {}  # key -> (when, why), for a while

    def thumbnail(self, key: str, path: Path) -> bytes:
        """The PNG of `render.thumbnail(path)`, from the cache when it holds `key`."""
        return self._cached(key, partial(render.thumbnail, path))

    def overlay(self, key: str, base: Path, outputs: Sequence[Path]) -> bytes:
        """The PNG of `render.overlay(base, outputs)`, from the cache when it holds `key`."""
        return self._cached(key, partial(render.overlay, base, list(outputs)))

    def series_thumbnail(self, key: str, paths: Sequence[Path]) -> bytes:
        """The PNG of `render.keep_series(paths, ...)` (the middle slice is found in the
        worker too: reading every header is work the caller's process must not do). A
        copy of that slice is kept as `kept(key)`, for overlays once the series is gone."""
        job = partial(render.keep_series, list(paths), self.kept(key))
        return self._cached(key, job)

    def kept(self, key: str) -> Path:
        """Where the middle slice of the series pictured under `key` is kept."""
        return self._path_of(key).with_suffix(".dcm")

    def cached(self, key: str) -> bytes | None:
        """The picture under `key` if it was made, else None (nothing is rendered)."""
        return _read(self._path_of(key))

    def prediction(
        self, key: str, inputs: Sequence[Path], marks: Sequence[Path], images: Sequence[Path]
    ) -> bytes:
        """The PNG of `render.prediction(inputs, marks, images)`."""
        job = partial(render.prediction, list(inputs), list(marks), list(images))
        return self._cached(key, job)

    def prune(self, max_files: int = 2000, max_age: float | None = None) -> int:
        """Remove the oldest cached pictures (and kept slices) beyond `max_files`, and those
        older than `max_age` seconds; returns how many went."""
        if max_files < 0:
            raise ValueError(f"max_files must be 0 or more, not {max_files}")
        kept = [*self.cache_dir.glob("*.png"), *self.cache_dir.glob("*.dcm")]
        pictures = sorted(kept, key=_modified, reverse=True)
        oldest = time.time() - max_age if max_age is not None else None
        gone = [
            path
            for index, path in enumerate(pictures)
            if index >= max_files or (oldest is not None and _modified(path) < oldest)
        ]
        for path in gone:
            path.unlink(missing_ok=True)
        return len(gone)

    def close(self) -> None:
        """Stop the worker now: pending pictures are cancelled, a running one is killed."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            _stop(pool)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _cached(self, key: str, job: Job) -> bytes:
        target = self._path_of(key)
        picture = _read(target)
        if picture is not None:
            return picture
        self._refuse_if_failed_lately(key)
        with self._turn_to_render(key):
            picture = _read(target)  # a caller ahead in the queue may have made it
            if picture is None:
                self._refuse_if_failed_lately(key)
                picture = self._remembered(key, job)
                _write_atomically(target, picture)
        return picture

    def _remembered(self, key: str, job: Job) -> bytes:
        """`job` run, its failure remembered for FAILURE_MEMORY: a page that asks for a
        picture again and again does not have it rendered again and again."""
        try:
            return self._run(key, job)
        except PictureError as exc:
            with self._pool_lock:
                self._failed[key] = (time.monotonic(), str(exc))
                if len(self._failed) > 1000:
                    self._failed.clear()
            raise

    def _refuse_if_failed_lately(self, key: str) -> None:
        with self._pool_lock:
            failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < FAILURE_MEMORY:
            raise PictureError(failed[1])

    def _path_of(self, key: str) -> Path:
        if not KEY.fullmatch(key):
            raise PictureError(f"a picture key is 1 to 200 of A-Z a-z 0-9 _ . -, not {key!r}")
        return self.cache_dir / f"{key}.png"

    @contextlib.contextmanager
    def _turn_to_render(self, key: str) -> Iterator[None]:
        wait = self.timeout * QUEUE_TURNS
        if not self._turn.acquire(timeout=wait):
            raise PictureError(f"{key}: the picture worker is busy (waited {wait:g} s for it)")
        try:
            yield
        finally:
            self._turn.release()

    def _run(self, key: str, job: Job) -> bytes:
        """`job` done in the worker; a worker that dies, overruns or runs out is replaced."""
        try:
            return self._executor().submit(job).result(timeout=self.timeout)
        except (TimeoutError, BrokenProcessPool, MemoryError) as exc:
            if self._closed:
                raise PictureError(f"{key}: the renderer was closed") from exc
            why = self._failure(exc)
            self._replace(f"{key}: {why}")
            raise PictureError(f"{key}: {why}") from exc
        except RuntimeError as exc:  # submitted to a pool that close() shut meanwhile
            if not self._closed:
                raise
            raise PictureError(f"{key}: the renderer was closed") from exc

    def _failure(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"rendering took longer than {self.timeout:g} s"
        if isinstance(exc, MemoryError):
            return f"rendering ran out of memory (the worker is capped at {_gib(MEMORY_CAP)})"
        return "the picture worker died (killed, or out of memory)"

    def _executor(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise PictureError("the renderer is closed")
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=bound_worker,
                )
            return self._pool

    def _replace(self, why: str) -> None:
        logger.warning("Picture worker replaced: %s; a new one starts at the next picture", why)
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            _stop(pool)


def bound_worker() -> None:
    """The worker's initializer: a lower priority, and its address space capped."""
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = MEMORY_CAP if hard == resource.RLIM_INFINITY else min(MEMORY_CAP, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError) as exc:
        logger.warning("The picture worker's memory is not capped: %s", exc)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut a pool down without waiting: its worker is killed, its queue cancelled."""
    # ProcessPoolExecutor has no public way to kill its workers before Python 3.14.
    workers = list((pool._processes or {}).values())
    for process in workers:
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PictureError(f"the cached picture {path.name} cannot be read: {exc}") from exc


def _write_atomically(target: Path, picture: bytes) -> None:
    """Write to a temporary file beside `target`, then rename it over `target`."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
    except OSError as exc:
        raise PictureError(f"the picture cache {target.parent} is not writable: {exc}") from exc
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(picture)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise PictureError(f"the picture {target.name} cannot be cached: {exc}") from exc


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _gib(size: int) -> str:
    return f"{size / 1024**3:g} GiB"
