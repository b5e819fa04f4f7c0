"""Who may call what: ingest takes a static API key or an HS256 JWT (issuer and audience from
the configuration, as the seed's Core checked them); the read API and the page take one of
`api_tokens` (Bearer, or HTTP Basic with the token as password, so a browser can log in).
Every failure is 401 with a JSON body; nothing is served without credentials."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from fastapi import Request
from fastapi.responses import JSONResponse


class Unauthorized(Exception):
    def __init__(self, message: str, scheme: str = "Bearer") -> None:
        super().__init__(message)
        self.message = message
        self.scheme = scheme


def unauthorized_response(err: Unauthorized) -> JSONResponse:
    realm = 'Basic realm="backdate"' if err.scheme == "Basic" else 'Bearer realm="backdate"'
    return JSONResponse({"ok": False, "error": err.message}, status_code=401,
                        headers={"WWW-Authenticate": realm})


def _matches(token: str, allowed: list[str]) -> bool:
    found = False
    for candidate in allowed:  # no early exit: the time taken does not tell how close
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def _credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    return scheme.lower(), value.strip()


@dataclass(slots=True, eq=False)  # hashable: FastAPI caches dependencies by identity
class IngestAuth:
    api_keys: list[str]
    jwt_secret: str | None
    jwt_issuer: str | None
    jwt_audience: str | None

    def __call__(self, request: Request) -> None:
        cred = _credentials(request)
        if cred is None or cred[0] != "bearer" or not cred[1]:
            raise Unauthorized("Missing Authorization")
        token = cred[1]
        if self.api_keys and _matches(token, self.api_keys):
            return
        if self.jwt_secret and token.count(".") == 2:
            try:
                jwt.decode(token, self.jwt_secret, algorithms=["HS256"],
                           issuer=self.jwt_issuer, audience=self.jwt_audience,
                           options={"require": ["iss", "aud"]}, leeway=30)
                return
            except jwt.PyJWTError:
                pass
        raise Unauthorized("Unauthorized")


@dataclass(slots=True, eq=False)
class ReadAuth:
    tokens: list[str]
    scheme: str = "Bearer"

    def __call__(self, request: Request) -> None:
        cred = _credentials(request)
        if cred is None:
            raise Unauthorized("Missing Authorization", self.scheme)
        kind, value = cred
        token = value
        if kind == "basic":
            try:
                token = base64.b64decode(value, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                raise Unauthorized("Unauthorized", self.scheme) from None
        elif kind != "bearer":
            raise Unauthorized("Unauthorized", self.scheme)
        if not token or not _matches(token, self.tokens):
            raise Unauthorized("Unauthorized", self.scheme)


Dependency = Callable[[Request], None]
