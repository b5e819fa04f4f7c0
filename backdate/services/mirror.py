"""The live mirror of Home Assistant homes: follow each over its WebSocket API, keep the store
equal to HA, and never pretend to be complete when it may not be.

Per home, one follower loop:

1. connect (backdate's HA client), retrying with exponential backoff and jitter; a refused token
   stops this home's follower with a clear message (retrying would only get backdate's address
   banned by HA);
2. wait until HA is RUNNING, ask for coalesced messages, subscribe to state and registry
   changes, then take a full snapshot of the device, entity (disabled ones included), area and
   config-entry registries and all states, and *replace* the stored copy with it (removals
   included);
3. apply events as they come: state changes in batches (one transaction per batch), registry
   changes by re-reading that registry (HA's registry events name what changed, not the whole
   record), config entries from the record the event carries; a full reconcile every
   `reconcile_every` seconds catches whatever an event missed;
4. on a lost connection, record a gap from the last moment HA was known to be heard to the
   moment the next snapshot is stored, with its cause.

Reading never waits for the store: the client's reader task moves every message into memory at
once, so HA never sees backdate fall behind (HA closes clients with 4,096 messages pending);
the backlog is measured and reported instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backdate.domain.registry import KINDS, Diff, Snapshot
from backdate.domain.urls import mask_url
from backdate.hass.client import (
    Backoff,
    HAAuthError,
    HAClient,
    HAError,
    HASubscription,
    HAUnreachableError,
)
from backdate.store.mirror import MirrorStore

log = logging.getLogger(__name__)

REGISTRY_EVENTS = {
    "entity_registry_updated": "entities",
    "device_registry_updated": "devices",
    "area_registry_updated": "areas",
}
LIST_COMMANDS = {
    "devices": "config/device_registry/list",
    "entities": "config/entity_registry/list",
    "areas": "config/area_registry/list",
    "config_entries": "config_entries/get",
}
BACKLOG_WARN = 50_000


@dataclass(slots=True)
class MirrorSettings:
    """How the followers behave (from `[serve]`; seconds)."""

    reconcile_every: float = 300.0
    retention: float = 30 * 86400.0
    batch_max: int = 2000
    flush_every: float = 0.2
    registry_debounce: float = 0.2
    backoff_first: float = 1.0
    backoff_cap: float = 60.0
    connect_timeout: float = 10.0
    call_timeout: float = 60.0
    heartbeat: float = 10.0


@dataclass(slots=True)
class HomeStatus:
    """What `/api/health` and the page say about one home (this process's follower)."""

    name: str
    url: str
    state: str = "starting"  # starting, connecting, syncing, following, auth_failed, stopped
    connected: bool = False
    ha_version: str | None = None
    last_snapshot: float | None = None
    last_event: float | None = None
    last_message: float | None = None
    backlog: int = 0
    backlog_peak: int = 0
    events_stored: int = 0
    reconciles: int = 0
    last_reconcile_fixed: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


class AuthRefused(Exception):
    """HA refused this home's token; its follower stops."""


async def take_snapshot(client: HAClient, with_states: bool = True) -> Snapshot:
    """The four registries (and all states) read concurrently over one connection."""
    calls = [client.call(LIST_COMMANDS[k]) for k in KINDS]
    if with_states:
        calls.append(client.call("get_states"))
    results = await asyncio.gather(*calls)
    snap = Snapshot(*(list(r or []) for r in results[:4]), taken_at=time.time())
    if with_states:
        snap.states = list(results[4] or [])
    return snap


class HomeFollower:
    """Keeps one home's mirror current for as long as `run` runs."""

    def __init__(self, name: str, url: str, token: str, store: MirrorStore,
                 settings: MirrorSettings, instance: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.url = url
        self._token = token
        self.store = store
        self.settings = settings
        self.instance = instance
        self.clock = clock
        self.status = HomeStatus(name=name, url=mask_url(url))
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._client: HAClient | None = None
        self._warned = 0  # backlog level (in BACKLOG_WARN steps) already logged

    # --------------------------------------------------------------------------- loop

    async def run(self) -> None:
        """Follow until cancelled (or the token is refused)."""
        while True:
            try:
                await self._session()
            except AuthRefused as err:
                self.status.state = "auth_failed"
                self.status.connected = False
                self.status.error = str(err)
                log.error("home %s: %s; not retrying (fix the token and restart serve)",
                          self.name, err)
                return
            except asyncio.CancelledError:
                raise
            except HAError as err:
                await self._lost(err.message)
            except Exception as err:  # noqa: BLE001 - a follower never dies of one bad message
                log.exception("home %s: follower failed", self.name)
                await self._lost(f"{type(err).__name__}: {err}")
            finally:
                await self._close()

    async def _lost(self, cause: str) -> None:
        """Record a gap from the last moment HA was heard; it stays open until the next
        snapshot is stored. A failed first connect is not a gap (nothing was followed yet)."""
        was = self.status.connected
        self.status.connected = False
        self.status.error = cause
        if not was:
            return
        log.warning("home %s: connection lost: %s", self.name, cause)
        start = self.status.last_message or self.clock()
        try:
            await asyncio.to_thread(self.store.open_gap, self.name, start,
                                    f"connection lost: {cause}", self.instance)
        except Exception as err:  # noqa: BLE001 - the store may be down too; say so
            log.error("home %s: the gap could not be recorded: %s", self.name,
                      type(err).__name__)

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _connect(self) -> HAClient:
        s = self.settings
        self.status.state = "connecting"

        def retry(attempt: int, delay: float, reason: str) -> None:
            self.status.error = reason
            if attempt == 1 or attempt % 10 == 0:
                log.warning("home %s: %s; retrying in %.1f s (attempt %d)", self.name, reason,
                            delay, attempt)

        try:
            return await HAClient.connect_retrying(
                self.url, self._token, s.connect_timeout,
                backoff=Backoff(s.backoff_first, 2.0, s.backoff_cap, float("inf"), jitter=0.5),
                on_retry=retry, call_timeout=s.call_timeout)
        except HAAuthError as err:
            raise AuthRefused(f"Home Assistant at {mask_url(self.url)} refused the access "
                              f"token: {err.message}") from None

    async def _session(self) -> None:
        client = await self._connect()
        self._client = client
        st = self.status
        st.ha_version = client.ha_version
        st.state = "syncing"
        st.last_message = self.clock()
        # Several events in one frame: fewer frames for HA to queue when states change fast.
        with contextlib.suppress(HAError):
            await client.call("supported_features", features={"coalesce_messages": 1})
        self._queue = asyncio.Queue()
        subs: list[HASubscription] = [await client.subscribe(event_type="state_changed")]
        for event_type in REGISTRY_EVENTS:
            subs.append(await client.subscribe(event_type=event_type))
        subs.append(await client.subscribe("config_entries/subscribe"))
        pumps = [asyncio.create_task(self._pump(sub, kind)) for sub, kind in
                 zip(subs, ["state", *REGISTRY_EVENTS, "entry"], strict=True)]
        try:
            await self._resync(client, first=True)
            st.state = "following"
            st.connected = True
            st.error = None
            await self._follow(client)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, sub: HASubscription, kind: str) -> None:
        """Move a subscription's events into the one ordered work queue."""
        try:
            async for event in sub:
                self._queue.put_nowait((kind, event))
        finally:
            self._queue.put_nowait(("closed", None))

    async def _resync(self, client: HAClient, first: bool = False) -> Diff:
        """Full snapshot -> replace; the gap that ended with it is closed."""
        snap = await take_snapshot(client)
        diff = await asyncio.to_thread(self.store.replace, self.name, snap)
        now = self.clock()
        self.status.last_snapshot = snap.taken_at
        if first:
            await asyncio.to_thread(self._close_gaps, now, snap.taken_at)
        if not diff.empty:
            log.info("home %s: snapshot stored (%s)", self.name, diff.summary())
        return diff

    def _close_gaps(self, now: float, taken_at: float) -> None:
        del taken_at
        self.store.close_gaps(self.name, self.instance, now)
        self.store.touch(self.name, ha_version=self.status.ha_version, last_seen=now)

    async def _follow(self, client: HAClient) -> None:
        s = self.settings
        states: list[dict[str, Any]] = []
        dirty: set[str] = set()
        dirty_at: float | None = None
        next_reconcile = time.monotonic() + s.reconcile_every
        next_beat = time.monotonic() + s.heartbeat
        flush_at: float | None = None
        while True:
            now = time.monotonic()
            waits = [next_reconcile - now, next_beat - now]
            if flush_at is not None:
                waits.append(flush_at - now)
            if dirty_at is not None:
                waits.append(dirty_at - now)
            timeout = max(0.0, min(waits))
            item: tuple[str, Any] | None = None
            with contextlib.suppress(TimeoutError):
                item = await asyncio.wait_for(self._queue.get(), timeout)
            self._measure(len(states))
            if item is not None:
                kind, event = item
                self.status.last_message = self.clock()
                if kind == "closed":
                    await self._flush(states)
                    raise HAUnreachableError("connection_closed",
                                             client._close_reason)  # noqa: SLF001
                if kind == "state":
                    states.append(event)
                    if flush_at is None:
                        flush_at = time.monotonic() + s.flush_every
                    if len(states) >= s.batch_max:
                        await self._flush(states)
                        flush_at = None
                elif kind == "entry":
                    await self._flush(states)
                    flush_at = None
                    await asyncio.to_thread(self._apply_entries, event)
                else:
                    dirty.add(REGISTRY_EVENTS[kind])
                    if dirty_at is None:
                        dirty_at = time.monotonic() + s.registry_debounce
                continue
            now = time.monotonic()
            if flush_at is not None and now >= flush_at:
                await self._flush(states)
                flush_at = None
            if dirty_at is not None and now >= dirty_at:
                await self._flush(states)
                flush_at = None
                kinds, dirty, dirty_at = sorted(dirty), set(), None
                await self._refresh(client, kinds)
            if now >= next_beat:
                next_beat = now + s.heartbeat
                await client.ping(timeout=s.connect_timeout)
                self.status.last_message = self.clock()
                await asyncio.to_thread(self.store.touch, self.name, last_seen=self.clock())
            if now >= next_reconcile:
                await self._flush(states)
                flush_at = None
                await self._reconcile(client)
                next_reconcile = time.monotonic() + s.reconcile_every

    def _measure(self, pending: int) -> None:
        backlog = self._queue.qsize() + pending
        self.status.backlog = backlog
        self.status.backlog_peak = max(self.status.backlog_peak, backlog)
        level = backlog // BACKLOG_WARN
        if level > self._warned:
            log.warning("home %s: %d events waiting for the store (it is slower than HA; "
                        "nothing is dropped, memory grows)", self.name, backlog)
        self._warned = level

    async def _flush(self, states: list[dict[str, Any]]) -> None:
        if not states:
            return
        batch = list(states)
        states.clear()
        n = await asyncio.to_thread(self.store.apply_state_changes, self.name, batch,
                                    self.clock())
        self.status.events_stored += n
        self.status.last_event = self.clock()
        self.status.backlog = self._queue.qsize()

    async def _refresh(self, client: HAClient, kinds: list[str]) -> None:
        results = await asyncio.gather(*(client.call(LIST_COMMANDS[k]) for k in kinds))
        snap = Snapshot(taken_at=time.time())
        for kind, result in zip(kinds, results, strict=True):
            setattr(snap, kind, list(result or []))
        await asyncio.to_thread(self.store.replace, self.name, snap, kinds)

    def _apply_entries(self, changes: Any) -> None:
        for change in changes if isinstance(changes, list) else [changes]:
            entry = (change or {}).get("entry") or {}
            if not entry.get("entry_id"):
                continue
            if change.get("type") == "removed":
                self.store.delete_records(self.name, "config_entries", [entry["entry_id"]])
            elif change.get("type") is not None:  # None: the list sent on subscribing
                self.store.upsert_records(self.name, "config_entries", [entry])

    async def _reconcile(self, client: HAClient) -> None:
        diff = await self._resync(client)
        self.status.reconciles += 1
        if not diff.empty:
            self.status.last_reconcile_fixed = diff.summary()
            log.warning("home %s: reconcile found what events missed: %s", self.name,
                        diff.summary())
        cutoff = self.clock() - self.settings.retention
        await asyncio.to_thread(self.store.prune_events, cutoff)


class MirrorService:
    """All homes of one `serve` process, and the gaps they record."""

    def __init__(self, store: MirrorStore, homes: list[tuple[str, str, str]],
                 settings: MirrorSettings | None = None) -> None:
        self.store = store
        self.settings = settings or MirrorSettings()
        self.instance = uuid.uuid4().hex[:12]
        self.followers = {name: HomeFollower(name, url, token, store, self.settings,
                                             self.instance) for name, url, token in homes}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for follower in self.followers.values():
            await asyncio.to_thread(self._mark_start, follower)
            self._tasks.append(asyncio.create_task(follower.run()))

    def _mark_start(self, follower: HomeFollower) -> None:
        """An open gap from the last moment any process followed the home until this one's
        first snapshot: what happened while nobody listened is not in the history."""
        row = self.store.home_rows().get(follower.name)
        now = time.time()
        if row is None:
            return
        since = row.get("last_seen") or row.get("last_snapshot") or now
        if now - since > 2 * self.settings.heartbeat + 5:
            self.store.open_gap(follower.name, since, "not followed: no serve process was "
                                "connected to this home", self.instance)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for follower in self.followers.values():
            follower.status.state = "stopped"
            follower.status.connected = False

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {name: f.status.as_dict() for name, f in self.followers.items()}

    def homes(self) -> list[dict[str, Any]]:
        """Every home: this process's follower status joined with what the store holds."""
        rows = self.store.home_rows()
        out = []
        for name in sorted(set(rows) | set(self.followers)):
            row = rows.get(name, {})
            follower = self.followers.get(name)
            st = follower.status.as_dict() if follower else {}
            out.append({
                "name": name, "url": st.get("url"),
                "followed_here": follower is not None,
                "state": st.get("state", "not followed by this process"),
                "connected": bool(st.get("connected")),
                "ha_version": st.get("ha_version") or row.get("ha_version"),
                "last_snapshot": st.get("last_snapshot") or row.get("last_snapshot"),
                "last_event": row.get("last_event"),
                "backlog": st.get("backlog", 0),
                "backlog_peak": st.get("backlog_peak", 0),
                "open_gaps": row.get("open_gaps", 0),
                "counts": row.get("counts", {}),
                "error": st.get("error"),
            })
        return out


async def check_home(name: str, url: str, token: str, timeout: float = 30.0
                     ) -> dict[str, int]:
    """`serve --check`: connect once (HA must be RUNNING), snapshot, return the counts."""
    client = await HAClient.connect_retrying(
        url, token, min(timeout, 10.0), backoff=Backoff(1.0, 2.0, 5.0, timeout),
        call_timeout=timeout)
    try:
        snap = await take_snapshot(client)
    finally:
        await client.close()
    del name
    return snap.counts()


__all__ = ["AuthRefused", "HomeFollower", "HomeStatus", "MirrorService", "MirrorSettings",
           "check_home", "take_snapshot"]
