"""Pictures on the pages: a series' middle image, a job's prediction (over its input),
and a job's non-DICOM outputs to download.

Pictures are rendered by `isdr.pictures.worker` in a process of their own, at a lower
priority and with a memory cap, and cached on disk by what they show (a series' round and
its instance count, a job and its output): the receiving threads never wait for them.
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
Draw = Callable[[Pictures], bytes]


def pictures_router(context: WebContext) -> APIRouter:
    """The picture and file routes."""
    router = APIRouter(include_in_schema=False)

    @router.get("/series/{series_id}/thumbnail.png")
    def thumbnail(series_id: int) -> Response:
        found = get_series(context.reader, series_id) if 0 < series_id <= ID_MAX else None
        if found is None:
            raise HTTPException(404, f"no series {series_id}")
        paths = _existing(context.incoming_dir, instance_paths(context.reader, series_id))
        if not paths:
            raise HTTPException(404, f"series {series_id}: its files are gone")
        key = f"series-{series_id}-{found.instance_count}"
        return _png(context, lambda pictures: pictures.series_thumbnail(key, paths))

    @router.get("/jobs/{job_id}/picture.png")
    def prediction(job_id: int) -> Response:
        found = timeline(context.reader, job_id) if 0 < job_id <= ID_MAX else None
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        job = found[0]
        folder = _output_folder(context, job_id, job.output_dir)
        dicom = [f for f in output_files(context.reader, job_id) if f.is_dicom]
        marks = _existing(folder, [f.name for f in dicom if f.sop_class_uid in MARKS])
        images = _existing(folder, [f.name for f in dicom if f.sop_class_uid not in MARKS])
        if not marks and not images:
            raise HTTPException(404, f"job {job_id}: no DICOM output (yet, or any more)")
        inputs = _existing(context.incoming_dir, instance_paths(context.reader, job.series_id))
        key = f"job-{job_id}-{len(marks)}-{len(images)}-{len(inputs)}"
        return _png(context, lambda pictures: pictures.prediction(key, inputs, marks, images))

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

    return router


def _output_folder(context: WebContext, job_id: int, recorded: str | None) -> Path:
    return Path(recorded) if recorded else context.jobs_dir / str(job_id) / "output"


def _existing(folder: Path, names: list[str]) -> list[Path]:
    return [folder / name for name in names if (folder / name).is_file()]


def _png(context: WebContext, draw: Draw) -> Response:
    if context.pictures is None:
        raise HTTPException(404, "pictures are off")
    try:
        data = draw(context.pictures)
    except PictureError as exc:
        logger.info("picture not made: %s", exc)
        raise HTTPException(422, f"no picture: {exc}") from None
    return Response(data, media_type="image/png")
