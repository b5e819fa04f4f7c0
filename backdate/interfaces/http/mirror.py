"""The read API of the Home Assistant mirror: homes, devices, entities, integrations, areas and
state-change history, with HA's own field names plus `home` (and `entity_count` on devices).

Static paths are declared before the dynamic ones (`/api/devices` before
`/api/devices/{device_id}`), so no fixed route is ever read as an id (the seed system's
`/api/devices/{device_id}` hid its static siblings).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import SQLAlchemyError

from backdate.interfaces.http.auth import ReadAuth
from backdate.services.mirror import MirrorService


def _id() -> Any:
    """A fresh optional id filter (FastAPI binds a shared Query object to one name only)."""
    return Query(default=None, max_length=255)


class Error(BaseModel):
    ok: bool
    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "missing or wrong credentials"},
    503: {"model": Error, "description": "store unavailable; retry (Retry-After)"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **_ERRORS, 404: {"model": Error, "description": "no such record in any mirrored home"}}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Home(_Open):
    name: str
    state: str
    connected: bool
    ha_version: str | None = None
    last_snapshot: str | None = None
    last_event: str | None = None
    backlog: int
    open_gaps: int
    counts: dict[str, int]


class State(_Open):
    state: str | None = None
    attributes: dict[str, Any]
    last_changed: str | None = None
    last_updated: str | None = None


class Entity(_Open):
    home: str
    entity_id: str
    id: str | None = None
    device_id: str | None = None
    area_id: str | None = None
    platform: str | None = None
    disabled_by: str | None = None
    config_entry_id: str | None = None


class EntityWithState(Entity):
    state: State | None = None


class Device(_Open):
    home: str
    id: str
    name: str | None = None
    name_by_user: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    area_id: str | None = None
    config_entries: list[str]
    config_entry_id: str | None = None
    parent_device_id: str | None = None
    disabled_by: str | None = None
    entity_count: int


class DeviceWithEntities(Device):
    entities: list[EntityWithState]


class Integration(_Open):
    home: str
    entry_id: str
    domain: str | None = None
    title: str | None = None
    device_count: int
    entity_count: int


class Area(_Open):
    home: str
    area_id: str
    name: str | None = None
    device_count: int
    entity_count: int


class Event(BaseModel):
    id: int
    home: str
    entity_id: str
    old_state: str | None
    new_state: str | None
    attributes: dict[str, Any] | None
    time_fired: str
    context_id: str | None
    received_at: str


class HomeList(BaseModel):
    homes: list[Home]


class DeviceList(BaseModel):
    devices: list[Device]
    total: int
    limit: int
    offset: int


class EntityList(BaseModel):
    entities: list[Entity]
    total: int
    limit: int
    offset: int


class IntegrationList(BaseModel):
    integrations: list[Integration]


class AreaList(BaseModel):
    areas: list[Area]


class EventPage(BaseModel):
    events: list[Event]
    next_cursor: int | None


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def home_out(h: dict[str, Any]) -> dict[str, Any]:
    return {**h, "last_snapshot": iso(h.get("last_snapshot")),
            "last_event": iso(h.get("last_event"))}


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def _fast(body: dict[str, Any]) -> JSONResponse:
    """Rows straight from the store, already in the documented shape (the store writes them
    from HA's JSON): re-validating thousands of records per request would be most of its
    cost. The schema test checks the shape against the OpenAPI document instead."""
    return JSONResponse(body)


def _unavailable() -> JSONResponse:
    return JSONResponse({"ok": False, "error": "store unavailable"}, status_code=503,
                        headers={"Retry-After": "1"})


def _missing(what: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": f"{what} not found"}, status_code=404)


def mirror_router(service: MirrorService | None, auth: ReadAuth) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["mirror"], dependencies=[Depends(auth)])
    store = service.store if service is not None else None

    async def run(func: Any, *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(func, *args, **kwargs)

    @router.get("/homes", response_model=HomeList, responses=_ERRORS)
    async def homes() -> Any:
        """Every mirrored home with its follower's health."""
        if service is None:
            return {"homes": []}
        try:
            rows = await run(service.homes)
        except SQLAlchemyError:
            return _unavailable()
        return {"homes": [home_out(h) for h in rows]}

    @router.get("/devices", response_model=DeviceList, responses=_ERRORS)
    async def devices(home: str | None = _id(), manufacturer: str | None = _id(),
                      model: str | None = _id(), area: str | None = _id(),
                      integration: str | None = _id(),
                      text: str | None = Query(default=None, max_length=200),
                      limit: int = Query(default=100, ge=1, le=1000),
                      offset: int = Query(default=0, ge=0, le=10_000_000)) -> Any:
        """Devices (HA's device registry) with their real entity counts; filters combine."""
        if store is None:
            return {"devices": [], "total": 0, "limit": limit, "offset": offset}
        try:
            rows, total = await run(store.devices, home=home, manufacturer=manufacturer,
                                    model=model, area=area, integration=integration,
                                    text=text, limit=limit, offset=offset)
        except SQLAlchemyError:
            return _unavailable()
        return _fast({"devices": rows, "total": total, "limit": limit, "offset": offset})

    @router.get("/devices/{device_id}", response_model=DeviceWithEntities,
                responses=_NOT_FOUND)
    async def device(device_id: str, home: str | None = _id()) -> Any:
        """One device with its entities and their current states."""
        if store is None:
            return _missing("device")
        try:
            row = await run(store.device, device_id, home)
        except SQLAlchemyError:
            return _unavailable()
        return row if row is not None else _missing("device")

    @router.get("/entities", response_model=EntityList, responses=_ERRORS)
    async def entities(home: str | None = _id(), domain: str | None = _id(),
                       device: str | None = _id(), area: str | None = _id(),
                       platform: str | None = _id(), disabled: bool | None = None,
                       limit: int = Query(default=100, ge=1, le=1000),
                       offset: int = Query(default=0, ge=0, le=10_000_000)) -> Any:
        """Entities (HA's entity registry, disabled ones included); `area` is the entity's
        own area, else its device's."""
        if store is None:
            return {"entities": [], "total": 0, "limit": limit, "offset": offset}
        try:
            rows, total = await run(store.entities, home=home, domain=domain, device=device,
                                    area=area, platform=platform, disabled=disabled,
                                    limit=limit, offset=offset)
        except SQLAlchemyError:
            return _unavailable()
        return _fast({"entities": rows, "total": total, "limit": limit, "offset": offset})

    @router.get("/entities/{entity_id}", response_model=EntityWithState, responses=_NOT_FOUND)
    async def entity(entity_id: str, home: str | None = _id()) -> Any:
        """One entity with its current state."""
        if store is None:
            return _missing("entity")
        try:
            row = await run(store.entity, entity_id, home)
        except SQLAlchemyError:
            return _unavailable()
        return row if row is not None else _missing("entity")

    @router.get("/integrations", response_model=IntegrationList, responses=_ERRORS)
    async def integrations(home: str | None = _id()) -> Any:
        """Config entries with the number of their devices and entities."""
        if store is None:
            return {"integrations": []}
        try:
            return {"integrations": await run(store.integrations, home)}
        except SQLAlchemyError:
            return _unavailable()

    @router.get("/areas", response_model=AreaList, responses=_ERRORS)
    async def areas(home: str | None = _id()) -> Any:
        """Areas with the number of their devices and entities."""
        if store is None:
            return {"areas": []}
        try:
            return {"areas": await run(store.areas, home)}
        except SQLAlchemyError:
            return _unavailable()

    @router.get("/events", response_model=EventPage, responses=_ERRORS)
    async def events(entity_id: str | None = _id(), home: str | None = _id(),
                     start: datetime | None = None, end: datetime | None = None,
                     cursor: int = Query(default=0, ge=0, le=2**62),
                     limit: int = Query(default=1000, ge=1, le=10_000)) -> Any:
        """Stored state changes in the order they were stored; pass `next_cursor` back as
        `cursor` for the next page (null: no more now)."""
        if store is None:
            return {"events": [], "next_cursor": None}
        try:
            rows = await run(store.events, entity_id=entity_id, home=home,
                             start=_epoch(start), end=_epoch(end), after_id=cursor,
                             limit=limit)
        except SQLAlchemyError:
            return _unavailable()
        out = [{**r, "time_fired": iso(r["time_fired"]), "received_at": iso(r["received_at"])}
               for r in rows]
        return {"events": out, "next_cursor": out[-1]["id"] if len(out) == limit else None}

    return router
