"""Addresses as backdate shows them: every URL in a message, a log line or the sync state goes
through `mask_url`, so no password, token or API key reaches a terminal, a log or a file.

Pure string work: a URL is never re-assembled by a parser (which turned `sqlite:///ha.db`
into `sqlite:/ha.db`), only the secret parts are replaced by `***`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# Query keys that hold secrets: any name with secret/password/token/key in it (client_secret,
# api_key, refresh_token, ...), and InfluxDB 1.x's short u/p.
_SECRET_KEY = re.compile(r"(secret|passw|token|key|^pass$|^pw$|^u$|^p$)", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# A URL inside free text (an error message of a library): scheme://… up to white space/quotes.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def mask_url(url: str) -> str:
    """`url` with the password of its user info and every secret query value as `***`;
    anything else (a plain path, `sqlite:////abs/path`, a portal spec) is kept as written."""
    scheme = _SCHEME.match(url)
    head, rest = "", url
    if scheme:
        head, rest = url[: scheme.end()], url[scheme.end():]
        if rest.startswith("//"):
            cut = len(rest)
            for stop in "/?#":
                at = rest.find(stop, 2)
                if at != -1:
                    cut = min(cut, at)
            authority, rest = rest[2:cut], rest[cut:]
            if "@" in authority:
                userinfo, host = authority.rsplit("@", 1)
                if ":" in userinfo:
                    authority = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"
            head += "//" + authority
    path, mark, query = rest.partition("?")
    if not mark:
        return head + rest
    query, hash_mark, fragment = query.partition("#")
    pairs = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        pairs.append(f"{key}={MASK}" if eq and value and _SECRET_KEY.search(key) else pair)
    return f"{head}{path}?{'&'.join(pairs)}{hash_mark}{fragment}"


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """A message with every URL in it masked and every known secret value (tokens from the
    command line or the environment) replaced by `***`."""
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    # Very short values (a 3-letter "password") would blank out ordinary words.
    for secret in sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
