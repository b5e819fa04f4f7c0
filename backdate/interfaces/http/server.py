"""Builds `backdate serve` from its configuration and runs it under uvicorn."""

from __future__ import annotations

from sqlalchemy import Engine

from backdate.config import ServeConfig
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


def run(config: ServeConfig, engine: Engine) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both and finishes open requests)."""
    import uvicorn

    app = create_app(build_parts(config, engine))
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=10, server_header=False)
