"""Builds `backdate serve` from its configuration and runs it under uvicorn."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from sqlalchemy import Engine

from backdate.config import ServeConfig
from backdate.errors import TargetError
from backdate.interfaces.http.app import AppParts, create_app
from backdate.interfaces.http.auth import IngestAuth
from backdate.services.ingest import IngestService
from backdate.services.mirror import MirrorService, MirrorSettings
from backdate.store.db import migrate, open_engine
from backdate.store.ingest import IngestStore
from backdate.store.mirror import MirrorStore


def open_store(config: ServeConfig) -> Engine:
    """The store engine with its schema migrated to the newest revision."""
    engine = open_engine(config.store)
    migrate(engine)
    return engine


def build_parts(config: ServeConfig, engine: Engine) -> AppParts:
    parts = AppParts(api_tokens=list(config.api_tokens))
    if config.ingest is not None:
        ing = config.ingest
        parts.ingest = IngestService(IngestStore(engine), ing.gap_deadline, ing.max_events)
        parts.ingest_auth = IngestAuth(list(ing.api_keys), ing.jwt_secret, ing.jwt_issuer,
                                       ing.jwt_audience)
    settings = MirrorSettings(reconcile_every=config.reconcile_every,
                              retention=config.history_retention,
                              backoff_cap=config.reconnect_max,
                              backoff_first=min(1.0, config.reconnect_max))
    reader = open_engine(config.store, immediate=False) if engine.dialect.name == "sqlite" \
        else engine
    parts.mirror = MirrorService(MirrorStore(engine, reader),
                                 [(h.name, h.url, h.token or "") for h in config.homes], settings)
    return parts


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so that a port in use or an address
    this machine does not have is one `error:` line (exit 3), not uvicorn's log line."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise TargetError(f"cannot listen on {where}: {err.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as err:
        sock.close()
        hint = ""
        if err.errno == errno.EADDRINUSE:
            hint = " (another backdate serve, or another program; choose a port with --listen)"
        raise TargetError(f"cannot listen on {where}: {err.strerror}{hint}") from None
    return sock


def run(config: ServeConfig, engine: Engine,
        announce: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both and finishes open requests)."""
    import uvicorn

    sock = bind(config.host, config.port)
    app = create_app(build_parts(config, engine))
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=10,
        server_header=False))
    if announce is not None:
        host = f"[{config.host}]" if ":" in config.host else config.host
        routes = "POST /ingest/v1/events:batch, " if config.ingest is not None else ""
        announce(f"serving http://{host}:{config.port} ({routes}GET /api/health, /api/gaps, "
                 f"/api/streams, /); Ctrl-C stops")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
