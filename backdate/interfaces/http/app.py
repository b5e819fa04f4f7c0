"""`backdate serve`'s one FastAPI app: routers per feature over one store.

Today: event ingest (`/ingest/v1/events:batch`), the read API (`/api/health`, `/api/gaps`,
`/api/streams`) and a small page at `/`. The Home Assistant mirror adds its own router here
later; nothing in this module assumes it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import SQLAlchemyError

from backdate.domain.delivery import MAX_BODY
from backdate.interfaces.http.auth import (
    IngestAuth,
    ReadAuth,
    Unauthorized,
    unauthorized_response,
)
from backdate.interfaces.http.page import render_page
from backdate.services.ingest import BadBatch, IngestService

log = logging.getLogger(__name__)

INGEST_PATH = "/ingest/v1/events:batch"


@dataclass(slots=True)
class AppParts:
    """What `create_app` serves; every part but the read tokens is optional."""

    api_tokens: list[str]
    ingest: IngestService | None = None
    ingest_auth: IngestAuth | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- response schemas


class Error(BaseModel):
    ok: Literal[False]
    error: str


class GapAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    device_id: str
    source_vendor: str
    epoch: int
    missing_sequences: list[int]
    missing_ranges: list[list[int]]
    missing_count: int


class ResetAnswer(BaseModel):
    device_id: str
    source_vendor: str
    epoch: int
    sequences: list[list[int]]


class IngestAnswer(BaseModel):
    ok: Literal[True]
    accepted: int
    duplicates: int
    gaps: list[GapAnswer]
    counter_resets: list[ResetAnswer] | None = None
    lost_recorded: int | None = None


class Gap(BaseModel):
    id: int
    device_id: str
    source_vendor: str
    epoch: int
    first_seq: int
    last_seq: int
    missing: int
    status: Literal["open", "resolved", "lost"]
    reason: str | None
    detected_at: str
    resolved_at: str | None


class Stream(BaseModel):
    device_id: str
    source_vendor: str
    epoch: int
    first_sequence: int | None
    high_water_mark: int | None
    events: int
    counter_resets: int
    open_gaps: int
    first_seen: str
    last_seen: str


class GapList(BaseModel):
    gaps: list[Gap]


class StreamList(BaseModel):
    streams: list[Stream]


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    ok: bool
    ingest: dict[str, Any] | None


_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One event; any other fields are stored as sent.",
    "properties": {
        "device_id": {"type": "string"}, "device_key": {"type": "string"},
        "source_vendor": {"type": "string"},
        "sequence_number": {"type": "integer", "minimum": 0, "maximum": 2**62},
        "epoch": {"type": "integer", "minimum": 0, "maximum": 2**62},
        "timestamp": {"type": "string"}, "event_type": {"type": "string"},
    },
    "additionalProperties": True,
}
_LOST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "device_id": {"type": "string"}, "source_vendor": {"type": "string"},
        "epoch": {"type": "integer", "minimum": 0, "maximum": 2**62},
        "sequences": {"type": "array", "items": {"oneOf": [
            {"type": "integer", "minimum": 0},
            {"type": "array", "items": {"type": "integer", "minimum": 0},
             "minItems": 2, "maxItems": 2}]}},
    },
}
_INGEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {"application/json": {"schema": {"oneOf": [
        {"type": "array", "items": _EVENT_SCHEMA},
        {"type": "object", "properties": {"events": {"type": "array", "items": _EVENT_SCHEMA},
                                          "lost": {"type": "array", "items": _LOST_SCHEMA}},
         "required": ["events"]},
        _EVENT_SCHEMA,
    ]}}},
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "refused as a whole; nothing stored"},
    401: {"model": Error, "description": "missing or wrong credentials"},
    413: {"model": Error, "description": "body too large"},
    503: {"model": Error, "description": "store unavailable; retry (Retry-After)"},
}
_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "missing or wrong credentials"},
    503: {"model": Error, "description": "store unavailable; retry (Retry-After)"},
}


def _unavailable() -> JSONResponse:
    return JSONResponse({"ok": False, "error": "store unavailable"}, status_code=503,
                        headers={"Retry-After": "1"})


def ingest_router(service: IngestService, auth: IngestAuth) -> APIRouter:
    router = APIRouter(tags=["ingest"])

    @router.post(INGEST_PATH, response_model=IngestAnswer, responses=_ERRORS,
                 openapi_extra={"requestBody": _INGEST_BODY}, dependencies=[Depends(auth)])
    async def ingest_batch(request: Request) -> Any:
        """Store a batch of events; answer after the commit with counts and open gaps."""
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > MAX_BODY:
            return JSONResponse({"ok": False, "error": "body too large"}, status_code=413)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"ok": False, "error": "body too large"}, status_code=413)
        try:
            answer = await run_in_threadpool(service.ingest_bytes, body)
        except BadBatch as err:
            return JSONResponse({"ok": False, "error": str(err)}, status_code=400)
        except SQLAlchemyError as err:
            log.warning("ingest: store error: %s", type(err).__name__)
            return _unavailable()
        return JSONResponse(answer)

    return router


def api_router(parts: AppParts, auth: ReadAuth) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["api"], dependencies=[Depends(auth)])

    @router.get("/health", response_model=Health, responses=_READ_ERRORS)
    async def health() -> Any:
        """Whether the store answers, and the ingest totals."""
        ingest = None
        if parts.ingest is not None:
            try:
                ingest = await run_in_threadpool(parts.ingest.health)
            except SQLAlchemyError:
                return JSONResponse({"ok": False, "error": "store unavailable"},
                                    status_code=503, headers={"Retry-After": "1"})
        return {"ok": True, "ingest": ingest, **parts.extra}

    @router.get("/gaps", response_model=GapList, responses=_READ_ERRORS)
    async def gaps(status: Literal["open", "resolved", "lost"] | None = None,
                   device_id: str | None = Query(default=None, max_length=200),
                   limit: int = Query(default=1000, ge=1, le=10_000)) -> Any:
        """Sequence gaps, newest first: open until filled, or lost."""
        if parts.ingest is None:
            return {"gaps": []}
        try:
            rows = await run_in_threadpool(parts.ingest.gaps, status, device_id, limit)
        except SQLAlchemyError:
            return _unavailable()
        return {"gaps": rows}

    @router.get("/streams", response_model=StreamList, responses=_READ_ERRORS)
    async def streams(limit: int = Query(default=1000, ge=1, le=10_000)) -> Any:
        """Every (device, vendor, epoch) stream with its high-water mark."""
        if parts.ingest is None:
            return {"streams": []}
        try:
            rows = await run_in_threadpool(parts.ingest.streams, limit)
        except SQLAlchemyError:
            return _unavailable()
        return {"streams": rows}

    return router


def page_router(parts: AppParts, auth: ReadAuth) -> APIRouter:
    router = APIRouter(tags=["page"], dependencies=[Depends(auth)])

    @router.get("/", response_class=HTMLResponse, responses=_READ_ERRORS)
    async def index() -> Any:
        """Streams and gaps as one HTML page."""
        if parts.ingest is None:
            return HTMLResponse(render_page([], [], None))
        try:
            streams = await run_in_threadpool(parts.ingest.streams, 500)
            gaps = await run_in_threadpool(parts.ingest.gaps, None, None, 500)
            summary = await run_in_threadpool(parts.ingest.health)
        except SQLAlchemyError:
            return _unavailable()
        return HTMLResponse(render_page(streams, gaps, summary))

    return router


def create_app(parts: AppParts, *, expire_every: float | None = None) -> FastAPI:
    """The app; `expire_every` seconds between sweeps that mark overdue gaps `lost`."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = None
        if parts.ingest is not None:
            every = expire_every or min(60.0, max(1.0, parts.ingest.gap_deadline / 4))
            task = asyncio.create_task(_sweep(parts.ingest, every))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="backdate serve", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.add_exception_handler(Unauthorized, _on_unauthorized)  # type: ignore[arg-type]
    read = ReadAuth(parts.api_tokens)
    if parts.ingest is not None and parts.ingest_auth is not None:
        app.include_router(ingest_router(parts.ingest, parts.ingest_auth))
    app.include_router(api_router(parts, read))
    app.include_router(page_router(parts, ReadAuth(parts.api_tokens, scheme="Basic")))

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(read)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


async def _on_unauthorized(_request: Request, err: Unauthorized) -> JSONResponse:
    return unauthorized_response(err)


async def _sweep(service: IngestService, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await run_in_threadpool(service.expire_gaps)
        except SQLAlchemyError as err:
            log.warning("gap sweep: store error: %s", type(err).__name__)
