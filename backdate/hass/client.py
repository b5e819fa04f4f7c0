"""backdate's one Home Assistant WebSocket API client.

Why one module: the online import path, the live mirror, the migration and the tests all talk to
HA through the same handshake, request ids, timeouts, reconnects and error mapping, so they fail
in the same, clear way (exit 3, never a retry storm, never the token in a message).

The API (everything else is private):

* ``HAClient`` (asyncio): ``await HAClient.connect(url, token, timeout)`` authenticates
  (``auth_required`` -> ``auth`` -> ``auth_ok``) and returns a client; ``await
  HAClient.connect_retrying(url, token, timeout, backoff=Backoff(...), call_timeout=...)`` does
  the same with exponential backoff until HA answers and runs (after a restart); ``timeout``
  bounds each attempt, ``call_timeout`` is the default for the calls that follow.
  ``call(type, **fields)`` / ``call_message(dict)`` send one request with the next request
  id and return its ``result``; calls may run concurrently (a reader task matches replies
  by id). ``subscribe(...)`` returns an ``HASubscription`` (async iterator of events).
  ``ping()``, ``close()``; ``ha_version``.
* ``SyncHAClient``: the same on a private event loop thread for blocking code (CLI, tests);
  ``SyncHAClient.connect_retrying(...)``; ``run(func)`` runs an async helper on its loop.
* ``Backoff``: the retry schedule (first delay, factor, cap, overall deadline); one object per
  outage so repeated failures never retry faster than the schedule.
* Errors (all ``TargetError``, exit code 3): ``HAError`` (``success: false``, ``code`` is HA's
  code), ``HAAuthError`` (token rejected or user not an administrator), ``HAUnreachableError``
  (no connection, or it dropped), ``HATimeoutError`` (no answer within the timeout),
  ``HAMessageTooBigError`` (a request over ``MAX_MESSAGE_BYTES``, refused before sending).
* Helpers: ``websocket_url(url)``, ``message_size(message)`` (bytes as sent, for chunking),
  ``statistics_during_period[_sync](...)``.

Usage (async)::

    async with await HAClient.connect("http://127.0.0.1:8123", token) as ha:
        info = await ha.call("recorder/info")

Usage (sync, for tests and the CLI)::

    with SyncHAClient("http://127.0.0.1:8123", token) as ha:
        info = ha.call("recorder/info")

Message size: HA's server drops a WebSocket connection whose *incoming* message exceeds 4 MiB
(aiohttp's default), and the caller would only see a closed connection. So every request is
measured before it is sent and one over ``MAX_MESSAGE_BYTES`` raises ``HAMessageTooBigError``
with the connection left open; callers that send large payloads (``recorder/import_statistics``)
chunk them with ``message_size``. Large *replies* are accepted (up to ``MAX_REPLY_BYTES``),
because a long ``statistics_during_period`` answer can exceed 4 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import ssl as ssl_module
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import date, datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from backdate.domain.urls import mask_url
from backdate.errors import TargetError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Backoff",
    "HAAuthError",
    "HAMessageTooBigError",
    "HAClient",
    "HAError",
    "HASubscription",
    "HATimeoutError",
    "HAUnreachableError",
    "SyncHAClient",
    "Period",
    "statistics_during_period",
    "statistics_during_period_sync",
    "message_size",
    "websocket_url",
]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024 - 1024
"""Largest request we send: HA (aiohttp) closes the connection on an incoming message over
4 MiB; a little margin for the id we add."""

MAX_REPLY_BYTES = 256 * 1024 * 1024
"""Largest reply we accept; aiohttp's 4 MiB client default is too small for long histories."""

Period = Literal["5minute", "hour", "day", "week", "month", "year"]
StatType = Literal["change", "last_reset", "max", "mean", "min", "state", "sum"]

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------- errors


class HAError(TargetError):
    """HA answered a call with ``success: false`` (or the call failed). Exit code 3.

    ``code`` is HA's error code (``invalid_format``, ``unauthorized``, ``home_assistant_error``,
    ...) or one of ours: ``auth_invalid``, ``unreachable``, ``timeout``, ``connection_closed``.
    """

    prefix = "Home Assistant: "

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        text = f"{self.prefix}{message}"
        if code not in _OWN_CODES:
            text += f" ({code})"
        super().__init__(text)


