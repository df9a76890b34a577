"""``/api/uploads``: operators send a file for a dataset; it is streamed into the dataset's
inbox folder and imported by the Dagster inbox sensor (``sensor`` mode) or by the service
itself (``direct`` mode). The answer (202) says where to follow it."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from histimport_pipeline.engine import tracking, uploads
from histimport_pipeline.engine.models import AuditAction
from histimport_pipeline.engine.tracking import overview
from histimport_pipeline.web import schemas
from histimport_pipeline.web.app import Operator, Reader, State, WebState
from histimport_pipeline.web.config import UploadMode
from histimport_pipeline.web.multipart import read_form

router = APIRouter(tags=["uploads"])
log = logging.getLogger("histimport.web")


def _status_url(request: Request, dataset: str, sha256: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/api/uploads/{dataset}/{sha256}"


async def receive(
    request: Request, state: WebState, user: str, dataset: str | None
) -> uploads.Upload:
    """Stream the request's file into the inbox (the dataset from ``dataset`` or the form's
    ``dataset`` field, which then comes before the file) and audit it.

    Raises:
        UploadError: refused (the name, the size, a conflict, a form without a file).
        DatasetNotFoundError: no such dataset.
    """

    def open_file(fields: dict[str, str], raw_name: str) -> uploads.UploadReceiver:
        name = dataset or fields.get("dataset")
        if not name:
            raise uploads.UploadError(
                "name the dataset: ?dataset=NAME, or a form field dataset before the file"
            )
        spec = state.spec(name)
        return uploads.UploadReceiver(
            state.settings.inbox, spec, raw_name, state.config.max_upload_bytes, user
        )

    _fields, receiver = await read_form(
        request.headers.get("content-type", ""), request.stream(), open_file
    )
    if not isinstance(receiver, uploads.UploadReceiver):
        raise uploads.UploadError("the form has no file: send it in a field named file")
    upload = receiver.finish()
    facts = {
        "dataset": upload.dataset,
        "file_name": upload.file_name,
        "size": upload.size,
        "sha256": upload.sha256,
        "path": str(upload.path),
        "mode": state.config.upload_mode.value,
    }
    tracking.record_event(state.db, AuditAction.UPLOADED, user, facts)
    if state.config.upload_mode is UploadMode.DIRECT:
        state.start_import(upload)
    return upload


@router.post("/uploads", status_code=202, response_model=schemas.UploadAccepted)
async def post_upload(
    request: Request,
    state: State,
    caller: Operator,
    dataset: Annotated[str | None, Query(description="the dataset the file is for")] = None,
) -> dict[str, Any]:
    """Upload one file (multipart field ``file``) for a dataset. 202: it is in the inbox;
    follow ``status_url`` until it names the import. 413 over the size limit, 409 when a
    file of that name is waiting, 422 for a refused name or extension."""
    upload = await receive(request, state, caller.label, dataset)
    return {
        "dataset": upload.dataset,
        "file_name": upload.file_name,
        "sha256": upload.sha256,
        "size": upload.size,
        "uploaded_at": upload.uploaded_at,
        "uploaded_by": caller.label,
        "mode": state.config.upload_mode.value,
        "status_url": _status_url(request, upload.dataset, upload.sha256),
        "import_id": None,
    }


@router.get("/uploads/{dataset}/{sha256}", response_model=schemas.UploadStatus)
def get_upload(
    dataset: str, sha256: str, request: Request, state: State, _caller: Reader
) -> dict[str, Any]:
    """Whether an upload has been picked up: the newest import of that content into the
    dataset (``import_id`` stays null until one has started)."""
    state.spec(dataset)
    found = overview.latest_import_of_content(state.db, dataset, sha256.lower())
    base = str(request.base_url).rstrip("/")
    return {
        "dataset": dataset,
        "sha256": sha256.lower(),
        "import_id": found["import_id"] if found else None,
        "status": found["status"] if found else None,
        "phase": found["phase"] if found else None,
        "import_url": f"{base}/api/imports/{found['import_id']}" if found else None,
    }
