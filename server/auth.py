"""The token and the Origin check."""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from .errors import Forbidden, Unauthorized
from .state import ServerState


def load_or_create_token(data_dir: Path) -> str:
    """The server's token, made at first start and kept in the data directory."""
    path = data_dir / "token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(token + "\n")
    return token


def connection_token(conn: HTTPConnection) -> str | None:
    """A token from ``?token=`` or ``Authorization: Bearer``."""
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return conn.query_params.get("token")


_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def require_token(conn: HTTPConnection) -> None:
    """The caller may use the API: the token when one is required, and for anything that changes
    or costs (every method but GET), a browser page of this server's own origin (or an allowed one).

    Without the Origin check any web page could save voices or run speech on a
    token-less loopback server through the visitor's browser.
    """
    state: ServerState = conn.app.state.minestream
    if conn.scope.get("method", "GET") not in _SAFE_METHODS and not origin_allowed(conn, state.settings.allowed_origins):
        raise Forbidden("a page from another origin may not use this server: add it with --allow-origin")
    if state.settings.token_required and not state.check_token(connection_token(conn)):
        raise Unauthorized("a valid token is required: ?token=... or Authorization: Bearer ...")


def origin_allowed(conn: HTTPConnection, allowed: tuple[str, ...]) -> bool:
    """Browsers send Origin; a page from another site must not drive the socket.

    No Origin (native clients), the server's own origin, or a configured one pass.
    """
    origin = conn.headers.get("origin")
    if origin is None or origin in allowed:
        return True
    host = conn.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower()