_OWN_CODES = frozenset({"auth_invalid", "unreachable", "timeout", "connection_closed",
                        "message_too_big"})


class HAAuthError(HAError):
    """The token was rejected (``auth_invalid``) or lacks rights for a call (``unauthorized``,
    e.g. a non-admin user calling ``recorder/import_statistics``)."""


class HAUnreachableError(HAError):
    """No WebSocket API at that address, or the connection dropped."""

    prefix = ""  # messages name the address themselves


class HATimeoutError(HAError):
    """HA did not answer within the timeout."""


class HAMessageTooBigError(HAError):
    """A request larger than ``MAX_MESSAGE_BYTES``; refused before sending (HA would drop the
    connection). The connection stays usable: send smaller chunks."""


# ------------------------------------------------------------------------------------- helpers


def websocket_url(base_url: str) -> str:
    """Map ``http(s)://host:port[/prefix]`` to ``ws(s)://host:port[/prefix]/api/websocket``.

    A prefix is kept so HA behind a reverse proxy at a sub-path works. A ``ws(s)://`` URL whose
    path already ends in ``/websocket`` is used as it is: the Supervisor's proxy for apps is
    ``ws://supervisor/core/websocket``.
    """
    parts = urlsplit(base_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise HAUnreachableError(
            "unreachable", f"not an http(s) URL: {base_url!r} (expected e.g. http://host:8123)"
        )
    path = parts.path.rstrip("/")
    verbatim = parts.scheme.lower() in ("ws", "wss") and path.endswith("/websocket")
    if not verbatim and not path.endswith("/api/websocket"):
        path += "/api/websocket"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def message_size(message: Mapping[str, Any]) -> int:
    """Bytes ``message`` takes on the wire (UTF-8 JSON, as ``call_message`` sends it)."""
    return len(json.dumps(message, default=_json_default).encode())


class Backoff:
    """Exponential retry delays with a cap and an overall deadline (one object per outage).

    ``next_delay()`` returns the next delay in seconds, or None once the deadline would pass:
    then give up. With the defaults: 1, 2, 4, 8, 10, 10, ... s for at most 180 s. ``jitter``
    (0..1) scales each delay by a random factor in [1 - jitter, 1], so many clients cut off
    together (the live mirror of several homes, several processes) do not return in step.
    """

    def __init__(self, first: float = 1.0, factor: float = 2.0, cap: float = 10.0,
                 give_up_after: float = 180.0, jitter: float = 0.0):
        if first <= 0 or factor < 1 or cap < first or give_up_after < 0:
            raise ValueError("Backoff needs 0 < first <= cap, factor >= 1, give_up_after >= 0")
        if not 0 <= jitter <= 1:
            raise ValueError("Backoff needs 0 <= jitter <= 1")
        self.jitter = jitter
        self.first = first
        self.factor = factor
        self.cap = cap
        self.give_up_after = give_up_after
        self.attempts = 0
        self._started = time.monotonic()
        self._delay = first

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def next_delay(self) -> float | None:
        remaining = self.give_up_after - self.elapsed
        if remaining <= 0:
            return None
        delay = min(self._delay * (1 - self.jitter * random.random()), remaining)
        self._delay = min(self._delay * self.factor, self.cap)
        self.attempts += 1
        return delay


def _json_default(value: Any) -> Any:
    """Let callers pass datetimes; HA parses ISO 8601 strings."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# --------------------------------------------------------------------------------- async client


class HASubscription:
    """Events of one subscription (``subscribe_events``, ``subscribe_trigger``, ...).

    Iterate with ``async for event in sub``; ``await sub.unsubscribe()`` ends it. Iteration stops
    when the connection closes.
    """

    def __init__(self, client: HAClient, sub_id: int):
        self._client = client
        self.id = sub_id
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def _push(self, event: Any) -> None:
        self._queue.put_nowait(event)

    def _end(self) -> None:
        self._queue.put_nowait(_END)

    async def get(self, timeout: float | None = None) -> Any:
        """Next event; raises ``HAUnreachableError`` if the connection closed."""
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise HATimeoutError("timeout", f"no event within {timeout} s") from None
        if item is _END:
            self._queue.put_nowait(_END)
            raise HAUnreachableError("connection_closed", "connection to Home Assistant closed")
        return item

    def __aiter__(self) -> HASubscription:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.get()
        except HAUnreachableError:
            raise StopAsyncIteration from None

    async def unsubscribe(self) -> None:
        self._client._subscriptions.pop(self.id, None)
        if not self._client.closed:
            await self._client.call("unsubscribe_events", subscription=self.id)


_END = object()


class HAClient:
    """An authenticated connection to HA's WebSocket API (``/api/websocket``).

    Create with ``await HAClient.connect(...)``. Calls may run concurrently: a reader task
    matches replies to requests by id.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        *,
        url: str,
        ha_version: str | None,
        timeout: float,
    ):
        self._session = session
        self._ws = ws
        self.url = url
        self.ha_version = ha_version
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._subscriptions: dict[int, HASubscription] = {}
        self._closed = False
        self._close_reason = "connection to Home Assistant closed"
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        base_url: str,
        token: str,
        timeout: float = 30,
        *,
        ssl: bool | ssl_module.SSLContext = True,
    ) -> HAClient:
        """Connect and authenticate; raises ``HAUnreachableError`` or ``HAAuthError``.

        ``timeout`` bounds the connect + handshake and is the default for each ``call``.
        ``ssl=False`` skips certificate checks (self-signed HA installs).
        """
        url = websocket_url(base_url)
        session = aiohttp.ClientSession()
        try:
            ws, ha_version = await asyncio.wait_for(
                cls._handshake(session, url, token, ssl), timeout
            )
        except TimeoutError:
            await session.close()
            raise HAUnreachableError(
                "unreachable",
                f"cannot reach Home Assistant at {mask_url(url)}: no answer within {timeout} s"
            ) from None
        except HAError:
            await session.close()
            raise
        except (aiohttp.WSServerHandshakeError, aiohttp.ClientResponseError) as err:
            await session.close()
            raise HAUnreachableError(
                "unreachable",
                f"cannot reach Home Assistant at {mask_url(url)}: HTTP {err.status} {err.message}"
                " (is this the address of Home Assistant?)",
            ) from err
        except (aiohttp.ClientError, OSError, ValueError) as err:
            await session.close()
            raise HAUnreachableError(
                "unreachable",
                f"cannot reach Home Assistant at {mask_url(url)}: {err or type(err).__name__}"
            ) from err
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, url=url, ha_version=ha_version, timeout=timeout)

    @classmethod
    async def connect_retrying(
        cls,
        base_url: str,
        token: str,
        timeout: float = 10,
        *,
        backoff: Backoff | None = None,
        wait_running: bool = True,
        ssl: bool | ssl_module.SSLContext = True,
        on_retry: Callable[[int, float, str], None] | None = None,
        call_timeout: float | None = None,
    ) -> HAClient:
        """``connect`` until it works, sleeping ``backoff``'s delays between attempts.

        ``timeout`` bounds each connect attempt (short, so a half-started HA is retried
        soon); ``call_timeout`` (default: ``timeout``) is the client's default for later
        calls, so a short connect timeout does not leak into long reads after a reconnect.

        Why: after HA restarts it refuses connections, then answers while still starting
        (``get_config`` state ``NOT_RUNNING``/``STARTING``); with ``wait_running`` a client is
        returned only once the state is ``RUNNING``. A rejected token (``HAAuthError``) is
        raised at once, never retried. When the backoff's deadline passes, the last error is
        raised as ``HAUnreachableError`` naming the attempts and seconds. ``on_retry(attempt,
        delay, reason)`` is told before each sleep (for a progress note).
        """
        schedule = backoff or Backoff()
        last = "no attempt"
        while True:
            try:
                client = await cls.connect(base_url, token, timeout, ssl=ssl)
            except HAAuthError:
                raise
            except HAError as err:
                last = err.message
            else:
                try:
                    if not wait_running:
                        client.timeout = call_timeout or timeout
                        return client
                    state = (await client.call("get_config") or {}).get("state")
                    if state == "RUNNING":
                        client.timeout = call_timeout or timeout
                        return client
                    last = f"Home Assistant is starting (state {state})"
                except HAAuthError:
                    await client.close()
                    raise
                except HAError as err:
                    last = err.message
                await client.close()
            delay = schedule.next_delay()
            if delay is None:
                raise HAUnreachableError(
                    "unreachable",
                    f"Home Assistant at {websocket_url(base_url)} did not come back within "
                    f"{schedule.give_up_after:.0f} s ({schedule.attempts + 1} attempts; last: "
                    f"{last})")
            if on_retry is not None:
                on_retry(schedule.attempts, delay, last)
            await asyncio.sleep(delay)

    @staticmethod
    async def _handshake(
        session: aiohttp.ClientSession,
        url: str,
        token: str,
        ssl: bool | ssl_module.SSLContext,
    ) -> tuple[aiohttp.ClientWebSocketResponse, str | None]:
        """auth_required -> auth -> auth_ok | auth_invalid."""
        ws = await session.ws_connect(url, max_msg_size=MAX_REPLY_BYTES, ssl=ssl, heartbeat=30)
        try:
            first = await ws.receive_json()
            if first.get("type") != "auth_required":
                raise HAUnreachableError(
                    "unreachable", f"unexpected first message from {url}: {first.get('type')!r}"
                )
            await ws.send_json({"type": "auth", "access_token": token})
            reply = await ws.receive_json()
        except (TypeError, ValueError) as err:
            # receive_json on a closed socket or non-JSON frame.
            await ws.close()
            raise HAUnreachableError(
                "unreachable", f"{url} did not speak the Home Assistant WebSocket API: {err}"
            ) from err
        except BaseException:
            await ws.close()
            raise
        kind = reply.get("type")
        if kind == "auth_ok":
            return ws, reply.get("ha_version") or first.get("ha_version")
        await ws.close()
        if kind == "auth_invalid":
            raise HAAuthError(
                "auth_invalid",
                f"access token rejected: {reply.get('message') or 'invalid'}"
                " (create a long-lived access token in your HA profile)",
            )
        raise HAUnreachableError("unreachable", f"unexpected auth reply from {url}: {kind!r}")

    # ------------------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    for item in data if isinstance(data, list) else [data]:
                        self._dispatch(item)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    self._close_reason = f"WebSocket error: {self._ws.exception()}"
                    break
        except Exception as err:  # any reader failure ends the connection
            self._close_reason = f"connection to Home Assistant failed: {err}"
        finally:
            code = self._ws.close_code
            if code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                self._close_reason = (
                    "Home Assistant closed the connection: message too big"
                    " (HA accepts at most 4 MiB per message; send smaller chunks)"
                )
            elif code not in (None, 1000) and not self._close_reason.endswith("backdate"):
                self._close_reason += f" (close code {code})"
            self._closed = True
            err = HAUnreachableError("connection_closed", self._close_reason)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self._pending.clear()
            for sub in self._subscriptions.values():
                sub._end()

    def _dispatch(self, msg: Mapping[str, Any]) -> None:
        msg_id = msg.get("id")
        kind = msg.get("type")
        if kind == "event":
            sub = self._subscriptions.get(msg_id)  # type: ignore[arg-type]
            if sub is not None:
                sub._push(msg.get("event"))
            return
        fut = self._pending.pop(msg_id, None)  # type: ignore[arg-type]
        if fut is None or fut.done():
            return  # reply to a call that already timed out
        if kind == "pong":
            fut.set_result(None)
        elif msg.get("success"):
            fut.set_result(msg.get("result"))
        else:
            error = msg.get("error") or {}
            code = str(error.get("code", "unknown_error"))
            text = str(error.get("message", "request failed"))
            cls = HAAuthError if code == "unauthorized" else HAError
            fut.set_exception(cls(code, text))

    # ------------------------------------------------------------------------------ calling

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, msg_type: str, /, *, timeout: float | None = None, **fields: Any) -> Any:
        """Send ``{id, type: msg_type, **fields}`` and return its ``result``.

        Raises ``HAError(code, message)`` on ``success: false``, ``HATimeoutError`` after
        ``timeout`` seconds (default: the connect timeout) and ``HAUnreachableError`` if the
        connection is gone. A field literally named ``timeout`` must go through ``call_message``.
        """
        return await self.call_message({"type": msg_type, **fields}, timeout=timeout)

    async def call_message(
        self, message: Mapping[str, Any], *, timeout: float | None = None
    ) -> Any:
        """Like ``call`` but with the message as a dict (``id`` is added)."""
        msg_id, fut = self._send(message)
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(fut, limit)
        except TimeoutError:
            raise HATimeoutError(
                "timeout", f"no answer to {message.get('type')!r} within {limit} s"
            ) from None
        finally:
            self._pending.pop(msg_id, None)

    def _send(self, message: Mapping[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        if self._closed:
            raise HAUnreachableError("connection_closed", self._close_reason)
        msg_id = next(self._ids)
        payload = json.dumps({**message, "id": msg_id}, default=_json_default)
        size = len(payload.encode())
        if size > MAX_MESSAGE_BYTES:
            raise HAMessageTooBigError(
                "message_too_big",
                f"{message.get('type')!r} request of {size:,} bytes not sent: Home Assistant "
                f"accepts at most 4 MiB per message (limit here {MAX_MESSAGE_BYTES:,} bytes); "
                "send smaller chunks")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        send = asyncio.ensure_future(self._ws.send_str(payload))

        def _sent(task: asyncio.Future[None]) -> None:
            if task.cancelled():
                return
            exc = task.exception()
            if exc is not None and not fut.done():
                self._pending.pop(msg_id, None)
                fut.set_exception(
                    HAUnreachableError("connection_closed", f"sending to Home Assistant: {exc}")
                )

        send.add_done_callback(_sent)
        return msg_id, fut

    async def subscribe(
        self, msg_type: str = "subscribe_events", /, *, timeout: float | None = None, **fields: Any
    ) -> HASubscription:
        """Start a subscription (e.g. ``subscribe_events`` with ``event_type``)."""
        msg_id, fut = self._send({"type": msg_type, **fields})
        sub = HASubscription(self, msg_id)
        self._subscriptions[msg_id] = sub
        limit = self.timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(fut, limit)
        except TimeoutError:
            self._subscriptions.pop(msg_id, None)
            self._pending.pop(msg_id, None)
            raise HATimeoutError("timeout", f"no answer to {msg_type!r} within {limit} s") from None
        except BaseException:
            self._subscriptions.pop(msg_id, None)
            raise
        return sub

    async def ping(self, timeout: float | None = None) -> None:
        """Round trip; proves the connection and HA's event loop are alive."""
        await self.call("ping", timeout=timeout)

    async def close(self) -> None:
        """Close the socket and the HTTP session; pending calls fail."""
        self._close_reason = "connection closed by backdate"
        await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# ---------------------------------------------------------------------------------- sync facade


class SyncHAClient:
    """Blocking wrapper around ``HAClient`` for tests and the CLI.

    Runs a private event loop in a daemon thread, so one connection serves many calls and the
    caller needs no asyncio. Calls block: from async code use ``HAClient`` instead.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 30,
        *,
        ssl: bool | ssl_module.SSLContext = True,
        _retrying: dict[str, Any] | None = None,
    ):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="backdate-ha-ws", daemon=True
        )
        self._thread.start()
        try:
            if _retrying is None:
                connect = HAClient.connect(base_url, token, timeout, ssl=ssl)
                limit: float | None = timeout + 5
            else:
                connect = HAClient.connect_retrying(base_url, token, timeout, ssl=ssl,
                                                    **_retrying)
                limit = None  # bounded by the backoff's deadline
            self._client: HAClient = self._run(connect, limit)
        except BaseException:
            self._stop_loop()
            raise
        # Calls default to the client's call timeout (for connect_retrying: call_timeout).
        self.timeout = self._client.timeout

    @classmethod
    def connect_retrying(
        cls,
        base_url: str,
        token: str,
        timeout: float = 10,
        *,
        backoff: Backoff | None = None,
        wait_running: bool = True,
        ssl: bool | ssl_module.SSLContext = True,
        on_retry: Callable[[int, float, str], None] | None = None,
        call_timeout: float | None = None,
    ) -> SyncHAClient:
        """Blocking ``HAClient.connect_retrying`` (``timeout`` per connect attempt,
        ``call_timeout`` for later calls)."""
        return cls(base_url, token, timeout, ssl=ssl, _retrying={
            "backoff": backoff, "wait_running": wait_running, "on_retry": on_retry,
            "call_timeout": call_timeout})

    @property
    def ha_version(self) -> str | None:
        return self._client.ha_version

    @property
    def url(self) -> str:
        return self._client.url

    def _run(self, coro: Awaitable[_T], limit: float | None) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return future.result(limit)

    def call(self, msg_type: str, /, *, timeout: float | None = None, **fields: Any) -> Any:
        """Blocking ``HAClient.call``."""
        limit = self.timeout if timeout is None else timeout
        return self._run(self._client.call(msg_type, timeout=limit, **fields), limit + 5)

    def call_message(self, message: Mapping[str, Any], *, timeout: float | None = None) -> Any:
        """Blocking ``HAClient.call_message``."""
        limit = self.timeout if timeout is None else timeout
        return self._run(self._client.call_message(message, timeout=limit), limit + 5)

    def ping(self, timeout: float | None = None) -> None:
        """Blocking ``HAClient.ping``."""
        self.call("ping", timeout=timeout)

    @property
    def closed(self) -> bool:
        """True once the connection is gone (HA stopped, network) or ``close`` was called."""
        return self._loop.is_closed() or self._client.closed

    def run(self, func: Callable[[HAClient], Awaitable[_T]], timeout: float | None = None) -> _T:
        """Run ``await func(async_client)`` on the private loop (reuse async helpers)."""

        async def _go() -> _T:
            return await func(self._client)

        return self._run(_go(), timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._run(self._client.close(), 10)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ------------------------------------------------------------------------------ recorder helpers


def _iso(value: datetime | str) -> str:
    """HA reads naive times in its own zone; we only send aware times to avoid that guess."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
    return value.isoformat()


def _sdp_fields(
    statistic_ids: Iterable[str],
    start: datetime | str,
    end: datetime | str | None,
    period: Period,
    types: Iterable[StatType] | None,
    units: Mapping[str, str] | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "statistic_ids": list(statistic_ids),
        "start_time": _iso(start),
        "period": period,
    }
    if not fields["statistic_ids"]:
        raise ValueError("statistic_ids must not be empty")
    if end is not None:
        fields["end_time"] = _iso(end)
    if types is not None:
        fields["types"] = list(types)
    if units:
        fields["units"] = dict(units)
    return fields


async def statistics_during_period(
    client: HAClient,
    statistic_ids: Iterable[str],
    start: datetime | str,
    end: datetime | str | None,
    period: Period,
    types: Iterable[StatType] | None,
    units: Mapping[str, str] | None = None,
    *,
    timeout: float | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """``recorder/statistics_during_period``: ``{statistic_id: [{start, end, ...}]}``.

    ``start``/``end`` in rows are epoch milliseconds. IDs without rows are absent from the dict.
    """
    fields = _sdp_fields(statistic_ids, start, end, period, types, units)
    result = await client.call("recorder/statistics_during_period", timeout=timeout, **fields)
    return result or {}


def statistics_during_period_sync(
    client: SyncHAClient,
    statistic_ids: Iterable[str],
    start: datetime | str,
    end: datetime | str | None,
    period: Period,
    types: Iterable[StatType] | None,
    units: Mapping[str, str] | None = None,
    *,
    timeout: float | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Blocking ``statistics_during_period``."""
    fields = _sdp_fields(statistic_ids, start, end, period, types, units)
    result = client.call("recorder/statistics_during_period", timeout=timeout, **fields)
    return result or {}
