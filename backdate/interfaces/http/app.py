"""`backdate serve`'s one FastAPI app: routers per feature over one store.

Event ingest (`/ingest/v1/events:batch`), the read API (`/api/health`, `/api/gaps`,
`/api/streams`), the Home Assistant mirror's routes (`backdate.interfaces.http.mirror`) and the
page at `/`. Every part is optional; only `/livez` answers without credentials.
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
from fastapi.openapi.docs import get_swagger_ui_html
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
from backdate.interfaces.http.mirror import home_out, iso, mirror_router
from backdate.interfaces.http.page import render_page
from backdate.services.ingest import BadBatch, IngestService
from backdate.services.mirror import MirrorService

log = logging.getLogger(__name__)

INGEST_PATH = "/ingest/v1/events:batch"


@dataclass(slots=True)
class AppParts:
    """What `create_app` serves; every part but the read tokens is optional."""

    api_tokens: list[str]
    ingest: IngestService | None = None
    ingest_auth: IngestAuth | None = None
    mirror: MirrorService | None = None
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
    kind: Literal["ingest"] = "ingest"
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


class MirrorGap(BaseModel):
    """An interval in which a home's mirror may have missed events (disconnect -> resync)."""

    id: int
    kind: Literal["mirror"]
    home: str
    status: Literal["open", "resolved"]
    cause: str
    started_at: str
    ended_at: str | None


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
    gaps: list[Gap | MirrorGap]


class StreamList(BaseModel):
    streams: list[Stream]


class HomeHealth(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    connected: bool
    ha_version: str | None
    last_snapshot: str | None
    last_event: str | None
    backlog: int
    open_gaps: int


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    ok: bool
    ingest: dict[str, Any] | None
    homes: list[HomeHealth] = []


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
        """Whether the store answers, the ingest totals, and per mirrored home: connected,
        HA version, last snapshot, last event, backlog, open gaps."""
        ingest = None
        homes: list[dict[str, Any]] = []
        try:
            if parts.ingest is not None:
                ingest = await run_in_threadpool(parts.ingest.health)
            if parts.mirror is not None:
                homes = [home_out(h) for h in await run_in_threadpool(parts.mirror.homes)]
        except SQLAlchemyError:
            return JSONResponse({"ok": False, "error": "store unavailable"},
                                status_code=503, headers={"Retry-After": "1"})
        return {"ok": True, "ingest": ingest, "homes": homes, **parts.extra}

    @router.get("/gaps", response_model=GapList, responses=_READ_ERRORS)
    async def gaps(status: Literal["open", "resolved", "lost"] | None = None,
                   device_id: str | None = Query(default=None, max_length=200),
                   kind: Literal["ingest", "mirror"] | None = None,
                   home: str | None = Query(default=None, max_length=200),
                   limit: int = Query(default=1000, ge=1, le=10_000)) -> Any:
        """Gaps, newest first, each with its `kind`: `ingest` (sequence numbers a sender has
        not delivered; open until filled, or lost) and `mirror` (an interval in which a home's
        mirror may have missed HA's events; open until the resync after it)."""
        rows: list[dict[str, Any]] = []
        try:
            if parts.ingest is not None and kind in (None, "ingest") and home is None:
                rows += [{**g, "kind": "ingest"} for g in await run_in_threadpool(
                    parts.ingest.gaps, status, device_id, limit)]
            if parts.mirror is not None and kind in (None, "mirror") and device_id is None \
                    and status != "lost":
                found = await run_in_threadpool(parts.mirror.store.gaps, status, home, limit)
                rows += [mirror_gap_out(g) for g in found]
        except SQLAlchemyError:
            return _unavailable()
        return {"gaps": rows[:limit]}

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


def mirror_gap_out(g: dict[str, Any]) -> dict[str, Any]:
    return {"id": g["id"], "kind": "mirror", "home": g["home"], "status": g["status"],
            "cause": g["cause"], "started_at": iso(g["started_at"]),
            "ended_at": iso(g["ended_at"])}


def page_router(parts: AppParts, auth: ReadAuth) -> APIRouter:
    router = APIRouter(tags=["page"], dependencies=[Depends(auth)])

    @router.get("/", response_class=HTMLResponse, responses=_READ_ERRORS)
    async def index(q: str | None = Query(default=None, max_length=200),
                    home: str | None = Query(default=None, max_length=200),
                    device: str | None = Query(default=None, max_length=255)) -> Any:
        """Homes and their health, devices (search with `q`), one device's entities and
        states (`device`), recent gaps; ingest streams when ingest is on."""
        streams: list[dict[str, Any]] = []
        gaps: list[dict[str, Any]] = []
        summary = None
        mirror: dict[str, Any] | None = None
        try:
            if parts.ingest is not None:
                streams = await run_in_threadpool(parts.ingest.streams, 500)
                gaps = await run_in_threadpool(parts.ingest.gaps, None, None, 500)
                summary = await run_in_threadpool(parts.ingest.health)
            if parts.mirror is not None:
                store = parts.mirror.store
                homes = [home_out(h) for h in await run_in_threadpool(parts.mirror.homes)]
                devices, total = await run_in_threadpool(
                    lambda: store.devices(home=home, text=q, limit=500))
                chosen = None
                if device:
                    chosen = await run_in_threadpool(store.device, device, home)
                mgaps = [mirror_gap_out(g) for g in
                         await run_in_threadpool(store.gaps, None, None, 50)]
                names = {a["area_id"]: a.get("name") for a in
                         await run_in_threadpool(store.areas, home)}
                mirror = {"homes": homes, "devices": devices, "total": total,
                          "device": chosen, "gaps": mgaps, "q": q or "", "home": home,
                          "area_names": names}
        except SQLAlchemyError:
            return _unavailable()
        return HTMLResponse(render_page(streams, gaps, summary, mirror))

    return router


def create_app(parts: AppParts, *, expire_every: float | None = None) -> FastAPI:
    """The app; `expire_every` seconds between sweeps that mark overdue gaps `lost`."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = None
        if parts.ingest is not None:
            every = expire_every or min(60.0, max(1.0, parts.ingest.gap_deadline / 4))
            task = asyncio.create_task(_sweep(parts.ingest, every))
        if parts.mirror is not None:
            await parts.mirror.start()
        try:
            yield
        finally:
            if parts.mirror is not None:
                await parts.mirror.stop()
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
    app.include_router(mirror_router(parts.mirror, read))
    browser = ReadAuth(parts.api_tokens, scheme="Basic")
    app.include_router(page_router(parts, browser))

    @app.get("/livez", include_in_schema=False)
    async def livez() -> JSONResponse:
        """The one public answer: the process is up (nothing about homes or data)."""
        return JSONResponse({"ok": True})

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(browser)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(browser)])
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="backdate serve API")

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
