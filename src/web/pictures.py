"""Pictures on the pages: a series' middle image, a job's prediction (over its input),
and a job's non-DICOM outputs to download.

Pictures are rendered by `isdr.pictures.worker` in a process of their own, at a lower
priority and with a memory cap, and cached on disk under a key that says what they show
(a series' round and its instance count; a job): the receiving threads never wait for
them. Files do not stay: with DELETE_ON_POST a series' files go once it is submitted,
and delivered DICOM outputs go after delivery. So app.py has `keep_series_picture` and
`keep_job_picture` called just before they go, and a page finds the picture in the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

from isdr.db.delivery import output_files
from isdr.db.jobs import timeline
from isdr.db.series import get_series, instance_paths
from isdr.pictures import PictureError
from isdr.pictures.worker import Renderer as Pictures
from isdr.web.api import ID_MAX
from isdr.web.context import WebContext

logger = logging.getLogger(__name__)

# Drawn over the input: Segmentation Storage and RT Structure Set Storage.
MARKS = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.3"})


def pictures_router(context: WebContext) -> APIRouter:
    """The picture and file routes."""
    router = APIRouter(include_in_schema=False)

    @router.get("/series/{series_id}/thumbnail.png")
    def thumbnail(series_id: int) -> Response:
        return _answer(lambda pictures: series_picture(context, pictures, series_id))

    @router.get("/jobs/{job_id}/picture.png")
    def prediction(job_id: int) -> Response:
        return _answer(lambda pictures: job_picture(context, pictures, job_id))

    @router.get("/jobs/{job_id}/files/{name:path}")
    def download(job_id: int, name: str) -> Response:
        found = timeline(context.reader, job_id) if 0 < job_id <= ID_MAX else None
        kept = {f.name for f in output_files(context.reader, job_id)} if found else set()
        if found is None or name not in kept:
            raise HTTPException(404, f"job {job_id} has no output file {name}")
        folder = _output_folder(context, job_id, found[0].output_dir)
        path = (folder / name).resolve()
        if not path.is_relative_to(folder.resolve()) or not path.is_file():
            raise HTTPException(404, f"job {job_id}: {name} is gone")
        return FileResponse(path, filename=Path(name).name, media_type="application/octet-stream")

    def _answer(draw: Callable[[Pictures], bytes]) -> Response:
        if context.pictures is None:
            raise HTTPException(404, "pictures are off")
        try:
            return Response(draw(context.pictures), media_type="image/png")
        except LookupError as exc:
            raise HTTPException(404, str(exc).strip("'")) from None
        except PictureError as exc:
            logger.info("picture not made: %s", exc)
            raise HTTPException(422, f"no picture: {exc}") from None

    return router


def series_picture(context: WebContext, pictures: Pictures, series_id: int) -> bytes:
    """A series round's middle slice: from the cache, or rendered while its files exist."""
    found = get_series(context.reader, series_id) if 0 < series_id <= ID_MAX else None
    if found is None:
        raise LookupError(f"no series {series_id}")
    key = _series_key(series_id, found.instance_count)
    cached = pictures.cached(key)
    if cached is not None:
        return cached
    paths = _existing(context.incoming_dir, instance_paths(context.reader, series_id))
    if not paths:
        raise LookupError(f"series {series_id}: its files are gone, and no picture was kept")
    return pictures.series_thumbnail(key, paths)


def job_picture(context: WebContext, pictures: Pictures, job_id: int) -> bytes:
    """A job's prediction: from the cache, or rendered while its output files exist (a
    SEG or RTSTRUCT over its input, or the kept middle slice of it)."""
    found = timeline(context.reader, job_id) if 0 < job_id <= ID_MAX else None
    if found is None:
        raise LookupError(f"no job {job_id}")
    key = f"job-{job_id}"
    cached = pictures.cached(key)
    if cached is not None:
        return cached
    job = found[0]
    folder = _output_folder(context, job_id, job.output_dir)
    dicom = [f for f in output_files(context.reader, job_id) if f.is_dicom]
    marks = _existing(folder, [f.name for f in dicom if f.sop_class_uid in MARKS])
    images = _existing(folder, [f.name for f in dicom if f.sop_class_uid not in MARKS])
    if not marks and not images:
        raise LookupError(f"job {job_id}: no DICOM output (yet, or any more)")
    return pictures.prediction(key, _inputs(context, pictures, job.series_id), marks, images)


def _inputs(context: WebContext, pictures: Pictures, series_id: int) -> list[Path]:
    """The series' files, or the middle slice kept when its picture was made."""
    paths = _existing(context.incoming_dir, instance_paths(context.reader, series_id))
    if paths:
        return paths
    found = get_series(context.reader, series_id)
    kept = pictures.kept(_series_key(series_id, found.instance_count)) if found else None
    return [kept] if kept is not None and kept.is_file() else []


def keep_series_picture(context: WebContext, series_id: int) -> None:
    """Make a series' picture now, before its files are removed (a failure is logged)."""
    pictures = context.pictures
    if pictures is not None:
        _keep(lambda: series_picture(context, pictures, series_id), f"series {series_id}")


def keep_job_picture(context: WebContext, job_id: int) -> None:
    """Make a job's picture now, before its delivered DICOM files are removed."""
    pictures = context.pictures
    if pictures is not None:
        _keep(lambda: job_picture(context, pictures, job_id), f"job {job_id}")


def _keep(draw: Callable[[], bytes], what: str) -> None:
    try:
        draw()
    except (LookupError, PictureError) as exc:
        logger.info("%s: no picture kept: %s", what, str(exc).strip("'"))


def _series_key(series_id: int, instance_count: int) -> str:
    return f"series-{series_id}-{instance_count}"


def _output_folder(context: WebContext, job_id: int, recorded: str | None) -> Path:
    return Path(recorded) if recorded else context.jobs_dir / str(job_id) / "output"


def _existing(folder: Path, names: list[str]) -> list[Path]:
    return [folder / name for name in names if (folder / name).is_file()]
